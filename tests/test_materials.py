"""Tests of the constitutive laws (ddrom.materials): closed forms, tangents, validation.

Serial numpy tests (a material update is local to each integration point).
"""
from __future__ import annotations

import numpy as np
import pytest

from ddrom.materials import LAWS, Chaboche, Elastic, Material, from_config
from ddrom.materials.parameters import Spec, parse_parameter
from ddrom.materials.tensors import IDENTITY, P_DEV, dev, from_mandel, to_mandel, von_mises
from ddrom.parallel.errors import DdromError

E, NU = 200e3, 0.3
BULK, SHEAR = E / (3 * (1 - 2 * NU)), E / (2 * (1 + NU))


# ------------------------------------------------------------------------------------------
# drivers
# ------------------------------------------------------------------------------------------
def mixed_control(mat: Material, eps_target: np.ndarray, sig_target: np.ndarray, strain_ctrl: np.ndarray,
                  state: np.ndarray, T: float = 0.0, dt: float = 1.0, eps_guess: np.ndarray | None = None):
    """One step at one point: components in ``strain_ctrl`` have prescribed strain, the others
    prescribed stress; the unknown strains are found by Newton with the consistent tangent."""
    eps = (np.zeros(6) if eps_guess is None else eps_guess.copy())
    eps[strain_ctrl] = eps_target[strain_ctrl]
    free = ~strain_ctrl
    for _ in range(30):
        r = mat.update(eps[None], state[None], T, T, dt)
        res = r.stress[0, free] - sig_target[free]
        # round-off floor of the stress: E |eps| (total form, stress from a strain difference)
        if np.max(np.abs(res)) <= 1e-12 * max(1.0, np.max(np.abs(r.stress)), E * np.max(np.abs(eps))):
            return eps, r
        eps[free] -= np.linalg.solve(r.tangent[0][np.ix_(free, free)], res)
    raise AssertionError("mixed-control Newton did not converge")


UNIAXIAL_STRAIN_CTRL = np.array([True, False, False, False, False, False])


def uniaxial_strain_path(mat: Material, eps11: np.ndarray, dt: float = 1.0):
    """Uniaxial stress driven by eps_11; returns sigma_11, states, full strains."""
    state = mat.initial_state(1)[0]
    eps = np.zeros(6)
    sig, states, strains = [], [], []
    for e in eps11:
        target = np.zeros(6)
        target[0] = e
        eps, r = mixed_control(mat, target, np.zeros(6), UNIAXIAL_STRAIN_CTRL, state, dt=dt, eps_guess=eps)
        state = r.state[0]
        sig.append(r.stress[0, 0])
        states.append(state.copy())
        strains.append(eps.copy())
    return np.array(sig), np.array(states), np.array(strains)


def bilinear(eps11: np.ndarray, sigma_y: float, h: float) -> np.ndarray:
    """Monotonic uniaxial closed form: elastic up to sigma_y/E, then tangent E h / (E + h)."""
    et = E * h / (E + h)
    ey = sigma_y / E
    return np.where(eps11 <= ey, E * eps11, sigma_y + et * (eps11 - ey))


# ------------------------------------------------------------------------------------------
# tensors
# ------------------------------------------------------------------------------------------
def test_mandel_helpers():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(4, 3, 3))
    t = t + np.swapaxes(t, 1, 2)
    a = to_mandel(t)
    np.testing.assert_allclose(from_mandel(a), t, rtol=0, atol=1e-14)
    # contraction is the dot product; J of a uniaxial tensor is |s|; P_dev projects on deviators
    np.testing.assert_allclose(np.einsum("nij,nij->n", t, t), np.einsum("ni,ni->n", a, a), rtol=1e-13)
    np.testing.assert_allclose(von_mises(np.array([[-7.0, 0, 0, 0, 0, 0]])), [7.0], rtol=1e-15)
    np.testing.assert_allclose(a @ P_DEV.T, dev(a), atol=1e-14)
    td = t - np.trace(t, axis1=1, axis2=2)[:, None, None] / 3 * np.eye(3)
    np.testing.assert_allclose(von_mises(a), np.sqrt(1.5 * np.einsum("nij,nij->n", td, td)), rtol=1e-13)
    # pure shear tau: J = sqrt(3) tau
    np.testing.assert_allclose(von_mises(to_mandel(np.array([[0, 2.0, 0], [2.0, 0, 0], [0, 0, 0]]))[None]),
                               [2.0 * np.sqrt(3)], rtol=1e-14)


