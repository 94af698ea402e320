"""Adaptive enrichment: plain ROM, enriched ROM and HF side by side on one case.

    mpirun -n 2 python benchmarks/adaptive_enrichment.py [--case cases/adaptive.toml]
        [--tol 1e-3 --tol 3e-3 ...] [--refine R] [--cycles-factor C] [--calibrate-on N]
        [--json PATH]

1. HF training sweep and offline stage (stores of an earlier run are reused).
2. The HF run of every test point, recomputed and timed in this process: the reference
   and the unit of cost (same ranks, same moment, so the ratio is meaningful on a
   shared machine).
3. The plain ROM on every test point: relative space-time errors, indicator per step,
   calibration (Pearson r of log indicator vs log error, tolerance for the target) on all
   of them or, with ``--calibrate-on N``, on the first N only (the others then validate the
   calibrated tolerance out of sample).
4. The enriched ROM for the calibrated tolerance and every ``--tol``: errors (space-time,
   and the largest per-step error of p, ``p/step``), number of
   enrichments, ROM seconds including the HF steps, cost ratio to the HF run of the same
   point, time split (replay, HF step, basis/ECM/operator update).

Prints one table; ``--json`` writes everything; ``adaptive_enrichment.png`` (in the case's
output folder) plots indicator and true error per step, plain vs enriched.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ddrom  # noqa: E402,F401
from mpi4py import MPI  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default=str(Path(__file__).resolve().parents[1] / "cases" / "adaptive.toml"))
    ap.add_argument("--tol", type=float, action="append", default=[],
                    help="indicator tolerance to try besides the calibrated one (repeatable)")
    ap.add_argument("--refine", type=int, default=1, metavar="R",
                    help="multiply n_around, n_radial, n_thick of the case's plate_with_hole mesh by R "
                         "(the variant is written to benchmarks/results/adaptive_r<R>/)")
    ap.add_argument("--cycles-factor", type=int, default=1, metavar="C",
                    help="multiply t_end and n_steps of the case by C (C times more load cycles, same "
                         "step size); the variant is written to benchmarks/results/adaptive_r<R>_c<C>/")
    ap.add_argument("--calibrate-on", type=int, default=None, metavar="N",
                    help="calibrate the indicator on the first N test points only; the others are "
                         "out-of-sample validation points (default: all, in-sample)")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    if args.refine > 1 or args.cycles_factor > 1:
        args.case = _variant_case(args.case, args.refine, args.cycles_factor)

    from ddrom.cli.build import load_case_collectively
    from ddrom.cli.pipeline import hf_sweep, store_path
    from ddrom.cli.rom_pipeline import (_compare_run, _hf_context, _plot_enrichment, calibrate_indicator,
                                        offline, online)
    from ddrom.io.store import SnapshotStore
    from ddrom.parallel import Timers, rank0_print

    comm = MPI.COMM_WORLD
    case = load_case_collectively(args.case, comm)
    context = _hf_context(case, comm, Timers())
    dm, solver = context
    mesh = dm.summary()                       # collective: not inside the rank-0 printing
    hf_sweep(args.case, comm, which="training", quiet=True, case=case, dm=dm)
    off = offline(args.case, comm, quiet=True, case=case, context=context)
    hf = hf_sweep(args.case, comm, which="test", resume=False, quiet=True, case=case, dm=dm)
    hf_secs = {r["name"]: r["seconds"] for r in hf["sets"]["test"]["runs"]}
    target = float(case.raw.get("rom", {}).get("indicator_target", 1e-2))
    confidence = float(case.raw.get("rom", {}).get("indicator_confidence", 0.95))

    store = SnapshotStore.open(store_path(case, "test"), comm, mode="r", dmesh=dm)
    plain = online(args.case, comm, quiet=True, case=case, enrich=False)
    err0 = [_compare_run(case, dm, solver, plain["model"], store, n, p, r) for n, p, r in plain["runs"]]
    n_cal = len(err0) if args.calibrate_on is None else max(1, min(args.calibrate_on, len(err0)))
    cal = calibrate_indicator(err0[:n_cal], target, confidence)
    cal["calibrated_on"] = [e["name"] for e in err0[:n_cal]]
    tols = ([cal["indicator_tolerance"]] if cal.get("indicator_tolerance") else []) + list(args.tol)
    rows, results = [], {"case": str(case.path), "ranks": comm.size, "mesh": mesh, "target": target,
                         "offline_seconds": off["seconds"], "calibration": cal, "hf_seconds": hf_secs,
                         "plain": [], "enriched": []}
    for e, (name, params, res) in zip(err0, plain["runs"]):
        rec = {"name": name, "params": params, "u": e["displacement"], "p": e["plastic_strain"],
               "p_step_max": _max_step(e),
               "stress": e["stress"], "n_enrichments": 0, "rom_seconds": res.seconds,
               "cost_ratio": res.seconds / hf_secs[name], "indicator_per_step": e["indicator_per_step"],
               "p_error_per_step": e["p_error_per_step"]}
        results["plain"].append(rec)
        rows.append(("plain", "-", rec))
    for i, tol in enumerate(tols):
        enr = online(args.case, comm, quiet=True, case=case, enrich=True, indicator_tol=tol, context=context)
        err = [_compare_run(case, dm, solver, plain["model"], store, n, p, r) for n, p, r in enr["runs"]]
        for e, (name, params, res) in zip(err, enr["runs"]):
            ev = res.enrichments
            rec = {"name": name, "params": params, "tolerance": tol, "u": e["displacement"],
                   "p": e["plastic_strain"], "p_step_max": _max_step(e), "stress": e["stress"],
                   "n_enrichments": len(ev),
                   "n_modes": res.model.n_modes, "n_points": res.model.n_points,
                   "rom_seconds": res.seconds, "enrichment_seconds": res.enrichment_seconds,
                   "cost_ratio": res.seconds / hf_secs[name],
                   "seconds_replay": sum(x["seconds_replay"] for x in ev),
                   "seconds_hf_step": sum(x["seconds_hf_step"] for x in ev),
                   "seconds_update": sum(x["seconds_update"] for x in ev), "events": ev,
                   "indicator_per_step": e["indicator_per_step"], "p_error_per_step": e["p_error_per_step"]}
            e.update(events=ev)
            results["enriched"].append(rec)
            rows.append(("enriched", f"{tol:.2e}" + (" (cal.)" if i == 0 and cal.get("indicator_tolerance") else ""),
                         rec))
        if i == 0 and comm.rank == 0:
            _plot_enrichment(case, err0, err, {"indicator_tolerance": tol})
            src = Path(case.output_dir) / "enrichment.png"
            os.replace(src, Path(case.output_dir) / "adaptive_enrichment.png")
    store.close()
    if comm.rank == 0:
        head = (f"{'ROM':<9}{'tolerance':<18}{'point':<30}{'err u':>9}{'err p':>9}{'p/step':>9}{'err sig':>9}"
                f"{'enr.':>5}{'ROM s':>8}{'HF s':>8}{'cost/HF':>8}{'replay':>8}{'HF step':>8}{'update':>8}")
        lines = [f"adaptive enrichment: {case.path.name}, {comm.size} rank(s), {mesh}, target {target:g}",
                 f"calibration on the plain runs: Pearson r(log) = {cal.get('pearson_log', float('nan')):.3f} over "
                 f"{cal.get('pairs')} pairs, tolerance {cal.get('indicator_tolerance')} at "
                 f"{confidence:.0%} confidence (mean fit {cal.get('indicator_tolerance_fit')}); calibrated on "
                 f"{', '.join(cal['calibrated_on'])} (other points: out-of-sample validation)", head, "-" * len(head)]
        for kind, tol, r in rows:
            point = ", ".join(f"{k}={v:g}" for k, v in r["params"].items())
            lines.append(f"{kind:<9}{tol:<18}{point:<30}{r['u']:>9.1e}{r['p']:>9.1e}{r['p_step_max']:>9.1e}"
                         f"{r['stress']:>9.1e}"
                         f"{r['n_enrichments']:>5d}{r['rom_seconds']:>8.2f}{hf_secs[r['name']]:>8.2f}"
                         f"{r['cost_ratio']:>8.3f}{r.get('seconds_replay', 0):>8.2f}"
                         f"{r.get('seconds_hf_step', 0):>8.2f}{r.get('seconds_update', 0):>8.2f}")
        print("\n".join(lines), flush=True)
        if args.json:
            from ddrom.io.jsonio import write_json  # strict JSON (NaN -> null), atomic

            write_json(args.json, results, indent=2, default=str)
    rank0_print(comm, "")


def _max_step(e: dict) -> float:
    """Largest per-step relative error of p (the quantity the indicator is calibrated on)."""
    v = [x for x in e["p_error_per_step"] if x is not None and np.isfinite(x)]
    return float(max(v)) if v else float("nan")


def _variant_case(path: str, r: int, cycles: int) -> str:
    """The case with an r-times finer mesh and/or ``cycles`` times more load cycles (same
    time step), written (rank 0) next to the benchmark results."""
    import re

    name = f"adaptive_r{r}" + (f"_c{cycles}" if cycles > 1 else "")
    out = Path(__file__).resolve().parent / "results" / name
    dst = out / Path(path).name
    if MPI.COMM_WORLD.rank == 0:
        text = Path(path).read_text()
        for key in ("n_around", "n_radial", "n_thick"):
            text = re.sub(rf"({key} = )(\d+)", lambda m: f"{m.group(1)}{int(m.group(2)) * r}", text, count=1)
        for key in ("t_end", "n_steps"):
            text = re.sub(rf"^({key} = )([0-9.]+)", lambda m: f"{m.group(1)}{float(m.group(2)) * cycles:g}"
                          if "." in m.group(2) else f"{m.group(1)}{int(m.group(2)) * cycles}", text, count=1,
                          flags=re.M)
        text = re.sub(r'^# output = .*$|^output = .*$', 'output = "out"', text, flags=re.M)
        out.mkdir(parents=True, exist_ok=True)
        dst.write_text(text)
    MPI.COMM_WORLD.Barrier()
    return str(dst)


if __name__ == "__main__":
    main()
