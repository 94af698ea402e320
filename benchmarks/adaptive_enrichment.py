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
4. The enriched ROM for the calibrated tolerances (every indicator component) and with
   the p tolerance of every ``--tol``: errors (space-time, and the largest per-step errors
   of u and p), number of enrichments, ROM seconds including the HF steps, cost ratio to
   the HF run of the same point, and the misses and false alarms of the tolerances.

Prints one table; ``--json`` writes everything (per-step errors and indicators, the time
split of every enrichment). Shared with the other enrichment benchmarks: ``_enrichment.py``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import ddrom  # noqa: E402
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

    from _enrichment import evaluate, table, write_json

    comm = MPI.COMM_WORLD
    case = ddrom.load_case(args.case)
    if comm.rank == 0:
        ddrom.configure_logging()
    res = evaluate(case, comm, calibrate_on=args.calibrate_on, extra_tols=args.tol)
    if comm.rank == 0:
        print(table(res, f"adaptive enrichment: {case.path.name}, {comm.size} rank(s), {res['mesh']}"), flush=True)
        if args.json:
            write_json(res, args.json)


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
