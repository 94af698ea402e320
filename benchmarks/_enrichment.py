"""Plain ROM, enriched ROM and HF side by side on a case's test points (shared by
``adaptive_enrichment.py``, ``temperature_fields.py`` and ``cyclic_extrapolation.py``).

Everything goes through the library API (``import ddrom``): HF training sweep and offline
(stores and ROM of an earlier run are reused when up to date), the HF run of every test
point recomputed and timed in this process (the reference and the unit of cost: same
ranks, same moment, so ratios mean something on a shared machine), the plain ROM,
the calibration of every indicator component on the first ``calibrate_on`` test points,
and the enriched ROM with the calibrated tolerances. For each run: space-time and largest
per-step errors of u and p, enrichments, cost over the HF run, and the misses and false
alarms of the calibrated tolerances step by step.
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np


def evaluate(case: Any, comm: Any, *, calibrate_on: int | None = None, extra_tols: list[float] = (),
             hf_test: bool = True, test_case: Any = None, log=print) -> dict:
    """``test_case``: the case the validation points (the test points after the first
    ``calibrate_on``) run -- HF reference, plain and enriched ROM -- when it differs from
    the training ``case``, e.g. a longer history (``case.with_t_end``) in its own output
    folder; the calibration points then run the training case's history (the calibration
    is what a user has: HF of a few fields over the trained span). The ROM is the training
    case's."""
    import ddrom
    from ddrom.parallel import Timers
    from ddrom.rom.calibration import calibrate_indicator, detection, tolerances_for_time
    from ddrom.rom.model import store_calibration
    from ddrom.rom.online import INDICATOR_COMPONENTS
    from ddrom.workflow.options import indicator_options
    from ddrom.workflow.rom import hf_context, rom_path

    context = hf_context(case, comm, Timers())
    dm = context[0]
    mesh = dm.summary()
    ddrom.run_hf(case, comm, which="training", dm=dm)
    off = ddrom.build_rom(case, comm, context=context)
    rom = rom_path(case)
    n_pts = len(case.test_parameters())
    n_cal = n_pts if calibrate_on is None else max(1, min(calibrate_on, n_pts))
    if test_case is None:
        subsets = [("", case)]
    else:
        values = list(case.raw["test"]["values"])
        subsets = [("calibration", case.replace({"test": {"values": values[:n_cal]}})),
                   ("validation", test_case.replace({"test": {"values": values[n_cal:]}}))]
    io = indicator_options(case)
    targets = {"p": io.target, "u": io.target_u}
    hf_secs, hf_newton, plain_runs, err0, offline_model = {}, {}, [], [], None
    for label, sub in subsets:
        hf = ddrom.run_hf(sub, comm, which="test", resume=not hf_test, dm=dm)
        for r in hf["sets"]["test"]["runs"]:
            hf_secs[_key(label, r["name"])] = r["seconds"]
            hf_newton[_key(label, r["name"])] = r.get("newton_iterations")
        plain = ddrom.run_rom(sub, comm, rom=rom, enrich=False, context=context, write=False)
        errs = ddrom.compare_runs(sub, comm, plain.runs, plain.model, context=context)
        for e, run in zip(errs, plain.runs):
            e["name"] = _key(label, e["name"])
            run.name = e["name"]
        plain_runs += plain.runs
        err0 += errs
        offline_model = plain.model
    cal = calibrate_indicator(err0[:n_cal], io.target, io.confidence, targets={"u": io.target_u},
                              components=INDICATOR_COMPONENTS)
    cal["calibrated_on"] = [e["name"] for e in err0[:n_cal]]
    store_calibration(rom, cal, comm)
    tolerances = dict(cal.get("tolerances") or {})
    if cal.get("indicator_tolerance"):
        tolerances["p"] = cal["indicator_tolerance"]
    results: dict[str, Any] = {"case": str(case.path), "ranks": comm.size, "mesh": mesh, "targets": targets,
                               "offline": {k: off[k] for k in ("seconds", "n_modes", "n_reduced_points",
                                                               "n_gappy_extra_points")},
                               "calibration": cal, "tolerances": tolerances, "hf_seconds": hf_secs,
                               "hf_newton_iterations": hf_newton,
                               "plain": [], "enriched": []}
    if test_case is not None and cal.get("calibrated_t_end") is not None:
        t_end = float(err0[-1]["times"][-1])
        results["tolerances_beyond_span"] = tolerances_for_time(cal, t_end, tolerances)[0]
    results["detection_plain"] = detection(err0, tolerances, targets)
    for e, run in zip(err0, plain_runs):
        results["plain"].append(_record(e, run, hf_secs, hf_newton))
    sets = [("calibrated", tolerances)] + [(f"p tol {t:g}", {**tolerances, "p": t}) for t in extra_tols]
    for label_t, tols in sets:
        errs_all = []
        for label, sub in subsets:
            enr = ddrom.run_rom(sub, comm, rom=rom, enrich=True, context=context, write=False, save_rom=False,
                                indicator_tol=tols.get("p", 1e30),
                                indicator_tols={k: v for k, v in tols.items() if k != "p"})
            err = ddrom.compare_runs(sub, comm, enr.runs, offline_model, context=context)
            for e, run in zip(err, enr.runs):
                e["name"] = run.name = _key(label, e["name"])
                rec = _record(e, run, hf_secs, hf_newton)
                rec["tolerances"] = label_t
                results["enriched"].append(rec)
            errs_all += err
        results.setdefault("detection_enriched", {})[label_t] = detection(errs_all, tols, targets)
    return results


