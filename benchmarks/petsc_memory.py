"""What PETSc holds during an HF linear solve, object by object, at the rank count it is launched with.

Problem: that of ``hf_newton.py`` (unit cube, Chaboche, imposed stretch; solver defaults).
The matrix of the first Newton iteration is assembled by the solver, then the KSP is set
up (GAMG) and solved once. Reported per rank: RSS and PETSc's own allocations
(``PetscMallocGetCurrentUsage``; needs ``-malloc_debug`` or ``-malloc_view``, which this
script turns on) before/after the matrix, the PC set-up and the solve; then the memory of
each matrix PETSc reports (``MatGetInfo``: the operator, each level's operator and
interpolation), PETSc's live allocations after the set-up grouped by allocating function
(``PetscMallocDump``), and PETSc's maximum allocation so far at each mark. The solver's
release of GAMG's product data after each set-up is applied as in the solver
(``-ddrom_gamg_keep_products`` turns it off); ``--solves N`` re-assembles and re-solves N
times (re-set-ups), ``--drop-krylov`` frees the Krylov basis before each re-set-up as the
solver does. ``-log_view -log_view_memory`` in ``PETSC_OPTIONS`` adds PETSc's per-event
memory table. Run::

    mpirun -n 2 .venv/bin/python benchmarks/petsc_memory.py --size 40
    mpirun -n 2 -x PETSC_OPTIONS="-pc_gamg_agg_nsmooths 0" .venv/bin/python benchmarks/petsc_memory.py --size 40
"""
from __future__ import annotations

import argparse
import ctypes
import os
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import ddrom  # noqa: E402,F401  (PETSC_DIR before petsc4py)

import petsc4py  # noqa: E402

petsc4py.init(sys.argv[:1] + ["-malloc_view", "-malloc_view_threshold", "1e12"])

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402
from petsc4py import PETSc  # noqa: E402

from hf_newton import MATERIAL, cube_loads  # noqa: E402


from ddrom.parallel.memory import loaded_libpetsc  # noqa: E402
from hf_memory import _status  # noqa: E402

LIB = loaded_libpetsc()
if LIB is None:
    raise RuntimeError("libpetsc not found among this process's libraries")


def petsc_malloc() -> float:
    v = ctypes.c_double(0.0)
    LIB.PetscMallocGetCurrentUsage(ctypes.byref(v))
    return v.value / 2 ** 20


def petsc_malloc_max() -> float:
    v = ctypes.c_double(0.0)
    LIB.PetscMallocGetMaximumUsage(ctypes.byref(v))
    return v.value / 2 ** 20


def rss() -> tuple[float, float]:
    out = _status()
    return out["VmRSS"], out["VmHWM"]


def mat_mb(M) -> float:
    """Local memory of an AIJ matrix from its nonzeros: 8 B value + 4 B column index each,
    plus row pointers (``MatGetInfo``'s memory field is 0 in an optimized build)."""
    nz = M.getInfo(PETSc.Mat.InfoType.LOCAL)["nz_allocated"]
    return (12 * nz + 8 * M.getLocalSize()[0]) / 2 ** 20


LIBC = ctypes.CDLL(None)
LIBC.fopen.restype = ctypes.c_void_p
LIBC.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
LIBC.fclose.argtypes = [ctypes.c_void_p]
LIB.PetscMallocDump.argtypes = [ctypes.c_void_p]


