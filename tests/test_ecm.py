"""Distributed empirical cubature (ddrom.reduction.ecm) and its Lawson-Hanson NNLS.

Global data are built identically on every rank (from a seed or analytic functions of
the global point ids); each rank takes an uneven share of the rows, in a shuffled
order. Gathering the matrix is done IN TESTS ONLY (references).
"""
import math

import numpy as np
import pytest
import scipy.optimize
from mpi4py import MPI

import ddrom  # noqa: F401  (sets PETSC_DIR before petsc4py)
from ddrom.parallel import DdromError
from ddrom.reduction.ecm import ecm, integrand_matrix_columns, reproducible_colsum
from ddrom.reduction.nnls import LawsonHanson, nnls

COMM = MPI.COMM_WORLD


# ----------------------------------------------------------------------------- data
def cuts(n, size):
    """Uneven row partition: shares 1, 3, 2, 5, ... (rank 0 gets the fewest rows)."""
    shares = np.array([1, 3, 2, 5, 4, 6, 7, 8][:size], dtype=float) if size <= 8 else np.ones(size)
    c = np.concatenate(([0], np.round(np.cumsum(shares) / shares.sum() * n))).astype(int)
    c[-1] = n
    return c


def split(comm, *arrays, shuffle=1, empty_rank=None):
    """This rank's rows of the global arrays (shuffled rows, uneven shares).

    ``empty_rank``: that rank gets no row at all (if the communicator has > 1 rank).
    """
    n = arrays[0].shape[0]
    perm = np.random.default_rng(shuffle).permutation(n)
    if empty_rank is not None and comm.size > 1:
        c = cuts(n, comm.size - 1)
        c = np.insert(c, empty_rank, c[empty_rank])
    else:
        c = cuts(n, comm.size)
    mine = perm[c[comm.rank]:c[comm.rank + 1]]
    return tuple(a[mine] for a in arrays)


