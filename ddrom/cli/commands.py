"""The table of ``ddrom`` subcommands: name -> (help, add_arguments, run)."""
from __future__ import annotations

import argparse
import contextlib
import sys
import logging
import time
from typing import Any, Callable, Iterator

from ddrom.parallel.log import rank0_print


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", metavar="PATH", help="also write the summary as JSON to PATH ('-' for stdout)")


def _emit_json(args: Any, comm: Any, payload: dict) -> None:
    """The command's summary as strict JSON (NaN and infinities as null) to a file or stdout."""
    import json

    from ddrom.io.jsonio import NONFINITE_KEY, strict
    from ddrom.workflow.rom import json_default

    if not getattr(args, "json", None) or comm.rank != 0:
        return
    value, bad = strict(payload, json_default)
    if bad and isinstance(value, dict):
        value[NONFINITE_KEY] = bad            # as in the files the library writes (ddrom.io.jsonio)
    text = json.dumps(value, indent=2, allow_nan=False)
    if args.json == "-":
        print(text, flush=True)
    else:
        with open(args.json, "w") as f:
            f.write(text + "\n")


@contextlib.contextmanager
def _output(args: Any) -> Iterator[None]:
    """Run a command's body with the library's log lines shown (``--quiet``: warnings only,
    on stderr, so that ``--quiet --json -`` prints nothing but the JSON on stdout)."""
    from ddrom.parallel.log import configure_logging

    configure_logging(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    yield


def _add_resources(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ignore-resources", dest="ignore_resources", action="store_true", default=None,
                   help="run even if the estimated memory or disk exceeds what is available (default: refuse "
                        "before allocating; also DDROM_IGNORE_RESOURCES=1)")


def _case(args: Any, comm: Any) -> Any:
    """The validated case of a command (every rank; one message if it is wrong)."""
    from ddrom.workflow.build import load_case_collectively

    return load_case_collectively(args.case, comm)


def _lock(target: Any, comm: Any, shared: bool = False) -> Any:
    """The output folder's lock for the whole command (ddrom.workflow.locking)."""
    from ddrom.workflow.locking import output_lock

    return output_lock(target, comm, shared=shared)


def _stage_printer(args: Any, comm: Any, label: str, stages: Any = None) -> Any:
    from ddrom.parallel import StagePrinter

    return StagePrinter(comm, label, stages=stages, quiet=getattr(args, "quiet", False))


def _print_table(args: Any, comm: Any, title: str, rows: list[tuple[str, Any]]) -> None:
    """A two-column summary table on rank 0 (unless ``--quiet``)."""
    if getattr(args, "quiet", False):
        return
    w = max((len(k) for k, _ in rows), default=0)
    rank0_print(comm, title + "\n" + "\n".join(f"  {k:<{w}}  {v}" for k, v in rows))


def _timer_rows(timers: dict, names: Any = None) -> list[tuple[str, str]]:
    """Rows ``time <stage> (s)`` of a ``Timers.summary`` dict (max over ranks)."""
    keys = [k for k in (names or sorted(timers)) if k in timers]
    return [(f"time {k} (s)", f"{timers[k]['seconds']:.3f} ({timers[k]['calls']} calls)") for k in keys]


#: Stages of the offline build (``ddrom.rom.offline`` and the CLI), printed as they run.
OFFLINE_STAGES = ("mesh", "pod_displacement", "pod_stress", "pod_p", "pod_temperature", "ecm", "gappy",
                  "operators", "temperature_sensors", "monitor_points", "clustering", "write_rom")


#: Stages of ``ddrom online`` printed as they run: the HF context (for --fields or enrichment)
#: and the steps of an adaptive enrichment (replay, HF step, basis update + hyper-reduction).
ONLINE_STAGES = ("mesh", "enrichment_replay", "enrichment_hf_step", "enrichment_update", "ecm", "gappy",
                 "operators")


# ------------------------------------------------------------------------ info
def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="PATH", help="write as JSON to PATH ('-' for stdout)")
    p.add_argument("--quiet", action="store_true", help="no text output (with --json PATH: only the file)")


def _info_run(args: Any, comm: Any) -> int:
    from ddrom.cli.info import collect, format_info

    info = collect(comm)
    if args.json:
        _emit_json(args, comm, info)
    elif not args.quiet:
        rank0_print(comm, format_info(info))
    return 0


