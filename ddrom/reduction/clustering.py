"""Physics-informed clustering of snapshots or simulations, and local POD bases, from C only.

Everything is computed from the replicated m x m Gram matrix ``C = S^T M S`` of the
snapshots (formed elsewhere by one distributed reduction) and from ``sims``, the
simulation each snapshot column belongs to. No further pass over the distributed
data is needed: a local basis is returned as coefficients ``W`` (columns of ``S``
combined), and the distributed modes are ``S_loc[:, cols] @ W``, one local matmul.

Two levels of clustering:

* ``"snapshot"``: items are the m columns; dissimilarities ``euclidean``, ``angle``.
* ``"simulation"``: items are the simulations (sets of columns); dissimilarities
  ``grassmann_max``, ``grassmann_rss``, ``grassmann_chordal`` (principal angles
  between the snapshot subspaces; the last one also counts the dimensions one span
  has beyond the other) and ``euclidean_trajectory`` (the Euclidean baseline on the
  concatenated time series).

The dissimilarities are a table (:data:`DISSIMILARITIES`), not an if-chain; a new one
is added with :func:`register_dissimilarity`.

Accuracy: quantities from a Gram matrix are limited by its round-off ``~1e-16 C_ii``:
an angle (or a projection error) below about ``1e-8`` relative is not resolved.
That is far below what matters for choosing clusters.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ddrom.parallel import DdromError
from ddrom.reduction.kmedoids import (
    KMedoidsResult, alternating_kmedoids, canonical_labels, check_n_clusters, kernel_kmeans, pam,
)

__all__ = [
    "check_gram", "agree", "Dissimilarity", "DISSIMILARITIES", "register_dissimilarity",
    "dissimilarity", "euclidean", "angle", "simulation_groups", "orthonormal_coefficients",
    "principal_cosines", "grassmann_max", "grassmann_rss", "grassmann_chordal",
    "euclidean_trajectory",
    "trajectory_kernel", "Clustering", "cluster", "local_pod_coefficients",
    "global_pod_coefficients", "local_bases", "SV_RTOL",
]

#: Default relative cut-off on singular values: a mode of a Gram block with
#: sigma_i <= SV_RTOL * sigma_1 (lambda_i <= SV_RTOL^2 lambda_1) is treated as zero.
#: Below that, lambda_i = sigma_i^2 is dominated by the round-off of C (~1e-16 lambda_1)
#: and Lambda^-1/2 would amplify it into non-orthonormal modes. Same meaning as the
#: ``rtol`` of the POD truncation (sigma_i / sigma_1).
SV_RTOL = 1e-6


# --------------------------------------------------------------------------- validation
def check_gram(C: Any, name: str = "Gram matrix C", rtol_sym: float = 1e-10) -> np.ndarray:
    """Validate a Gram matrix and return it as a symmetric float array.

    Checks: square 2-D, all entries finite, ``max|C - C^T| <= rtol_sym * max|C|``
    (a Gram matrix summed over ranks is symmetric up to round-off), and a
    non-negative diagonal (``C_ii >= -rtol_sym * max|C|``). Returns ``(C + C^T)/2``.

    Raises
    ------
    DdromError
        Naming ``name`` and the offending entry. Since ``C`` is replicated, every rank
        raises the same error without communicating.
    """
    C = np.asarray(C, dtype=float)
    if C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise DdromError(f"{name}: expected a square matrix, got shape {C.shape}")
    if C.shape[0] == 0:
        raise DdromError(f"{name}: empty (no snapshots)")
    bad = ~np.isfinite(C)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise DdromError(f"{name}: {int(bad.sum())} non-finite entries (NaN or Inf), "
                         f"first {C[i, j]} at ({i}, {j})")
    scale = float(np.max(np.abs(C)))
    asym = np.abs(C - C.T)
    if asym.max() > rtol_sym * scale:
        i, j = np.unravel_index(int(np.argmax(asym)), asym.shape)
        raise DdromError(f"{name}: not symmetric: |C[{i},{j}] - C[{j},{i}]| = {asym[i, j]:.3e} "
                         f"> {rtol_sym:g} * max|C| = {rtol_sym * scale:.3e}")
    d = np.diag(C)
    if d.min() < -rtol_sym * scale:
        i = int(np.argmin(d))
        raise DdromError(f"{name}: negative diagonal C[{i},{i}] = {d[i]:.3e}: not a Gram matrix")
    return 0.5 * (C + C.T)


def agree(C: np.ndarray, comm: Any) -> np.ndarray:
    """Broadcast rank 0's ``C`` so that every rank holds bitwise the same matrix.

    ``MPI_Allreduce`` does not promise bitwise identical results on all ranks (the
    summation order may differ), and a clustering is a discrete decision: a tie
    broken differently on one rank would give ranks different bases. One broadcast
    of m^2 doubles removes the risk. Collective.
    """
    from ddrom.parallel import as_mpi

    c = as_mpi(comm)
    C = np.ascontiguousarray(C, dtype=float)
    c.Bcast(C, root=0)
    return C


def _as_sims(sims: Any, m: int, name: str = "sims") -> np.ndarray:
    if sims is None:
        raise DdromError("simulation-level dissimilarity needs `sims`, the simulation of each "
                         "snapshot column")
    sims = np.asarray(sims)
    if sims.shape != (m,):
        raise DdromError(f"{name}: expected one simulation label per snapshot column "
                         f"({m}), got shape {sims.shape}")
    return sims


def simulation_groups(sims: Sequence) -> tuple[np.ndarray, list[np.ndarray]]:
    """Distinct simulation labels (sorted) and the column indices of each, in order."""
    sims = np.asarray(sims)
    names, inv = np.unique(sims, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    bounds = np.searchsorted(inv[order], np.arange(names.size + 1))
    return names, [order[bounds[a]:bounds[a + 1]] for a in range(names.size)]


# ------------------------------------------------------------------ snapshot-level
def euclidean(C: np.ndarray, **_: Any) -> np.ndarray:
    """Euclidean (M-norm) distances between snapshot columns.

    ``d_ij = sqrt(max(C_ii + C_jj - 2 C_ij, 0))``; the diagonal is exactly zero.
    Absolute accuracy ~ ``sqrt(1e-16 max C_ii)``.
    """
    d = np.diag(C).copy()
    D = -2.0 * C                      # in place from here: m^2 temporaries matter at m ~ 1e4
    D += d[:, None]
    D += d[None, :]
    np.maximum(D, 0.0, out=D)
    np.sqrt(D, out=D)
    np.fill_diagonal(D, 0.0)
    return D


def _check_nonzero_columns(d: np.ndarray, what: str, tiny: float = 1e-28) -> None:
    zero = np.flatnonzero(d <= tiny * max(float(d.max()), np.finfo(float).tiny))
    if zero.size:
        shown = ", ".join(map(str, zero[:10])) + (" ..." if zero.size > 10 else "")
        raise DdromError(f"angle dissimilarity: {zero.size} {what} of zero norm ({shown}); "
                         "the angle to a zero vector is undefined: drop these snapshots "
                         "(e.g. the initial state) before clustering")


def angle(C: np.ndarray, **_: Any) -> np.ndarray:
    """Angle-based dissimilarity ``|sin angle(u_i, u_j)|`` between snapshot columns.

    ``delta_ij = sqrt(1 - C_ij^2 / (C_ii C_jj))``, with the squared cosine clipped to
    [0, 1]; it is the relative M-norm error of projecting ``u_i`` onto span{u_j}, and
    is invariant to scaling each snapshot. Resolution ~1e-8 (square root of the
    round-off of C). Raises :class:`DdromError` if a column has zero norm.
    """
    d = np.diag(C).copy()
    _check_nonzero_columns(d, "snapshot columns")
    inv = 1.0 / np.sqrt(d)
    # cosines C_ij (inv_i inv_j), then sines, in place. The scale is the outer product
    # (commutative, so bitwise symmetric) applied in one multiplication: (C_ij inv_i) inv_j
    # and (C_ji inv_j) inv_i round differently, and for nearly parallel snapshots (cos^2 ~
    # 1 - 1e-16) the sqrt(1 - cos^2) turns that last bit into an asymmetry of ~1e-8,
    # which k-medoids rejects as a non-symmetric dissimilarity.
    D = np.multiply.outer(inv, inv)
    D *= C
    np.square(D, out=D)
    np.clip(D, 0.0, 1.0, out=D)
    np.subtract(1.0, D, out=D)
    np.sqrt(D, out=D)
    np.fill_diagonal(D, 0.0)
    return D


# ---------------------------------------------------------------- simulation-level
def orthonormal_coefficients(Cb: np.ndarray, sv_rtol: float = SV_RTOL,
                             n_max: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients of an M-orthonormal basis of span(S_b) from its Gram block ``Cb``.

    ``Cb = V Lambda V^T`` (eigenvalues in decreasing order); keep the ``r`` modes with
    ``sigma_i = sqrt(lambda_i) > sv_rtol * sigma_1`` (at most ``n_max``);
    ``W = V_r Lambda_r^{-1/2}``. Then ``Psi = S_b W`` has ``Psi^T M Psi = W^T Cb W = I``
    and is the POD basis of ``S_b`` (method of snapshots), with singular values
    ``sigma_i``. Each column of ``V`` is signed so that its largest entry is positive
    (results do not depend on LAPACK's arbitrary sign).

    Returns
    -------
    W : (m_b, r) array
    sigma : (r,) array, decreasing
    """
    lam, V = np.linalg.eigh(Cb)
    lam, V = lam[::-1], V[:, ::-1]
    top = lam[0] if lam.size else 0.0
    r = int(np.count_nonzero(lam > sv_rtol ** 2 * top)) if top > 0 else 0
    if n_max is not None:
        r = min(r, int(n_max))
    V = V[:, :r]
    if r:
        idx = np.argmax(np.abs(V), axis=0)
        V = V * np.sign(V[idx, np.arange(r)])
    return V / np.sqrt(lam[:r]), np.sqrt(lam[:r])


