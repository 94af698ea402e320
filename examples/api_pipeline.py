"""The demo pipeline through the Python API, as a notebook or a script would run it.

    mpirun -n 2 python examples/api_pipeline.py                  # cases/demo.toml
    mpirun -n 2 python examples/api_pipeline.py CASE.toml --output out/api

Every stage is a library call taking the case and a communicator; nothing is printed by
the library (its progress goes to the ``ddrom`` logger, shown here on rank 0).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import ddrom


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("case", nargs="?", default=str(Path(__file__).resolve().parents[1] / "cases" / "demo.toml"))
    p.add_argument("--output", help="output folder (default: the case's)")
    args = p.parse_args()

    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    ddrom.configure_logging()
    case = ddrom.load_case(args.case)
    if args.output:
        case = case.replace({"case": {"output": str(Path(args.output).resolve())}})

    ddrom.run_hf(case, comm, which="all")                       # training and test sweeps -> stores
    offline = ddrom.build_rom(case, comm)                        # store -> rom.h5
    cal = ddrom.calibrate(case, comm, hf=False)                  # indicator vs true errors on the test points
    runs = ddrom.run_rom(case, comm, enrich=True)                # the test points, adaptive enrichment on
    errors = ddrom.compare_runs(case, comm, runs.runs, runs.model)

    if comm.rank == 0:
        print(f"{case.name}: {offline['n_modes']} modes, {offline['n_reduced_points']} reduced points; "
              f"indicator tolerance {cal['calibration'].get('indicator_tolerance')}")
        for run, e in zip(runs.runs, errors):
            print(f"  {run.name} {run.params}: {run.result.seconds * 1e3:.1f} ms, "
                  f"{run.result.n_enrichments} enrichments, errors u {e['displacement']:.2e} "
                  f"p {e['plastic_strain']:.2e} stress {e['stress']:.2e}")


if __name__ == "__main__":
    main()
