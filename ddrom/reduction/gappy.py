"""Gappy-POD of dual quantities at the integration points, and its error indicator.

A dual quantity ``p`` (cumulated plastic strain: ``ncomp = 1``; stress in Mandel
notation: ``ncomp = 6``) lives at the integration points. Its POD basis ``Phi`` is
row-distributed like every field of ddrom: rank ``r`` holds the rows of its
integration points, whose global natural ids are ``gid_loc`` (``cell_natural * nq + q``,
int64). For ``ncomp > 1`` the rows of point ``j`` of the rank's block (``gid_loc[j]``)
are ``j * ncomp + c``, ``c = 0 .. ncomp-1`` (point-major, component-minor), i.e.
``Phi_loc.reshape(G_loc, ncomp, N)[j, c]`` is component ``c`` of point ``gid_loc[j]``.
Sampled vectors ``p_I`` follow the same layout over the sample points ``I``:
``p_I.reshape(|I|, ncomp)[i, c]`` is component ``c`` at point ``I[i]``.

Offline (:func:`qdeim_points`) the sample points are chosen by pivoted QR of
``Phi^T`` (Q-DEIM) so that the sampled basis ``Phi_I`` is well conditioned; points
that the ROM evaluates anyway (the ECM reduced points) come first and count toward
the conditioning. :class:`GappyPOD` then holds the small replicated ``Phi_I``
(``|I| ncomp x N``), never the full basis, and online

* ``a = argmin_a ||Phi_I a - p_I||_2``  (:meth:`GappyPOD.fit`, cost ``O(|I| ncomp N)``),
* ``E = ||p_I - Phi_I a||_2 / ||p_I||_2`` (:meth:`GappyPOD.indicator`, ``E = 0`` if
  ``p_I = 0``), the error indicator of docs/ALGORITHMS.md: ~0 while the ROM stays on the
  training manifold (``p`` in the span of ``Phi``), growing when it leaves it. It is
  only informative when the fit is redundant, ``|I| ncomp > N``
  (:attr:`GappyPOD.redundancy` ``> 0``); with exactly ``N`` sampled rows the fit
  interpolates and ``E = 0`` always;
* ``p ~ Phi a`` at all points on demand, in parallel (:meth:`GappyPOD.reconstruct_local`).

Everything here is deterministic and independent of the number of ranks and of the
partition (to round-off): argmax reductions break ties on the global point id.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg

from ddrom.parallel import CollectiveError, DdromError, as_mpi, check_all, collective
from ddrom.parallel.argmax import argmax_with_owner

__all__ = ["qdeim_points", "GappyPOD", "gather_point_rows"]

#: Two pivot values closer than this (relative to the largest) are a tie, broken by
#: the smallest global point id: keeps the selection partition-independent when
#: different row blockings round the scores differently.
TIE_RTOL = 1e-6
#: A sampled basis with a condition number above this is rejected (rank deficient).
MAX_COND = 1e12
#: Relative norm (to the largest point row) below which a row of a point given in
#: ``exclude`` adds no direction to the span phase 1 of :func:`qdeim_points` builds. Those
#: points are not chosen for their residual (e.g. the ECM's): a row that deflates to 1e-8
#: of the scale would count as covering its direction, phase 1 would stop without choosing
#: a point for it and the D-optimal phase would meet ``Phi_I^T Phi_I`` singular to working
#: precision (its eigenvalue ~ norm^2). 1e-6 keeps that eigenvalue >= 1e-12 of the largest.
EXCLUDED_RANK_TOL = 1e-6


# ----------------------------------------------------------------------------- helpers
def _check_basis(Phi_loc: Any, gid_loc: Any, ncomp: int) -> tuple[np.ndarray, np.ndarray]:
    """Local validation (no communication): shapes, finiteness, unique local ids."""
    if int(ncomp) != ncomp or ncomp < 1:
        raise DdromError(f"ncomp must be a positive integer, got {ncomp!r}")
    Phi = np.asarray(Phi_loc, dtype=np.float64)
    gid = np.asarray(gid_loc)
    if Phi.ndim != 2:
        raise DdromError(f"the basis block must be 2-D (rows, modes), got shape {Phi.shape}")
    if gid.ndim != 1 or (gid.size and not np.issubdtype(gid.dtype, np.integer)):
        raise DdromError("gid_loc must be a 1-D array of integer point ids")
    gid = gid.astype(np.int64, copy=False)
    if Phi.shape[0] != gid.size * ncomp:
        raise DdromError(f"the basis block has {Phi.shape[0]} rows, expected "
                         f"{gid.size} points x {ncomp} components = {gid.size * ncomp}")
    if not np.all(np.isfinite(Phi)):
        raise DdromError("the basis contains NaN or Inf")
    if gid.size and gid.min() < 0:
        raise DdromError("negative point id in gid_loc")
    if np.unique(gid).size != gid.size:
        raise DdromError("duplicate point ids in gid_loc")
    return Phi, gid


def _local_positions(gid: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``gid`` of the ``ids`` this rank owns: (mask over ids, positions)."""
    if gid.size == 0 or ids.size == 0:
        return np.zeros(ids.size, dtype=bool), np.zeros(0, dtype=np.int64)
    order = np.argsort(gid, kind="stable")
    pos = np.searchsorted(gid, ids, sorter=order)
    pos = np.minimum(pos, gid.size - 1)
    found = gid[order[pos]] == ids
    return found, order[pos[found]]