# -------------------------------------------------------------------------- hf
def _hf_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("case", help="case file (TOML)")
    p.add_argument("--which", choices=["training", "test", "all"], default="training",
                   help="which parameter set to compute (default: training)")
    p.add_argument("--restart", action="store_true",
                   help="recompute everything instead of resuming an interrupted sweep")
    p.add_argument("--max-simulations", type=int, metavar="N",
                   help="stop after computing N simulations (split a sweep over several jobs; "
                        "run again to resume)")
    p.add_argument("--stream-pod", dest="stream_pod", action="store_true", default=None,
                   help="also feed the streaming displacement POD with every converged training step "
                        "(default: [rom] stream_during_hf)")
    p.add_argument("--no-stream-pod", dest="stream_pod", action="store_false", help="do not")
    _add_resources(p)
    _add_common(p)


def _hf_run(args: Any, comm: Any) -> int:
    from ddrom.workflow.hf import hf_sweep

    t0 = time.perf_counter()
    case = _case(args, comm)
    with _output(args), _lock(case, comm):
        summary = hf_sweep(case, comm, which=args.which, resume=not args.restart, progress=not args.quiet,
                           max_simulations=args.max_simulations, stream_pod=args.stream_pod,
                           ignore_resources=args.ignore_resources)
    summary["wall_seconds"] = _wall(comm, t0)
    rows = [("ranks", summary["ranks"]), ("DOFs", summary.get("mesh", {}).get("dofs"))]
    for name, st in summary["sets"].items():
        runs = [r for r in st.get("runs", []) if not r.get("skipped")]
        rows.append((f"{name}: simulations", f"{st.get('simulations', 0)} ({st.get('computed', 0)} computed, "
                                               f"{st.get('resumed_skipped', 0)} kept"
                                               + ("" if st.get("complete", True) else ", INCOMPLETE") + ")"))
        if runs:
            rows.append((f"{name}: HF seconds (sum)", f"{sum(r['seconds'] for r in runs):.2f}"))
            rows.append((f"{name}: Newton / KSP its", f"{sum(r['newton_iterations'] for r in runs)} / "
                                                      f"{sum(r['ksp_iterations'] for r in runs)}"))
    rows += _timer_rows(summary.get("timers", {}), ["mesh", "setup", "solve", "write"])
    rows.append(("wall time (s)", f"{summary['wall_seconds']:.2f}"))
    _print_table(args, comm, "ddrom hf summary", rows)
    _emit_json(args, comm, summary)
    return 0


def _fmt_opt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.2e}"


def _wall(comm: Any, t0: float) -> float:
    """Seconds since ``t0``, max over ranks (collective)."""
    from mpi4py import MPI

    return float(comm.allreduce(time.perf_counter() - t0, op=MPI.MAX))


# ----------------------------------------------------------------- ROM stages
def _case_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("case", help="case file (TOML)")
    _add_common(p)


def _case_resource_args(p: argparse.ArgumentParser) -> None:
    _case_args(p)
    _add_resources(p)


def _offline_run(args: Any, comm: Any) -> int:
    from ddrom.workflow.rom import build_rom

    case = _case(args, comm)
    with _output(args), _lock(case, comm), _stage_printer(args, comm, "offline", OFFLINE_STAGES):
        s = build_rom(case, comm, plots=True, ignore_resources=args.ignore_resources)
    rows = [("modes (displacement)", s["n_modes"]), ("stress modes (ECM columns)", s["n_stress_modes"]),
            ("reduced points (ECM)", s["n_reduced_points"]), ("extra Gappy points", s["n_gappy_extra_points"]),
            ("plastic-strain modes", s["n_p_modes"]),
            ("tolerances pod/ecm/stress/p", f"{s['pod_tol']:g}/{s['ecm_tol']:g}/{s['stress_tol']:g}/{s['p_tol']:g}")]
    rows += [(f"time {k} (s)", f"{v['seconds']:.2f}") for k, v in s["timers"].items()]
    _print_table(args, comm, "ddrom offline: " + s["rom"], rows)
    _emit_json(args, comm, s)
    return 0


