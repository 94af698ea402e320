"""Cost of one HF Newton iteration, phase by phase, at the rank count it is launched with.

Problem: the unit cube of n^3 trilinear hexahedra (3 (n+1)^3 DOFs; n = 70 gives 1.07e6),
symmetry conditions on xmin/ymin/zmin and an imposed, non-uniform stretch on xmax,
``u_x = t * 1.5e-3 * (1 + 0.3 y)``, marched over ``--steps`` unit time steps (default 1) with a
Chaboche material (J2, linear isotropic + Armstrong-Frederick kinematic hardening,
rate independent, yield strain 1e-3). Step 1 goes from elastic to plastic, later steps
are fully plastic: the constitutive updates do real return mapping at (almost) every point,
and the consistent tangent is non-symmetric (gamma > 0), so the solver picks GMRES + GAMG
with the rigid-body near-null space (solver defaults, B-bar on).

Per size, reported:

* setup (s, max over ranks): serial box on rank 0, distribution (PTScotch), geometry
  (w detJ; the kernels compute the inverse Jacobians chunk by chunk), matrix pattern (``Assembler._pattern``), the rest of the ``HFSolver``
  construction (matrix creation, KSP, loads), the first matrix assembly, the first solve
  (full GAMG set-up; later solves reuse the interpolation; the KSP's set-up, which the
  solver calls before the solve, is counted in the solve);
* per Newton iteration (s, max over ranks of the accumulated phase time / iterations):
  constitutive update (strains at the points + ``Material.update`` with tangent, all
  residual evaluations of the iteration, line search included), matrix assembly (done by
  the solver inside every material update with a tangent, chunk by chunk: the time of
  ``MatrixAssembly.add`` and ``finish``, including the converged state's assembly that no
  solve uses), residual assembly (internal force + ghost sum), linear solve,
  the rest (loads, norms, copies), and the total;
* KSP iterations per linear solve, residual evaluations per iteration;
* peak RSS per rank (``ru_maxrss``; sizes run in increasing order, so it is the peak of
  the largest size so far).

The phases are timed by wrapping the solver's objects from outside (``Assembler`` and
``MatrixAssembly`` methods, the KSP), not by changing the solver. Run at 1 and 2 ranks, then compare::

    mpirun -n 1 .venv/bin/python benchmarks/hf_newton.py --json hf_newton_1.json
    mpirun -n 2 .venv/bin/python benchmarks/hf_newton.py --json hf_newton_2.json
    .venv/bin/python benchmarks/hf_newton.py --compare hf_newton_1.json hf_newton_2.json

Options: ``--sizes 20 45 70`` (cells per edge), ``--steps 1``, ``--json PATH``.
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import sys
import time
from collections import defaultdict

import numpy as np

import ddrom  # noqa: F401  (PETSC_DIR before petsc4py)
from mpi4py import MPI

from ddrom.hf import assembly as assembly_mod
from ddrom.hf.loads import Dirichlet, Loads
from ddrom.hf.solver import HFSolver, SolverOptions
from ddrom.materials import from_config
from ddrom.mesh.scatter import distribute
from ddrom.mesh.generators import box

MATERIAL = {"law": "chaboche", "E": 200e3, "nu": 0.3, "sigma_y": 200.0, "H": 1000.0,
            "C": 40000.0, "gamma": 150.0}
STRETCH = 1.5e-3


def cube_loads() -> Loads:
    """The benchmarks' cube: symmetry planes at x, y, z = 0, the face x = 1 pulled by
    ``t STRETCH (1 + 0.3 y)`` (one load step at t = 1 takes it into plasticity)."""
    return Loads(dirichlet=[Dirichlet("xmin", (0,)), Dirichlet("ymin", (1,)), Dirichlet("zmin", (2,)),
                            Dirichlet("xmax", (0,), lambda x, y, z, t, **k: t * STRETCH * (1 + 0.3 * y))])


class Clock:
    """Per-call wall times by name (rank-local)."""

    def __init__(self):
        self.t = defaultdict(list)

    def wrap(self, name, fn):
        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.t[name].append(time.perf_counter() - t0)
        return timed

    def total(self, name, skip=0):
        return float(sum(self.t[name][skip:]))

    def count(self, name):
        return len(self.t[name])


class TimedKSP:
    """Forwards to a petsc4py KSP, timing ``setUp`` and ``solve`` (the solver calls the
    preconditioner's set-up apart, before the solve) and recording iterations per solve."""

    def __init__(self, ksp, clock):
        self._ksp, self._clock, self.its = ksp, clock, []

    def setUp(self):
        t0 = time.perf_counter()
        self._ksp.setUp()
        self._clock.t["setup"].append(time.perf_counter() - t0)

    def solve(self, b, x):
        t0 = time.perf_counter()
        self._ksp.solve(b, x)
        self._clock.t["solve"].append(time.perf_counter() - t0)
        self.its.append(self._ksp.getIterationNumber())

    def __getattr__(self, name):
        return getattr(self._ksp, name)


def cmax(comm, x):
    return comm.allreduce(x, op=MPI.MAX)


def timed_collective(comm, fn):
    comm.Barrier()
    t0 = time.perf_counter()
    out = fn()
    return cmax(comm, time.perf_counter() - t0), out


def run_size(n: int, steps: int, comm) -> dict:
    setup = {}
    t, mesh = timed_collective(comm, lambda: box(1.0, 1.0, 1.0, n, n, n) if comm.rank == 0 else None)
    setup["box_rank0"] = t
    t, dm = timed_collective(comm, lambda: distribute(mesh, comm))
    setup["distribute"] = t
    del mesh
    gc.collect()
    t, _ = timed_collective(comm, lambda: dm.weights)
    setup["geometry"] = t

    # Time the pattern computation inside the solver's own Assembler (no second copy).
    clock = Clock()
    orig_pattern = assembly_mod.Assembler._pattern
    assembly_mod.Assembler._pattern = clock.wrap("pattern", orig_pattern)
    try:
        loads = cube_loads()
        mat = from_config(MATERIAL)
        t, s = timed_collective(comm, lambda: HFSolver(dm, mat, loads, SolverOptions()))
    finally:
        assembly_mod.Assembler._pattern = orig_pattern
    setup["pattern"] = cmax(comm, clock.total("pattern"))
    setup["solver_rest"] = t - setup["pattern"]

    asm = s.asm
    # the solver assembles the matrix inside each material update with a tangent, chunk by
    # chunk (one more assembly than Newton iterations per step: the converged state's)
    asm_cls = assembly_mod.MatrixAssembly
    orig_add, orig_finish = asm_cls.add, asm_cls.finish
    asm_cls.add = clock.wrap("matrix_chunks", orig_add)
    asm_cls.finish = clock.wrap("matrix_finish", orig_finish)
    asm.internal_force = clock.wrap("internal_force", asm.internal_force)
    asm.strains = clock.wrap("strains", asm.strains)
    s.external_force = clock.wrap("external_force", s.external_force)
    ksp = TimedKSP(s.ksp, clock)
    s.ksp = ksp

    st = s.initial_state()
    newton, cut, wall = 0, 0, []
    plastic = 0.0
    for k in range(1, steps + 1):
        comm.Barrier()
        t0 = time.perf_counter()
        st, info = s.step(st, float(k), k)
        wall.append(cmax(comm, time.perf_counter() - t0))
        newton += info.newton_iterations
        cut += info.cutbacks
    p = s.material.cumulated_plastic_strain(st.internal)
    plastic = comm.allreduce(int(np.count_nonzero(p > 0))) / comm.allreduce(p.size)
    # the converged answer, to compare solver configurations: ||u|| over the owned DOFs,
    # the largest and the mean cumulated plastic strain
    uo = st.u[: 3 * dm.n_owned]
    answer = {"u_norm": float(np.sqrt(comm.allreduce(float(uo @ uo)))),
              "p_max": comm.allreduce(float(p.max()), op=MPI.MAX),
              "p_mean": comm.allreduce(float(p.sum())) / comm.allreduce(p.size)}

    # Phase totals over all steps, max over ranks (the time the job waits for).
    cons = cmax(comm, s.timers.seconds["constitutive"] + clock.total("strains"))
    # the solver's "assembly" timer holds the matrix, the internal force and its ghost sum
    residual = cmax(comm, s.timers.seconds["assembly"])
    asm_cls.add, asm_cls.finish = orig_add, orig_finish
    n_chunks = len(asm._scatter)
    matrix = cmax(comm, clock.total("matrix_chunks") + clock.total("matrix_finish"))
    n_matrices = clock.count("matrix_finish")
    # the set-up (GAMG's or hypre's hierarchy) is timed apart since the solver calls it
    # before the solve (c23d593); it belongs to the solve phase, as it did inside KSPSolve
    solve = cmax(comm, clock.total("solve") + clock.total("setup"))
    total = sum(wall)
    evals = clock.count("internal_force")
    first_matrix = sum(clock.t["matrix_chunks"][:n_chunks]) + clock.t["matrix_finish"][0]
    setup["first_matrix"] = cmax(comm, first_matrix)
    setup["first_solve"] = cmax(comm, clock.t["solve"][0] + clock.t["setup"][0])
    per_it = {"constitutive": cons / newton, "matrix": matrix / newton, "residual": residual / newton,
              "solve": solve / newton}
    per_it["other"] = total / newton - sum(per_it.values())
    per_it["total"] = total / newton
    rss = comm.gather(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, root=0)
    row = {
        "n": n, "dofs": 3 * (n + 1) ** 3, "cells": n ** 3, "ranks": comm.size, "steps": steps,
        "newton_iterations": newton, "cutbacks": cut, "residual_evaluations": evals,
        "matrix_assemblies": n_matrices,
        "ksp_type": s.ksp.getType(), "pc_type": s.ksp.getPC().getType(),
        "ksp_iterations_per_solve": float(np.mean(ksp.its)), "ksp_iterations": list(map(int, ksp.its)),
        "plastic_fraction": plastic, "answer": answer,
        "setup_seconds": setup, "per_iteration_seconds": per_it,
        "per_call_seconds": {
            "constitutive_with_strains": cons / evals,
            "matrix_first": setup["first_matrix"],
            "matrix_later": cmax(comm, clock.total("matrix_chunks") + clock.total("matrix_finish")
                                 - first_matrix) / max(1, n_matrices - 1),
            "residual": residual / evals,
            "solve_first": setup["first_solve"],
            "solve_later": cmax(comm, clock.total("solve", 1) + clock.total("setup", 1)) / max(1, newton - 1),
        },
        "step_wall_seconds": wall,
        "peak_rss_mb_per_rank": rss,
    }
    s.ksp._ksp.destroy()
    s.A.destroy()
    del s, st, dm, asm, ksp
    gc.collect()
    return row


def print_table(rows: list[dict]) -> None:
    print(f"\nHF Newton, Chaboche (J2 + AF), {rows[0]['ranks']} rank(s), "
          f"KSP {rows[0]['ksp_type']} + {rows[0]['pc_type']}; seconds (max over ranks)")
    print("setup:")
    keys = ["box_rank0", "distribute", "geometry", "pattern", "solver_rest", "first_matrix", "first_solve"]
    print(f"{'DOFs':>9} " + " ".join(f"{k:>12}" for k in keys))
    for r in rows:
        print(f"{r['dofs']:>9d} " + " ".join(f"{r['setup_seconds'][k]:>12.3f}" for k in keys))
    print("per Newton iteration:")
    keys = ["constitutive", "matrix", "residual", "solve", "other", "total"]
    print(f"{'DOFs':>9} {'steps':>5} {'Newton':>6} {'evals/it':>8} {'KSP/solve':>9} {'plastic':>7} "
          + " ".join(f"{k:>12}" for k in keys) + f" {'peak RSS MB/rank':>18}")
    for r in rows:
        p = r["per_iteration_seconds"]
        rss = "/".join(f"{m:.0f}" for m in r["peak_rss_mb_per_rank"])
        print(f"{r['dofs']:>9d} {r['steps']:>5d} {r['newton_iterations']:>6d} "
              f"{r['residual_evaluations'] / r['newton_iterations']:>8.2f} {r['ksp_iterations_per_solve']:>9.1f} "
              f"{r['plastic_fraction']:>7.2f} " + " ".join(f"{p[k]:>12.3f}" for k in keys) + f" {rss:>18}")
    for r in rows:
        a = r.get("answer")
        if a:
            print(f"{r['dofs']:>9d} converged answer: ||u|| {a['u_norm']:.12e}, max p {a['p_max']:.12e}, "
                  f"mean p {a['p_mean']:.12e}")


def compare(paths: list[str]) -> None:
    """Speed-up per phase of each run relative to the first (matched by mesh size)."""
    runs = [json.load(open(p)) for p in paths]
    base = {r["n"]: r for r in runs[0]["rows"]}
    keys = ["constitutive", "matrix", "residual", "solve", "total"]
    skeys = ["distribute", "pattern", "first_matrix", "first_solve"]
    for run in runs:
        print_table(run["rows"])
    for run in runs[1:]:
        print(f"\nspeed-up {runs[0]['meta']['ranks']} -> {run['meta']['ranks']} ranks "
              "(time ratio, per Newton iteration; KSP its/solve)")
        print(f"{'DOFs':>9} " + " ".join(f"{k:>12}" for k in keys + skeys) + f" {'KSP its':>11}")
        for r in run["rows"]:
            b = base.get(r["n"])
            if b is None:
                continue
            sp = [b["per_iteration_seconds"][k] / r["per_iteration_seconds"][k] for k in keys]
            sp += [b["setup_seconds"][k] / r["setup_seconds"][k] for k in skeys]
            its = f"{b['ksp_iterations_per_solve']:.0f}->{r['ksp_iterations_per_solve']:.0f}"
            print(f"{r['dofs']:>9d} " + " ".join(f"{x:>12.2f}" for x in sp) + f" {its:>11}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20, 45, 70],
                    help="cells per edge of the cube (70: 1.07e6 DOFs)")
    ap.add_argument("--steps", type=int, default=1, help="load steps (1: elastic to plastic; 2+: plastic again)")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    ap.add_argument("--compare", nargs="+", metavar="JSON",
                    help="no run: print the tables of earlier --json files and the speed-ups to the first")
    args = ap.parse_args(argv)
    if args.compare:
        compare(args.compare)
        return
    comm = MPI.COMM_WORLD
    rows = []
    for n in sorted(args.sizes):
        rows.append(run_size(n, args.steps, comm))
        if comm.rank == 0:
            print(f"n={n}: {rows[-1]['dofs']} DOFs done in {sum(rows[-1]['step_wall_seconds']):.1f} s",
                  file=sys.stderr, flush=True)
    if comm.rank == 0:
        print_table(rows)
        if args.json:
            from petsc4py import PETSc
            meta = {"python": platform.python_version(), "numpy": np.__version__,
                    "petsc": ".".join(map(str, PETSc.Sys.getVersion())), "machine": platform.machine(),
                    "ranks": comm.size, "material": MATERIAL, "stretch": STRETCH}
            from ddrom.io.jsonio import write_json  # strict JSON (NaN -> null), atomic

            write_json(args.json, {"benchmark": "hf_newton", "meta": meta, "rows": rows}, indent=1)


if __name__ == "__main__":
    main()
