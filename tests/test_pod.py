"""Distributed POD (ddrom.reduction.pod): truncation, accuracy against LAPACK, partition
invariance at 1..size ranks, inner products, bad input.

The global matrices are generated from a seed identically on every rank and each rank
takes its rows with an uneven partition; the gathered matrix is used IN TESTS ONLY to
compare with numpy.linalg.svd.
"""
import numpy as np
import pytest
from mpi4py import MPI

import ddrom  # noqa: F401  (sets PETSC_DIR before petsc4py)
from ddrom.parallel import DdromError
from ddrom.reduction import (
    Diagonal, Euclidean, PetscMatrix, l2_err_from_relative, pod, truncate,
)
from ddrom.reduction.pod import SNAPSHOTS_FLOOR

EPS = np.finfo(float).eps
ACCURATE = ["rcholqr", "tsqr", "slepc"]


# ----------------------------------------------------------------------------- data
def synthetic(n, m, decades=14.0, seed=0, graded=False):
    """S = U diag(s) V^T with s geometric from 1 to 10^-decades (exact singular values).

    graded=True takes V = I (orthogonal columns of decreasing norms): every backward
    stable QR-based SVD then has relative accuracy, so LAPACK is a reference for the
    tiny singular values too. Otherwise V is a random orthogonal matrix and the best any
    method (LAPACK included) achieves is an absolute error ~eps s_1.
    """
    rng = np.random.default_rng(seed)
    s = np.logspace(0.0, -decades, m)
    U, _ = np.linalg.qr(rng.standard_normal((n, m)))
    if graded:
        return U * s, s
    V, _ = np.linalg.qr(rng.standard_normal((m, m)))
    return (U * s) @ V.T, s


from helpers import cuts, gather, local  # noqa: E402  (uneven row partitions)


def lapack_sigma(S, w=None):
    W = S if w is None else np.sqrt(w)[:, None] * S
    return np.linalg.svd(W, compute_uv=False)


# ------------------------------------------------------------------------ truncation
def test_truncate_semantics_by_hand():
    s = np.array([10.0, 5.0, 1.0, 0.1, 0.01, 0.0])
    assert truncate(s, rtol=0.0) == 5                    # sigma == 0 never kept
    assert truncate(s, rtol=0.05) == 3                   # 0.5 cut: keeps 10, 5, 1
    assert truncate(s, rtol=0.0, atol=0.1) == 4          # >= atol, inclusive
    # tails: sum_{i>N} s_i^2 for N=0..6: 126.0101, 26.0101, 1.0101, 0.0101, 1e-4, 0, 0
    assert truncate(s, rtol=0.0, l2_err=np.sqrt(1.0101)) == 2
    assert truncate(s, rtol=0.0, l2_err=np.sqrt(1.0100)) == 3
    assert truncate(s, rtol=0.0, l2_err=0.0) == 5
    assert truncate(s, rtol=0.0, l2_err=0.0, modes=2) == 2
    assert truncate(np.zeros(0)) == 0


def test_truncate_matches_pymor():
    svd_va = pytest.importorskip("pymor.algorithms.svd_va")
    rng = np.random.default_rng(3)
    for _ in range(200):
        s = np.sort(rng.lognormal(0, 3, rng.integers(1, 30)))[::-1]
        rtol, atol = 10.0 ** rng.uniform(-12, 0), rng.choice([0.0, 10.0 ** rng.uniform(-5, 1)])
        l2 = rng.choice([0.0, 10.0 ** rng.uniform(-6, 2)])
        modes = rng.choice([None, int(rng.integers(0, 30))])
        assert truncate(s, rtol, atol, l2, modes) == svd_va._select_modes(s, modes, rtol, atol, l2)


def test_relative_tolerance_maps_to_l2_err():
    S, s = synthetic(300, 20, decades=4, seed=5)
    comm = MPI.COMM_SELF
    l2 = l2_err_from_relative(1e-2, S, comm)
    assert l2 == pytest.approx(1e-2 * np.linalg.norm(S), rel=1e-13)
    assert l2_err_from_relative(1e-2, sigma_all=s) == pytest.approx(l2, rel=1e-12)
    N = pod(S, comm, l2_err=l2, rtol=0.0).sigma.size
    tail = np.sqrt(np.cumsum(s[::-1] ** 2)[::-1])       # tail[N] = sqrt(sum_{i>=N} s_i^2)
    assert tail[N] <= 1e-2 * np.linalg.norm(s) < tail[N - 1]


