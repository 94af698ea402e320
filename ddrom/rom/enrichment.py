"""Adaptive enrichment: the ROM repairs itself with high-fidelity steps on the parallel backend.

When the error indicator of step ``k`` exceeds its tolerance (or the reduced Newton
fails at step ``k``), :meth:`Enricher.enrich`

1. rebuilds the HF state at ``t_{k-1}``: displacement ``u = Phi q + sum_d v_d chi_d`` from
   the basis, internal variables by **replaying the constitutive law** at every
   integration point along the reconstructed history since the last HF state (the
   initial state or the previous enrichment). Replay rather than Gappy-POD because the
   law needs the whole internal state (plastic strain tensor, back stress, p), of which
   Gappy-POD reconstructs only p; and at the ROM's own sample points the replay gives
   exactly the ROM's internal variables (same strains, same law), so the HF step starts
   from the state the ROM believes in. Cost: one vectorized material update per replayed
   step, no solve (measured in ``benchmarks/adaptive_enrichment.py``);
2. computes one HF time step ``t_{k-1} -> t_k`` with the distributed PETSc Newton solver
   (all ranks, cut-backs as in an HF run);
3. appends the new displacement ``u_k - lifting`` to the basis by Gram-Schmidt twice in
   the POD inner product (Euclidean on the free DOFs) if its relative residual exceeds
   ``basis_tol``; the same for the stress (quadrature-weighted) and p (weighted) bases;
4. reruns the ECM warm-started from the current reduced points, the Gappy sample
   selection and the reduced operators (:func:`ddrom.rom.offline.hyper_reduce`),
   incrementally where the enrichment changed nothing: the old modes' local values and
   strains and the integrals of the old mode pairs are kept
   (:class:`ddrom.rom.integrand.IntegrandCache`; the same quantities, round-off aside),
   the ECM takes up to ``ecm_batch`` candidates per pass over its integrand (the same
   tolerance, :mod:`ddrom.reduction.ecm` "Batches"), and the temperature component keeps
   the points it read (the previous sensors plus the sample points that left: its
   covering radius never grows) instead of a new farthest-point sampling;
5. returns the new model and the HF state at ``t_k`` restricted to the new sample
   points: the march resumes from the HF solution at ``t_k``.

Every rank takes part in the HF step and in the updates; no rank holds a global field.
The HF state at ``t_k`` becomes the start of the next replay.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ddrom.hf.replay import Replayer, ReplayState
from ddrom.hf.solver import HFSolver, State
from ddrom.hf.stepping import NewtonOptions
from ddrom.parallel import CollectiveError, Timers, as_mpi
from ddrom.reduction.inner import allreduce_sum
from ddrom.rom.integrand import GrowingColumns, IntegrandCache
from ddrom.rom.model import ReducedModel
from ddrom.rom.offline import distributed_bases, hyper_reduce
from ddrom.rom.operators import all_mode_strains, lifting_fields, values_at_points


@dataclass
class EnrichmentOptions:
    """Options of the adaptive enrichment (the single source of their defaults: the case
    file's ``[rom.enrichment]`` keys take theirs from here).

    tolerance : value of the indicator's plastic-strain component above which a step is
        recomputed by the HF solver (None: that component does not trigger).
    tolerances : the same for the other components (``{"stress": ..., "temperature": ...}``,
        see :data:`ddrom.rom.online.INDICATOR_COMPONENTS`); a step is recomputed when any
        component exceeds its tolerance.
    max_enrichments : at most this many HF steps per run (then the ROM goes on alone).
    basis_tol : a snapshot is appended to a basis when ``||x - B B^T x|| > basis_tol ||x||``
        (norms in that basis' inner product) after two Gram-Schmidt passes.
    hf_rtol : relative residual at which the enrichment's HF Newton stops (the HF solver's
        own ``rtol`` when that is larger; the default is the HF solver's default, 1e-8). Its
        linear solves are inexact in any case (:meth:`ddrom.hf.solver.HFSolver.step`: each
        stops at what its Newton iteration needs; 62k-DOF cyclic case: KSP iterations 59-60
        -> 28-30 per HF step, the same 2 Newton iterations). A looser ``hf_rtol`` is faster
        (1e-6: KSP 16-17 per step, 131-133x instead of 103-110x on the cyclic benchmark) but
        the enriched run then differs between rank counts by about that tolerance (8.9e-6
        relative in ``q`` on the tests' bar, against round-off at 1e-8), and 1e-5 raised a
        13k-DOF temperature field's largest p error per step from 1.7e-6 to 5.0e-3.
    ecm_tol : tolerance of the warm-started ECM (None: the model's).
    ecm_batch : candidates the warm-started ECM takes from one pass over its integrand
        (:mod:`ddrom.reduction.ecm`, "Batches": the same tolerance, fewer passes and
        collectives; 1: one point per pass). Not a case key: a cost knob of the update.
    enabled : enrich by default (``ddrom online`` without ``--enrich``/``--no-enrich``).
    save : write the enriched ROM of each run.
    """

    tolerance: float | None = None
    max_enrichments: int = 10
    basis_tol: float = 1e-6
    hf_rtol: float = NewtonOptions.rtol                 # the HF solver's own default
    ecm_tol: float | None = None
    ecm_batch: int = 8
    tolerances: dict = field(default_factory=dict)
    enabled: bool = False
    save: bool = True

    #: components whose tolerance is only the uncalibrated fallback (not given, not calibrated)
    fallback: tuple = ()

    def all_tolerances(self, calibrated_only: bool = False) -> dict[str, float]:
        """Component -> tolerance, the p component's from :attr:`tolerance` (without the
        fallback ones with ``calibrated_only``)."""
        out = {k: float(v) for k, v in self.tolerances.items()
               if v is not None and not (calibrated_only and k in self.fallback)}
        if self.tolerance is not None:
            out["p"] = float(self.tolerance)
        return out


def orthonormal_append(B: np.ndarray, x: np.ndarray, weights: np.ndarray | None, comm: Any,
                       tol: float, room: GrowingColumns | None = None
                       ) -> tuple[np.ndarray, bool, float, np.ndarray]:
    """Append ``x`` to the row-distributed basis ``B`` (orthonormal in ``<a, b> = sum w a b``).

    Classical Gram-Schmidt twice (:func:`ddrom.reduction.pod.cgs2`: one allreduce per pass,
    sums broadcast from rank 0 so that the decision is the same everywhere); the new
    direction is kept when its relative residual ``||r|| / ||x||`` exceeds ``tol``. Returns
    (basis, appended, relative residual, coefficients of ``x`` in the returned basis: the
    two passes' projections, and ``||r||`` on an appended mode since ``x = B c + r``).
    ``room``: the :class:`GrowingColumns` that holds ``B`` (the column is written into its
    buffer); None: a new array.
    """
    from ddrom.reduction.inner import Diagonal, Euclidean
    from ddrom.reduction.pod import cgs2

    inner = Euclidean() if weights is None else Diagonal(weights)
    x = np.asarray(x, dtype=float)
    nx = math.sqrt(float(allreduce_sum(np.array([x @ inner.apply(x).ravel()]), comm)[0]))
    if nx == 0.0:
        return B, False, 0.0, np.zeros(B.shape[1])
    Q_new, C, R = cgs2(x, inner, comm, Q_loc=B if B.shape[1] else None, drop_rtol=tol)
    c = C[:, 0] if B.shape[1] else np.zeros(0)
    if Q_new.shape[1]:
        grown = room.append(B, Q_new) if room is not None else np.column_stack([B, Q_new])
        return grown, True, float(R[0, 0]) / nx, np.append(c, R[0, 0])
    r = x - B @ c                                 # dropped: its (small) residual, for the record
    nr = math.sqrt(max(float(allreduce_sum(np.array([r @ inner.apply(r).ravel()]), comm)[0]), 0.0))
    return B, False, nr / nx, c


def _gram_update(G: np.ndarray | None, c: np.ndarray) -> np.ndarray | None:
    """``G + c c^T`` with ``c`` the coefficients of the new stress snapshot in the (possibly
    enlarged) basis, ``G`` padded with zeros for an appended mode. None stays None (a
    schema-2 model: unweighted ECM columns)."""
    if G is None:
        return None
    grow = len(c) - G.shape[0]
    return np.pad(G, ((0, grow), (0, grow))) + np.outer(c, c)


class Enricher:
    """Enrichment of one ROM run (one parameter point) on the HF backend.

    Parameters
    ----------
    problem : the :class:`~ddrom.hf.problem.Problem` of the run (loads projected on the enriched
        bases; the same regions and material as the ROM's, checked by :mod:`ddrom.rom.inputs`).
    solver : HF solver on the distributed mesh, with the loads of this parameter point.
    model : the reduced model the run starts with.
    bases : its distributed bases (:func:`ddrom.rom.model.load_bases`): ``displacement``
        (3 n_owned, N), ``stress`` (ne nq 6, Ns), ``p`` (ne nq, Np) if any.
    options : :class:`EnrichmentOptions`.
    """

    def __init__(self, problem: Any, solver: HFSolver, model: ReducedModel, bases: dict[str, np.ndarray],
                 options: EnrichmentOptions, timers: Timers | None = None):
        self.problem, self.solver, self.model, self.options = problem, solver, model, options
        self.dm, self.comm = solver.dm, solver.comm
        self.timers = timers or Timers()
        dm = self.dm
        nown = 3 * dm.n_owned
        # each basis grows in place (one buffer with spare columns per basis)
        self._room = {k: GrowingColumns() for k in ("u", "stress", "p", "T")}
        self.Phi = self._room["u"].adopt(bases["displacement"])
        self.Psi = self._room["stress"].adopt(bases["stress"])
        self.Phip = self._room["p"].adopt(bases["p"]) if "p" in bases else None
        self.PhiT = self._room["T"].adopt(bases["temperature"]) if "temperature" in bases else None
        if self.PhiT is None and model.temperature_data is not None:
            # no thermal variation in the training
            self.PhiT = self._room["T"].adopt(np.zeros((dm.n_cells * dm.n_qp, 0)))
        lifts = lifting_fields(solver)
        self.chi = np.column_stack(lifts)[:nown] if lifts else np.zeros((nown, 0))
        self.fixed = solver.fixed[:nown]
        self.w_qp = solver.asm.wdet.ravel()
        self.stress_gram = None if model.stress_gram is None else np.array(model.stress_gram, dtype=float)
        self.replayer = Replayer(dm, solver.material, solver.loads.temperature, assembler=solver.asm)
        # the modes' local values, strains and ECM integrand blocks so far (hyper_reduce
        # computes only the new modes' ones: the bases only grow)
        self._cache = IntegrandCache()
        self._chi_strains: np.ndarray | None = None        # (G, n_lift, 6), once needed
        self._start: tuple[int, State] | None = None       # last HF state (step, state); None: t_0
        #: (internal state (M, n_state), T (M,)) at the enriched model's monitor points after
        #: the last :meth:`enrich` (None: the model has none)
        self.monitor_state: tuple[np.ndarray, np.ndarray] | None = None
        self.events: list[dict] = []

    @property
    def tolerance(self) -> float | None:
        return self.options.tolerance

    def can_enrich(self) -> bool:
        return len(self.events) < self.options.max_enrichments

    def _exceeding(self, indicators: dict | float) -> list[tuple[str, float, float]]:
        if not isinstance(indicators, dict):
            indicators = {"p": indicators}
        return [(c, float(indicators[c]), tol) for c, tol in self.options.all_tolerances().items()
                if c in indicators and np.isfinite(indicators[c]) and indicators[c] > tol]

    def wants(self, indicators: dict | float) -> bool:
        """True when a component of the indicator (replicated) exceeds its tolerance and budget remains."""
        return bool(self._exceeding(indicators)) and self.can_enrich()

    def why(self, indicators: dict | float) -> str:
        """The components that exceed their tolerances, for the event record."""
        return "; ".join(f"{c} indicator {v:.3e} > {tol:.3e}" for c, v, tol in self._exceeding(indicators))

    def bases(self) -> dict:
        """The current (enriched) bases for :func:`ddrom.rom.model.save_model`."""
        return distributed_bases(self.dm, self.Phi, self.Psi, self.Phip, self.PhiT)

    # ------------------------------------------------------------------ steps
    def _displacement(self, q: np.ndarray, v: np.ndarray) -> np.ndarray:
        N = len(q)
        return self.Phi[:, :N] @ q + self.chi @ v

    def _state_before(self, k: int, times: np.ndarray, q_hist: list, v_hist: list,
                      sub_hist: list | None = None) -> tuple[State, int]:
        """HF state at t_{k-1}: from the last HF state, replay along the ROM history.

        ``sub_hist[j]``: the (t, q, v) of the increments the march took before ``t_j`` when it
        cut step ``j`` back; they are replayed too, so that a rate-dependent law follows the
        ROM's own path (one increment per output step would not)."""
        solver, rp = self.solver, self.replayer
        if self._start is None:
            first, rp.state = 0, None
        else:
            k0, st = self._start
            first = k0 + 1
            rp.state = ReplayState(st.t, st.stress, self.solver.material.cumulated_plastic_strain(st.internal),
                                   st.internal, st.T)
        window = []                                    # (t, q, v, step) of every replayed increment
        for j in range(first, k):
            window += [(float(t_sub), q_sub, v_sub, j)
                       for t_sub, q_sub, v_sub in (sub_hist[j] if sub_hist is not None else ())]
            window.append((float(times[j]), q_hist[j], v_hist[j], j))
        # every step since the last HF state has the coordinates of the same model
        rows = self._strain_rows(len(window[0][1])) if window else None
        if rows is None:        # no mode strains cached yet (before the first update): step by step
            for t, q, v, j in window:
                rp.step(t, self._displacement(q, v), j)
        else:                   # one window: the points the law proves elastic along it, once
            coeffs = np.array([np.concatenate([np.asarray(q, dtype=float), np.asarray(v, dtype=float)])
                               for _, q, v, _ in window])
            rp.step_window([w[0] for w in window], coeffs, rows, [w[3] for w in window])
        rp.verdict()                                   # the deferred steps' failures, on every rank
        r = rp.state
        u = solver.owned_to_local(self._displacement(q_hist[k - 1], v_hist[k - 1]))
        return State(float(times[k - 1]), u, r.stress, r.internal, r.T), max(0, k - first)

    def _strain_rows(self, N: int) -> np.ndarray | None:
        """(G 6, N + n_lift): the strains of the first ``N`` modes and of the lifting fields at
        every point, one row per point and component, or None while the cache holds no
        strains for them. Once an update has computed the modes' strains at every point
        (:class:`~ddrom.rom.integrand.IntegrandCache`, kept between enrichments), a replay's
        strains are ``rows @ (q, v)``: no strain evaluation per step (about half of a replayed
        step), the same strains up to round-off. Built per replay in the cache's scratch
        workspace (:meth:`~ddrom.rom.integrand.IntegrandCache.scratch`: valid until the ECM);
        one matrix-vector product per step (a contraction over the middle axis of (G, N, 6)
        copied the whole array at every step: 15 ms of a 32 ms step at 66k points per rank)."""
        E = self._cache.strains
        if E is None or E.shape[1] < N:
            return None
        G = E.shape[0]
        if self._chi_strains is None:
            lifts = lifting_fields(self.solver)
            self._chi_strains = all_mode_strains(self.solver, np.column_stack(lifts)) if lifts \
                else np.zeros((G, 0, 6))
        nl = self._chi_strains.shape[1]
        # written once into the cache's scratch workspace (memory the ECM's score copy
        # touched before: no page faults, no concatenated temporary)
        rows = self._cache.scratch((G, 6, N + nl))
        rows[:, :, :N] = E[:, :N, :].transpose(0, 2, 1)
        rows[:, :, N:] = self._chi_strains.transpose(0, 2, 1)
        return rows.reshape(G * 6, N + nl)

    def enrich(self, k: int, times: np.ndarray, q_hist: list, v_hist: list, v_new: np.ndarray,
               reason: str = "", q_guess: np.ndarray | None = None, sub_hist: list | None = None
               ) -> tuple[ReducedModel, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """One enrichment at step ``k`` (collective).

        ``q_hist``, ``v_hist``: reduced coordinates and lifting values of steps 0 .. k-1
        (replicated); ``sub_hist``: per step, the (t, q, v) of the increments before it when
        the march cut it back (:meth:`_state_before`); ``v_new``: the lifting values at
        ``t_k``; ``q_guess``: the ROM's own
        solution at ``t_k`` if it converged, the HF Newton's initial guess. Returns (model,
        q_k, internal state (K, n_state), T (K,), stress (K, 6) at the new model's sample
        points, event dict).
        """
        t_start = time.perf_counter()
        solver, dm = self.solver, self.dm
        n_before, pts_before = self.model.n_modes, set(self.model.point_gids[self.model.weights > 0].tolist())
        with self.timers("enrichment_replay"):
            t0 = time.perf_counter()
            self.replayer.window_elastic = None
            old, n_replayed = self._state_before(k, times, q_hist, v_hist, sub_hist)
            s_replay = time.perf_counter() - t0
            once = self.replayer.window_elastic or (0, 0)
            once, n_pts = allreduce_sum(np.array([once[0], dm.n_cells * dm.n_qp], dtype=float), self.comm)
        with self.timers("enrichment_hf_step"):
            t0 = time.perf_counter()
            try:
                guess = solver.owned_to_local(self._displacement(q_guess, v_new)) if q_guess is not None else None
                new, info = solver.step(old, float(times[k]), step_index=k, guess=guess,
                                        rtol=max(self.options.hf_rtol, solver.options.rtol))
            except CollectiveError as exc:
                raise CollectiveError(f"enrichment at step {k} (t = {times[k]:.6g}; {reason}): "
                                      f"the HF step failed: {exc}") from None
            s_hf = time.perf_counter() - t0
        t0 = time.perf_counter()
        with self.timers("enrichment_update"):
            w = new.u[: 3 * dm.n_owned] - self.chi @ np.asarray(v_new, dtype=float)
            w[self.fixed] = 0.0
            # q: the HF displacement's coordinates in the enriched basis (the march resumes there)
            self.Phi, add_u, res_u, q = orthonormal_append(self.Phi, w, None, self.comm, self.options.basis_tol,
                                                           self._room["u"])
            # the new snapshot's coefficients in the enriched stress basis enter the Gram
            # matrix that weighs the ECM columns (offline.stress_column_weights)
            self.Psi, add_s, res_s, c_sig = orthonormal_append(self.Psi, new.stress.reshape(-1),
                                                               np.repeat(self.w_qp, 6), self.comm,
                                                               self.options.basis_tol, self._room["stress"])
            self.stress_gram = _gram_update(self.stress_gram, c_sig)
            p = solver.material.cumulated_plastic_strain(new.internal)
            if self.Phip is None:
                self.Phip = self._room["p"].adopt(np.zeros((len(p), 0)))
            self.Phip, add_p, res_p, _ = orthonormal_append(self.Phip, p, self.w_qp, self.comm,
                                                            self.options.basis_tol, self._room["p"])
            if self.Phip.shape[1] == 0:
                self.Phip = None
            add_T = False
            if self.PhiT is not None:
                # the temperature field met here joins the span the temperature component measures from
                td = self.model.temperature_data
                dT = new.T.reshape(-1) - (td.T_ref if td is not None else 0.0)
                self.PhiT, add_T, _, _ = orthonormal_append(self.PhiT, dT, self.w_qp, self.comm,
                                                            self.options.basis_tol, self._room["T"])
            m = self.model
            ecm_initial = m.point_gids[m.weights > 0]
            split = Timers()
            appended = add_u or add_s or add_p or add_T
            # nothing new in any basis: the hyper-reduction would find the same model (the
            # stress Gram matrix grew by this snapshot's c c^T, which weighs the ECM columns
            # of the next one), so it is not redone: the march resumes from the HF state on
            # the same model (a late enrichment of a long run, or a false alarm)
            model = replace(m) if not appended else hyper_reduce(self.problem, solver, self.Phi, self.Psi, self.Phip,
                                 ecm_tol=self.options.ecm_tol or float(m.info["ecm_tol"]),
                                 ecm_batch=self.options.ecm_batch,
                                 sigma_u=m.sigma_u, sigma_p=m.gappy.sigma if m.gappy is not None else None,
                                 ecm_initial=ecm_initial, stress_gram=self.stress_gram,
                                 cache=self._cache, timers=split, PhiT=self.PhiT,
                                 sigma_T=m.temperature_data.sigma if m.temperature_data is not None else None,
                                 n_sensors=len(m.temperature_data.sensor_gids) if m.temperature_data is not None
                                 else 0,
                                 # as many monitor points as before (none for a file without them:
                                 # the component stays absent, as its calibration was)
                                 n_monitor=len(m.monitor.point_gids) if m.monitor is not None else 0,
                                 # the temperature component keeps reading where it read
                                 # (offline._temperature_data): no new sensor sampling
                                 previous_reads=(m.point_gids, m.temperature_data.sensor_gids)
                                 if m.temperature_data is not None else None)
            model.info = {**m.info, **model.info,
                          "n_enrichments": int(m.info.get("n_enrichments", 0)) + 1}
            if model.gappy is not None and "p_sample_scale" not in model.info:
                # first plastic strain ever seen (elastic training): its samples set the scale
                model.info["p_sample_scale"] = float(np.linalg.norm(values_at_points(self.dm, p, model.point_gids)))
            gids = model.point_gids
            internal = values_at_points(self.dm, new.internal, gids)
            T = values_at_points(self.dm, new.T.reshape(-1), gids)
            stress = values_at_points(self.dm, new.stress.reshape(-1, 6), gids)
            # the HF state at the monitor points: their march resumes from it too
            self.monitor_state = None
            if model.monitor is not None:
                mg = model.monitor.point_gids
                self.monitor_state = (values_at_points(self.dm, new.internal, mg),
                                      values_at_points(self.dm, new.T.reshape(-1), mg))
        s_update = time.perf_counter() - t0
        for name, sec in split.seconds.items():
            self.timers.add(name, sec, split.calls[name])
        self.model = model
        self._start = (k, new)
        pts_after = set(model.point_gids[model.weights > 0].tolist())
        event = {
            "step": int(k), "t": float(times[k]), "reason": reason,
            "modes_added": int(add_u), "n_modes": int(model.n_modes), "n_modes_before": int(n_before),
            "displacement_residual": float(res_u), "stress_modes_added": int(add_s),
            "stress_residual": float(res_s), "p_modes_added": int(add_p), "p_residual": float(res_p),
            "temperature_modes_added": int(add_T), "hyper_reduced": bool(appended),
            "points_added": len(pts_after - pts_before), "points_removed": len(pts_before - pts_after),
            "n_points": int(model.n_points), "n_sample_points": int(len(model.weights)),
            "replayed_steps": int(n_replayed), "replay_elastic_fraction": float(once / n_pts),
            "hf_newton_iterations": int(info.newton_iterations), "hf_ksp_iterations": int(info.ksp_iterations),
            "hf_pc_reused": int(info.pc_reused),
            "hf_cutbacks": int(info.cutbacks), "seconds_replay": s_replay, "seconds_hf_step": s_hf,
            "seconds_update": s_update, "seconds": time.perf_counter() - t_start,
            "update_split": {k: float(v["seconds"]) for k, v in split.summary(self.comm).items()},
        }
        # the wall times differ between ranks: rank 0's numbers for everybody (one record)
        for key in ("seconds_replay", "seconds_hf_step", "seconds_update", "seconds"):
            event[key] = float(as_mpi(self.comm).bcast(event[key], root=0))
        self.events.append(event)
        return model, q, internal, T, stress, event
