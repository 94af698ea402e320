"""Physics-informed clustering, local bases and the a priori criterion, all from C = S^T M S."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.linalg

from ddrom.parallel import DdromError
from ddrom.reduction import clustering as cl
from ddrom.reduction import criterion as cr
from ddrom.reduction.kmedoids import (alternating_kmedoids, canonical_labels, kernel_kmeans,
                                      pam)
from helpers import regimes_data, weighted_gram


def same_partition(a, b) -> bool:
    return np.array_equal(canonical_labels(a), canonical_labels(b))


# ------------------------------------------------------------------ dissimilarities
def test_snapshot_dissimilarities_match_explicit_vectors():
    rng = np.random.default_rng(1)
    n, m = 30, 12
    S = rng.standard_normal((n, m)) * 10.0 ** rng.uniform(-2, 2, m)
    w = rng.uniform(0.5, 2.0, n)                      # diagonal inner product M
    C = weighted_gram(S, w)
    De = cl.dissimilarity(C, "euclidean")
    Da = cl.dissimilarity(C, "angle")
    for i, j in itertools.product(range(m), repeat=2):
        diff = S[:, i] - S[:, j]
        assert De[i, j] == pytest.approx(np.sqrt(diff @ (w * diff)), rel=1e-10, abs=1e-300)
        # |sin| = relative M-norm error of projecting s_i onto span{s_j}
        u, v = S[:, i], S[:, j]
        r = u - (u @ (w * v)) / (v @ (w * v)) * v
        ref = np.sqrt(r @ (w * r) / (u @ (w * u)))
        assert Da[i, j] == pytest.approx(ref, abs=1e-9)
    assert np.all(np.diag(De) == 0) and np.all(np.diag(Da) == 0)


def test_angle_is_scale_invariant_and_euclidean_is_not():
    rng = np.random.default_rng(2)
    S = rng.standard_normal((25, 10))
    a = 10.0 ** rng.uniform(-6, 6, 10)
    C, Cs = S.T @ S, (S * a).T @ (S * a)
    np.testing.assert_allclose(cl.angle(Cs), cl.angle(C), atol=1e-10)
    assert np.max(np.abs(cl.euclidean(Cs) - cl.euclidean(C))) > 1.0


def _sim_matrix(seed=3, n=20, sizes=(3, 4, 5, 2), rank_deficient=True):
    rng = np.random.default_rng(seed)
    blocks = [rng.standard_normal((n, s)) for s in sizes]
    if rank_deficient:  # a column that is a combination of the others: rank 3 of 4
        blocks[1][:, 3] = blocks[1][:, 0] - 2.0 * blocks[1][:, 1]
    S = np.hstack(blocks)
    sims = np.repeat(np.arange(len(sizes)), sizes)
    return S, sims, blocks


def test_grassmann_distances_match_scipy_subspace_angles():
    S, sims, blocks = _sim_matrix()
    w = np.random.default_rng(4).uniform(0.5, 2.0, S.shape[0])
    C = weighted_gram(S, w)
    Gmax = cl.dissimilarity(C, "grassmann_max", sims=sims)
    Grss = cl.dissimilarity(C, "grassmann_rss", sims=sims)
    sq = np.sqrt(w)[:, None]  # the M inner product is the Euclidean one of M^1/2 S
    for a, b in itertools.product(range(len(blocks)), repeat=2):
        th = scipy.linalg.subspace_angles(sq * blocks[a], sq * blocks[b])
        ref_max = np.sin(th.max()) if a != b else 0.0
        ref_rss = np.sqrt(np.sum(np.sin(th) ** 2)) if a != b else 0.0
        assert Gmax[a, b] == pytest.approx(ref_max, abs=1e-8)
        assert Grss[a, b] == pytest.approx(ref_rss, abs=1e-8)
    cos = cl.principal_cosines(C, np.flatnonzero(sims == 1), np.flatnonzero(sims == 2))
    assert cos.size == 3  # rank of the deficient simulation
    np.testing.assert_allclose(
        np.sort(cos), np.sort(np.cos(scipy.linalg.subspace_angles(sq * blocks[1], sq * blocks[2]))),
        atol=1e-10)


def test_grassmann_is_zero_for_the_same_span_at_any_scale():
    rng = np.random.default_rng(5)
    B = rng.standard_normal((15, 3))
    S = np.hstack([B, 1e4 * B @ rng.standard_normal((3, 4)), rng.standard_normal((15, 3))])
    sims = np.array([0] * 3 + [1] * 4 + [2] * 3)
    G = cl.grassmann_max(S.T @ S, sims)
    assert G[0, 1] < 1e-7 and G[0, 2] > 0.3


def _rotated_pair(n: int, angles, extra: int, seed: int):
    """Spans A = span{e_1..e_r} and B = span{cos t_i e_i + sin t_i e_(r+i)} plus ``extra``
    directions orthogonal to A, in a random orthonormal frame: the principal angles are
    exactly ``angles`` plus ``extra`` angles of pi/2."""
    rng = np.random.default_rng(seed)
    r = len(angles)
    Q, _ = np.linalg.qr(rng.standard_normal((n, 2 * r + extra)))
    A = Q[:, :r]
    B = np.hstack([np.cos(angles) * Q[:, :r] + np.sin(angles) * Q[:, r:2 * r], Q[:, 2 * r:]])
    # non-orthonormal generators over 2 decades: only the spans matter (wider ranges only
    # lose digits: the directions of a column at 1e-4 of the largest are resolved to ~1e-8)
    mix = lambda X, k: X @ rng.standard_normal((X.shape[1], k)) * 10.0 ** rng.uniform(-1, 1, k)
    return mix(A, r + 2), mix(B, r + extra + 3)


@pytest.mark.parametrize("extra", [0, 1, 3])
def test_grassmann_chordal_on_known_angles(extra):
    angles = np.array([0.1, 0.5, 1.2])
    Sa, Sb = _rotated_pair(40, angles, extra, seed=31 + extra)
    S = np.hstack([Sa, Sb])
    sims = np.repeat([0, 1], [Sa.shape[1], Sb.shape[1]])
    w = np.random.default_rng(32).uniform(0.5, 2.0, 40)
    sq = 1.0 / np.sqrt(w)[:, None]         # M^-1/2: the M-angles of M^-1/2 X are those of X
    C = weighted_gram(sq * S, w)
    D = cl.dissimilarity(C, "grassmann_chordal", sims=sims)
    ref = np.sqrt(np.sum(np.sin(angles) ** 2) + extra)
    assert D[0, 1] == pytest.approx(ref, rel=1e-9) and D[1, 0] == D[0, 1]
    assert D[0, 0] == 0.0 and D[1, 1] == 0.0
    # the other two only see the min(r_a, r_b) = 3 common angles: blind to the extra ones
    assert cl.dissimilarity(C, "grassmann_max", sims=sims)[0, 1] == pytest.approx(
        np.sin(1.2), rel=1e-9)
    assert cl.dissimilarity(C, "grassmann_rss", sims=sims)[0, 1] == pytest.approx(
        np.sqrt(np.sum(np.sin(angles) ** 2)), rel=1e-9)
    # projector identity: d^2 = (||P_a - P_b||_F^2 + |r_a - r_b|) / 2 (Euclidean frame)
    Pa = scipy.linalg.orth(Sa) @ scipy.linalg.orth(Sa).T
    Pb = scipy.linalg.orth(Sb) @ scipy.linalg.orth(Sb).T
    assert D[0, 1] ** 2 == pytest.approx((np.sum((Pa - Pb) ** 2) + extra) / 2, rel=1e-9)


def test_grassmann_chordal_sees_a_contained_span_and_is_scale_invariant():
    S, sims, blocks = _sim_matrix(seed=33, sizes=(3, 4, 5, 2), rank_deficient=False)
    rng = np.random.default_rng(34)
    # simulation 4: the first 2 directions of simulation 0 at 1e5 scale (a sub-span)
    sub = 1e5 * blocks[0][:, :2] @ rng.standard_normal((2, 2))
    S = np.hstack([S, sub])
    sims = np.concatenate([sims, [4, 4]])
    C = S.T @ S
    G = cl.dissimilarity(C, "grassmann_chordal", sims=sims)
    assert cl.grassmann_max(C, sims)[0, 4] < 1e-7          # contained: blind
    assert G[0, 4] == pytest.approx(1.0, abs=1e-7)          # one extra dimension
    # against scipy's angles (min(r_a, r_b) of them) + the dimension difference
    for a, b in itertools.product(range(5), repeat=2):
        Xa, Xb = S[:, sims == a], S[:, sims == b]
        th = scipy.linalg.subspace_angles(Xa, Xb) if a != b else np.zeros(0)
        extra = abs(Xa.shape[1] - Xb.shape[1]) if a != b else 0
        assert G[a, b] == pytest.approx(np.sqrt(np.sum(np.sin(th) ** 2) + extra), abs=1e-8)
    # scaling each simulation by its own factor (8 decades) changes nothing; so does scaling
    # each snapshot (2 decades: within the span truncation sv_rtol = 1e-6, a snapshot at
    # 1e-8 of its simulation's largest would be cut off as noise)
    a = 10.0 ** rng.uniform(-4, 4, 5)[sims]
    np.testing.assert_allclose(cl.dissimilarity((S * a).T @ (S * a), "grassmann_chordal",
                                                sims=sims), G, atol=1e-8)
    a = 10.0 ** rng.uniform(-1, 1, S.shape[1])
    np.testing.assert_allclose(cl.dissimilarity((S * a).T @ (S * a), "grassmann_chordal",
                                                sims=sims), G, atol=1e-8)
    # the truncation decides the dimensions: with max_dim = 2 every span is 2-D, no extra term
    G2 = cl.dissimilarity(C, "grassmann_chordal", sims=sims, max_dim=2)
    np.testing.assert_array_equal(G2, cl.dissimilarity(C, "grassmann_rss", sims=sims, max_dim=2))


def test_grassmann_chordal_separates_elastic_from_plastic_where_max_does_not():
    """The blind spot of grassmann_max seen on HF data (regimes_load_direction_plastic):
    'elastic' simulations span one direction d_r of their regime (r = 0, 1; d_0 and d_1
    at 0.5 rad), 'plastic' ones span d_r plus a correction c common to both regimes.
    grassmann_max puts every elastic simulation at distance 0 from the plastic ones of
    its regime and groups by regime; grassmann_chordal (extra dimension = 1) separates
    elastic from plastic."""
    rng = np.random.default_rng(35)
    Q, _ = np.linalg.qr(rng.standard_normal((60, 3)))
    d = [Q[:, 0], np.cos(0.5) * Q[:, 0] + np.sin(0.5) * Q[:, 1]]
    cols, sims, kind = [], [], []
    for s in range(8):
        r, plastic = s % 2, s >= 4
        for t in range(1, 5):
            u = t * d[r] + (0.05 * t ** 2 * Q[:, 2] if plastic else 0.0)
            cols.append(10.0 ** rng.uniform(-1, 1) * u)
            sims.append(s)
        kind.append(int(plastic))
    C = np.array(cols) @ np.array(cols).T
    sims = np.array(sims)
    Dc = cl.dissimilarity(C, "grassmann_chordal", sims=sims)
    assert Dc[0, 4] == pytest.approx(1.0, abs=1e-6)          # elastic r=0 vs plastic r=0
    assert cl.dissimilarity(C, "grassmann_max", sims=sims)[0, 4] < 1e-6
    assert Dc[0, 1] == pytest.approx(np.sin(0.5), abs=1e-6)   # elastic r=0 vs elastic r=1
    assert same_partition(cl.cluster(C, 2, dissimilarity="grassmann_chordal", sims=sims).labels,
                          kind)
    assert same_partition(cl.cluster(C, 2, dissimilarity="grassmann_max", sims=sims).labels,
                          np.arange(8) % 2)


def test_grassmann_needs_a_truncation_on_noisy_data():
    S, sims, reg, sim_reg = regimes_data(seed=6)
    rng = np.random.default_rng(6)
    S = S + 1e-5 * np.abs(S).max(axis=0) * rng.standard_normal(S.shape)  # 1e-5 relative noise
    C = S.T @ S
    # full spans: the noise directions are nearly orthogonal between simulations
    assert cl.grassmann_max(C, sims).min(initial=1.0, where=~np.eye(12, dtype=bool)) > 0.9
    # truncated to the POD at 1e-3 (or 3 modes) each span is its regime again
    for opts in ({"sv_rtol": 1e-3}, {"max_dim": 3}):
        c = cl.cluster(C, 3, dissimilarity="grassmann_max", sims=sims, **opts)
        assert same_partition(c.labels, sim_reg)
        D = cl.dissimilarity(C, "grassmann_max", sims=sims, **opts)
        assert D[sim_reg[:, None] == sim_reg[None, :]].max() < 1e-3


def test_dissimilarity_table_is_extensible():
    assert {"euclidean", "angle", "grassmann_max", "grassmann_rss", "grassmann_chordal",
            "euclidean_trajectory"} <= set(cl.DISSIMILARITIES)
    assert cl.DISSIMILARITIES["grassmann_chordal"].level == "simulation"
    cl.register_dissimilarity(cl.Dissimilarity(
        "cosine_test", "snapshot", lambda C, **_: 1.0 - np.abs(cl.angle(C) - 1.0), "test"))
    try:
        C = np.eye(3)
        np.testing.assert_allclose(cl.dissimilarity(C, "cosine_test"), 1 - np.abs(cl.angle(C) - 1))
    finally:
        del cl.DISSIMILARITIES["cosine_test"]


# ----------------------------------------------------------------------- k-medoids
def _brute_force_kmedoids(D, k):
    best = min(itertools.combinations(range(D.shape[0]), k),
               key=lambda med: D[:, list(med)].min(axis=1).sum())
    return np.array(best), D[:, list(best)].min(axis=1).sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pam_finds_the_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    X = np.vstack([rng.normal(c, 0.8, (5, 2)) for c in ([0, 0], [3, 0], [0, 3])])
    X = np.vstack([X, rng.uniform(-1, 4, (2, 2))])   # two stragglers: not trivial
    D = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))
    med, cost = _brute_force_kmedoids(D, 3)
    res = pam(D, 3)
    assert res.cost == pytest.approx(cost, rel=1e-14)
    np.testing.assert_array_equal(res.medoids, np.sort(med))
    np.testing.assert_array_equal(res.labels, np.argmin(D[:, res.medoids], axis=1))
    alt = alternating_kmedoids(D, 3, seed=seed, n_init=10)
    assert alt.cost == pytest.approx(cost, rel=1e-14)


def test_kmedoids_are_deterministic():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((60, 4))
    D = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))
    a, b = pam(D, 5), pam(D.copy(), 5)
    np.testing.assert_array_equal(a.medoids, b.medoids)
    np.testing.assert_array_equal(a.labels, b.labels)
    c, d = alternating_kmedoids(D, 5, seed=11), alternating_kmedoids(D, 5, seed=11)
    np.testing.assert_array_equal(c.labels, d.labels)
    # PAM is at least as good as the greedy BUILD alone
    assert a.cost <= alternating_kmedoids(D, 5, init="build").cost + 1e-12


def test_kernel_kmeans_from_C_equals_sklearn_kmeans_on_vectors():
    KMeans = pytest.importorskip("sklearn.cluster").KMeans
    rng = np.random.default_rng(8)
    centres = np.array([[5, 0, 0, 0, 0], [0, 5, 0, 0, 0], [0, 0, 5, 0, 0], [-5, -5, 0, 0, 0.0]])
    X = np.vstack([rng.normal(c, 0.5, (12, 5)) for c in centres])
    X = X[rng.permutation(X.shape[0])]
    C = X @ X.T                                        # the columns of S are the points
    ours = cl.cluster(C, 4, dissimilarity="euclidean", method="kmeans", seed=3)
    ref = KMeans(4, n_init=10, random_state=0).fit(X)
    assert same_partition(ours.labels, ref.labels_)
    assert ours.cost == pytest.approx(ref.inertia_, rel=1e-10)
    again = kernel_kmeans(C, 4, seed=3)
    np.testing.assert_array_equal(again.labels, ours.labels)


# --------------------------------------------------------------------- local bases
def test_local_pod_coefficients_and_projection_errors_match_explicit():
    rng = np.random.default_rng(9)
    n, m = 40, 25
    S = rng.standard_normal((n, 8)) @ rng.standard_normal((8, m)) * np.linspace(1, 3, m)
    S += 1e-3 * rng.standard_normal((n, m))
    w = rng.uniform(0.5, 2.0, n)
    C = weighted_gram(S, w)
    sq = np.sqrt(w)[:, None]
    cols = np.array([0, 3, 4, 7, 8, 11, 15, 16, 20, 24])
    N = 4
    W, sigma = cl.local_pod_coefficients(C, cols, N)
    Psi = S[:, cols] @ W                                # the distributed modes: one matmul
    np.testing.assert_allclose(Psi.T @ (w[:, None] * Psi), np.eye(N), atol=1e-12)
    np.testing.assert_allclose(sigma, np.linalg.svd(sq * S[:, cols], compute_uv=False)[:N],
                               rtol=1e-10)
    # explicit M-orthogonal projection of every column by least squares
    B = sq * Psi
    coef = np.linalg.lstsq(B, sq * S, rcond=None)[0]
    explicit = ((sq * S - B @ coef) ** 2).sum(axis=0)
    from_C = cr.projection_errors_sq(C, cols, W, np.arange(m))
    np.testing.assert_allclose(from_C / np.diag(C), explicit / np.diag(C), atol=1e-10)
    # all basis sizes at once, and per-simulation relative errors
    sims = np.arange(m) // 5
    Ns = [1, 2, 4]
    cum = cr.cumulative_errors_sq(C, cols, W, np.arange(m), Ns)
    for i, Nn in enumerate(Ns):
        Bn = B[:, :Nn]
        r = sq * S - Bn @ np.linalg.lstsq(Bn, sq * S, rcond=None)[0]
        e2 = (r ** 2).sum(axis=0)
        np.testing.assert_allclose(cum[i] / np.diag(C), e2 / np.diag(C), atol=1e-10)
        rel = cr.relative_errors_by_simulation(C, cum[i], sims)
        ref = [np.sqrt(e2[sims == a].sum() / (S[:, sims == a] ** 2 * w[:, None]).sum())
               for a in range(5)]
        np.testing.assert_allclose(rel, ref, rtol=1e-8)
    # the global basis is the POD of everything
    Wg, sg = cl.global_pod_coefficients(C, 6)
    np.testing.assert_allclose(sg, np.linalg.svd(sq * S, compute_uv=False)[:6], rtol=1e-10)


def test_local_bases_of_a_clustering_are_orthonormal():
    S, sims, reg, _ = regimes_data()
    C = S.T @ S
    c = cl.cluster(C, 3, dissimilarity="angle")
    for cols, W, s in cl.local_bases(C, c, 2):
        Psi = S[:, cols] @ W
        np.testing.assert_allclose(Psi.T @ Psi, np.eye(W.shape[1]), atol=1e-10)


# ---------------------------------------------------------- the distinct-regimes claim
def test_angle_clustering_recovers_regimes_and_beats_euclidean_kmeans():
    S, sims, reg, sim_reg = regimes_data()
    C = S.T @ S
    ang = cl.cluster(C, 3, dissimilarity="angle", method="pam")
    alt = cl.cluster(C, 3, dissimilarity="angle", method="alternating", seed=0)
    grs = cl.cluster(C, 3, dissimilarity="grassmann_max", sims=sims)
    euc = cl.cluster(C, 3, dissimilarity="euclidean", method="kmeans", seed=0)
    etr = cl.cluster(C, 3, dissimilarity="euclidean_trajectory", method="kmeans", sims=sims)
    assert same_partition(ang.labels, reg)
    assert same_partition(alt.labels, reg)
    assert same_partition(grs.labels, sim_reg)
    assert same_partition(grs.column_labels, reg)
    # Euclidean k-means clusters by amplitude: one cluster holds all the small
    # snapshots of every regime
    for c in (euc, etr):
        mixed = [np.unique(reg[c.column_labels == q]).size for q in range(3)]
        assert max(mixed) == 3
    Ns = [1, 2, 3]
    e_ang = cr.clustering_errors(C, ang, Ns, sims)[0].mean(axis=1)
    e_grs = cr.clustering_errors(C, grs, Ns, sims)[0].mean(axis=1)
    e_euc = cr.clustering_errors(C, euc, Ns, sims)[0].mean(axis=1)
    e_etr = cr.clustering_errors(C, etr, Ns, sims)[0].mean(axis=1)
    e_glb = cr.clustering_errors(C, None, Ns, sims)[0].mean(axis=1)
    # the numbers of this seeded case (k = 3): mean relative projection error per N
    np.testing.assert_allclose(e_ang[:2], [0.158057, 0.093984], rtol=1e-5)
    np.testing.assert_allclose(e_euc[:2], [0.591409, 0.320531], rtol=1e-5)
    np.testing.assert_allclose(e_etr[:2], [0.623586, 0.345220], rtol=1e-5)
    np.testing.assert_allclose(e_glb, [0.705764, 0.425684, 0.158057], rtol=1e-5)
    assert e_ang[2] < 1e-7                   # each regime is 3-D: exact with N = 3
    np.testing.assert_allclose(e_grs, e_ang, rtol=1e-10, atol=1e-7)
    assert np.all(e_ang < 0.35 * e_euc[:3]) and np.all(e_ang < 0.35 * e_etr[:3])


def test_efficiency_table_recommender_and_plot(tmp_path):
    S, sims, reg, _ = regimes_data()
    C = S.T @ S
    table = cr.efficiency_table(C, sims, [1, 2, 3], [1, 2, 3, 4], dissimilarity="grassmann_max",
                                n_rows=S.shape[0])
    assert len(table) == 12
    row = {(r["k"], r["N"]): r for r in table}
    assert row[(1, 2)]["mean_local"] == row[(1, 2)]["mean_global"] == pytest.approx(0.425684,
                                                                                     rel=1e-5)
    assert row[(3, 3)]["max_local"] < 1e-7 and row[(3, 3)]["max_global"] > 0.2
    assert row[(3, 3)]["cluster_sizes"] == [24, 24, 24]
    assert row[(3, 3)]["modes_total"] == 9
    # cost model: sum_c m_c^3 + 2 n m_c N_c + n N_c^2 (beta = 1)
    n = S.shape[0]
    assert row[(3, 2)]["offline_flops"] == pytest.approx(3 * (24 ** 3 + 2 * n * 24 * 2 + n * 4))
    assert row[(1, 2)]["offline_ratio"] == 1.0
    rec = cr.recommend(table, 1e-3)
    assert rec["local_pays_off"] and (rec["choice"]["k"], rec["choice"]["N"]) == (3, 3)
    assert rec["global_N"] is None
    assert cr.recommend(table, 1e-3, budget=0.01)["choice"] is None
    # N = 1 already meets the target globally: local bases cannot reduce N
    easy = cr.recommend(table, 0.8, metric="mean")
    assert not easy["local_pays_off"] and easy["global_N"] == 1 and easy["choice"]["k"] == 1
    # at 0.3 the global basis needs N = 3, local bases N = 1
    mid = cr.recommend(table, 0.3, metric="mean")
    assert mid["local_pays_off"] and mid["global_N"] == 3
    assert (mid["choice"]["k"], mid["choice"]["N"]) == (3, 1)
    text = cr.format_table(table)
    assert text.count("\n") == 13
    png = cr.plot_efficiency(table, str(tmp_path / "eff.png"), title="regimes")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------ bad input
def test_bad_input_names_the_object():
    C = np.eye(4)
    bad = C.copy()
    bad[1, 2] = np.nan
    with pytest.raises(DdromError, match=r"Gram matrix C: .*NaN"):
        cl.cluster(bad, 2)
    with pytest.raises(DdromError, match=r"displacement Gram.*not symmetric"):
        cl.cluster(C + np.triu(np.ones((4, 4)), 1), 2, gram_name="displacement Gram")
    with pytest.raises(DdromError, match=r"cannot make 5 non-empty clusters of 4 snapshots"):
        cl.cluster(C, 5)
    with pytest.raises(DdromError, match=r"cannot make 3 non-empty clusters of 2 simulations"):
        cl.cluster(C, 3, dissimilarity="grassmann_max", sims=[0, 0, 1, 1])
    with pytest.raises(DdromError, match="at least 1"):
        cl.cluster(C, 0)
    zero = np.diag([1.0, 0.0, 2.0])
    with pytest.raises(DdromError, match=r"zero norm \(1\)"):
        cl.dissimilarity(zero, "angle")
    with pytest.raises(DdromError, match="unknown dissimilarity 'cosine'"):
        cl.dissimilarity(C, "cosine")
    with pytest.raises(DdromError, match="k-means needs a Euclidean"):
        cl.cluster(C, 2, dissimilarity="angle", method="kmeans")
    with pytest.raises(DdromError, match="one simulation label per snapshot"):
        cl.dissimilarity(C, "grassmann_rss", sims=[0, 1])
    with pytest.raises(DdromError, match=r"cluster 2: 5 modes requested from 4 snapshots"):
        cl.local_pod_coefficients(C, [0, 1, 2, 3], 5, name="cluster 2")
    with pytest.raises(DdromError, match="empty set of snapshots"):
        cl.local_pod_coefficients(C, [], 1)
    with pytest.raises(DdromError, match="negative diagonal"):
        cl.check_gram(-np.eye(2))
    with pytest.raises(DdromError, match="different numbers of snapshots"):
        cl.dissimilarity(C, "euclidean_trajectory", sims=[0, 0, 0, 1])


# ------------------------------------------------------------------------ parallel
@pytest.mark.mpi
def test_clustering_from_a_distributed_gram_is_partition_invariant():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    S, sims, reg, _ = regimes_data(seed=21, n=101)
    w = np.random.default_rng(22).uniform(0.5, 2.0, S.shape[0])  # diagonal M, rows distributed
    # uneven row partition: rank r owns a share proportional to r + 1
    shares = np.arange(1, comm.size + 1)
    bounds = np.concatenate([[0], np.cumsum(shares)]) * S.shape[0] // shares.sum()
    lo, hi = bounds[comm.rank], bounds[comm.rank + 1]
    S_loc, w_loc = S[lo:hi], w[lo:hi]
    C = np.empty((S.shape[1],) * 2)
    comm.Allreduce(weighted_gram(S_loc, w_loc), C, op=MPI.SUM)   # the one reduction
    C = cl.agree(C, comm)
    C_serial = weighted_gram(S, w)
    np.testing.assert_allclose(C, C_serial, rtol=1e-12, atol=1e-12 * np.abs(C_serial).max())
    for name, method in [("angle", "pam"), ("grassmann_rss", "pam"), ("grassmann_chordal", "pam"),
                         ("euclidean", "kmeans"), ("angle", "alternating")]:
        got = cl.cluster(C, 3, dissimilarity=name, method=method, sims=sims, seed=4)
        ref = cl.cluster(C_serial, 3, dissimilarity=name, method=method, sims=sims, seed=4)
        np.testing.assert_array_equal(got.column_labels, ref.column_labels)
        all_labels = comm.allgather(got.column_labels)
        assert all(np.array_equal(all_labels[0], x) for x in all_labels)
    assert same_partition(cl.cluster(C, 3, dissimilarity="angle").labels, reg)
    D = cl.dissimilarity(C, "grassmann_chordal", sims=sims, sv_rtol=1e-6)
    D_ref = cl.dissimilarity(C_serial, "grassmann_chordal", sims=sims, sv_rtol=1e-6)
    # sin^2 = 1 - cos^2 is what round-off perturbs (~1e-16 cond): compare squares; near 0,
    # sin itself is only resolved to ~sqrt of that (1e-7 here, amplitudes over 4 decades)
    np.testing.assert_allclose(D ** 2, D_ref ** 2, atol=1e-12)
    all_D = comm.allgather(D)
    assert all(np.array_equal(all_D[0], x) for x in all_D)     # replicated bitwise
    # the local modes are one local matmul; their global Gram is the identity
    W, _ = cl.local_pod_coefficients(C, np.flatnonzero(reg == 1), 3)
    Psi_loc = S_loc[:, reg == 1] @ W
    G = comm.allreduce(Psi_loc.T @ (w_loc[:, None] * Psi_loc), op=MPI.SUM)
    np.testing.assert_allclose(G, np.eye(3), atol=1e-10)
    t = cr.efficiency_table(C, sims, [1, 3], [1, 2], dissimilarity="grassmann_max", n_rows=101)
    t_ref = cr.efficiency_table(C_serial, sims, [1, 3], [1, 2], dissimilarity="grassmann_max",
                                n_rows=101)
    for a, b in zip(t, t_ref):
        assert a["mean_local"] == pytest.approx(b["mean_local"], rel=1e-10, abs=1e-12)
