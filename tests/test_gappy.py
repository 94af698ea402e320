"""Gappy-POD of dual quantities (ddrom.reduction.gappy): Q-DEIM sample points against
scipy's pivoted QR, conditioning against random sampling, exact reconstruction in the
span, the error indicator, stress fields (6 Mandel components), ECM points kept, partition
invariance (1 rank, all ranks, a 2-rank sub-communicator), bad input.

The global data are generated from a seed identically on every rank; each rank takes the
integration points of an UNEVEN, shuffled set of cells (natural ids cell*nq + q, not
contiguous per rank). The POD basis is computed in a distributed way (method of
snapshots: one allreduce of S^T S). Gathering is done IN TESTS ONLY, for references.
"""
import numpy as np
import pytest
import scipy.linalg
from mpi4py import MPI

import ddrom  # noqa: F401
from ddrom.parallel import DdromError
from ddrom.reduction.gappy import GappyPOD, gather_point_rows, qdeim_points

NCELLS, NQ = 150, 4
G = NCELLS * NQ


# ----------------------------------------------------------------------------- data
def cell_partition(comm, seed=7):
    """Shuffled cells, uneven shares 1, 3, 2, 5, ... per rank -> this rank's point ids."""
    perm = np.random.default_rng(seed).permutation(NCELLS)
    shares = np.array([1, 3, 2, 5, 4, 6, 7, 8][:comm.size], dtype=float)
    cuts = np.concatenate(([0], np.round(np.cumsum(shares) / shares.sum() * NCELLS))).astype(int)
    cuts[-1] = NCELLS
    cells = perm[cuts[comm.rank]:cuts[comm.rank + 1]]
    return (cells[:, None] * NQ + np.arange(NQ)[None, :]).ravel().astype(np.int64)


def snapshots(ncomp=1, m=40, seed=0):
    """Global snapshots (G*ncomp, m) of smooth parametric fields at the points.

    Row gid*ncomp + c = component c at point gid (the module's layout).
    """
    rng = np.random.default_rng(seed)
    x = rng.random((G, 3))
    mu = np.linspace(0.0, 1.0, m)
    cols = []
    for j, t in enumerate(mu):
        centre = np.array([0.2 + 0.6 * t, 0.5 + 0.3 * np.sin(3 * t), 0.5])
        r2 = ((x - centre) ** 2).sum(axis=1)
        base = np.exp(-r2 / (0.05 + 0.1 * t)) * (1 + t) + 0.3 * np.cos(2 * x[:, 0] + t) * t ** 2
        comps = [base * np.cos(k * (t + x[:, 2])) + 0.1 * k * x[:, 1] * t for k in range(ncomp)]
        cols.append(np.stack(comps, axis=1).ravel())
    return np.array(cols).T


def local_rows(S, gid, ncomp):
    rows = (gid[:, None] * ncomp + np.arange(ncomp)[None, :]).ravel()
    return S[rows]


def snapshot_pod(S_loc, comm, N):
    """Method of snapshots: one allreduce of S^T S, eigh; Phi_loc = S_loc V / sigma."""
    C = comm.allreduce(S_loc.T @ S_loc)
    lam, V = np.linalg.eigh(C)
    lam, V = lam[::-1][:N], V[:, ::-1][:, :N]
    # fix the sign of each mode (eigh's sign is arbitrary and may differ by partition)
    V = V * np.sign(V[np.argmax(np.abs(V), axis=0), np.arange(N)])
    sig = np.sqrt(lam)
    Phi = S_loc @ (V / sig)
    # one Cholesky-QR pass restores orthonormality lost by the method of snapshots
    R = np.linalg.cholesky(comm.allreduce(Phi.T @ Phi)).T
    return np.linalg.solve(R.T, Phi.T).T, sig


def setup(comm, ncomp=1, N=10, seed=0, replicated_basis=False):
    """This rank's point ids, basis rows and the global snapshots.

    replicated_basis=True: the basis is the SVD of the global snapshots computed on every
    rank (bitwise identical for every partition), so that a partition-invariance test
    sees only the partition dependence of the Gappy-POD code. Otherwise the distributed
    method of snapshots, whose small modes depend on the partition at ~eps/sigma_N^2.
    """
    gid = cell_partition(comm)
    S = snapshots(ncomp=ncomp, seed=seed)
    if replicated_basis:
        U = np.linalg.svd(S, full_matrices=False)[0][:, :N]
        return gid, local_rows(U, gid, ncomp), S
    Phi_loc, _ = snapshot_pod(local_rows(S, gid, ncomp), comm, N)
    return gid, Phi_loc, S