# -------------------------------------------------------------------------- accuracy
def _orth_err(r, inner, comm):
    N = r.modes_loc.shape[1]
    return np.max(np.abs(inner.gram(r.modes_loc, None, comm) - np.eye(N)))


@pytest.mark.mpi
@pytest.mark.parametrize("method", ACCURATE)
@pytest.mark.parametrize("weighted", [False, True])
def test_accurate_methods_graded_relative_1e10(method, weighted):
    """sigma equal to LAPACK's to 1e-10 relative for all sigma_i >= 1e-12 sigma_1."""
    comm = MPI.COMM_WORLD
    S, s_exact = synthetic(900, 40, decades=14, seed=11, graded=True)
    w = np.random.default_rng(12).uniform(0.5, 2.0, S.shape[0]) if weighted else None
    inner = Diagonal(local(w, comm)) if weighted else Euclidean()
    r = pod(local(S, comm), comm, inner, method=method, rtol=0.0)
    ref = lapack_sigma(S, w)
    mask = ref >= 1e-12 * ref[0]
    assert mask.sum() >= 34 and r.sigma.size >= mask.sum()
    rel = np.abs(r.sigma[:mask.sum()] - ref[mask]) / ref[mask]
    assert rel.max() <= 1e-10, rel.max()
    assert _orth_err(r, inner, comm) <= 1e-12
    if not weighted:
        assert np.max(np.abs(ref[mask] - s_exact[mask]) / s_exact[mask]) <= 1e-10


@pytest.mark.mpi
@pytest.mark.parametrize("method", ACCURATE)
def test_accurate_methods_mixed_absolute(method):
    """Non-graded 14-decade spectrum: |sigma_i - LAPACK| ~ eps sigma_1 (the best possible:
    LAPACK itself is off by that much), so 1e-10 relative down to 1e-4 sigma_1; modes
    reproduce S."""
    comm = MPI.COMM_WORLD
    S, _ = synthetic(900, 40, decades=14, seed=13)
    r = pod(local(S, comm), comm, method=method, rtol=0.0)
    ref = lapack_sigma(S)
    k = min(r.sigma.size, ref.size)
    assert k >= 38
    assert np.max(np.abs(r.sigma[:k] - ref[:k])) <= 20 * EPS * ref[0]
    big = ref[:k] >= 1e-4 * ref[0]
    assert np.max(np.abs(r.sigma[:k][big] - ref[:k][big]) / ref[:k][big]) <= 1e-10
    assert _orth_err(r, Euclidean(), comm) <= 1e-12
    Psi = gather(r.modes_loc, comm)
    assert np.linalg.norm(S - Psi @ (r.sigma[:, None] * r.vh)) <= 1e-13 * ref[0]


@pytest.mark.mpi
def test_snapshots_method_limited_to_1e8():
    comm = MPI.COMM_WORLD
    S, _ = synthetic(900, 40, decades=14, seed=13)
    r = pod(local(S, comm), comm, method="snapshots", rtol=0.0)
    ref = lapack_sigma(S)
    k = r.sigma.size
    # Only the values above sqrt(eps) sigma_1 are returned, each within ~1e-8 sigma_1.
    assert r.sigma[-1] > SNAPSHOTS_FLOOR * r.sigma[0]
    assert 15 <= k <= 25
    assert np.max(np.abs(r.sigma - ref[:k])) <= 1e-8 * ref[0]
    assert r.info["reorth_passes"] >= 1 and _orth_err(r, Euclidean(), comm) <= 1e-12
    # The basis is as good as the exact one of the same size, up to ~1e-8 sigma_1.
    Psi = gather(r.modes_loc, comm)
    err = np.linalg.norm(S - Psi @ (Psi.T @ S))
    assert err <= np.sqrt(np.sum(ref[k:] ** 2)) + 1e-8 * ref[0]


