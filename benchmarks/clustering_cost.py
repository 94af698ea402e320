"""Cost of the physics-informed clustering against the POD it comes with.

For m = 200, 1000, 3000 snapshot columns of n rows (synthetic, a few regimes with
amplitudes over four orders of magnitude), times side by side in one run:

* the POD itself: forming the Gram matrix ``C = S^T S`` (the step that touches the
  n x m data; distributed, it is this local product plus one all-reduce) and its
  ``eigh`` (method of snapshots);
* what clustering adds, from C only: the angle dissimilarity + PAM, the angle
  dissimilarity + alternating k-medoids, kernel k-means with the linear kernel C,
  the Grassmann dissimilarity between simulations (of 20 snapshots each, spans
  truncated at sigma_i > 1e-3 sigma_1) + PAM, and the k local PODs (eigh of the
  cluster blocks).

Ratios are reported against ``gram + eigh``. Serial, one process (the clustering is
run redundantly on every rank anyway, on the replicated C).

Usage::

    python benchmarks/clustering_cost.py [--m 200 1000 3000] [--n 10000] [--k 8]
                                         [--repeat 1] [--json PATH]
"""
from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np

from ddrom.reduction import clustering as cl


def synthetic(n: int, m: int, steps: int = 20, n_regimes: int = 6, dim: int = 4, seed: int = 0):
    """Snapshots of ``m // steps`` simulations in ``n_regimes`` regimes of dimension ``dim``."""
    rng = np.random.default_rng(seed)
    Q = [np.linalg.qr(rng.standard_normal((n, dim)))[0] for _ in range(n_regimes)]
    n_sims = m // steps
    S = np.empty((n, n_sims * steps))
    sims = np.repeat(np.arange(n_sims), steps)
    for s in range(n_sims):
        r = s % n_regimes
        amp = 10.0 ** rng.uniform(-2, 2)
        coef = rng.standard_normal((dim, steps)) * np.linspace(0.05, 1.0, steps)
        coef[0] += 3.0                                   # a dominant direction per regime
        S[:, s * steps:(s + 1) * steps] = amp * (Q[r] @ coef)
    S += 1e-4 * rng.standard_normal(S.shape) * np.abs(S).max()
    return S, sims


def best_time(fn, repeat: int):
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run_case(n: int, m: int, k: int, repeat: int) -> dict:
    S, sims = synthetic(n, m)
    t_gram, C = best_time(lambda: S.T @ S, repeat)
    t_eigh, _ = best_time(lambda: np.linalg.eigh(C), repeat)
    pod = t_gram + t_eigh
    t = {}
    t["angle D"], D = best_time(lambda: cl.dissimilarity(C, "angle"), repeat)
    t["PAM"], r_pam = best_time(lambda: cl.cluster(C, k, dissimilarity="angle", D=D), repeat)
    t["alternating (5 inits)"], _ = best_time(
        lambda: cl.cluster(C, k, dissimilarity="angle", method="alternating", n_init=5, D=D),
        repeat)
    t["kernel k-means (5 inits)"], _ = best_time(
        lambda: cl.cluster(C, k, dissimilarity="euclidean", method="kmeans", n_init=5), repeat)
    t["grassmann D (sims)"], Dg = best_time(
        lambda: cl.dissimilarity(C, "grassmann_max", sims=sims, sv_rtol=1e-3), repeat)
    kk = min(k, Dg.shape[0])
    t["PAM (sims)"], _ = best_time(
        lambda: cl.cluster(C, kk, dissimilarity="grassmann_max", sims=sims, D=Dg), repeat)
    t["local PODs"], _ = best_time(lambda: cl.local_bases(C, r_pam, 20), repeat)
    return {"n": n, "m": m, "k": k, "n_sims": int(Dg.shape[0]), "gram": t_gram, "eigh": t_eigh,
            "pod": pod, "clustering": t, "pam_swaps": r_pam.info["n_iter"],
            "angle+PAM / pod": (t["angle D"] + t["PAM"]) / pod,
            "grassmann+PAM / pod": (t["grassmann D (sims)"] + t["PAM (sims)"]) / pod}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--m", type=int, nargs="+", default=[200, 1000, 3000])
    p.add_argument("--n", type=int, default=10000, help="rows of the snapshot matrix")
    p.add_argument("--k", type=int, default=8, help="number of clusters")
    p.add_argument("--repeat", type=int, default=1, help="best of this many runs")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    a = p.parse_args(argv)
    results = [run_case(a.n, m, a.k, a.repeat) for m in a.m]
    names = list(results[0]["clustering"])
    print(f"clustering cost vs POD (gram + eigh), n = {a.n} rows, k = {a.k}, seconds "
          f"(ratio to gram + eigh)")
    head = f"{'':26}" + "".join(f"{'m = ' + str(r['m']):>20}" for r in results)
    print(head)
    print("-" * len(head))

    def line(label, vals, pods):
        return f"{label:26}" + "".join(f"{v:>11.4f} ({v / q:5.2f})" for v, q in zip(vals, pods))

    pods = [r["pod"] for r in results]
    print(line("gram S^T S", [r["gram"] for r in results], pods))
    print(line("eigh(C)", [r["eigh"] for r in results], pods))
    print(line("POD = gram + eigh", pods, pods))
    for nm in names:
        print(line(nm, [r["clustering"][nm] for r in results], pods))
    print(line("angle D + PAM", [r["clustering"]["angle D"] + r["clustering"]["PAM"]
                                 for r in results], pods))
    print(line("grassmann D + PAM (sims)", [r["clustering"]["grassmann D (sims)"]
                                            + r["clustering"]["PAM (sims)"] for r in results], pods))
    if a.json:
        from ddrom.io.jsonio import write_json  # strict JSON (NaN -> null), atomic

        write_json(a.json, {"benchmark": "clustering_cost", "python": sys.version.split()[0],
                       "numpy": np.__version__, "machine": platform.machine(),
                       "args": vars(a), "results": results}, indent=2)
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