def gather_global(X_loc, gid, comm, ncomp=1):
    """TESTS ONLY: the global array in natural order on every rank."""
    gids = np.concatenate(comm.allgather(gid))
    X = np.concatenate(comm.allgather(X_loc.reshape(gid.size, ncomp, -1)))
    out = np.empty_like(X)
    out[gids] = X
    return out.reshape(G * ncomp, -1)


def serial(ncomp=1, N=10, seed=0):
    """The same computation on one rank (COMM_SELF), on every rank: the reference."""
    return setup(MPI.COMM_SELF, ncomp, N, seed)


# ----------------------------------------------------------------------------- Q-DEIM
@pytest.mark.mpi
def test_qdeim_equals_scipy_pivoted_qr_and_is_well_conditioned():
    comm = MPI.COMM_WORLD
    N = 10
    gid, Phi_loc, _ = setup(comm, N=N)
    ids = qdeim_points(Phi_loc, gid, comm)
    assert ids.dtype == np.int64 and ids.size == N
    Phi = gather_global(Phi_loc, gid, comm)
    _, _, piv = scipy.linalg.qr(Phi.T, pivoting=True, mode="economic")
    np.testing.assert_array_equal(ids, piv[:N])
    # the same ids on every rank
    assert all(np.array_equal(ids, o) for o in comm.allgather(ids))

    cond_q = np.linalg.cond(Phi[ids])
    cond_ref = np.linalg.cond(Phi[piv[:N]])
    rng = np.random.default_rng(1)
    cond_rand = np.array([np.linalg.cond(Phi[rng.choice(G, N, replace=False)])
                          for _ in range(200)])
    if comm.rank == 0:
        print(f"\n[gappy] N={N} G={G}: cond(Phi_I) Q-DEIM {cond_q:.3g} (scipy pivots "
              f"{cond_ref:.3g}); random {N} points: median {np.median(cond_rand):.3g}, "
              f"min {cond_rand.min():.3g}, max {cond_rand.max():.3g}")
    assert cond_q < 10 * cond_ref
    assert cond_q < np.median(cond_rand)
    assert cond_q < 50.0   # measured ~ 10 on these data; random median is far larger

    # oversampling (phase 2) improves the conditioning further, first N ids unchanged
    ids2 = qdeim_points(Phi_loc, gid, comm, n_extra=2 * N)
    np.testing.assert_array_equal(ids2[:N], ids)
    assert ids2.size == 2 * N and np.unique(ids2).size == 2 * N
    cond_2 = np.linalg.cond(Phi[ids2])
    cond_rand2 = np.array([np.linalg.cond(Phi[rng.choice(G, 2 * N, replace=False)])
                           for _ in range(200)])
    if comm.rank == 0:
        print(f"[gappy] 2N={2 * N} points: Q-DEIM + D-optimal {cond_2:.3g}; random median "
              f"{np.median(cond_rand2):.3g}, min {cond_rand2.min():.3g}")
    assert cond_2 < cond_q
    assert cond_2 < np.median(cond_rand2)
    gp = GappyPOD(Phi_loc, gid, ids2, comm)
    assert gp.cond == pytest.approx(cond_2, rel=1e-10)
    assert gp.redundancy == N


@pytest.mark.mpi
@pytest.mark.parametrize("nc,N,exclude", [(6, 14, []), (1, 10, [17, 300, 401]),
                                          (6, 20, [250, 9])])
def test_qdeim_equals_greedy_reference_multicomponent_and_exclude(nc, N, exclude):
    """Point selection = greedy max deflated block norm, after the ``exclude`` points
    (reference computed here serially on the gathered basis, by explicit projection)."""
    comm = MPI.COMM_WORLD
    gid, Phi_loc, _ = setup(comm, ncomp=nc, N=N)
    ids = qdeim_points(Phi_loc, gid, comm, ncomp=nc, exclude=exclude)
    Phi = gather_global(Phi_loc, gid, comm, nc).reshape(G, nc, N)

    def span(pts):
        if not pts:
            return np.zeros((N, 0))
        U, s, _ = np.linalg.svd(Phi[pts].reshape(-1, N).T, full_matrices=False)
        return U[:, s > 1e-10 * s[0]]

    chosen = list(exclude)
    Q = span(chosen)
    while Q.shape[1] < N:
        R = Phi - Phi @ Q @ Q.T
        sc = (R ** 2).sum(axis=(1, 2))
        sc[chosen] = -1
        chosen.append(int(np.argmax(sc)))
        Q = span(chosen)
    np.testing.assert_array_equal(ids, chosen)
    if not exclude:
        assert ids.size == int(np.ceil(N / nc))   # generic data: each point adds nc dirs
    Phi_I = Phi[ids].reshape(-1, N)
    assert np.linalg.matrix_rank(Phi_I) == N


