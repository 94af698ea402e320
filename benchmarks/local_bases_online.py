"""Do local bases pay off online? The a priori criterion against held-out online errors.

For each case, through ``ddrom.workflow.cluster.cluster_report`` (what ``ddrom cluster``
runs):

1. the HF training store (computed by ``ddrom hf`` when missing or out of date);
2. the a priori tables over a (k, N) grid: the training projection error (each simulation
   onto its own cluster's basis: the criterion of earlier versions) and the held-out
   projection error (folds of the training simulations held out; clusters, feature
   relevance, classifier and bases from the others; each held-out simulation routed as an
   online run is, the global basis when the classifier is unsure, and projected);
3. the a posteriori check of every configuration of the grid on the same folds: one ROM
   file per (fold, k, N) built from the fold's training simulations (N modes), each
   held-out simulation run online through its router and compared with its HF snapshots;
4. with ``[test]`` points: the same grid with ROMs from every training simulation, run at
   the test points and compared with the HF test store (new points the criterion never saw);
5. per case: the recommendation (held-out criterion), whether it beats the global ROM of
   the same N in mean online displacement error at equal or lower online cost (modes,
   points, seconds per run), per N the criterion's choice (local when its held-out error is
   below the global basis' / 1.1) against the online truth, and the Spearman rank
   correlation between each a priori ranking (training / held-out) and the online one
   over the grid.

Usage (from the repository root; a small grid for a smoke run: ``--ks 1 2 --Ns 2 4 --folds 3``)::

    mpirun -n 2 .venv/bin/python benchmarks/local_bases_online.py \\
        cases/regimes_hot_spot.toml cases/regimes_load_circle.toml cases/hot_spots.toml \\
        [--ks 1 2 3 4] [--Ns 2 4 8 12] [--folds 4] [--json PATH]

``cases/hot_spots.toml`` needs its temperature fields: ``python examples/write_hot_spots.py``.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's ddrom, as the other benchmarks
import ddrom  # noqa: F401,E402  (PETSc / parallel h5py environment first)


def spearman(a: Any, b: Any) -> float:
    """Spearman's rank correlation (average ranks for ties; NaN with fewer than 3 pairs)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)


def evaluate_case(path: str, comm: Any, ks: list[int], Ns: list[int], folds: int | None) -> dict:
    """HF store, a priori tables, the a posteriori check of the whole grid, and the verdicts."""
    from ddrom.workflow.build import load_case_collectively
    from ddrom.workflow.cluster import cluster_report
    from ddrom.workflow.hf import hf_sweep

    case = load_case_collectively(path, comm)
    t0 = time.perf_counter()
    hf_sweep(case, comm, which="all" if case.test_parameters() else "training")
    t_hf = time.perf_counter() - t0
    t0 = time.perf_counter()
    configs = [(k, N) for k in ks for N in Ns]
    rep = cluster_report(case, comm, ks, Ns, check="folds", check_configs=configs, folds=folds)
    t_all = time.perf_counter() - t0
    out = {"case": path, **analyse(rep, configs, Ns), "seconds": {"hf": t_hf, "criterion_and_check": t_all}}
    if case.test_parameters():
        # new points, never seen by the criterion: ROMs from every training simulation
        from ddrom.workflow.cluster import heldout_online

        t0 = time.perf_counter()
        test = heldout_online(case, comm, configs, mode="test")
        out["seconds"]["test_check"] = time.perf_counter() - t0
        out["test"] = analyse({**rep, "check": test}, configs, Ns, fold_check=rep["check"])
        out["test"]["check"] = test
    return out