def _sim_bases(C: np.ndarray, groups: list[np.ndarray], sv_rtol: float,
               max_dim: int | None = None):
    Ws = []
    for a, cols in enumerate(groups):
        W, _ = orthonormal_coefficients(C[np.ix_(cols, cols)], sv_rtol, n_max=max_dim)
        if W.shape[1] == 0:
            raise DdromError(f"Grassmann dissimilarity: simulation #{a} has only zero "
                             "snapshots: its subspace is empty")
        Ws.append(W)
    return Ws


def principal_cosines(C: np.ndarray, cols_a: np.ndarray, cols_b: np.ndarray,
                      sv_rtol: float = SV_RTOL, max_dim: int | None = None) -> np.ndarray:
    """Cosines of the principal angles between span(S[:, cols_a]) and span(S[:, cols_b]).

    With ``W_a``, ``W_b`` from :func:`orthonormal_coefficients` (each span truncated
    to its POD modes with ``sigma_i > sv_rtol sigma_1``, at most ``max_dim``), the
    cosines are the singular values of ``W_a^T C_ab W_b`` (decreasing, clipped to
    [0, 1]); there are ``min(r_a, r_b)`` of them.
    """
    C = check_gram(C)
    cols_a, cols_b = np.asarray(cols_a), np.asarray(cols_b)
    Wa, Wb = _sim_bases(C, [cols_a, cols_b], sv_rtol, max_dim)
    B = Wa.T @ C[np.ix_(cols_a, cols_b)] @ Wb
    return np.clip(np.linalg.svd(B, compute_uv=False), 0.0, 1.0)


