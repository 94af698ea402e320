"""Cost of the distributed empirical cubature (ECM) greedy, split by stage.

Synthetic integrand, generated on each rank for its own points from their global ids
(no data movement): points ``x_g`` of a Kronecker sequence in [0,1]^3, weights 1/G,
columns ``f_j(x) = cos(k_j . x + phi_j) + 0.5`` with random wave vectors whose length
grows with ``j`` up to ``--kmax`` (smooth, then less smooth integrands; their span is
numerically of lower dimension than the number of columns, so ECM picks fewer points
than columns, more as ``kmax`` grows). Rows are split evenly by contiguous id ranges.

For each (G, c) the ECM runs to ``tol`` and the table reports, maximum over ranks:

* ``setup``    reproducible integrals and row norms (two passes over the data);
* ``scores``   local correlations ``<A_g, r>/||A_g||`` (one pass per iteration);
* ``reduce``   the argmax allreduce (one per iteration);
* ``bcast``    broadcast of the chosen row from its owner;
* ``nnls``     Lawson-Hanson warm-started (QR updates), redundant on every rank;

and, side by side in the same run, the ratio of a cold ``scipy.optimize.nnls`` per
iteration (``--scipy``, the whole ECM rerun with ``nnls="scipy"``; small cases only by
default) and the ratio of the deterministic per-row score kernel (``einsum``) to a
BLAS ``gemv`` (``A @ r``) on the same local matrix. A second table times the NNLS
alone on a pool growing to ``cols`` columns (warm Lawson-Hanson vs cold scipy), a third
the NNLS with many more rows than columns (``--tall``, an enrichment's ECM) with the thin
QR factors ddrom keeps against full ``m x m`` ones.

Measured numbers: benchmarks/README.md, "ECM greedy".

Run at 1 and 2 ranks::

    python benchmarks/ecm_scaling.py [--G 1e5 1e6] [--cols 50 200 500] [--tol 1e-6]
                                     [--max-elems 2.5e8] [--json PATH]
    mpirun -n 2 python benchmarks/ecm_scaling.py --json ecm_2.json
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import platform
import time

# one BLAS thread per rank (the ranks use the cores; threaded small gemv calls in the
# NNLS cost ~1 ms each on a loaded machine instead of microseconds)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

import ddrom  # noqa: F401,E402
import scipy.optimize  # noqa: E402
from ddrom.reduction.ecm import _row_dots, ecm  # noqa: E402
from ddrom.reduction.nnls import LawsonHanson  # noqa: E402

ALPHA = np.array([0.7548776662466927, 0.5698402909980532, 0.4301597090019468])  # R3 sequence


def local_data(G: int, ncols: int, comm, seed: int = 0, kmax: float = 40.0):
    """This rank's rows: ids in a contiguous range, integrand from the ids."""
    cuts = np.linspace(0, G, comm.size + 1).astype(np.int64)
    gid = np.arange(cuts[comm.rank], cuts[comm.rank + 1], dtype=np.int64)
    rng = np.random.default_rng(seed)
    K = rng.standard_normal((3, ncols)) / math.sqrt(3) * np.linspace(2.0, kmax, ncols)
    phi = rng.random(ncols) * 2 * np.pi
    A = np.empty((gid.size, ncols))
    for i0 in range(0, gid.size, 20000):
        g = gid[i0:i0 + 20000].astype(float)
        X = np.mod(0.5 + np.outer(g, ALPHA), 1.0)
        A[i0:i0 + 20000] = np.cos(X @ K + phi) + 0.5
    w = np.full(gid.size, 1.0 / G)
    return A, w, gid


