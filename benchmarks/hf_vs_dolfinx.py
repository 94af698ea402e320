"""ddrom's HF assembly and linear solve against DOLFINx (Debian's 0.5.2) on the same problem.

Problem (identical on both sides): linear elasticity (E = 200e3, nu = 0.3) on the beam
``[0, 2] x [0, 1] x [0, 1]`` meshed with the same structured ``2n x n x n`` trilinear
hexahedra (ddrom's ``box`` and ``dolfinx.mesh.create_box(..., CellType.hexahedron)``
put the nodes at the same places), Q1 vector space, 2x2x2 Gauss rule (DOLFINx:
``metadata={"quadrature_degree": 2}``; ddrom: its full rule, B-bar OFF), clamped at
x = 0 (rows and columns of the Dirichlet DOFs removed, 1 on the diagonal, on both
sides), traction ``(0, 0, -1)`` on x = 2. Linear solver: CG + GAMG with the rigid-body
near-null space built by ``MatNullSpaceCreateRigidBody`` from the nodal coordinates,
``ksp_rtol`` the same (``--rtol``), zero initial guess, PETSc defaults otherwise
(DOLFINx's KSP gets the options under the prefix ``dfx_``).

Timed (wall, best of ``--repeat``, max over ranks):

* ``assembly``: ddrom = one ``Assembler.assemble_matrix`` (given the elastic tangent at
  the points) + one residual evaluation (internal force of the current stresses, external
  force, ghost sums); DOLFINx = ``assemble_matrix`` into the existing matrix (with the BC)
  + ``assemble_vector`` + ``apply_lifting`` + ghost update + ``set_bc``.
  ddrom's constitutive evaluation (strains + elastic ``Material.update`` with tangent at
  every point, which DOLFINx folds into its kernel) is reported apart as ``ddrom tangent``.
* ``solve``: one ``KSPSolve`` after ``KSPReset`` (so every repetition includes the full
  GAMG set-up, as the first solve of a linear problem does).
* ``ddrom step``: the whole ``HFSolver.step`` of the linear problem (constitutive update,
  one Newton iteration, the convergence check; Newton rtol = 100 ksp_rtol so that one
  iteration suffices, the count is in the JSON), the end-to-end time of ddrom.
* set-up, reported apart and not in the ratios: ddrom = serial box on rank 0 +
  distribution + ``HFSolver`` construction (geometry, pattern, matrix, KSP);
  DOLFINx = ``create_box`` + function space + BC/tags + ``create_matrix``; DOLFINx's JIT
  compilation of the forms (``fem.form``, cached in ~/.cache/fenics, compiled with its
  default ``-O2``) is timed but EXCLUDED from everything else.

Both problems are built first; then each part is timed on both sides in turn, one
repetition each, the side going first alternating (ABBA...). Run one side after the other
(``--sequential``, how this script worked until 2026-12-05) and the side run second is
favoured: the first side's GAMG set-ups fault in ~120,000-150,000 fresh pages per solve at
578k DOFs on 2 ranks, the second side's reuse the heap the first grew (the same ddrom
solve took 7.1 s first and 6.7 s second; DOLFINx's 6.8 s first and 6.6 s second). Each
part runs in a PETSc log stage "<side> <part>": ``-log_view`` shows, per side, where a
solve's time goes (GAMG's set-up events, the Krylov iterations).

Checks: the two matrices and right-hand sides have the same Frobenius / 2-norms (both are
invariant under the renumbering), and the solutions agree (mean tip deflection u_z at
x = 2 and ||u||_2); KSP iterations of both are reported.

Usage::

    mpirun -n 1 .venv/bin/python benchmarks/hf_vs_dolfinx.py [--sizes 15 30 55] [--json PATH]
    mpirun -n 2 .venv/bin/python benchmarks/hf_vs_dolfinx.py [--sizes 15 30 55] [--json PATH]
"""
from __future__ import annotations

import argparse
import gc
import platform
import resource
import sys
import time

import numpy as np

import ddrom  # noqa: F401  (PETSC_DIR before petsc4py)
from mpi4py import MPI

from ddrom.hf.loads import Dirichlet, Loads, Traction
from ddrom.hf.solver import HFSolver, SolverOptions
from ddrom.materials import from_config
from ddrom.mesh.scatter import distribute
from ddrom.mesh.generators import box

