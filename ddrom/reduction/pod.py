"""Distributed proper orthogonal decomposition (POD) of row-distributed snapshots.

The snapshot matrix ``S`` (``n x m``, ``m`` snapshots) is held by rows: each rank
passes its rows ``S_loc`` (``n_local x m``), the union of the rows of all ranks is
every row once (owned DOFs, owned integration points). With an inner product
``M`` (:mod:`ddrom.reduction.inner`) the POD is the SVD of ``S`` as a map from
``(R^m, Euclidean)`` to ``(R^n, M)``::

    S = Psi diag(sigma) Vh,    Psi^T M Psi = I,   Vh Vh^T = I,

i.e. the SVD of ``M^{1/2} S``. :func:`pod` returns the leading ``N`` modes (local
rows ``modes_loc``), their singular values and all the computed singular values.

Methods (table :data:`POD_METHODS`, selected by name)
-----------------------------------------------------
``"snapshots"``
    Method of snapshots: ``C = S^T M S`` (``m x m``, local contributions summed by
    ONE allreduce), ``C = V Lambda V^T`` (LAPACK ``syevr``, redundantly on every
    rank), ``sigma = sqrt(lambda)``, ``Psi = S V Sigma^{-1}`` (local), then
    re-orthonormalization of ``Psi`` in the ``M`` inner product by Cholesky-QR
    passes (``G = Psi^T M Psi = R^T R``, ``Psi <- Psi R^{-1}``) until
    ``max|Psi^T M Psi - I| <= orth_tol`` (two passes in practice: Cholesky-QR2;
    a shifted first pass when ``G`` is not numerically positive definite).
    Accuracy: forming ``C`` squares the condition number; eigenvalues carry an
    absolute error ``~eps lambda_1``, so ``|sigma_i - sigma_i^exact| <~ 1e-8 sigma_1``
    (``sqrt(eps) sigma_1``) and nothing below ``sqrt(eps) sigma_1 ~ 1.5e-8 sigma_1``
    is resolved: such modes are never returned, whatever ``rtol``.
``"tsqr"``
    Tall-skinny QR then SVD of the small triangular factor. For the Euclidean and
    diagonal inner products, the rows ``W = M^{1/2} S`` are factored by a local
    Householder QR on every rank (LAPACK geqrf, kept in factored form: the local ``Q``
    is applied to the kept columns only, ormqr; a rank owning fewer rows than snapshots
    has only that many reflectors) and the ``R`` factors are combined up a binary
    tree over the ranks (mpi4py point-to-point; ``log2(p)`` levels, a QR of two
    stacked ``m x m`` factors per level); ``R = U_R Sigma Vh`` (LAPACK on the root);
    ``U_R`` goes back down the tree and ``Psi = M^{-1/2} Q U_R``. Backward stable:
    ``|sigma_i - sigma_i^exact| <~ eps sigma_1`` and modes orthonormal to ``~eps``,
    rank-deficient snapshots included.
    For a general sparse ``M`` (:class:`~ddrom.reduction.inner.PetscMatrix`) there is
    no ``M^{1/2}``: the QR is done in the ``M`` inner product by classical
    Gram-Schmidt applied twice per column ("twice is enough", CGS2: orthogonality
    and ``||S - QR|| = O(eps ||S||)`` like Householder), then the SVD of ``R``. It
    costs 3 ``M`` products and 3 small allreduces per column and is BLAS-2 bound:
    expect it to be several times slower than the Householder tree. Columns whose
    residual after the two passes is below ``eps ||s_j||_M`` are dependent and dropped.
``"rcholqr"``
    Randomized-preconditioned Cholesky-QR, then SVD of the small factor (Fan, Guo &
    Lin 2021; Balabanov 2022; Garrison & Ipsen 2024). For ``W = M^{1/2} S`` (Euclidean
    or diagonal ``M``): a sparse-sign sketch ``Y = Omega W`` (``k = 2m + 8`` rows,
    ``SKETCH_NNZ = 4`` entries ``+-1/2`` per column of ``Omega``, placed by a hash of the
    GLOBAL row index, so the sketch does not depend on the partition; local products
    summed by one allreduce), ``Y = Q_Y R0`` on rank 0; ``Omega`` being a subspace
    embedding of ``range(W)``, ``Q1 = W R0^{-1}`` (local BLAS trsm) has
    ``cond(Q1) = O(1)`` (~5 measured) whatever ``cond(W)``, up to ``1/eps``. One
    Cholesky-QR pass ``Q1^T Q1 = R1^T R1`` (one allreduce) then gives
    ``W = (Q1 R1^{-1}) (R1 R0)`` with ``Q1 R1^{-1}`` orthonormal to ``~eps cond(Q1)^2``;
    another pass is made while ``cond(R1) > KAPPA_ONE_PASS``. ``R1 R0 = U_R Sigma Vh``
    (LAPACK on rank 0) and the modes are ``Q1 (R1^{-1} U_R)`` for the kept columns only
    (one gemm). Cost ``~3 n m^2`` flops in BLAS-3 (trsm, syrk, gemm) plus a sparse pass
    over ``W``; backward stable like Householder: ``|sigma_i - sigma_i^exact| <~ eps
    sigma_1``, and relatively accurate on graded matrices (the sketch, the QR of the
    sketch and the triangular solves are invariant under column scaling).
    Rank deficiency: a column whose sketch is dependent on the previous ones
    (``|r_jj| <= DROP_RTOL ||y_j||`` in the QR of ``Y``) is left out of ``R0``; its
    coefficients in the final basis are computed exactly and its residual must be
    below ``RESID_RTOL ||w_j||`` (checked in ``W``, not trusted from the sketch).
    Safety: if that check fails, a Cholesky breaks down or the passes do not bring
    ``cond(R1)`` down, the method falls back to Householder TSQR (``info["fallback"]``);
    this was never seen on the test or benchmark matrices except a deliberately bad
    sketch. Every replicated decision is taken on rank 0 and broadcast. For a sparse
    ``M`` there is no ``M^{1/2}`` to sketch: the CGS2 path of ``"tsqr"`` is used.
``"slepc"``
    SLEPc's SVD of the row-distributed dense PETSc matrix ``M^{1/2} S`` (Euclidean or
    diagonal ``M`` only). Solver and settings come from the PETSc options database
    with the prefix ``options_prefix`` (default ``ddrom_pod_``, e.g.
    ``-ddrom_pod_svd_type trlanczos``). Without such an option the solver is
    ``scalapack`` (a dense distributed SVD, LAPACK-class accuracy) when PETSc has
    ScaLAPACK, ``trlanczos`` otherwise; the convergence test is set to
    ``||r|| <= tol ||A||`` (``SVD_CONV_NORM``, tol ``1e-14``) because the default
    relative test can never converge for ``sigma_i ~ 1e-12 sigma_1``. Do not use
    ``-svd_type lapack`` on big matrices: it gathers the matrix and forms a full
    ``n x n`` left factor.

What "accurate" means. A backward-stable method (tsqr, slepc, LAPACK itself)
computes every sigma_i with an absolute error ``~eps sigma_1``; two such methods
therefore agree to 1e-10 *relative* only where ``sigma_i >~ 1e-5 sigma_1``, unless
the matrix is graded (columns of decreasing norms, ``S = B D`` with ``B`` well
conditioned), where QR-based SVDs are relatively accurate and tsqr/slepc match
LAPACK to ~1e-14 relative down to 1e-12 sigma_1 and below (tests/test_pod.py checks
both cases). The PETSc options database is read when the SLEPc solver is created:
set options with ``PETSC_OPTIONS`` or ``petsc4py.PETSc.Options()`` (ddrom initializes
PETSc at import, without ``sys.argv``).

Default method (:data:`DEFAULT_METHOD`) = ``"rcholqr"``, chosen by measurement
(``benchmarks/pod_methods.py``, sigma over 14 decades so cond ~ 1e14, rtol 1e-7, best of
interleaved rounds; numbers and loads in benchmarks/README.md). 2e5 x 200, 1 rank, quiet
machine: rcholqr 0.68 s = 2.5x a bare numpy Gram + eigh + modes (0.27 s, which resolves
nothing below ~1e-8 sigma_1 and returns modes orthogonal to 1e-2 only), kept sigma within
5e-12 (relative) of LAPACK's; tsqr 1.87 s (6.9x); numpy SVD 1.55 s, modred direct 2.5 s,
pyMOR ``qr_svd`` 8.2 s; SLEPc scalapack / trlanczos ~10 s (loaded). 1e6 x 500: rcholqr
1.2x-2.9x the baseline depending on the load, tsqr 2.6-3.7x (under load). Shifted
Cholesky-QR3 + SVD of R (the deterministic alternative) breaks down on that matrix: its
shift brings cond down only by ~sqrt(m n eps) per pass, so it needs cond(W) <~ 1/(m n
eps) ~ 1e8. tsqr remains available (no random sketch, same accuracy) and is rcholqr's
fallback. ``"snapshots"`` ran in 0.51 s (1.9x, with its Cholesky-QR re-orthonormalization)
with sigma off by up to 3.5e-11 sigma_1 (2.4e-4 relative at sigma ~ 1e-7 sigma_1): pick
it when only modes above ~1e-7 sigma_1 matter; it silently loses everything below ~1e-8
sigma_1.

Truncation (:func:`truncate`, pyMOR's ``pod`` semantics)
--------------------------------------------------------
With ``sigma_1 >= sigma_2 >= ...`` all the computed singular values::

    N1 = #{ i : sigma_i >= max(rtol * sigma_1, atol) }       (and sigma_i > 0)
    N2 = min { N : sum_{i>N} sigma_i^2 <= l2_err^2 }
    N  = min(N1, N2, modes)                                  (modes=None: no cap)

``sum_{i>N} sigma_i^2 = ||S - Psi_N Psi_N^T M S||_F^2`` (``M``-Frobenius norm, summed
over snapshots) is the projection error of the snapshots on the basis, so ``l2_err``
bounds it. The papers' relative energy tolerance ``eps`` (discarded energy
``sum_{i>N} sigma_i^2 / sum_i sigma_i^2 <= eps^2``) is ``l2_err = eps ||S||_F``:
see :func:`l2_err_from_relative`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import scipy.linalg as sla
from scipy.linalg import blas, lapack

from ddrom.parallel import DdromError, as_mpi, check_all

# PETSc/SLEPc are initialized here, at import, i.e. collectively on every rank of
# COMM_WORLD: a first import inside a call on a sub-communicator (PetscInitialize is
# collective over COMM_WORLD) would deadlock the ranks outside it.
import slepc4py  # noqa: E402

slepc4py.init()
from petsc4py import PETSc  # noqa: E402
from slepc4py import SLEPc  # noqa: E402
from ddrom.reduction.inner import Euclidean, InnerProduct, allreduce_sum

__all__ = [
    "PODResult", "pod", "truncate", "l2_err_from_relative", "frobenius_norm",
    "POD_METHODS", "DEFAULT_METHOD", "register_pod_method", "validate_snapshots",
    "reorthonormalize", "cgs2",
]

EPS = np.finfo(np.float64).eps
#: The method of snapshots does not resolve singular values below this times sigma_1.
SNAPSHOTS_FLOOR = np.sqrt(EPS)
_TAG = 7301


@dataclass
class PODResult:
    """Result of :func:`pod`.

    Attributes
    ----------
    modes_loc
        This rank's rows of the ``N`` modes, shape ``(n_local, N)``, ``M``-orthonormal.
    sigma
        The ``N`` singular values kept (decreasing).
    sigma_all
        Every singular value the method computed (``min(n, m)`` values; for
        ``"snapshots"`` the values below ``1e-8 sigma_1`` are noise).
    method
        Name of the method used.
    vh
        Right singular vectors, ``(N, m)``, replicated: ``S ~ Psi diag(sigma) vh``.
    info
        Diagnostics: ``orth_err = max|Psi^T M Psi - I|``, ``l2_err`` (the projection
        error ``sqrt(sum_{i>N} sigma_i^2)``), ``reorth_passes``, ``seconds``, ...
    """

    modes_loc: np.ndarray
    sigma: np.ndarray
    sigma_all: np.ndarray
    method: str
    vh: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def n_modes(self) -> int:
        return int(self.sigma.shape[0])


# ------------------------------------------------------------------------ truncation
def truncate(sigma: Any, rtol: float = 1e-7, atol: float = 0.0, l2_err: float = 0.0,
             modes: int | None = None) -> int:
    """Number of modes to keep, with the semantics of pyMOR's ``pod``.

    ``N = min(N1, N2, modes)`` with ``N1 = #{i : sigma_i >= max(rtol sigma_1, atol),
    sigma_i > 0}`` and ``N2 = min{N : sum_{i>N} sigma_i^2 <= l2_err^2}``.

    Parameters
    ----------
    sigma
        All singular values, in decreasing order.
    rtol, atol
        Relative (to ``sigma_1``) and absolute cut-off on the singular values.
    l2_err
        Bound on the discarded energy ``sqrt(sum_{i>N} sigma_i^2)``, i.e. on the
        Frobenius norm of the projection error of all snapshots.
    modes
        Maximum number of modes (``None``: no cap).
    """
    s = np.asarray(sigma, dtype=np.float64).ravel()
    if s.size == 0:
        return 0
    tol = max(rtol * s[0], atol)
    n1 = int(np.count_nonzero((s >= tol) & (s > 0)))
    tails = np.concatenate((np.cumsum(s[::-1] ** 2)[::-1], [0.0]))
    n2 = int(np.nonzero(tails <= l2_err ** 2)[0][0])
    n = min(n1, n2)
    if modes is not None:
        n = min(n, int(modes))
    return n


def frobenius_norm(S_loc: np.ndarray, comm: Any = None, inner: InnerProduct | None = None
                   ) -> float:
    """``||S||_F`` in the ``M`` inner product: ``sqrt(sum_j ||s_j||_M^2)``.

    For the Euclidean and diagonal inner products the column sums are exact
    (:func:`ddrom.reduction.exact.reproducible_sqnorms`): the norm, hence a truncation
    ``l2_err = eps ||S||_F``, is the same bits for any partition. A sparse ``M``: one
    allreduce.
    """
    inner = inner or Euclidean()
    if inner.diagonal:
        from ddrom.reduction.exact import reproducible_sqnorms

        w = getattr(inner, "w", None)
        S = np.asarray(S_loc, dtype=np.float64)
        if S.ndim == 1:
            S = S[:, None]
        return float(np.sqrt(np.sum(reproducible_sqnorms(S, comm, w))))
    return float(np.sqrt(np.sum(inner.norms(S_loc, comm) ** 2)))


def l2_err_from_relative(eps: float, S_loc: np.ndarray | None = None, comm: Any = None,
                         inner: InnerProduct | None = None, sigma_all: Any = None) -> float:
    """``l2_err = eps ||S||_F`` for the papers' relative energy tolerance ``eps``.

    The papers keep the smallest N with ``sum_{i>N} sigma_i^2 <= eps^2 sum_i sigma_i^2``;
    since ``sum_i sigma_i^2 = ||S||_F^2`` this is :func:`truncate` with
    ``l2_err = eps ||S||_F``. ``||S||_F`` comes from ``sigma_all`` (all singular
    values) if given, else from the snapshots (one allreduce).
    """
    if sigma_all is not None:
        return float(eps * np.sqrt(np.sum(np.asarray(sigma_all, dtype=float) ** 2)))
    if S_loc is None:
        raise DdromError("l2_err_from_relative: give the snapshots or all the singular values")
    return float(eps * frobenius_norm(S_loc, comm, inner))


# ------------------------------------------------------------------------ validation
def validate_snapshots(S_loc: Any, comm: Any, inner: InnerProduct, name: str = "snapshots",
                       modes: int | None = None) -> tuple[np.ndarray, int, int]:
    """Collective checks of a snapshot block; returns ``(S_loc as float64, n_global, m)``.

    Raises :class:`DdromError` naming ``name`` on every rank if: the block is not 2-D,
    ranks disagree on ``m``, the block is empty (``m == 0`` or ``n == 0``), an entry is
    NaN/Inf (the offending global columns are listed), ``modes`` exceeds the number
    of snapshots, or the inner product does not fit the rows.
    """
    from mpi4py import MPI

    c = as_mpi(comm)
    try:
        S = np.asarray(S_loc, dtype=np.float64)
        ok = S.ndim == 2
    except (TypeError, ValueError):
        S, ok = None, False
    check_all(c, ok, f"POD of {name!r}: the snapshot block must be a 2-D array of floats"
                     " (n_local rows, m snapshots) on every rank")
    n_loc, m = S.shape
    mmin, mmax = c.allreduce(m, op=MPI.MIN), c.allreduce(m, op=MPI.MAX)
    check_all(c, mmin == mmax,
              f"POD of {name!r}: ranks hold different numbers of snapshots ({mmin}..{mmax})")
    n = c.allreduce(n_loc, op=MPI.SUM)
    check_all(c, m > 0 and n > 0, f"POD of {name!r}: empty snapshot block ({n} rows x {m} snapshots)")
    bad = np.zeros(m, dtype=np.float64)
    ch = _chunk_rows(m)
    for a in range(0, n_loc, ch):      # by chunks: no n_local x m boolean temporary
        bad = np.maximum(bad, (~np.isfinite(S[a:a + ch]).all(axis=0)).astype(np.float64))
    bad = allreduce_sum(bad, c)
    cols = np.nonzero(bad)[0]
    check_all(c, cols.size == 0,
              f"POD of {name!r}: {cols.size} snapshot(s) contain NaN or Inf (columns "
              f"{cols[:10].tolist()}{' ...' if cols.size > 10 else ''})")
    if modes is not None:
        check_all(c, 0 <= int(modes) <= min(m, n),
                  f"POD of {name!r}: {modes} modes requested but only {m} snapshots of "
                  f"{n} rows (at most {min(m, n)} modes)")
    inner.check(n_loc, c, name)
    return S, n, m


# ------------------------------------------------------------------ BLAS helpers
def _trsm_right(A: np.ndarray, R: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """``A R^{-1}`` for an upper triangular ``R`` (BLAS trsm), C-ordered result.

    ``A`` (C order, ``n_local x k``) is seen as the Fortran array ``A^T`` and
    ``R^T X^T = A^T`` is solved: no transposed copies (``scipy.linalg.solve_triangular``
    on ``A.T`` copies twice and was 4x slower on 2e5 x 200). Row ``i`` of the result only
    depends on row ``i`` of ``A``: zero local rows are fine. With ``overwrite`` the
    solve is done in ``A``'s memory when ``A`` is C-contiguous.
    """
    A = np.asarray(A, dtype=np.float64)
    if A.shape[0] == 0 or A.shape[1] == 0:
        return np.array(A, dtype=np.float64, copy=not overwrite, order="C")
    if not A.flags.c_contiguous:
        A, overwrite = np.ascontiguousarray(A), True
    X = blas.dtrsm(1.0, np.asfortranarray(R), A.T, side=0, lower=0, trans_a=1,
                   overwrite_b=int(overwrite))
    return X.T


def _chunk_rows(m: int) -> int:
    """Rows per chunk of ~8 MB (temporaries of row-wise checks stay small)."""
    return max(256, (8 << 20) // (8 * max(int(m), 1)))


def _sign_fix(vh: np.ndarray) -> np.ndarray:
    """Signs making the largest ``|entry|`` of each right singular vector positive."""
    N = vh.shape[0]
    if N == 0:
        return np.ones(0)
    idx = np.argmax(np.abs(vh), axis=1)
    sgn = np.sign(vh[np.arange(N), idx])
    sgn[sgn == 0] = 1.0
    return sgn


_POOL: list = []


def _single_thread():
    """Context limiting BLAS/LAPACK to one thread, for the small replicated factorizations.

    On m x m matrices (m = a few hundred) a multi-threaded OpenBLAS call waits for its
    other threads at every step; on a loaded machine a descheduled thread made a QR or
    an SVD of 200 x 200 take 0.1-0.3 s instead of a few ms (measured). threadpoolctl is
    optional: without it, a no-op.
    """
    from contextlib import nullcontext

    if not _POOL:
        try:
            from threadpoolctl import ThreadpoolController
            _POOL.append(ThreadpoolController())
        except Exception:  # pragma: no cover - threadpoolctl absent
            _POOL.append(None)
    return _POOL[0].limit(limits=1, user_api="blas") if _POOL[0] is not None else nullcontext()


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer (uint64 -> uint64, wrapping arithmetic): a fast counter hash."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def sparse_sign_sketch(W_loc: np.ndarray, row_offset: int, k: int, nnz: int = 4,
                       seed: int = 0x5EED, chunk: int = 32768) -> np.ndarray:
    """This rank's contribution ``Omega_loc W_loc`` to a sparse-sign sketch ``Omega W`` (``k x m``).

    ``Omega`` (``k x n``) has ``nnz`` entries ``+-1/sqrt(nnz)`` per column, at rows and
    with signs given by a hash of (global row index, seed): the sketch of a global row
    does not depend on the partition, and the sum over ranks (one allreduce) is the
    same ``Omega W`` at every rank count, up to the order of the additions. Cost
    ``nnz * n_local * m`` flops, streamed by chunks of rows (scipy sparse product).
    """
    import scipy.sparse as sps

    n_loc, m = W_loc.shape
    Y = np.zeros((k, m))
    t = np.arange(nnz, dtype=np.uint64)
    key = np.uint64((int(seed) * 0xD1B54A32D192ED03) & 0xFFFFFFFFFFFFFFFF)
    for a in range(0, n_loc, chunk):
        b = min(n_loc, a + chunk)
        g = np.arange(row_offset + a, row_offset + b, dtype=np.uint64)
        h = _splitmix64((g[:, None] * np.uint64(nnz) + t) ^ key).ravel()
        rows = ((h >> np.uint64(1)) % np.uint64(k)).astype(np.int32)
        vals = np.where((h & np.uint64(1)).astype(bool), -1.0, 1.0) / np.sqrt(nnz)
        indptr = np.arange(0, (b - a) * nnz + 1, nnz, dtype=np.int32)
        Om = sps.csc_matrix((vals, rows, indptr), shape=(k, b - a))
        Y += Om @ np.ascontiguousarray(W_loc[a:b])
    return Y


# ------------------------------------------------------------- re-orthonormalization
def reorthonormalize(Psi: np.ndarray, inner: InnerProduct, comm: Any, orth_tol: float = 1e-12,
                     max_passes: int = 3, n_global: int | None = None, exact: bool = False
                     ) -> tuple[np.ndarray, float, int]:
    """Cholesky-QR passes in the ``M`` inner product until ``max|Psi^T M Psi - I| <= orth_tol``.

    Each pass: ``G = Psi^T M Psi`` (one allreduce), ``G = R^T R``, ``Psi <- Psi R^{-1}``.
    Two passes (Cholesky-QR2) give orthonormality to ``O(eps)`` once ``cond(Psi) <~ 1e8``;
    if ``G`` is not numerically positive definite the pass is shifted,
    ``G + s I`` with ``s = 11 (n N + N(N+1)) eps ||G||_2`` (Fukaya et al., shifted
    Cholesky-QR3), which always succeeds and brings ``cond`` down to ``~1e8``.
    ``R`` is upper triangular so mode ``k`` only mixes with modes ``< k``.

    Returns ``(Psi, orth_err, passes)``; ``orth_err`` is measured after the last pass.
    With ``exact`` (Euclidean or diagonal ``M``) the Gram matrices are exact
    (:func:`ddrom.reduction.exact.exact_gram`): the passes, and the result, are the same
    bits for any partition.
    """
    N = Psi.shape[1]
    if N == 0:
        return Psi, 0.0, 0
    passes = 0
    while True:
        if exact:
            from ddrom.reduction.exact import exact_gram

            scale = inner.row_scale
            G = exact_gram(Psi if scale is None else Psi * scale[:, None], comm)
        else:
            G = inner.gram(Psi, None, comm)
        err = float(np.max(np.abs(G - np.eye(N))))
        if err <= orth_tol or passes >= max_passes:
            return Psi, err, passes
        try:
            R = np.linalg.cholesky(G).T
        except np.linalg.LinAlgError:
            n = n_global if n_global is not None else Psi.shape[0]
            shift = 11.0 * (n * N + N * (N + 1)) * EPS * np.linalg.norm(G, 2)
            R = np.linalg.cholesky(G + shift * np.eye(N)).T
        Psi = _trsm_right(Psi, R)
        passes += 1


# ------------------------------------------------------------------------- CGS2
def cgs2(B_loc: np.ndarray, inner: InnerProduct, comm: Any, Q_loc: np.ndarray | None = None,
         drop_rtol: float = EPS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``M``-orthonormalize the columns of ``B`` against ``Q`` and each other (CGS twice).

    For each column ``b_j`` in turn: two passes of classical Gram-Schmidt against
    all the current basis vectors (``h = Q^T M v`` and ``||v||_M`` in one allreduce per
    pass), then ``rho = ||v||_M``; ``v / rho`` is appended unless
    ``rho <= drop_rtol ||b_j||_M`` (``b_j`` dependent on the basis: dropped).

    Returns ``(Q_new_loc, C, R)`` with ``B = Q C + Q_new R`` up to round-off and the
    dropped residuals: ``C`` is ``k x b`` (``k`` = columns of the given ``Q``), ``R``
    is ``r x b``, ``r`` the number of new vectors.
    """
    B = np.asarray(B_loc, dtype=np.float64)
    if B.ndim == 1:
        B = B[:, None]
    n_loc, b = B.shape
    k = 0 if Q_loc is None else Q_loc.shape[1]
    # the given basis is used where it is (no copy: an enrichment appends one vector to a
    # mesh-sized basis), the new vectors kept apart
    Q = Q_loc if k else np.zeros((n_loc, 0))
    Qn = np.empty((n_loc, b))
    H = np.zeros((k + b, b))
    r = 0
    for j in range(b):
        v = B[:, j].copy()
        ncur = k + r
        norm0 = None
        for _ in range(2):
            Mv = inner.apply(v).ravel()
            loc = np.empty(ncur + 1)
            loc[:k] = Q.T @ Mv
            loc[k:ncur] = Qn[:, :r].T @ Mv
            loc[ncur] = v @ Mv
            glob = allreduce_sum(loc, comm)
            if norm0 is None:
                norm0 = np.sqrt(max(glob[ncur], 0.0))
            h = glob[:ncur]
            v -= Q @ h[:k]
            if r:
                v -= Qn[:, :r] @ h[k:]
            H[:ncur, j] += h
        Mv = inner.apply(v).ravel()
        rho = float(np.sqrt(max(allreduce_sum(np.array([v @ Mv]), comm)[0], 0.0)))
        if rho > drop_rtol * norm0 and rho > 0.0:
            Qn[:, r] = v / rho
            H[ncur, j] = rho
            r += 1
    return Qn[:, :r].copy(), H[:k], H[k:k + r]