def _calibrate_run(args: Any, comm: Any) -> int:
    from ddrom.workflow.rom import calibrate

    case = _case(args, comm)
    with _output(args), _lock(case, comm), _stage_printer(args, comm, "calibrate", ("mesh",)):
        res = calibrate(case, comm, plots=True, progress=not args.quiet, ignore_resources=args.ignore_resources)
    cal = res["calibration"]
    rows = [(k, cal[k]) for k in ("pairs", "pearson_log", "slope", "intercept", "residual_std_log",
                                  "error_target", "confidence", "indicator_tolerance_fit",
                                  "indicator_tolerance", "message") if k in cal]
    for name, cc in (cal.get("components") or {}).items():
        if name != "p":
            rows.append((f"{name} component (error of {cc['quantity']})",
                         f"r(log) {cc.get('pearson_log', float('nan')):.3f}, tolerance {cc.get('indicator_tolerance')} "
                         f"for a target {cc['error_target']:g} ({cc['pairs']} pairs)"))
    _print_table(args, comm, "ddrom calibrate: error indicator vs true errors on the test points", rows)
    _emit_json(args, comm, {"calibration": cal, "per_test_parameter": res["errors"]})
    return 0


def _online_args(p: argparse.ArgumentParser) -> None:
    _case_args(p)
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="run this parameter point instead of the test set (repeatable; every parameter of the "
                        "case, or its declared default is used and recorded; a file parameter takes a path, "
                        "relative to the case file's folder like every path of a case)")
    p.add_argument("--no-defaults", dest="allow_defaults", action="store_false",
                   help="a parameter left out of --param is an error even if the case declares a default")
    p.add_argument("--t-end", type=float, metavar="T",
                   help="run up to time T with the case's step size (default: the case's [time]; beyond the "
                        "training's end is time extrapolation, reported)")
    p.add_argument("--fields", metavar="PATH", nargs="?", const="", default=None,
                   help="reconstruct the full fields in parallel and write them to PATH (.h5 + .xdmf; default "
                        "OUTPUT/rom_fields.h5; an existing file is replaced once the new one is complete)")
    p.add_argument("--format", dest="formats", action="append", choices=["xdmf", "vtu"], default=None,
                   help="with --fields: also write VTU per step + PVD in <PATH stem>_vtu/ (repeatable; "
                        "XDMF is always written)")
    p.add_argument("--rom", metavar="PATH",
                   help="run this ROM file instead of the case's rom.h5 (e.g. an enriched ROM saved by an "
                        "earlier run)")
    g = p.add_argument_group("adaptive enrichment (default: [rom.enrichment] of the case)")
    g.add_argument("--enrich", dest="enrich", action="store_true", default=None,
                   help="recompute steps whose error indicator exceeds the tolerance with the HF solver "
                        "and enrich the ROM")
    g.add_argument("--no-enrich", dest="enrich", action="store_false", help="never enrich")
    g.add_argument("--indicator-tol", type=float, metavar="TOL",
                   help="tolerance of the indicator's p component (default: [rom.enrichment] indicator_tol, then "
                        "the calibrated one)")
    g.add_argument("--indicator-tols", action="append", default=[], metavar="COMPONENT=TOL",
                   help="tolerance of another component: stress=TOL, temperature=TOL (repeatable; default: "
                        "[rom.enrichment] indicator_tols, then the calibrated ones)")
    g.add_argument("--max-enrichments", type=int, metavar="N",
                   help="at most N HF steps per run (default: [rom.enrichment] max_enrichments, 10)")
    g.add_argument("--save-rom", metavar="PATH",
                   help="write the enriched ROM here (one --param point; default OUTPUT/rom_enriched_<run>.h5)")
    g.add_argument("--no-save-rom", dest="save_rom", action="store_false", default=None,
                   help="do not write enriched ROM files (default: [rom.enrichment] save)")


def _parse_params(items: list[str], file_parameters: tuple[str, ...] = ()) -> list[dict] | None:
    """``NAME=VALUE`` items -> one parameter point (a file parameter's value is kept as typed: like
    every path of a case, a relative one is relative to the case file's folder)."""
    from ddrom.parallel import CollectiveError

    if not items:
        return None
    point: dict = {}
    for it in items:
        name, sep, value = it.partition("=")
        name = name.strip()
        if not sep or not name:
            raise CollectiveError(f"--param {it!r}: expected NAME=VALUE")
        if name in point:
            raise CollectiveError(f"--param {name} is given twice")
        if name in file_parameters:
            point[name] = value
            continue
        try:
            point[name] = float(value)
        except ValueError:
            raise CollectiveError(f"--param {it!r}: expected NAME=VALUE with a number") from None
    return [point]