def _grassmann(C: np.ndarray, sims: Any, reduce: Callable[[np.ndarray, int], np.ndarray],
               sv_rtol: float, max_dim: int | None) -> np.ndarray:
    """Pairwise simulation dissimilarity ``reduce(sines, |r_a - r_b|)`` over principal angles.

    ``sines`` (p, min(r_a, r_b)) are the sines of the principal angles of a batch of p
    pairs with the same dimensions (r_a, r_b); ``|r_a - r_b|`` is the number of
    dimensions the larger span has beyond them.

    All blocks ``W_a^T C_ab W_b`` at once: ``T = C[:, cols_b] W_b`` per simulation
    (m x sum r_b in all, O(m^2 r) flops), then ``B[a] = W_a^T T[cols_a]``; the
    singular values are computed in batches of blocks of equal shape.
    """
    _, groups = simulation_groups(_as_sims(sims, C.shape[0]))
    Ws = _sim_bases(C, groups, sv_rtol, max_dim)
    s = len(groups)
    ranks = np.array([W.shape[1] for W in Ws])
    offs = np.concatenate([[0], np.cumsum(ranks)])
    T = np.hstack([C[:, cols] @ W for cols, W in zip(groups, Ws)])       # m x R
    B = np.vstack([W.T @ T[cols] for cols, W in zip(groups, Ws)])        # R x R
    D = np.zeros((s, s))
    iu, ju = np.triu_indices(s, 1)
    shapes = ranks[iu] * (ranks.max() + 1) + ranks[ju]
    for key in np.unique(shapes):
        sel = np.flatnonzero(shapes == key)
        a, b = iu[sel], ju[sel]
        ra, rb = ranks[a[0]], ranks[b[0]]
        ia = offs[a][:, None] + np.arange(ra)                 # (p, ra)
        jb = offs[b][:, None] + np.arange(rb)                 # (p, rb)
        blocks = B[ia[:, :, None], jb[:, None, :]]            # (p, ra, rb)
        cos = np.clip(np.linalg.svd(blocks, compute_uv=False), 0.0, 1.0)
        D[a, b] = reduce(np.sqrt(1.0 - cos ** 2), abs(int(ra) - int(rb)))
    return D + D.T


