"""The constitutive-law interface and the table of named laws.

Every law is vectorized over ``n`` integration points: one call of
:meth:`Material.update` integrates one time step at all points of a rank (no Python
loop over points). Strains and stresses are Mandel 6-vectors (see
:mod:`ddrom.materials.tensors`); tangents are ``(n, 6, 6)`` matrices in that basis.

Laws are looked up by name in :data:`LAWS` (filled by :func:`register_law`), so that a
new law (or a compiled plugin) is added by registering a factory, without touching
:func:`from_config`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

import numpy as np

from ddrom.parallel.errors import DdromError


class ReturnMappingError(DdromError):
    """The local (per-point) integration did not converge; callers may cut the time step."""


class MaterialError(DdromError):
    """The law stopped the computation (a UMAT called XIT, invalid properties, ...): not
    cured by a smaller step. Callers turn it into an error every MPI rank raises."""


@dataclass
class MaterialContext:
    """Where and when an update happens, for laws that need it (compiled UMATs).

    The built-in laws ignore it. Arrays are per point, aligned with the ``eps`` rows of
    :meth:`Material.update`.

    Attributes
    ----------
    time : float
        Total time at the start of the increment (ddrom's runs are one step: it is the
        step time too).
    coords : (n, 3) array, optional
        Coordinates of the points (reference configuration: small strain).
    element : (n,) int array, optional
        Global (natural, 0-based) id of the cell of each point: the same for any number of
        MPI ranks.
    point : (n,) int array, optional
        Index of each point within its cell, 0-based, in ddrom's quadrature order
        (:data:`ddrom.mesh.reference.CELL_TYPES`; for hexahedra CalculiX's and Abaqus'
        C3D8 order, see :mod:`ddrom.io.calculix`).
    length : (n,) array, optional
        Characteristic length of the cell of each point (cube root of its volume).
    step, increment : int
        Step number (1: ddrom runs one step) and increment number within it (1 for the
        first increment; an increment retried after a cut-back keeps its number, as in
        Abaqus; 0 for the evaluation of the initial state, a zero increment).
    predef, dpred : (n, m) arrays, optional
        Predefined field variables at the start of the increment and their increments
        (none in ddrom's cases today; a caller with such fields passes them).
    """

    time: float = 0.0
    coords: np.ndarray | None = None
    element: np.ndarray | None = None
    point: np.ndarray | None = None
    length: np.ndarray | None = None
    step: int = 1
    increment: int = 1
    predef: np.ndarray | None = None
    dpred: np.ndarray | None = None


@dataclass
class Response:
    """Result of one constitutive update at ``n`` points.

    Attributes
    ----------
    stress : numpy.ndarray
        ``(n, 6)`` Cauchy stress (Mandel) at the end of the step.
    state : numpy.ndarray
        ``(n, n_state)`` internal state at the end of the step (a new array).
    tangent : numpy.ndarray or None
        ``(n, 6, 6)`` consistent (algorithmic) tangent ``d stress / d eps`` of the
        discrete update at fixed temperature and state_old, Mandel basis; ``None``
        when not requested.
    """

    stress: np.ndarray
    state: np.ndarray
    tangent: np.ndarray | None


@dataclass
class ElasticBound:
    """Where an update is provably elastic, per point (:meth:`Material.elastic_bound`).

    An update from the given state, at temperatures within the given interval, whose
    total strain ``eps`` satisfies ``scale ||dev(eps) - offset|| < slack`` (Mandel 2-norm)
    is elastic: it leaves the state unchanged, and its stress depends on ``eps`` and
    ``T_new`` only (not on ``T_old``, ``dt`` or the strain path). ``slack`` already keeps a
    margin against round-off in the law's own yield test. Arrays ``(n, 6)``, ``(n,)``,
    ``(n,)``; ``slack = inf`` for a point that can never yield.
    """

    offset: np.ndarray
    scale: np.ndarray
    slack: np.ndarray


class Material(ABC):
    """A constitutive law, vectorized over integration points.

    Attributes
    ----------
    name : str
        Law name as written in the case file (``"elastic"``, ``"chaboche"`` ...).
    n_state : int
        Number of internal variables per point.
    state_names : list of str
        Names of the ``n_state`` columns of the state array.
    """

    name: str
    n_state: int
    state_names: list[str]
    #: True when the consistent tangent is symmetric (the HF solver then defaults to CG).
    symmetric_tangent: bool = True
    #: True when the stress is linear in the strain at a fixed temperature (elasticity): the
    #: HF solver then evaluates residuals without a tangent and assembles a matrix by a second
    #: (cheap) update only when a solve needs one -- one matrix per linear step, not two.
    linear: bool = False

    def initial_state(self, n: int) -> np.ndarray:
        """Internal state of a virgin material at ``n`` points: zeros ``(n, n_state)``."""
        return np.zeros((n, self.n_state))

    @abstractmethod
    def update(self, eps: np.ndarray, state_old: np.ndarray, T_old: np.ndarray, T_new: np.ndarray,
               dt: float, tangent: bool = True, context: MaterialContext | None = None) -> Response:
        """Integrate one time step at every point.

        Parameters
        ----------
        eps : (n, 6) array
            Total strain at the end of the step (Mandel).
        state_old : (n, n_state) array
            Internal state at the start of the step (not modified).
        T_old, T_new : (n,) arrays or scalars
            Temperature at the start and at the end of the step. Parameters are
            evaluated at ``T_new`` (implicit scheme).
        dt : float
            Time step (used by rate-dependent laws only).
        tangent : bool
            Whether to compute the consistent tangent.
        context : MaterialContext, optional
            Time, position, element and increment of the points (see
            :class:`MaterialContext`); ignored by the built-in laws.

        Raises
        ------
        ReturnMappingError
            The local integration failed; a smaller step may succeed.
        MaterialError
            The law stopped the computation (a smaller step will not help).
        """

    def elastic_bound(self, state: np.ndarray, T_lo: np.ndarray, T_hi: np.ndarray) -> ElasticBound | None:
        """A sufficient condition for elastic updates from ``state``, or None (the default:
        the law offers none, e.g. a compiled UMAT, and every update must be integrated).

        See :class:`ElasticBound`. A replay uses it to integrate once, at the end of a
        window of steps, the points it proves elastic over the whole window.
        """
        return None

    def cumulated_plastic_strain(self, state: np.ndarray) -> np.ndarray:
        """Cumulated plastic strain ``p`` at each point, shape ``(n,)``; zeros for elastic laws."""
        return np.zeros(np.asarray(state).shape[0])

    @abstractmethod
    def to_dict(self) -> dict:
        """Parameters as a case-file table; ``from_config(m.to_dict())`` rebuilds an equal law."""

    # -- helpers shared by the laws ---------------------------------------------------------
    def _check_inputs(self, eps: np.ndarray, state_old: np.ndarray,
                      T_new: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``eps (n,6)``, ``state_old (n,n_state)`` and ``T_new (n,)`` as float arrays."""
        eps = np.asarray(eps, dtype=float)
        if eps.ndim != 2 or eps.shape[1] != 6:
            raise DdromError(f"material '{self.name}': eps must have shape (n, 6), got {eps.shape}")
        n = eps.shape[0]
        state_old = np.asarray(state_old, dtype=float)
        if state_old.shape != (n, self.n_state):
            raise DdromError(f"material '{self.name}': state must have shape {(n, self.n_state)},"
                             f" got {state_old.shape}")
        T = np.asarray(T_new, dtype=float)
        if T.size == 1:
            T = np.full(n, float(T.reshape(())))
        elif T.shape != (n,):
            raise DdromError(f"material '{self.name}': T_new must be a scalar or have shape ({n},),"
                             f" got {T.shape}")
        return eps, state_old, T


#: Points per call of :func:`update_in_chunks`. A vectorized return mapping allocates tens
#: of temporaries of the size of its input (Chaboche: ~3.6 KB per DOF on a whole subdomain,
#: more than every persistent array of the HF solver together); chunks bound them to a few
#: tens of MB whatever the mesh, at no measurable cost per point.
UPDATE_CHUNK = 16384


def _rows(a: Any, sl: slice) -> Any:
    """Rows ``sl`` of a per-point array (a scalar or ``None`` is shared by every chunk)."""
    if a is None or np.ndim(a) == 0 or np.size(a) == 1:
        return a
    return a[sl]


def update_in_chunks(material: "Material", eps: np.ndarray, state_old: np.ndarray, T_old: Any, T_new: Any,
                     dt: float, tangent: bool = True, context: MaterialContext | None = None,
                     chunk: int = UPDATE_CHUNK,
                     on_tangent: Callable[[slice, np.ndarray], None] | None = None) -> Response:
    """:meth:`Material.update` over consecutive blocks of ``chunk`` points.

    Same result as one call (the laws are pointwise), into arrays allocated once: the
    peak memory of the update is its output plus one chunk's temporaries. The context's
    per-point arrays are sliced with the points. An error of any chunk propagates.

    ``on_tangent(points, tangent)``: when given (with ``tangent=True``), each block's
    tangent (m, 6, 6) is handed to it with its slice of points instead of being stored
    (the HF solver assembles it at once); the returned ``tangent`` is then None.
    """
    n = eps.shape[0]
    feed = tangent and on_tangent is not None
    if n <= chunk:
        r = material.update(eps, state_old, T_old, T_new, dt, tangent=tangent, context=context)
        if feed:
            on_tangent(slice(0, n), r.tangent)
            return Response(r.stress, r.state, None)
        return r
    stress = state = tan = None
    for s in range(0, n, chunk):
        sl = slice(s, min(s + chunk, n))
        ctx = None
        if context is not None:
            ctx = replace(context, **{f: _rows(getattr(context, f), sl)
                                      for f in ("coords", "element", "point", "length", "predef", "dpred")})
        r = material.update(eps[sl], state_old[sl], _rows(T_old, sl), _rows(T_new, sl), dt, tangent=tangent,
                            context=ctx)
        if feed:
            on_tangent(sl, r.tangent)
        if stress is None:
            stress = np.empty((n,) + r.stress.shape[1:])
            state = np.empty((n,) + r.state.shape[1:])
            tan = np.empty((n,) + r.tangent.shape[1:]) if r.tangent is not None and not feed else None
        stress[sl], state[sl] = r.stress, r.state
        if tan is not None:
            tan[sl] = r.tangent
    return Response(stress, state, tan)


#: Table of named laws: law name -> factory ``f(cfg) -> Material``.
LAWS: dict[str, Callable[[Mapping[str, Any]], Material]] = {}


def register_law(*names: str) -> Callable:
    """Class/function decorator: register a factory ``f(cfg) -> Material`` under ``names``."""
    def deco(factory):
        for nm in names:
            if nm in LAWS:
                raise ValueError(f"material law '{nm}' registered twice")
            LAWS[nm] = factory
        return factory
    return deco


def from_config(cfg: Mapping[str, Any]) -> Material:
    """Build a law from the case file's ``[material]`` table.

    ``cfg["law"]`` selects the factory in :data:`LAWS`; every other key is a parameter
    of that law (a number or a temperature table), validated by the law.

    Raises
    ------
    DdromError
        Missing or unknown ``law``, or invalid parameters (the message names the key).
    """
    if not isinstance(cfg, Mapping):
        raise DdromError(f"[material] must be a table, got {type(cfg).__name__}")
    law = cfg.get("law")
    if law is None:
        raise DdromError(f"[material]: missing key 'law' (one of {sorted(LAWS)})")
    if law not in LAWS:
        raise DdromError(f"[material]: unknown law {law!r}; available laws: {sorted(LAWS)}")
    return LAWS[law](cfg)
