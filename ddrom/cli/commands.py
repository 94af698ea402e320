"""The table of ``ddrom`` subcommands: name -> (help, add_arguments, run)."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from typing import Any, Callable, Iterator

from ddrom.parallel.log import rank0_print


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", metavar="PATH", help="also write the summary as JSON to PATH ('-' for stdout)")


def _emit_json(args: Any, comm: Any, payload: dict) -> None:
    if not getattr(args, "json", None) or comm.rank != 0:
        return
    text = json.dumps(payload, indent=2, default=str)
    if args.json == "-":
        print(text, flush=True)
    else:
        with open(args.json, "w") as f:
            f.write(text + "\n")


class _QuietStdout(io.TextIOBase):
    """Stdout under ``--quiet``: progress lines and tables are dropped, warnings go to stderr.

    The library's stages print with ``rank0_print``; under ``--quiet`` only lines that
    contain ``warning`` survive (on stderr), so that ``--quiet --json -`` prints nothing
    but the JSON on stdout and a script still sees what it should be warned about.
    """

    def __init__(self) -> None:
        self._buf = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._buf += text
        *lines, self._buf = self._buf.split("\n")
        for ln in lines:
            if "warning" in ln.lower():
                print(ln, file=sys.stderr, flush=True)
        return len(text)

    def flush(self) -> None:
        pass


@contextlib.contextmanager
def _output(args: Any) -> Iterator[None]:
    """Run a command's body with stdout filtered by ``--quiet`` (see :class:`_QuietStdout`)."""
    if getattr(args, "quiet", False):
        q = _QuietStdout()
        with contextlib.redirect_stdout(q):
            yield
        q.write("\n")
    else:
        yield


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
OFFLINE_STAGES = ("mesh", "pod_displacement", "pod_stress", "pod_p", "ecm", "gappy", "operators",
                  "clustering", "write")


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
    _add_common(p)


def _hf_run(args: Any, comm: Any) -> int:
    from ddrom.cli.pipeline import hf_sweep

    t0 = time.perf_counter()
    with _output(args):
        summary = hf_sweep(args.case, comm, which=args.which, resume=not args.restart, quiet=args.quiet,
                           max_simulations=args.max_simulations, stream_pod=args.stream_pod)
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


def _offline_run(args: Any, comm: Any) -> int:
    from ddrom.cli.rom_pipeline import offline

    with _output(args), _stage_printer(args, comm, "offline", OFFLINE_STAGES):
        summary = offline(args.case, comm, quiet=args.quiet)
    _emit_json(args, comm, summary)
    return 0


def _calibrate_run(args: Any, comm: Any) -> int:
    from ddrom.cli.rom_pipeline import calibrate

    with _output(args), _stage_printer(args, comm, "calibrate", ("mesh",)):
        res = calibrate(args.case, comm, quiet=args.quiet)
    cal = res["calibration"]
    _print_table(args, comm, "ddrom calibrate: error indicator vs true error of p on the test points",
                 [(k, cal[k]) for k in ("pairs", "pearson_log", "slope", "intercept", "residual_std_log",
                                        "error_target", "confidence", "indicator_tolerance_fit",
                                        "indicator_tolerance", "message") if k in cal])
    _emit_json(args, comm, {"calibration": cal, "per_test_parameter": res["errors"]})
    return 0


def _online_args(p: argparse.ArgumentParser) -> None:
    _case_args(p)
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="run this parameter point instead of the test set (repeatable)")
    p.add_argument("--fields", action="store_true",
                   help="reconstruct the full fields in parallel and write rom_fields.h5 + .xdmf")
    p.add_argument("--format", dest="formats", action="append", choices=["xdmf", "vtu"], default=None,
                   help="with --fields: also write VTU per step + PVD in rom_fields_vtu/ (repeatable; "
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
                   help="indicator tolerance (default: [rom.enrichment] indicator_tol, then the calibrated one)")
    g.add_argument("--max-enrichments", type=int, metavar="N", help="at most N HF steps per run")
    g.add_argument("--save-rom", metavar="PATH",
                   help="write the enriched ROM here (one --param point; default OUTPUT/rom_enriched_<run>.h5)")
    g.add_argument("--no-save-rom", dest="save_rom", action="store_false", default=None,
                   help="do not write enriched ROM files (default: [rom.enrichment] save)")