# ------------------------------------------------------------------------------------------
# uniaxial closed forms
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("H,C", [(1000.0, 0.0), (0.0, 5000.0), (2000.0, 8000.0), (0.0, 0.0)])
def test_uniaxial_bilinear(H, C):
    sy = 250.0
    mat = from_config({"law": "j2", "E": E, "nu": NU, "sigma_y": sy, "H": H, "C": C})
    eps11 = np.linspace(0.0, 0.01, 41)[1:]
    sig, states, strains = uniaxial_strain_path(mat, eps11)
    np.testing.assert_allclose(sig, bilinear(eps11, sy, H + C), rtol=1e-10)
    # plastic incompressibility and lateral contraction: eps_22 = -nu eps_e - eps_p/2
    p = states[:, 12]
    np.testing.assert_allclose(p, np.maximum(eps11 - sig / E, 0.0), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(strains[:, 1], -NU * sig / E - 0.5 * p, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(mat.cumulated_plastic_strain(states), p, rtol=0, atol=0)


@pytest.mark.parametrize("H,C", [(0.0, 10000.0), (10000.0, 0.0)])
def test_reverse_yield_bauschinger(H, C):
    """After loading to sigma_max, reverse yielding starts at sigma_max - 2 sigma_y with linear
    kinematic hardening and at -sigma_max with isotropic hardening."""
    sy = 200.0
    mat = from_config({"law": "j2", "E": E, "nu": NU, "sigma_y": sy, "H": H, "C": C})
    up = np.linspace(0.0, 0.005, 11)[1:]
    down = np.linspace(0.005, -0.005, 401)[1:]
    sig, states, _ = uniaxial_strain_path(mat, np.concatenate([up, down]))
    smax = sig[len(up) - 1]
    p = states[:, 12]
    first = len(up) + np.argmax(p[len(up):] > p[len(up) - 1])  # first reverse plastic step
    s_rev_expected = smax - 2 * sy if C > 0 else -smax
    # the elastic predictor at the step before reverse yield is inside, at the yield step beyond
    assert sig[first - 1] > s_rev_expected - 1e-9
    de = down[0] - down[1]
    assert sig[first - 1] - E * de < s_rev_expected + 1e-9
    # closed form on the reverse branch: sigma = s_rev - E_t (eps_rev - eps), E_t = E h/(E+h)
    et = E * (H + C) / (E + H + C)
    eps_rev = up[-1] - (smax - s_rev_expected) / E
    eps = np.concatenate([up, down])[first:]
    np.testing.assert_allclose(sig[first:], s_rev_expected - et * (eps_rev - eps), rtol=1e-9)


def test_armstrong_frederick_saturation():
    C, gamma, sy = 30000.0, 200.0, 150.0
    mat = from_config({"law": "chaboche", "E": E, "nu": NU, "sigma_y": sy, "C": C, "gamma": gamma})
    eps11 = np.linspace(0.0, 0.2, 4001)[1:]
    sig, states, _ = uniaxial_strain_path(mat, eps11)
    X, p = states[:, 6:12], states[:, 12]
    # saturation (fixed point of the backward-Euler update is exact): X_11 = (2/3) C / gamma
    np.testing.assert_allclose(X[-1, 0], 2.0 / 3.0 * C / gamma, rtol=1e-12)
    np.testing.assert_allclose(X[-1, 1:3], -C / gamma / 3.0, rtol=1e-12)
    np.testing.assert_allclose(von_mises(X[-1:]), [C / gamma], rtol=1e-12)
    np.testing.assert_allclose(sig[-1], sy + C / gamma, rtol=1e-10)
    # the whole curve follows X_11 = (2/3)(C/gamma)(1 - exp(-gamma p)) up to the O(gamma dp) time error
    np.testing.assert_allclose(X[:, 0], 2.0 / 3.0 * C / gamma * (1 - np.exp(-gamma * p)), rtol=5e-3, atol=1e-9)
    assert np.all(von_mises(X) <= C / gamma * (1 + 1e-12))


# ------------------------------------------------------------------------------------------
# Norton creep
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("law,N,sy", [("norton", 5.0, 0.0), ("norton", 3.0, 50.0), ("chaboche", 12.0, 100.0),
                                      ("norton", 1.0, 20.0)])
def test_norton_creep_rate(law, N, sy):
    K, s0, dt = 300.0, 260.0, 0.01
    cfg = {"law": law, "E": E, "nu": NU, "sigma_y": sy, "K": K, "N": N}
    mat = from_config(cfg)
    state = mat.initial_state(1)[0]
    ctrl = np.zeros(6, dtype=bool)  # full stress control
    target = np.array([s0, 0, 0, 0, 0, 0.0])
    eps = np.zeros(6)
    e11 = []
    for _ in range(6):
        eps, r = mixed_control(mat, np.zeros(6), target, ctrl, state, dt=dt, eps_guess=eps)
        state = r.state[0]
        e11.append(eps[0])
    rate = np.diff(e11) / dt
    np.testing.assert_allclose(rate, ((s0 - sy) / K) ** N, rtol=1e-9)
    # lateral creep at half the rate (plastic incompressibility)
    np.testing.assert_allclose(state[1], -0.5 * state[0], rtol=1e-12)


def test_viscous_tends_to_rate_independent():
    """As dt -> infinity (or K -> 0) the Norton solution tends to the rate-independent one."""
    base = {"E": E, "nu": NU, "sigma_y": 200.0, "H": 3000.0, "C": 20000.0, "gamma": 50.0}
    ri = from_config({"law": "j2", **base})
    vp = from_config({"law": "chaboche", **base, "K": 100.0, "N": 4.0})
    rng = np.random.default_rng(3)
    eps = rng.normal(size=(20, 6)) * 4e-3
    s_ri = ri.update(eps, ri.initial_state(20), 0, 0, 1.0).stress
    gaps = [np.abs(vp.update(eps, vp.initial_state(20), 0, 0, dt).stress - s_ri).max() for dt in (1e2, 1e6, 1e10)]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-3 * np.abs(s_ri).max()


# ------------------------------------------------------------------------------------------
# consistent tangent
# ------------------------------------------------------------------------------------------
T_TABLE_CFG = {"law": "chaboche", "E": {"T": [0.0, 500.0, 1000.0], "value": [200e3, 180e3, 120e3]},
               "nu": {"T": [0.0, 1000.0], "value": [0.28, 0.34]},
               "sigma_y": {"T": [0.0, 1000.0], "value": [300.0, 100.0]}, "H": 1000.0,
               "C": {"T": [0.0, 1000.0], "value": [3e4, 1e4]}, "gamma": {"T": [200.0, 800.0], "value": [50.0, 300.0]},
               "K": {"T": [0.0, 1000.0], "value": [10.0, 100.0]}, "N": {"T": [0.0, 1000.0], "value": [8.0, 3.0]},
               "alpha": {"T": [0.0, 1000.0], "value": [1.2e-5, 1.8e-5]}, "T_ref": 20.0}

TANGENT_CASES = {
    "elastic": ({"law": "elastic", "E": E, "nu": NU}, False),
    "j2_iso": ({"law": "j2", "E": E, "nu": NU, "sigma_y": 200.0, "H": 1000.0}, True),
    "j2_perfect": ({"law": "j2", "E": E, "nu": NU, "sigma_y": 200.0}, True),
    "linear_kinematic": ({"law": "j2", "E": E, "nu": NU, "sigma_y": 200.0, "H": 500.0, "C": 20000.0}, True),
    "armstrong_frederick": ({"law": "chaboche", "E": E, "nu": NU, "sigma_y": 200.0, "H": 1000.0, "C": 40000.0,
                             "gamma": 150.0}, True),
    "viscous_af": ({"law": "chaboche", "E": E, "nu": NU, "sigma_y": 150.0, "H": 1000.0, "C": 40000.0,
                    "gamma": 150.0, "K": 80.0, "N": 6.0}, True),
    "norton_large_N": ({"law": "norton", "E": E, "nu": NU, "K": 100.0, "N": 20.0}, True),
    "norton_N1": ({"law": "norton", "E": E, "nu": NU, "K": 1e4, "N": 1.0, "sigma_y": 50.0}, True),
    "temperature_tables": (T_TABLE_CFG, True),
}


def fd_tangent(mat, eps, state, T, dt, h):
    D = np.empty((eps.shape[0], 6, 6))
    for j in range(6):
        ep, em = eps.copy(), eps.copy()
        ep[:, j] += h
        em[:, j] -= h
        D[:, :, j] = (mat.update(ep, state, T, T, dt, tangent=False).stress
                      - mat.update(em, state, T, T, dt, tangent=False).stress) / (2 * h)
    return D


@pytest.mark.parametrize("case", list(TANGENT_CASES))
def test_consistent_tangent_finite_differences(case):
    cfg, plastic = TANGENT_CASES[case]
    mat = from_config(cfg)
    rng = np.random.default_rng(42)
    n, dt = 60, 0.1
    T = rng.uniform(0.0, 1000.0, n)
    # a first step builds a non-trivial state (eps_p, X, p), then a random increment
    eps0 = rng.normal(size=(n, 6)) * 2e-3
    state = mat.update(eps0, mat.initial_state(n), T, T, dt, tangent=False).state
    eps = eps0 + rng.normal(size=(n, 6)) * 2e-3
    r = mat.update(eps, state, T, T, dt)
    if plastic:
        frac = np.mean(mat.cumulated_plastic_strain(r.state) > mat.cumulated_plastic_strain(state))
        assert frac > 0.8, f"too few plastic points ({frac})"
    D_fd = fd_tangent(mat, eps, state, T, dt, h=1e-8)
    err = np.abs(D_fd - r.tangent).max(axis=(1, 2)) / np.abs(r.tangent).max(axis=(1, 2))
    assert err.max() < 1e-6, err.max()
    if case == "armstrong_frederick":
        # gamma > 0 makes the algorithmic tangent non-symmetric: the test must see it
        assert np.abs(r.tangent - np.swapaxes(r.tangent, 1, 2)).max() > 1e-6 * np.abs(r.tangent).max()


def test_elastic_points_get_elastic_tangent():
    mat = from_config({"law": "chaboche", "E": E, "nu": NU, "sigma_y": 1e9, "K": 10.0, "N": 3.0})
    eps = np.random.default_rng(0).normal(size=(7, 6)) * 1e-3
    r = mat.update(eps, mat.initial_state(7), 0, 0, 1.0)
    ce = 3 * BULK * (np.eye(6) - P_DEV) + 2 * SHEAR * P_DEV
    np.testing.assert_allclose(r.tangent, np.broadcast_to(ce, (7, 6, 6)), rtol=1e-14, atol=1e-9)
    np.testing.assert_array_equal(r.state, 0.0)


# ------------------------------------------------------------------------------------------
# thermal strain and temperature dependence
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("law", ["elastic", "chaboche"])
def test_thermal_strain(law):
    alpha = {"T": [0.0, 400.0, 800.0], "value": [1.0e-5, 1.4e-5, 2.0e-5]}
    cfg = {"law": law, "E": E, "nu": NU, "alpha": alpha, "T_ref": 20.0}
    if law == "chaboche":
        cfg.update(sigma_y=50.0, H=100.0)
    mat = from_config(cfg)
    T = np.array([20.0, 100.0, 300.0, 600.0, 900.0])
    a = np.interp(T, alpha["T"], alpha["value"])
    n = T.size
    # free expansion: eps = alpha(T) (T - T_ref) I gives no stress
    eps_free = (a * (T - 20.0))[:, None] * IDENTITY
    r = mat.update(eps_free, mat.initial_state(n), 20.0, T, 1.0)
    np.testing.assert_allclose(r.stress, 0.0, atol=1e-9)
    # fully constrained: sigma = -3 K alpha dT I (hydrostatic: never yields even with small sigma_y)
    r = mat.update(np.zeros((n, 6)), mat.initial_state(n), 20.0, T, 1.0)
    np.testing.assert_allclose(r.stress, (-3 * BULK * a * (T - 20.0))[:, None] * IDENTITY, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(mat.cumulated_plastic_strain(r.state), 0.0)


def test_volumetric_strain_never_yields():
    mat = from_config({"law": "chaboche", "E": E, "nu": NU, "sigma_y": 1.0, "C": 1000.0, "gamma": 10.0,
                       "K": 1.0, "N": 2.0})
    ev = np.array([-0.05, -1e-3, 0.0, 1e-3, 0.1])
    eps = ev[:, None] * IDENTITY
    r = mat.update(eps, mat.initial_state(5), 0, 0, 1.0)
    np.testing.assert_array_equal(r.state, 0.0)
    np.testing.assert_allclose(r.stress, (3 * BULK * ev)[:, None] * IDENTITY, rtol=1e-13)


def test_temperature_table_interpolation():
    p = parse_parameter("x", "E", {"T": [100.0, 200.0, 400.0], "value": [10.0, 20.0, 0.0]}, Spec())
    np.testing.assert_allclose(p(np.array([0.0, 100.0, 150.0, 200.0, 300.0, 400.0, 1e4])),
                               [10.0, 10.0, 15.0, 20.0, 10.0, 0.0, 0.0], rtol=0, atol=1e-14)
    assert parse_parameter("x", "E", 3.5, Spec())(np.zeros(4)).tolist() == [3.5] * 4
    # through a law: uniaxial-strain stiffness at an intermediate temperature
    mat = from_config({"law": "elastic", "E": {"T": [0.0, 1000.0], "value": [200e3, 100e3]}, "nu": 0.25})
    eps = np.array([[1e-3, 0, 0, 0, 0, 0]] * 3)
    r = mat.update(eps, mat.initial_state(3), 0, np.array([-50.0, 250.0, 2000.0]), 1.0)
    e_t = np.array([200e3, 175e3, 100e3])
    lam_2mu = e_t * 0.75 / (1.25 * 0.5)  # E (1-nu) / ((1+nu)(1-2nu))
    np.testing.assert_allclose(r.stress[:, 0], lam_2mu * 1e-3, rtol=1e-13)
    # yield stress from a table: first yield in uniaxial stress at sigma_y(T)
    j2 = from_config({"law": "j2", "E": E, "nu": NU, "sigma_y": {"T": [0.0, 100.0], "value": [300.0, 100.0]}})
    for T, sy in [(25.0, 250.0), (75.0, 150.0)]:
        # strain of a uniaxial stress 0.999 sigma_y(T) (inside), then 1.002 sigma_y(T) (outside)
        below = np.linalg.solve(j2.update(np.zeros((1, 6)), j2.initial_state(1), T, T, 1.0).tangent[0],
                                0.999 * sy * np.array([1.0, 0, 0, 0, 0, 0]))
        above = below * 1.002 / 0.999
        assert j2.update(below[None], j2.initial_state(1), T, T, 1.0).state[0, 12] == 0.0
        assert j2.update(above[None], j2.initial_state(1), T, T, 1.0).state[0, 12] > 0.0


# ------------------------------------------------------------------------------------------
# configuration: table of laws, validation, round trip
# ------------------------------------------------------------------------------------------
def test_law_table_and_round_trip():
    assert {"elastic", "chaboche", "j2", "norton"} <= set(LAWS)
    assert isinstance(from_config({"law": "elastic", "E": E, "nu": NU}), Elastic)
    for law in ("chaboche", "j2", "norton"):
        cfg = {"law": law, "E": E, "nu": NU, "sigma_y": 100.0}
        if law == "norton":
            cfg.update(K=10.0, N=3.0)
        m = from_config(cfg)
        assert isinstance(m, Chaboche) and m.name == law and m.n_state == len(m.state_names) == 13
    rng = np.random.default_rng(1)
    for cfg, _ in TANGENT_CASES.values():
        m = from_config(cfg)
        d = m.to_dict()
        m2 = from_config(d)
        assert m2.to_dict() == d and type(m2) is type(m)
        eps, T = rng.normal(size=(5, 6)) * 3e-3, rng.uniform(0, 1000, 5)
        r1, r2 = (x.update(eps, x.initial_state(5), T, T, 0.1) for x in (m, m2))
        np.testing.assert_array_equal(r1.stress, r2.stress)
        np.testing.assert_array_equal(r1.state, r2.state)


def test_elastic_cumulated_plastic_strain_is_zero():
    m = from_config({"law": "elastic", "E": E, "nu": NU})
    st = m.initial_state(4)
    assert st.shape == (4, 0)
    np.testing.assert_array_equal(m.cumulated_plastic_strain(st), np.zeros(4))


BAD = [
    ({"law": "elastic", "E": -1.0, "nu": NU}, r"'E' must be > 0"),
    ({"law": "elastic", "E": E, "nu": 0.5}, r"'nu' must be in \(-1, 0.5\)"),
    ({"law": "elastic", "E": E, "nu": -1.0}, r"'nu'"),
    ({"law": "elastic", "nu": NU}, r"missing required parameter 'E'"),
    ({"law": "elastic", "E": E, "nu": NU, "Young": 3.0}, r"unknown parameter\(s\) \['Young'\]"),
    ({"law": "j2", "E": E, "nu": NU}, r"missing required parameter 'sigma_y'"),
    ({"law": "j2", "E": E, "nu": NU, "sigma_y": 1.0, "K": 3.0}, r"unknown parameter\(s\) \['K'\]"),
    ({"law": "chaboche", "E": E, "nu": NU, "sigma_y": 1.0, "K": 3.0, "N": 0.5}, r"'N' must be >= 1"),
    ({"law": "norton", "E": E, "nu": NU, "N": 3.0}, r"missing required parameter 'K'"),
    ({"law": "norton", "E": E, "nu": NU, "K": 0.0, "N": 3.0}, r"'K' must be > 0"),
    ({"law": "j2", "E": E, "nu": NU, "sigma_y": {"T": [0.0, 0.0], "value": [1.0, 2.0]}},
     r"table 'sigma_y'.*strictly increasing"),
    ({"law": "j2", "E": E, "nu": NU, "sigma_y": {"T": [0.0, 1.0], "value": [1.0]}}, r"table 'sigma_y'.*same length"),
    ({"law": "j2", "E": E, "nu": NU, "sigma_y": {"T": [0.0], "val": [1.0]}}, r"table 'sigma_y'"),
    ({"law": "j2", "E": {"T": [0.0, 100.0], "value": [1.0, -1.0]}, "nu": NU, "sigma_y": 1.0}, r"'E' must be > 0"),
    ({"law": "j2", "E": E, "nu": NU, "sigma_y": "big"}, r"'sigma_y' must be a number"),
    ({"law": "j2", "E": E, "nu": NU, "sigma_y": 1.0, "H": -2.0}, r"'H' must be >= 0"),
    ({"law": "elastic", "E": E, "nu": NU, "alpha": 1e-5}, r"'T_ref' is missing"),
    ({"law": "elastic", "E": E, "nu": NU, "alpha": 1e-5, "T_ref": {"T": [0.0], "value": [1.0]}},
     r"'T_ref' must be a number"),
    ({"law": "plasticine", "E": E}, r"unknown law 'plasticine'"),
    ({"E": E}, r"missing key 'law'"),
]


@pytest.mark.parametrize("cfg,msg", BAD)
def test_bad_parameters_raise_naming_the_key(cfg, msg):
    with pytest.raises(DdromError, match=msg):
        from_config(cfg)


def test_bad_update_inputs():
    m = from_config({"law": "j2", "E": E, "nu": NU, "sigma_y": 1.0})
    with pytest.raises(DdromError, match="eps must have shape"):
        m.update(np.zeros((3, 3)), m.initial_state(3), 0, 0, 1.0)
    with pytest.raises(DdromError, match="state must have shape"):
        m.update(np.zeros((3, 6)), m.initial_state(2), 0, 0, 1.0)
    with pytest.raises(DdromError, match="T_new"):
        m.update(np.zeros((3, 6)), m.initial_state(3), 0, np.zeros(2), 1.0)


def test_viscosity_table_switches_to_rate_independent_where_K_is_zero():
    base = {"E": E, "nu": NU, "sigma_y": 200.0, "H": 2000.0, "C": 10000.0, "gamma": 80.0}
    mixed = from_config({"law": "chaboche", **base, "K": {"T": [100.0, 200.0], "value": [0.0, 50.0]}, "N": 3.0})
    ri = from_config({"law": "j2", **base})
    vp = from_config({"law": "chaboche", **base, "K": 50.0, "N": 3.0})
    eps = np.random.default_rng(7).normal(size=(6, 6)) * 4e-3
    T = np.array([0.0, 50.0, 100.0, 300.0, 400.0, 500.0])
    r = mixed.update(eps, mixed.initial_state(6), T, T, 0.1)
    r_ri = ri.update(eps, ri.initial_state(6), T, T, 0.1)
    r_vp = vp.update(eps, vp.initial_state(6), T, T, 0.1)
    np.testing.assert_allclose(r.stress[:3], r_ri.stress[:3], rtol=1e-12)
    np.testing.assert_allclose(r.stress[3:], r_vp.stress[3:], rtol=1e-12)
    assert np.all(r.state[:, 12] > 0)


@pytest.mark.parametrize("law", ["j2", "chaboche"])
def test_repeating_a_converged_step_is_stationary(law):
    """Rate-independent: re-running the update from the converged state at the same strain
    changes nothing (the point is on the yield surface, dp = 0 to round-off)."""
    cfg = {"law": law, "E": E, "nu": NU, "sigma_y": 200.0, "H": 1000.0, "C": 30000.0, "gamma": 100.0}
    mat = from_config(cfg)
    eps = np.random.default_rng(2).normal(size=(30, 6)) * 5e-3
    r1 = mat.update(eps, mat.initial_state(30), 0, 0, 1.0)
    assert np.all(r1.state[:, 12] > 0)
    r2 = mat.update(eps, r1.state, 0, 0, 1.0)
    np.testing.assert_allclose(r2.stress, r1.stress, rtol=0, atol=1e-9 * np.abs(r1.stress).max())
    np.testing.assert_allclose(r2.state[:, 12], r1.state[:, 12], rtol=1e-12)


def test_return_map_converges_for_tiny_plastic_increments():
    """Regression: points with dp ~ 1e-14 stalled (Newton step floored by round-off) until maxit."""
    mat = from_config({"law": "chaboche", "E": 200e3, "nu": 0.3, "sigma_y": 200.0, "H": 1000.0,
                        "C": 40000.0, "gamma": 150.0})
    eps = np.array([[ 1.5701513145518538e-03, -5.4328845865190319e-04, -5.9133341246054357e-04,  3.9406829292570889e-05,
  -1.6329606281816091e-06,  3.6232101378808263e-07],
 [ 1.6771412347791376e-03, -6.0482395767794627e-04, -6.2953901475090029e-04,  2.1846145103021457e-06,
  -2.0055872404068471e-06, -2.1488307323301554e-07],
 [ 1.8229870375772563e-03, -7.2163374109787464e-04, -6.4400875072254560e-04,  8.3448569447698920e-05,
  -1.8204806017712227e-06, -1.3647635697969186e-06],
 [ 1.9022936821152712e-03, -7.7337493025324581e-04, -6.5879597318901787e-04,  2.7242866784821240e-05,
  -1.0530463019285858e-05, -2.1806039446009909e-06],
 [ 1.5643615418871278e-03, -5.2421593249104572e-04, -5.8676620824614403e-04,  2.0939529559243445e-06,
  -1.4749053017107188e-05,  3.4897292850192760e-07],
 [ 1.6142689598372946e-03, -5.4177019751590837e-04, -6.1389649074208928e-04,  4.2940081400065283e-06,
  -2.6646863270763429e-05, -6.0040680560950396e-07]])
    state = np.array([[ 4.7913763781350072e-04, -2.3149143216672017e-04, -2.4764620564678066e-04,  1.3250265659852864e-05,
  -5.4907140057616724e-07,  1.2182786334876439e-07,  1.1919929624218039e+01, -5.7590165377715552e+00,
  -6.1609130864464863e+00,  3.2963854580156460e-01, -1.3659733523347787e-02,  3.0308192109745500e-03,
   4.7935073322765521e-04],
 [ 5.6950755253090300e-04, -2.8015261070885982e-04, -2.8935494182204307e-04,  8.1341289542570806e-07,
  -7.4675441139241035e-07, -8.0008927255081985e-08,  1.3991568924995592e+01, -6.8827437754440899e+00,
  -7.1088251495515005e+00,  1.9983795720095333e-02, -1.8346140925803566e-02, -1.9656463120279579e-03,
   5.6953305184609187e-04],
 [ 6.9309032628371093e-04, -3.6264808997726270e-04, -3.3044223630644822e-04,  3.4621999979826909e-05,
  -7.5529969476775495e-07, -5.6622712760911030e-07,  1.6739986586291078e+01, -8.7589220791958606e+00,
  -7.9810645070952191e+00,  8.3621397280277354e-01, -1.8242509352044200e-02, -1.3675900761440768e-02,
   6.9391617316061859e-04],
 [ 7.5832710121299094e-04, -4.0405156069081414e-04, -3.5427554052217680e-04,  1.1834995893505934e-05,
  -4.5747016105396601e-06, -9.4730995027379504e-07,  1.8155238556487362e+01, -9.6734673753963598e+00,
  -8.4817711810910001e+00,  2.8334365660670074e-01, -1.0952371203830535e-01, -2.2679709200218015e-02,
   7.5894255696630410e-04],
 [ 4.6891568521593399e-04, -2.2408065697920190e-04, -2.4483502823673207e-04,  6.9477992830831886e-07,
  -4.8937805360368495e-06,  1.1579027519115827e-07,  1.1682409810256207e+01, -5.5826711451910507e+00,
  -6.0997386650651553e+00,  1.7309516628134323e-02, -1.2192202467509838e-01,  2.8847605006058507e-03,
   4.6908613064120935e-04],
 [ 5.1074531881836890e-04, -2.4276894793002986e-04, -2.6797637088833904e-04,  1.5007131671034514e-06,
  -9.3128139951956850e-06, -2.0983620767479360e-07,  1.2650215822664913e+01, -6.0129373157276360e+00,
  -6.6372785069372791e+00,  3.7169886345105915e-02, -2.3066115853614891e-01, -5.1972543197006914e-03,
   5.1101069969500539e-04]])
    T = np.full(6, 20.0)
    r = mat.update(eps, state, T, T, 1.0)
    dp = r.state[:, 12] - state[:, 12]
    assert np.all(dp >= 0) and np.all(dp < 1e-12)


def test_return_map_converges_barely_past_yield():
    """Regression: a trial overstress of ~1e-11 MPa (dp ~ 2e-16) alternated between two floats."""
    m = from_config({"law": "j2", "E": 200e3, "nu": 0.3, "sigma_y": 250.0, "H": 1500.0, "alpha": 1.2e-5,
                     "T_ref": 20.0})
    eps = np.array([[-4.5621371464678699e-03, 3.0023369832027874e-03, 3.2050627511506576e-03,
                     -9.5479874747107958e-05, 9.9201805218793269e-05, -6.0210285311994077e-05]])
    st = np.array([[-4.0018087741143359e-03, 1.9215324519895715e-03, 2.0802763221247642e-03,
                    -7.4765260434245045e-05, 7.7679708130833308e-05, -4.7147502801994689e-05,
                    0, 0, 0, 0, 0, 0, 4.0040110616950128e-03]])
    T = np.array([115.01070762071886])
    r = m.update(eps, st, T, T, 0.0078125)
    assert 0 <= r.state[0, 12] - st[0, 12] < 1e-14


def test_update_in_chunks_equals_one_call():
    """Chunks of points give the same stresses, states and tangents, bit for bit, as one
    call (the laws are pointwise), with per-point temperatures and context arrays sliced."""
    from ddrom.materials import MaterialContext, update_in_chunks

    rng = np.random.default_rng(3)
    cfg = {"E": 200e3, "nu": 0.3, "sigma_y": 200.0, "H": 1000.0, "C": 40000.0, "gamma": 150.0}
    law = Chaboche(cfg)
    n = 53
    eps = rng.standard_normal((n, 6)) * 2e-3
    state = law.initial_state(n)
    T_old, T_new = 20.0 + rng.random(n), 25.0 + rng.random(n)
    seen = []

    class Recording(Chaboche):
        def update(self, eps, state_old, T_old, T_new, dt, tangent=True, context=None):
            seen.append((len(eps), None if context is None else context.element.copy()))
            return super().update(eps, state_old, T_old, T_new, dt, tangent=tangent, context=context)

    rec = Recording(cfg)
    ctx = MaterialContext(time=1.0, element=np.arange(n) // 8, point=np.arange(n) % 8)
    whole = law.update(eps, state, T_old, T_new, 1.0, tangent=True)
    assert np.count_nonzero(law.cumulated_plastic_strain(whole.state)) > 10
    for T0, T1 in ((T_old, T_new), (20.0, 25.0)):
        ref = law.update(eps, state, T0, T1, 1.0, tangent=True)
        seen.clear()
        got = update_in_chunks(rec, eps, state, T0, T1, 1.0, tangent=True, context=ctx, chunk=10)
        assert [s for s, _ in seen] == [10, 10, 10, 10, 10, 3]
        assert np.array_equal(np.concatenate([e for _, e in seen]), ctx.element)
        for a in ("stress", "state", "tangent"):
            assert np.array_equal(getattr(got, a), getattr(ref, a)), a
    assert update_in_chunks(law, eps, state, T_old, T_new, 1.0, tangent=False, chunk=10).tangent is None
    # on_tangent: each block's tangent handed over with its points instead of stored
    ref = law.update(eps, state, T_old, T_new, 1.0, tangent=True)
    for chunk in (10, n):
        fed = []
        got = update_in_chunks(law, eps, state, T_old, T_new, 1.0, tangent=True, chunk=chunk,
                               on_tangent=lambda sl, tan: fed.append((sl, tan.copy())))
        assert got.tangent is None and np.array_equal(got.stress, ref.stress)
        assert [(sl.start, sl.stop) for sl, _ in fed] == [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
        assert np.array_equal(np.concatenate([t for _, t in fed]), ref.tangent)


def test_parameter_bounds_over_temperature_intervals():
    """min / max of a table over [T_lo, T_hi]: at the ends or at a node inside; a constant is itself."""
    p = parse_parameter("chaboche", "sigma_y", {"T": [0.0, 100.0, 200.0, 300.0], "value": [300.0, 320.0, 250.0, 260.0]},
                        Spec())
    lo = np.array([-50.0, 50.0, 90.0, 150.0, 250.0, 0.0, 120.0])
    hi = np.array([20.0, 60.0, 210.0, 150.0, 400.0, 300.0, 180.0])
    vmin, vmax = p.bounds(lo, hi)
    nodes = np.array([0.0, 100.0, 200.0, 300.0])
    dense = [p(np.concatenate([np.linspace(a, b, 2001), nodes[(nodes >= a) & (nodes <= b)]])) for a, b in zip(lo, hi)]
    np.testing.assert_allclose(vmin, [d.min() for d in dense], rtol=0, atol=1e-12)
    np.testing.assert_allclose(vmax, [d.max() for d in dense], rtol=0, atol=1e-12)
    c = parse_parameter("chaboche", "H", 7.0, Spec())
    assert c.bounds(lo, hi)[0].tolist() == [7.0] * 7 and c.bounds(lo, hi)[1].tolist() == [7.0] * 7


@pytest.mark.parametrize("law", ["chaboche", "j2"])
def test_elastic_bound_is_sound(law):
    """Wherever Chaboche's elastic bound holds for a strain and a temperature in the interval,
    the update from that state is elastic (state unchanged, stress independent of dt and T_old);
    and the bound is not vacuous (it holds at some points that are not at rest)."""
    rng = np.random.default_rng(3)
    cfg = {"law": law, "E": {"T": [20.0, 600.0], "value": [200e3, 150e3]}, "nu": {"T": [20.0, 600.0], "value": [0.3, 0.32]},
           "sigma_y": {"T": [20.0, 300.0, 600.0], "value": [250.0, 260.0, 150.0]}, "H": 2000.0, "C": 30e3, "gamma": 200.0}
    if law == "chaboche":
        cfg.update(K=50.0, N=4.0)
    m = from_config(cfg)
    n = 4000
    T0 = rng.uniform(20.0, 600.0, n)
    # states with plastic strain, back stress and p: one plastic step from rest
    eps0 = rng.normal(0.0, 2.5e-3, (n, 6))
    state = m.update(eps0, m.initial_state(n), T0, T0, 1.0, tangent=False).state
    assert np.count_nonzero(state[:, 12] > 0) > n // 4
    T_lo, T_hi = np.minimum(T0, T0 + rng.uniform(-100, 100, n)), np.maximum(T0, T0 + rng.uniform(-100, 100, n))
    b = m.elastic_bound(state, T_lo, T_hi)
    eps = eps0 + rng.normal(0.0, 1.0e-3, (n, 6)) * rng.uniform(0.0, 1.0, (n, 1))
    T = rng.uniform(T_lo, T_hi)
    d = eps - (eps[:, 0] + eps[:, 1] + eps[:, 2])[:, None] / 3.0 * IDENTITY - b.offset
    holds = b.scale * np.sqrt(np.einsum("ij,ij->i", d, d)) < b.slack
    assert 50 < np.count_nonzero(holds) < n
    r1 = m.update(eps[holds], state[holds], T0[holds], T[holds], 0.5, tangent=False)
    r2 = m.update(eps[holds], state[holds], T[holds] - 30.0, T[holds], 5.0, tangent=False)
    np.testing.assert_array_equal(r1.state, state[holds])
    np.testing.assert_array_equal(r1.stress, r2.stress)
    # the elastic law: every update elastic
    e = Elastic({"E": 200e3, "nu": 0.3})
    assert np.all(e.elastic_bound(np.zeros((3, 0)), np.zeros(3), np.ones(3)).slack == np.inf)