E, NU = 200e3, 0.3
LX, LY, LZ = 2.0, 1.0, 1.0
TRACTION = (0.0, 0.0, -1.0)


def cmax(comm, x: float) -> float:
    return comm.allreduce(x, op=MPI.MAX)


def timed(comm, fn):
    """Wall time of a collective call: barrier, run, max over ranks."""
    comm.Barrier()
    t0 = time.perf_counter()
    out = fn()
    return cmax(comm, time.perf_counter() - t0), out


#: The timed parts, in the order both sides run them.
PARTS = ("tangent", "assembly", "matrix", "residual", "solve", "step")


def drive(comm, sides: dict, repeat: int, interleave: bool) -> dict:
    """Run the sides' timed parts; return each side's results.

    A side is a generator yielding ``(part, fn)`` and receiving the best wall time of ``fn``
    over ``repeat`` runs; it returns its results dict. Interleaved (the default), the sides
    that have a part run it in turn, one repetition each, the first side alternating
    (ABBA...): both sides' repetitions then run through the same process states (glibc's
    heap growing, its pages faulted in, then reused); one side after the other
    (``--sequential``, ddrom first) favoured whichever side ran second. Each part of a
    side runs in a PETSc log stage "<side> <part>" (``-log_view``).
    """
    from petsc4py import PETSc

    def run(name: str, part: str, fn) -> float:
        st = PETSc.Log.Stage(f"{name} {part}")
        st.push()
        try:
            return timed(comm, fn)[0]
        finally:
            st.pop()

    results, cur = {}, {}
    every = {name: {} for name in sides}        # every repetition's time, in the JSON

    def send(name: str, part: str, times: list) -> None:
        every[name][part] = times
        try:
            cur[name] = sides[name].send(min(times))
        except StopIteration as stop:
            results[name] = {**stop.value, "times": every[name]}
            del cur[name]

    # sequential: each side is a group of its own, run to its end before the next
    for group in ([list(sides)] if interleave else [[name] for name in sides]):
        for name in group:
            cur[name] = next(sides[name])
        while cur:
            part = min((p for p, _ in cur.values()), key=PARTS.index)
            names = [k for k, (p, _) in cur.items() if p == part]
            times = {k: [] for k in names}
            for i in range(repeat):
                for k in (names if i % 2 == 0 else names[::-1]):
                    times[k].append(run(k, part, cur[k][1]))
            for k in names:
                send(k, part, times[k])
    return results


def tip_and_norm(comm, X_owned: np.ndarray, u_owned: np.ndarray) -> tuple[float, float]:
    tip = np.isclose(X_owned[:, 0], LX)
    s = comm.allreduce(float(u_owned[tip, 2].sum()))
    c = comm.allreduce(int(tip.sum()))
    return s / c, float(np.sqrt(comm.allreduce(float(np.sum(u_owned ** 2)))))