# -------------------------------------------------------------- partition invariance
@pytest.mark.mpi
@pytest.mark.parametrize("method", ["rcholqr", "tsqr", "slepc", "snapshots"])
def test_partition_invariance(method):
    """Same sigma and modes (up to sign) on 1, 2, ..., size ranks with uneven partitions.

    Sub-communicators of COMM_WORLD give every rank count up to the current size in one
    run. Modes are compared where they are well determined: sigma_i >= 1e-6 sigma_1
    (their sensitivity is ~eps sigma_1 / gap_i)."""
    world = MPI.COMM_WORLD
    S, _ = synthetic(700, 30, decades=14, seed=21)
    ref = pod(S, MPI.COMM_SELF, method=method, rtol=0.0)
    Psi_ref = ref.modes_loc
    problems = []
    for p in range(1, world.size + 1):
        sub = world.Split(0 if world.rank < p else MPI.UNDEFINED, world.rank)
        if sub == MPI.COMM_NULL:
            continue
        r = pod(local(S, sub), sub, method=method, rtol=0.0)
        Psi = gather(r.modes_loc, sub)
        sub.Free()
        k = min(r.sigma.size, ref.sigma.size)
        if k < (15 if method == "snapshots" else 29):
            problems.append(f"p={p}: only {k} modes")
        # "Round-off" of the method of snapshots is its documented ~1e-8 sigma_1 (the
        # values near its sqrt(eps) floor move by ~1e-9 sigma_1 with the partition).
        tol = 1e-8 if method == "snapshots" else 20 * EPS
        ds = np.max(np.abs(r.sigma[:k] - ref.sigma[:k])) / ref.sigma[0]
        if ds > tol:
            problems.append(f"p={p}: sigma differ by {ds:.2e} sigma_1")
        good = np.nonzero(ref.sigma[:k] >= 1e-6 * ref.sigma[0])[0]
        # Signs are normalized the same way whatever the partition: compare directly.
        d = np.abs(Psi[:, good] - Psi_ref[:, good]).max(axis=0)
        lim = 1e-5 if method == "snapshots" else 1e-8
        if d.max() > lim:
            problems.append(f"p={p}: modes {good[d > lim].tolist()} differ by {d.max():.2e}")
    # Every rank asserts the same thing (a failure on some ranks only would desynchronize
    # the collectives of the following tests).
    problems = sum(world.allgather(problems), [])
    assert not problems, problems


@pytest.mark.mpi
def test_rank_with_no_rows_and_rank_deficient():
    """A rank owning no rows and duplicated/zero snapshots are fine for every method."""
    comm = MPI.COMM_WORLD
    S, _ = synthetic(400, 12, decades=3, seed=4)
    S = np.hstack([S, S[:, :3], np.zeros((400, 1))])          # rank 12 of 16 columns
    c = cuts(400, comm.size)
    c[1] = 0 if comm.size > 1 else c[1]                        # rank 0 owns nothing
    lo, hi = (c[comm.rank], c[comm.rank + 1]) if comm.rank else (0, c[1])
    ref = lapack_sigma(S)
    for method in ["rcholqr", "tsqr", "slepc", "snapshots"]:
        r = pod(S[lo:hi], comm, method=method, rtol=1e-10)
        assert r.sigma.size == 12, method
        assert np.allclose(r.sigma, ref[:12], rtol=1e-9 if method != "snapshots" else 1e-6)
        assert _orth_err(r, Euclidean(), comm) <= 1e-12


# ---------------------------------------------- few / no local rows, rcholqr specifics
def _subcomms(world):
    """Sub-communicators of 1..size ranks (collective over world); yields (p, sub)."""
    for p in range(1, world.size + 1):
        sub = world.Split(0 if world.rank < p else MPI.UNDEFINED, world.rank)
        if sub != MPI.COMM_NULL:
            yield p, sub
            sub.Free()


def _skewed_cuts(n, p):
    """Rank 0 owns no rows, rank 1 owns 5 (fewer than the snapshots), the rest share."""
    if p == 1:
        return np.array([0, n])
    c = [0, 0] + ([5] if p > 2 else [])
    rest = np.round(np.linspace(c[-1], n, p + 2 - len(c))).astype(int)[1:]
    return np.array(c + rest.tolist())