def analyse(rep: dict, configs: list[tuple[int, int]], Ns: list[int], fold_check: dict | None = None) -> dict:
    """Rankings, per-N decisions and the recommendation's verdict from a cluster report.

    Per N (the online budget): the a priori criterion's choice and the checked one (what
    ``ddrom cluster --online-modes N`` recommends: :func:`ddrom.workflow.cluster.verdict` on
    the held-out online errors of the folds, ``fold_check``, default ``rep["check"]``),
    each judged against the online errors of ``rep["check"]`` (the folds themselves, or the
    test points: new simulations neither choice saw).
    """
    from ddrom.reduction.criterion import GAIN_MIN
    from ddrom.workflow.cluster import verdict as final_choice

    table = {(r["k"], r["N"]): r for r in rep["table"]}
    online = {(r["k"], r["N"]): r for r in rep["check"]["configs"]}
    keys = [cfg for cfg in configs if cfg in online and cfg in table]
    on = [online[c]["mean_displacement"] for c in keys]
    rho_held = spearman([table[c]["heldout_mean_local"] for c in keys], on)
    rho_train = spearman([table[c]["mean_local"] for c in keys], on)
    # the ranking over the grid is dominated by N (more modes, smaller errors, in both); whether
    # the criterion knows *where local bases help* is the ranking of the gains over the global
    # basis of the same N, local configurations only
    loc = [c for c in keys if c[0] > 1]
    rho_gain = spearman([table[c]["heldout_mean_global"] / table[c]["heldout_mean_local"] for c in loc],
                        [online[(1, c[1])]["mean_displacement"] / online[c]["mean_displacement"] for c in loc])
    # per N (about equal online cost): the criterion's choice against the online truth
    per_N = []
    for N in Ns:
        at = [c for c in keys if c[1] == N]
        g = online[(1, N)]["mean_displacement"]
        best = min(at, key=lambda c: online[c]["mean_displacement"])
        loc = [c for c in at if c[0] > 1]
        best_prior = min(loc, key=lambda c: (table[c]["heldout_mean_local"], c[0])) if loc else None
        pays_prior = bool(best_prior is not None and table[best_prior]["heldout_mean_local"] * GAIN_MIN
                          < table[(1, N)]["heldout_mean_local"])
        choice = best_prior if pays_prior else (1, N)
        c_on = online[choice]["mean_displacement"]
        fc = fold_check or rep["check"]
        checked = final_choice({"choice": {"k": choice[0], "N": N}},
                               {"configs": [r for r in fc["configs"] if r["N"] == N]})
        k_chk = checked["k"]
        chk_on = online[(k_chk, N)]["mean_displacement"]
        per_N.append({
            "checked_k": k_chk, "checked_message": checked["message"], "online_error_checked": chk_on,
            "checked_right": bool(chk_on <= g if k_chk > 1 else online[best]["mean_displacement"] * GAIN_MIN >= g),
            "checked_points": online[(k_chk, N)]["points_mean"], "global_points": online[(1, N)]["points_mean"],
            "N": N, "criterion_k": choice[0], "criterion_local": pays_prior,
            "online_error_criterion_choice": c_on, "online_error_global": g,
            "best_k_online": best[0], "best_online": online[best]["mean_displacement"],
            "local_beats_global_online": bool(best[0] > 1 and online[best]["mean_displacement"] < g),
            # the criterion's choice is never worse than the global ROM, and says global only when no
            # local configuration is better online by the same margin
            "criterion_right": bool(c_on <= g if pays_prior else online[best]["mean_displacement"] * GAIN_MIN >= g),
        })
    rec = rep["recommendation"]
    ch = rec["choice"]
    rk, rN = ch["k"], ch["N"]
    r_on, g_on = online[(rk, rN)], online[(1, rN)]
    verdict = {
        "recommended": [rk, rN], "local_recommended": rec["local_pays_off"], "message": rec["message"],
        "online_error_recommended": r_on["mean_displacement"], "online_error_global_same_N": g_on["mean_displacement"],
        "seconds_recommended": r_on["seconds_mean"], "seconds_global_same_N": g_on["seconds_mean"],
        "points_recommended": r_on["points_mean"], "points_global_same_N": g_on["points_mean"],
        "not_worse_than_global": r_on["mean_displacement"] <= g_on["mean_displacement"],
        "cost_not_higher": r_on["points_mean"] <= g_on["points_mean"] and r_on["modes_mean"] <= g_on["modes_mean"],
        "local_pays_off_online_somewhere": any(p["local_beats_global_online"] for p in per_N),
        "criterion_right_per_N": sum(p["criterion_right"] for p in per_N), "n_N": len(per_N),
    }
    return {"simulations": rep["simulations"], "snapshots": rep["snapshots"], "heldout": rep["heldout"],
            "table": rep["table"], "check": rep["check"], "recommendation": rec, "per_N": per_N,
            "spearman_heldout": rho_held, "spearman_training": rho_train, "spearman_gain": rho_gain,
            "verdict": verdict,
            "timers": rep["timers"]}


