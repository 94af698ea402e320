"""Non-negative least squares by the Lawson-Hanson active-set method, warm-startable.

Problem: ``min_x ||M x - b||_2  subject to  x >= 0`` with ``M`` (``m x n``) small and
dense (in ddrom: the transposed rows of the selected integration points, ECM).

Algorithm (Lawson & Hanson 1974, ch. 23)
-----------------------------------------
State: a *passive* set ``P`` (the columns allowed to be non-zero) and ``x`` with
``x_P`` the unconstrained least-squares solution on ``M_P`` and ``x_P > 0``,
``x_{not P} = 0``. Outer loop: the gradient ``w = M^T (b - M x)``; if ``w_j <= tol_j``
for every ``j`` not in ``P`` the KKT conditions hold and ``x`` is optimal; otherwise the
column with the largest ``w_j`` enters ``P`` and ``z = argmin ||M_P z - b||`` is
computed. Inner loop: while some ``z_i <= 0`` on ``P``, move ``x`` towards ``z`` as far
as feasibility allows (``alpha = min x_i / (x_i - z_i)`` over those ``i``), remove the
columns that reached zero from ``P`` and re-solve. Each outer step strictly decreases
the residual, so the method terminates; the passive columns stay linearly
independent, hence ``|P| <= rank(M) <= m``.

Warm start
----------
:class:`LawsonHanson` keeps the thin QR factorization of ``M_P`` (``Q`` ``m x |P|``,
``R`` ``|P| x |P|``) between calls and updates it when a column enters (one
orthogonalization, ``scipy.linalg.qr_insert`` on the economic factors) or leaves (Givens
rotations, ``qr_delete``): O(m |P|) per change instead of a new O(m |P|^2)
factorization. A full ``m x m`` ``Q`` made every change O(m^2) and copied ``m^2``
numbers; with ``m`` in the thousands (integrand columns of an enrichment's ECM) that
copy was most of the enrichment's cost. Columns can be appended to the pool between solves; a
solve then *continues* from the current optimal state of the previous problem, which
is a valid Lawson-Hanson state of the enlarged problem, so the method only does the
work the new columns require. This is what the greedy of the empirical cubature
needs: one new column per greedy iteration.

A solve may also start from a given *initial passive set* (:func:`nnls` with
``passive=``): its columns are factored (dependent ones skipped), the least-squares
solution on them is computed, and columns with a non-positive coefficient are
removed and the solution recomputed until it is positive (this reaches a valid
state; the outer loop then makes it optimal).

Numerical safeguards
--------------------
* An entering column ``j`` whose distance to ``span(M_P)`` (the new diagonal entry of
  ``R``) is below ``rcond * ||M_j||`` is numerically dependent: it is rejected (kept at
  zero) until the next successful step, as is a column whose least-squares coefficient
  comes out non-positive on entry (which exact arithmetic excludes).
* Optimality test: ``w_j <= gtol * ||M_j|| * ||b||`` with ``gtol = 10 m eps`` by
  default (the gradient is only known to about that accuracy).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

EPS = float(np.finfo(float).eps)


@dataclass
class NNLSResult:
    """Solution ``x >= 0``, residual norm ``||M x - b||`` and outer iterations done."""

    x: np.ndarray
    rnorm: float
    n_iterations: int


class LawsonHanson:
    """Lawson-Hanson NNLS on a pool of columns that can grow and shrink between solves.

    Parameters
    ----------
    b : (m,) target vector.
    rcond : dependence threshold for entering columns (relative to the column norm);
        default ``max(m, 10) * 10 eps``.
    gtol : optimality tolerance on the normalized gradient (see module docstring);
        default ``10 m eps``.

    The pool columns are numbered in the order they were added (:meth:`add_columns`);
    :meth:`remove_columns` renumbers the remaining ones consecutively, keeping order.
    """

    def __init__(self, b: np.ndarray, rcond: float | None = None, gtol: float | None = None):
        self.b = np.array(b, dtype=float).ravel()
        m = self.b.size
        self.m = m
        self.rcond = max(m, 10) * 10 * EPS if rcond is None else float(rcond)
        self.gtol = 10 * m * EPS if gtol is None else float(gtol)
        self.bnorm = float(np.linalg.norm(self.b))
        # pool columns stored as the rows of a buffer with spare capacity: one column per
        # greedy iteration is appended without copying the pool (amortized doubling)
        self._rows = np.zeros((16, m))
        self._n = 0
        self.colnorm = np.zeros(0)
        self.x = np.zeros(0)
        self.passive: list[int] = []          # pool indices, in the column order of R
        self.Q = np.zeros((m, 0))
        self.R = np.zeros((0, 0))

    # ----------------------------------------------------------------- pool
    @property
    def n(self) -> int:
        return self._n

    def add_columns(self, C: np.ndarray) -> None:
        """Append columns (``m x k`` or ``(m,)``) to the pool, at zero (not passive)."""
        C = np.asarray(C, dtype=float)
        if C.ndim == 1:
            C = C[:, None]
        k = C.shape[1]
        if self._n + k > self._rows.shape[0]:
            grown = np.zeros((max(2 * self._rows.shape[0], self._n + k), self.m))
            grown[:self._n] = self._rows[:self._n]
            self._rows = grown
        self._rows[self._n:self._n + k] = C.T
        self._n += k
        self.colnorm = np.concatenate([self.colnorm, np.linalg.norm(C, axis=0)])
        self.x = np.concatenate([self.x, np.zeros(k)])

    def remove_columns(self, drop: np.ndarray) -> None:
        """Remove pool columns (boolean mask or indices); they must be at zero (not passive)."""
        mask = np.zeros(self.n, dtype=bool)
        mask[drop] = True
        if any(mask[j] for j in self.passive):
            raise ValueError("cannot remove a passive column")
        keep = np.flatnonzero(~mask)
        new_index = -np.ones(self.n, dtype=int)
        new_index[keep] = np.arange(keep.size)
        self._rows[:keep.size] = self._rows[keep]
        self._n = keep.size
        self.colnorm = self.colnorm[keep]
        self.x = self.x[keep]
        self.passive = [int(new_index[j]) for j in self.passive]

    # ----------------------------------------------------------------- QR of M_P
    def _qr_append(self, j: int) -> bool:
        """Append pool column j to the factorization; False (and undone) if dependent."""
        k = len(self.passive)
        if k >= self.m or self.colnorm[j] == 0.0:
            return False
        u = self._rows[j]
        if k == 0:
            Q, R = sla.qr(u[:, None], mode="economic")
        else:
            try:
                Q, R = sla.qr_insert(self.Q, self.R, u, k, which="col", check_finite=False)
            except np.linalg.LinAlgError:       # the thin update refuses a column in span(Q)
                return False
        if abs(R[k, k]) <= self.rcond * self.colnorm[j]:
            return False
        self.Q, self.R = Q, R
        self.passive.append(j)
        return True

    def _qr_delete(self, positions: list[int]) -> None:
        for pos in sorted(positions, reverse=True):
            if len(self.passive) == 1:
                self.Q, self.R = np.zeros((self.m, 0)), np.zeros((0, 0))
            else:
                self.Q, self.R = sla.qr_delete(self.Q, self.R, pos, 1, which="col",
                                               check_finite=False)
            del self.passive[pos]

    def _ls(self) -> np.ndarray:
        """Least-squares coefficients on the passive columns (in passive order)."""
        k = len(self.passive)
        if k == 0:
            return np.zeros(0)
        qtb = self.Q[:, :k].T @ self.b
        return sla.solve_triangular(self.R[:k, :k], qtb, check_finite=False)

    def residual(self) -> np.ndarray:
        # x is zero outside the passive set (invariant): no need to gather columns
        return self.b - self._rows[:self._n].T @ self.x

    # ----------------------------------------------------------------- algorithm
    def _inner(self, z: np.ndarray) -> None:
        """Lawson-Hanson inner loop from the feasible x towards z (passive order)."""
        while True:
            P = np.asarray(self.passive)
            bad = z <= 0.0
            if not bad.any():
                self.x[P] = z
                return
            xP = self.x[P]
            ratios = xP[bad] / (xP[bad] - z[bad])
            alpha = ratios.min()
            xP = xP + alpha * (z - xP)
            out = np.zeros(P.size, dtype=bool)
            out[np.flatnonzero(bad)[ratios == alpha]] = True   # the blocking ones, exactly
            out |= xP <= 0.0
            self.x[P] = np.where(out, 0.0, xP)
            self._qr_delete(list(np.flatnonzero(out)))
            z = self._ls()

    def set_passive(self, idx) -> None:
        """Initial passive set (warm start): factor these columns, then reach a valid state.

        Dependent columns are skipped; columns whose least-squares coefficient is not
        positive are removed (all at once) and the solution recomputed, until positive.
        """
        self._qr_delete(list(range(len(self.passive))))
        self.x[:] = 0.0
        for j in idx:
            self._qr_append(int(j))
        z = self._ls()
        while z.size and (z <= 0).any():
            self._qr_delete(list(np.flatnonzero(z <= 0)))
            z = self._ls()
        if z.size:
            self.x[np.asarray(self.passive)] = z

    def solve(self, max_iter: int | None = None) -> NNLSResult:
        """Run the outer loop from the current state until the KKT conditions hold."""
        max_iter = 3 * max(self.n, 1) + 10 if max_iter is None else max_iter
        rejected = np.zeros(self.n, dtype=bool)
        it = 0
        while it < max_iter:
            r = self.residual()
            w = self._rows[:self._n] @ r
            cand = ~rejected & (w > self.gtol * self.colnorm * self.bnorm)
            cand[self.passive] = False
            if not cand.any():
                break
            it += 1
            j = int(np.flatnonzero(cand)[np.argmax(w[cand])])
            if not self._qr_append(j):
                rejected[j] = True
                continue
            z = self._ls()
            if z[-1] <= 0.0:                  # excluded in exact arithmetic: round-off
                self._qr_delete([len(self.passive) - 1])
                rejected[j] = True
                continue
            rejected[:] = False
            self._inner(z)
        return NNLSResult(self.x.copy(), float(np.linalg.norm(self.residual())), it)


def nnls(M: np.ndarray, b: np.ndarray, passive=None, max_iter: int | None = None,
         rcond: float | None = None) -> NNLSResult:
    """``min ||M x - b||, x >= 0`` by Lawson-Hanson, optionally from an initial passive set.

    Parameters
    ----------
    M : (m, n) array.
    b : (m,) array.
    passive : indices of the initial passive set (warm start), or None (cold start).
    """
    M = np.asarray(M, dtype=float)
    solver = LawsonHanson(b, rcond=rcond)
    solver.add_columns(M)
    if passive is not None:
        solver.set_passive(np.asarray(passive, dtype=int).ravel())
    return solver.solve(max_iter)