def malloc_by_function(path: str) -> dict[str, float]:
    """PETSc's live allocations now, MB by allocating function (``PetscMallocDump``)."""
    fp = LIBC.fopen(path.encode(), b"w")
    LIB.PetscMallocDump(fp)
    LIBC.fclose(fp)
    out: dict[str, float] = {}
    pat = re.compile(r"\]\s*(\d+) bytes (\S+)\(\) at (\S+)")
    with open(path) as f:
        for line in f:
            m = pat.search(line)
            if m:
                key = m.group(2)
                out[key] = out.get(key, 0.0) + int(m.group(1)) / 2 ** 20
    os.remove(path)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=40)
    ap.add_argument("--solves", type=int, default=1)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--drop-krylov", action="store_true")
    ap.add_argument("--reset-pc", action="store_true", help="KSPReset after each solve (the next assembly without the preconditioner, a set-up from scratch)")
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    from ddrom.hf.solver import HFSolver, SolverOptions
    from ddrom.materials import from_config
    from ddrom.mesh.generators import box
    from ddrom.mesh.scatter import distribute
    from ddrom.parallel.memory import release_free_heap, release_product_data

    log = []

    def mark(name):
        release_free_heap()
        r, h = rss()
        log.append((name, r, h, petsc_malloc(), petsc_malloc_max()))

    n = args.size
    mesh = box(1.0, 1.0, 1.0, n, n, n) if comm.rank == 0 else None
    dm = distribute(mesh, comm)
    del mesh
    loads = cube_loads()
    mark("before solver")
    s = HFSolver(dm, from_config(MATERIAL), loads, SolverOptions())
    mark("solver (matrix pattern, KSP)")
    st = s.initial_state()
    u = st.u.copy()
    s.dirichlet_values(u, 1.0)
    T = np.array(s.temperature(1.0), dtype=float)
    fext = s.sum_to_owned(s.external_force(1.0))
    resp, r, ref = s._residual(u, st, T, 1.0, fext, tangent=True)
    del resp
    mark("first matrix assembled")
    s.b.array[:] = -r
    secs = {"setup": [], "solve": []}
    t0 = time.perf_counter()
    s.ksp.setUp()
    secs["setup"].append(time.perf_counter() - t0)
    mark("KSP set up (GAMG)")
    if s._release_products:          # what the solver does after each set-up
        release_product_data(s.ksp)
        mark("product data released")
    funcs = malloc_by_function(f"/tmp/petsc_memory_dump.{os.getpid()}")
    its = []
    for i in range(args.solves):
        if i:
            s._evaluate(u, st, T, 1.0, tangent=True)
            mark(f"matrix {i + 1} assembled")
            s.ksp.setOperators(s.A)
            if args.drop_krylov and not args.reset_pc:
                t = s.ksp.getType()
                s.ksp.setType("preonly")
                s.ksp.setType(t)
                s.ksp.setFromOptions()
                mark(f"Krylov vectors dropped {i + 1}")
            t0 = time.perf_counter()
            s.ksp.setUp()
            secs["setup"].append(time.perf_counter() - t0)
            if s._release_products:
                release_product_data(s.ksp)
        t0 = time.perf_counter()
        s.ksp.solve(s.b, s.x)
        secs["solve"].append(time.perf_counter() - t0)
        its.append(s.ksp.getIterationNumber())
        mark(f"solve {i + 1}")
        if args.reset_pc and i < args.solves - 1:
            s.ksp.reset()               # the PC's data and the Krylov basis, freed before the next assembly
            s.ksp.setOperators(s.A)
            mark(f"KSP reset {i + 1}")
    pc = s.ksp.getPC()
    objs = [("A (operator)", mat_mb(s.A))]
    try:
        nl = pc.getMGLevels()
    except PETSc.Error:
        nl = 0
    for lev in range(nl - 1, -1, -1):
        ksp_l = pc.getMGSmoother(lev)
        Al, Pl = ksp_l.getOperators()
        if lev != nl - 1:
            objs.append((f"level {lev} operator ({Al.getSize()[0]} rows)", mat_mb(Al)))
        if lev > 0:
            P = pc.getMGInterpolation(lev)
            objs.append((f"level {lev} interpolation ({P.getSize()[0]}x{P.getSize()[1]})", mat_mb(P)))
    info = {"dofs_rank": s.A.getLocalSize()[0], "log": log, "objs": objs, "its": its,
            "type": s.A.getType(), "levels": nl,
            "funcs": sorted(funcs.items(), key=lambda kv: -kv[1])[:args.top]}
    all_ = comm.gather(info, root=0)
    if comm.rank == 0:
        print(f"\npetsc_memory: {3 * (n + 1) ** 3:,} DOFs, {comm.size} rank(s), matrix {info['type']}, "
              f"{info['levels']} levels, KSP iterations {its}, seconds (rank 0) set-up "
              f"{' '.join(f'{x:.2f}' for x in secs['setup'])} solve {' '.join(f'{x:.2f}' for x in secs['solve'])}")
        for i, inf in enumerate(all_):
            d = inf["dofs_rank"]
            print(f"rank {i} ({d:,} DOFs): {'mark':32s} {'RSS MB':>8s} {'HWM MB':>8s} {'PetscMalloc MB':>14s}"
                  f" {'B/DOF':>7s} {'its max MB':>10s} {'B/DOF':>7s}")
            for name, r_, h, pm, pmax in inf["log"]:
                print(f"  {'':14s}{name:32s} {r_:8.1f} {h:8.1f} {pm:14.1f} {pm * 2 ** 20 / d:7.0f} {pmax:10.1f}"
                      f" {pmax * 2 ** 20 / d:7.0f}")
            for name, mb in inf["objs"]:
                print(f"  {'':14s}{name:48s} {mb:8.1f} MB {mb * 2 ** 20 / d:7.0f} B/DOF")
            print(f"  {'':14s}PETSc's live allocations after the set-up (and the release, when on), by allocating function:")
            for name, mb in inf["funcs"]:
                print(f"  {'':14s}  {name:46s} {mb:8.1f} MB {mb * 2 ** 20 / d:7.0f} B/DOF")
    s.ksp.destroy()


if __name__ == "__main__":
    main()