def grassmann_max(C: np.ndarray, sims: Any = None, sv_rtol: float = SV_RTOL,
                  max_dim: int | None = None, **_: Any) -> np.ndarray:
    """Simulation dissimilarity: sine of the largest principal angle between their spans.

    ``delta_ab = sin theta_max = sqrt(1 - min_i cos_i^2)`` over the ``min(r_a, r_b)``
    principal angles (as ``scipy.linalg.subspace_angles``). It is the largest relative
    error of projecting a unit vector of the smaller span onto the other one. Note it
    is zero when one span contains the other (not a metric across dimensions).

    Each simulation's span is its POD truncated at ``sigma_i > sv_rtol sigma_1`` (at
    most ``max_dim`` modes). With noisy data, raise ``sv_rtol`` (e.g. to the POD
    tolerance) or set ``max_dim``: otherwise the noise directions, nearly orthogonal
    between simulations, make every distance close to 1.
    """
    return _grassmann(C, sims, lambda s, _extra: s.max(axis=-1), sv_rtol, max_dim)


def grassmann_rss(C: np.ndarray, sims: Any = None, sv_rtol: float = SV_RTOL,
                  max_dim: int | None = None, **_: Any) -> np.ndarray:
    """Simulation dissimilarity: root-sum-square of the sines of all principal angles.

    ``delta_ab = sqrt(sum_i sin^2 theta_i)`` (the chordal / projection F-distance
    ``||P_a - P_b||_F / sqrt(2)`` for equal dimensions).
    """
    return _grassmann(C, sims, lambda s, _extra: np.sqrt((s ** 2).sum(axis=-1)), sv_rtol,
                      max_dim)