@pytest.mark.mpi
@pytest.mark.parametrize("nc,N", [(1, 8), (6, 10)])
def test_oversampling_is_greedy_max_volume(nc, N):
    """Phase 2 = greedy max of det(Phi_I^T Phi_I) (brute-force reference on the gathered
    basis; 20 extra points also exercise the periodic recomputation of the downdates)."""
    comm = MPI.COMM_WORLD
    gid, Phi_loc, _ = setup(comm, ncomp=nc, N=N)
    base = qdeim_points(Phi_loc, gid, comm, ncomp=nc)
    ids = qdeim_points(Phi_loc, gid, comm, ncomp=nc, n_extra=base.size + 20)
    np.testing.assert_array_equal(ids[:base.size], base)
    Phi = gather_global(Phi_loc, gid, comm, nc).reshape(G, nc, N)
    chosen = list(base)
    for _ in range(20):
        A = np.einsum("gin,gim->nm", Phi[chosen], Phi[chosen])
        Ainv = np.linalg.inv(A)
        M = np.einsum("gin,nm,gjm->gij", Phi, Ainv, Phi)
        sc = np.linalg.slogdet(M + np.eye(nc))[1]
        sc[chosen] = -np.inf
        chosen.append(int(np.argmax(sc)))
    np.testing.assert_array_equal(ids, chosen)
    vol = [np.linalg.slogdet(np.einsum("gin,gim->nm", Phi[ids[:k]], Phi[ids[:k]]))[1]
           for k in range(base.size, ids.size + 1)]
    assert np.all(np.diff(vol) > 0)


# ----------------------------------------------------------------------------- Gappy fit
@pytest.mark.mpi
def test_field_in_span_is_reconstructed_exactly():
    comm = MPI.COMM_WORLD
    N = 10
    gid, Phi_loc, _ = setup(comm, N=N)
    ids = qdeim_points(Phi_loc, gid, comm, n_extra=N + 5)
    gp = GappyPOD(Phi_loc, gid, ids, comm)
    a0 = np.random.default_rng(3).standard_normal(N)
    p_loc = Phi_loc @ a0
    p_I = gp.sample_local(p_loc, gid, comm)
    a = gp.fit(p_I)
    np.testing.assert_allclose(a, a0, rtol=0, atol=1e-10 * np.abs(a0).max())
    rec = gp.reconstruct_local(a, Phi_loc)
    assert rec.shape == (gid.size,)
    err = np.sqrt(comm.allreduce(((rec - p_loc) ** 2).sum()) / comm.allreduce((p_loc ** 2).sum()))
    assert err < 1e-10
    assert gp.indicator(p_I) < 1e-10
    assert gp.indicator(np.zeros_like(p_I)) == 0.0
    # a training snapshot (in the span up to the POD truncation) too
    a_b, E_b = gp.fit_with_indicator(np.stack([p_I, 2 * p_I], axis=1))
    np.testing.assert_allclose(a_b[:, 1], 2 * a, rtol=1e-12, atol=1e-14)
    assert np.all(E_b < 1e-10)