def format_case(res: dict, title: str | None = None) -> str:
    online = {(r["k"], r["N"]): r for r in res["check"]["configs"]}
    lines = [f"\n{res['case']}: {res['simulations']} simulations, {res['snapshots']} snapshots; "
             f"held out: {res['heldout']['protocol']}"
             + (f"\nonline errors: {res['check']['protocol']}" if title is None else f"\n{title}")]
    head = (f"{'k':>2} {'N':>3} | {'train proj':>10} {'held proj':>10} {'fallback':>8} | {'online u':>9} "
            f"{'max u':>8} {'online p':>9} {'s/run':>8} {'modes':>5} {'points':>6} {'local':>5}")
    lines += [head, "-" * len(head)]
    for r in res["table"]:
        o = online.get((r["k"], r["N"]))
        if o is None:
            continue
        lines.append(f"{r['k']:>2} {r['N']:>3} | {r['mean_local']:>10.3e} {r['heldout_mean_local']:>10.3e} "
                     f"{r['heldout_fallback']:>8.2f} | {o['mean_displacement']:>9.3e} {o['max_displacement']:>8.2e} "
                     f"{o['mean_plastic_strain']:>9.2e} {o['seconds_mean']:>8.2e} {o['modes_mean']:>5.1f} "
                     f"{o['points_mean']:>6.1f} {o['routed_local']:>2}/{o['n_runs']:<2}")
    v = res["verdict"]
    lines.append(f"recommended (held-out criterion): k={v['recommended'][0]}, N={v['recommended'][1]}: {v['message']}")
    lines.append(f"online: recommended {v['online_error_recommended']:.3e} vs global (same N) "
                 f"{v['online_error_global_same_N']:.3e}; s/run {v['seconds_recommended']:.2e} vs "
                 f"{v['seconds_global_same_N']:.2e}; points {v['points_recommended']:.1f} vs "
                 f"{v['points_global_same_N']:.1f}")
    lines.append("per N (criterion's choice, online error against the global ROM's; online best k): " + "; ".join(
        f"N={p['N']}: k={p['criterion_k']} {p['online_error_criterion_choice']:.3e} vs {p['online_error_global']:.3e}, "
        f"best k={p['best_k_online']} ({p['best_online']:.3e}){'' if p['criterion_right'] else ' MISS'}"
        for p in res["per_N"]))
    lines.append("per N, checked on the folds (ddrom cluster --online-modes N): " + "; ".join(
        f"N={p['N']}: k={p['checked_k']} {p['online_error_checked']:.3e} vs {p['online_error_global']:.3e} "
        f"({p['checked_points']:.0f} vs {p['global_points']:.0f} points){'' if p['checked_right'] else ' MISS'}"
        for p in res["per_N"]))
    lines.append(f"Spearman (a priori vs online mean error over the grid): held-out {res['spearman_heldout']:.3f}, "
                 f"training {res['spearman_training']:.3f}; of the gains over the global basis (k > 1): "
                 f"{res['spearman_gain']:.3f}")
    return "\n".join(lines)