# ------------------------------------------------------------------------ methods
def _select(sigma_all, rtol, atol, l2_err, modes, floor=0.0):
    N = truncate(sigma_all, rtol, atol, l2_err, modes)
    if floor > 0 and sigma_all.size:
        N = min(N, int(np.count_nonzero(sigma_all > floor * sigma_all[0])))
    return N


def _pod_snapshots(S, comm, inner, n, opts):
    C = inner.gram(S, None, comm)
    lam, V = sla.eigh(C, overwrite_a=True)
    lam, V = lam[::-1], V[:, ::-1]
    sigma_all = np.sqrt(np.clip(lam, 0.0, None))
    N = _select(sigma_all, opts["rtol"], opts["atol"], opts["l2_err"], opts["modes"],
                floor=SNAPSHOTS_FLOOR)
    Psi = S @ (V[:, :N] / sigma_all[:N])
    return sigma_all, Psi, V[:, :N].T.copy(), {"floor": SNAPSHOTS_FLOOR}


def _qr_r(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reduced QR that accepts zero rows (an empty rank)."""
    if W.shape[0] == 0:
        return np.zeros((0, 0)), np.zeros((0, W.shape[1]))
    return np.linalg.qr(W)


def _qr_factored(W: np.ndarray) -> tuple[Any, np.ndarray]:
    """Local Householder QR kept in LAPACK's factored form (geqrf): ``((h, tau) or None, R)``.

    ``Q`` is never formed (``orgqr`` would double the cost): :func:`_apply_q` applies it
    to the few kept columns. ``R`` is ``kk x m`` with ``kk = min(n_local, m)``: a rank
    owning fewer rows than there are snapshots (uneven partitions make this happen)
    has only ``n_local`` reflectors, a rank owning no rows has none.
    """
    n_loc, m = W.shape
    if n_loc == 0:
        return None, np.zeros((0, m))
    (h, tau), R = sla.qr(W, mode="raw", check_finite=False)
    kk = min(n_loc, m)
    return (h, tau), np.triu(R[:kk])


def _apply_q(fact: Any, Y: np.ndarray, n_rows: int) -> np.ndarray:
    """``Q @ Y`` for the factored ``Q`` of :func:`_qr_factored` (LAPACK ormqr), ``Y`` is ``kk x N``.

    scipy's ``dormqr`` takes the number of reflectors from the number of COLUMNS of the
    factor array, so a rank with ``n_local < m`` must pass ``h[:, :n_local]``: passing
    the whole ``n_local x m`` array raised on that rank only (commit aedebbf, reverted
    in c9ab906), and the ranks that did not raise went on to the next collective and
    deadlocked.
    """
    N = Y.shape[1]
    if fact is None or n_rows == 0:
        return np.zeros((n_rows, N))
    h, tau = fact
    kk = tau.shape[0]
    C = np.zeros((n_rows, N), order="F")
    if N == 0:
        return np.ascontiguousarray(C)
    C[:kk] = Y
    cq, _, info = lapack.dormqr("L", "N", h[:, :kk], tau, C, lwork=max(1, 64 * N),
                                overwrite_c=1)
    if info != 0:  # pragma: no cover - LAPACK argument error
        raise DdromError(f"tsqr: LAPACK ormqr failed (info = {info})")
    return np.ascontiguousarray(cq)


def _tsqr_tree(W: np.ndarray, comm: Any, select: Callable[[np.ndarray], int]):
    """Householder TSQR over a binary tree of ranks, SVD of R on rank 0, modes back down.

    Returns ``(sigma_all, U_loc (n_loc x N), Vh (N x m))`` with ``W = U diag(s) Vh``.
    """
    c = as_mpi(comm)
    rank, size = c.rank, c.size
    m = W.shape[1]
    fact, R = _qr_factored(W)
    levels = []          # (partner, Q of the stacked QR, rows of my part)
    parent = None
    step = 1
    while step < size:
        if rank % (2 * step) == 0:
            partner = rank + step
            if partner < size:
                Rp = c.recv(source=partner, tag=_TAG)
                mine = R.shape[0]
                Qn, R = _qr_r(np.vstack([R, Rp]))
                levels.append((partner, Qn, mine))
        else:
            parent = rank - step
            c.send(R, dest=parent, tag=_TAG)
            break
        step *= 2
    if rank == 0:
        Ur, s, Vh = np.linalg.svd(R, full_matrices=False) if R.shape[0] else (
            np.zeros((0, 0)), np.zeros(0), np.zeros((0, m)))
        N = select(s)
        Y = Ur[:, :N]
        payload = (s, Vh[:N], N)
    else:
        payload = None
    s, Vh, N = c.bcast(payload, root=0)
    if rank != 0:
        Y = c.recv(source=parent, tag=_TAG + 1)
    for partner, Qn, mine in reversed(levels):
        Z = Qn @ Y
        c.send(Z[mine:], dest=partner, tag=_TAG + 1)
        Y = Z[:mine]
    U = _apply_q(fact, Y, W.shape[0])
    return s, U, Vh


def _pod_tsqr(S, comm, inner, n, opts):
    sel = lambda s: _select(s, opts["rtol"], opts["atol"], opts["l2_err"], opts["modes"])  # noqa: E731
    if inner.diagonal:
        scale = inner.row_scale
        W = S if scale is None else S * scale[:, None]
        s, U, Vh = _tsqr_tree(W, comm, sel)
        if scale is not None:
            U = U / scale[:, None]
        return s, U, Vh, {"variant": "householder-tree"}
    # General sparse M: QR in the M inner product by CGS2, then SVD of R (replicated).
    Q, _, R = cgs2(S, inner, comm, drop_rtol=EPS)
    Ur, s, Vh = np.linalg.svd(R, full_matrices=False)
    N = sel(s)
    return s, Q @ Ur[:, :N], Vh[:N], {"variant": "cgs2-M", "rank": Q.shape[1]}


#: Sparse-sign sketch of the "rcholqr" method: ``SKETCH_FACTOR * m + 8`` rows, ``SKETCH_NNZ``
#: nonzeros per column (4: on 200 coherent unit-row columns, 2 gave a singular sketch,
#: 4 and 8 kappa(W R0^{-1}) <= 8; 8 costs twice as much, see benchmarks/README.md).
SKETCH_FACTOR = 2
SKETCH_NNZ = 4
#: A column whose sketch has ``|r_jj| <= DROP_RTOL ||y_j||`` (QR of the sketch) is dependent
#: on the previous ones; its residual in W is then checked against ``RESID_RTOL ||w_j||``.
DROP_RTOL = 16 * EPS
RESID_RTOL = 1e-12
#: One Cholesky-QR pass suffices when ``kappa(W R0^{-1}) <= KAPPA_ONE_PASS``: the basis
#: ``Q1 R1^{-1}`` is then orthonormal to ``~eps kappa^2 <= 1e-13``.
KAPPA_ONE_PASS = 30.0
MAX_CHOL_PASSES = 3


def _rcholqr(W: np.ndarray, comm: Any, select: Callable[[np.ndarray], int], n_global: int,
             row_ids: np.ndarray | None = None, drop_rtol: float = DROP_RTOL, sketch: list | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict] | None:
    """Randomized-preconditioned Cholesky-QR of the row-distributed ``W``, SVD of ``R``.

    Returns ``(sigma_all, U_loc (n_local x N), Vh (N x m), info)`` with
    ``W = U diag(sigma) Vh`` to backward-stable accuracy, or ``None`` if a safety check
    failed (the caller falls back to Householder TSQR). Every replicated decision is
    taken on rank 0 and broadcast.

    ``row_ids`` (global ids of the local rows, independent of the partition): the sketch
    is placed by them and summed exactly, the Gram matrices are exact and the local
    products row by row (:mod:`ddrom.reduction.exact`), so the result is the same bits
    for any partition and number of ranks. ``drop_rtol``: the dependence threshold of
    the sketch's QR; ``sketch``: a one-element list caching the sketch between attempts.
    """
    from mpi4py import MPI

    from ddrom.reduction import exact as ex

    c = as_mpi(comm)
    n_loc, m = W.shape
    k = SKETCH_FACTOR * m + 8
    repro = row_ids is not None
    matmul = ex.row_matmul if repro else np.matmul

    def gram(X: np.ndarray, Y2: np.ndarray | None = None) -> np.ndarray:
        if repro:
            return ex.exact_gram(X, c, Y2)
        return allreduce_sum(X.T @ (X if Y2 is None else Y2), c)

    def sqnorms(X: np.ndarray) -> np.ndarray:
        return ex.reproducible_sqnorms(X, c) if repro else allreduce_sum(np.einsum("ij,ij->j", X, X), c)

    # 1. Sketch and preconditioner: Y = Omega W (k x m), QR of Y on rank 0.
    if sketch is not None and sketch:
        Y = sketch[0]
    elif repro:
        Y = ex.exact_sketch(W, row_ids, k, c, SKETCH_NNZ)
    else:
        offset = c.exscan(n_loc, op=MPI.SUM) if c.size > 1 else 0
        offset = 0 if offset is None else int(offset)
        Y = allreduce_sum(sparse_sign_sketch(W, offset, k, SKETCH_NNZ), c)
    if sketch is not None and not sketch:
        sketch.append(Y)
    plan = None
    if c.rank == 0:
        with _single_thread():
            ynorm = np.linalg.norm(Y, axis=0)
            R0 = np.linalg.qr(Y, mode="r")
            keep = (np.abs(np.diag(R0)) > drop_rtol * ynorm) & (ynorm > 0)
            if not keep.all():
                R0 = np.linalg.qr(Y[:, keep], mode="r") if keep.any() else np.zeros((0, 0))
        plan = (keep, np.triu(R0))
    keep, RK = c.bcast(plan, root=0)
    K = np.nonzero(keep)[0]
    D = np.nonzero(~keep)[0]
    r = K.size
    info = {"variant": "rcholqr", "sketch_rows": k, "sketch_nnz": SKETCH_NNZ,
            "dropped": int(D.size), "kappa": []}
    # 2. Q = W_K RK^{-1} (well conditioned whatever cond(W): Omega is a subspace
    #    embedding), then Cholesky-QR passes Q <- Q R^{-1}, G = Q^T Q = R^T R; the last R
    #    is not applied to Q but folded into the small factor of the modes.
    Q = _trsm_right(W if D.size == 0 else W[:, K], RK)
    T = RK.copy()              # W_K = (Q R_pend^{-1}) T, T upper triangular
    R_pend = np.eye(r)
    for _ in range(MAX_CHOL_PASSES):
        G = gram(Q)
        step = None
        if c.rank == 0:
            with _single_thread():
                try:
                    Gs = 0.5 * (G + G.T)
                    Rc = np.linalg.cholesky(Gs).T
                    lam = np.linalg.eigvalsh(Gs) if r else np.ones(1)   # cond(Rc)^2 = cond(G)
                    kap = float(np.sqrt(lam[-1] / lam[0])) if lam[0] > 0 else np.inf
                    step = (Rc, kap)
                except np.linalg.LinAlgError:
                    step = (None, np.inf)
        Rc, kap = c.bcast(step, root=0)
        info["kappa"].append(kap)
        if Rc is None:
            return None                                   # -> Householder fallback
        T = Rc @ T
        if kap <= KAPPA_ONE_PASS:
            R_pend = Rc
            break
        Q = _trsm_right(Q, Rc, overwrite=True)
    else:
        return None
    info["passes"] = len(info["kappa"])
    # 3. Dependent columns: exact coefficients C_D = Qf^T W_D in the final basis
    #    Qf = Q R_pend^{-1}, and their residual ||W_D - Qf C_D|| checked columnwise.
    Rfull = np.zeros((r, m))
    Rfull[:, K] = T
    if D.size:
        WD = W[:, D]
        B = gram(Q, WD)                                         # Q^T W_D
        CD = sla.solve_triangular(R_pend, B, trans="T", lower=False)   # R_pend^{-T} B
        E = WD - matmul(Q, sla.solve_triangular(R_pend, CD, lower=False))
        res = np.sqrt(sqnorms(E))
        wn = np.sqrt(sqnorms(WD))
        bad = c.bcast(bool(np.any(res > RESID_RTOL * wn)), root=0)
        if bad:
            return None
        Rfull[:, D] = CD
    # 4. SVD of the small factor on rank 0; modes U = Qf Ur = Q (R_pend^{-1} Ur).
    kmax = min(n_global, m)
    if c.rank == 0:
        with _single_thread():
            if r:
                Ur, sr, Vh = np.linalg.svd(Rfull, full_matrices=False)
            else:
                Ur, sr, Vh = np.zeros((0, 0)), np.zeros(0), np.zeros((0, m))
            s_all = np.zeros(kmax)
            s_all[:min(sr.size, kmax)] = sr[:kmax]
            N = min(select(s_all), sr.size)
            # pod()'s sign rule applied here, on the small factors, so that pod() does not
            # have to copy the modes to flip them.
            sgn = _sign_fix(Vh[:N])
            Z = (sla.solve_triangular(R_pend, Ur[:, :N] * sgn, lower=False) if N
                 else np.zeros((r, 0)))
        payload = (s_all, Vh[:N] * sgn[:, None], Z, N)
    else:
        payload = None
    s_all, Vh, Z, N = c.bcast(payload, root=0)
    U = matmul(Q, Z) if n_loc else np.zeros((0, N))
    info["reproducible"] = repro
    return s_all, U, Vh, info


def _pod_rcholqr(S, comm, inner, n, opts):
    sel = lambda s: _select(s, opts["rtol"], opts["atol"], opts["l2_err"], opts["modes"])  # noqa: E731
    if not inner.diagonal:
        # No M^{1/2} for a sparse M, hence no sketch of it: the M-orthogonal CGS2 QR.
        return _pod_tsqr(S, comm, inner, n, opts)
    scale = inner.row_scale
    row_ids = opts.get("row_ids")
    if scale is None:
        W = S
    elif row_ids is not None and opts.get("overwrite"):
        # the reproducible path never goes back to S (its fallbacks take W): scale in place
        W = np.multiply(S, scale[:, None], out=S)
    else:
        W = S * scale[:, None]
    if row_ids is not None:
        # Partition-independent: the fallback must be too. Numerically rank-deficient
        # snapshots (smooth in the parameters) put columns right at the sketch's dependence
        # threshold, where the residual check of the dropped ones can fail (measured:
        # 2.6e-12 > RESID_RTOL with 9 of 20 columns dropped, 1.2e-13 with 6): keeping more
        # columns is tried first, then the method of snapshots with an exact Gram matrix.
        cache: list = []
        for factor in (1.0, 1 / 4, 1 / 16):
            out = _rcholqr(W, comm, sel, n, row_ids, DROP_RTOL * factor, cache)
            if out is not None:
                s, U, Vh, info = out
                info["drop_rtol"] = DROP_RTOL * factor
                return s, (U if scale is None else U / scale[:, None]), Vh, info
        s, U, Vh, info = _snapshots_exact(W, comm, opts)
        info["fallback"] = "rcholqr safety check failed: method of snapshots, exact Gram (reproducible)"
        return s, (U if scale is None else U / scale[:, None]), Vh, info
    out = _rcholqr(W, comm, sel, n)
    if out is None:
        s, U, Vh, info = _pod_tsqr(S, comm, inner, n, opts)
        info["fallback"] = "rcholqr safety check failed: Householder TSQR"
        info["reproducible"] = False
        return s, U, Vh, info
    s, U, Vh, info = out
    if scale is not None:
        U = U / scale[:, None]
    return s, U, Vh, info


def _snapshots_exact(W: np.ndarray, comm: Any, opts: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Method of snapshots on ``W = M^{1/2} S`` with an exact Gram matrix: the same bits for
    any partition (the reproducible fallback of rcholqr). Resolves only the singular
    values above :data:`SNAPSHOTS_FLOOR` ``sigma_1`` (the Gram squares the condition)."""
    from ddrom.reduction.exact import exact_gram, row_matmul

    c = as_mpi(comm)
    C = exact_gram(W, c)
    eig = None
    if c.rank == 0:
        with _single_thread():
            lam, V = sla.eigh(C)
        eig = (lam[::-1].copy(), V[:, ::-1].copy())
    lam, V = c.bcast(eig, root=0)
    sigma_all = np.sqrt(np.clip(lam, 0.0, None))
    N = _select(sigma_all, opts["rtol"], opts["atol"], opts["l2_err"], opts["modes"], floor=SNAPSHOTS_FLOOR)
    U = row_matmul(W, V[:, :N] / sigma_all[:N]) if W.shape[0] else np.zeros((0, N))
    return sigma_all, U, V[:, :N].T.copy(), {"variant": "snapshots-exact", "floor": SNAPSHOTS_FLOOR,
                                              "reproducible": True}


def _pod_slepc(S, comm, inner, n, opts):
    from ddrom.parallel import as_petsc

    if not inner.diagonal:
        raise DdromError(f"POD of {opts['name']!r}: method 'slepc' needs a Euclidean or "
                         f"diagonal inner product, not {inner!r}; use method='tsqr'")
    scale = inner.row_scale
    W = S if scale is None else S * scale[:, None]
    n_loc, m = W.shape
    pcomm = as_petsc(comm)
    A = PETSc.Mat().createDense(size=((n_loc, n), (None, m)), array=np.asfortranarray(W),
                                comm=pcomm)
    A.assemble()
    svd = SLEPc.SVD().create(pcomm)
    prefix = opts["options_prefix"]
    svd.setOptionsPrefix(prefix)
    svd.setOperators(A)
    k = min(n, m)
    svd.setDimensions(nsv=k)
    odb = PETSc.Options()
    if not odb.hasName(f"{prefix}svd_type"):
        svd.setType(SLEPc.SVD.Type.SCALAPACK if PETSc.Sys.hasExternalPackage("scalapack")
                    else SLEPc.SVD.Type.TRLANCZOS)
    svd.setTolerances(tol=1e-14, max_it=max(100, 10 * k))
    svd.setConvergenceTest(SLEPc.SVD.Conv.NORM)
    svd.setFromOptions()
    svd.solve()
    nconv = svd.getConverged()
    if nconv < k:
        check_all(comm, False, f"POD of {opts['name']!r}: SLEPc SVD ({svd.getType()}) "
                               f"converged {nconv} of {k} singular triplets")
    s = np.array([svd.getValue(i) for i in range(k)])
    order = np.argsort(-s, kind="stable")
    s = s[order]
    N = _select(s, opts["rtol"], opts["atol"], opts["l2_err"], opts["modes"])
    vR, vL = A.createVecs()
    U = np.empty((n_loc, N))
    Vh = np.empty((N, m))
    for j in range(N):
        svd.getSingularTriplet(int(order[j]), vL, vR)
        U[:, j] = vL.getArray()
        sc, vall = PETSc.Scatter.toAll(vR)
        sc.scatter(vR, vall, addv=PETSc.InsertMode.INSERT, mode=PETSc.ScatterMode.FORWARD)
        Vh[j] = vall.getArray()
        sc.destroy()
        vall.destroy()
    typ = svd.getType()
    for o in (svd, A, vL, vR):
        o.destroy()
    if scale is not None:
        U = U / scale[:, None]
    return s, U, Vh, {"svd_type": typ}


#: Table of POD methods: name -> function(S_loc, comm, inner, n_global, opts) returning
#: (sigma_all, modes_loc (n_local x N), vh (N x m), info dict).
POD_METHODS: dict[str, Callable] = {
    "snapshots": _pod_snapshots,
    "tsqr": _pod_tsqr,
    "rcholqr": _pod_rcholqr,
    "slepc": _pod_slepc,
}

#: Chosen by measurement (benchmarks/pod_methods.py): the fastest accurate method.
DEFAULT_METHOD = "rcholqr"


def register_pod_method(name: str, func: Callable) -> None:
    """Add a method to :data:`POD_METHODS` (same signature as the built-in ones)."""
    POD_METHODS[name] = func


# --------------------------------------------------------------------------- pod
def pod(S_loc: Any, comm: Any = None, inner: InnerProduct | None = None,
        method: str = DEFAULT_METHOD, rtol: float = 1e-7, atol: float = 0.0,
        l2_err: float = 0.0, modes: int | None = None, orth_tol: float = 1e-12,
        name: str = "snapshots", options_prefix: str = "ddrom_pod_",
        row_ids: Any = None, overwrite: bool = False) -> PODResult:
    """POD of row-distributed snapshots in the inner product ``inner``.

    Computes ``S = Psi diag(sigma) Vh`` with ``Psi^T M Psi = I`` (see the module
    docstring for the methods and their accuracy) and keeps ``N`` modes chosen by
    :func:`truncate` (pyMOR semantics)::

        N = min( #{sigma_i >= max(rtol sigma_1, atol)},
                 min{N : sum_{i>N} sigma_i^2 <= l2_err^2},  modes )

    The papers' relative energy tolerance ``eps`` is ``l2_err = eps ||S||_F``
    (:func:`l2_err_from_relative`). After the method, the modes are re-orthonormalized
    by Cholesky-QR passes if ``max|Psi^T M Psi - I| > orth_tol`` (always needed for
    ``"snapshots"``, a no-op check for the accurate methods).

    Parameters
    ----------
    S_loc
        This rank's rows of the snapshots, ``(n_local, m)``; ranks may own 0 rows.
    comm
        Communicator (mpi4py or PETSc; None = COMM_WORLD).
    inner
        :class:`~ddrom.reduction.inner.Euclidean` (default), ``Diagonal`` or ``PetscMatrix``.
    method
        A key of :data:`POD_METHODS`: ``"rcholqr"`` (default), ``"tsqr"``, ``"snapshots"``,
        ``"slepc"``.
    rtol, atol, l2_err, modes
        Truncation, see :func:`truncate`.
    orth_tol
        Target of ``max|Psi^T M Psi - I|``.
    name
        Name of the snapshot set in error messages.
    options_prefix
        PETSc options prefix of the SLEPc solver (method ``"slepc"``).
    row_ids
        Global ids of this rank's rows that do not depend on the partition (e.g. the
        natural DOF ids ``3 node + component``, or ``(cell nq + q) ncomp + component``
        for integration-point fields; unique over all ranks). With them the POD is
        bitwise the same for any partition and number of ranks (modes up to their
        rows' order, singular values, ``vh``): method ``"rcholqr"`` with its sketch
        placed by the ids and exact reductions (:mod:`ddrom.reduction.exact`), and exact
        re-orthonormalization. Euclidean or diagonal inner product only. Costs a few
        times the plain method (exact Gram matrices). ``info["reproducible"]`` tells
        (False after the rare fallback to Householder TSQR).
    overwrite
        The snapshots may be overwritten: with ``row_ids`` and a diagonal inner product
        they are scaled in place by ``M^{1/2}`` instead of into a copy (one block of the
        snapshots' size less at the peak; the same bits). The caller must not use
        ``S_loc`` afterwards. Ignored otherwise.

    Raises
    ------
    DdromError
        On every rank: unknown method, NaN/Inf in the snapshots, empty block, more
        modes than snapshots, inner product not matching the rows.
    """
    t0 = time.perf_counter()
    c = as_mpi(comm)
    inner = inner if inner is not None else Euclidean()
    if method not in POD_METHODS:
        raise DdromError(f"POD of {name!r}: unknown method {method!r}; "
                         f"choose one of {sorted(POD_METHODS)}")
    S, n, m = validate_snapshots(S_loc, c, inner, name, modes)
    opts = dict(rtol=rtol, atol=atol, l2_err=l2_err, modes=modes, name=name,
                options_prefix=options_prefix, overwrite=bool(overwrite))
    exact = row_ids is not None
    if exact:
        check_all(c, method == "rcholqr" and inner.diagonal,
                  f"POD of {name!r}: row_ids (a partition-independent POD) need method 'rcholqr' and a "
                  f"Euclidean or diagonal inner product, not {method!r} with {inner!r}")
        ids = np.asarray(row_ids).ravel()
        check_all(c, ids.shape[0] == S.shape[0] and (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)),
                  f"POD of {name!r}: row_ids must hold one integer id per local row")
        opts["row_ids"] = ids.astype(np.int64)
    sigma_all, Psi, vh, info = POD_METHODS[method](S, c, inner, n, opts)
    N = Psi.shape[1]
    t1 = time.perf_counter()
    Psi, orth_err, passes = reorthonormalize(Psi, inner, c, orth_tol, n_global=n,
                                             exact=exact and info.get("reproducible", False))
    # Deterministic signs, independent of the partition: the largest |entry| of each
    # right singular vector (replicated) is made positive.
    sgn = _sign_fix(vh)
    if np.any(sgn < 0):
        Psi = Psi * sgn
        vh = vh * sgn[:, None]
    info.update(orth_err=orth_err, reorth_passes=passes,
                l2_err=float(np.sqrt(np.sum(sigma_all[N:] ** 2))),
                n_rows=n, n_snapshots=m, seconds=time.perf_counter() - t0,
                seconds_reorth=time.perf_counter() - t1)
    return PODResult(modes_loc=Psi, sigma=sigma_all[:N].copy(), sigma_all=sigma_all,
                     method=method, vh=vh, info=info)