def kernel_ratio(A: np.ndarray, repeat: int = 3) -> tuple[float, float]:
    r = np.random.default_rng(1).standard_normal(A.shape[1])
    chunk = max(1, (1 << 16) // A.shape[1])
    t_pw = t_blas = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        _row_dots(A, r, chunk)
        t1 = time.perf_counter()
        A @ r
        t2 = time.perf_counter()
        t_pw, t_blas = min(t_pw, t1 - t0), min(t_blas, t2 - t1)
    return t_pw, t_blas


def nnls_growing_pool(ncols: int, seed: int = 0) -> dict:
    """NNLS alone, as the greedy uses it: a pool growing by one column per step.

    ``m = ncols + 1`` rows, ``ncols`` steps; the target is a positive combination of
    all the columns, so almost every column stays passive (the worst case for a cold
    solver). Warm Lawson-Hanson (QR updates) against ``scipy.optimize.nnls`` from
    scratch at every step, same final solution.
    """
    rng = np.random.default_rng(seed)
    m = ncols + 1
    M = rng.random((m, ncols)) + 0.1 * rng.standard_normal((m, ncols))
    b = M @ (rng.random(ncols) + 0.1)
    lh = LawsonHanson(b)
    t0 = time.perf_counter()
    for j in range(ncols):
        lh.add_columns(M[:, j])
        x_lh = lh.solve().x
    t_lh = time.perf_counter() - t0
    t0 = time.perf_counter()
    for j in range(ncols):
        x_sp = scipy.optimize.nnls(M[:, : j + 1], b, maxiter=50 * m)[0]
    t_sp = time.perf_counter() - t0
    return {"cols": ncols, "lawson_hanson_warm_s": t_lh, "scipy_cold_s": t_sp,
            "passive": int(np.count_nonzero(x_lh)),
            "max_abs_diff": float(np.abs(x_lh - x_sp).max())}


class _FullQ(LawsonHanson):
    """The factor updates as they were before the thin QR: full ``m x m`` ``Q`` (reference)."""

    def __init__(self, b):
        super().__init__(b)
        self.Q, self.R = np.eye(self.m), np.zeros((self.m, 0))

    def _qr_append(self, j: int) -> bool:
        import scipy.linalg as sla

        k = len(self.passive)
        if k >= self.m or self.colnorm[j] == 0.0:
            return False
        u = self._rows[j]
        Q, R = sla.qr(u[:, None]) if k == 0 else sla.qr_insert(self.Q, self.R, u, k, which="col",
                                                                 check_finite=False)
        if abs(R[k, k]) <= self.rcond * self.colnorm[j]:
            return False
        self.Q, self.R = Q, R
        self.passive.append(j)
        return True

    def _qr_delete(self, positions: list[int]) -> None:
        import scipy.linalg as sla

        for pos in sorted(positions, reverse=True):
            if len(self.passive) == 1:
                self.Q, self.R = np.eye(self.m), np.zeros((self.m, 0))
            else:
                self.Q, self.R = sla.qr_delete(self.Q, self.R, pos, 1, which="col", check_finite=False)
            del self.passive[pos]


def nnls_tall(m: int, ncols: int, seed: int = 0) -> dict:
    """NNLS with many more rows than pool columns (an enrichment's ECM: ``m`` integrand
    columns, a few hundred points): thin QR factors (ddrom) against full ``m x m`` ones."""
    rng = np.random.default_rng(seed)
    M = np.abs(rng.standard_normal((m, ncols))) + 0.1 * rng.standard_normal((m, ncols))
    b = M @ np.abs(rng.standard_normal(ncols))
    out = {"m": m, "cols": ncols}
    for name, cls in (("thin", LawsonHanson), ("full", _FullQ)):
        lh = cls(b)
        t0 = time.perf_counter()
        for j in range(ncols):
            lh.add_columns(M[:, j])
            x = lh.solve().x
        out[f"{name}_s"] = time.perf_counter() - t0
        out[f"{name}_rel_residual"] = float(np.linalg.norm(M @ x - b) / np.linalg.norm(b))
    return out


def run_case(G: int, ncols: int, tol: float, comm, scipy_too: bool, kmax: float) -> dict:
    A, w, gid = local_data(G, ncols, comm, kmax=kmax)
    comm.Barrier()
    t0 = time.perf_counter()
    res = ecm(A, w, gid, comm, tol=tol)
    total = time.perf_counter() - t0
    tmax = {k: comm.allreduce(v, op=MPI.MAX) for k, v in res.timings.items()}
    out = {"G": G, "cols": ncols, "ranks": comm.size, "points": res.n_points,
           "iterations": res.n_iterations, "converged": res.converged,
           "rel_residual": res.relative_residual,
           "total_s": comm.allreduce(total, op=MPI.MAX), **{f"{k}_s": v for k, v in tmax.items()},
           "points_sha1": hashlib.sha1(res.point_gids.tobytes()).hexdigest()[:10],
           "weights_sha1": hashlib.sha1(res.weights.tobytes()).hexdigest()[:10]}
    t_pw, t_blas = kernel_ratio(A)
    out["score_kernel_vs_gemv"] = comm.allreduce(t_pw, op=MPI.MAX) / max(
        comm.allreduce(t_blas, op=MPI.MAX), 1e-12)
    if scipy_too:
        comm.Barrier()
        r2 = ecm(A, w, gid, comm, tol=tol, nnls="scipy")
        out["nnls_scipy_s"] = comm.allreduce(r2.timings["nnls"], op=MPI.MAX)
        out["scipy_same_points"] = bool(np.array_equal(r2.point_gids, res.point_gids))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--G", type=float, nargs="+", default=[1e5, 1e6])
    p.add_argument("--cols", type=int, nargs="+", default=[50, 200, 500])
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--max-elems", type=float, default=2.5e8,
                   help="skip cases with G*cols above this (memory, 8 bytes each)")
    p.add_argument("--scipy-max-elems", type=float, default=2.5e7,
                   help="also run the scipy NNLS variant when G*cols is at most this")
    p.add_argument("--kmax", type=float, default=40.0,
                   help="largest wave number of the integrands (higher: more points)")
    p.add_argument("--tall", nargs="*", default=["2000x300", "5000x400"], metavar="MxC",
                   help="NNLS-only cases with m rows and C pool columns, thin vs full QR")
    p.add_argument("--json", type=str, default=None)
    a = p.parse_args()
    comm = MPI.COMM_WORLD
    rows = []
    for G in (int(g) for g in a.G):
        for c in a.cols:
            if G * c > a.max_elems:
                if comm.rank == 0:
                    print(f"skip G={G:.0e} cols={c}: {G * c * 8 / 1e9:.1f} GB > --max-elems")
                continue
            rows.append(run_case(G, c, a.tol, comm, G * c <= a.scipy_max_elems, a.kmax))
            if comm.rank == 0:
                r = rows[-1]
                print(f"done G={G:.0e} cols={c}: {r['total_s']:.2f} s", flush=True)
    if comm.rank == 0:
        hdr = (f"{'G':>8} {'cols':>5} {'np':>3} {'K':>5} {'iter':>5} {'total':>8} {'setup':>7} "
               f"{'scores':>8} {'reduce':>7} {'bcast':>7} {'nnls':>7} {'scipy/LH':>9} "
               f"{'dot/gemv':>8} {'points':>10}")
        print(f"\nECM greedy, tol={a.tol:g}, {comm.size} rank(s), seconds (max over ranks)")
        print(hdr)
        for r in rows:
            ratio = (f"{r['nnls_scipy_s'] / r['nnls_s']:9.1f}" if "nnls_scipy_s" in r
                     else f"{'-':>9}")
            print(f"{r['G']:8.0e} {r['cols']:5d} {r['ranks']:3d} {r['points']:5d} "
                  f"{r['iterations']:5d} {r['total_s']:8.2f} {r['setup_s']:7.2f} "
                  f"{r['scores_s']:8.2f} {r['argmax_reduce_s']:7.3f} {r['row_bcast_s']:7.3f} "
                  f"{r['nnls_s']:7.2f} {ratio} {r['score_kernel_vs_gemv']:8.2f} "
                  f"{r['points_sha1']:>10}")
        nn = [nnls_growing_pool(c) for c in a.cols]
        print("\nNNLS on a pool growing by one column per step (rank 0 alone), seconds")
        print(f"{'cols':>5} {'passive':>8} {'LH warm':>9} {'scipy cold':>11} {'ratio':>7} "
              f"{'max|dx|':>9}")
        for r in nn:
            print(f"{r['cols']:5d} {r['passive']:8d} {r['lawson_hanson_warm_s']:9.3f} "
                  f"{r['scipy_cold_s']:11.3f} "
                  f"{r['scipy_cold_s'] / r['lawson_hanson_warm_s']:7.1f} {r['max_abs_diff']:9.1e}")
        tall = [nnls_tall(int(mc.split("x")[0]), int(mc.split("x")[1])) for mc in a.tall]
        print("\nNNLS with m rows >> pool columns (rank 0 alone): thin vs full QR factors, seconds")
        print(f"{'m':>6} {'cols':>5} {'thin':>8} {'full':>8} {'full/thin':>9} {'residual thin/full':>20}")
        for r in tall:
            print(f"{r['m']:6d} {r['cols']:5d} {r['thin_s']:8.2f} {r['full_s']:8.2f} "
                  f"{r['full_s'] / r['thin_s']:9.1f} {r['thin_rel_residual']:9.1e}/{r['full_rel_residual']:.1e}")
        if a.json:
            from ddrom.io.jsonio import write_json  # strict JSON (NaN -> null), atomic

            write_json(a.json, {"ranks": comm.size, "tol": a.tol, "kmax": a.kmax,
                           "machine": platform.platform(), "numpy": np.__version__,
                           "cases": rows, "nnls_growing_pool": nn, "nnls_tall": tall}, indent=1)


if __name__ == "__main__":
    main()