def _parse_tols(items: list[str]) -> dict[str, float]:
    from ddrom.parallel import CollectiveError

    out = {}
    for it in items:
        name, _, value = it.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise CollectiveError(f"--indicator-tols {it!r}: expected COMPONENT=TOL with a number") from None
    return out


def _online_run(args: Any, comm: Any) -> int:
    from ddrom.workflow.build import load_case_collectively
    from ddrom.workflow.rom import reconstruct_fields, run_rom, run_summary

    t0 = time.perf_counter()
    case = load_case_collectively(args.case, comm)
    # shared: ROM runs of one case may run side by side (job arrays); not with a writer of the folder
    with _output(args), _lock(case, comm, shared=True), \
            _stage_printer(args, comm, "online", ONLINE_STAGES) as stages:
        if args.t_end is not None:
            from ddrom.parallel import collective

            with collective(comm, "--t-end"):
                case = case.with_t_end(args.t_end)
        files = tuple(n for n, p in case.raw["parameters"].items() if p.get("kind") == "file")
        res = run_rom(case, comm, _parse_params(args.param, files), rom=args.rom, enrich=args.enrich,
                      indicator_tol=args.indicator_tol, indicator_tols=_parse_tols(args.indicator_tols),
                      max_enrichments=args.max_enrichments, save_rom=args.save_rom,
                      allow_defaults=args.allow_defaults, progress=not args.quiet)
        fields = None
        if args.fields is not None:
            fields = str(reconstruct_fields(case, comm, res.runs, res.model, path=args.fields or None,
                                            formats=tuple(args.formats or ("xdmf",))))
    wall = _wall(comm, t0)
    runs = [run_summary(r) for r in res.runs]
    timers = stages.timers.summary(comm)
    timers["rom_runs"] = {"seconds": float(sum(r["seconds"] for r in runs)), "calls": len(runs)}
    out = {"runs": runs, "n_modes": res.model.n_modes, "fields": fields, "timers": timers,
           "wall_seconds": wall}
    rows = [(r["name"], f"{r['seconds'] * 1e3:.2f} ms, {r['steps']} steps (t_end {r['t_end']:g}), "
                        f"{r['newton_iterations']} Newton its, max indicator {_fmt_opt(r['max_indicator'])}"
                        + (f", {r['n_enrichments']} enrichments" if r["n_enrichments"] else "")
                        + _routing_text(r.get("routing"))
                        + "".join(f"; {n}" for n in _flags(r))) for r in runs]
    rows += _timer_rows(timers) + [("wall time (s)", f"{wall:.2f}")]
    _print_table(args, comm, f"ddrom online summary ({len(runs)} run(s), {out['n_modes']} modes)", rows)
    _emit_json(args, comm, out)
    return 0


def _flags(r: dict) -> list[str]:
    """What a run did beyond its training: extrapolation, defaults taken, other inputs."""
    out = []
    ex = r.get("extrapolation") or {}
    for p in ex.get("parameters", []):
        out.append(f"EXTRAPOLATION {p['name']} = {p['value']:g} outside [{p['min']:g}, {p['max']:g}]")
    if "time" in ex:
        out.append(f"TIME EXTRAPOLATION to {ex['time']['t_end']:g} ({ex['time']['factor']:.3g} x the training span)")
    if r.get("defaulted_parameters"):
        out.append("defaults taken for " + ", ".join(r["defaulted_parameters"]))
    return out


def _run_run(args: Any, comm: Any) -> int:
    from ddrom.workflow.rom import run

    t0 = time.perf_counter()
    case = _case(args, comm)
    # one lock across the stages (HF sweeps, offline, calibration, online, summary)
    with _output(args), _lock(case, comm), _stage_printer(args, comm, "run", OFFLINE_STAGES) as stages:
        summary = run(case, comm, progress=not args.quiet, ignore_resources=args.ignore_resources)
    # summary.json is written by the pipeline; the JSON of the command adds every stage timer
    # seen while it ran (HF setup/solve/write, constitutive/assembly/linear_solve, offline stages)
    summary = dict(summary, timers=stages.timers.summary(comm), wall_seconds=_wall(comm, t0))
    _print_table(args, comm, "ddrom run summary", _run_rows(summary))
    _print_table(args, comm, "ddrom run: time per stage (max over ranks; nested stages included in their parent)",
                 _timer_rows(summary["timers"]) + [("wall time (s)", f"{summary['wall_seconds']:.2f}")])
    _emit_json(args, comm, summary)
    return 0


