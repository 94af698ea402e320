"""A replay window (Replayer.step_window): the points the law proves elastic along the
window are integrated once, at its end; the result is the step-by-step replay's, at 1 and 3
ranks (the data are functions of the points' coordinates: the same for every partition)."""
from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from ddrom.materials import Chaboche, ElasticBound, from_config
from ddrom.parallel import CollectiveError

MATERIAL = {"law": "chaboche", "E": {"T": [20.0, 400.0], "value": [200e3, 170e3]}, "nu": 0.3,
            "sigma_y": {"T": [20.0, 200.0, 400.0], "value": [150.0, 140.0, 100.0]}, "H": 1500.0,
            "C": 20e3, "gamma": 150.0, "K": 60.0, "N": 5.0, "alpha": 1.2e-5, "T_ref": 20.0}
# a load history through plasticity and back (coordinates of the three strain fields below)
HISTORY = [(0.0, 0.0, 0.0), (0.3, 0.1, 0.2), (0.7, 0.2, 0.4), (1.0, 0.3, 0.6), (0.5, 0.1, 0.8),
           (0.0, -0.1, 1.0), (-0.4, -0.3, 1.0), (-0.8, -0.2, 1.0), (-0.3, 0.0, 1.0), (0.4, 0.2, 1.0),
           (0.9, 0.3, 1.0), (1.1, 0.3, 1.0)]
TIMES = [0.25 * k for k in range(len(HISTORY))]


def _setup():
    from ddrom.hf.replay import Replayer
    from ddrom.mesh.generators import box
    from helpers import distributed

    comm = MPI.COMM_WORLD
    dm = distributed(lambda: box(2.0, 1.0, 0.5, 8, 3, 2), comm)
    temperature = lambda x, y, z, t, **k: 20.0 + 150.0 * x * min(t, 1.0)  # noqa: E731
    rep = Replayer(dm, from_config(MATERIAL), temperature)
    xq = rep.asm.qp_coordinates.reshape(-1, 3)
    n = xq.shape[0]
    s = 2.5e-3 * xq[:, 0] ** 2           # uniaxial strain: elastic near x = 0, plastic towards x = 2
    rows = np.zeros((n, 6, 3))
    rows[:, :, 0] = s[:, None] * np.array([1.0, -0.3, -0.3, 0.0, 0.0, 0.0])
    rows[:, 3, 1] = 1e-3 * xq[:, 0] * xq[:, 1]                   # a shear (Mandel)
    rows[:, :3, 2] = 1e-4                                         # a volumetric part
    return dm, rep, rows.reshape(n * 6, 3), np.array(HISTORY)


def _stepped(rep, rows, coeffs, steps):
    n = rows.shape[0] // 6
    for k in steps:
        rep.step_strains(TIMES[k], (rows @ coeffs[k]).reshape(n, 6), k, defer=True)
    rep.verdict()
    return rep.state


def _total(x) -> float:
    return MPI.COMM_WORLD.allreduce(float(x))


@pytest.mark.mpi
def test_window_equals_the_step_by_step_replay():
    """Two windows (the second from a plastic state: plastic strain, back stress and p in
    the bound) against the same steps one by one: equal internal state and stress; part of
    the points integrated once in each window, part stepped."""
    dm, ref, rows, coeffs = _setup()
    _stepped(ref, rows, coeffs, range(len(TIMES)))
    dm, rep, rows, coeffs = _setup()
    _stepped(rep, rows, coeffs, [0])
    once = []
    for steps in (range(1, 6), range(6, len(TIMES))):
        rep.step_window([TIMES[k] for k in steps], coeffs[list(steps)], rows, list(steps))
        rep.verdict()
        el, n = rep.window_elastic if rep.window_elastic else (0, dm.n_cells * dm.n_qp)
        once.append((_total(el), _total(n)))
        rep.window_elastic = None
    for el, n in once:
        assert 0 < el < n, once
    a, b = rep.state, ref.state
    assert a.increment == b.increment == len(TIMES) - 1 and a.t == b.t
    assert _total(np.count_nonzero(b.p > 0)) > 0                 # the history is plastic somewhere
    np.testing.assert_allclose(a.internal, b.internal, rtol=0, atol=1e-12 * max(np.abs(b.internal).max(), 1e-3))
    np.testing.assert_allclose(a.stress, b.stress, rtol=0, atol=1e-9 * np.abs(b.stress).max())
    np.testing.assert_array_equal(a.T, b.T)
    np.testing.assert_array_equal(a.p, b.p)


class _WrongBound(Chaboche):
    """Claims every point elastic."""

    def elastic_bound(self, state, T_lo, T_hi):
        n = state.shape[0]
        return ElasticBound(np.zeros((n, 6)), np.zeros(n), np.full(n, np.inf))


@pytest.mark.mpi
def test_a_wrong_bound_is_caught_at_the_verdict_on_every_rank():
    """A law whose bound claims too much: the window's last step yields where it said elastic;
    every rank raises at the verdict (the plastic points are on some ranks only at 3 ranks)."""
    dm, rep, rows, coeffs = _setup()
    rep.material = _WrongBound(MATERIAL)
    _stepped(rep, rows, coeffs, [0])
    steps = list(range(1, 4))                                   # ends at the largest load so far
    rep.step_window([TIMES[k] for k in steps], coeffs[steps], rows, steps)
    with pytest.raises(CollectiveError, match=r"material replay failed at step 3 .*elastic_bound is wrong"):
        rep.verdict()


@pytest.mark.mpi
def test_a_law_without_a_bound_is_stepped_everywhere():
    """No bound (a compiled UMAT's default): the window steps every point, the same result."""
    dm, ref, rows, coeffs = _setup()
    _stepped(ref, rows, coeffs, range(len(TIMES)))
    dm, rep, rows, coeffs = _setup()
    rep.material.elastic_bound = lambda *a: None
    _stepped(rep, rows, coeffs, [0])
    steps = list(range(1, len(TIMES)))
    rep.step_window([TIMES[k] for k in steps], coeffs[steps], rows, steps)
    rep.verdict()
    assert rep.window_elastic is None
    np.testing.assert_array_equal(rep.state.internal, ref.state.internal)
    np.testing.assert_array_equal(rep.state.stress, ref.state.stress)


@pytest.mark.mpi
def test_a_temperature_failing_on_one_rank_stops_every_rank_at_the_verdict():
    """A temperature that fails on the last rank only (a field file unreadable there): the
    deferred steps and the window keep it; the verdict raises on every rank, none hangs;
    an immediate step raises on every rank too."""
    comm = MPI.COMM_WORLD
    for how in ("steps", "window", "immediate"):
        dm, rep, rows, coeffs = _setup()
        _stepped(rep, rows, coeffs, [0])
        ok = rep._temperature

        def bad(x, y, z, t, **k):
            if comm.rank == comm.size - 1 and t > 0.6:
                raise OSError("field file unreadable")
            return ok(x, y, z, t)

        rep._temperature = bad
        n = rows.shape[0] // 6
        with pytest.raises(CollectiveError, match=r"temperature at t = 0\.75: OSError: field file unreadable"):
            if how == "immediate":
                for k in (1, 2, 3):
                    rep.step_strains(TIMES[k], (rows @ coeffs[k]).reshape(n, 6), k)
            else:
                if how == "steps":
                    for k in range(1, 6):
                        rep.step_strains(TIMES[k], (rows @ coeffs[k]).reshape(n, 6), k, defer=True)
                else:
                    rep.step_window(TIMES[1:6], coeffs[1:6], rows, list(range(1, 6)))
                rep.verdict()
