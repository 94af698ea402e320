"""Inner products on row-distributed snapshot blocks.

A snapshot block is this rank's rows ``S_loc`` (shape ``(n_local, m)``) of a global
``n x m`` matrix ``S``: rows are owned DOFs or owned integration points, every global
row is owned by exactly one rank, so a sum over owned rows followed by one
``allreduce`` counts everything once. An inner product is given by a symmetric
positive definite ``n x n`` matrix ``M``:

* :class:`Euclidean` -- ``M = I``;
* :class:`Diagonal` -- ``M = diag(w)`` (quadrature weights of integration points,
  lumped masses), ``w`` given on the owned rows;
* :class:`PetscMatrix` -- a distributed sparse PETSc ``Mat`` (the L2 mass matrix of
  nodal fields) whose row layout equals the layout of the snapshot rows.

Every inner product offers

* ``apply(S_loc) -> (M S)_loc`` (local rows of ``M S``; for a sparse ``M`` this is a
  collective halo exchange inside PETSc);
* ``gram(A_loc, B_loc, comm) -> A^T M B``, replicated on every rank, from the local
  contributions ``A_loc^T (M B)_loc`` summed by ONE ``allreduce`` of the whole
  ``k x l`` block (never one reduction per pair of columns);
* ``norms(A_loc, comm) -> sqrt(diag(A^T M A))`` with one ``allreduce``.

The two "diagonal" ones also expose ``row_scale`` (``None`` or ``sqrt(w)``) so that the
accurate POD methods can work on ``M^{1/2} S`` directly (TSQR, SLEPc).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ddrom.parallel import DdromError, as_mpi, check_all

__all__ = ["InnerProduct", "Euclidean", "Diagonal", "PetscMatrix", "allreduce_sum"]


def allreduce_sum(x: np.ndarray, comm: Any) -> np.ndarray:
    """Sum a float64 array over the ranks of ``comm`` (one ``Allreduce``), the same bits everywhere.

    MPI does not promise that every rank gets bitwise the same sum (with 3 ranks, recursive
    doubling adds in rank-dependent orders): rank 0's result is broadcast, so that the
    small replicated computations that follow (eigh, Cholesky, and the decisions taken on
    them, e.g. one more re-orthonormalization pass) are identical on every rank. Without
    it one rank could take an extra collective step and the others would wait forever.
    """
    from mpi4py import MPI

    c = as_mpi(comm)
    x = np.ascontiguousarray(x, dtype=np.float64)
    if c.size > 1:
        c.Allreduce(MPI.IN_PLACE, x, op=MPI.SUM)
        c.Bcast(x, root=0)
    return x


def _as_block(A: Any) -> np.ndarray:
    A = np.asarray(A, dtype=np.float64)
    if A.ndim == 1:
        A = A[:, None]
    return A


class InnerProduct:
    """Base class: ``M`` given through ``apply``; ``gram`` and ``norms`` derive from it."""

    #: ``True`` when ``M`` is diagonal (so ``M^{1/2}`` is a row scaling).
    diagonal: bool = True
    name: str = "inner product"

    def apply(self, S_loc: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def row_scale(self) -> np.ndarray | None:
        """``sqrt(w)`` on the owned rows (``None`` for the identity); only if ``diagonal``."""
        return None

    def check(self, n_local: int, comm: Any, what: str = "snapshots") -> None:
        """Collective check that ``M`` fits ``n_local`` owned rows on every rank."""
        check_all(comm, True, "")

    def gram(self, A_loc: np.ndarray, B_loc: np.ndarray | None = None, comm: Any = None
             ) -> np.ndarray:
        """``A^T M B`` (``A^T M A`` if ``B_loc`` is None), replicated, one ``allreduce``.

        For ``B_loc is None`` the local product is ``(A_loc)^T (M A)_loc`` computed with
        a symmetric rank-k update when ``M`` is diagonal (half the flops), and the
        result is symmetrized exactly so that ``eigh``/Cholesky see a symmetric matrix.
        """
        A = _as_block(A_loc)
        if B_loc is None:
            G = self._local_gram_sym(A)
            G = allreduce_sum(G, comm)
            return 0.5 * (G + G.T)
        B = _as_block(B_loc)
        return allreduce_sum(A.T @ self.apply(B), comm)

    def _local_gram_sym(self, A: np.ndarray) -> np.ndarray:
        return A.T @ self.apply(A)

    def norms(self, A_loc: np.ndarray, comm: Any = None) -> np.ndarray:
        """``||a_j||_M`` for every column of ``A``, one ``allreduce``."""
        A = _as_block(A_loc)
        loc = np.einsum("ij,ij->j", A, self.apply(A))
        return np.sqrt(np.maximum(allreduce_sum(loc, comm), 0.0))


class Euclidean(InnerProduct):
    """The Euclidean inner product ``<a, b> = a^T b`` (``M = I``)."""

    name = "Euclidean"

    def apply(self, S_loc: np.ndarray) -> np.ndarray:
        return _as_block(S_loc)

    def _local_gram_sym(self, A: np.ndarray) -> np.ndarray:
        # numpy turns ``A.T @ A`` on the same buffer into BLAS syrk (half the flops).
        return A.T @ A

    def __repr__(self) -> str:
        return "Euclidean()"


class Diagonal(InnerProduct):
    """``<a, b> = sum_i w_i a_i b_i`` with positive weights ``w`` of the owned rows.

    Parameters
    ----------
    w_local
        Weights of this rank's rows (quadrature weight times Jacobian of the owned
        integration points, lumped masses, ...). Must be finite and > 0.
    name
        Used in error messages.
    """

    def __init__(self, w_local: Any, name: str = "weights"):
        self.w = np.ascontiguousarray(np.asarray(w_local, dtype=np.float64).ravel())
        self.name = name
        self._sqrt = None

    def check(self, n_local: int, comm: Any, what: str = "snapshots") -> None:
        ok_len = self.w.shape[0] == n_local
        check_all(comm, ok_len,
                  f"Diagonal inner product {self.name!r}: {self.w.shape[0]} weights on some rank"
                  f" for {n_local} owned rows of {what!r}")
        check_all(comm, bool(np.all(np.isfinite(self.w)) and np.all(self.w > 0)),
                  f"Diagonal inner product {self.name!r}: weights must be finite and > 0")

    @property
    def row_scale(self) -> np.ndarray:
        if self._sqrt is None:
            self._sqrt = np.sqrt(self.w)
        return self._sqrt

    def apply(self, S_loc: np.ndarray) -> np.ndarray:
        A = _as_block(S_loc)
        return self.w[:, None] * A

    def _local_gram_sym(self, A: np.ndarray) -> np.ndarray:
        W = self.row_scale[:, None] * A
        return W.T @ W

    def __repr__(self) -> str:
        return f"Diagonal({self.name!r})"


class PetscMatrix(InnerProduct):
    """``<a, b> = a^T M b`` with a distributed sparse symmetric positive definite PETSc Mat.

    The row layout of ``M`` (``M.getOwnershipRange()``) must be the layout of the
    snapshot rows: rank r owns rows ``[rstart_r, rend_r)`` of both. ``apply`` on a
    block uses one sparse-times-dense product (``MatMatMult`` with a row-distributed
    dense matrix), falling back to one ``MatMult`` per column if the PETSc build
    lacks that product.
    """

    diagonal = False

    def __init__(self, M: Any, name: str = "mass matrix"):
        self.M = M
        self.name = name

    @property
    def row_scale(self) -> np.ndarray:
        raise DdromError(f"inner product {self.name!r} is a sparse matrix: no row scaling")

    def check(self, n_local: int, comm: Any, what: str = "snapshots") -> None:
        nl = self.M.getLocalSize()[0]
        check_all(comm, nl == n_local,
                  f"PetscMatrix inner product {self.name!r}: {nl} local rows on some rank but"
                  f" {n_local} owned rows of {what!r} (layouts must match)")

    def apply(self, S_loc: np.ndarray) -> np.ndarray:
        from petsc4py import PETSc

        A = _as_block(S_loc)
        n_loc, m = A.shape
        m_glob = m
        if m == 1:
            # One column (Gram-Schmidt, streaming): a plain MatMult, no dense Mat.
            return self._mult_columns(A)
        try:
            comm = self.M.getComm()
            N = self.M.getSize()[0]
            D = PETSc.Mat().createDense(size=((n_loc, N), (None, m_glob)),
                                        array=np.asfortranarray(A), comm=comm)
            P = self.M.matMult(D)
            out = np.array(P.getDenseArray(), dtype=np.float64, order="C", copy=True)
            D.destroy()
            P.destroy()
            return out.reshape(n_loc, m)
        except PETSc.Error:  # pragma: no cover - depends on the PETSc build
            return self._mult_columns(A)

    def _mult_columns(self, A: np.ndarray) -> np.ndarray:
        # Work vectors are destroyed explicitly, never left to the garbage collector:
        # petsc4py defers the destruction of parallel objects collected at different
        # times on different ranks, and its clean-up at exit can then deadlock.
        x, y = self.M.createVecs()
        try:
            out = np.empty_like(A)
            for j in range(A.shape[1]):
                x.array[:] = A[:, j]
                self.M.mult(x, y)
                out[:, j] = y.array
            return out
        finally:
            x.destroy()
            y.destroy()

    def __repr__(self) -> str:
        return f"PetscMatrix({self.name!r})"