def _routing_text(routing: dict | None) -> str:
    """The basis a run took, for the online summary ('' without local bases)."""
    if not routing:
        return ""
    if routing["cluster"] is not None:
        return f", local basis {routing['cluster']} ({routing['classifier']}, margin {routing['margin']:.2f})"
    return f", global basis ({routing['fallback']} fallback)"


def _cluster_args(p: argparse.ArgumentParser) -> None:
    from ddrom.workflow.cluster import DEFAULT_FOLDS

    _case_args(p)
    p.add_argument("--clusters", type=int, nargs="+", metavar="K", help="numbers of clusters (default 1..4)")
    p.add_argument("--modes", type=int, nargs="+", metavar="N", help="basis sizes (default 1, 2, 4, ... 32)")
    p.add_argument("--dissimilarity", default="grassmann_max",
                   help="grassmann_max | grassmann_rss | euclidean_trajectory (default grassmann_max)")
    p.add_argument("--error-target", type=float,
                   help="mean held-out relative error wanted (default: the most accurate configuration)")
    p.add_argument("--budget", type=float, help="offline cost budget relative to the global basis (default: none)")
    p.add_argument("--online-modes", type=int, metavar="N",
                   help="the online budget, modes per basis (one of --modes): local or global bases at this N "
                        "(default: the N of --error-target, or the most accurate N)")
    p.add_argument("--folds", type=int, default=DEFAULT_FOLDS,
                   help=f"folds of the training simulations held out (default {DEFAULT_FOLDS}; 0: leave-one-out)")
    p.add_argument("--check", choices=["folds", "test", "none"], default="folds",
                   help="a posteriori check of the recommendation against the global ROM: held-out online errors of "
                        "ROMs built on the folds (default), on the test points against their HF store, or none")
    p.add_argument("--keep-roms", action="store_true", help="keep the check's ROM files (OUTPUT/cluster_check/)")


def _run_rows(s: dict) -> list[tuple[str, Any]]:
    f = lambda v: "n/a" if v is None else (f"{v:.3e}" if isinstance(v, float) else str(v))  # noqa: E731
    rows = [("ranks", s["ranks"]), ("modes", s["n_modes"]), ("reduced points", s["n_reduced_points"]),
            ("HF s/simulation", f(s["hf_seconds_per_simulation"])),
            ("ROM s/simulation", f(s["rom_seconds_per_simulation"])), ("speedup", f(s["speedup"])),
            ("rel. error displacement", f(s["rel_error_displacement"])),
            ("rel. error plastic strain", f(s["rel_error_plastic_strain"])),
            ("rel. error stress", f(s["rel_error_stress"]))]
    if s.get("enrichment"):
        e = s["enrichment"]
        rows += [("enrichments", e["n_enrichments"]), ("enrichment s", f(e["enrichment_seconds"])),
                 ("enriched error displacement", f(e["rel_error_displacement"])),
                 ("enriched error plastic strain", f(e["rel_error_plastic_strain"])),
                 ("enriched error stress", f(e["rel_error_stress"]))]
    for name, ex in (s.get("extrapolation") or {}).items():
        rows.append((f"{name}", "; ".join(_flags({"extrapolation": ex}))))
    return rows


def _cluster_run(args: Any, comm: Any) -> int:
    from ddrom.workflow.cluster import cluster_report, format_check, format_table

    case = _case(args, comm)
    with _output(args), _lock(case, comm):
        out = cluster_report(case, comm, args.clusters, args.modes, args.dissimilarity,
                             args.error_target, args.budget, plots=True, folds=args.folds or None,
                             check=None if args.check == "none" else args.check, keep_roms=args.keep_roms,
                             online_modes=args.online_modes)
    if not args.quiet:
        rank0_print(comm, f"ddrom cluster: {out['simulations']} simulations, {out['snapshots']} snapshots, "
                          f"dissimilarity {out['dissimilarity']}"
                          + (f"; held out: {out['heldout']['protocol']}" if "heldout" in out else "")
                          + "\n" + format_table(out["table"]))
        if "recommendation" in out:
            rank0_print(comm, "  recommendation (held-out criterion): " + out["recommendation"]["message"])
        if "recommendation_training" in out:
            rank0_print(comm, "  (training projection errors alone: " + out["recommendation_training"]["message"] + ")")
        if "check" in out:
            rank0_print(comm, format_check(out["check"]))
        if "verdict" in out:
            rank0_print(comm, "  recommendation after the check: " + out["verdict"]["message"])
    _emit_json(args, comm, out)
    return 0


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("output_dir", metavar="OUTPUT_DIR", help="output folder of a run (out/<case name>)")
    p.add_argument("--format", choices=["md", "html"], default="md", dest="output_format",
                   help="md: report.md + PNGs (default); html: also report.html, one self-contained page "
                        "with the figures embedded")
    _add_common(p)


