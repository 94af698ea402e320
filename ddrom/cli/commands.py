"""The table of ``ddrom`` subcommands: name -> (help, add_arguments, run)."""
from __future__ import annotations

import argparse
import json
from typing import Any, Callable

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


# ------------------------------------------------------------------------ info
def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="PATH", help="write as JSON to PATH ('-' for stdout)")


def _info_run(args: Any, comm: Any) -> int:
    from ddrom.cli.info import collect, format_info

    info = collect(comm)
    if args.json:
        _emit_json(args, comm, info)
    else:
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
    _add_common(p)


def _hf_run(args: Any, comm: Any) -> int:
    from ddrom.cli.pipeline import hf_sweep

    summary = hf_sweep(args.case, comm, which=args.which, resume=not args.restart, quiet=args.quiet,
                       max_simulations=args.max_simulations)
    _emit_json(args, comm, summary)
    return 0


# ----------------------------------------------------------------- ROM stages
def _case_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("case", help="case file (TOML)")
    _add_common(p)


def _offline_run(args: Any, comm: Any) -> int:
    from ddrom.cli.rom_pipeline import offline

    _emit_json(args, comm, offline(args.case, comm, quiet=args.quiet))
    return 0


def _online_args(p: argparse.ArgumentParser) -> None:
    _case_args(p)
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="run this parameter point instead of the test set (repeatable)")
    p.add_argument("--fields", action="store_true",
                   help="reconstruct the full fields in parallel and write rom_fields.h5 + .xdmf")


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

    res = online(args.case, comm, _parse_params(args.param), quiet=args.quiet, fields=args.fields)
    runs = []
    for name, params, r in res["runs"]:
        finite = r.indicator[np.isfinite(r.indicator)]
        runs.append({"name": name, "params": params, "seconds": r.seconds,
                     "newton_iterations": r.newton_iterations,
                     "max_indicator": float(finite.max()) if finite.size else None})
    _emit_json(args, comm, {"runs": runs})
    return 0


def _run_run(args: Any, comm: Any) -> int:
    from ddrom.cli.rom_pipeline import run

    _emit_json(args, comm, run(args.case, comm, quiet=args.quiet))
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

    _emit_json(args, comm, cluster_report(args.case, comm, args.clusters, args.modes, args.dissimilarity,
                                          args.error_target, args.budget, quiet=args.quiet))
    return 0


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("output_dir", metavar="OUTPUT_DIR", help="output folder of a run (out/<case name>)")
    _add_common(p)


def _report_run(args: Any, comm: Any) -> int:
    from ddrom.cli.report import report

    out = report(args.output_dir, comm)
    if not args.quiet:
        rank0_print(comm, f"ddrom report: wrote {out['report']} ({len(out['pngs'])} figures)")
    _emit_json(args, comm, out)
    return 0


# ---------------------------------------------------------------------- import
def _import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("case", help="case file (TOML)")
    p.add_argument("--series", required=True, metavar="FILE_OR_PATTERN",
                   help="displacement time series: .xdmf, .pvd, or a glob of VTU files (quoted; natural order)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="parameter values of this simulation (repeatable; missing ones take their default)")
    p.add_argument("--field", default="displacement", help="point field holding the displacement")
    p.add_argument("--name", help="simulation name (default: the matching training point, else import_NNN)")
    p.add_argument("--coord-rtol", type=float, metavar="TOL",
                   help="node coordinate tolerance relative to the mesh diagonal (default 1e-6)")
    p.add_argument("--finalize", action="store_true",
                   help="finalize the training store now (it is finalized anyway once every training "
                        "point is imported)")
    _add_common(p)


def _import_run(args: Any, comm: Any) -> int:
    from ddrom.cli.importing import import_series

    params = _parse_params(args.param) or [{}]
    _emit_json(args, comm, import_series(args.case, comm, args.series, params[0], field=args.field,
                                         finalize=args.finalize, name=args.name, coord_rtol=args.coord_rtol,
                                         quiet=args.quiet))
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
    "online": ("run the ROM on the test parameters (or --param NAME=VALUE ...)", _online_args, _online_run),
    "run": ("HF training sweep, offline, online on the test parameters, HF reference and comparison "
            "(writes summary.json)", _case_args, _run_run),
    "report": ("Markdown + PNG report of a run: OUTPUT_DIR/report/report.md", _report_args, _report_run),
}