@pytest.mark.mpi
@pytest.mark.parametrize("method", ["rcholqr", "tsqr"])
@pytest.mark.parametrize("graded", [False, True])
def test_fewer_local_rows_than_snapshots_and_empty_rank(method, graded):
    """60 snapshots; ranks owning 0 or 5 rows (m_local < m: the local Householder factor has
    only m_local reflectors, the aedebbf bug); same sigma (LAPACK) and modes at 1..size ranks."""
    world = MPI.COMM_WORLD
    S, _ = synthetic(400, 60, decades=14, seed=51, graded=graded)
    ref = lapack_sigma(S)
    base = pod(S, MPI.COMM_SELF, method=method, rtol=0.0)
    problems = []
    for p, sub in _subcomms(world):
        c = _skewed_cuts(S.shape[0], p)
        assert c[-1] == S.shape[0] and np.all(np.diff(c) >= 0)
        r = pod(S[c[sub.rank]:c[sub.rank + 1]], sub, method=method, rtol=0.0)
        Psi = gather(r.modes_loc, sub)
        mask = ref >= (1e-12 if graded else 1e-4) * ref[0]
        k = int(mask.sum())
        rel = np.max(np.abs(r.sigma_all[:k] - ref[:k]) / ref[:k])
        if rel > 1e-10:
            problems.append(f"p={p}: sigma rel err {rel:.1e}")
        if np.max(np.abs(r.sigma_all - ref)) > 20 * EPS * ref[0]:
            problems.append(f"p={p}: sigma abs err")
        orth = np.max(np.abs(Psi.T @ Psi - np.eye(Psi.shape[1])))
        if orth > 1e-12:
            problems.append(f"p={p}: orth {orth:.1e}")
        good = np.nonzero(base.sigma >= 1e-6 * base.sigma[0])[0]
        d = np.abs(Psi[:, good] - base.modes_loc[:, good]).max()
        if d > 1e-8:
            problems.append(f"p={p}: modes differ by {d:.1e}")
        if "fallback" in r.info:
            problems.append(f"p={p}: unexpected fallback")
    problems = sum(world.allgather(problems), [])
    assert not problems, problems


@pytest.mark.mpi
def test_rcholqr_ill_conditioned_1e14_one_pass():
    """sigma over 14 decades (cond 1e14, far beyond the 1e8 of Cholesky-QR2): the sketch
    preconditioner gives kappa(W R0^-1) = O(1), one Cholesky-QR pass, LAPACK accuracy."""
    comm = MPI.COMM_WORLD
    for graded in (False, True):
        S, _ = synthetic(3000, 80, decades=14, seed=61, graded=graded)
        r = pod(local(S, comm), comm, method="rcholqr", rtol=0.0)
        ref = lapack_sigma(S)
        assert r.info["passes"] == 1 and r.info["kappa"][0] < 10 and r.info["dropped"] == 0
        assert np.max(np.abs(r.sigma_all - ref)) <= 20 * EPS * ref[0]
        lim = 1e-12 if graded else 1e-4          # relative accuracy where LAPACK has it
        mask = ref >= lim * ref[0]
        assert np.max(np.abs(r.sigma_all[mask] - ref[mask]) / ref[mask]) <= 1e-10
        assert r.info["orth_err"] <= 1e-12 and r.info["reorth_passes"] == 0


@pytest.mark.mpi
def test_rcholqr_coherent_and_dependent_columns():
    """Coherent snapshots (each column a few rows: high-leverage rows, the hard case for a
    sparse sketch) plus duplicated, scaled and zero columns: the dependent columns are
    dropped from the preconditioner, their residual checked, sigma = LAPACK's."""
    comm = MPI.COMM_WORLD
    n, m0 = 500, 30
    rng = np.random.default_rng(71)
    S0 = np.zeros((n, m0))
    rows = rng.choice(n, m0, replace=False)
    S0[rows, np.arange(m0)] = np.logspace(0, -10, m0)
    S0[(rows + 1) % n, np.arange(m0)] = 1e-3 * np.logspace(0, -10, m0)
    S = np.hstack([S0, S0[:, :4], 3.0 * S0[:, 10:12], np.zeros((n, 2)), S0[:, :2] + S0[:, 2:4]])
    r = pod(local(S, comm), comm, method="rcholqr", rtol=0.0)
    ref = lapack_sigma(S)
    assert r.info["dropped"] == S.shape[1] - m0 and "fallback" not in r.info
    assert r.n_modes == m0
    assert np.max(np.abs(r.sigma_all[:m0] - ref[:m0]) / ref[:m0]) <= 1e-10
    assert np.all(r.sigma_all[m0:] == 0.0)
    assert r.info["orth_err"] <= 1e-12
    Psi = gather(r.modes_loc, comm)
    assert np.linalg.norm(S - Psi @ (r.sigma[:, None] * r.vh)) <= 1e-14 * ref[0]


