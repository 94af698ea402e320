"""k-medoids on a dissimilarity matrix, and kernel k-means on a Gram (kernel) matrix.

Everything here is serial and works on small replicated matrices (m x m, m = number of
snapshots or simulations). Every rank runs the same code on the same matrix and gets
the same result, so no communication is needed (see
:func:`ddrom.reduction.clustering.agree` for making the matrix bitwise identical).

Determinism: ties are always broken towards the smallest index; random choices (the
k-medoids++ / k-means++ seeding of restarts) come from ``numpy.random.default_rng(seed)``.
The same input and seed give the same partition on every machine and every rank.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ddrom.parallel import DdromError

__all__ = ["KMedoidsResult", "KMeansResult", "pam", "alternating_kmedoids", "kernel_kmeans",
           "check_n_clusters", "canonical_labels"]


@dataclass
class KMedoidsResult:
    """Outcome of a k-medoids run.

    Attributes
    ----------
    medoids : (k,) int array
        Indices of the medoids, in increasing order; cluster ``c`` is the one of
        ``medoids[c]``.
    labels : (n,) int array
        Cluster of each item (``labels[medoids[c]] == c``).
    cost : float
        Total dissimilarity ``sum_j D[j, medoid(j)]``.
    n_iter : int
        Swaps (PAM) or assignment/update sweeps (alternating) performed.
    method : str
    """

    medoids: np.ndarray
    labels: np.ndarray
    cost: float
    n_iter: int
    method: str
    info: dict = field(default_factory=dict)


@dataclass
class KMeansResult:
    """Outcome of kernel k-means.

    Attributes
    ----------
    labels : (n,) int array
        Cluster of each item, clusters numbered by their smallest member index.
    inertia : float
        ``sum_j ||phi(x_j) - mean of its cluster||^2`` in feature space.
    n_iter : int
        Lloyd sweeps of the best restart.
    """

    labels: np.ndarray
    inertia: float
    n_iter: int
    info: dict = field(default_factory=dict)


def check_n_clusters(k: int, n: int, what: str = "items") -> int:
    """Validate a number of clusters ``1 <= k <= n``; raise :class:`DdromError` otherwise."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise DdromError(f"number of clusters must be an integer, got {k!r}")
    k = int(k)
    if k < 1:
        raise DdromError(f"number of clusters must be at least 1, got {k}")
    if k > n:
        raise DdromError(f"cannot make {k} non-empty clusters of {n} {what}: "
                         f"at most {n} clusters are possible")
    return k


