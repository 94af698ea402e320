"""Strong and weak scaling of the distributed POD (default method, and the method of snapshots).

One command, launched serially; it runs ``mpirun -n P`` itself for each rank count
(default 1 2 3 4; beyond the cores of the machine the runs are oversubscribed and
flagged ``P*``) and prints one table per kind of scaling::

    .venv/bin/python benchmarks/scaling_pod.py --json benchmarks/results/scaling_pod.json

Snapshots: ``S = U diag(s) V^T`` with ``U[i, k] = cos(pi (k+1) x_i + 0.3 k)``,
``x_i = (i + 1/2)/n`` (a smooth, partition-independent function of the global row), ``V``
a random orthogonal ``m x m`` matrix from a fixed seed and ``s`` geometric over 10
decades; each rank builds its own contiguous block of rows. ``ddrom.reduction.pod`` with
the Euclidean inner product, ``rtol = 1e-7``; of ``--repeat`` PODs (after one warm-up)
the one with the smallest total (max over ranks) is reported, with its phases.

Methods: ddrom's default (:data:`ddrom.reduction.pod.DEFAULT_METHOD`), then ``tsqr`` and
``snapshots`` (``--methods`` to choose). Phases, rank-local then max over ranks, measured by
wrapping ddrom's functions and by handing ``pod`` a communicator proxy that times every MPI
call (the library is unchanged):

* ``validate``: :func:`~ddrom.reduction.pod.validate_snapshots` (checks, scalar allreduces);
* ``comm``: time inside MPI calls (messages and waiting for the slowest rank), outside
  ``validate`` and ``orth_check``: the reductions (sketch and Gram allreduces + bcasts of
  :func:`~ddrom.reduction.inner.allreduce_sum`, the TSQR tree's messages, the broadcasts of
  the replicated decisions);
* ``rcholqr``: ``sketch`` (local sparse-sign sketch ``Omega W``), ``precondition`` (the
  ``W R^-1`` triangular solves), ``gram`` (local ``Q^T Q``, each time before its allreduce),
  ``modes`` (local ``Q Z``);
* ``tsqr``: ``local_qr`` (Householder QR of this rank's rows, factored form), ``tree_qr``
  (QR of two stacked ``m x m`` factors per tree level), ``modes`` (``Q Y`` by ormqr);
* ``snapshots``: ``gram`` (local ``S^T S``);
* ``rest``: everything else (replicated small factorizations: QR of the sketch, Cholesky,
  SVD/eigh of ``m x m``; for ``snapshots`` also the modes ``S V Sigma^-1``);
* ``orth_check``: :func:`~ddrom.reduction.pod.reorthonormalize` (a Gram + allreduce check,
  Cholesky-QR passes for ``snapshots``).

Each phase is the max over ranks (so the phases may add up to a little more than the
total). ``CPU share`` = min over ranks of CPU / wall seconds of the reported POD: Open MPI
ranks poll while they wait, so well below 1 means a rank was descheduled (oversubscription
or other jobs on the machine).

Strong scaling: ``n = --strong-n`` rows at every P (speed-up ``T(1)/T(P)``, efficiency
``T(1)/(P T(P))``). Weak scaling: ``n = --weak-nloc * P`` rows (efficiency
``T(1)/T(P)``). ``sigma err`` = max over the kept singular values of
``|sigma(P) - sigma(1)| / sigma_1``: the result does not depend on the partition.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import scaling_common as sc  # noqa: E402

#: Phase columns per method (see the module docstring); every method also has "total".
METHODS = {"rcholqr": ["validate", "sketch", "precondition", "gram", "comm", "modes", "rest", "orth_check"],
           "tsqr": ["validate", "local_qr", "tree_qr", "modes", "comm", "rest", "orth_check"],
           "snapshots": ["validate", "gram", "comm", "rest", "orth_check"]}
DECADES = 10.0


def snapshot_rows(lo: int, hi: int, n: int, m: int, seed: int = 7):
    import numpy as np

    rng = np.random.default_rng(seed)
    V, _ = np.linalg.qr(rng.standard_normal((m, m)))
    s = np.logspace(0.0, -DECADES, m)
    x = (np.arange(lo, hi) + 0.5) / n
    k = np.arange(m)
    U = np.cos(np.pi * (k + 1)[None, :] * x[:, None] + 0.3 * k[None, :])
    return (U * s) @ V.T


_MPI_CALLS = {"bcast", "Bcast", "allreduce", "Allreduce", "send", "recv", "Send", "Recv", "exscan",
              "Exscan", "allgather", "Allgather", "gather", "scatter", "Barrier", "alltoall", "Alltoallv"}


class Timeline:
    """Rank-local (name, start, end) events of the wrapped functions and MPI calls of one POD."""

    def __init__(self):
        self.ev = []

    def wrap(self, name, fn):
        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.ev.append((name, t0, time.perf_counter()))
        return timed

    def spans(self, name):
        return [(a, b) for n, a, b in self.ev if n == name]

    def total(self, name, outside=()):
        """Seconds in events ``name``, leaving out those inside an event of ``outside``."""
        skip = [sp for o in outside for sp in self.spans(o)]
        return sum(b - a for a, b in self.spans(name) if not any(x <= a and b <= y for x, y in skip))

    def gaps_before(self, name, after):
        """Seconds between the end of each ``after`` event and the next ``name`` event.

        In ``_rcholqr`` the argument of ``allreduce_sum(Q.T @ Q)`` is computed right after
        ``_trsm_right`` returns: that gap is the local Gram formation.
        """
        ev = sorted(self.ev, key=lambda e: e[1])
        out, last = 0.0, None
        for n, a, b in ev:
            if n == after:
                last = b
            elif n == name and last is not None:
                out += a - last
                last = None
        return out


class TimedComm:
    """An mpi4py communicator whose communication methods record "mpi" events.

    ``ddrom.parallel.as_mpi`` accepts any object with ``tompi4py``: the POD then does all its
    communication through this proxy, so the time inside MPI (messages and waiting for the
    other ranks) is measured without touching the library.
    """

    def __init__(self, comm, tl):
        self._c, self._tl = comm, tl

    def tompi4py(self):
        return self

    def __getattr__(self, name):
        attr = getattr(self._c, name)
        return self._tl.wrap("mpi", attr) if name in _MPI_CALLS else attr


def measure(S, comm, method: str, repeat: int) -> dict:
    """Best-of-``repeat`` phase times (max over ranks) of ``pod(S, method=...)``."""
    import importlib

    import numpy as np
    from mpi4py import MPI

    # the module, not the function the package re-exports under the same name
    pod_mod = importlib.import_module("ddrom.reduction.pod")
    names = ["validate_snapshots", "reorthonormalize", "allreduce_sum", "sparse_sign_sketch", "_trsm_right",
             "_rcholqr", "_qr_factored", "_qr_r", "_apply_q", "_tsqr_tree"]
    names = [n for n in names if hasattr(pod_mod, n)]
    inner_mod = importlib.import_module("ddrom.reduction.inner")
    best, res = None, None
    pod_mod.pod(S, comm, method=method, rtol=1e-7)      # warm-up: first-message costs, BLAS init
    for _ in range(repeat):
        tl = Timeline()
        saved = {n: getattr(pod_mod, n) for n in names}
        saved_gram = inner_mod.Euclidean._local_gram_sym
        for n in names:
            setattr(pod_mod, n, tl.wrap(n, saved[n]))
        inner_mod.Euclidean._local_gram_sym = tl.wrap("_local_gram_sym", saved_gram)
        try:
            comm.Barrier()
            t0, c0 = time.perf_counter(), time.process_time()
            res = pod_mod.pod(S, TimedComm(comm, tl), method=method, rtol=1e-7)
            total = time.perf_counter() - t0
            cpu = time.process_time() - c0
        finally:
            for n in names:
                setattr(pod_mod, n, saved[n])
            inner_mod.Euclidean._local_gram_sym = saved_gram
        out = ("validate_snapshots", "reorthonormalize")
        ph = {"validate": tl.total("validate_snapshots"), "orth_check": tl.total("reorthonormalize"),
              "comm": tl.total("mpi", outside=out)}
        if method == "rcholqr":
            ph["sketch"] = tl.total("sparse_sign_sketch")
            ph["precondition"] = tl.total("_trsm_right")
            ph["gram"] = tl.gaps_before("allreduce_sum", after="_trsm_right")
            end = max((b for _, b in tl.spans("_rcholqr")), default=None)
            last_mpi = max((b for a, b in tl.spans("mpi") if end is not None and b <= end), default=None)
            ph["modes"] = (end - last_mpi) if end is not None and last_mpi is not None else 0.0
        elif method == "tsqr":
            qf = tl.total("_qr_factored")
            qr = tl.total("_qr_r")
            if "_qr_factored" not in names:   # older tsqr: the first _qr_r is the local one
                spans = tl.spans("_qr_r")
                qf = spans[0][1] - spans[0][0] if spans else 0.0
                qr -= qf
            ph["local_qr"], ph["tree_qr"], ph["modes"] = qf, qr, tl.total("_apply_q")
        elif method == "snapshots":
            ph["gram"] = tl.total("_local_gram_sym", outside=out)
        ph["rest"] = total - sum(ph.values())
        ph["total"] = total
        ph = {k: comm.allreduce(v, op=MPI.MAX) for k, v in ph.items()}
        # smallest CPU/wall share over the ranks: well below 1 = a rank was descheduled
        ph["cpu_share"] = comm.allreduce(cpu / max(total, 1e-12), op=MPI.MIN)
        # the repetition with the smallest total, all its phases: they add up to its total
        best = ph if best is None or ph["total"] < best["total"] else best
    return {"seconds": best, "modes": int(res.sigma.size), "sigma": np.asarray(res.sigma_all).tolist(),
            "info": {k: v for k, v in res.info.items() if isinstance(v, (int, float, str))}}


def worker(out: str, sizes: list[int], m: int, repeat: int, methods: list[str]) -> None:
    import ddrom  # noqa: F401
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    P, r = comm.size, comm.rank
    rows = []
    for n in sizes:
        lo, hi = n * r // P, n * (r + 1) // P
        S = snapshot_rows(lo, hi, n, m)
        for method in methods:
            rows.append({"n": n, "m": m, "ranks": P, "method": method, **measure(S, comm, method, repeat)})
        del S
    if r == 0:
        from ddrom.io.jsonio import write_json  # strict JSON (NaN -> null), atomic

        write_json(out, {"rows": rows})


def report(results: dict) -> str:
    runs = results["runs"]
    m = results["m"]
    launches = len(runs) // len({r["launch"]["ranks"] for r in runs})
    out = [f"POD scaling (Euclidean, m = {m} snapshots, sigma over {DECADES:g} decades, rtol 1e-7, "
           f"best of {results['repeat']} per launch, fastest of {launches} launch(es) per P); "
           f"seconds, max over ranks; {results['meta']['cores']} cores, "
           "P* = oversubscribed; load = 1-min load average before->after the launch"]
    ranks = list(dict.fromkeys(run["launch"]["ranks"] for run in runs))
    for kind in ("strong", "weak"):
        for method in results["methods"]:
            phases = METHODS[method] + ["total"]
            sel = []
            for P in ranks:
                n = results["strong_n"] if kind == "strong" else results["weak_nloc"] * P
                # the fastest launch at this (P, n, method) over the sweeps
                sel.append(min(((run["launch"], r) for run in runs if run["launch"]["ranks"] == P
                                for r in run["rows"] if r["n"] == n and r["method"] == method),
                               key=lambda c: c[1]["seconds"]["total"]))
            base = sel[0][1]
            s1 = base["sigma"]
            title = (f"n = {results['strong_n']:,} rows" if kind == "strong"
                     else f"n = {results['weak_nloc']:,} rows per rank")
            dflt = " (ddrom's default)" if method == results.get("default_method") else ""
            out.append(f"\n{kind.capitalize()} scaling, {method}{dflt}, {title}:")
            hdr = ["P", "n", "modes"] + phases + (["speed-up", "efficiency", "sigma err"]
                                                  if kind == "strong" else ["efficiency"]) + ["CPU share", "load"]
            rows = []
            for lc, r in sel:
                P, t, t1 = lc["ranks"], r["seconds"]["total"], base["seconds"]["total"]
                row = [sc.tag(P), r["n"], r["modes"]] + [r["seconds"][k] for k in phases]
                if kind == "strong":
                    N = r["modes"]
                    err = max(abs(a - b) for a, b in zip(r["sigma"][:N], s1[:N])) / s1[0]
                    row += [t1 / t, t1 / (P * t), f"{err:.1e}"]
                else:
                    row += [t1 / t]
                rows.append(row + [round(r["seconds"].get("cpu_share", float("nan")), 2), sc.fmt_load(lc)])
            out.append(sc.table(hdr, rows))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3, 4], help="rank counts (first = base)")
    ap.add_argument("--strong-n", type=int, default=400_000, help="rows of the strong-scaling matrix")
    ap.add_argument("--weak-nloc", type=int, default=200_000, help="rows per rank of the weak-scaling matrix")
    ap.add_argument("--m", type=int, default=100, help="snapshots (columns)")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many PODs per phase")
    ap.add_argument("--methods", nargs="+", choices=sorted(METHODS),
                    help="default: ddrom's default POD method, then tsqr and snapshots")
    ap.add_argument("--json", metavar="PATH", help="write every measurement as JSON")
    ap.add_argument("--sweeps", type=int, default=2,
                    help="sweeps over the rank counts; the tables keep the fastest launch per (P, n, method)")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="no run: the tables of the launches of earlier --json files together (fastest "
                         "launch per (P, n, method) over all of them; same problem required)")
    ap.add_argument("--worker", metavar="OUT", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", type=int, nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.sizes, args.m, args.repeat, args.methods)
        return
    if args.merge:
        parts = [json.load(open(p)) for p in args.merge]
        key = [(r["m"], r["strong_n"], r["weak_nloc"]) for r in parts]
        if len(set(key)) != 1:
            sys.exit(f"--merge: the files measured different problems (m, strong n, weak n/rank): {key}")
        results = dict(parts[0], runs=[run for r in parts for run in r["runs"]],
                       merged=[{"file": os.path.basename(f), "date": r["meta"]["date"]}
                               for f, r in zip(args.merge, parts)])
        results["methods"] = [m for m in parts[0]["methods"] if all(m in r["methods"] for r in parts)]
        results["table"] = report(results)
        print(results["table"])
        sc.write_json(args.json, results)
        return
    if not args.methods:
        import importlib

        import ddrom  # noqa: F401
        default = importlib.import_module("ddrom.reduction.pod").DEFAULT_METHOD
        args.methods = list(dict.fromkeys([default, "tsqr", "snapshots"]))
    results = {"benchmark": "scaling_pod", "meta": sc.meta(), "m": args.m, "repeat": args.repeat,
               "sweeps": args.sweeps,
               "default_method": args.methods[0],
               "strong_n": args.strong_n, "weak_nloc": args.weak_nloc, "methods": args.methods, "runs": []}
    def plan(p: int):
        sizes = sorted({args.strong_n, args.weak_nloc * p})
        return sizes, ["--sizes", *sizes, "--m", args.m, "--repeat", args.repeat, "--methods", *args.methods]

    sc.run_sweeps("scaling_pod", os.path.abspath(__file__), args.sweeps, args.ranks, plan, results, args.json,
                  report)


if __name__ == "__main__":
    main()
