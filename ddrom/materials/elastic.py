"""Isotropic linear thermo-elasticity.

``sigma = C_el(T) : (eps - eps_th)``, ``C_el = 3 K P_sph + 2 G P_dev`` with
``K = E / (3 (1 - 2 nu))``, ``G = E / (2 (1 + nu))``, and the secant thermal strain
``eps_th = alpha(T) (T - T_ref) I``. All parameters are evaluated at ``T_new``.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ddrom.materials.base import ElasticBound, Material, Response, register_law
from ddrom.materials.parameters import Parameter, Spec, parse_parameters, positive
from ddrom.materials.tensors import isotropic_stiffness
from ddrom.parallel.errors import DdromError


def elastic_specs() -> dict[str, Spec]:
    """Keys shared by every law with isotropic thermo-elasticity."""
    return {
        "E": positive(),
        "nu": Spec(None, lambda v: bool(np.all((v > -1.0) & (v < 0.5))), "in (-1, 0.5)"),
        "alpha": Spec(0.0),
        "T_ref": Spec(0.0, table=False),
    }


def check_thermal_keys(law: str, cfg: Mapping[str, Any]) -> None:
    """A thermal expansion coefficient without its reference temperature is an input error."""
    if "alpha" in cfg and "T_ref" not in cfg:
        raise DdromError(f"material '{law}': parameter 'alpha' is given but 'T_ref' is missing"
                         " (reference temperature of zero thermal strain)")


def moduli(params: Mapping[str, Parameter], T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bulk and shear moduli ``(K, G)`` at temperatures ``T``, each ``(n,)``."""
    E, nu = params["E"](T), params["nu"](T)
    return E / (3.0 * (1.0 - 2.0 * nu)), E / (2.0 * (1.0 + nu))


def thermal_strain_trace(params: Mapping[str, Parameter], T: np.ndarray) -> np.ndarray:
    """``tr(eps_th) = 3 alpha(T) (T - T_ref)``, shape ``(n,)``."""
    return 3.0 * params["alpha"](T) * (T - float(params["T_ref"].value))


class Elastic(Material):
    """Isotropic linear elasticity with thermal strain; no internal state."""

    name = "elastic"
    n_state = 0
    linear = True
    state_names: list[str] = []

    def __init__(self, cfg: Mapping[str, Any]):
        check_thermal_keys(self.name, cfg)
        self.params = parse_parameters(self.name, cfg, elastic_specs())

    def update(self, eps, state_old, T_old, T_new, dt, tangent=True, context=None) -> Response:
        eps, state_old, T = self._check_inputs(eps, state_old, T_new)
        K, G = moduli(self.params, T)
        tr = eps[:, 0] + eps[:, 1] + eps[:, 2]
        # sigma = K tr(eps - eps_th) I + 2G dev(eps)
        stress = 2.0 * G[:, None] * eps
        stress[:, :3] += ((K - 2.0 * G / 3.0) * tr - K * thermal_strain_trace(self.params, T))[:, None]
        return Response(stress, np.empty((eps.shape[0], 0)),
                        isotropic_stiffness(K, G) if tangent else None)

    def elastic_bound(self, state, T_lo, T_hi) -> ElasticBound:
        """Every update is elastic (no state): the whole of a replay's window at once."""
        n = np.asarray(T_lo).shape[0]
        return ElasticBound(np.zeros((n, 6)), np.zeros(n), np.full(n, np.inf))

    def to_dict(self) -> dict:
        return {"law": self.name, **{k: p.to_config() for k, p in self.params.items()}}


register_law("elastic")(Elastic)

__all__ = ["Elastic", "elastic_specs", "check_thermal_keys", "moduli", "thermal_strain_trace"]
