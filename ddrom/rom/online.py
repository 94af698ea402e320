"""Online reduced Newton solver: cost per step independent of the mesh size.

With K sample points (reduced quadrature points plus the points only sampled for
Gappy-POD, whose weights are zero), N modes and D Dirichlet conditions, one Newton
iteration is::

    eps_g   = sum_d v_d(t) E_lift[g, d] + sum_k q_k E[g, k]          (K x (N + D) x 6)
    sigma_g, D_g, state_g = material(eps_g, state_g^old, T(x_g, t))   (K points)
    F_k     = sum_g w_g E[g, k] . sigma_g - F_ext,k(t)               (one contraction)
    converged when ||F|| <= rtol * max(||F_int||, ||F_ext||, ||sum_g |w_g E[g] . sigma_g| ||) + atol
    K_kl    = sum_g w_g E[g, k] . D_g E[g, l]                        (one contraction)

no operation of size n (DOFs) or G (integration points). Per accepted increment, the M
monitor points (:class:`~ddrom.rom.model.MonitorData`) take one material update at
``eps_M = E_M q + E_lift,M v`` (no tangent): the hold-out check of the p reconstruction,
O(M). The march is replicated on every rank (it is small); several ROM runs may share an
allocation on sub-communicators.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ddrom.hf.stepping import CutbacksExhausted, LineSearch, NewtonOptions, NotConverged, advance
from ddrom.materials import ReturnMappingError, from_config
from ddrom.materials.base import MaterialContext, MaterialError
from ddrom.parallel import CollectiveError
from ddrom.reduction.gappy import GappyPOD
from ddrom.rom.inputs import OnlineInputs
from ddrom.rom.model import ReducedModel


class OnlineDivergence(CollectiveError):
    """The reduced Newton did not converge (after cut-backs).

    Collective: the march is replicated, so every rank reaches the same verdict.
    """


OnlineOptions = NewtonOptions

#: Fraction of the training's largest sampled value below which an indicator component
#: is taken relative to that fraction instead of to the current (tiny) value.
INDICATOR_FLOOR = 1e-3

#: Components of the error indicator (:meth:`ReducedSolver.indicators`). The first three are
#: the relative residuals of a Gappy fit at the ROM's points: of the cumulated plastic strain
#: (``p``), of the stress (``stress``: elastic errors, e.g. a thermal stress the training
#: never had), and of the temperature against the span of the training's (``temperature``: a
#: new field, read at the sample points and at sensors spread over the part). Each sees only
#: what lies outside its basis' range at the fitted points. ``p_monitor`` is the relative
#: error of the p reconstruction at monitor points the fit did not use (a hold-out check,
#: :class:`ddrom.rom.model.MonitorData`): it also sees an error of the p coefficients inside
#: the span (nan for a ROM file without monitor points, schema < 6).
INDICATOR_COMPONENTS = ("p", "stress", "temperature", "p_monitor")


@dataclass
class OnlineResult:
    """A reduced march; with enrichment, coefficients refer to the final (enriched) bases.

    Enrichment only appends modes, so the coefficients of a step taken before a mode
    existed are padded with zeros and every row of ``q``, ``p_coeff`` and
    ``stress_coeff`` reconstructs its step with the final bases.
    """

    times: np.ndarray
    q: np.ndarray                     # (nt, N) reduced coordinates
    p_coeff: np.ndarray               # (nt, Np) Gappy-POD coefficients of p (p ~ Phi_p a)
    stress_coeff: np.ndarray          # (nt, Ns) stress coefficients (least squares at the samples)
    dirichlet: np.ndarray             # (nt, D) values of the lifting
    indicator: np.ndarray             # (nt,) Gappy residual of p (nan when no Gappy data)
    indicators: dict = field(default_factory=dict)      # component -> (nt,) (INDICATOR_COMPONENTS)
    p_samples: list = field(default_factory=list)       # per step: p at the model's sample points
    stress_samples: list = field(default_factory=list)  # per step: (K, 6)
    newton_iterations: int = 0
    cutbacks: int = 0
    seconds: float = 0.0
    step_seconds: list = field(default_factory=list)
    cluster: int | None = None          # local basis used (None: the global one)
    routing: dict | None = None         # how the basis was chosen (ddrom.rom.classifier.RoutingDecision)
    enrichments: list = field(default_factory=list)     # one dict per enrichment event
    model: ReducedModel | None = None   # the model at the end of the march (enriched or not)
    #: the run's field against the calibration fields (ddrom.rom.calibration.tolerances_for_field;
    #: None: not checked, e.g. no calibration fields or no enrichment)
    field_check: dict | None = None
    bases: dict | None = None           # enriched bases, this rank's natural slice per name (None: not enriched)

    @property
    def n_enrichments(self) -> int:
        return len(self.enrichments)

    @property
    def enrichment_seconds(self) -> float:
        return float(sum(e["seconds"] for e in self.enrichments))


class ReducedSolver:
    """March a :class:`ReducedModel` in time for one parameter point.

    With an ``enricher`` (:class:`ddrom.rom.enrichment.Enricher`), a step whose indicator
    exceeds the enricher's tolerance, or at which the reduced Newton fails, is recomputed
    by one HF step on all ranks; the march resumes from the HF state with the enriched
    model.
    """

    def __init__(self, model: ReducedModel, params: Mapping[str, Any] | None = None,
                 options: OnlineOptions | None = None, inputs: OnlineInputs | None = None):
        self.options = options or OnlineOptions()
        # inputs: the case's at online time (ddrom.rom.inputs.online_inputs); without them, the
        # ones the ROM was trained with (its stored expressions and time grid)
        self.inputs = inputs or OnlineInputs.from_model(model, params or {})
        self.params = {k: float(v) for k, v in self.inputs.params.items() if not isinstance(v, str)}
        self.material = from_config(model.material)
        self.dirichlet = self.inputs.dirichlet
        self.bind(model)

    def bind(self, model: ReducedModel) -> None:
        """Use ``model`` from now on (its points, modes and operators; the same physics)."""
        self.m = model
        self.loads = [(self.inputs.loads[L.source or str(i)], L) for i, L in enumerate(model.loads)]
        self.inputs.temperature.bind(model)
        self.w = model.weights
        self.E = model.E                                           # (K, N, 6)
        self.Ew = model.E * model.weights[:, None, None]
        N = model.E.shape[1]
        self._E_flat = np.ascontiguousarray(model.E.transpose(1, 0, 2).reshape(N, -1).T)   # (K 6, N)
        # the three Gappy fits at the ROM's points (ddrom.reduction.gappy.GappyPOD): p at its
        # sample points, the stress and the temperature at all points (the latter also at the
        # sensors); the stress and temperature bases were not sampled for these points, so a
        # rank-deficient sampled basis is accepted (minimum-norm fit, residual on its range)
        self._p_gappy = None
        if model.gappy is not None:
            g = model.gappy
            self._p_gappy = GappyPOD.from_samples(g.basis_at_samples, g.sample_index, strict=False)
            self._gappy_idx = g.sample_index
        S = model.stress_at_samples
        self._s_gappy = None if S is None else GappyPOD.from_samples(S.reshape(-1, S.shape[-1]),
                                                                     np.arange(len(model.weights)), 6, strict=False)
        td = model.temperature_data
        self._t_gappy = None if td is None else GappyPOD.from_samples(td.basis, np.arange(td.basis.shape[0]),
                                                                      strict=False)
        # the monitor points (hold-out of the p reconstruction): only with a p fit to check
        self._mon = model.monitor if self._p_gappy is not None else None

    # ------------------------------------------------------------------ data
    def _env(self, t: float) -> dict:
        return {**self.params, "t": t}

    def dirichlet_values(self, t: float) -> np.ndarray:
        env = self._env(t)
        return np.array([float(np.asarray(e.evaluate(env))) for e in self.dirichlet])

    def external_force(self, t: float) -> np.ndarray:
        F = np.zeros(self.m.n_modes)
        env = self._env(t)
        for expr, L in self.loads:
            if L.kind == "centrifugal":
                w = float(np.asarray(expr.evaluate(env)))
                F += w * w * L.coeff[0]
            elif L.xyz is None:
                F += float(np.asarray(expr.evaluate(env))) * L.coeff[0]
            else:
                vals = expr.evaluate({**env, "x": L.xyz[:, 0], "y": L.xyz[:, 1], "z": L.xyz[:, 2]},
                                     shape=(len(L.xyz),))
                F += vals @ L.coeff
        return F

    def temperature_at_points(self, t: float) -> np.ndarray:
        return self.inputs.temperature(t)

    def indicator(self, p: np.ndarray) -> float:
        """Relative residual of the Gappy-POD fit of p at its sample points::

            E = ||p_I - Phi_I a|| / max(||p_I||, INDICATOR_FLOOR * s)

        with ``s`` the largest ``||p_I||`` of the training snapshots. The floor keeps the
        onset of plasticity (p at round-off level, whose relative residual is of order
        one and meaningless) from raising the indicator.
        """
        if self._p_gappy is None:
            return math.nan
        return self._p_gappy.indicator(p[self._gappy_idx],
                                       INDICATOR_FLOOR * float(self.m.info.get("p_sample_scale", 0.0)))

    def monitor_indicator(self, p: np.ndarray, p_monitor: np.ndarray | None) -> float:
        """Hold-out error of the p reconstruction at the monitor points M::

            E_M = ||p_M - Phi_p,M a|| / max(||p_M||, INDICATOR_FLOOR * s_M),   a = argmin ||Phi_p,I a - p_I||

        ``p_M`` integrated by the constitutive law along the reduced displacement (like
        ``p_I``), never fitted; ``s_M`` the training's largest ``||p_M||``. Unlike the Gappy
        residual :meth:`indicator`, which is blind to any error of ``a`` inside the span
        (it is the residual of a projection), ``E_M`` measures the reconstruction itself at
        points it did not use; nan without monitor points (a ROM file of schema < 6).
        """
        if self._mon is None or p_monitor is None:
            return math.nan
        a = self.p_coefficients(p)
        fit = self._mon.p_basis[:, : len(a)] @ a
        info = self.m.info
        floor = INDICATOR_FLOOR * float(info.get("p_monitor_scale", info.get("p_sample_scale", 0.0)))
        den = max(float(np.linalg.norm(p_monitor)), floor)
        return float(np.linalg.norm(p_monitor - fit) / den) if den > 0 else 0.0

    def indicators(self, p: np.ndarray, stress: np.ndarray, t: float,
                   p_monitor: np.ndarray | None = None) -> dict[str, float]:
        """The indicator components of a step (:data:`INDICATOR_COMPONENTS`; nan when the model
        has no data for one): relative residuals of the Gappy fits of p, of the stress and of
        ``T - T_ref`` at the ROM's points (the temperature also at its sensors), each floored
        at INDICATOR_FLOOR times the training's largest sampled norm, and the hold-out error
        of the p reconstruction at the monitor points (:meth:`monitor_indicator`, given
        ``p_monitor``, the plastic strain there)."""
        out = {"p": self.indicator(p), "stress": math.nan, "temperature": math.nan,
               "p_monitor": self.monitor_indicator(p, p_monitor)}
        info = self.m.info
        if self._s_gappy is not None:
            out["stress"] = self._s_gappy.indicator(np.asarray(stress).reshape(-1),
                                                    INDICATOR_FLOOR * float(info.get("stress_sample_scale", 0.0)))
        td = self.m.temperature_data
        if td is not None:
            v = self.inputs.temperature.with_sensors(t) - td.T_ref
            out["temperature"] = self._t_gappy.indicator(
                v, INDICATOR_FLOOR * float(info.get("temperature_sample_scale", 0.0)))
        return out

    def p_coefficients(self, p: np.ndarray) -> np.ndarray:
        """a = argmin ||Phi_I a - p_I|| (empty without Gappy data)."""
        if self._p_gappy is None:
            return np.zeros(0)
        return self._p_gappy.fit(p[self._gappy_idx])

    def stress_coefficients(self, stress: np.ndarray) -> np.ndarray:
        """b = argmin ||Psi_I b - sigma_I|| over all the model's points (minimum norm)."""
        if self._s_gappy is None:
            return np.zeros(0)
        return self._s_gappy.fit(np.asarray(stress).reshape(-1))

    # ---------------------------------------------------------------- march
    def _tangent(self, D: np.ndarray) -> np.ndarray:
        """Reduced tangent ``K_kl = sum_g w_g E_gk . D_g E_gl``: a batched product then one GEMM
        (4x faster than the equivalent optimized einsum at K ~ 100 points, measured)."""
        ED = np.matmul(self.Ew, D)                                           # (K, N, 6)
        return ED.transpose(1, 0, 2).reshape(ED.shape[1], -1) @ self._E_flat

    def _strains(self, q: np.ndarray, v: np.ndarray, E: np.ndarray | None = None,
                 E_lift: np.ndarray | None = None) -> np.ndarray:
        """``E q + E_lift v`` at the ROM's points (or at the points of the given operators)."""
        E = self.E if E is None else E
        E_lift = self.m.E_lift if E_lift is None else E_lift
        return np.einsum("gkc,k->gc", E, q) + np.einsum("gdc,d->gc", E_lift, v)

    def _context(self, t_old: float, increment: int, monitor: bool = False) -> MaterialContext:
        """Where the update happens (a UMAT gets the points' cells and numbers, as in the HF)."""
        nq = int(self.m.info.get("n_qp", 0)) or None
        g, xyz = (self._mon.point_gids, self._mon.xyz) if monitor else (self.m.point_gids, self.m.xyz)
        return MaterialContext(time=float(t_old), coords=xyz, element=None if nq is None else g // nq,
                               point=None if nq is None else g % nq, increment=increment)

    def _update(self, eps, state_old, T_old, T, dt, tangent, t_old, increment, monitor=False):
        try:
            return self.material.update(eps, state_old, T_old, T, dt, tangent=tangent,
                                        context=self._context(t_old, increment, monitor))
        except MaterialError as exc:
            # the march is replicated: every rank stops here with the same message
            raise CollectiveError(f"the material stopped the reduced march (t = {t_old:g}): {exc}") from None

    def _monitor_update(self, q, v, mon_old, t_old, t, increment=1):
        """Advance the monitor points' state along an accepted increment: ``eps_M = E_M q +
        E_lift,M v`` and one material update (no tangent). ``mon_old``: (state, T) or None
        without monitor points. Returns the new (state, T) or raises NotConverged
        (the increment is then cut back like a failed reduced Newton)."""
        if self._mon is None or mon_old is None:
            return None
        M = self._mon
        T = self.inputs.temperature.at_monitors(t)
        eps = self._strains(q, v, M.E, M.E_lift)
        try:
            resp = self._update(eps, mon_old[0], mon_old[1], T, t - t_old, False, t_old, increment, monitor=True)
        except ReturnMappingError as exc:
            raise NotConverged(f"the material update at the monitor points failed: {exc}") from None
        return resp.state, T

    def _residual(self, q, v, state_old, T_old, T, dt, fext, t_old=0.0, increment=1):
        try:
            resp = self._update(self._strains(q, v), state_old, T_old, T, dt, True, t_old, increment)
        except ReturnMappingError as exc:
            return None, None, None, str(exc)
        contrib = np.einsum("gkc,gc->gk", self.Ew, resp.stress)
        fint = contrib.sum(axis=0)
        # Reference: the size of the individual point contributions, not only of their sum,
        # which vanishes at a load-free state with residual stresses (it would make the
        # relative test unreachable there).
        ref = max(np.linalg.norm(fint), np.linalg.norm(fext), np.linalg.norm(np.abs(contrib).sum(axis=0)))
        return resp, fint - fext, ref, None

    def _newton(self, q, state, T_old, t_old, t, info):
        opt = self.options
        dt = t - t_old
        v = self.dirichlet_values(t)
        T = self.temperature_at_points(t)
        fext = self.external_force(t)
        resp, r, ref, err = self._residual(q, v, state, T_old, T, dt, fext, t_old)
        if err:
            return None, err
        norm = np.linalg.norm(r)
        search = LineSearch(opt.line_search)
        for it in range(opt.max_iterations + 1):
            if not math.isfinite(norm):
                return None, f"non-finite residual at iteration {it}"
            if norm <= opt.rtol * ref + opt.atol:
                info["newton"] += it
                return (q, resp, T, v), None
            if it == opt.max_iterations:
                break
            Kt = self._tangent(resp.tangent)
            try:
                dq = np.linalg.solve(Kt, -r)
            except np.linalg.LinAlgError:
                return None, f"singular reduced tangent at iteration {it}"
            alpha = 1.0
            while True:
                q_try = q + alpha * dq
                resp_t, r_t, ref_t, err = self._residual(q_try, v, state, T_old, T, dt, fext, t_old)
                norm_t = np.linalg.norm(r_t) if err is None else math.inf
                if not search.backtrack(norm_t, norm, alpha):
                    break
                alpha *= 0.5
            if not math.isfinite(norm_t):
                return None, f"update at iteration {it} fails ({err or 'non-finite residual'})"
            search.accepted(norm_t, norm)
            q, resp, r, ref, norm = q_try, resp_t, r_t, ref_t, norm_t
        return None, f"no convergence in {opt.max_iterations} iterations (relative residual {norm / ref:.3e})"

    def run(self, times: np.ndarray | None = None, enricher: Any = None) -> OnlineResult:
        """March over ``times`` (default: the inputs', i.e. the case's), t_0 being the initial state.

        ``enricher``: optional :class:`ddrom.rom.enrichment.Enricher` (collective: all
        ranks march the same replicated steps and take the same decisions).
        """
        times = np.asarray(self.inputs.times if times is None else times, dtype=float)
        t0 = time.perf_counter()
        q = np.zeros(self.m.n_modes)
        state = self.material.initial_state(len(self.w))
        T = self.temperature_at_points(times[0])
        v0 = self.dirichlet_values(times[0])
        resp0 = self._update(self._strains(q, v0), state, T, T, 0.0, False, float(times[0]), 0)
        state = resp0.state
        mon = None                                    # (state, T) at the monitor points
        if self._mon is not None:
            Tm = self.inputs.temperature.at_monitors(float(times[0]))
            eps_m = np.einsum("gdc,d->gc", self._mon.E_lift, v0)
            mon = (self._update(eps_m, self.material.initial_state(len(self._mon.point_gids)), Tm, Tm, 0.0,
                                False, float(times[0]), 0, monitor=True).state, Tm)
        nt = len(times)
        rows: dict[str, list] = {"q": [], "p": [], "s": [], "v": [], "ind": [], "inds": [], "sub": []}
        out = OnlineResult(times, np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0))

        def observe(state_, stress_, t_, mon_) -> tuple[np.ndarray, dict]:
            p_ = self.material.cumulated_plastic_strain(state_)
            pm = None if mon_ is None else self.material.cumulated_plastic_strain(mon_[0])
            return p_, self.indicators(p_, stress_, t_, pm)

        def record(q_, p_, inds, stress_, v_, sub=()) -> None:
            rows["q"].append(q_)
            rows["sub"].append(list(sub))
            rows["p"].append(self.p_coefficients(p_))
            rows["s"].append(self.stress_coefficients(stress_))
            rows["v"].append(v_)
            rows["ind"].append(inds["p"])
            rows["inds"].append(inds)
            out.p_samples.append(p_)
            out.stress_samples.append(stress_)

        record(q, *observe(state, resp0.stress, float(times[0]), mon), resp0.stress, v0)
        info = {"newton": 0, "cutbacks": 0}
        # (t, q, state, T, response, lifting values, monitor (state, T))
        cur = (times[0], q, state, T, None, v0, mon)

        path: list = []                               # accepted increments of the current step

        def attempt(c, t_new):
            res, err = self._newton(c[1], c[2], c[3], c[0], t_new, info)
            if res is None:
                raise NotConverged(err)
            q_, resp_, T_, v_ = res
            mon_ = self._monitor_update(q_, v_, c[6], c[0], t_new)
            path.append((t_new, q_, v_))
            return (t_new, q_, resp_.state, T_, resp_, v_, mon_)

        for k in range(1, nt):
            ts = time.perf_counter()
            failure = None
            path.clear()
            try:
                new, cuts = advance(cur, lambda c: c[0], float(times[k]), attempt, self.options.max_cutbacks)
                info["cutbacks"] += cuts
            except CutbacksExhausted as exc:
                failure = (f"reduced Newton diverged at step {k} (t = {times[k]:.6g}; "
                           f"increment {exc.t_from:.6g} -> {exc.t_to:.6g}): {exc}")
            if failure is None:
                _, q, state, T, resp, v, mon = new
                stress = resp.stress
                p, inds = observe(state, stress, float(times[k]), mon)
                trigger = enricher is not None and enricher.wants(inds)
                reason = enricher.why(inds) if trigger else None
            else:
                if enricher is None or not enricher.can_enrich():
                    raise OnlineDivergence(failure)
                trigger, reason, inds = True, failure, dict.fromkeys(INDICATOR_COMPONENTS, math.nan)
            if trigger:
                q_guess = q if failure is None else None
                v = self.dirichlet_values(float(times[k]))
                model, q, state, T, stress, event = enricher.enrich(k, times, rows["q"], rows["v"], v,
                                                                    reason=reason, q_guess=q_guess,
                                                                    sub_hist=rows["sub"])
                path.clear()                          # step k is the HF state: nothing to replay
                self.bind(model)
                mon = getattr(enricher, "monitor_state", None) if self._mon is not None else None
                event["indicator_before"] = inds["p"]
                event["indicators_before"] = inds
                p, inds = observe(state, stress, float(times[k]), mon)
                event["indicator_after"] = inds["p"]
                event["indicators_after"] = inds
                out.enrichments.append(event)
            # the increments before t_k of a step the march cut back: the replay follows them
            record(q, p, inds, stress, v, path[:-1])
            cur = (float(times[k]), q, state, T, None, v, mon)
            out.step_seconds.append(time.perf_counter() - ts)
        out.q = _pad(rows["q"])
        out.p_coeff = _pad(rows["p"])
        out.stress_coeff = _pad(rows["s"])
        out.dirichlet = np.array(rows["v"]).reshape(nt, -1)
        out.indicator = np.array(rows["ind"], dtype=float)
        out.indicators = {c: np.array([r[c] for r in rows["inds"]], dtype=float) for c in INDICATOR_COMPONENTS}
        out.newton_iterations = info["newton"]
        out.cutbacks = info["cutbacks"]
        out.seconds = time.perf_counter() - t0
        out.model = self.m
        return out


def temperature_coordinates(model: ReducedModel, inputs: OnlineInputs) -> np.ndarray | None:
    """The temperature history of a run in the model's temperature-POD coordinates, (nt, r).

    Per step ``c_k = argmin ||B c - (T(t_k) - T_ref)||`` at the sample points and sensors (the
    temperature component's fit, :attr:`ReducedModel.temperature_data`); None when the model
    has no temperature data (schema < 4) or no temperature modes. What
    :func:`ddrom.rom.calibration.field_distance` compares with the calibration fields. Reads
    the field at every step (O(K + S) values each; the march reads them again).
    """
    td = model.temperature_data
    if td is None or td.basis.shape[1] == 0:
        return None
    inputs.temperature.bind(model)
    fit = GappyPOD.from_samples(td.basis, np.arange(td.basis.shape[0]), strict=False)
    return np.array([fit.fit(inputs.temperature.with_sensors(float(t)) - td.T_ref) for t in inputs.times])


def _pad(rows: list[np.ndarray]) -> np.ndarray:
    """Stack coefficient vectors of growing length (appended modes), zero-padded."""
    n = max((len(r) for r in rows), default=0)
    out = np.zeros((len(rows), n))
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out
