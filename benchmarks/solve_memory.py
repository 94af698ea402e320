"""RSS around the HF solver's linear solves (conversion, set-up, solve), at the rank count it is launched with.

Problem: that of ``hf_newton.py`` (unit cube, Chaboche, imposed stretch). The initial state
is computed, then ``--solves`` times: the material update with the tangent at the first
Newton iterate (the matrix assembled inside it, as in the solver), its stresses and state
dropped and the heap trimmed (as Newton does before a solve), and the solver's own
``_linear_solve`` (with ``-pc_type hypre``: the operator converted in place, set up,
solved, then released). The KSP is wrapped to mark RSS and its high-water mark (``VmHWM``)
before the set-up (after the conversion) and after the set-up and the solve; no trim is
added by the script after the first assembly (the solver's own are measured). Per mark
and rank: RSS and HWM in MB. Much faster than a whole step (``hf_memory.py --no-trace``):
what the set-up and the solve hold next to the Python state of a Newton iteration (the
old converged state, the assembly maps), not the line search's material updates. Run::

    mpirun -n 2 -x PETSC_OPTIONS="-pc_type hypre ..." .venv/bin/python benchmarks/solve_memory.py --size 70 --solves 2

The seconds printed are wall-clock and mean little on a shared machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

import ddrom  # noqa: E402,F401  (PETSC_DIR before petsc4py)
from mpi4py import MPI  # noqa: E402

from hf_memory import _status  # noqa: E402
from hf_newton import MATERIAL, cube_loads  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=40, help="cells per edge (70: 1.07e6 DOFs)")
    ap.add_argument("--solves", type=int, default=2)
    args = ap.parse_args(argv)
    from ddrom.hf.solver import HFSolver, SolverOptions, StepInfo
    from ddrom.materials import from_config
    from ddrom.mesh.generators import box
    from ddrom.mesh.scatter import distribute
    from ddrom.parallel.memory import release_free_heap

    comm = MPI.COMM_WORLD
    t_start = time.perf_counter()

    def mark(name: str) -> None:
        st = _status()
        both = comm.gather((st["VmRSS"], st["VmHWM"]), root=0)
        if comm.rank == 0:
            print(f"{time.perf_counter() - t_start:7.1f}s {name:34s} "
                  + "  ".join(f"RSS {r:8.1f} HWM {h:8.1f}" for r, h in both), flush=True)

    n = args.size
    mesh = box(1.0, 1.0, 1.0, n, n, n) if comm.rank == 0 else None
    dm = distribute(mesh, comm)
    del mesh
    loads = cube_loads()
    s = HFSolver(dm, from_config(MATERIAL), loads, SolverOptions())
    mark("solver")
    st = s.initial_state()
    mark("initial state")
    u = st.u.copy()
    s.dirichlet_values(u, 1.0)
    T = np.array(s.temperature(1.0), dtype=float)
    fext = s.sum_to_owned(s.external_force(1.0))

    class MarkedKSP:
        def __init__(self, ksp):
            self._ksp = ksp

        def setUp(self):
            mark("before set-up (after a conversion)")
            t0 = time.perf_counter()
            self._ksp.setUp()
            mark(f"set up ({time.perf_counter() - t0:.1f} s)")

        def solve(self, b, x):
            mark("before solve")
            t0 = time.perf_counter()
            self._ksp.solve(b, x)
            mark(f"solved ({time.perf_counter() - t0:.1f} s, {self._ksp.getIterationNumber()} its)")

        def __getattr__(self, name):
            return getattr(self._ksp, name)

    s.ksp = MarkedKSP(s.ksp)
    info = StepInfo()
    for i in range(args.solves):
        resp, r, _ = s._residual(u, st, T, 1.0, fext, tangent=True)
        resp = None
        release_free_heap()
        mark(f"matrix {i + 1} assembled, heap trimmed")
        s.b.array[:] = -r
        s._linear_solve(0, info)
        mark("solver's releases done")
    x = s.x.array
    norm = np.sqrt(comm.allreduce(float(x @ x)))
    hwm = comm.gather(_status()["VmHWM"], root=0)
    dofs = comm.gather(3 * dm.n_owned, root=0)
    if comm.rank == 0:
        print(f"{3 * (n + 1) ** 3:,} DOFs, {comm.size} rank(s), {info.ksp_iterations} KSP iterations in "
              f"{args.solves} solve(s), ||x|| of the last {norm!r}")
        for k, (h, d) in enumerate(zip(hwm, dofs)):
            print(f"rank {k}: {d:,} DOFs, peak RSS {h:.1f} MB = {h * 2 ** 20 / d:.0f} B/DOF")


if __name__ == "__main__":
    main()