@pytest.mark.mpi
def test_rcholqr_bad_sketch_falls_back(monkeypatch):
    """A deliberately bad sketch (1 nonzero per column, barely more rows than snapshots:
    coherent columns collide) must not give a wrong answer: the residual check of the
    dropped columns or the conditioning check sends the POD to Householder TSQR."""
    from ddrom.reduction import pod as _  # noqa: F401
    import sys

    mod = sys.modules["ddrom.reduction.pod"]
    monkeypatch.setattr(mod, "SKETCH_NNZ", 1)
    monkeypatch.setattr(mod, "SKETCH_FACTOR", 1)
    comm = MPI.COMM_WORLD
    n, m = 400, 40
    S = np.zeros((n, m))
    S[np.random.default_rng(81).choice(n, m, replace=False), np.arange(m)] = np.logspace(0, -8, m)
    r = pod(local(S, comm), comm, method="rcholqr", rtol=0.0)
    assert "fallback" in r.info
    ref = lapack_sigma(S)
    assert np.max(np.abs(r.sigma_all - ref) / ref) <= 1e-12
    assert r.info["orth_err"] <= 1e-12


@pytest.mark.mpi
def test_rcholqr_second_pass(monkeypatch):
    """The extra Cholesky-QR pass (taken when cond(R1) > KAPPA_ONE_PASS; forced here by a
    threshold of 1.5) is done in place and gives the same answer."""
    import sys

    from ddrom.reduction import pod as _  # noqa: F401
    mod = sys.modules["ddrom.reduction.pod"]
    comm = MPI.COMM_WORLD
    S, _s = synthetic(2000, 50, decades=14, seed=91)
    ref = pod(local(S, comm), comm, method="rcholqr", rtol=0.0)
    monkeypatch.setattr(mod, "KAPPA_ONE_PASS", 1.5)
    r = pod(local(S, comm), comm, method="rcholqr", rtol=0.0)
    assert ref.info["passes"] == 1 and r.info["passes"] == 2 and r.info["kappa"][1] < 1.5
    assert np.max(np.abs(r.sigma_all - ref.sigma_all)) <= 20 * EPS * ref.sigma_all[0]
    good = ref.sigma >= 1e-6 * ref.sigma[0]
    assert np.max(np.abs(r.modes_loc[:, good] - ref.modes_loc[:, good]), initial=0) <= 1e-8
    assert r.info["orth_err"] <= 1e-12


def test_sketch_is_partition_invariant():
    """The sketch of a row depends on its global index only: sums of per-block sketches
    equal the one-block sketch to round-off."""
    import sys

    from ddrom.reduction import pod as _  # noqa: F401
    mod = sys.modules["ddrom.reduction.pod"]
    W = np.random.default_rng(3).standard_normal((1000, 7))
    Y = mod.sparse_sign_sketch(W, 0, 22, 4)
    Y2 = sum(mod.sparse_sign_sketch(W[a:b], a, 22, 4, chunk=64)
             for a, b in [(0, 0), (0, 3), (3, 400), (400, 1000)])
    assert np.allclose(Y, Y2, rtol=0, atol=1e-13)
    # each column of Omega has nnz entries +-1/2 (with repeats summed)
    Om = mod.sparse_sign_sketch(np.eye(1000), 0, 22, 4)
    assert np.allclose(np.abs(Om).sum(axis=0)[np.abs(Om).sum(axis=0) == 2.0], 2.0)
    assert np.all(np.abs(Om).sum(axis=0) <= 2.0 + 1e-15)


# --------------------------------------------------------------- inner products
def _mass_matrix_1d(n, comm):
    """Distributed 1-D P1 mass matrix (tridiagonal h/6 [1 4 1], h = 1/n), rows = cuts."""
    from petsc4py import PETSc

    c = cuts(n, comm.size)
    lo, hi = c[comm.rank], c[comm.rank + 1]
    M = PETSc.Mat().createAIJ(size=((hi - lo, n), (hi - lo, n)), nnz=3, comm=PETSc.Comm(comm))
    h = 1.0 / n
    for i in range(lo, hi):
        M.setValue(i, i, 4 * h / 6)
        if i > 0:
            M.setValue(i, i - 1, h / 6)
        if i < n - 1:
            M.setValue(i, i + 1, h / 6)
    M.assemble()
    Md = np.diag(np.full(n, 4 * h / 6)) + np.diag(np.full(n - 1, h / 6), 1) + np.diag(np.full(n - 1, h / 6), -1)
    return M, Md