def grassmann_chordal(C: np.ndarray, sims: Any = None, sv_rtol: float = SV_RTOL,
                      max_dim: int | None = None, **_: Any) -> np.ndarray:
    """Simulation dissimilarity over all ``max(r_a, r_b)`` principal angles.

    ``delta_ab = sqrt(sum_{i <= min(r_a, r_b)} sin^2 theta_i + |r_a - r_b|)``: the
    ``|r_a - r_b|`` directions the larger span has beyond the smaller one count as
    angles of pi/2 (sin^2 = 1). It is the chordal distance between subspaces of
    different dimensions of Ye & Lim (SIAM J. Matrix Anal. Appl. 37, 2016, Table 2),
    equal to ``sqrt((||P_a - P_b||_F^2 + |r_a - r_b|) / 2)`` with ``P`` the M-orthogonal
    projectors, and to :func:`grassmann_rss` when ``r_a = r_b``.

    Unlike :func:`grassmann_max` and :func:`grassmann_rss`, it is not zero when one span
    contains the other: a simulation that activates modes another one does not (a
    plastic correction on top of a shared elastic response) is at distance >= 1 from
    it. Each extra dimension weighs 1 whatever its energy, so the truncation of each
    span (``sv_rtol``, ``max_dim``, see :func:`grassmann_max`) decides what counts as
    a dimension; values lie in ``[0, sqrt(max(r_a, r_b))]``.
    """
    return _grassmann(C, sims, lambda s, extra: np.sqrt((s ** 2).sum(axis=-1) + extra),
                      sv_rtol, max_dim)


def trajectory_kernel(C: np.ndarray, sims: Any) -> np.ndarray:
    """Linear kernel between whole simulations seen as concatenated time series.

    ``K_ab = sum_t C[a_t, b_t]`` where ``a_t`` is the t-th column of simulation a
    (columns in increasing order). All simulations must have the same number of
    snapshots (same time steps), otherwise :class:`DdromError`.
    """
    _, groups = simulation_groups(_as_sims(sims, C.shape[0]))
    lengths = {g.size for g in groups}
    if len(lengths) != 1:
        raise DdromError("euclidean_trajectory: simulations have different numbers of "
                         f"snapshots {sorted(lengths)}; it compares time series step by step")
    G = np.array(groups)                                          # (s, T)
    return C[G[:, None, :], G[None, :, :]].sum(axis=-1) if G.size else np.zeros((0, 0))


def euclidean_trajectory(C: np.ndarray, sims: Any = None, **_: Any) -> np.ndarray:
    """Euclidean baseline between simulations: ``d_ab^2 = sum_t ||u_a,t - u_b,t||_M^2``."""
    return euclidean(trajectory_kernel(C, sims))


# ------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Dissimilarity:
    """An entry of :data:`DISSIMILARITIES`.

    ``func(C, sims=..., **options)`` returns the (n_items, n_items) matrix; ``level``
    says what the items are; ``kernel(C, sims)`` (optional) is the linear kernel whose
    feature-space distance is this dissimilarity, for k-means.
    """

    name: str
    level: str  # "snapshot" | "simulation"
    func: Callable[..., np.ndarray]
    description: str
    kernel: Callable[..., np.ndarray] | None = None


DISSIMILARITIES: dict[str, Dissimilarity] = {}


def register_dissimilarity(d: Dissimilarity) -> Dissimilarity:
    """Add (or replace) an entry of :data:`DISSIMILARITIES`."""
    if d.level not in ("snapshot", "simulation"):
        raise ValueError(f"level must be 'snapshot' or 'simulation', got {d.level!r}")
    DISSIMILARITIES[d.name] = d
    return d


for _d in (
    Dissimilarity("euclidean", "snapshot", euclidean,
                  "M-norm distance between snapshots (classic baseline)",
                  kernel=lambda C, sims=None: C),
    Dissimilarity("angle", "snapshot", angle,
                  "|sin| of the angle between snapshots (scale invariant)"),
    Dissimilarity("grassmann_max", "simulation", grassmann_max,
                  "sin of the largest principal angle between snapshot subspaces"),
    Dissimilarity("grassmann_rss", "simulation", grassmann_rss,
                  "root-sum-square of the sines of the principal angles"),
    Dissimilarity("grassmann_chordal", "simulation", grassmann_chordal,
                  "chordal distance over all max(r_a, r_b) principal angles (extra ones "
                  "pi/2; subspaces of different dimensions)"),
    Dissimilarity("euclidean_trajectory", "simulation", euclidean_trajectory,
                  "M-norm distance between concatenated time series (baseline)",
                  kernel=trajectory_kernel),
):
    register_dissimilarity(_d)


