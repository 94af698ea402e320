"""Chaboche-family J2 (visco)plasticity: isotropic + Armstrong-Frederick kinematic hardening.

Model (small strain, von Mises, parameters evaluated at ``T_new``)::

    sigma   = C_el(T) : (eps - eps_p - eps_th),   eps_th = alpha(T) (T - T_ref) I
    f       = J(sigma - X) - R(p) - sigma_y,      J(a) = sqrt(3/2 dev(a):dev(a)),  R = H p
    deps_p  = dp n,   n = (3/2) dev(sigma - X) / J(sigma - X)
    dX      = (2/3) C deps_p - gamma X dp         (gamma = 0: linear kinematic, Prager)
    dp      : f <= 0, dp >= 0, f dp = 0           (rate-independent, K = 0)
    dp/dt   = <f / K>^N                           (Norton viscoplasticity, K > 0)

In uniaxial tension the plastic modulus is ``d sigma / d eps_p = H + C`` (``gamma = 0``)
and ``X_11`` saturates at ``(2/3) C / gamma`` (``J(X) -> C / gamma``).

Integration: backward Euler with a return map reduced to one scalar equation per
plastic point. With ``a = 1 / (1 + gamma dp)``, ``xi(dp) = s_tr - a X_old`` and
``s_tr = 2 G (dev(eps) - eps_p_old)``, the discrete equations give
``sigma - X`` parallel to ``xi``, ``n = (3/2) xi / J(xi)`` and
``J(s - X) = J(xi) - (3G + C a) dp``, hence

    g(dp) = J(xi(dp)) - (3G + C a) dp - H (p_old + dp) - sigma_y - K (dp/dt)^(1/N) = 0.

``g`` is decreasing (for ``J(X_old) <= C / gamma``, which the scheme preserves). The
rate-independent root ``dp_RI`` (no last term) is found by a bisection-protected Newton
in ``[0, (J(s_tr) + J(X_old)) / (3G + H)]``. For Norton points the unknown is the
viscous overstress ``q = K (dp/dt)^(1/N)`` in ``[0, min(f_tr, K (dp_RI/dt)^(1/N))]``,
with residual ``h(q) = g_RI(dt (q/K)^N) - q``: this is equivalent to
``r(dp) = dp - dt <f(dp)/K>^N`` but, unlike ``g`` in ``dp``, has a finite slope at
``dp = 0`` and, unlike ``r``, is nearly linear in the creep regime, so Newton needs a
few iterations for any ``N``. Newton iterates stop when the last Newton step is below
``rtol = 1e-12`` relative (the quadratic convergence makes the error far smaller) or
the bracket is narrower than ``rtol``.

Consistent tangent (implicit function theorem, ``P`` the deviatoric projector)::

    N_xi  = (3 / (2 J(xi))) (P - (2/3) n (x) n)       (= d n / d xi)
    v     = d xi / d dp = gamma a^2 X_old
    g_dp  = n : v - 3G - C a^2 - H - K / (N dt) (dp/dt)^(1/N - 1)
    D     = C_el - 4 G^2 dp N_xi + (4 G^2 / g_dp) (n + dp N_xi v) (x) n

(``d g / d eps = 2G n``, ``d dp / d eps = -2G n / g_dp``); it is non-symmetric when
``gamma > 0``. Elastic points get ``C_el``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import numpy as np

from ddrom.materials.base import ElasticBound, Material, Response, ReturnMappingError, register_law
from ddrom.materials.elastic import check_thermal_keys, elastic_specs, moduli, thermal_strain_trace
from ddrom.materials.parameters import Spec, nonnegative, parse_parameters, positive
from ddrom.materials.tensors import IDENTITY, add_isotropic, dev, isotropic_stiffness, von_mises_deviator
from ddrom.parallel.errors import DdromError

_COMPONENTS = ["11", "22", "33", "12", "23", "13"]

#: Relative tolerance of the local solves (on the unknown dp or q).
RTOL = 1e-12
#: Iteration cap of the local solves (bisection alone needs ~45 for RTOL).
MAXIT = 200
#: A trial point is plastic when f_tr > YIELD_RTOL * (stress scale): round-off on the yield surface stays elastic.
YIELD_RTOL = 1e-13


def _specs(law: str) -> dict[str, Spec]:
    s = elastic_specs()
    s["sigma_y"] = nonnegative(0.0 if law == "norton" else None)
    s["H"] = nonnegative()
    s["C"] = nonnegative()
    s["gamma"] = nonnegative()
    if law == "chaboche":
        s["K"] = nonnegative()
        s["N"] = Spec(1.0, lambda v: bool(np.all(v >= 1.0)), ">= 1")
    elif law == "norton":
        s["K"] = positive()
        s["N"] = Spec(None, lambda v: bool(np.all(v >= 1.0)), ">= 1")
    return s


def safeguarded_newton(fun: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
                       x0: np.ndarray, lo: np.ndarray, hi: np.ndarray, rtol: float = RTOL,
                       maxit: int = MAXIT, what: str = "return mapping",
                       ftol: np.ndarray | None = None) -> np.ndarray:
    """Vectorized Newton for decreasing scalar functions, protected by bisection.

    Parameters
    ----------
    fun : callable
        ``fun(x, idx) -> (value, derivative)`` for the points ``idx`` at values ``x``.
        Each function must be decreasing with ``fun(lo) >= 0 >= fun(hi)``.
    x0, lo, hi : (m,) arrays
        Start and bracket, ``lo <= x0 <= hi``.

    Returns
    -------
    numpy.ndarray
        Roots, to ``rtol`` relative: a point stops when its last Newton step (inside the
        bracket) is ``<= rtol max(|x|, |hi_0|)``, when ``fun`` is exactly 0, or when its
        bracket is narrower than that (``hi_0`` the initial upper end), or when
        ``|fun| <= ftol`` (the round-off level of the function, given by the caller: for
        a point barely past yield the root is ~1e-16 and only this test can stop it). Steps leaving the bracket are replaced by bisection.

    Raises
    ------
    ReturnMappingError
        If some points have not converged after ``maxit`` iterations.
    """
    x, lo, hi = x0.astype(float), lo.astype(float), hi.astype(float)
    # Tolerances are relative to the initial bracket as well: for a tiny root (dp ~ 1e-7)
    # round-off in fun floors the Newton step above rtol |x| and the iterate would
    # alternate between two floats until maxit.
    scale0 = np.abs(hi).copy()
    act = np.arange(x.size)
    for _ in range(maxit):
        if act.size == 0:
            return x
        xa = x[act]
        v, d = fun(xa, act)
        pos = v > 0
        lo[act] = np.where(pos, xa, lo[act])
        hi[act] = np.where(pos, hi[act], xa)
        la, ha = lo[act], hi[act]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            xn = xa - v / d
        # inclusive: a converged Newton iterate may land exactly on the end just updated
        newton_ok = np.isfinite(xn) & (xn >= la) & (xn <= ha)
        xn = np.where(newton_ok, xn, 0.5 * (la + ha))
        zero = v == 0 if ftol is None else np.abs(v) <= ftol[act]
        xn = np.where(zero, xa, xn)
        x[act] = xn
        scale = np.maximum(np.abs(xn), scale0[act])
        done = zero | (newton_ok & (np.abs(xn - xa) <= rtol * scale)) | (ha - la <= rtol * scale)
        act = act[~done]
    if act.size:
        raise ReturnMappingError(f"{what}: local Newton did not converge at {act.size} point(s)"
                                 f" after {maxit} iterations")
    return x


class Chaboche(Material):
    """J2 (visco)plasticity with linear isotropic and one Armstrong-Frederick kinematic hardening.

    One class serves the laws ``"chaboche"`` (viscous iff ``K > 0``), ``"j2"`` (no ``K``,
    ``N`` keys: rate-independent) and ``"norton"`` (``K > 0`` and ``N`` required,
    ``sigma_y`` defaults to 0). See the module docstring for equations and tolerances.

    State columns: ``eps_p`` (6, Mandel), ``X`` (6, Mandel), ``p``: ``n_state = 13``.
    """

    n_state = 13
    state_names = [f"eps_p_{c}" for c in _COMPONENTS] + [f"X_{c}" for c in _COMPONENTS] + ["p"]

    def __init__(self, cfg: Mapping[str, Any], law: str = "chaboche"):
        self.name = law
        check_thermal_keys(law, cfg)
        self.params = parse_parameters(law, cfg, _specs(law))
        self.viscous = "K" in self.params and bool(np.any(self.params["K"].nodal_values > 0))
        self.symmetric_tangent = not ("gamma" in self.params
                                      and bool(np.any(self.params["gamma"].nodal_values > 0)))

    def to_dict(self) -> dict:
        return {"law": self.name, **{k: p.to_config() for k, p in self.params.items()}}

    def cumulated_plastic_strain(self, state: np.ndarray) -> np.ndarray:
        return np.asarray(state)[:, 12].copy()

    def update(self, eps, state_old, T_old, T_new, dt, tangent=True, context=None) -> Response:
        eps, state_old, T = self._check_inputs(eps, state_old, T_new)
        dt = float(dt)
        if not dt >= 0.0:
            raise DdromError(f"material '{self.name}': time step dt must be >= 0, got {dt}")
        P = self.params
        Kb, G = moduli(P, T)
        # X is deviatoric by construction; projecting once lets every norm below skip dev()
        epsp_old, X_old, p_old = state_old[:, :6], dev(state_old[:, 6:12]), state_old[:, 12]

        # total form: trial deviator from the total strain, volumetric part is elastic
        tr_eps = eps[:, 0] + eps[:, 1] + eps[:, 2]
        s_tr = 2.0 * G[:, None] * (eps - (tr_eps / 3.0)[:, None] * IDENTITY - epsp_old)
        vol = Kb * (tr_eps - thermal_strain_trace(P, T))

        sy, H = P["sigma_y"](T), P["H"](T)
        R = sy + H * p_old
        J_eta = von_mises_deviator(s_tr - X_old)
        f_tr = J_eta - R
        plastic = f_tr > YIELD_RTOL * (J_eta + R)

        stress = s_tr.copy()
        stress[:, :3] += vol[:, None]
        state = state_old.copy()
        D = isotropic_stiffness(Kb, G) if tangent else None

        idx = np.flatnonzero(plastic)
        if idx.size:
            self._plastic_points(idx, s_tr, X_old, epsp_old, p_old, Kb, G, T, f_tr, dt, stress, state, D)
        return Response(stress, state, D)

    def elastic_bound(self, state, T_lo, T_hi) -> ElasticBound:
        """``f_tr = J(s_tr - X) - R <= sqrt(3/2) (2 G ||dev(eps) - eps_p|| + ||X||) - R``, with
        ``s_tr = 2 G (dev(eps) - eps_p)`` and ``J(a) = sqrt(3/2) ||a||`` on deviators: an
        update is elastic where ``sqrt(6) G_max ||dev(eps) - eps_p|| < R_min - sqrt(3/2) ||X||``,
        ``G_max`` and ``R_min = min sigma_y + min H p`` over the temperature interval (Norton
        flow needs ``f > 0`` too). The margin ``1e-9 R_min`` covers the round-off of the
        law's own yield test (relative ``YIELD_RTOL`` of the stresses)."""
        state = np.asarray(state, dtype=float)
        P = self.params
        E_max = P["E"].bounds(T_lo, T_hi)[1]
        nu_min = P["nu"].bounds(T_lo, T_hi)[0]
        G_max = E_max / (2.0 * (1.0 + nu_min))
        R_min = P["sigma_y"].bounds(T_lo, T_hi)[0] + P["H"].bounds(T_lo, T_hi)[0] * state[:, 12]
        X = dev(state[:, 6:12])
        J_X = np.sqrt(1.5 * np.einsum("ij,ij->i", X, X))
        return ElasticBound(state[:, :6], math.sqrt(6.0) * G_max, R_min * (1.0 - 1e-9) - J_X)

    # -- the return map on the plastic points ------------------------------------------------
    def _plastic_points(self, idx, s_tr_all, X_old_all, epsp_old_all, p_old_all, Kb_all, G_all, T_all,
                        f_tr_all, dt, stress, state, D) -> None:
        P = self.params
        T = T_all[idx]
        m = idx.size
        s_tr, X_old, G, Kb_p = s_tr_all[idx], X_old_all[idx], G_all[idx], Kb_all[idx]
        p_old, f_tr = p_old_all[idx], f_tr_all[idx]
        C, gam, H, sy = P["C"](T, m), P["gamma"](T, m), P["H"](T, m), P["sigma_y"](T, m)

        def g_ri(dp, k):
            """Rate-independent residual g_RI(dp) and its derivative at points k (local numbering)."""
            a = 1.0 / (1.0 + gam[k] * dp)
            Xk = X_old[k]
            xi = s_tr[k] - a[:, None] * Xk
            Jxi = von_mises_deviator(xi)
            nrm = 1.5 * xi / Jxi[:, None]
            g = Jxi - (3.0 * G[k] + C[k] * a) * dp - H[k] * (p_old[k] + dp) - sy[k]
            dg = (gam[k] * a * a) * np.einsum("ij,ij->i", nrm, Xk) - 3.0 * G[k] - C[k] * a * a - H[k]
            return g, dg

        # rate-independent root: exact at the start for gamma = 0 (g is then affine in dp)
        everyone = np.arange(m)
        # g(hi) <= 0 since J(xi) <= J(s_tr) + J(X_old) for every dp >= 0
        x0 = f_tr / (3.0 * G + C + H)
        hi = np.maximum((von_mises_deviator(s_tr) + von_mises_deviator(X_old) - H * p_old - sy) / (3.0 * G + H), x0)
        # |g| at round-off level of the stresses it is made of: converged whatever dp
        ftol = 64.0 * np.finfo(float).eps * (von_mises_deviator(s_tr) + von_mises_deviator(X_old) + sy
                                              + H * p_old)
        dp = safeguarded_newton(g_ri, x0, np.zeros(m), hi, what=f"material '{self.name}'", ftol=ftol)
        _, dg_ri = g_ri(dp, everyone)
        inv_gdp = 1.0 / dg_ri

        if self.viscous:
            Kv, Nv = P["K"](T, m), P["N"](T, m)
            vis = np.flatnonzero(Kv > 0)
            if vis.size:
                dp_v, inv_v = self._viscous(vis, dp[vis], Kv[vis], Nv[vis], f_tr[vis], dt, g_ri)
                dp[vis], inv_gdp[vis] = dp_v, inv_v

        # final state from dp
        a = 1.0 / (1.0 + gam * dp)
        xi = s_tr - a[:, None] * X_old
        Jxi = von_mises_deviator(xi)
        nrm = 1.5 * xi / Jxi[:, None]
        stress[idx] -= (2.0 * G * dp)[:, None] * nrm
        state[idx, :6] = epsp_old_all[idx] + dp[:, None] * nrm
        state[idx, 6:12] = a[:, None] * (X_old + ((2.0 / 3.0) * C * dp)[:, None] * nrm)
        state[idx, 12] = p_old + dp

        if D is not None:
            G2 = 4.0 * G * G
            c1 = G2 * dp * 1.5 / Jxi
            v = (gam * a * a)[:, None] * X_old
            Nv_ = (1.5 / Jxi)[:, None] * (v - (2.0 / 3.0) * np.einsum("ij,ij->i", nrm, v)[:, None] * nrm)
            w = nrm + dp[:, None] * Nv_
            # D = 3K P_sph + (2G - c1) P_dev + ((2/3) c1 n + (4G^2/g_dp) w) (x) n: one outer product
            left = ((2.0 / 3.0) * c1)[:, None] * nrm + (G2 * inv_gdp)[:, None] * w
            Dp = left[:, :, None] * nrm[:, None, :]
            add_isotropic(Dp, Kb_p, 2.0 * G - c1)
            D[idx] = Dp

    def _viscous(self, vis, dp_ri, K, N, f_tr, dt, g_ri):
        """Norton points: solve ``h(q) = g_RI(dt (q/K)^N) - q = 0`` for the overstress q.

        Returns ``dp`` and ``1 / g_dp`` with ``g_dp = g_RI'(dp) - q / (N dp)``, written
        as ``dp / (dp g_RI' - q / N)`` so that it stays finite (-> 0) when dp underflows.
        """
        def h(q, k):
            kk = vis[k]
            r = q / K[k]
            dp = dt * r ** N[k]
            ddp = dt * N[k] * r ** (N[k] - 1.0) / K[k]
            g, dg = g_ri(dp, kk)
            return g - q, dg * ddp - 1.0

        with np.errstate(divide="ignore", over="ignore"):
            q_hi = np.minimum(f_tr, K * (dp_ri / dt) ** (1.0 / N)) if dt > 0 else f_tr
        q = safeguarded_newton(h, q_hi, np.zeros(vis.size), q_hi, what=f"material '{self.name}' (viscous)")
        dp = dt * (q / K) ** N
        _, dg = g_ri(dp, vis)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = dp / (dp * dg - q / N)
        return dp, np.where(np.isfinite(inv), inv, 0.0)


@register_law("chaboche")
def _chaboche(cfg: Mapping[str, Any]) -> Chaboche:
    return Chaboche(cfg, "chaboche")


@register_law("j2")
def _j2(cfg: Mapping[str, Any]) -> Chaboche:
    return Chaboche(cfg, "j2")


@register_law("norton")
def _norton(cfg: Mapping[str, Any]) -> Chaboche:
    return Chaboche(cfg, "norton")