@pytest.mark.mpi
def test_inner_products_gram_one_allreduce():
    comm = MPI.COMM_WORLD
    rng = np.random.default_rng(8)
    A, B = rng.standard_normal((200, 7)), rng.standard_normal((200, 5))
    w = rng.uniform(1, 2, 200)
    M, Md = _mass_matrix_1d(200, comm)
    for inner, Mref in [(Euclidean(), np.eye(200)), (Diagonal(local(w, comm)), np.diag(w)),
                        (PetscMatrix(M), Md)]:
        assert np.allclose(inner.gram(local(A, comm), local(B, comm), comm), A.T @ Mref @ B,
                           rtol=1e-13, atol=1e-13)
        G = inner.gram(local(A, comm), None, comm)
        assert np.array_equal(G, G.T) and np.allclose(G, A.T @ Mref @ A, rtol=1e-13, atol=1e-13)
        assert np.allclose(inner.norms(local(A, comm), comm), np.sqrt(np.diag(A.T @ Mref @ A)))
        assert np.allclose(inner.apply(local(A, comm)), local(Mref @ A, comm))
    M.destroy()


@pytest.mark.mpi
@pytest.mark.parametrize("method", ["tsqr", "rcholqr", "snapshots"])
def test_pod_in_sparse_mass_inner_product(method):
    comm = MPI.COMM_WORLD
    n = 300
    S, _ = synthetic(n, 20, decades=8, seed=31)
    M, Md = _mass_matrix_1d(n, comm)
    L = np.linalg.cholesky(Md)
    ref = np.linalg.svd(L.T @ S, compute_uv=False)     # sigma in the M inner product
    inner = PetscMatrix(M)
    r = pod(local(S, comm), comm, inner, method=method, rtol=0.0)
    k = r.sigma.size
    if method in ("tsqr", "rcholqr"):         # rcholqr: CGS2 in the M inner product
        assert k == 20
        assert np.max(np.abs(r.sigma - ref)) <= 20 * EPS * ref[0]     # backward stable (CGS2)
        big = ref >= 1e-4 * ref[0]
        assert np.max(np.abs(r.sigma - ref)[big] / ref[big]) <= 1e-10
    else:
        assert np.max(np.abs(r.sigma - ref[:k])) <= 1e-8 * ref[0]
    assert _orth_err(r, inner, comm) <= 1e-12
    with pytest.raises(DdromError, match="slepc.*tsqr"):
        pod(local(S, comm), comm, inner, method="slepc")
    M.destroy()


@pytest.mark.mpi
def test_slepc_solver_from_options_database():
    from petsc4py import PETSc

    comm = MPI.COMM_WORLD
    S, _ = synthetic(500, 20, decades=10, seed=41)
    opts = PETSc.Options()
    opts["ddromtest_svd_type"] = "trlanczos"
    try:
        r = pod(local(S, comm), comm, method="slepc", rtol=0.0, options_prefix="ddromtest_")
    finally:
        opts.delValue("ddromtest_svd_type")
    assert r.info["svd_type"] == "trlanczos"
    ref = lapack_sigma(S)
    assert np.max(np.abs(r.sigma - ref[:r.sigma.size])) <= 20 * EPS * ref[0]


# ------------------------------------------------------------------------- bad input
@pytest.mark.mpi
def test_bad_input_raises_on_every_rank():
    comm = MPI.COMM_WORLD
    S, _ = synthetic(200, 8, decades=3, seed=2)
    S_loc = local(S, comm).copy()
    bad = S_loc.copy()
    if comm.rank == comm.size - 1:          # only the last rank sees the NaN
        bad[-1, 5] = np.nan
        bad[0, 2] = np.inf
    with pytest.raises(DdromError, match=r"'displacement'.*NaN or Inf \(columns \[2, 5\]\)"):
        pod(bad, comm, name="displacement")
    with pytest.raises(DdromError, match=r"'u'.*9 modes requested but only 8 snapshots"):
        pod(S_loc, comm, modes=9, name="u")
    with pytest.raises(DdromError, match=r"'u'.*empty snapshot block"):
        pod(S_loc[:, :0], comm, name="u")
    with pytest.raises(DdromError, match="unknown method"):
        pod(S_loc, comm, method="qr")
    with pytest.raises(DdromError, match="weights"):
        pod(S_loc, comm, Diagonal(np.ones(S_loc.shape[0] + (comm.rank == 0))))
    # Still collective afterwards (nobody hangs): a normal call works.
    assert pod(S_loc, comm, rtol=1e-10).sigma.size == 8