def _lookup(name: str) -> Dissimilarity:
    try:
        return DISSIMILARITIES[name]
    except KeyError:
        raise DdromError(f"unknown dissimilarity {name!r}; known: "
                         f"{', '.join(sorted(DISSIMILARITIES))}") from None


def dissimilarity(C: np.ndarray, name: str = "angle", sims: Any = None,
                  gram_name: str = "Gram matrix C", **options: Any) -> np.ndarray:
    """Dissimilarity matrix ``name`` (a key of :data:`DISSIMILARITIES`) from ``C``.

    Snapshot-level: (m, m). Simulation-level: (s, s), simulations in the sorted order
    of the distinct labels of ``sims``. ``C`` is validated with :func:`check_gram`.
    """
    entry = _lookup(name)
    C = check_gram(C, gram_name)
    if entry.level == "simulation":
        sims = _as_sims(sims, C.shape[0])
    return entry.func(C, sims=sims, **options)


# ------------------------------------------------------------------------ clustering
@dataclass
class Clustering:
    """A partition of the snapshot columns, at snapshot or simulation level.

    Attributes
    ----------
    level : "snapshot" | "simulation"
    labels : (n_items,) int array
        Cluster of each item (columns, or simulations in the order of ``sim_names``).
    medoids : (k,) int array or None
        Item index of each cluster's medoid (None for k-means).
    column_labels : (m,) int array
        Cluster of each snapshot column (equal to ``labels`` at snapshot level).
    sim_names : array or None
        Simulation labels in item order (simulation level), or None.
    dissimilarity, method : str
    cost : float
        k-medoids total dissimilarity or k-means inertia.
    """

    level: str
    labels: np.ndarray
    medoids: np.ndarray | None
    column_labels: np.ndarray
    sim_names: np.ndarray | None
    dissimilarity: str
    method: str
    cost: float
    info: dict = field(default_factory=dict)

    @property
    def n_clusters(self) -> int:
        return int(self.column_labels.max()) + 1

    def columns(self, c: int) -> np.ndarray:
        """Snapshot columns of cluster ``c`` (increasing)."""
        return np.flatnonzero(self.column_labels == c)


METHODS = ("pam", "alternating", "kmeans")


