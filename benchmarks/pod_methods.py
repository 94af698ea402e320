"""POD of one snapshot matrix by every ddrom method and by peers, side by side.

Run at the rank count to measure, e.g.::

    mpirun -n 1 .venv/bin/python benchmarks/pod_methods.py --json benchmarks/results/pod_methods_np1.json
    mpirun -n 2 .venv/bin/python benchmarks/pod_methods.py --sizes 200000x200 1000000x500 --json out.json

The matrix ``S = G diag(s) V^T`` (``G`` Gaussian / sqrt(n), ``V`` random orthogonal,
``s`` geometric over ``--decades`` decades, so cond(S) ~ 1e14) is generated in place on
every rank, in fixed chunks of rows each from its own seed: every rank count sees the
same matrix and no rank ever holds more than its rows (rank 0 also builds the whole
matrix for the peers, except at 1 rank where it is the same array). ddrom methods get
this rank's rows (uneven partition 2:3:...).

Peers run on rank 0 alone on the whole matrix (the other ranks wait): a bare numpy
Gram + eigh + modes (``S^T S``, ``eigh``, ``S V / sigma``: the practical lower bound,
no accuracy below ~1e-8 sigma_1), numpy's SVD (LAPACK ``gesdd`` with vectors), numpy's
shifted Cholesky-QR3 + SVD of R (Fukaya et al. 2020, the deterministic alternative to
ddrom's sketch preconditioner), pyMOR's ``pod`` with both its methods and modred's
in-memory POD (snapshot and direct methods), the last two in 1-rank runs only:
modred's array functions refuse to run when COMM_WORLD has several ranks, and its own
parallelism (PODHandles) distributes whole vectors over ranks, not rows, so it does not
apply to row-distributed data; pyMOR's ``pod`` on rank 0 alone under mpirun hung.
Compare the 2-rank ddrom times with the 1-rank peer times. On a 2-core machine run the
2-rank case with ``OPENBLAS_NUM_THREADS=1`` (one core per rank, the peers then run on
one thread: the 1-rank run, two threads, is the fair peer baseline).

Memory: every peer declares how many copies of S it holds at its peak (S included); a
peer whose copies exceed ``--mem-gb`` is skipped with that reason in the table, and
pyMOR's Gram-Schmidt ``qr_svd`` is skipped when its time extrapolated (n m^2) from a
smaller size of the same run exceeds ``--max-peer-seconds``. The reference singular
values for the accuracy columns are LAPACK's ``gesdd`` without vectors (``numpy.linalg.
svd(S, compute_uv=False)``: a QR of a copy of S, then the SVD of R; 2 copies).

Columns: time (best of ``--repeat``, max over ranks), ratio to Gram+eigh, number of
modes kept (rtol = ``--rtol`` for everyone, pyMOR's default 1e-7), ``rel_err`` = max
relative error of the kept singular values vs the reference, ``abs_err`` = max absolute
error / sigma_1, ``orth_err`` = max|Psi^T Psi - I| of the modes returned (measured after
the timed call, first round), note (skip reason, variant, fallback).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import ddrom  # noqa: F401  (PETSc environment)
from mpi4py import MPI

from ddrom.reduction import pod

CHUNK = 8192
EPS = np.finfo(float).eps


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


def quiet_barrier(comm) -> None:
    """Barrier that sleeps while waiting: Open MPI's Barrier busy-polls a core, which would
    take it from the peers running on rank 0 meanwhile."""
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(0.005)


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


def gram_eigh(S, rtol):
    G = S.T @ S
    lam, V = np.linalg.eigh(G)
    lam, V = lam[::-1], V[:, ::-1]
    s = np.sqrt(np.clip(lam, 0, None))
    N = int(np.count_nonzero(s >= rtol * s[0]))
    U = S @ (V[:, :N] / s[:N])
    return s[:N], U


def shifted_cholqr3(S, rtol):
    """Shifted Cholesky-QR3 (Fukaya, Kannan, Nakatsukasa, Yamamoto, Yanagisawa 2020) + SVD
    of R, modes Q U_R. Column scaling before the shift (graded matrices). Raises
    LinAlgError when a Cholesky breaks down (cond(S) beyond ~1/(m n eps))."""
    from scipy.linalg import blas

    n, m = S.shape

    def trsm(A, R, overwrite):
        return blas.dtrsm(1.0, np.asfortranarray(R), A.T, side=0, lower=0, trans_a=1,
                          overwrite_b=int(overwrite)).T

    G = S.T @ S
    d = np.sqrt(np.diag(G))
    d[d == 0] = 1.0
    Gs = G / d / d[:, None]
    shift = 11.0 * (n * m + m * (m + 1)) * EPS * np.linalg.norm(Gs, 2)
    R = np.linalg.cholesky(Gs + shift * np.eye(m)).T * d
    Q = trsm(S, R, False)
    for p in range(2):
        G = Q.T @ Q
        Rk = np.linalg.cholesky(0.5 * (G + G.T)).T
        R = Rk @ R
        Q = trsm(Q, Rk, True)
    Ur, s, _ = np.linalg.svd(R)
    N = int(np.count_nonzero(s >= rtol * s[0]))
    return s[:N], Q @ Ur[:, :N]


def peer_jobs(S, rtol, skip, mem_gb, max_seconds, prev):
    """[(name, fn or None, note)] for rank 0; ``prev`` holds earlier sizes' times."""
    n, m = S.shape
    gb = S.nbytes / 2 ** 30
    jobs = []

    def add(name, copies, fn, extrapolate=False):
        if copies * gb > mem_gb:
            jobs.append((name, None, f"skipped: needs ~{copies:g} copies of S "
                                     f"({copies * gb:.0f} GB > --mem-gb {mem_gb:g})"))
            return
        if extrapolate and name in prev:
            (t0, n0, m0) = prev[name]
            est = t0 * (n * m * m) / (n0 * m0 * m0)
            if est > max_seconds:
                jobs.append((name, None, f"skipped: ~{est:.0f} s extrapolated (n m^2) from "
                                         f"{t0:.1f} s at {n0}x{m0} > {max_seconds:g} s"))
                return
        jobs.append((name, fn, ""))

    add("numpy Gram+eigh+modes", 1.5, lambda: gram_eigh(S, rtol))
    if "svd" not in skip:
        add("numpy SVD (gesdd, vectors)", 4,
            lambda: np.linalg.svd(S, full_matrices=False)[1::-1])
    add("numpy shifted CholQR3 + SVD(R)", 2.5, lambda: shifted_cholqr3(S, rtol))
    if "pymor" not in skip:
        try:
            from pymor.algorithms.pod import pod as ppod
            from pymor.core.logger import set_log_levels
            from pymor.vectorarrays.numpy import NumpyVectorSpace

            set_log_levels({"pymor": "WARN"})
            va = NumpyVectorSpace.from_numpy(S)          # no copy (columns = snapshots)
            def pm(meth):
                modes, sv = ppod(va, rtol=rtol, method=meth)
                return sv, modes.to_numpy()
            add("pymor pod method_of_snapshots", 1.5, lambda: pm("method_of_snapshots"))
            add("pymor pod qr_svd", 2.5, lambda: pm("qr_svd"), extrapolate=True)
        except ImportError as exc:
            print(f"# pymor not available: {exc}")
    if "modred" not in skip:
        try:
            import modred

            def mr(f):
                r = f(S, atol=0.0, rtol=rtol ** 2)
                return np.sqrt(np.clip(r.eigvals, 0, None)), r.modes
            # np.array(vecs) copy + modes (+ the SVD's U and work for the direct method)
            add("modred POD snaps", 2.5, lambda: mr(modred.compute_POD_arrays_snaps_method))
            add("modred POD direct", 5, lambda: mr(modred.compute_POD_arrays_direct_method))
        except ImportError as exc:
            print(f"# modred not available: {exc}")
    return jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["200000x200"], help="NxM, e.g. 1e6x500")
    ap.add_argument("--decades", type=float, default=14.0)
    ap.add_argument("--rtol", type=float, default=1e-7)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--methods", nargs="+",
                    default=["snapshots", "rcholqr", "tsqr", "slepc", "slepc:trlanczos"])
    ap.add_argument("--big-methods", nargs="+", default=["snapshots", "rcholqr", "tsqr"],
                    help="methods for sizes above --big (SLEPc: ~5 min each at 1e6x500)")
    ap.add_argument("--big", type=float, default=5e10, help="n m^2 above which --big-methods apply")
    ap.add_argument("--skip", nargs="*", default=[], help="peers to skip: pymor modred numpy svd")
    ap.add_argument("--mem-gb", type=float, default=12.0, help="max GB a peer may hold on rank 0")
    ap.add_argument("--max-peer-seconds", type=float, default=120.0)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--json", default=None)
    ap.add_argument("--prev", default=None,
                    help="results JSON of a smaller size: peer times for the extrapolated skips")
    args = ap.parse_args()

    comm = MPI.COMM_WORLD
    p = comm.size
    results = []
    prev: dict = {}
    if args.prev:
        with open(args.prev) as f:
            for row in json.load(f):
                if row["ranks"] == 1 and np.isfinite(row["seconds"]):
                    prev[row["method"]] = (row["seconds"], row["n"], row["m"])
    skip = list(args.skip)
    if p > 1:
        # pyMOR and modred are serial here: modred's array functions refuse to run when
        # COMM_WORLD has more than one rank ("Cannot run in parallel") and pyMOR's pod,
        # called on rank 0 only under mpirun, was seen to hang. Their numbers come from
        # the 1-rank run.
        skip += ["pymor", "modred"]
        if comm.rank == 0:
            print("# pymor and modred peers: only in 1-rank runs (see the docstring)")
    for size in args.sizes:
        n, m = parse_size(size)
        load0 = os.getloadavg()[0]
        s_exact, B = right_factor(m, args.decades, args.seed)
        c = cuts(n, p)
        S_loc = rows(c[comm.rank], c[comm.rank + 1], n, B, args.seed)
        ref = None
        S = None
        if comm.rank == 0 and "numpy" not in skip:
            S = S_loc if p == 1 else rows(0, n, n, B, args.seed)
            ref = np.linalg.svd(S, compute_uv=False)     # LAPACK reference (2 copies)
        quiet_barrier(comm)
        ref = comm.bcast(ref, root=0)
        mine = peer_jobs(S, args.rtol, skip, args.mem_gb, args.max_peer_seconds, prev) \
            if S is not None else []
        peer_fn = {name: fn for name, fn, _ in mine}
        jobs = comm.bcast([(name, fn is not None, note) for name, fn, note in mine]
                          if comm.rank == 0 else None, root=0)
        del mine
        table = {name: [np.inf, None, note] for name, _, note in jobs}
        orth: dict = {}
        methods = args.methods if n * m * m <= args.big else args.big_methods
        for meth in args.methods:
            if meth not in methods:
                table[f"ddrom {meth}"] = [np.inf, None, "skipped at this size (--big-methods): "
                                          "SLEPc ~10 s at 2e5x200, ~5 min extrapolated"]
        # Rounds: every method once per round, best over rounds (the machine is shared and
        # its load drifts: interleaving keeps the ratios fair).
        for _ in range(args.repeat):
            for name, runnable, _ in jobs:
                if not runnable:
                    continue
                # Only rank 0 knows whether a peer failed before: every rank waits anyway.
                if comm.rank == 0 and not table[name][2].startswith("failed"):
                    try:
                        t, (sv, U) = timed(peer_fn[name], 1)
                        if name not in orth:     # outside the timing; then drop the modes
                            orth[name] = float(np.max(np.abs(U.T @ U - np.eye(U.shape[1]))))
                        del U
                        if t < table[name][0]:
                            table[name][:2] = [t, sv]
                        prev[name] = (table[name][0], n, m)
                    except np.linalg.LinAlgError as exc:
                        table[name][2] = f"failed: {exc} (Cholesky breakdown)"
                quiet_barrier(comm)
            for meth in methods:
                mname, _, svd_type = meth.partition(":")
                if svd_type:
                    from petsc4py import PETSc
                    PETSc.Options()["ddrom_pod_svd_type"] = svd_type
                t, r = timed(lambda: pod(S_loc, comm, method=mname, rtol=args.rtol), 1, comm)
                if svd_type:
                    PETSc.Options().delValue("ddrom_pod_svd_type")
                note = ", ".join(f"{k}={v}" for k, v in r.info.items()
                                 if k in ("variant", "svd_type", "passes", "dropped", "fallback"))
                key = f"ddrom {meth}" + ("" if mname != "slepc" or svd_type
                                         else f":{r.info['svd_type']}")
                if key not in table:
                    table[key] = [np.inf, None, note]
                orth[key] = r.info["orth_err"]
                if t < table[key][0]:
                    table[key][:3] = [t, r.sigma, note]
                del r
        for v in table.values():
            if v[1] is None:
                v[0] = np.nan
        del S, peer_fn
        load1 = os.getloadavg()[0]
        if comm.rank == 0:
            base = table.get("numpy Gram+eigh+modes", (np.nan,))[0]
            print(f"\n# POD of {n} x {m} (sigma over {args.decades:g} decades, rtol {args.rtol:g}), "
                  f"ddrom on {p} rank(s), peers on 1; load average {load0:.1f} -> {load1:.1f}")
            print(f"{'method':34s} {'time [s]':>9s} {'/Gram+eigh':>10s} {'N':>4s} "
                  f"{'rel_err':>9s} {'abs_err/s1':>10s} {'orth_err':>9s}  note")
            for name, (t, s, note) in table.items():
                if s is not None and ref is not None:
                    s = np.asarray(s)
                    k = min(s.size, ref.size)
                    rel = float(np.max(np.abs(s[:k] - ref[:k]) / ref[:k]))
                    ab = float(np.max(np.abs(s[:k] - ref[:k])) / ref[0])
                    nm = int(s.size)
                else:
                    rel = ab = float("nan")
                    nm = 0
                oe = orth.get(name, float("nan"))
                print(f"{name:34s} {t:9.3f} {t / base:10.2f} {nm:4d} {rel:9.1e} {ab:10.1e} "
                      f"{oe:9.1e}  {note}")
                results.append(dict(method=name, ranks=p if name.startswith("ddrom") else 1,
                                    mpi_size=p, n=n, m=m, seconds=t, ratio_gram_eigh=t / base,
                                    n_modes=nm, rel_err=rel, abs_err=ab, orth_err=oe, note=note,
                                    load_before=load0, load_after=load1))
        del S_loc
    if comm.rank == 0 and args.json:
        from ddrom.io.jsonio import write_json  # strict JSON (NaN -> null), atomic

        write_json(args.json, results, indent=1)


if __name__ == "__main__":
    main()