def _parse_params(items: list[str]) -> list[dict] | None:
    from ddrom.parallel import CollectiveError

    if not items:
        return None
    point = {}
    for it in items:
        name, _, value = it.partition("=")
        try:
            point[name.strip()] = float(value)
        except ValueError:
            raise CollectiveError(f"--param {it!r}: expected NAME=VALUE with a number") from None
    return [point]


def _online_run(args: Any, comm: Any) -> int:
    from ddrom.cli.rom_pipeline import online

    import numpy as np

    t0 = time.perf_counter()
    with _output(args), _stage_printer(args, comm, "online", ONLINE_STAGES) as stages:
        res = online(args.case, comm, _parse_params(args.param), quiet=args.quiet, fields=args.fields,
                     enrich=args.enrich, indicator_tol=args.indicator_tol,
                     max_enrichments=args.max_enrichments, save_rom=args.save_rom,
                     formats=tuple(args.formats or ("xdmf",)), rom=args.rom)
    wall = _wall(comm, t0)
    runs = []
    for name, params, r in res["runs"]:
        finite = r.indicator[np.isfinite(r.indicator)]
        runs.append({"name": name, "params": params, "seconds": r.seconds, "steps": len(r.times) - 1,
                     "newton_iterations": r.newton_iterations, "cutbacks": r.cutbacks,
                     "cluster": r.cluster, "n_enrichments": r.n_enrichments,
                     "enrichment_seconds": r.enrichment_seconds, "enrichments": r.enrichments,
                     "max_indicator": float(finite.max()) if finite.size else None})
    timers = stages.timers.summary(comm)
    timers["rom_runs"] = {"seconds": float(sum(r["seconds"] for r in runs)), "calls": len(runs)}
    out = {"runs": runs, "n_modes": res["model"].n_modes, "fields": bool(args.fields), "timers": timers,
           "wall_seconds": wall}
    rows = [(r["name"], f"{r['seconds'] * 1e3:.2f} ms, {r['steps']} steps, {r['newton_iterations']} Newton its, "
                        f"max indicator {_fmt_opt(r['max_indicator'])}") for r in runs]
    rows += _timer_rows(timers) + [("wall time (s)", f"{wall:.2f}")]
    _print_table(args, comm, f"ddrom online summary ({len(runs)} run(s), {out['n_modes']} modes)", rows)
    _emit_json(args, comm, out)
    return 0


def _run_run(args: Any, comm: Any) -> int:
    from ddrom.cli.rom_pipeline import run

    t0 = time.perf_counter()
    with _output(args), _stage_printer(args, comm, "run", OFFLINE_STAGES) as stages:
        summary = run(args.case, comm, quiet=args.quiet)
    # summary.json is written by the pipeline; the JSON of the command adds every stage timer
    # seen while it ran (HF setup/solve/write, constitutive/assembly/linear_solve, offline stages)
    summary = dict(summary, timers=stages.timers.summary(comm), wall_seconds=_wall(comm, t0))
    _print_table(args, comm, "ddrom run: time per stage (max over ranks; nested stages included in their parent)",
                 _timer_rows(summary["timers"]) + [("wall time (s)", f"{summary['wall_seconds']:.2f}")])
    _emit_json(args, comm, summary)
    return 0


def _cluster_args(p: argparse.ArgumentParser) -> None:
    _case_args(p)
    p.add_argument("--clusters", type=int, nargs="+", metavar="K", help="numbers of clusters (default 1..4)")
    p.add_argument("--modes", type=int, nargs="+", metavar="N", help="basis sizes (default 1, 2, 4, ... 32)")
    p.add_argument("--dissimilarity", default="grassmann_max",
                   help="grassmann_max | grassmann_rss | euclidean_trajectory (default grassmann_max)")
    p.add_argument("--error-target", type=float, help="relative projection error wanted (recommendation)")
    p.add_argument("--budget", type=float, help="offline cost budget relative to the global basis")