@pytest.mark.mpi
def test_indicator_grows_with_out_of_span_component_and_equals_hand_residual():
    comm = MPI.COMM_WORLD
    N = 8
    gid, Phi_loc, _ = setup(comm, N=N)
    ids = qdeim_points(Phi_loc, gid, comm, n_extra=2 * N)
    gp = GappyPOD(Phi_loc, gid, ids, comm)
    rng = np.random.default_rng(5)
    a0 = rng.standard_normal(N)
    z = rng.standard_normal(G)                     # global perturbation, natural order
    z_loc = z[gid]
    Phi_I = gp.Phi_I
    prev = -1.0
    for eps in [1e-8, 1e-6, 1e-4, 1e-2, 1e-1, 1.0]:
        p_loc = Phi_loc @ a0 + eps * z_loc
        p_I = gp.sample_local(p_loc, gid, comm)
        np.testing.assert_allclose(p_I, Phi_I @ a0 + eps * z[ids], rtol=1e-13, atol=1e-13)
        E = gp.indicator(p_I)
        a_hand, *_ = np.linalg.lstsq(Phi_I, p_I, rcond=None)
        E_hand = np.linalg.norm(p_I - Phi_I @ a_hand) / np.linalg.norm(p_I)
        assert E == pytest.approx(E_hand, rel=1e-8)
        np.testing.assert_allclose(gp.fit(p_I), a_hand, rtol=0, atol=1e-10 * np.abs(a_hand).max())
        assert E > prev
        prev = E
    # indicator proportional to eps while eps is small (relative residual ~ eps |r| / |p|)
    E1 = gp.indicator(gp.sample_local(Phi_loc @ a0 + 1e-6 * z_loc, gid, comm))
    E2 = gp.indicator(gp.sample_local(Phi_loc @ a0 + 1e-5 * z_loc, gid, comm))
    assert E2 / E1 == pytest.approx(10.0, rel=1e-3)


@pytest.mark.mpi
def test_stress_six_components_with_ecm_points():
    comm = MPI.COMM_WORLD
    nc, N = 6, 12
    gid, Phi_loc, S = setup(comm, ncomp=nc, N=N, seed=2)
    ecm = np.array([517, 3, 288, 101], dtype=np.int64)   # "reduced points", kept first
    ids = qdeim_points(Phi_loc, gid, comm, ncomp=nc, exclude=ecm, n_extra=6)
    np.testing.assert_array_equal(ids[:ecm.size], ecm)
    assert ids.size == ecm.size + 6 and np.unique(ids).size == ids.size
    # exclude counts toward the span: 4 generic points x 6 comps already span R^12,
    # so all 6 extra points come from the oversampling phase
    gp = GappyPOD(Phi_loc, gid, ids, comm, ncomp=nc)
    assert gp.Phi_I.shape == (ids.size * nc, N)
    Phi = gather_global(Phi_loc, gid, comm, nc)
    rows = (ids[:, None] * nc + np.arange(nc)).ravel()
    np.testing.assert_array_equal(gp.Phi_I, Phi[rows])
    a0 = np.random.default_rng(1).standard_normal(N)
    p_loc = (Phi_loc @ a0).reshape(gid.size, nc)           # (G_loc, 6) layout accepted
    p_I = gp.sample_local(p_loc, gid, comm)
    assert p_I.shape == (ids.size * nc,)
    a = gp.fit(p_I.reshape(ids.size, nc))
    np.testing.assert_allclose(a, a0, atol=1e-10)
    rec = gp.reconstruct_local(a, Phi_loc)
    assert rec.shape == (gid.size, nc)
    np.testing.assert_allclose(rec, p_loc, atol=1e-10 * np.abs(p_loc).max())
    assert gp.indicator(p_I) < 1e-10
    # a training snapshot outside the truncated span: small but nonzero indicator,
    # close to the true relative error of the reconstruction at all points
    s_loc = local_rows(S, gid, nc)[:, 17]
    a_s, E_s = gp.fit_with_indicator(gp.sample_local(s_loc, gid, comm))
    true = np.sqrt(comm.allreduce(((gp.reconstruct_local(a_s, Phi_loc).ravel() - s_loc) ** 2).sum())
                   / comm.allreduce((s_loc ** 2).sum()))
    if comm.rank == 0:
        print(f"\n[gappy] stress snapshot 17: indicator {E_s:.3e}, true error {true:.3e}, "
              f"cond {gp.cond:.3g}")
    assert 1e-12 < E_s < 1e-1 and 1e-12 < true < 1e-1
    # round trip through the ROM file dict
    gp2 = GappyPOD.from_dict(gp.to_dict())
    np.testing.assert_array_equal(gp2.fit(p_I), gp.fit(p_I))
    assert gp2.ncomp == nc and gp2.cond == gp.cond


