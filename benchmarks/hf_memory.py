"""Where the memory of an HF Newton step goes, phase by phase, at the rank count it is launched with.

Problem: that of ``hf_newton.py`` (unit cube of n^3 hexahedra, Chaboche with Armstrong-
Frederick hardening, imposed non-uniform stretch into plasticity, one load step, solver
defaults: B-bar, GMRES + GAMG). Reported per rank (max over ranks, and rank 0 apart):

* at the end of each set-up phase (box on rank 0, distribution, geometry, solver with its
  matrix pattern and KSP, initial state) and around every call of the kernels of the step
  (strains, internal force, linear solve; the matrix is assembled inside the material
  update): the numpy/Python memory alive
  (``tracemalloc``: numpy reports its buffers to it), the peak of that memory inside the
  phase, the process RSS and its high-water mark (``VmHWM``), in MB and in bytes per DOF
  of the rank;
* the largest Python allocations alive when the first matrix assembly starts, grouped by
  the ddrom source line that made them (what the persistent per-DOF arrays are);
* the non-Python part (RSS high-water mark minus the Python peak): PETSc's matrix, the
  GAMG hierarchy, Krylov vectors, MPI buffers, the interpreter and libraries.

``tracemalloc`` slows allocation-heavy code; the times of this script mean nothing (use
``hf_newton.py``). Run::

    mpirun -n 2 .venv/bin/python benchmarks/hf_memory.py --size 70 --json hf_memory_2.json

    mpirun -n 2 .venv/bin/python benchmarks/hf_memory.py --size 70 --dolfinx   # the reference

Options: ``--size n`` (cells per edge; 70 gives 1.07e6 DOFs), ``--top 12``, ``--dolfinx``
(DOLFINx's linear-elastic Q1 problem on the same mesh: assembly and one CG + GAMG solve;
its peak RSS per rank), ``--json PATH``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tracemalloc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

import ddrom  # noqa: E402,F401  (PETSC_DIR before petsc4py)
from mpi4py import MPI  # noqa: E402

from hf_newton import MATERIAL, cube_loads  # noqa: E402


def _status() -> dict[str, float]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) / 1024.0
    return out


class Probe:
    """Memory at named marks: Python live and peak since the previous mark, RSS, HWM."""

    def __init__(self):
        self.log: list[tuple[str, float, float, float, float]] = []

    def mark(self, name: str) -> None:
        cur, peak = tracemalloc.get_traced_memory()
        st = _status()
        self.log.append((name, cur / 2 ** 20, peak / 2 ** 20, st["VmRSS"], st["VmHWM"]))
        tracemalloc.reset_peak()

    def wrap(self, obj, name: str, label: str | None = None) -> None:
        fn = getattr(obj, name)
        label = label or name

        def probed(*a, **kw):
            self.mark(f"before {label}")
            out = fn(*a, **kw)
            self.mark(label)
            return out
        setattr(obj, name, probed)

    def phases(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for name, cur, peak, rss, hwm in self.log:
            key = name
            if name.startswith("before "):
                continue        # the peak between a "before" mark and the call's end is the call's
            a = out.setdefault(key, {"calls": 0, "python_live_mb": 0.0, "python_peak_mb": 0.0,
                                     "rss_mb": 0.0, "hwm_mb": 0.0})
            a["calls"] += 1
            a["python_live_mb"] = max(a["python_live_mb"], cur)
            a["python_peak_mb"] = max(a["python_peak_mb"], peak)
            a["rss_mb"] = max(a["rss_mb"], rss)
            a["hwm_mb"] = max(a["hwm_mb"], hwm)
        # the peak between two kernel calls: the material update and the Newton bookkeeping
        between = [peak for name, cur, peak, rss, hwm in self.log if name.startswith("before ")]
        out["between kernels (material update, Newton)"] = {
            "calls": len(between), "python_live_mb": float("nan"),
            "python_peak_mb": max(between) if between else 0.0, "rss_mb": float("nan"), "hwm_mb": float("nan")}
        return out


class _KSP:
    def __init__(self, ksp, probe, snapshot):
        self._ksp, self._probe, self._snapshot = ksp, probe, snapshot

    def setUp(self):
        if "solve" not in self._snapshot and tracemalloc.is_tracing():
            self._snapshot["solve"] = tracemalloc.take_snapshot()
        self._probe.mark("before set-up")
        self._ksp.setUp()
        self._probe.mark("KSP set-up")

    def solve(self, b, x):
        self._probe.mark("before solve")
        self._ksp.solve(b, x)
        self._probe.mark("solve")

    def __getattr__(self, name):
        return getattr(self._ksp, name)


def run(n: int, top: int, comm, trace: bool = True) -> dict:
    from ddrom.hf.solver import HFSolver, SolverOptions
    from ddrom.materials import from_config
    from ddrom.mesh.generators import box
    from ddrom.mesh.scatter import distribute

    probe = Probe()
    if trace:
        tracemalloc.start(6)
    probe.mark("start")
    mesh = box(1.0, 1.0, 1.0, n, n, n) if comm.rank == 0 else None
    probe.mark("box (rank 0)")
    dm = distribute(mesh, comm)
    del mesh
    gc.collect()
    probe.mark("distribute")
    dm.weights
    probe.mark("geometry")
    loads = cube_loads()
    s = HFSolver(dm, from_config(MATERIAL), loads, SolverOptions())
    probe.mark("solver (pattern, matrix, KSP)")
    snapshot = {}
    start_matrix = s.asm.matrix_assembly

    def first_matrix(*a, **kw):
        if "snap" not in snapshot and tracemalloc.is_tracing():
            snapshot["snap"] = tracemalloc.take_snapshot()
        return start_matrix(*a, **kw)
    s.asm.matrix_assembly = first_matrix
    # the matrix is assembled inside the material update (one chunk's tangent at a time):
    # its memory shows in "between kernels"
    for name in ("strains", "internal_force", "create_matrix"):     # create_matrix: after a hypre solve
        probe.wrap(s.asm, name)
    s.ksp = _KSP(s.ksp, probe, snapshot)
    st = s.initial_state()
    probe.mark("initial state")
    st, info = s.step(st, 1.0, 1)
    probe.mark("step done")
    dofs_rank = 3 * dm.n_owned
    # largest live allocations at the first matrix assembly, by ddrom source line
    def by_line(snap):
        groups: dict[str, int] = {}
        for stat in snap.statistics("traceback"):
            frames = [f"{fr.filename.split('ddrom/')[-1]}:{fr.lineno}" for fr in stat.traceback
                      if "/ddrom/" in fr.filename]
            key = frames[-1] if frames else "(outside ddrom)"      # the innermost ddrom line
            groups[key] = groups.get(key, 0) + stat.size
        return [{"where": k, "mb": v / 2 ** 20, "bytes_per_dof": v / dofs_rank}
                for k, v in sorted(groups.items(), key=lambda kv: -kv[1])[:top]]
    phases = probe.phases()
    hwm = _status()["VmHWM"]
    py_peak = max(p["python_peak_mb"] for p in phases.values())
    # the first mark at which the high-water mark had its final value: the phase of the peak
    peak_at = next((name for name, cur, peak, rss, h in probe.log if h >= hwm - 0.5), "?")
    mine = {"dofs_rank": dofs_rank, "phases": phases, "hwm_mb": hwm, "python_peak_mb": py_peak,
            "peak_reached_in": peak_at,
            "live_at_first_matrix": by_line(snapshot["snap"]) if "snap" in snapshot else [],
            "live_at_first_set_up": by_line(snapshot["solve"]) if "solve" in snapshot else []}
    tracemalloc.stop()
    ranks = comm.gather(mine, root=0)
    return {"n": n, "dofs": 3 * (n + 1) ** 3, "ranks": comm.size, "newton_iterations": info.newton_iterations,
            "per_rank": ranks} if comm.rank == 0 else {}


def run_dolfinx(n: int, comm) -> dict:
    """DOLFINx's linear-elastic Q1 problem on the same cube: matrix, right-hand side and one
    CG + GAMG solve (``hf_vs_dolfinx.py``'s set-up); its peak RSS per rank."""
    import ufl
    from dolfinx import fem, mesh
    from dolfinx.fem import petsc as fp
    from petsc4py import PETSc

    domain = mesh.create_box(comm, [np.zeros(3), np.ones(3)], [n, n, n], mesh.CellType.hexahedron)
    V = fem.VectorFunctionSpace(domain, ("Lagrange", 1))
    fdim = domain.topology.dim - 1
    left = mesh.locate_entities_boundary(domain, fdim, lambda x: np.isclose(x[0], 0.0))
    bc = fem.dirichletbc(np.zeros(3, dtype=PETSc.ScalarType), fem.locate_dofs_topological(V, fdim, left), V)
    E, nu = MATERIAL["E"], MATERIAL["nu"]
    lam, mu = E * nu / ((1 + nu) * (1 - 2 * nu)), E / (2 * (1 + nu))
    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)

    def eps(w):
        return ufl.sym(ufl.grad(w))
    dx = ufl.Measure("dx", domain=domain, metadata={"quadrature_degree": 2})
    a = fem.form(ufl.inner(lam * ufl.tr(eps(u)) * ufl.Identity(3) + 2 * mu * eps(u), eps(v)) * dx)
    L = fem.form(ufl.dot(fem.Constant(domain, np.array([0.0, 0.0, -1.0])), v) * dx)
    A = fp.assemble_matrix(a, bcs=[bc])
    A.assemble()
    b = fp.assemble_vector(L)
    fp.apply_lifting(b, [a], bcs=[[bc]])
    b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
    fp.set_bc(b, [bc])
    nloc = V.dofmap.index_map.size_local
    coords = PETSc.Vec().createMPI((3 * nloc, PETSc.DECIDE), bsize=3, comm=comm)
    coords.array[:] = V.tabulate_dof_coordinates()[:nloc].ravel()
    A.setNearNullSpace(PETSc.NullSpace().createRigidBody(coords))
    ksp = PETSc.KSP().create(comm)
    ksp.setOperators(A)
    ksp.setType("cg")
    ksp.getPC().setType("gamg")
    ksp.setTolerances(rtol=1e-10, max_it=2000)
    uh = fem.Function(V)
    ksp.solve(b, uh.vector)
    hwm = comm.gather(_status()["VmHWM"], root=0)
    dofs = comm.gather(3 * nloc, root=0)
    return {"n": n, "dofs": 3 * (n + 1) ** 3, "ranks": comm.size, "ksp_iterations": ksp.getIterationNumber(),
            "per_rank": [{"dofs_rank": d, "hwm_mb": h} for d, h in zip(dofs, hwm)]} if comm.rank == 0 else {}