def markdown(res: dict) -> str:
    """The case's tables in Markdown (what benchmarks/README.md shows)."""
    online = {(r["k"], r["N"]): r for r in res["check"]["configs"]}
    test = {(r["k"], r["N"]): r for r in res["test"]["check"]["configs"]} if "test" in res else {}
    head = ("| k | N | training proj. | held-out proj. | fallback | online u (held out) | max | modes | points "
            "| local runs |" + (" online u (test points) | local runs |" if test else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in res["table"]:
        key = (r["k"], r["N"])
        o = online.get(key)
        if o is None:
            continue
        row = (f"| {r['k']} | {r['N']} | {r['mean_local']:.2e} | {r['heldout_mean_local']:.3g} | "
               f"{r['heldout_fallback']:.2f} | {o['mean_displacement']:.3g} | {o['max_displacement']:.2g} | "
               f"{o['modes_mean']:.1f} | {o['points_mean']:.0f} | {o['routed_local']}/{o['n_runs']} |")
        if test:
            t = test[key]
            row += f" {t['mean_displacement']:.3g} | {t['routed_local']}/{t['n_runs']} |"
        lines.append(row)
    lines.append("")
    head = "| N | a priori | checked | held out: a priori's choice | global | best k | right? |"
    if test:
        head += " test points: a priori's choice | right? | checked choice | right? | global | best k |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    tests = {p["N"]: p for p in res["test"]["per_N"]} if test else {}

    def kname(k: int) -> str:
        return "global" if k == 1 else f"k={k}"

    def yes(ok: bool) -> str:
        return "yes" if ok else "miss"

    for p in res["per_N"]:
        row = (f"| {p['N']} | {kname(p['criterion_k'])} | {kname(p['checked_k'])} | "
               f"{p['online_error_criterion_choice']:.3g} | {p['online_error_global']:.3g} | "
               f"{p['best_k_online']} ({p['best_online']:.3g}) | {yes(p['criterion_right'])} |")
        if test:
            t = tests[p["N"]]
            row += (f" {t['online_error_criterion_choice']:.3g} | {yes(t['criterion_right'])} | "
                    f"{t['online_error_checked']:.3g} ({t['checked_points']:.0f} pts) | {yes(t['checked_right'])} | "
                    f"{t['online_error_global']:.3g} ({t['global_points']:.0f} pts) | "
                    f"{t['best_k_online']} ({t['best_online']:.3g}) |")
        lines.append(row)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from mpi4py import MPI

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("cases", nargs="+", help="case files (TOML) with a training set")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 4], help="numbers of clusters")
    p.add_argument("--Ns", type=int, nargs="+", default=[2, 4, 8, 12], help="modes per basis")
    p.add_argument("--folds", type=int, default=4, help="folds of the training simulations (0: leave-one-out)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--markdown", metavar="PATH", help="also write the tables in Markdown")
    a = p.parse_args(argv)
    comm = MPI.COMM_WORLD
    if 1 not in a.ks:
        a.ks = [1] + a.ks              # the global ROM is the reference
    results = []
    for path in a.cases:
        res = evaluate_case(path, comm, a.ks, a.Ns, a.folds or None)
        results.append(res)
        if comm.rank == 0:
            print(format_case(res), flush=True)
            if "test" in res:
                print(format_case({**res["test"], "case": res["case"]},
                                  f"online errors at the case's test points: {res['test']['check']['protocol']}"),
                      flush=True)
    if comm.rank == 0:
        print("\nSpearman held-out criterion vs online (folds / test points): " + ", ".join(
            f"{r['case']}: {r['spearman_heldout']:.3f}" + (f" / {r['test']['spearman_heldout']:.3f}" if "test" in r
                                                          else "") for r in results))
        if a.markdown:
            with open(a.markdown, "w") as f:
                for r in results:
                    f.write(f"### {r['case']}\n\n{markdown(r)}\n\n")
            print(f"wrote {a.markdown}")
        if a.json:
            from ddrom.io.jsonio import write_json
            from ddrom.workflow.rom import json_default

            write_json(a.json, {"benchmark": "local_bases_online", "ranks": comm.size,
                                "python": sys.version.split()[0], "numpy": np.__version__,
                                "machine": platform.machine(), "args": vars(a),
                                "ddrom_version": ddrom.__version__, "cases": results},
                       indent=1, default=json_default)
            print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