def _report_run(args: Any, comm: Any) -> int:
    from ddrom.workflow.report import check_output_dir, report

    t0 = time.perf_counter()
    check_output_dir(args.output_dir)           # (not a folder to create: the lock would)
    with _lock(args.output_dir, comm):
        out = report(args.output_dir, comm, args.output_format)
    out["wall_seconds"] = _wall(comm, t0)
    if not args.quiet:
        rank0_print(comm, f"ddrom report: wrote {out['report']} ({len(out['pngs'])} figures)")
    _emit_json(args, comm, out)
    return 0


# ---------------------------------------------------------------------- import
def _import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("case", help="case file (TOML)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--series", metavar="FILE_OR_PATTERN",
                     help="one displacement time series: .xdmf, .pvd, .pvtu, CalculiX .frd, or a glob of VTU/PVTU "
                          "files (quoted; natural order)")
    src.add_argument("--table", metavar="CSV_OR_TOML",
                     help="several simulations: a CSV with a header 'series,<param>,...[,name]' or a TOML "
                          "file of [[simulation]] tables (series paths relative to the table)")
    src.add_argument("--pattern", metavar="PATTERN",
                     help="several simulations from file names: 'runs/run_E{E}_F{F}.frd' ({NAME} = the "
                          "value of parameter NAME; glob characters allowed, for every format); only the "
                          "files of points of the case's list (--which) are imported, the others are "
                          "skipped and named")
    p.add_argument("--which", choices=["training", "test"], default="training",
                   help="the store and the list of points: hf_training.h5 (default) or hf_test.h5 (the "
                        "reference of `ddrom calibrate`)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="parameter values (repeatable; with --table/--pattern: for the parameters they do "
                        "not give; missing ones take their default)")
    p.add_argument("--field", default="displacement", help="point field holding the displacement (default: displacement)")
    p.add_argument("--stress-field", metavar="NAME_OR_DAT",
                   help="compare the replayed stress with this field of the series (cell or point data; 9 or 6 "
                        "components, see --stress-order; cell averages), or with the integration-point "
                        "stresses of a CalculiX .dat ('{series}.dat': the .dat next to each series)")
    p.add_argument("--stress-order", metavar="ORDER",
                   help="order of 6-component stresses: 'xx yy zz xy yz xz' or 'vtk' (VTK, ParaView, meshio, "
                        "CalculiX .frd: the default for fields of a series), 'xx yy zz xy xz yz' or 'abaqus' "
                        "(Abaqus, CalculiX .dat: the default for a .dat)")
    p.add_argument("--peeq-field", metavar="NAME_OR_DAT",
                   help="compare the replayed cumulated plastic strain with this scalar field of the series "
                        "(e.g. PE of a .frd; cell averages) or with PEEQ of a CalculiX .dat ('{series}.dat')")
    from ddrom.workflow.options import ImportOptions

    p.add_argument("--equilibrium-tol", type=float, metavar="TOL",
                   help="stop when a step's equilibrium residual under the case's problem exceeds TOL (relative "
                        "to the external forces; default [import] equilibrium_tol, "
                        f"{ImportOptions.equilibrium_tol:g})")
    p.add_argument("--node-order", choices=["auto", "keep", "coordinates"], default="auto",
                   help="keep the file's node order (must be the case mesh's natural order), match the "
                        "nodes by coordinates, or auto: keep when it fits, else match (default)")
    p.add_argument("--name", help="simulation name (default: the matching point of the list, else import_NNN; "
                                  "--series only)")
    from ddrom.io.importers import DEFAULT_COORD_RTOL

    p.add_argument("--coord-rtol", type=float, metavar="TOL",
                   help=f"node coordinate tolerance relative to the mesh diagonal (default {DEFAULT_COORD_RTOL:g})")
    p.add_argument("--finalize", action="store_true",
                   help="finalize the store now (it is finalized anyway once every point of the list is "
                        "imported)")
    _add_resources(p)
    _add_common(p)


def _import_run(args: Any, comm: Any) -> int:
    from ddrom.workflow.importing import ImportJob, import_many, jobs_from_pattern, jobs_from_table
    from ddrom.parallel import CollectiveError

    fixed = (_parse_params(args.param) or [{}])[0]
    if args.series:
        jobs = [ImportJob(args.series, fixed, args.name)]
    else:
        if args.name:
            raise CollectiveError("--name names one simulation: use a 'name' column of the table instead")
        jobs = jobs_from_table(args.table, comm) if args.table else jobs_from_pattern(args.pattern, comm)
        jobs = [ImportJob(j.series, {**fixed, **j.params}, j.name) for j in jobs]
    t0 = time.perf_counter()
    case = _case(args, comm)
    with _output(args), _lock(case, comm), _stage_printer(args, comm, "import", ("mesh",)) as stages:
        summary = import_many(args.case, comm, jobs, field=args.field, finalize=args.finalize,
                              coord_rtol=args.coord_rtol, node_order=args.node_order,
                              stress_field=args.stress_field, progress=not args.quiet, case=case,
                              stress_order=args.stress_order, peeq_field=args.peeq_field, which=args.which,
                              only_listed=bool(args.pattern), equilibrium_tol=args.equilibrium_tol,
                              ignore_resources=args.ignore_resources)
    summary = dict(summary, timers=stages.timers.summary(comm), wall_seconds=_wall(comm, t0))
    rows = []
    for s in summary["simulations"]:
        eq, nf = s["equilibrium"], s["noise_floor"]
        rows.append((s["simulation"], f"{s['steps']} steps, equilibrium residual <= {eq['max_relative']:.2e} "
                                      f"(tolerance {eq['tolerance']:g}), noise floor stress {nf['stress']:.1e}, "
                                      f"p {nf['p']:.1e}"))
    rows.append(("store", summary["store"] + ("" if summary["finalized"] else
                                              f" ({len(summary['missing_points'])} point(s) missing)")))
    if summary["skipped"]:
        rows.append(("skipped (no point of the list)", ", ".join(summary["skipped"])))
    _print_table(args, comm, f"ddrom import summary ({summary['which']})", rows)
    _emit_json(args, comm, summary)
    return 0


# ---------------------------------------------------------------------- verify
def _verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="an HDF5 file written by ddrom (snapshot store, ROM file, ...)")
    p.add_argument("--require-checksums", action="store_true",
                   help="also fail (exit 2) when some dataset carries no checksum (older files)")
    _add_common(p)


