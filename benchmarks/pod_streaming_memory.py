"""Peak memory of the streaming POD versus the number of snapshots m (it must stay flat).

    .venv/bin/python benchmarks/pod_streaming_memory.py [--n 20000] [--ms 200 1000 5000]
    mpirun -n 2 .venv/bin/python benchmarks/pod_streaming_memory.py --json out.json

Snapshots ``u_j = Phi a(t_j)`` (``Phi``: ``n x r`` fixed random modes, ``a_k(t) =
0.6^k sin((k+1) t + k)``) are produced one at a time, as from a time-stepping solver,
and fed to :class:`ddrom.reduction.streaming.IncrementalPOD` (``eps`` relative
tolerance). Peak Python heap (tracemalloc, numpy buffers included) during the stream is
reported per rank (max over ranks), next to the size of one snapshot, of the basis, and
of the whole snapshot matrix that a batch POD would hold. Side by side: the batch POD
(method ``tsqr``) of the same snapshots, for m up to ``--batch-max``.
"""
from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

import ddrom  # noqa: F401
from mpi4py import MPI

from ddrom.reduction import pod
from ddrom.reduction.streaming import IncrementalPOD


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rank", type=int, default=40)
    ap.add_argument("--ms", type=int, nargs="+", default=[200, 1000, 5000])
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--batch-max", type=int, default=1000)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    n, r = args.n, args.rank
    c = np.linspace(0, n, comm.size + 1).astype(int)
    lo, hi = c[comm.rank], c[comm.rank + 1]
    Phi = np.random.default_rng(0).standard_normal((n, r))[lo:hi] / np.sqrt(n)
    amp = 0.6 ** np.arange(r)
    ph = np.arange(r, dtype=float)
    freq = np.arange(1, r + 1, dtype=float)

    def snapshot(t):
        return Phi @ (amp * np.sin(freq * t + ph))

    rows = []
    for m in args.ms:
        ts = np.linspace(0.0, 10.0, m)
        tracemalloc.start()
        t0 = time.perf_counter()
        ip = IncrementalPOD(comm, eps=args.eps)
        for t in ts:
            ip.update(snapshot(t))
        res = ip.result()
        dt = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        peak = comm.allreduce(peak, op=MPI.MAX)
        dt = comm.allreduce(dt, op=MPI.MAX)
        row = dict(m=m, n=n, ranks=comm.size, method="incremental", N=res.n_modes,
                   peak_MB=peak / 1e6, seconds=dt, error_bound=res.info["error_bound"],
                   snapshot_MB=(hi - lo) * 8 / 1e6, basis_MB=(hi - lo) * res.n_modes * 8 / 1e6,
                   matrix_MB=(hi - lo) * m * 8 / 1e6)
        rows.append(row)
        if m <= args.batch_max:
            tracemalloc.start()
            t0 = time.perf_counter()
            S = np.column_stack([snapshot(t) for t in ts])
            b = pod(S, comm, method="tsqr", rtol=0.0,
                    l2_err=args.eps * np.sqrt(np.sum(np.linalg.norm(S, axis=0) ** 2)))
            dt = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
            peak = comm.allreduce(tracemalloc.get_traced_memory()[1], op=MPI.MAX)
            tracemalloc.stop()
            del S
            rows.append(dict(m=m, n=n, ranks=comm.size, method="batch tsqr", N=b.n_modes,
                             peak_MB=peak / 1e6, seconds=dt, error_bound=b.info["l2_err"],
                             snapshot_MB=row["snapshot_MB"], basis_MB=row["basis_MB"],
                             matrix_MB=row["matrix_MB"]))
    if comm.rank == 0:
        print(f"# streaming POD, n = {n} rows on {comm.size} rank(s), eps = {args.eps:g}; "
              "memory per rank (max)")
        print(f"{'method':12s} {'m':>6s} {'N':>4s} {'peak MB':>9s} {'S_loc MB':>9s} "
              f"{'basis MB':>9s} {'time s':>8s} {'l2 bound':>9s}")
        for w in rows:
            print(f"{w['method']:12s} {w['m']:6d} {w['N']:4d} {w['peak_MB']:9.2f} "
                  f"{w['matrix_MB']:9.2f} {w['basis_MB']:9.2f} {w['seconds']:8.2f} "
                  f"{w['error_bound']:9.2e}")
        if args.json:
            from ddrom.io.jsonio import write_json  # strict JSON (NaN -> null), atomic

            write_json(args.json, rows, indent=1)


if __name__ == "__main__":
    main()