def gather_point_rows(X_loc: Any, gid_loc: Any, ids: Any, comm: Any = None,
                      ncomp: int = 1) -> np.ndarray:
    """Replicated rows of a row-distributed array at the points ``ids`` (collective).

    Each owner contributes its rows into a zero array and one ``allreduce`` (sum) makes
    it replicated; a sum with zeros is exact, so the result is bitwise the owner's
    rows. Cost and memory ``O(|ids| ncomp x columns)``, never the full array.

    Parameters
    ----------
    X_loc
        ``(G_loc * ncomp,)`` or ``(G_loc * ncomp, m)``, layout of the module docstring.
    gid_loc
        Global ids of this rank's points, ``(G_loc,)``.
    ids
        Global point ids wanted (replicated, same on every rank), ``(n,)``.

    Returns
    -------
    ``(n * ncomp,)`` or ``(n * ncomp, m)``: rows of point ``ids[i]`` at ``i*ncomp + c``.

    Raises
    ------
    DdromError
        On every rank, if an id is owned by no rank or by several ranks.
    """
    c = as_mpi(comm)
    X = np.asarray(X_loc, dtype=np.float64)
    gid = np.asarray(gid_loc).astype(np.int64, copy=False)
    ids = np.asarray(ids, dtype=np.int64).ravel()
    # Ranks that own no point may pass any empty block: the layout (vector or matrix,
    # number of columns) is agreed on by the ranks that own points.
    nonempty = gid.size > 0
    info = np.array([X.shape[1] if (nonempty and X.ndim == 2) else 0,
                     int(nonempty and X.ndim == 1), int(nonempty and X.ndim == 2),
                     int(nonempty and (X.ndim not in (1, 2) or X.shape[0] != gid.size * ncomp))])
    c.Allreduce(_in_place(), info, op=_mpi_max())
    m, any_vec, any_mat, bad_shape = (int(v) for v in info)
    if bad_shape or (any_vec and any_mat):
        raise DdromError(f"the local blocks must all be (points x {ncomp},) or "
                         f"(points x {ncomp}, m)")
    vec = not any_mat
    m = 1 if vec else m
    X2 = X.reshape(gid.size, ncomp, m) if nonempty else np.zeros((0, ncomp, m))
    found, pos = _local_positions(gid, ids)
    out = np.zeros((ids.size, ncomp, m))
    if pos.size:
        out[found] = X2[pos]
    count = found.astype(np.int64)
    c.Allreduce(_in_place(), out)
    c.Allreduce(_in_place(), count)
    bad = np.flatnonzero(count != 1)
    if bad.size:
        i = bad[0]
        what = "no rank" if count[i] == 0 else f"{count[i]} ranks"
        raise DdromError(f"sample point id {ids[i]} is owned by {what} "
                         f"({bad.size} bad id(s) of {ids.size})")
    out = out.reshape(ids.size * ncomp, m)
    return out[:, 0] if vec else out


def _mpi_max():
    from mpi4py import MPI

    return MPI.MAX


def _in_place():
    from mpi4py import MPI

    return MPI.IN_PLACE


