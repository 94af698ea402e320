"""Consistency check of imported displacements (ddrom.hf.consistency): the equilibrium residual
of a displacement history under the case's formulation, law and loads.

ddrom's HF solver computes an elasto-plastic cantilever (clamped at x = 0, a downward
traction on x = L growing in time) with B-bar and with full integration. Checked with the
formulation, law and loads that produced it, a history leaves a residual at the solver's
tolerance; checked with the other element technology, a Young's modulus 10 % off, or a
load 20 % off, it leaves residuals orders of magnitude above. 1 and 3 ranks (the HF data
are the same to round-off for any number of ranks)."""
from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

import ddrom  # noqa: F401
from ddrom.hf.consistency import EquilibriumCheck
from ddrom.hf.loads import Dirichlet, Loads, Traction
from ddrom.hf.solver import HFSolver, SolverOptions
from ddrom.materials import from_config
from ddrom.mesh.generators import box

from helpers import distributed

COMM = MPI.COMM_WORLD
E, NU, SY, H = 200e3, 0.3, 250.0, 1000.0
TIMES = [0.0, 0.25, 0.5, 0.75, 1.0]
LOAD = 20.0          # traction on x = 4 (area 1): plastic near the root from t ~ 0.75
RTOL = 1e-10


def law(E_: float = E):
    return from_config({"law": "j2", "E": E_, "nu": NU, "sigma_y": SY, "H": H, "C": 0.0, "gamma": 0.0})


def loads(scale: float = 1.0) -> Loads:
    return Loads(dirichlet=[Dirichlet("xmin")],
                 traction=[Traction("xmax", (0.0, 0.0, lambda t, **k: -scale * LOAD * t))])


def solver(dm, bbar: bool, E_: float = E, scale: float = 1.0) -> HFSolver:
    return HFSolver(dm, law(E_), loads(scale),
                    SolverOptions(bbar=bbar, rtol=RTOL, atol=1e-14,
                                  petsc_options={"ksp_rtol": 1e-13, "pc_type": "jacobi", "ksp_max_it": 5000}))


@pytest.fixture(scope="module")
def histories():
    """Owned displacements of the HF runs with B-bar and with full integration."""
    dm = distributed(lambda: box(4.0, 1.0, 1.0, 8, 2, 2), COMM)
    out = {}
    for bbar in (True, False):
        s = solver(dm, bbar)
        st = s.initial_state()
        us = [st.owned_displacement(dm.n_owned).copy()]
        for k, t in enumerate(TIMES[1:]):
            st, info = s.step(st, t, k)
            assert info.cutbacks == 0
            us.append(st.owned_displacement(dm.n_owned).copy())
        p = COMM.allreduce(float(s.material.cumulated_plastic_strain(st.internal).max()), op=MPI.MAX)
        assert p > 1e-4, "the case must be plastic"
        out[bbar] = us
    return dm, out


def worst(dm, us, **kw) -> tuple[float, list]:
    res = EquilibriumCheck(solver(dm, **kw)).series(TIMES, lambda k: us[k])
    return max(r.relative for r in res), res


def worst_solver_scale(res) -> float:
    return max(r.solver_relative for r in res)


@pytest.mark.mpi
def test_consistent_histories_pass_and_wrong_formulation_law_or_load_is_caught(histories):
    dm, us = histories
    table = {}
    for made_with in (True, False):
        table["consistent", made_with] = worst(dm, us[made_with], bbar=made_with)
        table["other element", made_with] = worst(dm, us[made_with], bbar=not made_with)
    table["E + 10 %", True] = worst(dm, us[True], bbar=True, E_=1.1 * E)
    table["load + 20 %", True] = worst(dm, us[True], bbar=True, scale=1.2)
    if COMM.rank == 0:
        print("\nequilibrium residual (max over steps, relative):")
        for (what, b), (v, res) in table.items():
            print(f"  {'B-bar' if b else 'full'} data, {what:14s}: {v:.3e} of the load "
                  f"({worst_solver_scale(res):.3e} on the solver's scale)")
    for b in (True, False):
        v, res = table["consistent", b]
        assert worst_solver_scale(res) <= 10 * RTOL and v <= 1e3 * RTOL, (b, v)
        assert all(r.dirichlet_mismatch == 0.0 for r in res)
        assert res[0].relative == 0.0 and res[0].reference == 0.0          # t = 0: nothing at all
        assert res[-1].external > 0 and res[-1].reaction > 0
        assert table["other element", b][0] > 1e-2, (b, table["other element", b][0])
    assert table["E + 10 %", True][0] > 5e-2
    assert abs(table["load + 20 %", True][0] - 0.2 / 1.2) < 1e-6    # residual -0.2 f, checked load 1.2 f
    # the largest residual of the wrong load is at the loaded end; the same report on every rank
    r = table["load + 20 %", True][1][-1]
    assert r.worst_node >= 0 and abs(r.worst_position[0] - 4.0) < 1e-12 and r.worst_component == 2
    assert COMM.allgather(r.to_dict()) == [r.to_dict()] * COMM.size


@pytest.mark.mpi
def test_dirichlet_mismatch_is_reported(histories):
    dm, us = histories
    s = solver(dm, True)
    clamped = s.fixed[: 3 * dm.n_owned].reshape(-1, 3).all(axis=1)
    u = [x.copy() for x in us[True]]
    # a clamped node that moves (on the rank that owns the node of smallest natural id)
    ids = np.flatnonzero(clamped)
    mine = int(dm.node_natural[ids].min()) if ids.size else np.iinfo(np.int64).max
    first = COMM.allreduce(mine, op=MPI.MIN)
    umax = COMM.allreduce(float(np.abs(us[True][-1]).max()), op=MPI.MAX)
    if mine == first:
        u[-1][ids[np.argmin(dm.node_natural[ids])], 1] += 1e-3 * umax
    res = EquilibriumCheck(s).series(TIMES, lambda k: u[k])
    assert all(r.dirichlet_mismatch == 0.0 for r in res[:-1])
    assert abs(res[-1].dirichlet_mismatch - 1e-3) < 1e-12
