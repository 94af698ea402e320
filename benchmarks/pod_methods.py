"""POD of one snapshot matrix by every ddrom method and by peers, side by side.

Run at the rank count to measure, e.g.::

    mpirun -n 1 .venv/bin/python benchmarks/pod_methods.py
    mpirun -n 2 .venv/bin/python benchmarks/pod_methods.py --sizes 200000x200 1000000x500 --json out.json

The matrix ``S = G diag(s) V^T`` (``G`` Gaussian / sqrt(n), ``V`` random orthogonal,
``s`` geometric over ``--decades`` decades) is generated in fixed chunks of rows, each
from its own seed, so every rank count sees the same matrix; ddrom methods get this
rank's rows (uneven partition). The peers run on rank 0 alone on the whole matrix
(the other ranks wait): a bare numpy Gram + eigh + modes (``S^T S``, ``eigh``,
``S V / sigma``: the practical lower bound), numpy's SVD (LAPACK ``gesdd``; the
reference for the accuracy column), pyMOR's ``pod`` with both its methods and
modred's in-memory POD (snapshot and direct methods) when installed, in 1-rank runs
only: modred's array functions refuse to run when COMM_WORLD has several ranks, and
its own parallelism (PODHandles) distributes whole vectors over ranks, not rows, so it
does not apply to row-distributed data; pyMOR's ``pod`` on rank 0 alone under mpirun
hung. Compare the 2-rank ddrom times with the 1-rank peer times.

Columns: time (best of ``--repeat``, max over ranks), ratio to Gram+eigh, number of
modes kept (rtol = ``--rtol`` for everyone, pyMOR's default 1e-7), ``rel_err`` = max
relative error of the kept singular values vs numpy's SVD, ``abs_err`` = max absolute
error / sigma_1.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

import ddrom  # noqa: F401  (PETSc environment)
from mpi4py import MPI

from ddrom.reduction import pod

CHUNK = 8192


def parse_size(text: str) -> tuple[int, int]:
    n, m = text.lower().split("x")
    return int(float(n)), int(float(m))


def right_factor(m: int, decades: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, 0])
    s = np.logspace(0.0, -decades, m)
    V, _ = np.linalg.qr(rng.standard_normal((m, m)))
    return s, (s[:, None] * V.T)


def rows(lo: int, hi: int, n: int, B: np.ndarray, seed: int) -> np.ndarray:
    """Rows lo..hi of S = G B, G drawn chunk by chunk (same data for any partition)."""
    m = B.shape[0]
    out = np.empty((hi - lo, m))
    c0, c1 = lo // CHUNK, (hi - 1) // CHUNK if hi > lo else lo // CHUNK - 1
    for c in range(c0, c1 + 1):
        g = np.random.default_rng([seed, 1, c]).standard_normal((min(CHUNK, n - c * CHUNK), m))
        a, b = max(lo, c * CHUNK), min(hi, (c + 1) * CHUNK)
        out[a - lo:b - lo] = (g[a - c * CHUNK:b - c * CHUNK] / np.sqrt(n)) @ B
    return out


def cuts(n: int, size: int) -> np.ndarray:
    shares = np.arange(size) + 2.0          # uneven: 2, 3, 4, ...
    c = np.concatenate(([0], np.round(np.cumsum(shares) / shares.sum() * n))).astype(int)
    c[-1] = n
    return c


def timed(fn, repeat, comm=None):
    best, out = np.inf, None
    for _ in range(repeat):
        if comm is not None:
            comm.Barrier()
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        if comm is not None:
            dt = comm.allreduce(dt, op=MPI.MAX)
        best = min(best, dt)
    return best, out


def gram_eigh(S):
    G = S.T @ S
    lam, V = np.linalg.eigh(G)
    lam, V = lam[::-1], V[:, ::-1]
    s = np.sqrt(np.clip(lam, 0, None))
    N = int(np.count_nonzero(s >= 1e-7 * s[0]))
    S @ (V[:, :N] / s[:N])
    return s[:N]


def peers(S, rtol, repeat, skip):
    out = {}
    out["numpy Gram+eigh+modes"] = timed(lambda: gram_eigh(S), repeat)
    out["numpy SVD (gesdd)"] = timed(lambda: np.linalg.svd(S, full_matrices=False)[1], repeat)
    if "pymor" not in skip:
        try:
            from pymor.algorithms.pod import pod as ppod
            from pymor.core.logger import set_log_levels
            from pymor.vectorarrays.numpy import NumpyVectorSpace

            set_log_levels({"pymor": "WARN"})
            va = NumpyVectorSpace.from_numpy(S)
            for meth in ("method_of_snapshots", "qr_svd"):
                out[f"pymor pod {meth}"] = timed(
                    lambda: ppod(va, rtol=rtol, method=meth)[1], repeat)
        except ImportError as exc:
            print(f"# pymor not available: {exc}")
    if "modred" not in skip:
        try:
            import modred

            for meth, f in (("snaps", modred.compute_POD_arrays_snaps_method),
                            ("direct", modred.compute_POD_arrays_direct_method)):
                def run(f=f):
                    r = f(S, atol=0.0, rtol=rtol ** 2)
                    return np.sqrt(np.clip(r.eigvals, 0, None))
                out[f"modred POD {meth}"] = timed(run, repeat)
        except ImportError as exc:
            print(f"# modred not available: {exc}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["200000x200"], help="NxM, e.g. 1e6x500")
    ap.add_argument("--decades", type=float, default=14.0)
    ap.add_argument("--rtol", type=float, default=1e-7)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--methods", nargs="+", default=["snapshots", "tsqr", "slepc", "slepc:trlanczos"])
    ap.add_argument("--skip", nargs="*", default=[], help="peers to skip: pymor modred numpy")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    comm = MPI.COMM_WORLD
    p = comm.size
    results = []
    for size in args.sizes:
        n, m = parse_size(size)
        s_exact, B = right_factor(m, args.decades, args.seed)
        c = cuts(n, p)
        S_loc = rows(c[comm.rank], c[comm.rank + 1], n, B, args.seed)
        table = {}
        ref = None
        skip = list(args.skip)
        if p > 1:
            # pyMOR and modred are serial here: modred's array functions refuse to run
            # when COMM_WORLD has more than one rank ("Cannot run in parallel") and
            # pyMOR's pod, called on rank 0 only under mpirun, was seen to hang. Their
            # numbers come from the 1-rank run.
            skip += ["pymor", "modred"]
            if comm.rank == 0:
                print("# pymor and modred peers: only in 1-rank runs (see the docstring)")
        args.skip = skip
        if comm.rank == 0 and "numpy" not in args.skip:
            S = rows(0, n, n, B, args.seed)
            table.update(peers(S, args.rtol, args.repeat, args.skip))
            ref = table["numpy SVD (gesdd)"][1]
            del S
        comm.Barrier()
        ref = comm.bcast(ref, root=0)
        for meth in args.methods:
            name, _, svd_type = meth.partition(":")
            if svd_type:
                from petsc4py import PETSc
                PETSc.Options()["ddrom_pod_svd_type"] = svd_type
            t, r = timed(lambda: pod(S_loc, comm, method=name, rtol=args.rtol), args.repeat, comm)
            if svd_type:
                PETSc.Options().delValue("ddrom_pod_svd_type")
            table[f"ddrom {meth}" + ("" if name != "slepc" or svd_type else f":{r.info['svd_type']}")] = (
                t, r.sigma)
        if comm.rank == 0:
            base = table.get("numpy Gram+eigh+modes", (np.nan,))[0]
            print(f"\n# POD of {n} x {m} (sigma over {args.decades:g} decades, rtol {args.rtol:g}), "
                  f"ddrom on {p} rank(s), peers on 1")
            print(f"{'method':34s} {'time [s]':>9s} {'/Gram+eigh':>10s} {'N':>4s} "
                  f"{'rel_err':>9s} {'abs_err/s1':>10s}")
            for name, (t, s) in table.items():
                s = np.asarray(s)
                k = min(s.size, ref.size) if ref is not None else 0
                if k:
                    rel = float(np.max(np.abs(s[:k] - ref[:k]) / ref[:k]))
                    ab = float(np.max(np.abs(s[:k] - ref[:k])) / ref[0])
                else:
                    rel = ab = float("nan")
                print(f"{name:34s} {t:9.3f} {t / base:10.2f} {s.size:4d} {rel:9.1e} {ab:10.1e}")
                results.append(dict(method=name, ranks=p if name.startswith("ddrom") else 1,
                                    mpi_size=p, n=n, m=m, seconds=t, ratio_gram_eigh=t / base,
                                    n_modes=int(s.size), rel_err=rel, abs_err=ab))
    if comm.rank == 0 and args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