# ----------------------------------------------------------------------------- ddrom
def ddrom_side(n: int, rtol: float, comm):
    """ddrom's problem, then its timed parts (a generator driven by :func:`drive`)."""
    from petsc4py import PETSc

    r = {}
    nx, ny, nz = 2 * n, n, n
    t_box, mesh = timed(comm, lambda: box(LX, LY, LZ, nx, ny, nz) if comm.rank == 0 else None)
    t_dist, dm = timed(comm, lambda: distribute(mesh, comm))
    del mesh
    loads = Loads(dirichlet=[Dirichlet("xmin")], traction=[Traction("xmax", TRACTION)])
    # Newton tolerance above the KSP one: the linear problem then converges in one Newton iteration
    opts = SolverOptions(bbar=False, rtol=100 * rtol, petsc_options={"ksp_rtol": rtol, "ksp_type": "cg"})
    t_solver, s = timed(comm, lambda: HFSolver(dm, from_config({"law": "elastic", "E": E, "nu": NU}),
                                               loads, opts))
    r["setup"] = t_box + t_dist + t_solver
    asm, ne, nq = s.asm, dm.n_cells, dm.n_qp
    st0 = s.initial_state()
    u = st0.u.copy()
    s.dirichlet_values(u, 1.0)

    def tangent():
        eps = asm.strains(u).reshape(ne * nq, 6)
        return s.material.update(eps, st0.internal, st0.T.ravel(), st0.T.ravel(), 1.0, tangent=True)

    r["tangent"] = yield "tangent", tangent
    resp = tangent()
    D = resp.tangent.reshape(ne, nq, 6, 6)
    sig = resp.stress.reshape(ne, nq, 6)
    out = {}

    def assembly():
        asm.assemble_matrix(s.A, D, s.fixed)
        fint = s.sum_to_owned(asm.internal_force(sig))
        fext = s.sum_to_owned(s.external_force(1.0))
        rr = fint - fext
        rr[s.fixed[: asm.n_owned_dofs]] = 0.0
        out["r"] = rr

    def matrix_only():
        asm.assemble_matrix(s.A, D, s.fixed)

    r["assembly"] = yield "assembly", assembly
    r["matrix"] = yield "matrix", matrix_only
    r["residual"] = yield "residual", lambda: (s.sum_to_owned(asm.internal_force(sig)),
                                              s.sum_to_owned(s.external_force(1.0)))
    r["A_fro"] = s.A.norm(PETSc.NormType.FROBENIUS)
    s.b.array[:] = -out["r"]
    r["b_norm"] = s.b.norm()

    def solve():
        s.ksp.reset()
        s.ksp.setOperators(s.A)
        s.x.set(0.0)
        s.ksp.solve(s.b, s.x)

    r["solve"] = yield "solve", solve
    r["ksp_iterations"] = s.ksp.getIterationNumber()
    r["ksp_type"], r["pc_type"] = s.ksp.getType(), s.ksp.getPC().getType()
    r["ksp_reason"] = int(s.ksp.getConvergedReason())
    r["tip_uz"], r["u_norm"] = tip_and_norm(comm, dm.coords[: dm.n_owned], s.x.array.reshape(-1, 3))

    def step():
        s.ksp.reset()
        s.ksp.setOperators(s.A)
        out["state"], out["info"] = s.step(s.initial_state(), 1.0)

    r["step"] = yield "step", step
    r["step_newton_iterations"] = out["info"].newton_iterations
    r["step_tip_uz"], _ = tip_and_norm(comm, dm.coords[: dm.n_owned], out["state"].owned_displacement(dm.n_owned))
    r["dofs"] = 3 * dm.n_nodes_global
    s.ksp.destroy()
    s.A.destroy()
    del s, asm, D, sig, resp, out
    gc.collect()
    return r