# ----------------------------------------------------------------------------- invariance
@pytest.mark.mpi
def test_an_excluded_point_with_a_weak_direction_does_not_cover_it():
    """An ECM point (in ``exclude``) whose row is 1e-8 of the scale in a direction must not
    count as covering it: phase 1 then chose no point for that direction and the D-optimal
    phase met Phi_I^T Phi_I singular (the hot-spot case's p basis: "numerically singular
    before oversampling"). Now a point strong in that direction is chosen and the sampled
    basis is well conditioned; the same ids at every rank count."""
    comm = MPI.COMM_WORLD
    gid = cell_partition(comm)
    rng = np.random.default_rng(3)
    c, s_ = np.cos(0.7), np.sin(0.7)
    v1, v2 = np.array([c, s_]), np.array([-s_, c])
    Phi = rng.standard_normal((G, 1)) * v1 + rng.standard_normal((G, 1)) * v2 * (rng.random((G, 1)) < 0.05)
    ecm = np.arange(10, 40)                 # 30 points whose rows are v1 + 1e-9 of v2
    Phi[ecm] = rng.uniform(1, 2, (30, 1)) * v1 + 1e-9 * rng.standard_normal((30, 1)) * v2
    ids = qdeim_points(Phi[gid], gid, comm, exclude=ecm, n_extra=3)
    assert list(ids[:30]) == list(ecm) and ids.size == 33
    strong = np.where(np.isin(np.arange(G), ecm), -1.0, (Phi @ v2) ** 2)
    assert ids[30] == int(np.argmax(strong))
    gp = GappyPOD(Phi[gid], gid, ids, comm)
    assert gp.cond < 1e3
    all_ok = comm.allgather(ids.tolist())
    assert all(x == all_ok[0] for x in all_ok)


def _pipeline(comm, ncomp, N, n_extra, exclude=None):
    gid, Phi_loc, S = setup(comm, ncomp=ncomp, N=N, replicated_basis=True)
    ids = qdeim_points(Phi_loc, gid, comm, ncomp=ncomp, n_extra=n_extra, exclude=exclude)
    gp = GappyPOD(Phi_loc, gid, ids, comm, ncomp=ncomp)
    rows = (gid[:, None] * ncomp + np.arange(ncomp)).ravel()     # global row ids
    s_loc = local_rows(S, gid, ncomp)[:, 11] * (1 + 0.1 * np.sin(rows))
    a, E = gp.fit_with_indicator(gp.sample_local(s_loc, gid, comm))
    rec = gather_global(gp.reconstruct_local(a, Phi_loc), gid, comm, ncomp).ravel()
    return ids, a, E, rec


@pytest.mark.mpi
@pytest.mark.parametrize("ncomp,N,n_extra,exclude", [(1, 10, None, None), (1, 9, 20, [5, 77]),
                                                     (6, 13, 5, [40])])
def test_partition_invariance(ncomp, N, n_extra, exclude):
    world = MPI.COMM_WORLD
    ref = _pipeline(MPI.COMM_SELF, ncomp, N, n_extra, exclude)
    runs = [("world", world)]
    sub = None
    if world.size >= 3:
        sub = world.Split(0 if world.rank < 2 else 1, world.rank)
        runs.append(("split", sub))
    try:
        for name, comm in runs:
            ids, a, E, rec = _pipeline(comm, ncomp, N, n_extra, exclude)
            np.testing.assert_array_equal(ids, ref[0], err_msg=name)
            # fit and indicator are replicated computations on bitwise identical Phi_I
            np.testing.assert_array_equal(a, ref[1], err_msg=name)
            assert E == ref[2], name
            # reconstruction: row-wise products, blocking may change the last bit
            np.testing.assert_allclose(rec, ref[3], rtol=0, atol=1e-13 * np.abs(ref[3]).max(),
                                       err_msg=name)
    finally:
        if sub is not None:
            sub.Free()


# ----------------------------------------------------------------------------- bad input
@pytest.mark.mpi
def test_nan_on_one_rank_is_an_error_everywhere():
    comm = MPI.COMM_WORLD
    gid, Phi_loc, _ = setup(comm, N=6)
    if comm.rank == comm.size - 1:
        Phi_loc = Phi_loc.copy()
        Phi_loc[-1, 2] = np.nan
    with pytest.raises(DdromError, match="NaN"):
        qdeim_points(Phi_loc, gid, comm)
    with pytest.raises(DdromError, match="NaN"):
        GappyPOD(Phi_loc, gid, np.arange(10), comm)