def print_report(res: dict) -> None:
    if "phases" not in res["per_rank"][0]:
        print(f"\nDOLFINx linear elasticity (Q1, CG + GAMG, {res['ksp_iterations']} iterations): "
              f"{res['dofs']:,} DOFs, {res['ranks']} rank(s)")
        for i, r in enumerate(res["per_rank"]):
            print(f"rank {i}: {r['dofs_rank']:,} DOFs, peak RSS {r['hwm_mb']:.0f} MB = "
                  f"{r['hwm_mb'] * 2 ** 20 / r['dofs_rank']:.0f} B/DOF")
        return
    per = res["per_rank"]
    print(f"\nhf_memory: {res['dofs']:,} DOFs, {res['ranks']} rank(s), Chaboche, "
          f"{res['newton_iterations']} Newton iterations")
    print(f"{'phase':44s} {'calls':>5s} {'py live MB':>10s} {'py peak MB':>10s} {'RSS MB':>8s} "
          f"{'HWM MB':>8s} {'HWM B/DOF':>9s}   (max over ranks)")
    names = list(per[0]["phases"])
    for name in names:
        rows = [r["phases"][name] for r in per]
        d = max(r["dofs_rank"] for r in per)
        hwm = max(x["hwm_mb"] for x in rows)
        print(f"{name:44s} {rows[0]['calls']:5d} {max(x['python_live_mb'] for x in rows):10.1f} "
              f"{max(x['python_peak_mb'] for x in rows):10.1f} {max(x['rss_mb'] for x in rows):8.1f} "
              f"{hwm:8.1f} {hwm * 2 ** 20 / d:9.0f}")
    for i, r in enumerate(per):
        print(f"rank {i}: {r['dofs_rank']:,} DOFs, peak RSS {r['hwm_mb']:.0f} MB = "
              f"{r['hwm_mb'] * 2 ** 20 / r['dofs_rank']:.0f} B/DOF; Python peak {r['python_peak_mb']:.0f} MB "
              f"({r['python_peak_mb'] * 2 ** 20 / r['dofs_rank']:.0f} B/DOF); the rest (PETSc, MPI, "
              f"interpreter) {(r['hwm_mb'] - r['python_peak_mb']) * 2 ** 20 / r['dofs_rank']:.0f} B/DOF; "
              f"peak reached by the mark '{r['peak_reached_in']}'")
    print("\nlargest Python allocations alive at the first matrix assembly (rank 0):")
    for x in per[0]["live_at_first_matrix"]:
        print(f"  {x['mb']:8.1f} MB {x['bytes_per_dof']:7.0f} B/DOF  {x['where']}")
    print("\nlargest Python allocations alive at the first KSP set-up (rank 0):")
    for x in per[0]["live_at_first_set_up"]:
        print(f"  {x['mb']:8.1f} MB {x['bytes_per_dof']:7.0f} B/DOF  {x['where']}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=40)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--dolfinx", action="store_true",
                    help="DOLFINx's linear-elastic problem on the same mesh instead (its peak RSS)")
    ap.add_argument("--no-trace", action="store_true",
                    help="no tracemalloc (RSS and its high-water mark per phase only; no Python columns): "
                         "the step at its normal speed, for the largest sizes")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    comm = MPI.COMM_WORLD
    res = run_dolfinx(args.size, comm) if args.dolfinx else run(args.size, args.top, comm, trace=not args.no_trace)
    if comm.rank == 0:
        print_report(res)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