def _check_dissimilarity(D: np.ndarray, name: str) -> np.ndarray:
    D = np.asarray(D, dtype=float)
    if D.ndim != 2 or D.shape[0] != D.shape[1]:
        raise DdromError(f"{name}: expected a square matrix, got shape {D.shape}")
    if not np.all(np.isfinite(D)):
        i, j = np.argwhere(~np.isfinite(D))[0]
        raise DdromError(f"{name}: non-finite entry {D[i, j]} at ({i}, {j})")
    scale = max(float(np.max(np.abs(D))) if D.size else 0.0, np.finfo(float).tiny)
    if np.max(np.abs(D - D.T), initial=0.0) > 1e-12 * scale:
        raise DdromError(f"{name}: dissimilarity matrix is not symmetric")
    if np.min(D, initial=0.0) < -1e-12 * scale:
        raise DdromError(f"{name}: dissimilarity matrix has negative entries")
    return D


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters in the order of their first (smallest-index) member.

    Two partitions are equal up to relabelling iff their canonical labels are equal.
    """
    labels = np.asarray(labels)
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first, kind="stable")
    new = np.empty(order.size, dtype=int)
    new[order] = np.arange(order.size)
    return new[np.searchsorted(np.unique(labels), labels)]


def _nearest_two(D: np.ndarray, medoids: np.ndarray):
    """Distance to nearest medoid, index (into medoids) of it, distance to second nearest."""
    Dm = D[:, medoids]                                   # n x k
    if medoids.size == 1:
        near = np.zeros(D.shape[0], dtype=int)
        return Dm[:, 0].copy(), near, np.full(D.shape[0], np.inf)
    part = np.argsort(Dm, axis=1, kind="stable")[:, :2]  # stable: ties -> lower medoid
    rows = np.arange(D.shape[0])
    return Dm[rows, part[:, 0]], part[:, 0], Dm[rows, part[:, 1]]


def _finish(D, medoids, method, n_iter, info=None) -> KMedoidsResult:
    medoids = np.sort(np.asarray(medoids, dtype=int))
    labels = np.argmin(D[:, medoids], axis=1)  # argmin: ties -> lower medoid index
    # A medoid always belongs to its own cluster, even if it duplicates another item.
    labels[medoids] = np.arange(medoids.size)
    cost = float(np.sum(D[np.arange(D.shape[0]), medoids[labels]]))
    return KMedoidsResult(medoids, labels, cost, n_iter, method, info or {})


def _build(D: np.ndarray, k: int) -> np.ndarray:
    """PAM BUILD: greedy medoids, each the item that most decreases the total cost."""
    n = D.shape[0]
    first = int(np.argmin(D.sum(axis=0)))
    medoids = [first]
    dn = D[:, first].copy()
    chosen = np.zeros(n, dtype=bool)
    chosen[first] = True
    for _ in range(1, k):
        # gain(h) = sum_j max(dn_j - D_jh, 0)
        gain = np.maximum(dn[:, None] - D, 0.0).sum(axis=0)
        gain[chosen] = -np.inf
        h = int(np.argmax(gain))
        medoids.append(h)
        chosen[h] = True
        dn = np.minimum(dn, D[:, h])
    return np.array(medoids, dtype=int)


def pam(D: np.ndarray, k: int, *, max_iter: int = 1000, tol: float = 1e-12,
        name: str = "dissimilarity matrix") -> KMedoidsResult:
    """Partitioning Around Medoids: BUILD, then best-improvement SWAP until no swap helps.

    Minimizes ``TD = sum_j min_{c} D[j, m_c]`` over sets of ``k`` medoids. Each SWAP
    iteration evaluates every (medoid ``i``, non-medoid ``h``) exchange in O(n^2)
    with the FastPAM1 decomposition (Schubert & Rousseeuw 2019)::

        dTD(i, h) = sum_j min(D_jh - dn_j, 0)
                  + sum_{j: nearest(j) = i} [min(D_jh, ds_j) - dn_j - min(D_jh - dn_j, 0)]

        (dn_j, ds_j: distances of j to its nearest and second nearest medoid)

    and applies the best one if it lowers TD by more than ``tol * TD``. The result is
    a local optimum for single swaps (the classic PAM guarantee), and deterministic:
    PAM uses no randomness (ties go to the smallest index).

    Parameters
    ----------
    D : (n, n) array
        Symmetric, non-negative dissimilarities, zero diagonal.
    k : int
        Number of clusters, ``1 <= k <= n``.
    max_iter : int
        Maximum number of swaps.
    tol : float
        Relative improvement below which a swap is not made (guards against cycling
        on round-off).

    Returns
    -------
    KMedoidsResult
    """
    D = _check_dissimilarity(D, name)
    n = D.shape[0]
    k = check_n_clusters(k, n)
    medoids = _build(D, k)
    n_iter = 0
    if k == n:
        return _finish(D, medoids, "pam", 0)
    is_med = np.zeros(n, dtype=bool)
    is_med[medoids] = True
    for n_iter in range(1, max_iter + 1):
        dn, near, ds = _nearest_two(D, medoids)
        td = float(dn.sum())
        # shared term: every j moving to h if closer, independent of which medoid leaves
        shared = np.minimum(D - dn[:, None], 0.0).sum(axis=0)          # (n,) over h
        delta = np.tile(shared, (k, 1))                                 # (k, n)
        for i in range(k):
            rows = np.flatnonzero(near == i)
            if rows.size == 0:
                continue
            Dr = D[rows]                                                # |rows| x n
            dnr, dsr = dn[rows, None], ds[rows, None]
            # if medoid i leaves, its members go to h or to their second medoid
            delta[i] += (np.minimum(Dr, dsr) - dnr - np.minimum(Dr - dnr, 0.0)).sum(axis=0)
        delta[:, is_med] = np.inf
        i, h = np.unravel_index(int(np.argmin(delta)), delta.shape)
        if not delta[i, h] < -tol * max(td, np.finfo(float).tiny):
            n_iter -= 1
            break
        is_med[medoids[i]] = False
        is_med[h] = True
        medoids[i] = h
    return _finish(D, medoids, "pam", n_iter)


def _kmedoids_pp(D: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-medoids++ seeding: next medoid drawn with probability proportional to dn^2."""
    n = D.shape[0]
    medoids = [int(rng.integers(n))]
    dn = D[:, medoids[0]].copy()
    for _ in range(1, k):
        w = dn ** 2
        total = w.sum()
        if total <= 0.0:  # all remaining items coincide with medoids: take the first free one
            free = np.setdiff1d(np.arange(n), medoids)
            h = int(free[0])
        else:
            h = int(rng.choice(n, p=w / total))
        medoids.append(h)
        dn = np.minimum(dn, D[:, h])
    return np.array(medoids, dtype=int)