@pytest.mark.mpi
def test_bad_requests_are_errors_everywhere():
    comm = MPI.COMM_WORLD
    N = 6
    gid, Phi_loc, _ = setup(comm, N=N)
    with pytest.raises(DdromError, match="requested"):
        qdeim_points(Phi_loc, gid, comm, n_extra=G + 1)
    with pytest.raises(DdromError, match="requested"):
        qdeim_points(Phi_loc, gid, comm, n_extra=G - 1, exclude=[0, 1])
    with pytest.raises(DdromError, match="empty basis"):
        qdeim_points(Phi_loc[:, :0], gid, comm)
    with pytest.raises(DdromError, match="empty basis"):
        GappyPOD(Phi_loc[:, :0], gid, np.arange(5), comm)
    with pytest.raises(DdromError, match="owned by no rank"):
        qdeim_points(Phi_loc, gid, comm, exclude=[3, G + 7])
    with pytest.raises(DdromError, match="underdetermined"):
        GappyPOD(Phi_loc, gid, np.arange(N - 1), comm)
    with pytest.raises(DdromError, match="n_extra"):
        qdeim_points(Phi_loc, gid, comm, n_extra=-1)
    # a dependent mode: the basis has rank N-1 at the points
    dep = np.hstack([Phi_loc, Phi_loc[:, :1] + Phi_loc[:, 1:2]])
    with pytest.raises(DdromError, match="numerical rank"):
        qdeim_points(dep, gid, comm)
    gp_ids = qdeim_points(Phi_loc, gid, comm, n_extra=N + 2)
    gp = GappyPOD(Phi_loc, gid, gp_ids, comm)
    with pytest.raises(DdromError, match="NaN"):
        gp.fit(np.full(gp_ids.size, np.nan))
    with pytest.raises(DdromError, match="shape"):
        gp.fit(np.ones(gp_ids.size + 1))
    with pytest.raises(DdromError, match="lacks"):
        GappyPOD.from_dict({"ncomp": 1, "Phi_I": gp.Phi_I})


def test_gather_point_rows_empty_rank_and_layout():
    """A rank owning no point takes part with an empty block (serial emulation: the
    single rank owns everything; the ids keep their order)."""
    comm = MPI.COMM_SELF
    gid = np.array([9, 2, 5], dtype=np.int64)
    X = np.arange(6.0).reshape(6, 1) + 10 * np.arange(2)  # 3 points x 2 comps, 2 columns
    out = gather_point_rows(X, gid, [5, 9], comm, ncomp=2)
    np.testing.assert_array_equal(out, X[[4, 5, 0, 1]])
    out1 = gather_point_rows(X[:, 0], gid, [2], comm, ncomp=2)
    np.testing.assert_array_equal(out1, [2.0, 3.0])


@pytest.mark.mpi
def test_rank_without_points():
    """Every point on the last rank but one: results unchanged."""
    comm = MPI.COMM_WORLD
    S = snapshots()
    gid_all = np.arange(G, dtype=np.int64)[::-1].copy()
    gid = gid_all if comm.rank == max(comm.size - 2, 0) else np.zeros(0, dtype=np.int64)
    Phi_loc, _ = snapshot_pod(local_rows(S, gid, 1), comm, 7)
    ids = qdeim_points(Phi_loc, gid, comm, n_extra=10)
    ref_Phi, _ = snapshot_pod(S, MPI.COMM_SELF, 7)
    ref = qdeim_points(ref_Phi, np.arange(G), MPI.COMM_SELF, n_extra=10)
    np.testing.assert_array_equal(ids, ref)
    gp = GappyPOD(Phi_loc, gid, ids, comm)
    assert gp.reconstruct_local(np.ones(7), Phi_loc).shape == (gid.size,)


@pytest.mark.mpi
def test_ties_broken_by_smallest_gid():
    """Points 2k and 2k+1 carry identical rows: every pivot is a tie, the even id wins
    whatever the partition (the scores of the two copies may differ in the last bits)."""
    comm = MPI.COMM_WORLD
    N = 6
    gid = cell_partition(comm)
    U = np.linalg.svd(snapshots()[0::2], full_matrices=False)[0][:, :N]  # G/2 rows
    Phi_glob = np.repeat(U, 2, axis=0) / np.sqrt(2.0)                   # rows 2k = 2k+1
    ids = qdeim_points(Phi_glob[gid], gid, comm, n_extra=N + 4)
    # phase 1 (the first N): ties everywhere; phase 2 may legitimately add the twin of
    # a chosen point (it increases the volume), so only the first N must be even
    assert np.all(ids[:N] % 2 == 0), ids
    ref = qdeim_points(Phi_glob, np.arange(G), MPI.COMM_SELF, n_extra=N + 4)
    np.testing.assert_array_equal(ids, ref)