# --------------------------------------------------------------------------- dolfinx
def dolfinx_side(n: int, rtol: float, comm):
    """DOLFINx's problem, then its timed parts (a generator driven by :func:`drive`)."""
    import ufl
    from dolfinx import fem, mesh
    from dolfinx.fem import petsc as fp
    from petsc4py import PETSc

    r = {}
    t0 = time.perf_counter()
    domain = mesh.create_box(comm, [np.zeros(3), np.array([LX, LY, LZ])], [2 * n, n, n],
                             mesh.CellType.hexahedron)
    V = fem.VectorFunctionSpace(domain, ("Lagrange", 1))
    fdim = domain.topology.dim - 1
    left = mesh.locate_entities_boundary(domain, fdim, lambda x: np.isclose(x[0], 0.0))
    right = mesh.locate_entities_boundary(domain, fdim, lambda x: np.isclose(x[0], LX))
    bc = fem.dirichletbc(np.zeros(3, dtype=PETSc.ScalarType), fem.locate_dofs_topological(V, fdim, left), V)
    order = np.argsort(right)
    tags = mesh.meshtags(domain, fdim, right[order], np.full(right.size, 1, dtype=np.int32))
    t_mesh = time.perf_counter() - t0

    lam, mu = E * NU / ((1 + NU) * (1 - 2 * NU)), E / (2 * (1 + NU))
    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)

    def eps(w):
        return ufl.sym(ufl.grad(w))

    def sigma(w):
        return lam * ufl.tr(eps(w)) * ufl.Identity(3) + 2 * mu * eps(w)

    dx = ufl.Measure("dx", domain=domain, metadata={"quadrature_degree": 2})
    ds = ufl.Measure("ds", domain=domain, subdomain_data=tags)
    trac = fem.Constant(domain, np.array(TRACTION, dtype=PETSc.ScalarType))
    t_jit, (a, L) = timed(comm, lambda: (fem.form(ufl.inner(sigma(u), eps(v)) * dx),
                                         fem.form(ufl.dot(trac, v) * ds(1))))
    r["jit"] = t_jit
    t1 = time.perf_counter()
    A = fp.create_matrix(a)
    b = fp.create_vector(L)
    t_pattern = time.perf_counter() - t1
    r["setup"] = cmax(comm, t_mesh + t_pattern)

    def matrix():
        A.zeroEntries()
        fp.assemble_matrix(A, a, bcs=[bc])
        A.assemble()

    def rhs():
        with b.localForm() as bl:
            bl.set(0.0)
        fp.assemble_vector(b, L)
        fp.apply_lifting(b, [a], bcs=[[bc]])
        b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
        fp.set_bc(b, [bc])

    matrix(), rhs()                      # warm-up (first calls allocate; JIT already done)
    r["assembly"] = yield "assembly", lambda: (matrix(), rhs())
    r["matrix"] = yield "matrix", matrix
    r["residual"] = yield "residual", rhs
    r["A_fro"] = A.norm(PETSc.NormType.FROBENIUS)
    r["b_norm"] = b.norm()

    nloc = V.dofmap.index_map.size_local
    X = V.tabulate_dof_coordinates()[:nloc]
    coords = PETSc.Vec().createMPI((3 * nloc, PETSc.DECIDE), bsize=3, comm=comm)
    coords.array[:] = X.ravel()
    ns = PETSc.NullSpace().createRigidBody(coords)
    A.setNearNullSpace(ns)
    opts = PETSc.Options()
    for k, val in {"ksp_type": "cg", "pc_type": "gamg", "ksp_rtol": rtol, "ksp_max_it": 2000}.items():
        opts.setValue(f"dfx_{k}", str(val))
    ksp = PETSc.KSP().create(comm)
    ksp.setOptionsPrefix("dfx_")
    ksp.setOperators(A)
    ksp.setFromOptions()
    uh = fem.Function(V)

    def solve():
        ksp.reset()
        ksp.setOperators(A)
        uh.vector.set(0.0)
        ksp.solve(b, uh.vector)

    r["solve"] = yield "solve", solve
    uh.x.scatter_forward()
    r["ksp_iterations"] = ksp.getIterationNumber()
    r["ksp_type"], r["pc_type"] = ksp.getType(), ksp.getPC().getType()
    r["ksp_reason"] = int(ksp.getConvergedReason())
    r["tip_uz"], r["u_norm"] = tip_and_norm(comm, X, uh.x.array[: 3 * nloc].reshape(-1, 3))
    r["dofs"] = V.dofmap.index_map.size_global * 3
    r["bs"] = A.getBlockSize()
    ksp.destroy()
    A.destroy()
    b.destroy()
    del domain, V, uh, a, L
    gc.collect()
    return r


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[15, 30, 55],
                    help="n: the beam has 2n x n x n hexahedra (55: 1.04e6 DOFs)")
    ap.add_argument("--rtol", type=float, default=1e-8, help="ksp_rtol of both solvers")
    ap.add_argument("--repeat", type=int, default=5,
                    help="best of this many runs of each timed part (at 578k DOFs the solves of both sides take ~3 to settle)")
    ap.add_argument("--sequential", action="store_true",
                    help="time all of ddrom's parts, then all of DOLFINx's (before 2026-12-05: biased towards "
                         "the side run second); default: the sides' repetitions interleaved")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = ap.parse_args(argv)
    comm = MPI.COMM_WORLD
    rows = []
    for n in sorted(args.sizes):
        res = drive(comm, {"ddrom": ddrom_side(n, args.rtol, comm), "dolfinx": dolfinx_side(n, args.rtol, comm)},
                    args.repeat, interleave=not args.sequential)
        d, f = res["ddrom"], res["dolfinx"]
        row = {"n": n, "cells": 2 * n ** 3, "dofs": d["dofs"], "ranks": comm.size, "ddrom": d, "dolfinx": f}
        for k in ("assembly", "matrix", "residual", "solve"):
            row[f"ratio_{k}"] = d[k] / f[k]
        row["ratio_assembly_plus_solve"] = (d["assembly"] + d["solve"]) / (f["assembly"] + f["solve"])
        row["ratio_tangent_assembly_solve"] = (d["tangent"] + d["assembly"] + d["solve"]) / (f["assembly"] + f["solve"])
        row["ratio_step"] = d["step"] / (f["assembly"] + f["solve"])
        row["rel_diff_A_fro"] = rel(d["A_fro"], f["A_fro"])
        row["rel_diff_b_norm"] = rel(d["b_norm"], f["b_norm"])
        row["rel_diff_tip_uz"] = rel(d["tip_uz"], f["tip_uz"])
        row["rel_diff_u_norm"] = rel(d["u_norm"], f["u_norm"])
        row["peak_rss_mb_per_rank"] = comm.gather(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, root=0)
        rows.append(row)
        if comm.rank == 0:
            print(f"n={n}: {d['dofs']} DOFs done", file=sys.stderr, flush=True)
    if comm.rank != 0:
        return
    print(f"\nddrom vs DOLFINx 0.5.2, linear elasticity, {comm.size} rank(s), CG + GAMG rtol {args.rtol:g}; "
          f"seconds, best of {args.repeat}, max over ranks; DOLFINx JIT excluded; "
          f"{'one side then the other' if args.sequential else 'repetitions interleaved'}")
    print(f"{'DOFs':>9} {'':>8} {'assembly':>9} {'(matrix':>9} {'resid.)':>9} {'solve':>9} {'asm+solve':>9}"
          f" {'tangent':>9} {'step':>9} {'KSP its':>7} {'setup':>8} {'JIT':>6}")
    for r in rows:
        for name in ("ddrom", "dolfinx"):
            x = r[name]
            print(f"{r['dofs']:>9d} {name:>8} {x['assembly']:>9.3f} {x['matrix']:>9.3f} {x['residual']:>9.3f}"
                  f" {x['solve']:>9.3f} {x['assembly'] + x['solve']:>9.3f} {x.get('tangent', float('nan')):>9.3f}"
                  f" {x.get('step', float('nan')):>9.3f} {x['ksp_iterations']:>7d} {x['setup']:>8.2f}"
                  f" {x.get('jit', float('nan')):>6.2f}")
        print(f"{'':>9} {'ratio':>8} {r['ratio_assembly']:>9.2f} {r['ratio_matrix']:>9.2f} {r['ratio_residual']:>9.2f}"
              f" {r['ratio_solve']:>9.2f} {r['ratio_assembly_plus_solve']:>9.2f} {'':>9} {r['ratio_step']:>9.2f}")
    print("\nagreement (relative differences ddrom vs DOLFINx) and memory")
    print(f"{'DOFs':>9} {'||A||_F':>9} {'||b||':>9} {'tip u_z':>9} {'||u||':>9} {'tip u_z (ddrom)':>16}"
          f" {'peak RSS MB/rank':>17}")
    for r in rows:
        print(f"{r['dofs']:>9d} {r['rel_diff_A_fro']:>9.1e} {r['rel_diff_b_norm']:>9.1e} {r['rel_diff_tip_uz']:>9.1e}"
              f" {r['rel_diff_u_norm']:>9.1e} {r['ddrom']['tip_uz']:>16.6e}"
              f" {'/'.join(f'{m:.0f}' for m in r['peak_rss_mb_per_rank']):>17}")
    if args.json:
        import dolfinx
        from petsc4py import PETSc
        meta = {"python": platform.python_version(), "numpy": np.__version__, "dolfinx": dolfinx.__version__,
                "petsc": ".".join(map(str, PETSc.Sys.getVersion())), "ranks": comm.size, "rtol": args.rtol,
                "repeat": args.repeat, "interleaved": not args.sequential, "machine": platform.machine()}
        from ddrom.io.jsonio import write_json  # strict JSON (NaN -> null), atomic

        write_json(args.json, {"benchmark": "hf_vs_dolfinx", "meta": meta, "rows": rows}, indent=1)


if __name__ == "__main__":
    main()