def _orth_against(Q: np.ndarray, B: np.ndarray, tol: float) -> np.ndarray:
    """New orthonormal directions of the rows of ``B`` (c x N) against the columns of ``Q``.

    Classical Gram–Schmidt twice per row (replicated, so every rank computes the same
    bits); a row whose residual is below ``tol`` adds nothing (rank deficient point).
    Returns the new columns, ``(N, k)`` with ``k <= c``.
    """
    new = []
    for b in B:
        v = b.copy()
        for _ in range(2):
            if Q.shape[1]:
                v -= Q @ (Q.T @ v)
            for q in new:
                v -= q * (q @ v)
        nv = np.linalg.norm(v)
        if nv > tol:
            new.append(v / nv)
    return np.array(new).T if new else np.zeros((Q.shape[0], 0))


def _block_gram(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """``X_g Y_g^T`` for every point ``g``: ``(G, c, n) x (G, c, n) -> (G, c, c)``.

    A sum of ``n`` broadcast outer products over contiguous ``(G, c, c)`` arrays:
    numpy's stacked ``matmul`` loops over the tiny ``c x c`` blocks one by one and is
    several times slower for ``n <= c``; for ``n > c`` one ``einsum`` is faster.
    """
    G, c, n = X.shape
    if n > c:
        return np.einsum("gin,gjn->gij", X, Y)
    out = X[:, :, 0, None] * Y[:, None, :, 0]
    for k in range(1, n):
        out += X[:, :, k, None] * Y[:, None, :, k]
    return out


def _dopt_score(M: np.ndarray) -> np.ndarray:
    """``log det(I + M_g)`` per point (``M_g`` for one component: same argmax)."""
    c = M.shape[1]
    if c == 1:
        return M[:, 0, 0].copy()
    if M.shape[0] == 0:
        return np.zeros(0)
    L = np.linalg.cholesky(M + np.eye(c))      # I + M_g is SPD
    return 2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum(axis=1)


def _check_int(name: str, v: Any) -> int:
    if v is None or isinstance(v, (bool, np.bool_)) or int(v) != v or v < 0:
        raise DdromError(f"{name} must be a non-negative integer, got {v!r}")
    return int(v)


# ----------------------------------------------------------------------------- Q-DEIM
def qdeim_points(Phi_loc: Any, gid_loc: Any, comm: Any = None, ncomp: int = 1,
                 n_extra: int | None = None, exclude: Any = None,
                 rank_tol: float = 1e-10) -> np.ndarray:
    """Sample points for Gappy-POD by distributed pivoted QR of ``Phi^T`` (Q-DEIM).

    ``Phi^T`` is ``N x G ncomp`` (short and fat); its columns are the rows of ``Phi``.
    The greedy selection works on POINTS (the ``ncomp`` rows of a point are taken
    together) in two phases:

    1. **Pivoted QR** (Businger–Golub, = Q-DEIM) until the sampled rows span ``R^N``:
       ``Q`` (``N x k``, replicated) is an orthonormal basis of the span of the rows
       sampled so far; each rank keeps its rows deflated, ``r_j = phi_j - Q Q^T phi_j``,
       and point ``g`` scores ``sum_c ||r_{g,c}||^2`` (the squared column norms of the
       deflated ``Phi^T``). The argmax is one reduction on (value, gid, owner); the
       owner broadcasts the point's ``ncomp`` rows, every rank extends ``Q`` by
       Gram–Schmidt twice (dropping directions below ``rank_tol * max_g ||phi_g||``)
       and deflates its rows. For ``ncomp = 1`` without ``exclude`` the first ``N``
       points are the pivots of ``scipy.linalg.qr(Phi.T, pivoting=True)``.
    2. **Oversampling** (only if ``n_extra`` asks for more points than phase 1 needs):
       greedy maximal volume, i.e. D-optimal design for the least-squares fit. With
       ``A = Phi_I^T Phi_I = L L^T`` the point maximizing
       ``log det(I_c + Phi_g A^{-1} Phi_g^T) = log det(A + Phi_g^T Phi_g) - log det A``
       is added (for ``ncomp = 1`` its leverage ``||L^{-1} phi_g||^2``). Phase 1 is
       the same greedy volume maximization while ``A`` is singular, so the two phases
       are one criterion.

    The points of ``exclude`` (e.g. the ECM reduced points, evaluated online anyway)
    are taken first, in the given order, and count toward the span and the volume.

    Parameters
    ----------
    Phi_loc
        This rank's rows of the basis, ``(G_loc * ncomp, N)``; row ``j*ncomp + c`` is
        component ``c`` of point ``gid_loc[j]``. Ranks may own no point.
    gid_loc
        Global natural ids of this rank's points, ``(G_loc,)`` int64, unique.
    comm
        Communicator (mpi4py or PETSc; None = COMM_WORLD).
    ncomp
        Components per point (1: scalar field, 6: Mandel stress).
    n_extra
        Number of points to add to ``exclude``. None: as many as phase 1 needs to make
        ``Phi_I`` full rank (plain Q-DEIM, ``N`` points for ``ncomp = 1`` and no
        ``exclude``); more than that continues with phase 2. Fewer stops early
        (``Phi_I`` may then be rank deficient).
    exclude
        Global ids of points already in the sample set (replicated), or None.
    rank_tol
        Relative threshold below which a deflated row adds no direction.

    Returns
    -------
    Replicated int64 array of the sample point ids: ``exclude`` first, then the chosen
    points in the order of selection.

    Raises
    ------
    DdromError
        On every rank: NaN/Inf, empty basis (``N = 0`` or no point at all), bad ids,
        an ``exclude`` id owned by no rank, more points requested than exist, or a basis
        whose rank at the points is below ``N`` (with ``n_extra=None``).

    Notes
    -----
    Communication per selected point: two scalar allreduces and one broadcast of
    ``ncomp x N`` values. Work per point: ``O(G_loc ncomp N)`` in phase 1,
    ``O(G_loc ncomp^2 N)`` in phase 2 (Sherman–Morrison–Woodbury update of the
    per-point ``ncomp x ncomp`` matrices ``Phi_g A^{-1} Phi_g^T``, recomputed in
    ``O(G_loc ncomp N^2)`` every 16 points).
    """
    c = as_mpi(comm)
    with collective(c, "qdeim_points"):
        Phi, gid = _check_basis(Phi_loc, gid_loc, ncomp)
        ex = np.zeros(0, dtype=np.int64) if exclude is None else np.asarray(exclude).ravel()
        if ex.size and not np.issubdtype(ex.dtype, np.integer):
            raise DdromError("exclude must contain integer point ids")
        ex = ex.astype(np.int64)
        if np.unique(ex).size != ex.size:
            raise DdromError("duplicate point ids in exclude")
        n_req = None if n_extra is None else _check_int("n_extra", n_extra)
        if not (0.0 < rank_tol < 1.0):
            raise DdromError(f"rank_tol must be in (0, 1), got {rank_tol!r}")
    N = c.allreduce(Phi.shape[1], op=_mpi_max())
    check_all(c, Phi.shape[1] == N or gid.size == 0,
              "the basis blocks have different numbers of modes on different ranks")
    G = c.allreduce(int(gid.size))
    check_all(c, N > 0 and G > 0, f"empty basis ({G} points, {N} modes)")
    n_avail = G - ex.size
    if n_req is not None:
        check_all(c, n_req <= n_avail,
                  f"{n_req + ex.size} sample points requested ({ex.size} given + {n_req} "
                  f"extra) but the field has only {G} points")
    # A rank that owns no point holds a (0, 0) block: give it the right width.
    Phi = Phi.reshape(gid.size * ncomp, N)

    P3 = Phi.reshape(gid.size, ncomp, N)
    scale = c.allreduce(float(np.sqrt((P3 ** 2).sum(axis=(1, 2)).max())) if gid.size else 0.0,
                        op=_mpi_max())
    check_all(c, scale > 0.0, "the basis is zero at every point")
    tol = rank_tol * scale

    available = np.ones(gid.size, dtype=bool)
    chosen: list[int] = list(ex)
    rows: list[np.ndarray] = []            # original rows of the chosen points (replicated)
    Q = np.zeros((N, 0))
    R3 = None                               # deflated local rows, formed when phase 1 needs them

    def add_point_rows(B: np.ndarray, tol: float = tol, deflate: bool = True) -> None:
        nonlocal Q
        rows.append(B)
        if Q.shape[1] < N:
            Qn = _orth_against(Q, B, tol)
            Qn = Qn[:, :N - Q.shape[1]]     # R^N holds at most N directions
            if Qn.shape[1]:
                Q = np.hstack([Q, Qn])
                if deflate:
                    # deflate the local rows against the new directions (twice is not
                    # needed here: Q is orthonormal to ~eps, and R only ranks points)
                    R = R3.reshape(-1, N)
                    R -= (R @ Qn) @ Qn.T

    if ex.size:
        B_ex = gather_point_rows(Phi, gid, ex, c, ncomp).reshape(ex.size, ncomp, N)
        _, pos = _local_positions(gid, ex)
        available[pos] = False
        # the excluded points' directions first, the local rows deflated once afterwards
        # (Q's columns are orthonormal: the successive projections are one) and only if
        # phase 1 has directions left to find -- with hundreds of ECM points Q usually
        # spans R^N and phase 1 never looks at the deflated rows (one O(G_loc ncomp N)
        # pass per excluded direction saved)
        for B in B_ex:
            add_point_rows(B, max(tol, EXCLUDED_RANK_TOL * scale), deflate=False)
    if Q.shape[1] < N:
        R3 = P3 - ((P3.reshape(-1, N) @ Q) @ Q.T).reshape(P3.shape) if Q.shape[1] else P3.copy()

    target = n_avail if n_req is None else n_req
    n_new = 0
    while n_new < target and Q.shape[1] < N:
        score = (R3 ** 2).sum(axis=(1, 2))
        score[~available] = -np.inf
        best = argmax_with_owner(c, score, gid, TIE_RTOL)
        g, owner = best.gid, best.owner
        if not best.found or best.value <= tol * tol:
            break                           # no point adds a direction
        B = (np.ascontiguousarray(P3[np.flatnonzero(gid == g)[0]]) if c.rank == owner
                 else np.empty((ncomp, N)))
        c.Bcast(B, root=owner)
        if c.rank == owner:
            available[gid == g] = False
        chosen.append(g)
        add_point_rows(B)
        n_new += 1

    if Q.shape[1] < N and (n_req is None or n_new < n_req):
        raise DdromError(f"the basis has numerical rank {Q.shape[1]} < {N} modes at the "
                         f"{G} integration points (relative tolerance {rank_tol:g}): "
                         "remove the dependent modes")

    if n_req is not None and n_new < n_req:
        # phase 2: greedy D-optimal oversampling (needs A = Phi_I^T Phi_I nonsingular).
        # M_g = Phi_g A^{-1} Phi_g^T (G_loc, c, c) is updated by Sherman-Morrison-Woodbury
        # after each point, O(G_loc c^2 N) instead of O(G_loc c N^2) for a recomputation;
        # it is recomputed every REFRESH points to bound the drift of the downdates.
        REFRESH = 16
        Brows = np.concatenate(rows, axis=0) if rows else np.zeros((0, N))
        A = Brows.T @ Brows
        M = None
        since = 0
        while n_new < n_req:
            try:
                L = np.linalg.cholesky(A)
            except np.linalg.LinAlgError:  # Q spans R^N, but A = Phi_I^T Phi_I squares cond
                # A is built from replicated rows: every rank fails here together
                raise CollectiveError("the sampled basis is numerically singular (condition "
                                      "number > 1e8) before oversampling: the basis is nearly "
                                      "rank deficient at the integration points") from None
            if M is None or since >= REFRESH:
                W = scipy.linalg.solve_triangular(L, Phi.T, lower=True).T
                W = W.reshape(gid.size, ncomp, N)
                M = _block_gram(W, W)
                del W
                since = 0
            score = _dopt_score(M)
            score[~available] = -np.inf
            best = argmax_with_owner(c, score, gid, TIE_RTOL)
            g, owner = best.gid, best.owner
            if not best.found:
                break
            B = (np.ascontiguousarray(P3[np.flatnonzero(gid == g)[0]]) if c.rank == owner
                 else np.empty((ncomp, N)))
            c.Bcast(B, root=owner)
            if c.rank == owner:
                available[gid == g] = False
            chosen.append(g)
            n_new += 1
            if n_new < n_req:
                # (A + B^T B)^{-1} = A^{-1} - Z K^{-1} Z^T,  Z = A^{-1} B^T,  K = I + B Z
                Z = scipy.linalg.cho_solve((L, True), B.T)
                K = np.eye(ncomp) + B @ Z
                Y = (Phi @ Z).reshape(gid.size, ncomp, ncomp)
                T = (Y.reshape(-1, ncomp) @ np.linalg.inv(K)).reshape(Y.shape)
                M -= _block_gram(T, Y)
                since += 1
            A = A + B.T @ B
    return np.asarray(chosen, dtype=np.int64)


# ----------------------------------------------------------------------------- Gappy-POD
class GappyPOD:
    """Least-squares reconstruction of a dual field from its values at sample points.

    Holds the replicated sampled basis ``Phi_I`` (``|I| ncomp x N``, layout of the
    module docstring) and its thin QR ``Phi_I = Q_I R_I``; nothing of size ``G``.

    Parameters
    ----------
    Phi_loc, gid_loc, comm, ncomp
        As in :func:`qdeim_points`.
    sample_ids
        Global point ids of the sample set ``I`` (replicated), e.g. from
        :func:`qdeim_points`. Each owner contributes its rows; one allreduce.

    Attributes
    ----------
    Phi_I : ndarray, ``(|I| ncomp, N)``
    sample_ids : ndarray of int64, ``(|I|,)``
    ncomp, n_modes, n_points
    cond : float
        2-norm condition number of ``Phi_I`` (``sigma_max / sigma_min``).
    redundancy : int
        ``|I| ncomp - N``; the indicator is identically 0 when it is 0.

    Raises
    ------
    DdromError
        On every rank: bad input (see :func:`qdeim_points`), a sample id owned by no
        rank, fewer sampled rows than modes, or ``cond > MAX_COND``.
    """

    def __init__(self, Phi_loc: Any, gid_loc: Any, sample_ids: Any, comm: Any = None,
                 ncomp: int = 1) -> None:
        c = as_mpi(comm)
        with collective(c, "GappyPOD"):
            Phi, gid = _check_basis(Phi_loc, gid_loc, ncomp)
            ids = np.asarray(sample_ids).ravel()
            if ids.size and not np.issubdtype(ids.dtype, np.integer):
                raise DdromError("sample ids must be integers")
            ids = ids.astype(np.int64)
            if ids.size == 0:
                raise DdromError("no sample point")
            if np.unique(ids).size != ids.size:
                raise DdromError("duplicate sample point ids")
        N = c.allreduce(Phi.shape[1], op=_mpi_max())
        check_all(c, Phi.shape[1] == N or gid.size == 0,
                  "the basis blocks have different numbers of modes on different ranks")
        check_all(c, N > 0, "empty basis (0 modes)")
        Phi = Phi.reshape(gid.size * ncomp, N)
        Phi_I = gather_point_rows(Phi, gid, ids, c, ncomp)
        self._setup(Phi_I, ids, int(ncomp))

    @classmethod
    def from_samples(cls, Phi_I: Any, sample_ids: Any, ncomp: int = 1, strict: bool = True) -> "GappyPOD":
        """From the sampled basis itself (replicated; no communication).

        ``strict=False`` accepts a rank-deficient ``Phi_I`` (e.g. a basis whose modes were not
        chosen for these points, such as the stress basis at the ECM points): the fit is then
        the minimum-norm least-squares solution and the residual is measured against the
        numerical range of ``Phi_I`` (its left singular vectors above ``1e-12 sigma_1``).
        """
        self = cls.__new__(cls)
        self._setup(np.asarray(Phi_I, dtype=np.float64), np.asarray(sample_ids).astype(np.int64).ravel(),
                    int(ncomp), strict=strict)
        return self

    # the small replicated part, shared with from_dict
    def _setup(self, Phi_I: np.ndarray, ids: np.ndarray, ncomp: int, strict: bool = True) -> None:
        rows, N = Phi_I.shape
        if N == 0 and strict:
            raise DdromError("empty basis (0 modes)")
        if rows != ids.size * ncomp:
            raise DdromError(f"Phi_I has {rows} rows, expected {ids.size} x {ncomp}")
        if rows < N and strict:
            raise DdromError(f"{ids.size} sample points x {ncomp} components = {rows} rows "
                             f"< {N} modes: the least-squares fit is underdetermined")
        if not np.all(np.isfinite(Phi_I)):
            raise DdromError("the sampled basis contains NaN or Inf")
        s = np.linalg.svd(Phi_I, compute_uv=False) if N else np.zeros(0)
        cond = float(s[0] / s[-1]) if N and s[-1] > 0 else np.inf
        if not cond <= MAX_COND and strict:
            raise DdromError(f"the sampled basis is rank deficient (condition number "
                             f"{cond:.3g} > {MAX_COND:g}): choose the sample points with "
                             "qdeim_points")
        self.Phi_I = Phi_I
        self.sample_ids = ids
        self.ncomp = ncomp
        self.n_modes = N
        self.n_points = int(ids.size)
        self.cond = cond
        self.redundancy = rows - N
        self._pinv = None
        if cond <= MAX_COND:
            self._Q, self._R = np.linalg.qr(Phi_I)
        else:
            # rank deficient (strict=False): the numerical range for the residual, the
            # pseudo-inverse for the minimum-norm coefficients
            U, sv, _ = np.linalg.svd(Phi_I, full_matrices=False)
            keep = sv > 1e-12 * sv[0] if sv.size else np.zeros(0, dtype=bool)
            self._Q, self._R = U[:, keep], None
            self._pinv = np.linalg.pinv(Phi_I, rcond=1e-12) if N else np.zeros((0, rows))

    # ------------------------------------------------------------------ online
    def _as_rows(self, p_I: Any) -> tuple[np.ndarray, bool]:
        """``p_I`` as ``(|I| ncomp, m)`` plus whether it was a single field."""
        p = np.asarray(p_I, dtype=np.float64)
        rows = self.Phi_I.shape[0]
        if self.ncomp > 1 and p.ndim >= 2 and p.shape[:2] == (self.n_points, self.ncomp):
            p = p.reshape((rows,) + p.shape[2:])
        if p.ndim not in (1, 2) or p.shape[0] != rows:
            raise DdromError(f"sampled values of shape {np.shape(p_I)}: expected "
                             f"({rows},) or ({self.n_points}, {self.ncomp}) [x fields]")
        if not np.all(np.isfinite(p)):
            raise DdromError("the sampled values contain NaN or Inf")
        return p.reshape(rows, -1), p.ndim == 1

    def _solve(self, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        QtP = self._Q.T @ P
        a = scipy.linalg.solve_triangular(self._R, QtP) if self._pinv is None else self._pinv @ P
        return a, QtP

    def fit(self, p_I: Any) -> np.ndarray:
        """Reduced coefficients ``a = argmin_a ||Phi_I a - p_I||_2`` (replicated).

        Solved as ``R_I a = Q_I^T p_I`` with the thin QR of ``Phi_I``: backward stable,
        cost ``O(|I| ncomp N)`` per field, independent of the mesh.

        Parameters
        ----------
        p_I
            Values at the sample points in the order of ``sample_ids``: ``(|I| ncomp,)``
            or ``(|I|, ncomp)``; a trailing axis of length ``m`` fits ``m`` fields at once.

        Returns
        -------
        ``(N,)`` or ``(N, m)``.
        """
        P, single = self._as_rows(p_I)
        a, _ = self._solve(P)
        return a[:, 0] if single else a

    def fit_with_indicator(self, p_I: Any) -> tuple[np.ndarray, Any]:
        """:meth:`fit` and :meth:`indicator` with one QR solve."""
        P, single = self._as_rows(p_I)
        a, QtP = self._solve(P)
        E = self._indicator(P, QtP)
        return (a[:, 0], float(E[0])) if single else (a, E)

    def _indicator(self, P: np.ndarray, QtP: np.ndarray, floor: float = 0.0) -> np.ndarray:
        # residual formed explicitly, p - Q (Q^T p), not as sqrt(|p|^2 - |Q^T p|^2):
        # the subtraction of squares loses everything below ~1e-8 relative.
        res = np.linalg.norm(P - self._Q @ QtP, axis=0)
        nrm = np.maximum(np.linalg.norm(P, axis=0), floor)
        return np.divide(res, nrm, out=np.zeros_like(res), where=nrm > 0)

    def indicator(self, p_I: Any, floor: float = 0.0) -> Any:
        """Relative residual of the fit, ``E = ||p_I - Phi_I a||_2 / max(||p_I||_2, floor)``.

        ``E = 0`` when ``p_I = 0``. ``0 <= E <= 1``; ``E`` is 0 up to round-off
        (``~1e-15 cond``) when ``p`` is in the span of ``Phi``. ``floor`` keeps a field at
        round-off level (the onset of plasticity) from reading as a relative residual of
        order one. Returns a float, or an array of ``m`` values for ``m`` fields.
        """
        P, single = self._as_rows(p_I)
        QtP = self._Q.T @ P
        E = self._indicator(P, QtP, floor)
        return float(E[0]) if single else E

    def reconstruct_local(self, a: Any, Phi_loc: Any) -> np.ndarray:
        """This rank's part of the full field ``Phi a`` (no communication).

        Parameters
        ----------
        a
            Coefficients from :meth:`fit`, ``(N,)`` or ``(N, m)``.
        Phi_loc
            This rank's rows of the basis, ``(G_loc ncomp, N)`` (the one ``Phi_I``
            was sampled from).

        Returns
        -------
        ``(G_loc,)`` / ``(G_loc, m)`` for ``ncomp = 1``; ``(G_loc, ncomp)`` /
        ``(G_loc, ncomp, m)`` otherwise.
        """
        a = np.asarray(a, dtype=np.float64)
        Phi = np.asarray(Phi_loc, dtype=np.float64)
        if a.ndim not in (1, 2) or a.shape[0] != self.n_modes:
            raise DdromError(f"coefficients of shape {a.shape}, expected ({self.n_modes},[m])")
        if Phi.ndim != 2 or Phi.shape[1] != self.n_modes or Phi.shape[0] % self.ncomp:
            if not (Phi.size == 0):
                raise DdromError(f"basis block of shape {Phi.shape} does not match "
                                 f"{self.n_modes} modes x {self.ncomp} components")
            Phi = Phi.reshape(0, self.n_modes)
        out = Phi @ a
        if self.ncomp > 1:
            out = out.reshape((Phi.shape[0] // self.ncomp, self.ncomp) + a.shape[1:])
        return out

    def sample_local(self, p_loc: Any, gid_loc: Any, comm: Any = None) -> np.ndarray:
        """Replicated values ``p_I`` of a row-distributed field at the sample points.

        For offline use (calibration, tests): one allreduce of ``|I| ncomp`` values.
        """
        p = np.asarray(p_loc, dtype=np.float64)
        gid = np.asarray(gid_loc)
        if (self.ncomp > 1 and p.ndim >= 2 and gid.size and p.shape[0] == gid.size
                and p.shape[1] == self.ncomp):
            p = p.reshape((gid.size * self.ncomp,) + p.shape[2:])   # (G_loc, ncomp[, m])
        return gather_point_rows(p, gid, self.sample_ids, comm, self.ncomp)

    # ------------------------------------------------------------------ storage
    def to_dict(self) -> dict:
        """Small replicated data for the ROM file (independent of the number of ranks)."""
        return {"kind": "gappy_pod", "version": 1, "ncomp": self.ncomp,
                "sample_ids": self.sample_ids.copy(), "Phi_I": self.Phi_I.copy(),
                "cond": self.cond}

    @classmethod
    def from_dict(cls, d: dict) -> "GappyPOD":
        """Rebuild from :meth:`to_dict` output (no communication, no full basis).

        Raises
        ------
        DdromError
            Missing keys, wrong kind/version, inconsistent shapes, NaN.
        """
        try:
            if d.get("kind", "gappy_pod") != "gappy_pod":
                raise DdromError(f"not Gappy-POD data (kind={d.get('kind')!r})")
            if int(d.get("version", 1)) != 1:
                raise DdromError(f"unsupported Gappy-POD data version {d.get('version')!r}")
            ncomp = int(d["ncomp"])
            ids = np.asarray(d["sample_ids"]).astype(np.int64).ravel()
            Phi_I = np.asarray(d["Phi_I"], dtype=np.float64)
        except KeyError as exc:
            raise DdromError(f"Gappy-POD data lacks {exc}") from None
        if Phi_I.ndim != 2:
            raise DdromError(f"Phi_I must be 2-D, got shape {Phi_I.shape}")
        self = cls.__new__(cls)
        self._setup(Phi_I, ids, ncomp)
        return self

    def __repr__(self) -> str:
        return (f"GappyPOD(points={self.n_points}, ncomp={self.ncomp}, modes={self.n_modes}, "
                f"cond={self.cond:.3g})")