def gauss_cube(cells=2, nq1=3):
    """Tensor Gauss-Legendre points on [0,1]^3 split in cells^3 hexahedra.

    Returns coordinates (G, 3), weights (G,), natural global ids cell * nq + q.
    """
    t, wt = np.polynomial.legendre.leggauss(nq1)
    t, wt = (t + 1) / 2, wt / 2
    h = 1.0 / cells
    X, W, gids = [], [], []
    nq = nq1 ** 3
    for cell in range(cells ** 3):
        ci = np.array([cell % cells, (cell // cells) % cells, cell // cells ** 2])
        q = 0
        for k in range(nq1):
            for j in range(nq1):
                for i in range(nq1):
                    X.append(h * (ci + np.array([t[i], t[j], t[k]])))
                    W.append(h ** 3 * wt[i] * wt[j] * wt[k])
                    gids.append(cell * nq + q)
                    q += 1
    return COMM.bcast((np.array(X), np.array(W), np.array(gids, dtype=np.int64)), root=0)


def exponents(p):
    return [(i, j, k) for i in range(p + 1) for j in range(p + 1 - i) for k in range(p + 1 - i - j)]


def ipow(x, n):
    """x**n by repeated products: IEEE multiplications, the same bits on every rank
    (numpy's SIMD ``power`` may round an entry differently depending on its alignment)."""
    out = np.ones_like(x)
    for _ in range(n):
        out = out * x
    return out


def monomials(X, p):
    return np.column_stack([ipow(X[:, 0], i) * ipow(X[:, 1], j) * ipow(X[:, 2], k)
                            for i, j, k in exponents(p)])


def exact_monomial_integrals(p):
    return np.array([1.0 / ((i + 1) * (j + 1) * (k + 1)) for i, j, k in exponents(p)])


def smooth_random(G=400, ncols=15, seed=0):
    """Smooth integrands (random plane waves) at random points, random positive weights."""
    rng = np.random.default_rng(seed)
    X = rng.random((G, 3))
    K = rng.standard_normal((3, ncols)) * 3.0
    phi = rng.random(ncols) * 2 * np.pi
    A = np.cos(X @ K + phi) + 0.5
    w = rng.random(G) + 0.5
    gid = (rng.permutation(10 * G)[:G]).astype(np.int64)       # sparse, unsorted ids
    # vectorized cos (SIMD) and matmul may round differently on different ranks
    # (alignment, threads): take rank 0's bits so the data are identical everywhere
    return COMM.bcast((A, w, gid), root=0)


def gather(x, comm):
    return np.concatenate(comm.allgather(x))


def ext(A, s):
    return np.hstack([A, np.full((A.shape[0], 1), s)])


# ----------------------------------------------------------------------------- NNLS
@pytest.mark.parametrize("m,n", [(5, 3), (30, 10), (20, 40), (60, 60)])
def test_lawson_hanson_matches_scipy(m, n):
    rng = np.random.default_rng(m * n)
    for t in range(4):
        M = rng.standard_normal((m, n))
        b = rng.standard_normal(m) if t % 2 else \
            M @ np.abs(rng.standard_normal(n)) + 0.1 * rng.standard_normal(m)
        x_ref, r_ref = scipy.optimize.nnls(M, b, maxiter=50 * n)
        res = nnls(M, b)
        assert res.x.min() >= 0
        assert abs(res.rnorm - r_ref) <= 1e-12 * max(1.0, r_ref)
        if m >= n:                          # unique solution: same x
            np.testing.assert_allclose(res.x, x_ref, atol=1e-10)
        warm = nnls(M, b, passive=rng.permutation(n)[: n // 2])
        assert abs(warm.rnorm - r_ref) <= 1e-12 * max(1.0, r_ref)


def test_lawson_hanson_warm_start_growing_pool():
    """Adding columns one by one and re-solving warm gives the cold solution, cheaper."""
    rng = np.random.default_rng(3)
    M = rng.standard_normal((40, 30))
    b = M @ np.abs(rng.standard_normal(30)) * 0.3 + rng.standard_normal(40)
    lh = LawsonHanson(b)
    iters = cold_iters = 0
    for j in range(30):
        lh.add_columns(M[:, j])
        iters += lh.solve().n_iterations
        cold = nnls(M[:, : j + 1], b)
        cold_iters += cold.n_iterations
        np.testing.assert_allclose(lh.x, cold.x, atol=1e-10)
    assert len(lh.passive) <= 40
    assert iters <= 2 * 30 < cold_iters          # one or two steps per new column


# ----------------------------------------------------------------------------- sums
@pytest.mark.mpi
def test_reproducible_colsum_partition_invariant():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((1001, 4)) * np.array([1.0, 1e-8, 1e8, 0.0])
    X[:, 1] += 1e-3                                         # cancellation-free but tiny
    ref = np.array([math.fsum(X[:, j]) for j in range(4)])  # correctly rounded
    got = {}
    for label, comm in (("self", MPI.COMM_SELF), ("world", COMM)):
        (Xl,) = split(comm, X, shuffle=5)
        got[label] = reproducible_colsum(Xl, comm)
    assert np.array_equal(got["self"], got["world"])
    np.testing.assert_allclose(got["world"], ref, rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_row_scores_do_not_depend_on_position(dtype):
    """The per-row dot products are the same bits wherever the row sits in the array
    (in double, and in the single precision the ECM scores use by default)."""
    from ddrom.reduction.ecm import _row_dots

    rng = np.random.default_rng(2)
    for nc in (5, 37, 64, 201):
        A = rng.standard_normal((1000, nc)).astype(dtype)
        v = rng.standard_normal(nc).astype(dtype)
        full = _row_dots(A, v, 64)
        for off in list(range(1, 17)) + [100, 333]:
            for chunk in (1, 13, 256):
                part = _row_dots(np.ascontiguousarray(A[off:]), v, chunk)
                assert np.array_equal(part, full[off:])
                assert np.array_equal(_row_dots(A[off:], v, chunk), full[off:])


# ----------------------------------------------------------------------------- ECM
def check_rule(res, A, w, gid, tol, add_constant=True):
    """The rule meets its tolerance against integrals computed here from the gathered data."""
    nc = A.shape[1]
    b = A.T @ w
    cub = ~res.zero_weight
    rows = A[np.searchsorted(gid, res.point_gids)] if np.all(np.diff(gid) > 0) else \
        A[[int(np.flatnonzero(gid == g)[0]) for g in res.point_gids]]
    np.testing.assert_array_equal(res.rows, rows)              # replicated rows are exact
    if add_constant:
        s = res.constant_scale
        b_e = np.append(b, s * w.sum())
        r = ext(rows[cub], s).T @ res.weights[cub] - b_e
        assert np.linalg.norm(r) <= tol * np.linalg.norm(b_e) * (1 + 1e-9)
        assert res.n_points <= nc + 1
    assert res.weights.min() >= 0
    assert np.all(res.weights[cub] > 0)
    np.testing.assert_allclose(res.integrals, b, rtol=1e-13, atol=1e-13 * np.abs(b).max())


@pytest.mark.mpi
def test_ecm_against_scipy_nnls_reference():
    A, w, gid = smooth_random(400, 15, seed=0)
    Al, wl, gl = split(COMM, A, w, gid)
    tol = 1e-8
    res = ecm(Al, wl, gl, COMM, tol=tol)
    assert res.converged and res.stop_reason == "converged"
    assert res.relative_residual <= tol
    assert res.n_points <= 15 + 1
    # gathered (tests only): same rows, same integrals, NNLS restricted to the same points
    Ag, wg, gg = gather(Al, COMM), gather(wl, COMM), gather(gl, COMM)
    o = np.argsort(gg)
    Ag, wg, gg = Ag[o], wg[o], gg[o]
    check_rule(res, Ag, wg, gg, tol)
    Z = np.searchsorted(gg, res.point_gids)
    b = np.append(Ag.T @ wg, res.constant_scale * wg.sum())
    x_ref, _ = scipy.optimize.nnls(ext(Ag[Z], res.constant_scale).T, b, maxiter=5000)
    np.testing.assert_allclose(res.weights, x_ref, rtol=0, atol=1e-10 * x_ref.max())
    np.testing.assert_allclose(res.weights.sum(), wg.sum(), rtol=1e-7)
    # the owners and local indices point at the right local rows
    for k in np.flatnonzero(res.owned):
        assert res.owners[k] == COMM.rank
        assert gl[res.local_index[k]] == res.point_gids[k]
        np.testing.assert_array_equal(Al[res.local_index[k]], res.rows[k])
    assert np.all(res.local_index[res.owners != COMM.rank] == -1)
    # residual history is decreasing and ends at the reported residual
    h = res.residual_history
    assert h[0] == pytest.approx(1.0) and h[-1] == res.relative_residual
    assert np.all(np.diff(h) < 0)
    assert res.selection_history.size == res.n_iterations


@pytest.mark.mpi
def test_ecm_single_and_double_precision_scores():
    """Single-precision scores only rank candidates: both rules meet the tolerance, with
    weights from the same double-precision NNLS; an unknown precision is refused."""
    A, w, gid = smooth_random(400, 15, seed=0)
    Al, wl, gl = split(COMM, A, w, gid)
    Ag, wg, gg = gather(Al, COMM), gather(wl, COMM), gather(gl, COMM)
    o = np.argsort(gg)
    tol = 1e-8
    for dt in ("float32", "float64"):
        res = ecm(Al, wl, gl, COMM, tol=tol, score_dtype=dt)
        assert res.converged, dt
        check_rule(res, Ag[o], wg[o], gg[o], tol)
    with pytest.raises(DdromError, match="score_dtype"):
        ecm(Al, wl, gl, COMM, tol=tol, score_dtype="float16")


@pytest.mark.mpi
@pytest.mark.parametrize("p", [2, 4])
def test_ecm_gauss_rule_integrates_monomials(p):
    X, w, gid = gauss_cube(cells=2, nq1=3)                  # exact up to degree 5 per axis
    A = monomials(X, p)
    Xl, Al, wl, gl = split(COMM, X, A, w, gid)
    tol = 1e-10
    res = ecm(Al, wl, gl, COMM, tol=tol)
    nc = A.shape[1]
    assert res.converged
    assert res.n_points <= nc + 1
    exact = exact_monomial_integrals(p)
    b_norm = np.linalg.norm(np.append(exact, res.constant_scale))   # volume 1
    err = res.integrate(res.rows) - exact
    assert np.abs(err).max() <= tol * b_norm
    assert abs(res.weights.sum() - 1.0) <= tol * b_norm / res.constant_scale
    # held-out polynomial in the span: f = A c, error <= ||c|| tol ||b||
    rng = np.random.default_rng(p)
    cvec = rng.standard_normal(nc)
    pts = X[np.searchsorted(gid, res.point_gids)]
    f = monomials(pts, p) @ cvec
    assert abs(res.weights @ f - exact @ cvec) <= np.linalg.norm(cvec) * tol * b_norm * (1 + 1e-9)
    # a non-polynomial function is integrated much less accurately: the test can fail
    g = np.exp(3 * pts[:, 0]) * np.sin(4 * pts[:, 1])
    g_exact = (math.exp(3) - 1) / 3 * (1 - math.cos(4)) / 4 * 1.0
    assert abs(res.weights @ g - g_exact) > 1e3 * tol


def run_variants(make, **kw):
    """Results at COMM_SELF (whole data on each rank), the world, and a Split sub-communicator."""
    out = {}
    A, w, gid = make()
    out["1 rank"] = ecm(A, w, gid, MPI.COMM_SELF, **kw)
    Al, wl, gl = split(COMM, A, w, gid)
    out[f"{COMM.size} ranks"] = ecm(Al, wl, gl, COMM, **kw)
    color = 0 if COMM.rank < 2 else 1
    sub = COMM.Split(color, COMM.rank)
    try:
        Al, wl, gl = split(sub, A, w, gid, shuffle=9)
        out[f"split {sub.size} ranks"] = ecm(Al, wl, gl, sub, **kw)
        if sub.size > 1:
            Al, wl, gl = split(sub, A, w, gid, shuffle=4, empty_rank=1)
            out[f"split {sub.size} ranks, one empty"] = ecm(Al, wl, gl, sub, **kw)
    finally:
        sub.Free()
    return out


@pytest.mark.mpi
@pytest.mark.parametrize("case", ["random", "gauss", "duplicated"])
def test_ecm_partition_invariance(case):
    if case == "random":
        def make():
            return smooth_random(300, 12, seed=4)
    elif case == "duplicated":
        # 12 exact copies of every point: exact ties, broken by the smallest global id
        def make():
            A, w, gid = smooth_random(25, 6, seed=7)
            return np.tile(A, (12, 1)), np.tile(w, 12), np.arange(12 * len(gid), dtype=np.int64)
    else:
        def make():
            X, w, gid = gauss_cube(cells=2, nq1=3)
            return monomials(X, 3), w, gid
    out = run_variants(make, tol=1e-9)
    ref = out["1 rank"]
    assert ref.converged
    for label, res in out.items():
        assert np.array_equal(res.point_gids, ref.point_gids), label
        assert np.array_equal(res.selection_history, ref.selection_history), label
        np.testing.assert_allclose(res.weights, ref.weights, rtol=1e-12, atol=0, err_msg=label)
        np.testing.assert_array_equal(res.rows, ref.rows, err_msg=label)
        np.testing.assert_array_equal(res.residual_history, ref.residual_history, err_msg=label)
    # bitwise in fact (reproducible sums + position-independent scores)
    for label, res in out.items():
        assert np.array_equal(res.weights, ref.weights), label


@pytest.mark.mpi
@pytest.mark.parametrize("sent", [0, 1])
def test_ecm_argmax_fallback_gives_the_same_points(monkeypatch, sent):
    """The argmax allgather carries 8 near-ties per rank; with fewer (0: the fallback
    reductions always decide, 1: whenever a rank has several), the points are the same."""
    import sys

    argmax_mod = sys.modules["ddrom.parallel.argmax"]   # the kernel the ECM's argmax is

    A, w, gid = smooth_random(300, 12, seed=4)
    A = np.vstack([A, A[:40]])                       # exact duplicates: many near-ties
    w = np.concatenate([w, w[:40]])
    gid = np.concatenate([gid, 10 * 300 + np.arange(40, dtype=np.int64)])
    A_l, w_l, g_l = split(COMM, A, w, gid)
    ref = ecm(A_l, w_l, g_l, COMM, tol=1e-9)
    monkeypatch.setattr(argmax_mod, "TIES_SENT", sent)
    res = ecm(A_l, w_l, g_l, COMM, tol=1e-9)
    assert np.array_equal(res.point_gids, ref.point_gids)
    assert np.array_equal(res.selection_history, ref.selection_history)
    assert np.array_equal(res.weights, ref.weights)


@pytest.mark.mpi
def test_ecm_deterministic_and_warm_start():
    A, w, gid = smooth_random(500, 20, seed=1)
    Al, wl, gl = split(COMM, A, w, gid)
    tol = 1e-9
    r1 = ecm(Al, wl, gl, COMM, tol=tol)
    r2 = ecm(Al, wl, gl, COMM, tol=tol)
    assert np.array_equal(r1.point_gids, r2.point_gids)
    assert np.array_equal(r1.weights, r2.weights)
    # warm start from the solution: nothing to do, same rule
    r3 = ecm(Al, wl, gl, COMM, tol=tol, initial_points=r1.point_gids)
    assert r3.n_iterations == 0 and r3.converged
    assert np.array_equal(r3.point_gids, r1.point_gids)
    np.testing.assert_allclose(r3.weights, r1.weights, rtol=1e-10)
    # warm start from part of it (enrichment-like): valid rule, fewer greedy iterations
    part = r1.selection_history[: r1.n_iterations // 2]
    r4 = ecm(Al, wl, gl, COMM, tol=tol, initial_points=part)
    assert r4.converged and r4.n_iterations < r1.n_iterations
    Ag, wg, gg = gather(Al, COMM), gather(wl, COMM), gather(gl, COMM)
    o = np.argsort(gg)
    check_rule(r4, Ag[o], wg[o], gg[o], tol)
    # warm start from points unrelated to the rule (more than the columns): still valid
    many = np.sort(gid)[::7][:40]
    r5 = ecm(Al, wl, gl, COMM, tol=tol, initial_points=many)
    assert r5.converged
    check_rule(r5, Ag[o], wg[o], gg[o], tol)


@pytest.mark.mpi
@pytest.mark.parametrize("keep_pool", [True, False])
def test_ecm_warm_start_keeping_zeroed_points_in_the_pool(keep_pool):
    """Enrichment-like warm start (a rule for 12 columns, then 18): with the zeroed points
    kept in the NNLS pool or dropped, the rule meets its tolerance, identically at any
    partition; the pool needs no more greedy iterations than dropping."""
    A, w, gid = smooth_random(600, 18, seed=5)
    old = ecm(A[:, :12], w, gid, MPI.COMM_SELF, tol=1e-9)
    init = old.point_gids

    def make():
        return A, w, gid

    out = run_variants(make, tol=1e-9, initial_points=init, keep_pool=keep_pool)
    ref = out["1 rank"]
    assert ref.converged
    check_rule(ref, A, w, gid, 1e-9)
    for label, res in out.items():
        assert np.array_equal(res.point_gids, ref.point_gids), label
        assert np.array_equal(res.weights, ref.weights), label
    if keep_pool:
        dropped = ecm(A, w, gid, MPI.COMM_SELF, tol=1e-9, initial_points=init, keep_pool=False)
        assert ref.n_iterations <= dropped.n_iterations


@pytest.mark.mpi
def test_ecm_zero_weight_points():
    A, w, gid = smooth_random(300, 10, seed=2)
    Al, wl, gl = split(COMM, A, w, gid)
    base = ecm(Al, wl, gl, COMM, tol=1e-8)
    extra = np.setdiff1d(np.sort(gid)[::37], base.point_gids)[:5]
    shared = base.point_gids[:1]                       # also a cubature point
    res = ecm(Al, wl, gl, COMM, tol=1e-8, zero_weight_points=np.concatenate([extra, shared]))
    assert set(extra) <= set(res.point_gids.tolist())
    assert np.all(np.diff(res.point_gids) > 0)
    zw = res.zero_weight
    assert set(res.point_gids[zw].tolist()) == set(extra.tolist())
    assert np.all(res.weights[zw] == 0.0)
    # the integration is unaffected: the cubature part is the rule computed without them
    assert np.array_equal(res.point_gids[~zw], base.point_gids)
    assert np.array_equal(res.weights[~zw], base.weights)
    assert res.n_points == base.n_points
    Ag, gg = gather(Al, COMM), gather(gl, COMM)
    for k in np.flatnonzero(zw):
        np.testing.assert_array_equal(res.rows[k], Ag[np.flatnonzero(gg == res.point_gids[k])[0]])
        if res.owners[k] == COMM.rank:
            assert gl[res.local_index[k]] == res.point_gids[k]


@pytest.mark.mpi
def test_ecm_compressed_integrand_columns():
    """Many columns (products of 'modes' and 'stresses') compressed by the SVD, then ECM."""
    X, w, gid = gauss_cube(cells=2, nq1=4)
    P = monomials(X, 2)                                  # 10 "modes" x 10 "stresses"
    A = np.einsum("gi,gj->gij", P, P[:, ::-1] + 0.3).reshape(len(w), -1)   # 100 columns, rank 20+
    Al, wl, gl = split(COMM, A, w, gid)
    basis = integrand_matrix_columns(Al, wl, COMM, tol=1e-12)
    N = basis.sigma.size
    assert N < A.shape[1]
    U = gather(basis.columns_loc, COMM)
    Wg = gather(wl, COMM)
    np.testing.assert_allclose(U.T @ (Wg[:, None] * U), np.eye(N), atol=1e-6)
    res = ecm(basis.columns_loc, wl, gl, COMM, tol=1e-10)
    assert res.converged and res.n_points <= N + 1
    # every original column is integrated to tolerance x its coefficients' norm
    Ag, gg = gather(Al, COMM), gather(gl, COMM)
    rows = Ag[[int(np.flatnonzero(gg == g)[0]) for g in res.point_gids]]
    b = Ag.T @ Wg
    err = res.weights @ rows - b
    assert np.abs(err).max() <= 1e-8 * np.abs(b).max()
    # compression agrees with COMM_SELF to round-off
    self_basis = integrand_matrix_columns(A, w, MPI.COMM_SELF, tol=1e-12)
    np.testing.assert_allclose(basis.sigma, self_basis.sigma, rtol=1e-10)


@pytest.mark.mpi
def test_ecm_max_points_and_no_constant():
    A, w, gid = smooth_random(300, 12, seed=6)
    Al, wl, gl = split(COMM, A, w, gid)
    res = ecm(Al, wl, gl, COMM, tol=1e-12, max_points=4)
    assert not res.converged and res.stop_reason == "max_points" and res.n_points <= 4
    res = ecm(Al, wl, gl, COMM, tol=1e-9, add_constant=False)
    assert res.converged and res.n_points <= 12 and res.constant_scale == 0.0


# ----------------------------------------------------------------------------- bad input
@pytest.mark.mpi
@pytest.mark.parametrize("bad", ["nan", "shape", "tol0", "tolneg", "gid_missing", "ncols",
                                 "dup_gid", "nnls", "neg_weight"])
def test_ecm_bad_input_raises_on_every_rank(bad):
    A, w, gid = smooth_random(120, 6, seed=8)
    Al, wl, gl = split(COMM, A, w, gid)
    if bad == "ncols" and COMM.size == 1:
        pytest.skip("a column-count mismatch needs two ranks")
    last = COMM.rank == COMM.size - 1                  # only one rank has the problem
    kw = {"tol": 1e-8}
    if bad == "nan" and last:
        Al = Al.copy()
        Al[0, 2] = np.nan
    elif bad == "shape" and last:
        wl = wl[:-1]
    elif bad == "tol0":
        kw["tol"] = 0.0
    elif bad == "tolneg":
        kw["tol"] = -1e-8
    elif bad == "gid_missing":
        kw["initial_points"] = [int(gid.max()) + 1]
    elif bad == "ncols" and last:
        Al = Al[:, :-1]
    elif bad == "dup_gid" and last:
        gl = gl.copy()
        gl[-1] = gl[0]
    elif bad == "nnls":
        kw["nnls"] = "simplex"
    elif bad == "neg_weight" and last:
        wl = -wl
    with pytest.raises(DdromError):
        ecm(Al, wl, gl, COMM, **kw)


@pytest.mark.mpi
def test_ecm_batch_warm_start_meets_tolerance_identically_at_any_partition():
    """The enrichment's ECM (warm start, up to 8 candidates per pass over A): the rule meets
    its tolerance against integrals computed here, the same points and weights for every
    partition, fewer passes than one point per pass and about as many points."""
    A, w, gid = smooth_random(600, 18, seed=5)
    init = ecm(A[:, :12], w, gid, MPI.COMM_SELF, tol=1e-9).point_gids

    def make():
        return A, w, gid

    out = run_variants(make, tol=1e-9, initial_points=init, batch=8)
    ref = out["1 rank"]
    assert ref.converged and ref.relative_residual <= 1e-9
    check_rule(ref, A, w, gid, 1e-9)
    for label, res in out.items():
        assert np.array_equal(res.point_gids, ref.point_gids), label
        assert np.array_equal(res.selection_history, ref.selection_history), label
        assert np.array_equal(res.weights, ref.weights), label
    one = ecm(A, w, gid, MPI.COMM_SELF, tol=1e-9, initial_points=init)
    assert one.converged
    assert ref.n_iterations < one.n_iterations, (ref.n_iterations, one.n_iterations)
    assert ref.n_points <= 1.25 * one.n_points + 2, (ref.n_points, one.n_points)
    # from scratch too (no pool): still the tolerance
    cold = ecm(A, w, gid, MPI.COMM_SELF, tol=1e-9, batch=8)
    assert cold.converged
    check_rule(cold, A, w, gid, 1e-9)


@pytest.mark.mpi
def test_ecm_given_integrals_are_used_and_checked():
    """``integrals=`` (the caller's exact integrals, e.g. kept across enrichments): with the
    reproducible sums the ECM would compute, the same rule bit for bit; a wrong length, or
    values that differ between ranks, are refused on every rank."""
    from ddrom.parallel import DdromError
    from ddrom.reduction.exact import reproducible_colsum

    A, w, gid = smooth_random(400, 10, seed=3)
    Al, wl, gl = split(COMM, A, w, gid)
    b = reproducible_colsum(wl[:, None] * Al, COMM)
    ref = ecm(Al, wl, gl, COMM, tol=1e-8)
    got = ecm(Al, wl, gl, COMM, tol=1e-8, integrals=b)
    assert np.array_equal(got.point_gids, ref.point_gids) and np.array_equal(got.weights, ref.weights)
    assert np.array_equal(got.integrals, b) and got.volume == ref.volume
    with pytest.raises(DdromError, match="integrals"):
        ecm(Al, wl, gl, COMM, tol=1e-8, integrals=b[:-1])
    if COMM.size > 1:
        with pytest.raises(DdromError, match="integrals differ"):
            ecm(Al, wl, gl, COMM, tol=1e-8, integrals=b * (1.0 + 1e-15 * COMM.rank))
    with pytest.raises(DdromError, match="batch"):
        ecm(Al, wl, gl, COMM, tol=1e-8, batch=0)


def products_case(G=500, n=4, m=6, s=5, seed=11):
    """Per-point factors of an integrand (strains of modes x stress modes), smooth in space."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(G, 3))
    basis = np.column_stack([np.ones(G), x, x ** 2, x[:, :1] * x[:, 1:2]])        # (G, 8)
    left = np.einsum("gb,bnm->gnm", basis, rng.standard_normal((8, n, m)))
    right = np.einsum("gb,bms->gms", basis, rng.standard_normal((8, m, s)))
    w = rng.uniform(0.5, 1.5, size=G)
    return left, right, w, np.arange(G, dtype=np.int64) * 3 + 1


def test_point_products_rows_have_the_same_bits_alone_in_blocks_and_whole():
    """A row of ``PointProducts`` is computed from its own point's factors: the whole matrix,
    a block, gathered points and one point give the same bits (the ECM recomputes the rows
    of the points it picks and must see what its scores saw)."""
    from ddrom.reduction.ecm import PointProducts

    left, right, _, _ = products_case(G=300, n=7, m=6, s=9)
    P = PointProducts(left, right)
    full = np.asarray(P)
    assert full.shape == P.shape == (300, 63)
    np.testing.assert_allclose(full, np.einsum("gnm,gms->gns", left, right).reshape(300, -1), rtol=1e-13,
                               atol=1e-13)
    assert np.array_equal(P[40:97], full[40:97])
    idx = np.array([299, 3, 150, 151, 0])
    assert np.array_equal(P[idx], full[idx])
    for i in (0, 77, 299):
        assert np.array_equal(P[i], full[i])
    # non-contiguous factors (a block of the modes, as the enrichment's new pairs)
    Q = PointProducts(left[:, 2:5], right[:, :, 4:])
    assert np.array_equal(Q[10:20], np.asarray(Q)[10:20]) and np.array_equal(Q[np.array([5])][0], Q[5])
    # and what contiguous copies of them give (the enrichment's strains are a view of a
    # buffer with room for more modes)
    C = PointProducts(np.ascontiguousarray(left[:, 2:5]), np.ascontiguousarray(right[:, :, 4:]))
    assert np.array_equal(np.asarray(Q), np.asarray(C))
    with pytest.raises(DdromError, match="PointProducts"):
        PointProducts(left, right[:, :5])


@pytest.mark.mpi
@pytest.mark.parametrize("score_dtype", ["float32", "float64"])
def test_ecm_on_point_products_equals_ecm_on_the_formed_matrix(score_dtype):
    """``ecm(PointProducts(left, right), ...)`` is the ECM of the formed matrix bit for bit
    (points, weights, rows, history), at any partition, from scratch and warm-started with
    batches (the enrichment's call)."""
    from ddrom.reduction.ecm import PointProducts

    left, right, w, gid = products_case()
    A = np.asarray(PointProducts(left, right))
    ll, rl, Al, wl, gl = split(COMM, left, right, A, w, gid)
    init = ecm(A[:, :8], w, gid, MPI.COMM_SELF, tol=1e-8).point_gids
    for kw in ({}, {"initial_points": init, "batch": 4}):
        ref = ecm(A, w, gid, MPI.COMM_SELF, tol=1e-9, score_dtype=score_dtype, **kw)
        assert ref.converged
        for got in (ecm(PointProducts(left, right), w, gid, MPI.COMM_SELF, tol=1e-9, score_dtype=score_dtype, **kw),
                    ecm(PointProducts(ll, rl), wl, gl, COMM, tol=1e-9, score_dtype=score_dtype, **kw),
                    ecm(Al, wl, gl, COMM, tol=1e-9, score_dtype=score_dtype, **kw)):
            assert np.array_equal(got.point_gids, ref.point_gids), kw
            assert np.array_equal(got.weights, ref.weights), kw
            assert np.array_equal(got.rows, ref.rows), kw
            assert np.array_equal(got.residual_history, ref.residual_history), kw


@pytest.mark.mpi
@pytest.mark.parametrize("bad", ["nan", "overflow"])
def test_ecm_point_products_with_bad_values_raise_on_every_rank(bad):
    from ddrom.reduction.ecm import PointProducts

    left, right, w, gid = products_case()
    ll, rl, wl, gl = split(COMM, left, right, w, gid)
    ll = ll.copy()
    if COMM.rank == COMM.size - 1 and len(ll):
        ll[-1, 0, 0] = np.nan if bad == "nan" else 1e300
        if bad == "overflow":
            rl = rl.copy()
            rl[-1, 0, :] = 1e300
    with pytest.raises(DdromError, match="NaN or infinite"):
        ecm(PointProducts(ll, rl), wl, gl, COMM, tol=1e-8)


@pytest.mark.mpi
def test_ecm_score_buffer_gives_the_same_rule_and_is_checked():
    """A caller's ``score_buffer`` (the enrichment's workspace) holds the score copy: the
    same rule bit for bit, the buffer reusable for the next call; one too small on one rank
    only is refused on every rank."""
    A, w, gid = smooth_random(300, 12, seed=4)
    Al, wl, gl = split(COMM, A, w, gid)
    ref = ecm(Al, wl, gl, COMM, tol=1e-9)
    buf = np.full(Al.size + 7, np.nan, dtype=np.float32)
    for _ in range(2):
        got = ecm(Al, wl, gl, COMM, tol=1e-9, score_buffer=buf)
        assert np.array_equal(got.point_gids, ref.point_gids) and np.array_equal(got.weights, ref.weights)
    small = buf[: Al.size - 1] if COMM.rank == COMM.size - 1 and Al.size else buf
    with pytest.raises(DdromError, match="score_buffer"):
        ecm(Al, wl, gl, COMM, tol=1e-9, score_buffer=small)
    with pytest.raises(DdromError, match="score_buffer"):
        ecm(Al, wl, gl, COMM, tol=1e-9, score_buffer=buf.astype(np.float64))
