"""Strong and weak scaling of the distributed POD (default method, and the method of snapshots).

One command, launched serially; it runs ``mpirun -n P`` itself for each rank count
(default 1 2 3 4; beyond the cores of the machine the runs are oversubscribed and
flagged ``P*``) and prints one table per kind of scaling::

    .venv/bin/python benchmarks/scaling_pod.py --json benchmarks/results/scaling_pod.json

Snapshots: ``S = U diag(s) V^T`` with ``U[i, k] = cos(pi (k+1) x_i + 0.3 k)``,
``x_i = (i + 1/2)/n`` (a smooth, partition-independent function of the global row), ``V``
a random orthogonal ``m x m`` matrix from a fixed seed and ``s`` geometric over 10
decades; each rank builds its own contiguous block of rows. ``ddrom.reduction.pod`` with
the Euclidean inner product, ``rtol = 1e-7``, best of ``--repeat`` per phase
(max over ranks).

Phases, timed by wrapping ddrom's functions from outside (the library is unchanged):

``tsqr`` (:data:`ddrom.reduction.pod.DEFAULT_METHOD`)
    local QR (Householder QR of this rank's ``n_loc x m`` rows: the O(n m^2 / P) part),
    tree QR (QR of two stacked ``m x m`` R factors per tree level, ``log2 P`` levels),
    tree rest (point-to-point messages of the R factors and of the small factors coming
    back down, waiting for the partner, root SVD of ``R``, bcast of sigma/Vh, and the
    local ``Q Y`` product forming the modes), orth check (the final
    ``Psi^T Psi`` Gram + allreduce of :func:`~ddrom.reduction.pod.reorthonormalize`).
``snapshots``
    Gram (local ``S_loc^T S_loc``), allreduce (the ``m x m`` Allreduce + Bcast of
    :func:`~ddrom.reduction.inner.allreduce_sum`), eigh + modes (replicated ``eigh``,
    local ``S V Sigma^-1``), re-orth (Cholesky-QR2 passes: local Grams + allreduces).

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

METHODS = {"tsqr": ["local_qr", "tree_qr", "tree_rest", "orth_check", "total"],
           "snapshots": ["gram", "allreduce", "eigh_modes", "reorth", "total"]}
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


class PhaseClock:
    """Rank-local seconds per phase for one POD call, attributed by wrapping ddrom functions."""

    def __init__(self):
        self.t = defaultdict(float)
        self.qr_calls = 0
        self.depth = []          # enclosing phases: inner calls are not counted twice

    def wrap(self, name, fn, exclusive_of=()):
        def timed(*a, **kw):
            if any(d in exclusive_of for d in self.depth):
                return fn(*a, **kw)
            self.depth.append(name)
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.t[name] += time.perf_counter() - t0
                self.depth.pop()
        return timed


def measure(S, comm, method: str, repeat: int) -> dict:
    """Best-of-``repeat`` phase times (max over ranks) of ``pod(S, method=...)``."""
    import numpy as np
    from mpi4py import MPI

    from ddrom.reduction import inner as inner_mod
    from ddrom.reduction import pod as pod_mod

    best, res = None, None
    for _ in range(repeat):
        clk = PhaseClock()
        saved = (pod_mod._qr_r, pod_mod._tsqr_tree, pod_mod.reorthonormalize,
                 inner_mod.Euclidean._local_gram_sym, inner_mod.allreduce_sum)

        def qr(W, _orig=saved[0]):
            # the first QR of a call is the local one, the next ones are the tree levels
            name = "local_qr" if clk.qr_calls == 0 else "tree_qr"
            clk.qr_calls += 1
            return clk.wrap(name, _orig)(W)

        pod_mod._qr_r = qr
        pod_mod._tsqr_tree = clk.wrap("tree_all", saved[1])
        pod_mod.reorthonormalize = clk.wrap("orth", saved[2])
        inner_mod.Euclidean._local_gram_sym = clk.wrap("gram", saved[3], exclusive_of=("orth",))
        inner_mod.allreduce_sum = clk.wrap("allreduce", saved[4], exclusive_of=("orth",))
        try:
            comm.Barrier()
            t0 = time.perf_counter()
            res = pod_mod.pod(S, comm, method=method, rtol=1e-7)
            total = time.perf_counter() - t0
        finally:
            (pod_mod._qr_r, pod_mod._tsqr_tree, pod_mod.reorthonormalize,
             inner_mod.Euclidean._local_gram_sym, inner_mod.allreduce_sum) = saved
        t = clk.t
        if method == "tsqr":
            ph = {"local_qr": t["local_qr"], "tree_qr": t["tree_qr"],
                  "tree_rest": t["tree_all"] - t["local_qr"] - t["tree_qr"], "orth_check": t["orth"]}
        else:
            ph = {"gram": t["gram"], "allreduce": t["allreduce"], "reorth": t["orth"],
                  "eigh_modes": total - t["gram"] - t["allreduce"] - t["orth"]}
        ph["total"] = total
        ph = {k: comm.allreduce(v, op=MPI.MAX) for k, v in ph.items()}
        best = ph if best is None else {k: min(best[k], ph[k]) for k in ph}
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
        with open(out, "w") as f:
            json.dump({"rows": rows}, f)


def report(results: dict) -> str:
    runs = results["runs"]
    m = results["m"]
    out = [f"POD scaling (Euclidean, m = {m} snapshots, sigma over {DECADES:g} decades, rtol 1e-7, "
           f"best of {results['repeat']}); seconds, max over ranks; {results['meta']['cores']} cores, "
           "P* = oversubscribed; load = 1-min load average before->after the launch"]
    for kind in ("strong", "weak"):
        for method in results["methods"]:
            phases = METHODS[method]
            sel = []
            for run in runs:
                P = run["launch"]["ranks"]
                n = results["strong_n"] if kind == "strong" else results["weak_nloc"] * P
                sel.append((run["launch"], next(r for r in run["rows"] if r["n"] == n and r["method"] == method)))
            base = sel[0][1]
            s1 = base["sigma"]
            title = (f"n = {results['strong_n']:,} rows" if kind == "strong"
                     else f"n = {results['weak_nloc']:,} rows per rank")
            out.append(f"\n{kind.capitalize()} scaling, {method}, {title}:")
            hdr = ["P", "n", "modes"] + phases + (["speed-up", "efficiency", "sigma err"]
                                                  if kind == "strong" else ["efficiency"]) + ["load"]
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
                rows.append(row + [sc.fmt_load(lc)])
            out.append(sc.table(hdr, rows))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3, 4], help="rank counts (first = base)")
    ap.add_argument("--strong-n", type=int, default=400_000, help="rows of the strong-scaling matrix")
    ap.add_argument("--weak-nloc", type=int, default=200_000, help="rows per rank of the weak-scaling matrix")
    ap.add_argument("--m", type=int, default=100, help="snapshots (columns)")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many PODs per phase")
    ap.add_argument("--methods", nargs="+", default=["tsqr", "snapshots"], choices=sorted(METHODS))
    ap.add_argument("--json", metavar="PATH", help="write every measurement as JSON")
    ap.add_argument("--worker", metavar="OUT", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", type=int, nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.sizes, args.m, args.repeat, args.methods)
        return
    results = {"benchmark": "scaling_pod", "meta": sc.meta(), "m": args.m, "repeat": args.repeat,
               "strong_n": args.strong_n, "weak_nloc": args.weak_nloc, "methods": args.methods, "runs": []}
    for p in args.ranks:
        sizes = sorted({args.strong_n, args.weak_nloc * p})
        print(f"[scaling_pod] {p} rank(s), n = {sizes} ...", file=sys.stderr, flush=True)
        results["runs"].append(sc.launch(os.path.abspath(__file__), p,
                                         ["--sizes", *sizes, "--m", args.m, "--repeat", args.repeat,
                                          "--methods", *args.methods]))
    results["meta"]["load_end"] = sc.loadavg()
    text = report(results)
    results["table"] = text
    print(text)
    sc.write_json(args.json, results)


if __name__ == "__main__":
    main()