def _key(label: str, name: str) -> str:
    return f"{label}/{name}" if label else name


def events(ev: list[dict]) -> list[dict]:
    """The enrichment events of a run, with their time split (replay, HF step, update and its parts)."""
    keys = ("step", "reason", "modes_added", "stress_modes_added", "p_modes_added", "temperature_modes_added",
            "points_added", "hyper_reduced", "seconds", "seconds_replay", "replay_elastic_fraction",
            "seconds_hf_step", "seconds_update", "update_split", "hf_newton_iterations", "hf_ksp_iterations",
            "hf_pc_reused")
    return [{k: x[k] for k in keys if k in x} for x in ev]


def _finite_max(v) -> float:
    a = np.array([x for x in v if x is not None and np.isfinite(x)], dtype=float)
    return float(a.max()) if a.size else math.nan


def _record(e: dict, run: Any, hf_secs: dict, hf_newton: dict) -> dict:
    res = run.result
    ev = res.enrichments
    return {"name": run.name, "params": {k: (os.path.basename(v) if isinstance(v, str) else v)
                                         for k, v in run.params.items()},
            "u": e["displacement"], "p": e["plastic_strain"], "stress": e["stress"],
            "u_step_max": _finite_max(e["u_error_per_step"]), "p_step_max": _finite_max(e["p_error_per_step"]),
            "n_enrichments": len(ev), "n_modes": res.model.n_modes if res.model is not None else None,
            "rom_seconds": res.seconds, "hf_seconds": hf_secs.get(run.name),
            "cost_ratio": res.seconds / hf_secs[run.name] if hf_secs.get(run.name) else None,
            "seconds_replay": sum(x["seconds_replay"] for x in ev),
            "seconds_hf_step": sum(x["seconds_hf_step"] for x in ev),
            "seconds_update": sum(x["seconds_update"] for x in ev),
            # load-independent cost: the enrichments' HF Newton iterations over the HF run's
            "hf_newton_enrichments": sum(x.get("hf_newton_iterations") or 0 for x in ev),
            "hf_newton_run": hf_newton.get(run.name),
            "events": events(ev),
            "extrapolation": run.inputs.extrapolation,
            "u_error_per_step": e["u_error_per_step"], "p_error_per_step": e["p_error_per_step"],
            "indicators_per_step": e["indicators_per_step"],
            "field_check": getattr(res, "field_check", None)}


def _newton_ratio(r: dict) -> str:
    if not r.get("n_enrichments") or not r.get("hf_newton_run"):
        return ""
    return f"{r['hf_newton_enrichments']}/{r['hf_newton_run']}={r['hf_newton_enrichments'] / r['hf_newton_run']:.2f}"


def table(results: dict, title: str) -> str:
    t = results["targets"]
    head = (f"{'ROM':<11}{'point':<34}{'err u':>9}{'u/step':>9}{'err p':>9}{'p/step':>9}{'err sig':>9}"
            f"{'enr.':>5}{'ROM s':>8}{'HF s':>8}{'cost/HF':>8}{'Newton enr/HF':>14}")
    cal = results["calibration"]
    comps = cal.get("components", {})
    lines = [title,
             "tolerances (calibrated on " + ", ".join(cal.get("calibrated_on", [])) + "): " +
             ", ".join(f"{k} {v:.3g}" + (" (fallback)" if comps.get(k, {}).get("fallback") else "")
                       for k, v in results["tolerances"].items()) +
             "; r(log): " + ", ".join(f"{k} {c.get('pearson_log', float('nan')):.3f}" for k, c in comps.items()),
             f"targets: u {t['u']:g}, p {t['p']:g} (per step)", head, "-" * len(head)]
    for kind, recs in (("plain", results["plain"]), ("enriched", results["enriched"])):
        for r in recs:
            point = ", ".join(f"{k}={v:g}" if not isinstance(v, str) else f"{k}={v}" for k, v in r["params"].items())
            lines.append(f"{kind:<11}{point[:33]:<34}{r['u']:>9.1e}{r['u_step_max']:>9.1e}{r['p']:>9.1e}"
                         f"{r['p_step_max']:>9.1e}{r['stress']:>9.1e}{r['n_enrichments']:>5d}"
                         f"{r['rom_seconds']:>8.2f}{(r['hf_seconds'] or float('nan')):>8.1f}"
                         f"{(r['cost_ratio'] or float('nan')):>8.3f}"
                         f"{_newton_ratio(r):>14}")
    d = results["detection_plain"]
    lines.append(f"detection on the plain runs: {d['needed']} of {d['steps']} steps above a target, "
                 f"{d['flagged']} flagged, {d['missed']} missed, {d['false_alarms']} false alarms")
    for label, d in results.get("detection_enriched", {}).items():
        lines.append(f"after enrichment ({label}): {d['needed']} steps above a target, {d['missed']} missed "
                     f"{d['missed_steps'][:6]}")
    return "\n".join(lines)


def write_json(results: dict, path: str) -> None:
    from ddrom.io.jsonio import write_json as _write
    from ddrom.workflow.rom import json_default

    _write(path, results, default=json_default)
