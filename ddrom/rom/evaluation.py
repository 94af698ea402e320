"""A ROM run against the HF reference: full-field reconstruction and relative errors (distributed).

Reconstruction of step ``k`` of a run (bases of the run's final model)::

    u_k = Phi q_k + sum_d v_d(t_k) chi_d        p_k = Phi_p a_k        sigma_k = Psi b_k

computed on every rank for its owned DOFs and integration points. Errors are relative
space-time L2 norms (quadrature-weighted for the integration-point fields)::

    e_u = sqrt(sum_k ||u_k - u_k^HF||^2 / sum_k ||u_k^HF||^2)

plus, per step, ``||x_k - x_k^HF|| / ||x_k^HF||`` for ``u`` and ``p`` (what the error
indicator is calibrated against). Steps whose HF norm is below ``INDICATOR_FLOOR`` times
the run's largest are ``nan`` (round-off level: no information).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ddrom.parallel import as_mpi
from ddrom.rom.online import INDICATOR_FLOOR


def run_bases(path: Any, dm: Any, model: Any, res: Any) -> tuple[Any, dict]:
    """(model, owned bases on ``dm``) a run ended with: the enriched ones in memory (kept in the
    natural layout, moved to ``dm``'s partition here), else the ROM file's (its local basis for
    a run routed to a cluster)."""
    from ddrom.rom.model import load_bases, load_model

    if getattr(res, "bases", None) is not None:
        out = {}
        for name, nat in res.bases.items():
            nmap = dm.natural_nodes if name == "displacement" else dm.natural_cells
            out[name] = nmap.from_natural(nat).reshape(-1, nat.shape[-1])
        return res.model, out
    cl = res.cluster
    path = getattr(res, "rom_file", None) or path
    m = model if cl is None else load_model(path, dm.comm, local=cl)
    names = ["displacement", "stress"] + (["p"] if m.gappy is not None else [])
    return m, load_bases(path, dm, names, "bases" if cl is None else f"local/{cl:03d}/bases")


class Reconstruction:
    """Full fields of a ROM run on this rank (see the module doc)."""

    def __init__(self, dm: Any, solver: Any, model: Any, bases: dict):
        from ddrom.rom.operators import lifting_fields

        nown = 3 * dm.n_owned
        ne, nq = dm.n_cells, dm.n_qp
        self.model, self.bases, self.shape = model, bases, (ne, nq)
        self.chi = (np.column_stack(lifting_fields(solver))[:nown] if model.E_lift.shape[1]
                    else np.zeros((nown, 0)))
        self.Psi = bases["stress"].reshape(ne * nq * 6, -1)

    def displacement(self, res: Any, k: int) -> np.ndarray:
        """Owned DOFs (3 n_owned,)."""
        return self.bases["displacement"] @ res.q[k] + self.chi @ res.dirichlet[k]

    def plastic_strain(self, res: Any, k: int) -> np.ndarray:
        """(ne * nq,); zero when the training had no plastic strain (no Gappy data)."""
        if "p" not in self.bases or res.p_coeff.shape[1] == 0:
            return np.zeros(self.shape[0] * self.shape[1])
        return self.bases["p"] @ res.p_coeff[k]

    def stress(self, res: Any, k: int) -> np.ndarray:
        """(ne * nq, 6)."""
        return (self.Psi @ res.stress_coeff[k]).reshape(-1, 6)


def compare(dm: Any, solver: Any, model: Any, bases: dict, store: Any, name: str, res: Any) -> dict:
    """Relative errors of run ``res`` against simulation ``name`` of an HF store (collective).

    ``solver`` must carry the loads of the run's parameter point (the lifting). Returns
    ``displacement``, ``plastic_strain``, ``stress`` (space-time) and the per-step lists
    ``u_error_per_step``, ``p_error_per_step``, the run's indicator components
    (``indicator_per_step`` is the p component; ``indicators_per_step`` all of them) and its
    ``times``.
    """
    c = as_mpi(dm.comm)
    rec = Reconstruction(dm, solver, model, bases)
    ne, nq = dm.n_cells, dm.n_qp
    w = solver.asm.wdet.ravel()
    t_hf = store.read_times(name)
    if len(t_hf) != len(res.times) or not np.allclose(t_hf, res.times, rtol=1e-12, atol=1e-12 * abs(t_hf[-1])):
        from ddrom.parallel import CollectiveError

        # comparing other instants would answer another question
        raise CollectiveError(f"{store.path}: simulation {name} was computed at {len(t_hf) - 1} steps up to "
                              f"t = {t_hf[-1]:g}, the ROM run has {len(res.times) - 1} up to t = {res.times[-1]:g}")
    num = {"displacement": 0.0, "plastic_strain": 0.0, "stress": 0.0}
    den = dict.fromkeys(num, 0.0)
    step = []            # per step (u err^2, u norm^2, p err^2, p norm^2) on this rank
    for k in range(len(res.times)):
        u_hf = store.read_displacement(name, k, dm).reshape(-1)
        u_rom = rec.displacement(res, k)
        eu, nu = float(np.sum((u_rom - u_hf) ** 2)), float(np.sum(u_hf ** 2))
        num["displacement"] += eu
        den["displacement"] += nu
        p_hf = store.read_qp(name, "p", k, dm).reshape(-1)
        p_rom = rec.plastic_strain(res, k)
        ep, npp = float(np.sum(w * (p_rom - p_hf) ** 2)), float(np.sum(w * p_hf ** 2))
        num["plastic_strain"] += ep
        den["plastic_strain"] += npp
        step.append((eu, nu, ep, npp))
        s_hf = store.read_qp(name, "stress", k, dm).reshape(ne * nq, 6)
        s_rom = rec.stress(res, k)
        num["stress"] += float(np.sum(w[:, None] * (s_rom - s_hf) ** 2))
        den["stress"] += float(np.sum(w[:, None] * s_hf ** 2))
    out: dict[str, Any] = {"name": name, "times": [float(t) for t in res.times]}
    se = np.array(c.allreduce(np.array(step)))
    out["u_error_per_step"] = _per_step(se[:, 0], se[:, 1])
    out["p_error_per_step"] = _per_step(se[:, 2], se[:, 3])
    ind = getattr(res, "indicators", None) or {"p": res.indicator}
    out["indicators_per_step"] = {k: [float(v) for v in vals] for k, vals in ind.items()}
    out["indicator_per_step"] = out["indicators_per_step"].get("p", [float(v) for v in res.indicator])
    for key in num:
        n, d = c.allreduce(num[key]), c.allreduce(den[key])
        out[key] = math.sqrt(n / d) if d > 0 else (0.0 if n == 0 else math.inf)
    return out


def _per_step(e2: np.ndarray, n2: np.ndarray) -> list[float]:
    """Relative error per step; nan where the reference is below INDICATOR_FLOOR of the run's peak."""
    floor = (INDICATOR_FLOOR ** 2) * n2.max(initial=0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n2 > 0) & (n2 >= floor), np.sqrt(e2 / n2), np.nan).tolist()
