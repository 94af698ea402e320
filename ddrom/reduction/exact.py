"""Reductions over row-distributed arrays whose result does not depend on the partition.

Why
---
A sum over the rows of all ranks, computed as local sums then an ``allreduce``, adds in
an order that depends on which rank owns which row and on the reduction algorithm:
two partitions of one mesh give results that differ in the last bits. For most uses
that does not matter; for the offline stage it did. Measured on the demo case (one
unchanged store): 1, 2, 3 and 5 ranks gave displacement bases that differ by ~4e-11,
and the ECM, whose greedy picks points by scores that near convergence are 1e-5 of
the integrals (so input differences of 1e-10 become score differences of 1e-6 and
move candidates across the near-tie threshold), chose 8 to 12 of its 94 points
differently. With bases computed identically at every rank count the integrand,
the ECM points and weights and the Q-DEIM points were bitwise identical (measured,
1 to 3 ranks): the POD is the place to fix.

What
----
Every result here is exact, or the correctly rounded value of an exact quantity, so
it is the same bits for any partition and any number of ranks:

* :func:`reproducible_colsum`: column sums (two fixed-point digits per entry, integer
  accumulation, one int64 allreduce);
* :func:`exact_gram`: ``A^T B`` by the Ozaki scheme -- each column is split into
  ``s`` slices of ``beta`` bits on a grid fixed by the column's global maximum
  (``beta = floor((53 - log2 n) / 2)``), so that every BLAS product of two slices and
  every sum over rows and ranks is an exact integer in double precision; the slice
  products are combined in a fixed order. ``s beta >= 53`` bits are kept per entry
  (relative to the column's largest entry);
* :func:`exact_sketch`: the sparse-sign sketch ``Omega W`` of
  :func:`ddrom.reduction.pod.sparse_sign_sketch`, with ``Omega`` placed by a hash of
  GLOBAL row ids given by the caller (natural ids: the same for a row whatever its
  owner), summed exactly by slices;
* :func:`row_matmul`: a local product ``A Z`` whose row ``i`` depends only on row
  ``i`` of ``A`` (BLAS gemm is, measured on OpenBLAS, except for a single row, which
  numpy hands to gemv: padded here).

Costs: ``exact_gram`` is ``s (s + 1) / 2`` gemms (``s = 3`` up to ~8000 global rows,
``4`` up to ~4 million) instead of one syrk; the sketch ``s`` sparse products.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from ddrom.parallel import DdromError, as_mpi

__all__ = ["reproducible_colsum", "exact_gram", "exact_sketch", "row_matmul", "reproducible_sqnorms"]

#: Rows per block of the slice products (bounds the temporaries to ~s x block x columns).
_BLOCK = 4096


def reproducible_colsum(X_loc: np.ndarray, comm: Any) -> np.ndarray:
    """Column sums over the rows of all ranks, bitwise independent of the partition.

    Each entry ``x`` of column ``j`` is split exactly into two fixed-point digits on a
    grid fixed by ``E_j`` with ``max_g |x_gj| < 2^E_j`` (one ``MAX`` allreduce, exact)::

        x = q1 2^(E-b) + q2 2^(E-2b) + t,     q_i integers, |q_i| <= 2^b

    with ``b = min(50, 62 - ceil(log2 G))`` bits (42 for a million rows) so that integer
    sums cannot overflow int64. The digits are summed exactly (in float by blocks
    small enough to be exact, then in int64; across ranks by one int64 ``SUM``
    allreduce, exact in any order) and ``Q1 2^(E-b) + Q2 2^(E-2b)`` is rounded once to
    double. The tails ``|t| <= 2^(E-2b-1)`` (``~2e-26 max|x|`` for a million rows) are
    dropped deterministically, entry by entry. The result is thus the correctly rounded
    sum of the truncated entries: the same bits for any number of ranks.
    Cost: about a dozen vectorized passes over ``X`` and two small allreduces.
    """
    X = np.asarray(X_loc, dtype=float)
    return _reproducible_colsum_chunks(lambda i0, i1: X[i0:i1], X.shape[0], X.shape[1], comm)


def _reproducible_colsum_chunks(chunk, nloc: int, ncol: int, comm: Any) -> np.ndarray:
    """:func:`reproducible_colsum` of a matrix produced by blocks of rows ``chunk(i0, i1)``
    (called twice per block: the matrix is never formed)."""
    from mpi4py import MPI

    c = as_mpi(comm)
    n = c.allreduce(nloc, op=MPI.SUM)
    bits = int(min(50, 62 - math.ceil(math.log2(max(n, 2)))))
    # rows per block: the float sum of a block of digits (|q| <= 2^bits) stays exact
    step = int(max(1, min(2 ** (53 - bits), (1 << 20) // max(ncol, 1))))
    amax = np.zeros(ncol)
    for i0 in range(0, nloc, step):
        np.maximum(amax, np.abs(chunk(i0, min(i0 + step, nloc))).max(axis=0), out=amax)
    c.Allreduce(MPI.IN_PLACE, amax, op=MPI.MAX)
    _, E = np.frexp(amax)                              # amax < 2^E (amax = 0: E = 0)
    E = E.astype(np.int64)
    nb = 2
    up = [np.ldexp(1.0, bits * (k + 1) - E) for k in range(nb)]     # powers of two:
    down = [np.ldexp(1.0, E - bits * (k + 1)) for k in range(nb)]   # products are exact
    digits = np.zeros((nb, ncol), dtype=np.int64)
    for i0 in range(0, nloc, step):
        R = np.array(chunk(i0, min(i0 + step, nloc)), dtype=float)
        for k in range(nb):
            Q = np.rint(R * up[k])                     # |Q| <= 2^bits
            digits[k] += Q.sum(axis=0).astype(np.int64)
            if k + 1 < nb:
                R -= Q * down[k]                       # exact: the remainder is representable
    c.Allreduce(MPI.IN_PLACE, digits, op=MPI.SUM)
    out = np.empty(ncol)
    for j in range(ncol):
        total = 0
        for k in range(nb):                            # exact in Python integers
            total = (total << bits) + int(digits[k, j])
        out[j] = math.ldexp(float(total), int(E[j]) - nb * bits) if total else 0.0
    return out




def _col_exponents(X: np.ndarray, c: Any) -> np.ndarray:
    """``E_j`` with ``max_{all ranks} |X_ij| < 2^E_j`` (0 for a zero column), one exact MAX allreduce."""
    from mpi4py import MPI

    amax = np.zeros(X.shape[1])
    for i0 in range(0, X.shape[0], _BLOCK):
        np.maximum(amax, np.abs(X[i0:i0 + _BLOCK]).max(axis=0), out=amax)
    c.Allreduce(MPI.IN_PLACE, amax, op=MPI.MAX)
    return np.frexp(amax)[1].astype(np.int64)


def _slices(R: np.ndarray, E: np.ndarray, bits: int, s: int) -> list[np.ndarray]:
    """``R ~= sum_k q_k 2^(E - k bits)`` with integer-valued ``|q_k| <= 2^bits`` (exact
    remainders; what is left below the last slice is dropped, entry by entry)."""
    R = np.array(R, dtype=float, copy=True)
    out = []
    for k in range(1, s + 1):
        up = np.ldexp(1.0, (k * bits - E))[None, :]
        q = np.rint(R * up)
        out.append(q)
        if k < s:
            R -= q * np.ldexp(1.0, (E - k * bits))[None, :]
    return out


def _bits_and_slices(terms: int, per_product: bool) -> tuple[int, int]:
    """Bits per slice so that ``terms`` products (or digits) sum exactly in double, and slices."""
    logn = math.ceil(math.log2(max(terms, 2)))
    bits = (53 - logn) // 2 if per_product else 53 - logn
    if bits < 8:
        raise DdromError(f"exact reduction: {terms} terms are too many for exact double sums")
    return bits, min(8, math.ceil(53 / bits))


def exact_gram(A_loc: np.ndarray, comm: Any, B_loc: np.ndarray | None = None) -> np.ndarray:
    """``A^T B`` (``A^T A`` if ``B_loc`` is None) over the rows of all ranks, bitwise
    independent of the partition; replicated on every rank.

    The entries are ``A^T B`` for ``A`` and ``B`` rounded to ``s beta`` bits below
    their columns' largest entries (53 bits or more), computed exactly and rounded to
    double once per slice pair in a fixed order. ``A^T A`` is exactly symmetric.
    """
    from mpi4py import MPI

    c = as_mpi(comm)
    A = np.asarray(A_loc, dtype=float)
    sym = B_loc is None
    B = A if sym else np.asarray(B_loc, dtype=float)
    if A.shape[0] != B.shape[0]:
        raise DdromError(f"exact_gram: A has {A.shape[0]} rows and B {B.shape[0]} on this rank")
    n = c.allreduce(A.shape[0], op=MPI.SUM)
    bits, s = _bits_and_slices(n, per_product=True)
    EA = _col_exponents(A, c)
    EB = EA if sym else _col_exponents(B, c)
    pairs = [(k, l) for k in range(1, s + 1) for l in range(1, s + 1) if k + l <= s + 1 and (not sym or k <= l)]
    p, q = A.shape[1], B.shape[1]
    T = np.zeros((len(pairs), p, q))
    for i0 in range(0, A.shape[0], _BLOCK):
        qa = _slices(A[i0:i0 + _BLOCK], EA, bits, s)
        qb = qa if sym else _slices(B[i0:i0 + _BLOCK], EB, bits, s)
        for t, (k, l) in enumerate(pairs):
            T[t] += qa[k - 1].T @ qb[l - 1]          # integers below 2^53: exact, any order
    c.Allreduce(MPI.IN_PLACE, T, op=MPI.SUM)           # exact: |sums| <= n 2^(2 bits) <= 2^53
    G = np.zeros((p, q))
    expo = EA[:, None] + EB[None, :]
    for t, (k, l) in enumerate(pairs):                  # fixed order: deterministic rounding
        G += np.ldexp(T[t], expo - (k + l) * bits)
        if sym and k != l:
            G += np.ldexp(T[t].T, expo - (k + l) * bits)
    if sym:
        G = 0.5 * (G + G.T)                             # exactly symmetric (already equal up to order)
    return G


def reproducible_sqnorms(A_loc: np.ndarray, comm: Any, w_loc: np.ndarray | None = None) -> np.ndarray:
    """``sum_i w_i A_ij^2`` per column (``w = 1`` if None), bitwise independent of the partition."""
    A = np.asarray(A_loc, dtype=float)
    w = None if w_loc is None else np.asarray(w_loc, dtype=float).ravel()

    def chunk(i0: int, i1: int) -> np.ndarray:
        blk = A[i0:i1]
        sq = blk * blk                                  # elementwise: the same bits wherever the row is
        return sq if w is None else sq * w[i0:i1, None]

    return _reproducible_colsum_chunks(chunk, A.shape[0], A.shape[1], comm)


def row_matmul(A: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """``A @ Z`` with each row computed the same way whatever the number of rows.

    numpy sends a one-row product to BLAS gemv, whose rounding differs from gemm's
    (measured); a single row is padded to two.
    """
    A = np.asarray(A, dtype=float)
    if A.shape[0] == 1:
        return (np.vstack([A, np.zeros_like(A)]) @ Z)[:1]
    return A @ Z


def exact_sketch(W_loc: np.ndarray, row_ids: np.ndarray, k: int, comm: Any, nnz: int = 4,
                 seed: int = 0x5EED, chunk: int = 32768) -> np.ndarray:
    """The sparse-sign sketch ``Omega W`` (``k x m``), bitwise independent of the partition.

    ``Omega`` (``k x n``) has ``nnz`` entries ``+-1/sqrt(nnz)`` per column, at rows and
    with signs given by a hash of (``row_ids[i]``, seed) -- the caller's global ids,
    e.g. natural DOF ids, so that a row is sketched the same way on any rank. The sum
    over rows and ranks is exact (``W`` split in slices of integers, sparse products of
    +-1 entries, one allreduce), then scaled once per slice in a fixed order.
    """
    import scipy.sparse as sps
    from mpi4py import MPI

    from ddrom.reduction.pod import _splitmix64

    c = as_mpi(comm)
    W = np.asarray(W_loc, dtype=float)
    ids = np.asarray(row_ids, dtype=np.int64).ravel()
    n_loc, m = W.shape
    if ids.shape[0] != n_loc:
        raise DdromError(f"exact_sketch: {ids.shape[0]} row ids for {n_loc} rows on this rank")
    n = c.allreduce(n_loc, op=MPI.SUM)
    bits, s = _bits_and_slices(n * nnz, per_product=False)
    E = _col_exponents(W, c)
    Y = np.zeros((s, k, m))
    t = np.arange(nnz, dtype=np.uint64)
    key = np.uint64((int(seed) * 0xD1B54A32D192ED03) & 0xFFFFFFFFFFFFFFFF)
    for a in range(0, n_loc, chunk):
        b = min(n_loc, a + chunk)
        g = ids[a:b].astype(np.uint64)
        h = _splitmix64((g[:, None] * np.uint64(nnz) + t) ^ key).ravel()
        rows = ((h >> np.uint64(1)) % np.uint64(k)).astype(np.int32)
        vals = np.where((h & np.uint64(1)).astype(bool), -1.0, 1.0)
        indptr = np.arange(0, (b - a) * nnz + 1, nnz, dtype=np.int32)
        Om = sps.csc_matrix((vals, rows, indptr), shape=(k, b - a))
        for j, q in enumerate(_slices(W[a:b], E, bits, s)):
            Y[j] += Om @ q                               # +-integers below 2^53: exact
    c.Allreduce(MPI.IN_PLACE, Y, op=MPI.SUM)
    out = np.zeros((k, m))
    for j in range(s):
        out += np.ldexp(Y[j], (E - (j + 1) * bits)[None, :])
    return out / np.sqrt(nnz)