def cluster(C: np.ndarray, k: int, *, dissimilarity: str = "angle", method: str = "pam",
            sims: Any = None, seed: int = 0, n_init: int = 10,
            gram_name: str = "Gram matrix C", D: np.ndarray | None = None,
            **options: Any) -> Clustering:
    """Cluster snapshot columns or simulations from the Gram matrix ``C``.

    Parameters
    ----------
    C : (m, m) array
        Replicated Gram matrix ``S^T M S``.
    k : int
        Number of clusters, ``1 <= k <=`` number of items.
    dissimilarity : str
        Key of :data:`DISSIMILARITIES`; its ``level`` decides whether the items are
        the columns or the simulations (``sims`` needed).
    method : {"pam", "alternating", "kmeans"}
        k-medoids (PAM BUILD+SWAP, or alternating with ``n_init`` restarts), or kernel
        k-means (only for dissimilarities with a kernel: ``euclidean``,
        ``euclidean_trajectory``).
    seed : int
        Seed of the randomized methods (alternating, kmeans); PAM is deterministic.
    D : array, optional
        A precomputed dissimilarity matrix (skips recomputing it for several k).

    Returns
    -------
    Clustering
    """
    entry = _lookup(dissimilarity)
    C = check_gram(C, gram_name)
    m = C.shape[0]
    names = None
    if entry.level == "simulation":
        sims = _as_sims(sims, m)
        names, groups = simulation_groups(sims)
        n_items = names.size
        what = "simulations"
    else:
        n_items, what = m, "snapshots"
    k = check_n_clusters(k, n_items, what)
    if method == "kmeans":
        if entry.kernel is None:
            raise DdromError(f"k-means needs a Euclidean feature space: dissimilarity "
                             f"{dissimilarity!r} has none (use method='pam')")
        res = kernel_kmeans(entry.kernel(C, sims=sims), k, seed=seed, n_init=n_init)
        labels, medoids, cost, n_iter = res.labels, None, res.inertia, res.n_iter
    elif method in ("pam", "alternating"):
        if D is None:
            D = entry.func(C, sims=sims, **options)
        if method == "pam":
            r: KMedoidsResult = pam(D, k)
        else:
            r = alternating_kmedoids(D, k, seed=seed, n_init=n_init)
        labels, medoids, cost, n_iter = r.labels, r.medoids, r.cost, r.n_iter
    else:
        raise DdromError(f"unknown clustering method {method!r}; known: {', '.join(METHODS)}")
    if entry.level == "simulation":
        col_labels = np.empty(m, dtype=int)
        for a, cols in enumerate(groups):
            col_labels[cols] = labels[a]
    else:
        col_labels = labels
    return Clustering(entry.level, np.asarray(labels), medoids, np.asarray(col_labels), names,
                      dissimilarity, method, float(cost), {"n_iter": int(n_iter)})


# ---------------------------------------------------------------------- local bases
def local_pod_coefficients(C: np.ndarray, cols: Sequence[int], N: int, *,
                           sv_rtol: float = SV_RTOL, name: str = "cluster",
                           validate: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """POD basis of the columns ``cols`` by the method of snapshots, as coefficients.

    With ``C_cc = C[cols][:, cols] = V Lambda V^T`` (decreasing), the basis is
    ``Psi = S[:, cols] @ W`` with ``W = V_N Lambda_N^{-1/2}``, M-orthonormal
    (``W^T C_cc W = I``), and ``sigma = sqrt(lambda_1..N)`` its singular values. The
    distributed modes are ``S_loc[:, cols] @ W`` on each rank (one local matmul).

    Modes with ``sigma_i <= sv_rtol * sigma_1`` are not returned (the span is
    exhausted or below the resolution of C), so ``W`` may have fewer than ``N``
    columns.

    Raises
    ------
    DdromError
        If ``cols`` is empty or ``N`` exceeds the number of snapshots ``len(cols)``.
    """
    if validate:
        C = check_gram(C)
    cols = np.asarray(cols, dtype=int)
    if cols.size == 0:
        raise DdromError(f"{name}: empty set of snapshots, no basis to compute")
    if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or N < 1:
        raise DdromError(f"{name}: number of modes must be a positive integer, got {N!r}")
    if N > cols.size:
        raise DdromError(f"{name}: {N} modes requested from {cols.size} snapshots")
    return orthonormal_coefficients(C[np.ix_(cols, cols)], sv_rtol, n_max=N)


def global_pod_coefficients(C: np.ndarray, N: int, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
    """Global POD basis (all m columns) as coefficients; see :func:`local_pod_coefficients`."""
    return local_pod_coefficients(C, np.arange(np.asarray(C).shape[0]), N, name="global basis",
                                  **kw)


def local_bases(C: np.ndarray, clustering: Clustering, N: int, **kw: Any
                ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each cluster: ``(cols, W, sigma)`` with at most ``N`` modes each.

    A cluster with fewer than ``N`` snapshots gets all of its (numerically
    independent) directions.
    """
    C = check_gram(C)
    out = []
    for c in range(clustering.n_clusters):
        cols = clustering.columns(c)
        W, s = local_pod_coefficients(C, cols, min(N, cols.size), name=f"cluster {c}",
                                      validate=False, **kw)
        out.append((cols, W, s))
    return out