def _verify_run(args: Any, comm: Any) -> int:
    from ddrom.io.integrity import verify_file

    report = verify_file(args.file, comm)
    if not args.quiet:
        rank0_print(comm, report.summary())
    _emit_json(args, comm, report.as_dict())
    if not report.ok or (args.require_checksums and report.unprotected):
        if comm.rank == 0 and args.quiet:
            print("\n".join(report.corrupt) or f"{args.file}: datasets without checksum", file=sys.stderr)
        return 2
    return 0


COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "info": ("versions of Python, MPI, PETSc, SLEPc, h5py; parallel capabilities", _info_args, _info_run),
    "hf": ("compute the high-fidelity parameter sweep of a case into its snapshot store", _hf_args, _hf_run),
    "import": ("import another solver's displacement series as training or test simulations (material "
               "replay, equilibrium check, noise floor)",
               _import_args, _import_run),
    "offline": ("training snapshot store -> ROM file (POD, ECM, Gappy-POD, reduced operators)",
                _case_resource_args, _offline_run),
    "cluster": ("a priori criterion: local (clustered) vs global bases on the training snapshots",
                _cluster_args, _cluster_run),
    "calibrate": ("fit the error indicator against the true error on the test points (HF reference "
                  "computed if missing); stores the indicator tolerance in the ROM file", _case_resource_args,
                  _calibrate_run),
    "online": ("run the ROM on the test parameters (or --param NAME=VALUE ...)", _online_args, _online_run),
    "run": ("HF training sweep, offline, online on the test parameters, HF reference and comparison "
            "(writes summary.json)", _case_resource_args, _run_run),
    "verify": ("check the checksums of every dataset of a ddrom HDF5 file (exit 2 naming what is corrupt)",
               _verify_args, _verify_run),
    "report": ("Markdown + PNG (or self-contained HTML) report of a run: OUTPUT_DIR/report/report.md|html",
               _report_args, _report_run),
}