def _cluster_run(args: Any, comm: Any) -> int:
    from ddrom.cli.rom_pipeline import cluster_report

    with _output(args):
        out = cluster_report(args.case, comm, args.clusters, args.modes, args.dissimilarity,
                             args.error_target, args.budget, quiet=args.quiet)
    _emit_json(args, comm, out)
    return 0


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("output_dir", metavar="OUTPUT_DIR", help="output folder of a run (out/<case name>)")
    p.add_argument("--format", choices=["md", "html"], default="md", dest="output_format",
                   help="md: report.md + PNGs (default); html: also report.html, one self-contained page "
                        "with the figures embedded")
    _add_common(p)


def _report_run(args: Any, comm: Any) -> int:
    from ddrom.cli.report import report

    t0 = time.perf_counter()
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
                     help="one displacement time series: .xdmf, .pvd, .pvtu, or a glob of VTU/PVTU files "
                          "(quoted; natural order)")
    src.add_argument("--table", metavar="CSV_OR_TOML",
                     help="several simulations: a CSV with a header 'series,<param>,...[,name]' or a TOML "
                          "file of [[simulation]] tables (series paths relative to the table)")
    src.add_argument("--pattern", metavar="PATTERN",
                     help="several simulations from file names: 'runs/run_E{E}_F{F}.xdmf' ({NAME} = the "
                          "value of parameter NAME; glob characters allowed)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="parameter values (repeatable; with --table/--pattern: for the parameters they do "
                        "not give; missing ones take their default)")
    p.add_argument("--field", default="displacement", help="point field holding the displacement")
    p.add_argument("--stress-field", metavar="NAME",
                   help="also read this stress field (cell or point data; 9 or 6 components) and report "
                        "its difference to the replayed stress (cell averages)")
    p.add_argument("--node-order", choices=["auto", "keep", "coordinates"], default="auto",
                   help="keep the file's node order (must be the case mesh's natural order), match the "
                        "nodes by coordinates, or auto: keep when it fits, else match (default)")
    p.add_argument("--name", help="simulation name (default: the matching training point, else import_NNN; "
                                  "--series only)")
    p.add_argument("--coord-rtol", type=float, metavar="TOL",
                   help="node coordinate tolerance relative to the mesh diagonal (default 1e-6)")
    p.add_argument("--finalize", action="store_true",
                   help="finalize the training store now (it is finalized anyway once every training "
                        "point is imported)")
    _add_common(p)


def _import_run(args: Any, comm: Any) -> int:
    from ddrom.cli.importing import ImportJob, import_many, jobs_from_pattern, jobs_from_table
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
    with _output(args), _stage_printer(args, comm, "import", ("mesh",)) as stages:
        summary = import_many(args.case, comm, jobs, field=args.field, finalize=args.finalize,
                              coord_rtol=args.coord_rtol, node_order=args.node_order,
                              stress_field=args.stress_field, quiet=args.quiet)
    summary = dict(summary, timers=stages.timers.summary(comm), wall_seconds=_wall(comm, t0))
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
    "import": ("import another solver's displacement series as a training simulation (material replay)",
               _import_args, _import_run),
    "offline": ("training snapshot store -> ROM file (POD, ECM, Gappy-POD, reduced operators)",
                _case_args, _offline_run),
    "cluster": ("a priori criterion: local (clustered) vs global bases on the training snapshots",
                _cluster_args, _cluster_run),
    "calibrate": ("fit the error indicator against the true error on the test points (HF reference "
                  "computed if missing); stores the indicator tolerance in the ROM file", _case_args, _calibrate_run),
    "online": ("run the ROM on the test parameters (or --param NAME=VALUE ...)", _online_args, _online_run),
    "run": ("HF training sweep, offline, online on the test parameters, HF reference and comparison "
            "(writes summary.json)", _case_args, _run_run),
    "verify": ("check the checksums of every dataset of a ddrom HDF5 file (exit 2 naming what is corrupt)",
               _verify_args, _verify_run),
    "report": ("Markdown + PNG (or self-contained HTML) report of a run: OUTPUT_DIR/report/report.md|html",
               _report_args, _report_run),
}
