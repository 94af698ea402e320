"""Strong and weak scaling of the HF Newton iteration (constitutive, assembly, linear solve).

One command, launched serially; it runs ``mpirun -n P`` itself for each rank count
(default 1 2 3 4; beyond the cores of the machine the runs are oversubscribed and
flagged ``P*`` in the tables) and prints one table per kind of scaling::

    .venv/bin/python benchmarks/scaling_hf.py --json benchmarks/results/scaling_hf.json

The problem and the phase timing are those of ``benchmarks/hf_newton.py`` (imported, not
copied): unit cube of n^3 trilinear hexahedra (3 (n+1)^3 DOFs), symmetry planes, a
non-uniform stretch beyond yield imposed on xmax in ``--steps`` load steps (default 1:
elastic to plastic at every point), Chaboche J2 + Armstrong-Frederick, ddrom's
``HFSolver`` with its defaults (B-bar, Newton + line search, GMRES + GAMG with the
rigid-body near-null space). Per Newton iteration, max over ranks:

* constitutive: strains at the points + ``Material.update`` with tangent (every residual
  evaluation of the iteration, line search included);
* matrix: ``Assembler.assemble_matrix`` (local element matrices + MatSetValues, the
  off-process rows sent at assembly end);
* residual: internal force + its ghost sum;
* solve: ``KSPSolve`` (GMRES + GAMG; the first solve of a run includes the GAMG set-up);
* total: wall time of the load steps / Newton iterations.

Strong scaling: one mesh (``--strong-n``, default 30: 89,373 DOFs) at every P,
``speed-up = T(1)/T(P)``, ``efficiency = speed-up / P``. Weak scaling: about the same
number of cells per rank, ``n(P) = round(n1 P^(1/3))`` (``--weak-n1``, default 20:
27,783 DOFs at 1 rank), ``efficiency = T(1)/T(P)`` of the time per Newton iteration, and
the same per KSP iteration (the GAMG iteration count grows with the mesh). The load
average before and after each launch is in the tables: the machine is shared, so the
whole sweep is repeated (``--repeat``, default 2) and the fastest launch per (P, n) kept.
``CPU share`` = min over ranks of CPU seconds / wall seconds of the measurement: Open MPI
ranks poll while they wait, so a value well below 1 means that a rank was descheduled
(oversubscription, other jobs), and the efficiency then measures the machine, not ddrom.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import scaling_common as sc  # noqa: E402

PHASES = ["constitutive", "matrix", "residual", "solve", "total"]


def worker(out: str, sizes: list[int], steps: int) -> None:
    import ddrom  # noqa: F401  (PETSc environment)
    from mpi4py import MPI

    import hf_newton

    comm = MPI.COMM_WORLD
    rows = []
    for n in sizes:
        w0, c0 = time.perf_counter(), time.process_time()
        rows.append(hf_newton.run_size(n, steps, comm))
        rows[-1]["cpu_share"] = cpu_share(comm, time.process_time() - c0, time.perf_counter() - w0)
    if comm.rank == 0:
        from ddrom.io.jsonio import write_json  # strict JSON (NaN -> null), atomic

        write_json(out, {"rows": rows})


def cpu_share(comm, cpu: float, wall: float) -> float:
    """Smallest CPU seconds / wall seconds over the ranks: ~1 when every rank had a core to itself.

    Open MPI's waiting ranks poll (they burn CPU while they wait), so a share well below 1
    means the rank was descheduled: oversubscription or other jobs on the machine.
    """
    from mpi4py import MPI

    return comm.allreduce(cpu / max(wall, 1e-12), op=MPI.MIN)


def weak_n(n1: int, ranks: int) -> int:
    return int(round(n1 * ranks ** (1.0 / 3.0)))


def _row(r: dict, base: dict, ranks: int, strong: bool, launch: dict) -> list:
    p = r["per_iteration_seconds"]
    t, t1 = p["total"], base["per_iteration_seconds"]["total"]
    ksp_t = p["solve"] / r["ksp_iterations_per_solve"]
    ksp_t1 = base["per_iteration_seconds"]["solve"] / base["ksp_iterations_per_solve"]
    row = [sc.tag(ranks), r["dofs"], r["dofs"] // ranks, r["newton_iterations"],
           round(r["ksp_iterations_per_solve"], 1)]
    row += [p[k] for k in PHASES]
    if strong:
        row += [t1 / t, t1 / (ranks * t)]
        row += [base["per_iteration_seconds"][k] / (ranks * p[k]) for k in ("constitutive", "matrix", "solve")]
    else:
        row += [t1 / t, ksp_t1 / ksp_t]
        row += [base["per_iteration_seconds"][k] / p[k] for k in ("constitutive", "matrix")]
    row += [round(r["setup_seconds"]["distribute"], 2), round(r.get("cpu_share", float("nan")), 2),
            sc.fmt_load(launch)]
    return row


def best(results: dict, ranks: int, n: int) -> tuple[dict, dict]:
    """(launch info, row) of the fastest repetition (time per Newton iteration) at ``ranks``, ``n``."""
    cands = [(run["launch"], r) for run in results["runs"] if run["launch"]["ranks"] == ranks
             for r in run["rows"] if r["n"] == n]
    return min(cands, key=lambda c: c[1]["per_iteration_seconds"]["total"])


def report(results: dict) -> str:
    ranks = list(dict.fromkeys(run["launch"]["ranks"] for run in results["runs"]))
    out = [f"HF Newton scaling (Chaboche J2+AF, {results['steps']} load step(s), GMRES + GAMG); "
           f"seconds per Newton iteration, max over ranks, best of {results['repeat']} launch(es)"
           + (f" from {len(results['merged'])} runs of the benchmark" if results.get("merged") else "") + "; "
           f"{results['meta']['cores']} cores, P* = oversubscribed; load = 1-min load average "
           "before->after the launch"]
    strong = [best(results, p, results["strong_n"]) for p in ranks]
    base = strong[0][1]
    out.append(f"\nStrong scaling, n = {results['strong_n']} ({base['dofs']:,} DOFs):")
    hdr = ["P", "DOFs", "DOFs/rank", "Newton its", "KSP/solve"] + PHASES + [
        "speed-up", "efficiency", "eff. constitutive", "eff. matrix", "eff. solve", "distribute s",
        "CPU share", "load"]
    out.append(sc.table(hdr, [_row(r, base, lc["ranks"], True, lc) for lc, r in strong]))
    weak = [best(results, p, weak_n(results["weak_n1"], p)) for p in ranks]
    base = weak[0][1]
    out.append(f"\nWeak scaling, n(P) = round({results['weak_n1']} P^(1/3)) (~{base['dofs']:,} DOFs per rank):")
    hdr = ["P", "DOFs", "DOFs/rank", "Newton its", "KSP/solve"] + PHASES + [
        "efficiency", "eff. per KSP it", "eff. constitutive", "eff. matrix", "distribute s",
        "CPU share", "load"]
    out.append(sc.table(hdr, [_row(r, base, lc["ranks"], False, lc) for lc, r in weak]))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3, 4], help="rank counts (first = base)")
    ap.add_argument("--strong-n", type=int, default=30, help="cells per edge of the strong-scaling mesh")
    ap.add_argument("--weak-n1", type=int, default=20, help="cells per edge of the weak-scaling mesh at 1 rank")
    ap.add_argument("--steps", type=int, default=1, help="load steps per run")
    ap.add_argument("--repeat", type=int, default=2,
                    help="sweeps over the rank counts; the tables keep the fastest launch per (P, n)")
    ap.add_argument("--json", metavar="PATH", help="write every measurement as JSON")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="no run: print the tables of the launches of earlier --json files together "
                         "(fastest launch per (P, n) over all of them; same sizes and steps required)")
    ap.add_argument("--worker", metavar="OUT", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", type=int, nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.sizes, args.steps)
        return
    if args.merge:
        parts = [json.load(open(p)) for p in args.merge]
        key = [(r["steps"], r["strong_n"], r["weak_n1"]) for r in parts]
        if len(set(key)) != 1:
            sys.exit(f"--merge: the files measured different problems (steps, strong n, weak n1): {key}")
        results = dict(parts[0], runs=[run for r in parts for run in r["runs"]],
                       merged=[{"file": os.path.basename(f), "date": r["meta"]["date"]}
                               for f, r in zip(args.merge, parts)],
                       repeat=sum(r["repeat"] for r in parts))
        results["table"] = report(results)
        print(results["table"])
        sc.write_json(args.json, results)
        return
    results = {"benchmark": "scaling_hf", "meta": sc.meta(), "steps": args.steps, "repeat": args.repeat,
               "strong_n": args.strong_n, "weak_n1": args.weak_n1, "runs": []}
    def plan(p: int):
        sizes = sorted({args.strong_n, weak_n(args.weak_n1, p)})
        return sizes, ["--sizes", *sizes, "--steps", args.steps]

    sc.run_sweeps("scaling_hf", os.path.abspath(__file__), args.repeat, args.ranks, plan, results, args.json,
                  report)


if __name__ == "__main__":
    main()