def alternating_kmedoids(D: np.ndarray, k: int, *, seed: int = 0, n_init: int = 10,
                         init: str = "k-medoids++", max_iter: int = 300,
                         name: str = "dissimilarity matrix") -> KMedoidsResult:
    """Alternating (Voronoi iteration) k-medoids, best of ``n_init`` seeded restarts.

    Each sweep assigns every item to its nearest medoid, then replaces each medoid by
    the member of its cluster minimizing the sum of dissimilarities to the other
    members; stops when the medoids no longer change. Cheaper per sweep than PAM but
    may stop in a worse local optimum, hence the restarts.

    Parameters
    ----------
    D : (n, n) array
        Symmetric, non-negative dissimilarities.
    k : int
        Number of clusters.
    seed : int
        Seed of ``numpy.random.default_rng`` for the k-medoids++ seeding.
    n_init : int
        Number of restarts (ignored with ``init="build"``, which is deterministic).
    init : {"k-medoids++", "build"}
        Seeding: randomized k-medoids++ or PAM's greedy BUILD.

    Returns
    -------
    KMedoidsResult
        The restart of lowest cost (first one on ties).
    """
    D = _check_dissimilarity(D, name)
    n = D.shape[0]
    k = check_n_clusters(k, n)
    if init not in ("k-medoids++", "build"):
        raise DdromError(f"alternating k-medoids: unknown init {init!r} (k-medoids++, build)")
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(1 if init == "build" else max(1, n_init)):
        medoids = _build(D, k) if init == "build" else _kmedoids_pp(D, k, rng)
        it = 0
        for it in range(1, max_iter + 1):
            res = _finish(D, medoids, "alternating", it)
            new = np.empty(k, dtype=int)
            for c in range(k):
                members = np.flatnonzero(res.labels == c)
                within = D[np.ix_(members, members)].sum(axis=0)
                new[c] = members[int(np.argmin(within))]
            if np.array_equal(np.sort(new), res.medoids):
                break
            medoids = new
        res = _finish(D, medoids, "alternating", it)
        if best is None or res.cost < best.cost * (1 - 1e-12):
            best = res
    return best


def _kernel_sqdist_to_centroids(K: np.ndarray, diag: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """Squared feature-space distances of every item to every cluster mean.

    ``||phi_j - mu_c||^2 = K_jj - 2/|c| sum_{l in c} K_jl + 1/|c|^2 sum_{l,l' in c} K_ll'``
    with ``Z`` the (n, k) one-hot membership matrix.
    """
    sizes = Z.sum(axis=0)
    KZ = K @ Z                                             # n x k
    within = np.einsum("lc,lc->c", Z, KZ)                  # sum_{l,l' in c} K_ll'
    with np.errstate(divide="ignore", invalid="ignore"):
        d2 = diag[:, None] - 2.0 * KZ / sizes + within / sizes ** 2
    d2[:, sizes == 0] = np.inf
    return np.maximum(d2, 0.0)


def kernel_kmeans(K: np.ndarray, k: int, *, seed: int = 0, n_init: int = 10,
                  max_iter: int = 300, name: str = "kernel matrix") -> KMeansResult:
    """Lloyd's k-means in the feature space of a positive semi-definite kernel ``K``.

    With the linear kernel ``K = C = S^T M S`` this is exactly Euclidean k-means of
    the snapshot columns in the M inner product of the full space, computed from
    ``C`` alone (no pass over the distributed snapshots). Each restart is seeded by
    k-means++ on the distances ``d_ij^2 = K_ii + K_jj - 2 K_ij``; an emptied cluster is
    re-seeded with the item farthest from its centre (as scikit-learn does). The
    restart of lowest inertia is kept.

    Parameters
    ----------
    K : (n, n) array
        Symmetric positive semi-definite kernel.
    k : int
        Number of clusters.
    seed : int
        Seed of ``numpy.random.default_rng``; same seed, same partition.
    n_init : int
        Number of k-means++ restarts.

    Returns
    -------
    KMeansResult
        Labels numbered by smallest member (see :func:`canonical_labels`).
    """
    K = np.asarray(K, dtype=float)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise DdromError(f"{name}: expected a square matrix, got shape {K.shape}")
    n = K.shape[0]
    k = check_n_clusters(k, n)
    diag = np.diag(K).copy()
    D2 = np.maximum(diag[:, None] + diag[None, :] - 2.0 * K, 0.0)
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(max(1, n_init)):
        centers = _kmedoids_pp(np.sqrt(D2), k, rng)
        labels = np.argmin(D2[:, centers], axis=1)
        labels[centers] = np.arange(k)
        it = 0
        for it in range(1, max_iter + 1):
            Z = np.zeros((n, k))
            Z[np.arange(n), labels] = 1.0
            d2 = _kernel_sqdist_to_centroids(K, diag, Z)
            empty = np.flatnonzero(Z.sum(axis=0) == 0)
            for c in empty:
                # re-seed an empty cluster with the item farthest from its current centre
                far = int(np.argmax(d2[np.arange(n), labels]))
                labels[far] = c
                Z[:] = 0.0
                Z[np.arange(n), labels] = 1.0
                d2 = _kernel_sqdist_to_centroids(K, diag, Z)
            new = np.argmin(d2, axis=1)
            if np.array_equal(new, labels):
                break
            labels = new
        Z = np.zeros((n, k))
        Z[np.arange(n), labels] = 1.0
        d2 = _kernel_sqdist_to_centroids(K, diag, Z)
        inertia = float(d2[np.arange(n), labels].sum())
        if best is None or inertia < best.inertia * (1 - 1e-12):
            best = KMeansResult(canonical_labels(labels), inertia, it)
    return best
