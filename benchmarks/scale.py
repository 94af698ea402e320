"""Industrial scale (issue #14 item 6): one HF load step of the demo physics at millions of DOFs, and the ROM pipeline.

Part ``hf-step`` (default): one load step of the demo's physics -- the plate with a hole of
``benchmarks/_rom_case.py`` (the demo case ``cases/demo.toml`` with a refinable mesh:
Chaboche elasto-viscoplastic nickel alloy, Norton viscosity, isotropic and
Armstrong-Frederick kinematic hardening, moduli, yield stress and viscosity depending on
the temperature, thermal strain, a hot band through the hole, a traction on the right
face) -- on a mesh of at least ``--dofs`` DOFs, built the way the library builds a case's
mesh: every rank generates its slice (``generate_slice``), then the slices are partitioned
(PTScotch) and moved (``distribute_slices``); no rank ever holds the whole mesh. The step
goes from the unloaded state at t = 0 to ``--t`` (default 10 s: the peak of the triangular
traction ``S_max tri(t, 20)``, the temperature at its peak since t = 5), into plasticity
at the hole (the Newton iterations do real return mapping there, elastic elsewhere).

Solver: the case's Newton options (B-bar, ``newton_rtol`` 1e-8, line search) and, by default
for this script, BoomerAMG in the memory-lean configuration of benchmarks/README.md ("The
hypre step below 4 KB/DOF": HMIS, ext+i, P_max 4, agg_nl 1, strong threshold 0.5, operator
converted in place) instead of the library's default GAMG: GAMG's Newton step peaked at
5.3 KB per DOF of a rank at 1.07M DOFs on 2 ranks against hypre's 3.9, i.e. ~27 GB for
5M DOFs where this machine has 24 (``--pc gamg`` runs the library's defaults; PETSc options
given on the command line or in ``PETSC_OPTIONS`` win over the script's).

Reported (table on rank 0, ``--json PATH``):

* set-up, seconds (max over ranks) and the RSS high-water mark per rank after each phase:
  mesh slices generated, mesh distributed (partition, moves, regions, orientation check),
  geometry (integration weights), matrix pattern, the rest of the solver's construction
  (AIJ matrix, KSP, loads), initial state (thermal stresses at t = 0);
* the step: Newton iterations, line-search shortenings, cut-backs, KSP iterations per
  solve, plastic fraction of the integration points, max and mean cumulated plastic
  strain, ||u|| (the converged answer, to compare configurations);
* seconds per Newton iteration by phase (max over ranks of the phase's total over the
  step / Newton iterations; the solver's own timers, read from outside): constitutive
  (strains + return mapping with tangent, every residual evaluation incl. the line search
  and the converged state's), matrix (assembly of the tangent's blocks, done inside the
  material update, its finish, and with hypre the new AIJ after each solve; each given apart), residual
  (internal force + ghost sum), solve (with hypre: conversion to hypre's format, set-up,
  Krylov iterations; each given apart), rest (loads, norms, copies) and the total;
* peak RSS per rank (``ru_maxrss``) and bytes per owned DOF, and the HWM's growth per
  solver stage (a ``Timers`` listener reads ``VmHWM`` at the start and end of every stage:
  which phase set the peak).

Part ``pipeline``: the whole ROM pipeline (HF training sweep, offline, online, HF reference
on the test point, comparison) at ``--dofs``: delegates to ``rom_speedup.py`` (same case
family; every option the script does not know is passed to it, e.g. ``--training``,
``--test``, ``--steps``).

Run (2 ranks; small sizes take seconds)::

    mpirun -n 2 .venv/bin/python benchmarks/scale.py --dofs 20000                 # smoke
    mpirun -n 2 .venv/bin/python benchmarks/scale.py --dofs 5000000 --json scale_5M.json
    DDROM_IGNORE_RESOURCES=1 mpirun -n 2 -x DDROM_IGNORE_RESOURCES .venv/bin/python benchmarks/scale.py \\
        --part pipeline --dofs 1000000 --training "S_max=120;S_max=130;S_max=140" --test "S_max=125"
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # one BLAS thread per rank (the ranks use the cores)

import numpy as np  # noqa: E402

import ddrom  # noqa: E402  (sets PETSC_DIR before petsc4py)
from mpi4py import MPI  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _rom_case import dofs_of, m_for_dofs, mesh_args, write_case  # noqa: E402
from hf_memory import _status  # noqa: E402
from hf_newton import Clock, TimedKSP, cmax, timed_collective  # noqa: E402

#: the memory-lean BoomerAMG configuration (benchmarks/README.md, "hypre instead of GAMG")
HYPRE = {"pc_type": "hypre", "pc_hypre_boomeramg_coarsen_type": "HMIS", "pc_hypre_boomeramg_interp_type": "ext+i",
         "pc_hypre_boomeramg_P_max": "4", "pc_hypre_boomeramg_agg_nl": "1",
         "pc_hypre_boomeramg_strong_threshold": "0.5"}


class HWMByStage:
    """A :class:`~ddrom.parallel.timers.Timers` listener: the growth of the RSS high-water
    mark (``VmHWM``) during each named stage, and between stages (``between``)."""

    def __init__(self):
        self.growth = defaultdict(float)
        self.last = _status()["VmHWM"]
        self.stage_of_peak = None

    def _account(self, name: str) -> None:
        hwm = _status()["VmHWM"]
        if hwm > self.last:
            self.growth[name] += hwm - self.last
            self.stage_of_peak = name
            self.last = hwm

    def stage_start(self, name: str) -> None:
        self._account("between")

    def stage_end(self, name: str, seconds: float) -> None:
        self._account(name)


def hf_step(args, comm) -> dict:
    from petsc4py import PETSc

    from ddrom.workflow.build import load_case_collectively

    m = m_for_dofs(args.dofs)
    point = {"S_max": args.s_max, "T_max": args.t_max}
    path = None
    if comm.rank == 0:
        path = str(write_case(args.workdir, f"scale_m{m}", m, 2, [point], [point]))
    path = comm.bcast(path, root=0)
    case = load_case_collectively(path, comm)
    from ddrom.hf.solver import HFSolver

    opts = PETSc.Options()
    # the command line and PETSC_OPTIONS win; values an earlier solver of this process wrote
    # as its defaults (HFSolver._case_set) do not, and are put back after the step
    ours = {k: (opts.getString(k) if opts.hasName(k) else None)
            for k in (HYPRE if args.pc == "hypre" else {}) if not opts.hasName(k) or k in HFSolver._case_set}
    for k in ours:
        opts.setValue(k, HYPRE[k])
    try:
        return _hf_step(args, comm, case, point, m, opts)
    finally:
        for k, old in ours.items():     # read at every hypre re-creation: kept until the step is done
            if old is None:
                opts.delValue(k)
            else:
                opts.setValue(k, old)


def _hf_step(args, comm, case, point, m, opts) -> dict:
    from ddrom.hf import assembly as assembly_mod
    from ddrom.hf.solver import HFSolver
    from ddrom.materials import from_config
    from ddrom.mesh.generators import generate_slice
    from ddrom.mesh.slices import distribute_slices
    from ddrom.parallel import Timers
    from ddrom.workflow.build import build_loads, sanity_check_regions
    from ddrom.workflow.options import solver_options

    setup, hwm = {}, {}

    def done(name: str, seconds: float) -> None:
        setup[name] = seconds
        hwm[name] = comm.gather(_status()["VmHWM"], root=0)

    cfg = case.raw["mesh"]
    t, ms = timed_collective(comm, lambda: generate_slice(cfg["generator"], comm.rank, comm.size,
                                                          **dict(cfg.get("args", {}))))
    done("mesh_slices", t)
    t, dm = timed_collective(comm, lambda: distribute_slices(ms, comm, partitioner=cfg.get("partitioner", "ptscotch"),
                                                             regions=dict(cfg.get("regions") or {})))
    del ms
    gc.collect()
    done("distribute", t)
    sanity_check_regions(case, dm)
    t, _ = timed_collective(comm, lambda: dm.weights)
    done("geometry", t)

    clock = Clock()
    orig_pattern = assembly_mod.Assembler._pattern
    assembly_mod.Assembler._pattern = clock.wrap("pattern", orig_pattern)
    timers = Timers()
    try:
        t, s = timed_collective(comm, lambda: HFSolver(dm, from_config(case.raw["material"]),
                                                       build_loads(case, point, dm), solver_options(case),
                                                       timers=timers))
    finally:
        assembly_mod.Assembler._pattern = orig_pattern
    setup["pattern"] = cmax(comm, clock.total("pattern"))
    done("solver", t - setup["pattern"])
    t, st0 = timed_collective(comm, lambda: s.initial_state(0.0))
    done("initial_state", t)

    acc_cls = assembly_mod.MatrixAssembly
    orig_add, orig_finish = acc_cls.add, acc_cls.finish
    acc_cls.add = clock.wrap("matrix_blocks", orig_add)
    acc_cls.finish = clock.wrap("matrix_finish", orig_finish)     # also counts the matrix assemblies
    s.asm.strains = clock.wrap("strains", s.asm.strains)
    s.asm.internal_force = clock.wrap("internal_force", s.asm.internal_force)
    ksp = TimedKSP(s.ksp, clock)
    s.ksp = ksp
    probe = HWMByStage()
    Timers.listeners.append(probe)
    try:
        comm.Barrier()
        t0 = time.perf_counter()
        st, info = s.step(st0, float(args.t), 1)
        wall = cmax(comm, time.perf_counter() - t0)
    finally:
        Timers.listeners.remove(probe)
        acc_cls.add, acc_cls.finish = orig_add, orig_finish
    hwm["step"] = comm.gather(_status()["VmHWM"], root=0)

    mat = s.material
    p = mat.cumulated_plastic_strain(st.internal)
    n_points = comm.allreduce(p.size)
    uo = st.u[: 3 * dm.n_owned]
    answer = {"u_norm": float(np.sqrt(comm.allreduce(float(uo @ uo)))),
              "p_max": comm.allreduce(float(p.max(initial=0.0)), op=MPI.MAX),
              "p_mean": comm.allreduce(float(p.sum())) / n_points,
              "plastic_fraction": comm.allreduce(int(np.count_nonzero(p > 0))) / n_points}

    sec = timers.seconds
    newton = max(1, info.newton_iterations)
    # per phase, total over the step, max over ranks
    ph = {"constitutive": cmax(comm, sec["constitutive"] + clock.total("strains")),
          "matrix": cmax(comm, sec["matrix"]),
          "residual": cmax(comm, sec["assembly"]),
          "solve": cmax(comm, sec["linear_solve"])}
    solve_split = {"setup": cmax(comm, clock.total("setup")), "krylov": cmax(comm, clock.total("solve"))}
    solve_split["conversion_and_rest"] = max(0.0, ph["solve"] - solve_split["setup"] - solve_split["krylov"])
    # the solver's matrix timer: the blocks added inside the material update, the finish
    # (off-rank blocks sent, MatAssembly), and with hypre the new AIJ after each solve
    matrix_split = {"blocks": cmax(comm, clock.total("matrix_blocks")), "finish": cmax(comm, clock.total("matrix_finish"))}
    matrix_split["new_matrix_and_rest"] = max(0.0, ph["matrix"] - matrix_split["blocks"] - matrix_split["finish"])
    per_it = {k: v / newton for k, v in ph.items()}
    per_it["rest"] = wall / newton - sum(per_it.values())
    per_it["total"] = wall / newton
    n_owned = comm.gather(3 * dm.n_owned, root=0)
    n_ghost = comm.gather(3 * (dm.n_local_nodes - dm.n_owned), root=0)    # what grows with P at fixed n
    peak = comm.gather(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, root=0)
    growth = comm.gather(dict(probe.growth), root=0)
    stage_of_peak = comm.gather(probe.stage_of_peak, root=0)
    row = {
        "part": "hf-step", "dofs": 3 * dm.n_nodes_global, "cells": dm.n_cells_global, "mesh_index_m": m, "mesh_args": mesh_args(m),
        "ranks": comm.size, "params": point, "t_end": float(args.t),
        "ksp_type": ksp.getType(), "pc_type": ksp.getPC().getType(),
        "petsc_options": {k: v for k, v in opts.getAll().items() if k.startswith(("pc_", "ksp_"))},
        "newton_iterations": info.newton_iterations, "line_search_steps": info.line_search_steps,
        "cutbacks": info.cutbacks, "residual_evaluations": clock.count("internal_force"),
        "matrix_assemblies": clock.count("matrix_finish"),
        "ksp_iterations": list(map(int, ksp.its)),
        "ksp_iterations_per_solve": float(np.mean(ksp.its)) if ksp.its else 0.0,
        "answer": answer, "setup_seconds": setup, "step_seconds": wall,
        "phase_seconds": ph, "solve_split_seconds": solve_split, "matrix_split_seconds": matrix_split, "per_iteration_seconds": per_it,
        "owned_dofs_per_rank": n_owned, "ghost_dofs_per_rank": n_ghost,
        "cells_per_rank": comm.gather(dm.n_cells, root=0), "peak_rss_mb_per_rank": peak,
        "hwm_mb_after": hwm, "hwm_growth_mb_by_stage": growth, "stage_of_peak": stage_of_peak,
    }
    if comm.rank == 0:
        row["bytes_per_owned_dof"] = [mb * 2 ** 20 / n for mb, n in zip(peak, n_owned)]
    row = comm.bcast(row, root=0)
    ksp._ksp.destroy()            # collectively, not whenever the garbage collector gets to them
    s.A.destroy()
    del s, st, st0, dm, ksp
    gc.collect()
    return row


def print_hf(r: dict) -> None:
    pi, sp, mp = r["per_iteration_seconds"], r["solve_split_seconds"], r["matrix_split_seconds"]
    n = max(1, r["newton_iterations"])
    print(f"\nscale.py hf-step: demo physics (Chaboche, T-dependent), {r['dofs']:,} DOFs "
          f"(m = {r['mesh_index_m']}: {r['mesh_args']}), {r['ranks']} rank(s), KSP {r['ksp_type']} + {r['pc_type']}, "
          f"one step 0 -> {r['t_end']:g} s at {r['params']}")
    print("set-up, s (max over ranks) / HWM MB per rank after it:")
    for k, v in r["setup_seconds"].items():
        h = r["hwm_mb_after"].get(k)
        print(f"  {k:<14} {v:9.2f}" + (f"   {' / '.join(f'{x:,.0f}' for x in h)}" if h else ""))
    a = r["answer"]
    print(f"step: {r['step_seconds']:.1f} s, {r['newton_iterations']} Newton ({r['line_search_steps']} shortened by "
          f"the line search, {r['cutbacks']} cut-backs), {r['residual_evaluations']} residual evaluations, "
          f"{r['matrix_assemblies']} matrix assemblies")
    print(f"  KSP per solve {r['ksp_iterations_per_solve']:.1f} ({r['ksp_iterations']})")
    print(f"  plastic points {a['plastic_fraction']:.4f}, max p {a['p_max']:.6e}, mean p {a['p_mean']:.6e}, "
          f"||u|| {a['u_norm']:.12e}")
    keys = ["constitutive", "matrix", "residual", "solve", "rest", "total"]
    print("s per Newton iteration: " + ", ".join(f"{k} {pi[k]:.2f}" for k in keys)
          + f"  (solve: set-up {sp['setup'] / n:.2f}, Krylov {sp['krylov'] / n:.2f}, "
          f"conversion and releases {sp['conversion_and_rest'] / n:.2f}; matrix: blocks {mp['blocks'] / n:.2f}, "
          f"finish {mp['finish'] / n:.2f}, new AIJ and rest {mp['new_matrix_and_rest'] / n:.2f})")
    print("peak RSS MB per rank: " + " / ".join(f"{x:,.0f}" for x in r["peak_rss_mb_per_rank"])
          + ";  B per owned DOF: " + " / ".join(f"{x:,.0f}" for x in r["bytes_per_owned_dof"])
          + ";  owned DOFs: " + " / ".join(f"{x:,}" for x in r["owned_dofs_per_rank"])
          + ";  ghost DOFs: " + " / ".join(f"{x:,}" for x in r["ghost_dofs_per_rank"]))
    for rank, (g, where) in enumerate(zip(r["hwm_growth_mb_by_stage"], r["stage_of_peak"])):
        print(f"  rank {rank}: HWM growth during the step by stage (MB): "
              + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(g.items(), key=lambda kv: -kv[1]))
              + f"; peak set in: {where}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["hf-step", "pipeline"], default="hf-step")
    ap.add_argument("--dofs", type=int, default=5_000_000, help="minimum number of DOFs (default 5,000,000)")
    ap.add_argument("--t", type=float, default=10.0, help="hf-step: end time of the one step (default 10 s, peak load)")
    ap.add_argument("--s-max", type=float, default=140.0, help="hf-step: peak traction S_max (MPa)")
    ap.add_argument("--t-max", type=float, default=650.0, help="hf-step: peak temperature T_max (C)")
    ap.add_argument("--pc", choices=["hypre", "gamg"], default="hypre",
                    help="hf-step: hypre (memory-lean BoomerAMG, default) or the library's defaults (GAMG)")
    ap.add_argument("--workdir", default=None, help="where the case is written (default benchmarks/results/scale)")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args, rest = ap.parse_known_args(argv)
    comm = MPI.COMM_WORLD
    if args.part == "pipeline":
        import rom_speedup

        extra = ["--dofs", str(args.dofs), "--workdir", args.workdir or "benchmarks/results/scale/pipeline"]
        return rom_speedup.main(extra + (["--json", args.json] if args.json else []) + rest)
    if rest:
        ap.error(f"unknown arguments for hf-step: {rest}")
    args.workdir = args.workdir or "benchmarks/results/scale"
    if comm.rank == 0:
        print(f"hf-step at m = {m_for_dofs(args.dofs)} ({dofs_of(m_for_dofs(args.dofs)):,} DOFs) on {comm.size} "
              f"rank(s)", file=sys.stderr, flush=True)
    row = hf_step(args, comm)
    if comm.rank == 0:
        print_hf(row)
        if args.json:
            from petsc4py import PETSc

            from ddrom.io.jsonio import write_json  # strict JSON (NaN -> null), atomic

            meta = {"ddrom_version": ddrom.__version__, "python": platform.python_version(),
                    "numpy": np.__version__, "petsc": ".".join(map(str, PETSc.Sys.getVersion())),
                    "host": platform.node(), "load_average": os.getloadavg(), "ranks": comm.size}
            write_json(args.json, {"benchmark": "scale", "meta": meta, "row": row}, indent=1)
    return row


if __name__ == "__main__":
    main()
