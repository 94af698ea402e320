"""Consistency of imported displacements with the case: the equilibrium residual they leave.

A displacement history computed by another solver is only worth a ROM of the *case* if
it solves the case's problem: same element technology (B-bar or full integration), same
material law and parameters, same loads and boundary conditions, same units. The stress
comparison of an import cannot see all of that (B-bar changes only the volumetric part of
the stress; a wrong load changes no stress-strain relation). Equilibrium can: for each
step, the stress replayed along the imported history (:mod:`ddrom.hf.replay`) gives the
internal forces, and

    r = f_int(sigma(u_0 .. u_k)) - f_ext(t_k)      at the free DOFs

must vanish up to the data's precision, exactly as it does for ddrom's own HF solution
(whose Newton stops at ``||r|| <= rtol max(||f_int||, ||f_ext||) + atol``). The check
reports

    relative        = ||r_free|| / ||f_ext||          (||r_free|| / ||R|| without external forces)
    solver_relative = ||r_free|| / max(||f_int||, ||f_ext||)

``R`` the reactions (``f_int`` at the Dirichlet DOFs). ``relative`` reads as the relative
error of the model: a load off by 20 % leaves 0.2, a Young's modulus off by 10 % about
0.1 (on a load-driven problem). ``solver_relative`` is on the scale of the HF solver's
convergence test, which a converged HF solution bounds by ``rtol`` (``f_int`` over all
DOFs holds the reactions, often larger than the loads). Also reported: the largest
deviation of the displacement from the case's Dirichlet values at the constrained DOFs
(relative to the largest displacement) and where the residual is largest. The assembly is the HF solver's (:meth:`HFSolver.force_residual`,
:meth:`HFSolver.external_force`): nothing is re-implemented here, and everything is
computed in parallel on the distributed mesh (norms by one reduction; the location of
the largest residual by one small ``allgather``).

What sizes to expect: ddrom's own solution has ``relative`` of the order of the solver's
``rtol``; data printed with ``d`` significant digits (CalculiX's ``.frd``: 6) leave
roughly ``10^-d`` times the condition of the strains (measured ~1e-4 on a C3D8
cantilever); a wrong element technology, a 10 % error on Young's modulus or on the load
leave residuals of several percent. Choosing the tolerance and wording the verdict for
the user is the caller's (``ddrom import``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ddrom.hf.replay import Replayer
from ddrom.parallel import as_mpi


@dataclass
class EquilibriumResidual:
    """The equilibrium residual of one step (same on every rank).

    Attributes
    ----------
    t : float
    relative : float
        ``residual / external``, or ``residual / reaction`` when there are no external
        forces (0 when both vanish, ``inf`` when only the scale does).
    solver_relative : float
        ``residual / reference``.
    residual : float
        ``||f_int - f_ext||`` over the free DOFs.
    reference : float
        ``max(||f_int||, ||f_ext||)`` over all DOFs (the HF solver's convergence scale).
    external : float
        ``||f_ext||``.
    reaction : float
        ``||f_int||`` over the Dirichlet DOFs (the reactions).
    dirichlet_mismatch : float
        ``max |u - u_D|`` over the Dirichlet DOFs divided by ``max |u|`` (0 for a zero field).
    worst_node : int
        Natural id of the node of the largest residual entry (-1 when the residual is 0).
    worst_component : int
        Its component (0, 1, 2).
    worst_position : tuple of float
        Its coordinates.
    noise : float
        The part the data's precision explains: the norm of the free-DOF internal forces of
        a stress noise given to :meth:`EquilibriumCheck.residual` (the replay along the
        displacement plus its rounding error, :class:`ReplayNoise`), relative to the same
        scale as ``relative`` (0 without one).
    """

    t: float
    relative: float
    solver_relative: float
    residual: float
    reference: float
    external: float
    reaction: float
    dirichlet_mismatch: float
    worst_node: int = -1
    worst_component: int = -1
    worst_position: tuple = ()
    noise: float = 0.0

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


class EquilibriumCheck:
    """Equilibrium residuals of given displacements under the formulation, law and loads of
    an :class:`~ddrom.hf.solver.HFSolver` (its element technology, material and loads are
    the case's; build it as for an HF run).

    Collective: every method is called by every rank of the solver's communicator.
    """

    def __init__(self, solver: Any):
        self.solver = solver
        self.dm = solver.dm
        self._c = as_mpi(solver.comm)

    def residual(self, t: float, u_owned: np.ndarray, stress: np.ndarray,
                 stress_noise: np.ndarray | None = None) -> EquilibriumResidual:
        """The residual at time ``t`` of the owned displacement ``u_owned`` (n_owned, 3) and the
        stress ``stress`` (ne, nq, 6) at the integration points (e.g. replayed along the history).

        ``stress_noise`` (ne, nq, 6): a perturbation of the stress the data's precision explains
        (:meth:`ReplayNoise.step`); the norm of its free-DOF internal forces is ``noise``."""
        from mpi4py import MPI

        s, dm, c = self.solver, self.dm, self._c
        nown = 3 * dm.n_owned
        shape = (dm.n_cells, dm.n_qp, 6)
        fext = s.sum_to_owned(s.external_force(t))
        r, ref, fint = s.force_residual(np.asarray(stress).reshape(shape), fext)
        fixed = s.fixed[:nown]
        rn = np.zeros(0)
        if stress_noise is not None:
            rn = s.force_residual(np.asarray(stress_noise).reshape(shape), np.zeros(nown))[0]
        norms = np.array([float(r @ r), float(fext @ fext), float(fint[fixed] @ fint[fixed]), float(rn @ rn)])
        c.Allreduce(MPI.IN_PLACE, norms, op=MPI.SUM)
        res, ext, reac, noise = (math.sqrt(v) for v in norms)
        # the displacement against the case's Dirichlet values at the constrained DOFs
        u = np.asarray(u_owned, dtype=float).reshape(-1)
        uD = np.zeros(s.asm.n_local_dofs)
        uD[:nown] = u
        s.dirichlet_values(uD, t)
        dev = float(np.abs(u[fixed] - uD[:nown][fixed]).max()) if fixed.any() else 0.0
        big = np.array([dev, float(np.abs(u).max()) if u.size else 0.0])
        c.Allreduce(MPI.IN_PLACE, big, op=MPI.MAX)
        mismatch = big[0] / big[1] if big[1] > 0 else (math.inf if big[0] > 0 else 0.0)
        # where the residual is largest (one small allgather)
        loc = (0.0, -1, -1, ())
        if r.size:
            i = int(np.abs(r).argmax())
            node, comp = divmod(i, 3)
            loc = (float(abs(r[i])), int(dm.node_natural[node]), comp, tuple(float(x) for x in dm.coords[node]))
        best = max(c.allgather(loc), key=lambda v: (v[0], -v[1]))
        def ratio(a: float, b: float) -> float:
            return a / b if b > 0 else (0.0 if a == 0 else math.inf)

        worst = best if best[0] > 0 else (0.0, -1, -1, ())
        scale = ext if ext > 0 else reac
        return EquilibriumResidual(float(t), ratio(res, scale), ratio(res, ref), res, ref, ext,
                                   reac, float(mismatch), worst[1], worst[2], worst[3], ratio(noise, scale))

    def series(self, times: Sequence[float], displacement: Callable[[int], np.ndarray],
               replayer: Replayer | None = None) -> list[EquilibriumResidual]:
        """Replay the material along ``displacement(k)`` (owned (n_owned, 3)) at ``times[k]``
        and return the residual of every step (the first step is the replay's initial state:
        a zero increment at ``times[0]``).

        ``replayer``: a fresh :class:`~ddrom.hf.replay.Replayer` to use (default: one on the
        solver's assembler, material and temperature).
        """
        s = self.solver
        rep = replayer or Replayer(self.dm, s.material, s.loads.temperature, assembler=s.asm)
        out = []
        try:
            for k, t in enumerate(times):
                u = displacement(k)
                st = rep.step(float(t), u, k)
                out.append(self.residual(float(t), u, st.stress))
        finally:
            if replayer is None:
                rep.close()
        return out


class ReplayNoise:
    """The noise the precision of imported displacements leaves in the replayed fields.

    Data printed with ``d`` significant digits are known to half a unit of their last
    digit; strains are differences of neighbouring values, so the replayed stress and
    plastic strain carry a relative noise much larger than ``10^-d`` (CalculiX's 6-digit
    ``.frd``: 1e-4 .. 1e-3 on the stress of a coarse C3D8 cantilever). A POD truncated below
    that level keeps modes of noise. This class measures it directly: the material is
    replayed a second time along the displacement plus one realization of its rounding
    error (:func:`ddrom.io.precision.rounding_noise`: uniform within half a unit of each
    value's last digit, drawn from the natural DOF ids and the step, so the same for any
    number of ranks), and the differences are accumulated in the norms of the offline
    stage's PODs (Euclidean on the DOFs, quadrature-weighted at the integration points).

    Collective: every method is called by every rank.
    """

    def __init__(self, dm: Any, material: Any, temperature: Any, assembler: Any):
        self.dm = dm
        self._c = as_mpi(dm.comm)
        self.rep = Replayer(dm, material, temperature, assembler=assembler)
        self.w = assembler.wdet                                          # (ne, nq) w det J
        self.ids = 3 * np.asarray(dm.node_natural[: dm.n_owned], dtype=np.int64)[:, None] + np.arange(3)
        self._acc = np.zeros(6)            # |du|^2 |u|^2 |ds|^2 |s|^2 |dp|^2 |p|^2 on this rank

    def step(self, k: int, t: float, u_owned: np.ndarray, stress: np.ndarray, p: np.ndarray,
             digits: int | None, epsilon: float = 0.0) -> np.ndarray:
        """Step ``k`` at time ``t``: the owned displacement (n_owned, 3) as read, the replayed
        ``stress`` (ne, nq, 6) and ``p`` (ne, nq) of the unperturbed history, and the
        precision of the values (significant ``digits``, None for binary data of machine
        epsilon ``epsilon``). Returns the stress noise (ne, nq, 6): the perturbed replay's
        stress minus ``stress`` (for :meth:`EquilibriumCheck.residual`)."""
        from ddrom.io.precision import rounding_noise

        u = np.asarray(u_owned, dtype=float).reshape(-1, 3)
        du = rounding_noise(u, self.ids, digits, epsilon, salt=k)
        st = self.rep.step(float(t), u + du, k)
        w = self.w
        ws = w[..., None]
        self._acc += [float(np.sum(du * du)), float(np.sum(u * u)),
                      float(np.sum(ws * (st.stress - stress) ** 2)), float(np.sum(ws * stress ** 2)),
                      float(np.sum(w * (st.p - p) ** 2)), float(np.sum(w * p ** 2))]
        return st.stress - stress

    def totals(self) -> dict:
        """``{quantity: {"noise2": ..., "norm2": ...}}`` summed over the ranks (collective):
        the squared norms of the noise and of the field over all steps so far, for
        ``displacement``, ``stress`` and ``p``. Sums of several simulations combine into
        the relative noise of a snapshot set, ``sqrt(sum noise2 / sum norm2)``."""
        a = self._c.allreduce(self._acc)
        return {q: {"noise2": float(a[2 * i]), "norm2": float(a[2 * i + 1])}
                for i, q in enumerate(("displacement", "stress", "p"))}

    def close(self) -> None:
        self.rep.close()


def relative(entry: dict | None) -> float:
    """``sqrt(noise2 / norm2)`` of a :meth:`ReplayNoise.totals` entry (0 for a zero field)."""
    if not entry or entry.get("norm2", 0.0) <= 0.0:
        return 0.0
    return math.sqrt(entry["noise2"] / entry["norm2"])


__all__ = ["EquilibriumCheck", "EquilibriumResidual", "ReplayNoise", "relative"]
