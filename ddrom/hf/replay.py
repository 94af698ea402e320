"""Replay of the constitutive law along a given displacement history (no equilibrium solve).

Given the displacements u_0, ..., u_n at times t_0 < ... < t_n (e.g. imported from
another solver), the integration-point fields are recomputed with the same material
code as the HF solver:

    eps_k   = B u_k                              (B-bar if the case uses it)
    T_k     = T(x_q, t_k)                        (the case's temperature)
    sigma_0, a_0 = update(eps_0, a_init, T_0, T_0, 0)
    sigma_k, a_k = update(eps_k, a_{k-1}, T_{k-1}, T_k, t_k - t_{k-1})

which is exactly what the HF solver stores at the end of a converged step that was not
cut back (its last material update is at the converged u_k). If the producing solver
sub-stepped between two output times, the replay (one increment per output step)
differs from it by the path dependence of the law over that interval.

Each update gets the :class:`~ddrom.materials.MaterialContext` of the points (time
``t_{k-1}`` at the start of the increment, increment number ``k``; 0 for the initial
state), as in the HF solver. A material failure on any rank (local integration, or a
UMAT's XIT) is a :class:`~ddrom.parallel.CollectiveError` on every rank.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np

from ddrom.hf.assembly import Assembler
from ddrom.hf.loads import evaluate
from ddrom.materials import ElasticBound, Material, update_in_chunks
from ddrom.mesh.distributed import DistributedMesh
from ddrom.parallel import CollectiveError, DdromError, as_mpi, describe_exception


#: :meth:`Replayer.step_window` integrates the proven-elastic points once only if they are at
#: least this fraction of the rank's points (otherwise the test would cost more than it saves).
WINDOW_MIN_ELASTIC = 0.25


@dataclass
class ReplayState:
    """Integration-point state of this rank after a replayed step."""

    t: float
    stress: np.ndarray     # (ne, nq, 6)
    p: np.ndarray          # (ne, nq) cumulated plastic strain
    internal: np.ndarray   # (ne * nq, n_state)
    T: np.ndarray          # (ne, nq)
    increment: int = 0     # steps replayed after the initial state


def _failure(step_index: int | None, t: float, msg: str) -> str:
    """The one message of a replay failure (step and time) on every rank."""
    where = f"step {step_index} " if step_index is not None else ""
    return f"material replay failed at {where}(t = {t:.6g}): {msg}"


class Replayer:
    """Replays ``material`` on ``dm`` (vectorized over all local integration points).

    Parameters
    ----------
    temperature : field callable ``(x, y, z, t) -> T`` or a constant (``Loads.temperature``)
    bbar : bool
        Use the B-bar strains (must match the solver that produced the displacements).
    """

    def __init__(self, dm: DistributedMesh, material: Material, temperature: Any, bbar: bool = True,
                 assembler: Assembler | None = None):
        self.dm, self.material, self._temperature = dm, material, temperature
        # an HF solver's assembler can be shared (same mesh and element technology)
        self.asm = assembler if assembler is not None else Assembler(dm, bbar=bbar)
        self.xq = self.asm.qp_coordinates              # shared with the material contexts
        self.gvec = dm.create_vector(3)
        self.state: ReplayState | None = None
        self._deferred: str | None = None      # this rank's failure in a deferred step
        #: (points integrated once, points) of the last window that skipped (for the record)
        self.window_elastic: tuple[int, int] | None = None

    def temperature(self, t: float) -> np.ndarray:
        x = self.xq
        return np.array(evaluate(self._temperature, x.shape[:2], x=x[..., 0], y=x[..., 1], z=x[..., 2], t=t),
                        dtype=float)

    def _local(self, u_owned: np.ndarray) -> np.ndarray:
        from petsc4py import PETSc

        g = self.gvec
        g.array[:] = np.asarray(u_owned, dtype=float).reshape(-1)
        g.ghostUpdate(PETSc.InsertMode.INSERT_VALUES, PETSc.ScatterMode.FORWARD)
        with g.localForm() as lf:
            return lf.array.copy()

    def step(self, t: float, u_owned: np.ndarray, step_index: int | None = None) -> ReplayState:
        """Advance to time ``t`` with the owned displacement ``u_owned`` (n_owned, 3); collective.

        The first call is the initial state (increment of zero duration from the
        material's initial internal variables at the temperature of ``t``).
        """
        ne, nq = self.dm.n_cells, self.dm.n_qp
        return self.step_strains(t, self.asm.strains(self._local(u_owned)).reshape(ne * nq, 6), step_index)

    def step_strains(self, t: float, eps: np.ndarray, step_index: int | None = None,
                     defer: bool = False) -> ReplayState:
        """:meth:`step` with the strains ``eps`` (ne nq, 6) at every local point given instead
        of the displacement (e.g. combined from the strains of a basis' modes: a reduced
        history replays without a strain evaluation per step); collective.

        ``defer``: no collective verdict at this step: a local failure is kept (the later
        deferred steps of this rank do nothing) until :meth:`verdict`, which every rank must
        call after its last deferred step. A long replay then waits for the slowest rank
        once instead of at every step (~6 of 32 ms per step at 66k points per rank)."""
        if defer and self._deferred is not None:
            return self.state                    # this rank failed earlier: verdict() reports it
        ne, nq = self.dm.n_cells, self.dm.n_qp
        T, msg = self._temperature_or_failure(t)
        old = self.state
        if T is not None:
            if old is None:
                internal, T_old, dt, t0, inc = self.material.initial_state(ne * nq), T, 0.0, float(t), 0
            else:
                internal, T_old, dt, t0, inc = old.internal, old.T, t - old.t, old.t, old.increment + 1
            resp, msg = self._integrate(eps, internal, T_old.ravel(), T.ravel(), dt, t0, inc)
        if defer:
            if msg:
                self._deferred = _failure(step_index, t, msg)
                return self.state
        else:
            # one verdict for all ranks: a local failure must not leave the others waiting
            bad = as_mpi(self.dm.comm).allgather(msg)
            bad = [m for m in bad if m]
            if bad:
                raise CollectiveError(_failure(step_index, t, bad[0]))
        p = self.material.cumulated_plastic_strain(resp.state).reshape(ne, nq)
        self.state = ReplayState(float(t), resp.stress.reshape(ne, nq, 6), p, resp.state, T, inc)
        return self.state

    def step_window(self, times: Sequence[float], coeffs: np.ndarray, rows: np.ndarray,
                    step_indices: Sequence[int] | None = None) -> ReplayState:
        """Deferred steps (:meth:`step_strains` with ``defer=True``) at ``times`` whose strains
        at the local points are ``rows @ coeffs[j]`` (``rows`` (n 6, k), ``coeffs`` (m, k): the
        strains of a basis' modes and a reduced history's coordinates); :meth:`verdict` after.

        The points the law proves elastic over the whole window
        (:meth:`~ddrom.materials.Material.elastic_bound` at their state before it, over their
        temperature range in it) are integrated once, at the last step: an elastic update
        leaves the state unchanged and its stress depends on the last strain and temperature
        only, so the result is the step-by-step one (round-off aside: the strains of a subset
        of rows). The bound: with ``c_mid``, ``c_rad`` the centre and half-range of each
        coordinate over the window, every strain of the window is within
        ``||rows_p c_mid - offset_p|| + sum_k c_rad_k ||rows_p[:, k]||`` (deviatoric parts)
        of the law's offset at point p. Cost of the test: one temperature evaluation per
        step and two products per window; the other points are stepped as before. A law
        without a bound (a compiled UMAT) or a window where fewer than
        :data:`WINDOW_MIN_ELASTIC` of the points are proven elastic is stepped everywhere.
        """
        if self._deferred is not None:
            return self.state
        times = [float(t) for t in times]
        coeffs = np.asarray(coeffs, dtype=float).reshape(len(times), -1)
        idx = list(step_indices) if step_indices is not None else [None] * len(times)
        n = rows.shape[0] // 6
        if self.state is None and times:       # the initial state: a step of zero duration
            self.step_strains(times[0], (rows @ coeffs[0]).reshape(n, 6), idx[0], defer=True)
            times, coeffs, idx = times[1:], coeffs[1:], idx[1:]
        if not times or self._deferred is not None:
            return self.state
        old = self.state
        elastic = None
        if len(times) > 1:
            T_lo = T_hi = None
            for t, j in zip(times, idx):
                T, msg = self._temperature_or_failure(t)
                if msg:
                    self._deferred = _failure(j, t, msg)
                    return self.state
                T_lo = T.ravel() if T_lo is None else np.minimum(T_lo, T.ravel())
                T_hi = T.ravel() if T_hi is None else np.maximum(T_hi, T.ravel())
            try:
                bound = self.material.elastic_bound(old.internal, T_lo, T_hi)
                if bound is not None:
                    elastic = self._proven_elastic(bound, coeffs, rows)
            except BaseException as exc:  # noqa: BLE001 - on this rank only: the verdict reports it
                self._deferred = _failure(idx[0], times[0], f"elastic bound: {describe_exception(exc)}")
                return self.state
        if elastic is None or np.count_nonzero(elastic) < WINDOW_MIN_ELASTIC * n:
            for t, c, j in zip(times, coeffs, idx):
                self.step_strains(t, (rows @ c).reshape(n, 6), j, defer=True)
            return self.state
        cand, el = np.flatnonzero(~elastic), np.flatnonzero(elastic)
        k = rows.shape[1]
        rows_c = rows.reshape(n, 6, k)[cand].reshape(-1, k)
        internal_c, stress_c = old.internal[cand], None
        T_prev, t_prev, inc = old.T.ravel(), old.t, old.increment
        for i, (t, c, j) in enumerate(zip(times, coeffs, idx)):
            T, msg = self._temperature_or_failure(t)
            if msg:
                self._deferred = _failure(j, t, msg)
                return self.state
            T, inc = T.ravel(), inc + 1
            if cand.size:
                resp, msg = self._integrate((rows_c @ c).reshape(-1, 6), internal_c, T_prev[cand], T[cand],
                                            t - t_prev, t_prev, inc, cand)
                if msg:
                    self._deferred = _failure(j, t, msg)
                    return self.state
                internal_c, stress_c = resp.state, resp.stress
            if i < len(times) - 1:
                T_prev, t_prev = T, t
        eps_last = (rows @ coeffs[-1]).reshape(n, 6)
        resp, msg = self._integrate(eps_last[el], old.internal[el], T_prev[el], T[el], times[-1] - t_prev,
                                    t_prev, inc, el)
        if not msg and not np.array_equal(resp.state, old.internal[el]):
            msg = "a point proven elastic over the window was not (the law's elastic_bound is wrong)"
        if msg:
            self._deferred = _failure(idx[-1], times[-1], msg)
            return self.state
        stress = np.empty((n, 6))
        internal = np.empty_like(old.internal)
        stress[el], internal[el] = resp.stress, resp.state
        if cand.size:
            stress[cand], internal[cand] = stress_c, internal_c
        ne, nq = self.dm.n_cells, self.dm.n_qp
        p = self.material.cumulated_plastic_strain(internal).reshape(ne, nq)
        self.state = ReplayState(times[-1], stress.reshape(ne, nq, 6), p, internal, T.reshape(ne, nq), inc)
        self.window_elastic = (el.size, n)
        return self.state

    @staticmethod
    def _proven_elastic(bound: ElasticBound, coeffs: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(n,) bool: the points where every strain ``rows @ c`` with ``c`` in the window's
        box of coordinates satisfies the law's elastic bound (see :meth:`step_window`)."""
        n, k = rows.shape[0] // 6, rows.shape[1]
        lo, hi = coeffs.min(axis=0), coeffs.max(axis=0)
        mid, rad = 0.5 * (lo + hi), 0.5 * (hi - lo)
        R = rows.reshape(n, 6, k)
        # ||dev v||^2 = ||v||^2 - tr(v)^2 / 3 for Mandel vectors: no deviatoric copy of rows
        tr = R[:, 0, :] + R[:, 1, :] + R[:, 2, :]
        col2 = np.einsum("pck,pck->pk", R, R) - tr * tr / 3.0
        spread = np.sqrt(np.maximum(col2, 0.0)) @ rad
        centre = (rows @ mid).reshape(n, 6)
        centre[:, :3] -= (centre[:, 0] + centre[:, 1] + centre[:, 2])[:, None] / 3.0
        centre -= bound.offset
        dist = np.sqrt(np.einsum("pc,pc->p", centre, centre)) + spread
        with np.errstate(invalid="ignore"):
            return bound.scale * dist < bound.slack

    def _temperature_or_failure(self, t: float) -> tuple[np.ndarray | None, str | None]:
        """The temperature at the points at ``t``, or (None, this rank's failure message): a
        field read from a file can fail on one rank only, which must not leave the others
        waiting at the verdict."""
        try:
            return self.temperature(t), None
        except BaseException as exc:  # noqa: BLE001 - reported collectively by the caller
            return None, f"temperature at t = {t:.6g}: {describe_exception(exc)}"

    def _integrate(self, eps: np.ndarray, internal: np.ndarray, T_old: np.ndarray, T: np.ndarray, dt: float,
                   t0: float, inc: int, points: np.ndarray | None = None) -> tuple[Any, str | None]:
        """One material update of the points ``points`` (all: None) from ``internal``; returns
        (response, None) or (None, this rank's failure message)."""
        ctx = self.asm.material_context(t0, inc)
        if points is not None:
            ctx = replace(ctx, **{f: getattr(ctx, f)[points] for f in ("coords", "element", "point", "length")
                                  if getattr(ctx, f) is not None})
        try:
            resp = update_in_chunks(self.material, eps, internal, T_old, T, dt, tangent=False, context=ctx)
            if not np.all(np.isfinite(resp.stress)):
                return None, "non-finite stress"
            return resp, None
        except DdromError as exc:       # ReturnMappingError, MaterialError (a UMAT's XIT), ...
            return None, str(exc)
        except BaseException as exc:  # noqa: BLE001 - a plugin, numpy, an interrupt on this rank only
            return None, describe_exception(exc)

    def verdict(self) -> None:
        """The collective verdict on the deferred steps since the last one (every rank calls
        it): a failure on any rank is a :class:`CollectiveError` on every rank."""
        bad = [m for m in as_mpi(self.dm.comm).allgather(self._deferred) if m]
        self._deferred = None
        if bad:
            raise CollectiveError(bad[0])

    def close(self) -> None:
        self.gvec.destroy()


def replay_series(replayer: Replayer, times: np.ndarray, displacement: Callable[[int], np.ndarray],
                  write: Callable[[int, ReplayState, np.ndarray], None]) -> ReplayState:
    """Replay steps ``k = 0 .. len(times)-1`` (``displacement(k)`` -> owned (n_owned, 3)),
    calling ``write(k, state, u_owned)`` after each; returns the last state."""
    st = None
    for k, t in enumerate(times):
        u = displacement(k)
        st = replayer.step(float(t), u, k)
        write(k, st, u)
    return st
