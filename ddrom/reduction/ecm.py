"""Distributed empirical cubature method (ECM): a reduced quadrature with non-negative weights.

Data model
----------
Each rank owns some integration points (rows): ``A_loc`` (``G_local x c``) holds the
integrand functions (columns) at those points, ``w_loc`` the full quadrature weights
and ``gid_loc`` the GLOBAL ids of the points (natural ids ``cell_natural * nq + q``).
The ids are the identity of the chosen points and break ties, so that the result
does not depend on how the points are distributed.

Problem (Hernandez, Caicedo & Ferrer, CMAME 2017)
--------------------------------------------------
Exact integrals ``b = A^T w`` (``b_j = sum_g w_g A_gj``). With the constant column
appended (``add_constant=True``), ``A <- [A, s 1]``: the reduced rule then also
integrates the constant, i.e. ``sum_k omega_k = V = sum_g w_g`` (the volume) to the
tolerance. The scale ``s``, ``sqrt(mean_j ||A_j||_W^2 / V)`` (``||f||_W^2 = sum_g w_g
f_g^2``) rounded to the nearest power of two, gives the constant column about the RMS
weighted norm of the other columns (``~1/sqrt(V)`` for W-orthonormal columns, e.g.
from :func:`integrand_matrix_columns`), so that it weighs in the residual like the
others. (The rounding makes ``s`` the same for any partition although the norms are
summed in a partition-dependent order; only a value within round-off of a rounding
boundary, ``~1e-16`` relative, could differ.) Find points ``Z`` (``K`` of them)
and weights ``omega >= 0`` with::

    ||J^T omega - b||_2 <= tol ||b||_2,      J = A[Z, :]   (K x c)

The columns are used as given (NOT normalized): they define the norm in which the
integration error is measured. For an integrand ``f = A c`` in their span, the error
of the reduced rule is ``|c^T (J^T omega - b)| <= ||c|| tol ||b||``. To weigh all
directions of a large set of integrands equally, compress them first with
:func:`integrand_matrix_columns` (W-orthonormal columns).

Greedy (Lawson-Hanson with a normalized entering rule)
------------------------------------------------------
``r = b``; repeat while ``||r|| > tol ||b||``:

1. candidate ``g* = argmax_g <A_g, r> / ||A_g||`` over the points not in ``Z`` with a
   positive correlation (a point with ``<A_g, r> <= 0`` cannot decrease the residual
   with a non-negative weight). The ROWS are normalized so that the test measures the
   angle between a point's integrand vector and the residual, not its magnitude (the
   classic ECM choice). Rows of norm zero are never candidates.
2. ``Z <- Z + {g*}``; ``omega = argmin_{omega >= 0} ||J^T omega - b||`` by Lawson-Hanson
   (:mod:`ddrom.reduction.nnls`) warm-started from the previous solution: its passive
   set and the QR factorization of ``J^T`` restricted to it are kept and updated.
3. Points whose weight went to zero leave ``Z`` (they may be chosen again later);
   ``r = b - J^T omega``. With ``keep_pool`` (default for a warm start) they stay in the
   NNLS pool, out of the rule: the Lawson-Hanson outer loop brings one back when its
   gradient turns positive, without a greedy iteration.

Since ``<A_g*, r> > 0`` is the NNLS gradient of the new column, each step strictly
decreases ``||r||`` in exact arithmetic and the passive columns stay linearly
independent: ``K <= rank <= c (+1 with the constant)``. Safeguards for round-off: a
point that the NNLS rejects at once (numerically dependent on ``Z``) is excluded from
the candidates until the next successful step; the loop also stops when no candidate
has a positive correlation, at ``max_points``, or after ``max_iterations``
(``result.converged`` and ``result.stop_reason`` tell; it does not raise).

Distribution and determinism
----------------------------
* ``b`` and the volume are sums over all points computed by an exact-then-rounded
  reproducible summation (:func:`reproducible_colsum`: integer accumulation of
  fixed-point digits, one int64 allreduce), so they are bitwise identical for any
  number of ranks and any partition (a plain allreduce is not, and the test with a
  symmetric Gauss rule then picks mirror-image points at 3 ranks: measured). A caller
  that passes ``integrals`` (kept from earlier, smaller column sets) must give them with
  the same property; :mod:`ddrom.rom.integrand` sums its new columns the same way.
* Scores ``<A_g, r>/||A_g||`` are computed row by row by numpy's ``einsum`` loop,
  whose result depends only on the row's values, not on its position in the local
  array (a BLAS ``gemv`` rounds a row differently depending on where it falls in its
  blocking; measured). By default in single precision from a single-precision copy of
  ``A`` (``score_dtype``): the scores only rank the candidates, and the pass over ``A``
  is the largest per-iteration cost (measured 0.43 -> 0.16 ms at 8448 x 264).
* The argmax is :func:`ddrom.parallel.argmax.argmax_with_owner` (shared with Q-DEIM and
  the farthest-point sensors): one ``Allgather`` of each rank's best score and near-ties;
  the largest score, then the smallest global id among the near-ties (scores within
  ``tie_rtol`` of the best), then its owner (two more reductions only if a rank has many
  near-ties).
* The owner broadcasts the chosen row (``Bcast`` from the owner); the NNLS is solved
  redundantly on every rank on identical data, with BLAS limited to one thread
  (threadpoolctl) so that every rank, at any rank count, rounds the same way.

Hence the selected points and weights are the same bits on 1, 2, 3... ranks (given
the same integrand values), and two runs give the same result.

Batches
-------
With ``batch = m > 1`` one pass over ``A`` serves up to ``m`` greedy steps: the ``m`` best
candidates of the pass (largest scores, ties to the smallest global id, as ``m``
successive picks on these scores would give; one ``Allgather``, only the picks provable
from each rank's best ``m + 8`` scores and its largest unsent one) and their rows (one
reduction) are replicated; then, while the tolerance is not met, the candidate of largest
*current* normalized score (double precision, from the replicated rows) is taken and the
NNLS solved, as in step 2-3. The stopping rule is the same (``||r|| <= tol ||b||``, each
step a positive-correlation step); what changes is that steps after the first choose
among the pass's candidates rather than among all points, so the points may differ from
the one-per-pass greedy (not the guarantee). Should a batched run stop short of the
tolerance with no positive correlation left (measured on the test bar at ``tol = 1e-8``,
where the rule must be exact, ``K = c``: 35 of 36 points, relative residual 1.3e-8; the
one-point greedy from the same start stopped at 3.0e-8), the greedy is run again from
scratch, one point per pass (the offline stage's ECM), and the better rule kept; the same
for a warm start that stops short without batches. It trades ``m - 1`` passes over ``A`` and ``2
(m - 1)`` latency-bound collectives for a local choice: the warm-started ECM of an
enrichment (:mod:`ddrom.rom.enrichment`), which adds some 30 points per call. Same data
on every rank, so the same points for any partition.

Warm start and imposed points
-----------------------------
``initial_points`` (global ids): the greedy starts from the NNLS solution on these
points (initial passive set), e.g. the current points when the basis is enriched.
``zero_weight_points``: returned in the point set with weight 0 (unless the greedy
selected them anyway), and not used in the integration: the sample points that
Gappy-POD needs on top of the cubature points.

Result ordering: ``point_gids`` are sorted by global id (ascending);
``selection_history`` keeps the order in which the greedy picked points.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.optimize

from ddrom.parallel import DdromError, Timers, as_mpi, check_all, collective
from ddrom.parallel.argmax import argmax_with_owner
from ddrom.reduction.exact import _reproducible_colsum_chunks, reproducible_colsum  # noqa: F401
from ddrom.reduction.nnls import LawsonHanson

NNLS_METHODS = ("lawson-hanson", "scipy")
SCORE_DTYPES = ("float32", "float64")
EPS_ = float(np.finfo(float).eps)


# ============================================================================ results
@dataclass
class ECMResult:
    """Reduced quadrature (identical on every rank except ``local_index``).

    Attributes
    ----------
    point_gids : (K,) int64, global ids sorted ascending (cubature points and
        imposed zero-weight points).
    weights : (K,) float, ``>= 0``; exactly 0 for the imposed points.
    rows : (K, c) integrand values at the points (the columns as passed, without
        the appended constant column), replicated.
    owners : (K,) rank owning each point.
    local_index : (K,) index of the point in this rank's arrays, -1 if not owned here.
    zero_weight : (K,) True for imposed points (``zero_weight_points``) that are not
        cubature points.
    integrals : (c,) exact integrals ``A^T w`` of the given columns.
    volume : ``sum(w)``.
    constant_scale : value ``s`` of the appended constant column (0 if none).
    residual_history : ``||r|| / ||b||`` at the start and after each greedy iteration.
    selection_history : global id picked at each greedy iteration.
    n_iterations, converged, stop_reason, relative_residual : as named.
    timings : seconds per stage on this rank (``setup``, ``scores``, ``argmax_reduce``,
        ``row_bcast``, ``nnls``).
    """

    point_gids: np.ndarray
    weights: np.ndarray
    rows: np.ndarray
    owners: np.ndarray
    local_index: np.ndarray
    zero_weight: np.ndarray
    integrals: np.ndarray
    volume: float
    constant_scale: float
    residual_history: np.ndarray
    selection_history: np.ndarray
    n_iterations: int
    converged: bool
    stop_reason: str
    relative_residual: float
    timings: dict = field(default_factory=dict)

    @property
    def n_points(self) -> int:
        """Number of cubature points (positive weight)."""
        return int(np.count_nonzero(~self.zero_weight))

    @property
    def owned(self) -> np.ndarray:
        """(K,) True for the points owned by this rank."""
        return self.local_index >= 0

    def integrate(self, values: np.ndarray) -> np.ndarray:
        """Reduced integral ``sum_k omega_k f(x_k)`` of values at the points (K, ...)."""
        return np.tensordot(self.weights, np.asarray(values), axes=(0, 0))


@dataclass
class IntegrandBasis:
    """Compressed integrand columns from :func:`integrand_matrix_columns`.

    ``columns_loc = A_loc @ V`` (scaled) or ``A_loc @ V / sigma`` (orthonormal), with
    ``sigma`` the kept singular values and ``sigma_all`` all of them.
    """

    columns_loc: np.ndarray
    sigma: np.ndarray
    V: np.ndarray
    sigma_all: np.ndarray


# ============================================================================ columns by products
class PointProducts:
    """ECM columns given as one small matrix product per point, never formed whole.

    ``A[g] = vec(left[g] @ right[g])`` with ``left`` (G, n, m) and ``right`` (G, m, s): the
    ``n s`` columns of the reduced internal forces, strains of the displacement modes
    against the (weighted) stress modes (:mod:`ddrom.rom.integrand`). :func:`ecm` takes it in
    place of ``A_loc``: its one pass fills the single-precision score copy and the row norms
    block by block, and the rows of the points it picks are recomputed from their factors;
    the double-precision ``A`` (``G n s`` doubles per rank) never exists. Indexing (an int,
    a slice, an integer array) returns the rows, ``np.asarray`` the whole matrix.

    Each row is computed from its own point's factors by ``np.matmul`` on the stack (one
    BLAS product per point, whose rounding does not depend on the point's place in the
    stack), so a row has the same bits whether it is computed with all of them, in a block
    or alone (tested): the ECM's choices stay partition-independent.

    Why: at 121k points per rank, n = 20, s = 48, the whole product and its copy took
    3-4 s of which 2.4 s in the kernel (page faults of a fresh 0.9 GB array, transparent
    huge pages), against 0.27 s by blocks, and the peak went from 1.74 to 0.86 GB
    (``benchmarks/temperature_fields.py``'s enrichments, measured).
    """

    def __init__(self, left: np.ndarray, right: np.ndarray):
        left, right = np.asarray(left), np.asarray(right)
        if left.ndim != 3 or right.ndim != 3 or left.shape[0] != right.shape[0] \
                or left.shape[2] != right.shape[1]:
            raise DdromError(f"ecm: PointProducts needs left (G, n, m) and right (G, m, s), got "
                             f"{left.shape} and {right.shape}")
        self.left, self.right = left, right
        self.shape = (left.shape[0], left.shape[1] * right.shape[2])
        self.ndim, self.dtype = 2, np.dtype(float)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, (int, np.integer)):
            return self[np.array([idx])][0]
        if not isinstance(idx, slice):
            idx = np.asarray(idx)
        left, right = self.left[idx], self.right[idx]
        return np.matmul(left, right).reshape(left.shape[0], self.shape[1])

    def __array__(self, dtype=None) -> np.ndarray:
        full = self[:]
        return full if dtype is None else full.astype(dtype)

    def finite(self) -> bool:
        """Whether both factors hold finite values only (the products may still overflow:
        the ECM checks its row norms too)."""
        return bool(np.isfinite(self.left).all() and np.isfinite(self.right).all())


# ============================================================================ helpers
def _row_dots(A: np.ndarray, v: np.ndarray, chunk: int) -> np.ndarray:
    """``A_g . v`` for every row, the same bits wherever the row sits in ``A``.

    numpy's ``einsum`` (C loop, no BLAS) computes each output entry by one SIMD dot
    product over the row, independent of the row's position and of the other rows.
    A BLAS ``gemv`` is not: OpenBLAS rounds a row differently depending on its offset
    in the matrix (measured: hundreds of 1-ulp mismatches on 5000 rows), which would
    make near-ties, hence the selected points, depend on the partition.
    ``tests/test_ecm.py::test_row_scores_do_not_depend_on_position`` guards this.
    """
    out = np.empty(A.shape[0], dtype=np.result_type(A, v))
    for i0 in range(0, A.shape[0], chunk):
        np.einsum("ij,j->i", A[i0:i0 + chunk], v, out=out[i0:i0 + chunk])
    return out


def _scores(A: np.ndarray, r: np.ndarray, s: float, nc: int, add_constant: bool, rownorm: np.ndarray,
            excluded: np.ndarray, chunk: int) -> tuple[np.ndarray | None, float]:
    """Normalized correlations ``<[A_g, s], r> / ||[A_g, s]||`` (excluded rows: -inf) and their max.

    ``A`` may be a single-precision copy: the dot products are then computed in single
    precision from ``r`` rounded to single (a ranking, not a value: see :func:`_ecm`).
    """
    if A.shape[0] == 0:
        return None, -math.inf
    v = r[:nc].astype(A.dtype)
    sc = _row_dots(A, v, chunk).astype(float)
    if add_constant:
        sc += s * r[nc]
    sc /= rownorm
    sc[excluded] = -math.inf
    return sc, float(sc.max())


class _Located:
    """Owners, local indices and replicated rows of given global ids."""

    def __init__(self, owners, local_index, rows):
        self.owners, self.local_index, self.rows = owners, local_index, rows


def _locate(gids: np.ndarray, gid_sorted: np.ndarray, order: np.ndarray, A_loc: np.ndarray,
            comm, what: str) -> _Located:
    """Find the owner of each global id (one allreduce) and replicate its row (one more)."""
    from mpi4py import MPI

    k = gids.size
    pos = np.searchsorted(gid_sorted, gids)
    pos_c = np.minimum(pos, max(gid_sorted.size - 1, 0))
    found = (pos < gid_sorted.size) & (gid_sorted[pos_c] == gids) if gid_sorted.size else \
        np.zeros(k, dtype=bool)
    lidx = np.where(found, order[pos_c] if gid_sorted.size else 0, -1)
    owner = np.where(found, comm.rank, -1).astype(np.int64)
    count = found.astype(np.int64)
    cnt = np.empty_like(count)
    comm.Allreduce(count, cnt, op=MPI.SUM)
    own = np.empty_like(owner)
    comm.Allreduce(owner, own, op=MPI.MAX)
    missing = gids[cnt == 0]
    dup = gids[cnt > 1]
    check_all(comm, missing.size == 0,
              f"{what}: global point ids not found on any rank: {missing[:10].tolist()}")
    check_all(comm, dup.size == 0,
              f"{what}: global point ids owned by several ranks: {dup[:10].tolist()}")
    rows = np.zeros((k, A_loc.shape[1]))
    if found.any():
        rows[found] = A_loc[lidx[found]]
    comm.Allreduce(MPI.IN_PLACE, rows, op=MPI.SUM)     # one non-zero term per entry: exact
    return _Located(own.astype(int), lidx.astype(int), rows)


def _as_gid_list(x, what: str) -> np.ndarray:
    if x is None:
        return np.zeros(0, dtype=np.int64)
    a = np.asarray(x)
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise DdromError(f"{what} must be a 1-D array of integer global point ids")
    a = a.astype(np.int64)
    if np.unique(a).size != a.size:
        raise DdromError(f"{what} contains repeated global ids")
    return a


# ============================================================================ validation
def _validate(A_loc, w_loc, gid_loc, comm, tol, max_points, max_iterations, nnls,
              initial_points, zero_weight_points, integrals=None):
    with collective(comm, "ecm"):
        products = isinstance(A_loc, PointProducts)
        A = A_loc if products else np.asarray(A_loc)
        if A.ndim != 2:
            raise DdromError(f"ecm: A_loc must be 2-D (points x columns), got shape {A.shape}")
        if not products and (not np.issubdtype(A.dtype, np.number) or np.iscomplexobj(A)):
            raise DdromError("ecm: A_loc must be a real array")
        w = np.asarray(w_loc)
        gid = np.asarray(gid_loc)
        if w.shape != (A.shape[0],):
            raise DdromError(f"ecm: w_loc has shape {w.shape}, expected ({A.shape[0]},) "
                             "(one weight per local point)")
        if gid.shape != (A.shape[0],):
            raise DdromError(f"ecm: gid_loc has shape {gid.shape}, expected ({A.shape[0]},)")
        if A.shape[0] and not np.issubdtype(gid.dtype, np.integer):
            raise DdromError("ecm: gid_loc must hold integer global point ids")
        if not (A.finite() if products else np.all(np.isfinite(A))):
            raise DdromError("ecm: A_loc contains NaN or infinite values")
        if not np.all(np.isfinite(w)) or (w.size and w.min() < 0):
            raise DdromError("ecm: w_loc must be finite and non-negative")
        if gid.size and gid.min() < 0:
            raise DdromError("ecm: gid_loc must be non-negative")
        if gid.size and np.unique(gid).size != gid.size:
            raise DdromError("ecm: gid_loc contains repeated global ids")
        if not (isinstance(tol, (int, float, np.floating)) and np.isfinite(tol) and 0 < tol < 1):
            raise DdromError(f"ecm: tol must be in (0, 1), got {tol!r}")
        if max_points is not None and (int(max_points) != max_points or max_points < 1):
            raise DdromError(f"ecm: max_points must be a positive integer, got {max_points!r}")
        if max_iterations is not None and (int(max_iterations) != max_iterations
                                           or max_iterations < 0):
            raise DdromError(f"ecm: max_iterations must be >= 0, got {max_iterations!r}")
        if nnls not in NNLS_METHODS:
            raise DdromError(f"ecm: unknown nnls method {nnls!r}; choose from {NNLS_METHODS}")
        init = _as_gid_list(initial_points, "ecm: initial_points")
        zero = _as_gid_list(zero_weight_points, "ecm: zero_weight_points")
        if integrals is not None:
            integrals = np.asarray(integrals, dtype=float)
            if integrals.shape != (A.shape[1],) or not np.all(np.isfinite(integrals)):
                raise DdromError(f"ecm: integrals must be {A.shape[1]} finite values (one per column), "
                                 f"got shape {integrals.shape}")
    ncols = A.shape[1]
    lo, hi = comm.allreduce(ncols, op=_op("MIN")), comm.allreduce(ncols, op=_op("MAX"))
    check_all(comm, lo == hi, f"ecm: the number of integrand columns differs between ranks "
                              f"({lo} to {hi})")
    check_all(comm, ncols >= 1, "ecm: A_loc has no column")
    for name, arr in (("initial_points", init), ("zero_weight_points", zero)) + \
            ((("integrals", integrals),) if integrals is not None else ()):
        ref = comm.bcast(arr, root=0)
        check_all(comm, np.array_equal(ref, arr), f"ecm: {name} differ between ranks")
    return (A if products else np.ascontiguousarray(A, dtype=float), np.asarray(w, dtype=float),
            gid.astype(np.int64), init, zero, integrals)


def _op(name):
    from mpi4py import MPI

    return getattr(MPI, name)


# ============================================================================ ECM
def ecm(A_loc: np.ndarray, w_loc: np.ndarray, gid_loc: np.ndarray, comm: Any, *,
        tol: float, max_points: int | None = None, add_constant: bool = True,
        initial_points: Any = None, zero_weight_points: Any = None,
        nnls: str = "lawson-hanson", max_iterations: int | None = None,
        tie_rtol: float = 1e-6, score_dtype: str = "float32", keep_pool: bool | None = None,
        integrals: np.ndarray | None = None, batch: int = 1, timers: Timers | None = None,
        score_buffer: np.ndarray | None = None) -> ECMResult:
    """Empirical cubature: few points and non-negative weights integrating the columns.

    Parameters
    ----------
    A_loc : (G_local, c) integrand values at this rank's points, or a :class:`PointProducts`
        (the columns as one small product per point, never formed whole).
    w_loc : (G_local,) quadrature weights (>= 0).
    gid_loc : (G_local,) int global ids of these points (unique over all ranks).
    comm : communicator (mpi4py or PETSc).
    tol : relative tolerance on the integrals, ``||J^T omega - b|| <= tol ||b||``
        (``b`` including the constant column when ``add_constant``).
    max_points : cap on the number of cubature points (default: none beyond the
        structural ``c + add_constant``).
    add_constant : append the constant function (so that ``sum(omega) = sum(w)``).
    initial_points : global ids to start from (warm start).
    zero_weight_points : global ids returned with weight 0 (not integrated).
    nnls : ``"lawson-hanson"`` (warm-started, default) or ``"scipy"``
        (``scipy.optimize.nnls`` from scratch at every iteration; for comparison).
    max_iterations : cap on greedy iterations (default ``4 (c + 1) + 10``).
    tie_rtol : candidates whose score is within ``tie_rtol`` (relative) of the best are
        tied and the smallest global id wins: round-off differences between partitions
        (e.g. on the mirror points of a symmetric part) then cannot change the choice.
    score_dtype : ``"float32"`` (default) or ``"float64"``: precision of the candidate
        scores. Single precision keeps a single-precision copy of ``A_loc`` (+50 % of its
        memory) and roughly halves the time of the scores; it only ranks candidates (a
        pick that double precision would not have made costs at most an extra greedy
        iteration; "no positive correlation" is confirmed in double before stopping).
    keep_pool : with Lawson-Hanson, keep the points whose weight went to zero in the NNLS
        pool instead of dropping them (they leave the rule, the NNLS may bring them back
        without a greedy iteration). Default: only for a warm start, whose first NNLS on
        the previous points zeroes about a third of them (measured on the enrichments of
        cases/adaptive.toml: 3x fewer greedy iterations, rules within +-7 % points; from
        scratch it gave 9 % more points).
    integrals : (c,) the exact integrals ``b = A^T w`` of the columns when the caller
        already has them (replicated, the same bits on every rank: checked), e.g. kept
        from earlier calls whose columns only grew (:mod:`ddrom.rom.integrand`); the
        reproducible sum over ``A`` is then skipped. The tolerance is measured against
        them, so their accuracy is the caller's (reproducible sums give the correctly
        rounded integrals).
    batch : candidates taken from one pass over ``A`` (module docstring, "Batches"); 1 (the
        default): the classic greedy, one point per pass.
    timers : optional :class:`~ddrom.parallel.Timers` accumulating the stage times.
    score_buffer : optional 1-D float32 array of at least ``G_local c`` entries to hold the
        single-precision copy (overwritten), e.g. kept by a caller that runs the ECM again
        and again (the enrichment): fresh memory of that size costs page faults (about
        1 s per GB on this project's machine), memory already touched does not.

    Returns
    -------
    ECMResult (module docstring for the algorithm and the determinism guarantees).

    Raises
    ------
    DdromError on every rank for bad input (non-finite values, mismatched shapes,
    ``tol`` outside (0, 1), unknown or duplicated ids, zero total weight).
    """
    from mpi4py import MPI

    c = as_mpi(comm)
    if int(batch) != batch or batch < 1:
        raise DdromError(f"ecm: batch must be a positive integer, got {batch!r}")
    if score_dtype not in SCORE_DTYPES:
        raise DdromError(f"ecm: unknown score_dtype {score_dtype!r}; choose from {SCORE_DTYPES}")
    A, w, gid, init, zero, known = _validate(A_loc, w_loc, gid_loc, c, tol, max_points,
                                             max_iterations, nnls, initial_points,
                                             zero_weight_points, integrals)
    if score_buffer is not None:
        check_all(c, score_dtype == "float32" and isinstance(score_buffer, np.ndarray)
                  and score_buffer.dtype == np.float32 and score_buffer.ndim == 1
                  and score_buffer.size >= A.shape[0] * A.shape[1],
                  "ecm: score_buffer must be a 1-D float32 array of at least G_local x c entries "
                  "(with score_dtype float32)")
    with _one_blas_thread():
        kw = dict(tol=tol, max_points=max_points, add_constant=add_constant, nnls=nnls,
                  max_iterations=max_iterations, tie_rtol=tie_rtol, score_dtype=score_dtype,
                  keep_pool=keep_pool, timers=timers, integrals=known, score_buffer=score_buffer)
        res = _ecm(A, w, gid, init, zero, c, batch=int(batch), **kw)
        if (batch > 1 or init.size) and not res.converged and res.stop_reason == "no_positive_correlation":
            # a warm start or the batches left a support from which the NNLS cannot reach
            # the tolerance (module docstring, "Batches"): the greedy from scratch, one point
            # per pass (the offline stage's ECM)
            cold = _ecm(A, w, gid, np.zeros(0, dtype=np.int64), zero, c, batch=1, **{**kw, "keep_pool": None})
            if cold.relative_residual < res.relative_residual:
                res = cold
        return res


def _one_blas_thread():
    """Single-threaded BLAS for the small replicated algebra (NNLS, residual).

    The ranks must take identical decisions from identical data, and a run at another
    rank count must too; but OpenBLAS picks its thread count from the process's CPU
    affinity (which mpirun sets differently for different rank counts) and a threaded
    gemv rounds differently from a sequential one. The big per-point work (scores)
    does not use BLAS, so nothing is lost. No-op if threadpoolctl is not installed.
    """
    global _CONTROLLER
    if _CONTROLLER is None:
        try:                                   # scanning the loaded libraries: once
            from threadpoolctl import ThreadpoolController

            _CONTROLLER = ThreadpoolController()
        except ImportError:  # pragma: no cover
            _CONTROLLER = False
    if _CONTROLLER is False:  # pragma: no cover
        import contextlib

        return contextlib.nullcontext()
    return _CONTROLLER.limit(limits=1, user_api="blas")


_CONTROLLER = None


def _top_candidates(c, sc: np.ndarray | None, gid: np.ndarray, m: int, tie_rtol: float) -> list[tuple[int, int]]:
    """The first (up to) ``m`` points of the ranking that repeated :func:`argmax_with_owner`
    calls would give on these scores (largest score; ties within ``tie_rtol`` to the smallest
    global id), as (gid, owner), with positive scores only; one ``Allgather``.

    Each rank sends its ``m + TIES_SENT`` best positive scores (by score, then gid) and the
    largest score it did not send. A pick is kept only while it is provable from what was
    sent -- every unsent score lies below the tie window of the current maximum -- so the
    list is the same for any partition of the same scores; it may be shorter than ``m``
    (empty: the caller falls back to one :func:`argmax_with_owner` pick).
    """
    from ddrom.parallel.argmax import TIES_SENT, tie_threshold

    S = m + TIES_SENT
    buf = np.full(2 + 2 * S, -math.inf)
    if sc is not None and sc.size:
        pos = np.flatnonzero(sc > 0)
        if pos.size:
            o = np.lexsort((gid[pos], -sc[pos]))
            send = pos[o[:S]]
            buf[2:2 + send.size] = sc[send]
            buf[2 + S:2 + S + send.size] = gid[send].astype(np.float64)
            if pos.size > S:
                buf[0] = float(sc[pos[o[S]]])
    allb = np.empty((c.size, buf.size))
    c.Allgather(buf, allb)
    vals = allb[:, 2:2 + S].ravel()
    ids = allb[:, 2 + S:].ravel()
    owners = np.repeat(np.arange(c.size), S)
    ok = np.isfinite(vals)
    vals, ids, owners = vals[ok], ids[ok], owners[ok]
    rest = float(allb[:, 0].max())                 # largest unsent score (-inf: none)
    out: list[tuple[int, int]] = []
    alive = np.ones(vals.size, dtype=bool)
    while len(out) < m and alive.any():
        M = float(vals[alive].max())
        thr = tie_threshold(M, tie_rtol)
        if rest >= thr:
            break                                  # an unsent point may tie with the maximum
        win = np.flatnonzero(alive & (vals >= thr))
        j = win[np.argmin(ids[win])]
        out.append((int(ids[j]), int(owners[j])))
        alive[j] = False
    return out


def _take_batch(cand, take, go_on, residual_now, A, rownorm, order, gid_sorted, c, ext, tie_rtol, tm) -> int:
    """Greedy sub-steps among a batch of candidates: their rows (and row norms) replicated by
    one reduction, then, while ``go_on()``, the candidate of largest current normalized score
    ``<[A_g, s], r> / ||[A_g, s]||`` (ties to the smallest gid; double precision, from the
    replicated rows: the same on every rank) is taken (``take``), as the greedy would, until
    none has a positive score. Returns the number taken."""
    from mpi4py import MPI

    from ddrom.parallel.argmax import tie_threshold

    t0 = time.perf_counter()
    k, nc = len(cand), A.shape[1]
    gids = np.array([g for g, _ in cand], dtype=np.int64)
    owners = np.array([o for _, o in cand])
    buf = np.zeros((k, nc + 1))
    lidx = np.full(k, -1)
    for i in np.flatnonzero(owners == c.rank):
        lidx[i] = int(order[np.searchsorted(gid_sorted, gids[i])])
        buf[i, :nc] = A[lidx[i]]
        buf[i, nc] = rownorm[lidx[i]]
    c.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)      # one non-zero term per entry: exact
    tm["row_bcast"] += time.perf_counter() - t0
    rows, rn = buf[:, :nc], buf[:, nc]
    ext_rows = ext(rows)
    avail = np.ones(k, dtype=bool)
    taken = 0
    while avail.any() and go_on():
        idx = np.flatnonzero(avail)
        score = (ext_rows[idx] @ residual_now()) / rn[idx]
        M = float(score.max())
        if not M > 0:
            break
        win = idx[score >= tie_threshold(M, tie_rtol)]
        i = int(win[np.argmin(gids[win])])
        avail[i] = False
        take(int(gids[i]), int(owners[i]), int(lidx[i]) if owners[i] == c.rank else -1, rows[i])
        taken += 1
    return taken


def _ecm(A, w, gid, init, zero, c, *, tol, max_points, add_constant, nnls, max_iterations,
         tie_rtol, score_dtype, keep_pool, timers, integrals=None, batch=1, score_buffer=None) -> ECMResult:
    from mpi4py import MPI

    tm: dict[str, float] = {k: 0.0 for k in ("setup", "scores", "argmax_reduce",
                                            "row_bcast", "nnls")}
    t0 = time.perf_counter()
    G, nc = A.shape
    nce = nc + int(bool(add_constant))
    chunk = max(1, (1 << 16) // nc)

    # --- exact integrals and volume: one reproducible sum (only the volume when the
    # caller knows the integrals)
    if integrals is None:
        def products(i0: int, i1: int) -> np.ndarray:
            return np.hstack([w[i0:i1, None] * A[i0:i1], w[i0:i1, None]])

        sums = _reproducible_colsum_chunks(products, G, nc + 1, c)
        integrals, volume = sums[:nc], float(sums[nc])
    else:
        integrals = np.array(integrals, dtype=float)
        volume = float(_reproducible_colsum_chunks(lambda i0, i1: w[i0:i1, None], G, 1, c)[0])
    check_all(c, volume > 0, "ecm: the quadrature weights sum to zero")
    # One pass over A by blocks that stay in cache: the row norms (per row, hence
    # position-independent) and the single-precision copy the scores use (they only rank
    # candidates, the NNLS decides the weights in double: half the memory traffic of the
    # one pass over A per iteration, measured 0.43 -> 0.16 ms at 8448 x 264; still row by
    # row).
    rn2 = np.empty(G)
    if score_dtype == "float32":
        A_sc = np.empty(A.shape, dtype=np.float32) if score_buffer is None else \
            score_buffer[:G * nc].reshape(G, nc)
    else:
        A_sc = np.empty(A.shape) if isinstance(A, PointProducts) else A
    for i0 in range(0, G, chunk):
        blk = A[i0:i0 + chunk]
        np.einsum("ij,ij->i", blk, blk, out=rn2[i0:i0 + chunk])
        if A_sc is not A:
            A_sc[i0:i0 + chunk] = blk
    if isinstance(A, PointProducts):
        # finite factors whose products overflow (the dense input was checked whole)
        check_all(c, bool(np.isfinite(rn2).all()), "ecm: A_loc contains NaN or infinite values "
                                                   "(products of the integrand's factors overflow)")
    if add_constant:
        # the mean squared weighted column norm, mean_j sum_g w_g A_gj^2 = (w . rn2) / nc,
        # by a plain allreduce: only its order of magnitude is used, rounded to a power of
        # two (partition-independent, exact scaling)
        rms = math.sqrt(c.allreduce(float(w @ rn2), op=MPI.SUM) / nc / volume)
        s = 2.0 ** round(math.log2(rms)) if rms > 0 else 2.0 ** round(-0.5 * math.log2(volume))
        b = np.concatenate([integrals, [s * volume]])
    else:
        s = 0.0
        b = integrals.copy()
    bnorm = float(np.linalg.norm(b))
    # row norms of [A_g, s]
    rownorm = np.sqrt(rn2 + s * s)
    del rn2
    blocked = rownorm == 0.0                     # never candidates (cannot help)
    rownorm[blocked] = 1.0
    order = np.argsort(gid, kind="stable")
    gid_sorted = gid[order]
    score_chunk = max(1, (1 << 20) // nc)

    def ext(rows: np.ndarray) -> np.ndarray:
        """Rows with the constant column appended."""
        return np.hstack([rows, np.full((rows.shape[0], 1), s)]) if add_constant else rows.copy()

    # --- selected set Z (in the pool order of the NNLS solver)
    sel_gid: list[int] = []
    sel_owner: list[int] = []
    sel_lidx: list[int] = []                     # index on this rank, -1 if not owned
    sel_rows: list[np.ndarray] = []
    lh = LawsonHanson(b)
    omega = np.zeros(0)
    tm["setup"] += time.perf_counter() - t0

    if init.size:
        t1 = time.perf_counter()
        loc = _locate(init, gid_sorted, order, A, c, "ecm: initial_points")
        tm["row_bcast"] += time.perf_counter() - t1
        for i in range(init.size):
            sel_gid.append(int(init[i]))
            sel_owner.append(int(loc.owners[i]))
            sel_lidx.append(int(loc.local_index[i]) if loc.owners[i] == c.rank else -1)
            sel_rows.append(ext(loc.rows[i:i + 1])[0])
        t1 = time.perf_counter()
        if nnls == "lawson-hanson":
            lh.add_columns(np.array(sel_rows).T)
            lh.set_passive(np.arange(init.size))
            omega = lh.solve().x
        else:
            omega = scipy.optimize.nnls(np.array(sel_rows).T, b, maxiter=50 * nce)[0]
        tm["nnls"] += time.perf_counter() - t1

    # keep_pool: Lawson-Hanson keeps the points whose weight went to zero in its pool (not
    # in the rule); its own outer loop brings one back when the residual makes it useful
    # again, at the cost of a small gradient instead of a greedy iteration with a pass over
    # A. Pool points are not candidates (at the NNLS optimum their gradient is <= 0).
    keep_pool = nnls == "lawson-hanson" and (bool(init.size) if keep_pool is None else bool(keep_pool))

    def drop_zeros(final: bool = False, release: bool = False) -> None:
        nonlocal omega
        keep = omega > 0
        if keep.all() or (keep_pool and not final and not release):
            return
        for i in np.flatnonzero(~keep):
            if sel_lidx[i] >= 0:
                selected_mask[sel_lidx[i]] = False
        if nnls == "lawson-hanson" and not final:
            lh.remove_columns(~keep)
        for lst in (sel_gid, sel_owner, sel_lidx, sel_rows):
            lst[:] = [v for v, k in zip(lst, keep) if k]
        omega = omega[keep]

    selected_mask = np.zeros(G, dtype=bool)
    for li in sel_lidx:
        if li >= 0:
            selected_mask[li] = True
    drop_zeros()

    def residual() -> np.ndarray:
        if nnls == "lawson-hanson":
            return lh.residual()             # b - J^T omega on its pool (= the selected rows)
        return b - np.array(sel_rows).T @ omega if sel_rows else b.copy()

    r = residual()
    rel = float(np.linalg.norm(r)) / bnorm if bnorm > 0 else 0.0
    history = [rel]
    picks: list[int] = []
    tabu: list[int] = []                         # local indices rejected since last success
    max_iter = 4 * (nce + 1) + 10 if max_iterations is None else int(max_iterations)
    cap = nce if max_points is None else min(int(max_points), nce)
    it = 0
    stop = "converged"
    row = np.empty(nc)

    def take(g: int, owner: int, li: int, row_: np.ndarray) -> None:
        """Steps 2-3 for a chosen point (its row replicated): into Z, NNLS, residual."""
        nonlocal omega, r, rel
        t4 = time.perf_counter()
        if li >= 0:
            selected_mask[li] = True
        sel_gid.append(g)
        sel_owner.append(owner)
        sel_lidx.append(li)
        sel_rows.append(ext(row_[None, :])[0])
        picks.append(g)
        # 3. NNLS on the selected points, warm-started
        if nnls == "lawson-hanson":
            lh.add_columns(sel_rows[-1])
            omega = lh.solve().x
        else:
            omega = scipy.optimize.nnls(np.array(sel_rows).T, b, maxiter=50 * nce)[0]
        tm["nnls"] += time.perf_counter() - t4
        if omega[-1] > 0:
            for t in tabu:                       # the residual changed: retry them later
                blocked[t] = False
            tabu.clear()
            released[0] = False
        elif li >= 0:
            blocked[li] = True                   # numerically useless now: not again soon
            tabu.append(li)
        drop_zeros()
        r = residual()
        rel = float(np.linalg.norm(r)) / bnorm
        history.append(rel)

    def full() -> bool:
        return int(np.count_nonzero(omega > 0)) >= cap

    released = [False]           # the pool's zero-weight points were released since the last gain

    while rel > tol:
        if it >= max_iter:
            stop = "max_iterations"
            break
        if full():
            stop = "max_points" if max_points is not None else "full_rank"
            break
        # 1. local scores and one global argmax reduction
        t1 = time.perf_counter()
        best = (-math.inf, 0, c.rank)
        sc, m = _scores(A_sc, r, s, nc, add_constant, rownorm, blocked | selected_mask, score_chunk)
        t2 = time.perf_counter()
        if batch > 1:
            # several candidates from this pass (module docstring, "Batches"): one allgather
            # for the provable top of the ranking, one reduction for their rows
            cand = _top_candidates(c, sc, gid, batch, tie_rtol)
            tm["scores"] += t2 - t1
            tm["argmax_reduce"] += time.perf_counter() - t2
            if cand and _take_batch(cand, take, lambda: rel > tol and not full(), lambda: r, A, rownorm,
                                    order, gid_sorted, c, ext, tie_rtol, tm):
                it += 1
                continue
            # none provable, none positive, or none positive in double: one classic pick
            t2 = time.perf_counter()
        # Near-ties (scores within tie_rtol of the best: mirror points of a symmetric part,
        # whose scores differ by round-off that depends on the partition) go to the smallest
        # global id, so the choice does not depend on the partition. One allgather carries
        # each rank's max and its own near-ties (the only points that can qualify against
        # the global max); the two extra reductions run only if a rank had too many.
        top = argmax_with_owner(c, sc, gid, tie_rtol, local_max=m)
        if not top.value > 0 and A_sc.dtype != np.float64:
            # single-precision scores found no positive correlation: confirm in double
            # before stopping (every rank takes this branch: the value is global)
            sc, m = _scores(A, r, s, nc, add_constant, rownorm, blocked | selected_mask, chunk)
            top = argmax_with_owner(c, sc, gid, tie_rtol, local_max=m)
        if top.value > 0:
            best = (top.value, -top.gid, top.owner)
        t3 = time.perf_counter()
        tm["scores"] += t2 - t1
        tm["argmax_reduce"] += t3 - t2
        if not best[0] > 0:
            if keep_pool and not released[0] and not (omega > 0).all():
                # Pool points are not candidates, and the NNLS may have refused one it needs
                # (numerically dependent on its passive set when it was tried; measured on a
                # rule that must be exact, K = c, with batches): release the zero-weight ones
                # to the greedy once before concluding. (Every rank: omega is replicated.)
                drop_zeros(release=True)
                released[0] = True
                r = residual()
                continue
            stop = "no_positive_correlation"
            break
        it += 1
        g, owner = -best[1], best[2]
        # 2. the owner broadcasts the chosen row
        li = -1
        if owner == c.rank:
            li = int(order[np.searchsorted(gid_sorted, g)])
            row[:] = A[li]
        c.Bcast(row, root=owner)
        tm["row_bcast"] += time.perf_counter() - t3
        take(g, owner, li, row)
    for t in tabu:
        blocked[t] = False
    drop_zeros(final=True)                       # the rule: the points of positive weight

    # --- assemble the result: cubature points + imposed zero-weight points, by gid
    t1 = time.perf_counter()
    zmask = ~np.isin(zero, np.asarray(sel_gid, dtype=np.int64))
    zero_new = zero[zmask]
    if zero_new.size:
        loc = _locate(zero_new, gid_sorted, order, A, c, "ecm: zero_weight_points")
        z_rows, z_own, z_lidx = loc.rows, loc.owners, loc.local_index
    else:
        z_rows, z_own, z_lidx = np.zeros((0, nc)), np.zeros(0, int), np.zeros(0, int)
    tm["row_bcast"] += time.perf_counter() - t1
    all_gid = np.concatenate([np.asarray(sel_gid, dtype=np.int64), zero_new])
    all_w = np.concatenate([omega, np.zeros(zero_new.size)])
    all_rows = np.vstack([np.array(sel_rows)[:, :nc] if sel_rows else np.zeros((0, nc)),
                          z_rows])
    all_own = np.concatenate([np.asarray(sel_owner, dtype=int), z_own])
    all_lidx = np.concatenate([np.asarray(sel_lidx, dtype=int),
                               np.where(z_own == c.rank, z_lidx, -1)])
    all_zero = np.concatenate([np.zeros(len(sel_gid), dtype=bool),
                               np.ones(zero_new.size, dtype=bool)])
    p = np.argsort(all_gid, kind="stable")
    if timers is not None:
        for k, v in tm.items():
            timers.add(f"ecm.{k}", v, 0)
    if len(sel_gid) > nce:   # excluded by construction (independent passive columns)
        raise DdromError(f"ecm: internal error, {len(sel_gid)} points for {nce} columns")
    return ECMResult(
        point_gids=all_gid[p], weights=all_w[p], rows=all_rows[p], owners=all_own[p],
        local_index=all_lidx[p], zero_weight=all_zero[p], integrals=integrals,
        volume=volume, constant_scale=s, residual_history=np.array(history),
        selection_history=np.asarray(picks, dtype=np.int64), n_iterations=it,
        converged=rel <= tol, stop_reason=stop if rel > tol else "converged",
        relative_residual=rel, timings=tm)


# ============================================================================ compression
def integrand_matrix_columns(A_loc: np.ndarray, w_loc: np.ndarray, comm: Any, *,
                             tol: float = 1e-10, max_columns: int | None = None,
                             scaled: bool = False) -> IntegrandBasis:
    """Compress many integrand columns to a W-orthonormal basis of their span.

    Method of snapshots: ``C = A^T W A`` (``c x c``, local products summed by ONE
    allreduce), ``C = V diag(sigma^2) V^T`` (redundantly on every rank), and the kept
    columns are ``U = A V_N diag(1/sigma_N)`` (``U^T W U = I`` up to ``eps sigma_1^2 /
    sigma_N^2``), or ``A V_N`` when ``scaled`` (columns weighted by their energy).

    Truncation: the smallest ``N`` with ``sqrt(sum_{i>N} sigma_i^2) <= tol
    sqrt(sum_i sigma_i^2)`` (the W-Frobenius projection error of the columns,
    relative), capped by ``max_columns``. Forming ``C`` squares the condition number:
    singular values below ``sqrt(c eps) sigma_1`` (``~1e-7 sigma_1`` for 100 columns)
    are not resolved and are always discarded, whatever ``tol``.
    Eigenvector signs are fixed (largest-magnitude component positive) so the
    result is deterministic; across rank counts it agrees to round-off (``C`` is a
    sum in a partition-dependent order).
    """
    from mpi4py import MPI

    c = as_mpi(comm)
    with collective(c, "integrand_matrix_columns"):
        A = np.asarray(A_loc, dtype=float)
        w = np.asarray(w_loc, dtype=float)
        if A.ndim != 2 or w.shape != (A.shape[0],):
            raise DdromError(f"integrand_matrix_columns: A_loc {A.shape} and w_loc {w.shape} "
                             "do not match (points x columns, points)")
        if not (np.all(np.isfinite(A)) and np.all(np.isfinite(w)) and (w.size == 0 or
                                                                      w.min() >= 0)):
            raise DdromError("integrand_matrix_columns: non-finite values or negative weights")
        if not (0 < tol < 1):
            raise DdromError(f"integrand_matrix_columns: tol must be in (0, 1), got {tol!r}")
    C = A.T @ (w[:, None] * A)
    c.Allreduce(MPI.IN_PLACE, C, op=MPI.SUM)
    lam, V = np.linalg.eigh(C)
    lam, V = lam[::-1], V[:, ::-1]
    sigma_all = np.sqrt(np.clip(lam, 0.0, None))
    if sigma_all[0] == 0:
        raise DdromError("integrand_matrix_columns: all integrand columns are zero")
    tail = np.sqrt(np.concatenate([np.cumsum((sigma_all ** 2)[::-1])[::-1][1:], [0.0]]))
    total = math.sqrt(float(np.sum(sigma_all ** 2)))
    N = int(np.argmax(tail <= tol * total)) + 1
    N = min(N, int(np.count_nonzero(sigma_all > math.sqrt(C.shape[0] * EPS_) * sigma_all[0])))
    if max_columns is not None:
        N = min(N, int(max_columns))
    N = max(N, 1)
    V = V[:, :N].copy()
    piv = np.argmax(np.abs(V), axis=0)
    V *= np.sign(V[piv, np.arange(N)])
    sig = sigma_all[:N]
    Vs = V if scaled else V / sig
    return IntegrandBasis(columns_loc=A @ Vs, sigma=sig, V=V, sigma_all=sigma_all)

