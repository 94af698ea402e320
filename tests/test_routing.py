"""Routing to local bases: feature relevance, classifiers kept as arrays, the held-out criterion."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ddrom.parallel import DdromError
from ddrom.reduction import clustering as cl
from ddrom.reduction import criterion as cr
from ddrom.reduction import routing as rt
from helpers import hot_spot_data, regimes_data


def _angle_features(theta: np.ndarray, other: np.ndarray):
    X = np.column_stack([np.cos(theta), np.sin(theta), np.cos(2 * theta), np.sin(2 * theta), other])
    groups = [rt.FeatureGroup("theta:h1", (0, 1), "theta"), rt.FeatureGroup("theta:h2", (2, 3), "theta"),
              rt.FeatureGroup("A", (4,), "A")]
    return X, groups


# ------------------------------------------------------------------------ relevance
def test_relevance_finds_the_harmonic_that_moves_the_subspaces():
    """D depends on theta modulo pi (theta and theta + pi: the same regime) and not on A: the
    second harmonic of theta takes the weight, the first and the amplitude none."""
    rng = np.random.default_rng(0)
    theta = np.arange(12) * np.pi / 6
    A = rng.uniform(0.0, 1.0, 12)
    D = np.sqrt(np.abs(np.sin(theta[:, None] - theta[None, :])))     # period pi
    X, groups = _angle_features(theta, A)
    rel = rt.fit_relevance(X, groups, D)
    assert rel.shares[1] > 0.9 and rel.shares[2] < 0.05
    assert rel.by_source()["theta"] > 0.95 and not rel.uniform
    # the scaled features' distance is the fitted metric: theta and theta + pi coincide
    Xw = rel.transform(X)
    assert np.linalg.norm(Xw[0] - Xw[6]) < 0.1 * np.linalg.norm(Xw[0] - Xw[3])


def test_relevance_without_information_is_uniform_and_a_constant_group_weighs_nothing():
    X = np.column_stack([np.arange(5.0), np.ones(5)])
    groups = [rt.FeatureGroup("a", (0,), "a"), rt.FeatureGroup("c", (1,), "c")]
    rel = rt.fit_relevance(X, groups, np.zeros((5, 5)))
    assert rel.uniform and rel.weights.tolist() == [1.0, 0.0] and rel.multipliers[1] == 0.0
    with pytest.raises(DdromError, match="5 feature rows but a dissimilarity matrix of shape"):
        rt.fit_relevance(X, groups, np.zeros((4, 4)))


# ----------------------------------------------------------------------- classifiers
def test_knearest_matches_scikit_learn_and_exact_matches_vote_alone():
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((20, 3)), rng.integers(0, 3, 20)
    Q = np.vstack([rng.standard_normal((10, 3)), X[4]])
    ours = rt.KNearest(3).fit(X, y)
    ref = KNeighborsClassifier(3, weights="distance").fit(X, y)
    np.testing.assert_allclose(ours.predict_proba(Q), ref.predict_proba(Q), atol=1e-12)
    lab, mar = ours.predict_margin(Q)
    np.testing.assert_array_equal(lab, ref.predict(Q))
    assert lab[-1] == y[4] and mar[-1] == 1.0
    again = rt.classifier_from_state(*ours.state())
    np.testing.assert_array_equal(again.predict_margin(Q)[0], lab)


def test_mlp_weights_evaluate_as_scikit_learn_and_survive_a_round_trip():
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(2)
    for n_classes in (2, 3):
        X = rng.standard_normal((15, 4)) * 50.0
        y = np.arange(15) % n_classes
        net = rt.MLP(seed=3).fit(X, y)
        ref = MLPClassifier((16,), activation="tanh", solver="lbfgs", alpha=1e-2, max_iter=500,
                            random_state=3).fit(X / net.input_scale_, y)
        Q = rng.standard_normal((6, 4)) * 50.0
        np.testing.assert_allclose(net.predict_proba(Q), ref.predict_proba(Q / net.input_scale_), atol=1e-10)
        meta, arrays = net.state()
        assert all(isinstance(v, np.ndarray) for v in arrays.values())      # no pickles: arrays + JSON
        import json

        back = rt.classifier_from_state(json.loads(json.dumps(meta)), arrays)
        np.testing.assert_array_equal(back.predict_proba(Q), net.predict_proba(Q))
        lab, mar = back.predict_margin(Q)
        p = np.sort(net.predict_proba(Q), axis=1)
        np.testing.assert_allclose(mar, p[:, -1] - p[:, -2])


def test_mlp_of_one_class_and_without_scikit_learn(monkeypatch):
    one = rt.MLP().fit(np.eye(3), [2, 2, 2])
    lab, mar = one.predict_margin(np.zeros((2, 3)))
    assert lab.tolist() == [2, 2] and mar.tolist() == [1.0, 1.0]
    import sys

    monkeypatch.setitem(sys.modules, "sklearn.neural_network", None)   # makes the import fail
    with pytest.raises(DdromError, match="pip install scikit-learn"):
        rt.MLP().fit(np.eye(3), [0, 1, 1])


def test_nearest_medoid_margin_and_medoids_from_dissimilarities():
    X = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    y = np.array([0, 0, 0, 1, 1])
    D = np.abs(X - X.T)
    nm = rt.NearestMedoid().fit(X, y, D)
    np.testing.assert_array_equal(nm.medoids_, [1, 3])          # ties: the smallest index
    lab, mar = nm.predict_margin(np.array([[1.0], [5.5], [4.0]]))
    assert lab.tolist() == [0, 0, 0]
    # (d2 - d1) / (d2 + d1): at the medoid 1, halfway 0, at 4: (6 - 3) / 9
    np.testing.assert_allclose(mar, [1.0, 0.0, 1.0 / 3.0])
    with pytest.raises(DdromError, match="unknown classifier 'svm'"):
        rt.make_classifier("svm")


def test_folds_and_classifier_selection():
    assert [f.tolist() for f in rt.folds_of(7, 3)] == [[0, 3, 6], [1, 4], [2, 5]]
    assert len(rt.folds_of(5, None)) == 5 and len(rt.folds_of(3, 10)) == 3
    with pytest.raises(DdromError, match="at least 2 folds"):
        rt.folds_of(1, None)
    X = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]])
    y = np.array([0, 0, 0, 1, 1, 1])
    # a loss that counts wrong held-out labels: every candidate is perfect, the simplest wins
    name, losses = rt.select_classifier(X, y, lambda lab, mar: float(np.mean(lab != y)))
    assert name == "nearest_medoid" and set(losses) == {"nearest_medoid", "knn", "mlp"}
    # one choice per column of an array-valued loss, from the same fits
    names, _ = rt.select_classifier(X, y, lambda lab, mar: np.array([np.mean(lab != y), 0.0]),
                                    candidates=("knn", "nearest_medoid"))
    assert list(names) == ["knn", "knn"]


def test_routed_errors_fall_back_to_the_global_basis():
    E = np.array([[0.1, 0.9, 0.5], [0.8, 0.2, 0.5], [np.nan, 0.3, 0.4]])     # 2 clusters + global
    out = cr.routed_errors(E, np.array([0, 0, 0]), np.array([0.5, 0.1, 0.9]), margin=0.2)
    np.testing.assert_allclose(out, [0.1, 0.5, 0.4])          # routed; unsure; cluster without basis


# --------------------------------------------------------------- held-out criterion
def test_heldout_criterion_recommends_local_bases_for_distinct_regimes():
    """Three regimes of 3-D subspaces: a held-out simulation is in its regime's span, so local
    bases of N = 3 are exact on it while the global basis needs 9 modes; the routing by the
    regime's angle (second harmonic irrelevant, amplitude irrelevant) is right."""
    S, sims, reg, sim_reg = regimes_data()
    C = S.T @ S
    rng = np.random.default_rng(5)
    theta = sim_reg * 2 * np.pi / 3 + rng.uniform(-0.2, 0.2, sim_reg.size)
    amp = rng.uniform(0, 1, sim_reg.size)
    X, groups = _angle_features(theta, amp)
    table = cr.efficiency_table(C, sims, [1, 2, 3], [1, 3, 6], n_rows=S.shape[0])
    held = cr.heldout_table(C, sims, [1, 2, 3], [1, 3, 6], features=lambda train: (X, groups),
                            folds=rt.folds_of(12, 4))
    table = cr.merge_heldout(table, held)
    row = {(r["k"], r["N"]): r for r in table}
    assert row[(3, 3)]["heldout_mean_local"] < 1e-6 < 0.1 < row[(3, 3)]["heldout_mean_global"]
    assert row[(3, 3)]["heldout_fallback"] == 0.0
    rec = cr.recommend_heldout(table, error_target=1e-3)
    assert rec["local_pays_off"] and (rec["choice"]["k"], rec["choice"]["N"]) == (3, 3)
    assert rec["global_N"] is None and "local bases pay off" in rec["message"]


def test_heldout_criterion_recommends_the_global_basis_for_a_continuum():
    """A hot spot moving along a circle: small clusters fit their training simulations exactly
    (the training criterion says local), but a held-out position is between them and the
    global basis represents it as well: the held-out criterion says global."""
    S, sims, phis, logS = hot_spot_data()
    C = S.T @ S
    X = np.column_stack([np.cos(phis), np.sin(phis), np.cos(2 * phis), np.sin(2 * phis), logS])
    groups = [rt.FeatureGroup("phi:h1", (0, 1), "phi"), rt.FeatureGroup("phi:h2", (2, 3), "phi"),
              rt.FeatureGroup("logS", (4,), "logS")]
    ks, Ns = [1, 2, 3, 4], [2, 4, 6]
    table = cr.efficiency_table(C, sims, ks, Ns, n_rows=S.shape[0])
    train_rec = cr.recommend(table, 0.1, metric="mean")
    assert train_rec["local_pays_off"]                          # the training criterion is fooled
    held = cr.heldout_table(C, sims, ks, Ns, features=lambda train: (X, groups), folds=rt.folds_of(12, 4),
                            classifier="nearest_medoid")
    table = cr.merge_heldout(table, held)
    rec = cr.recommend_heldout(table)
    assert not rec["local_pays_off"] and rec["choice"]["k"] == 1
    row = {(r["k"], r["N"]): r for r in table}
    assert row[(4, 6)]["mean_local"] < 1e-6 < 0.1 < row[(4, 6)]["heldout_mean_local"]
    with pytest.raises(DdromError, match="no held-out errors"):
        cr.recommend_heldout(cr.efficiency_table(C, sims, [1], [2], n_rows=S.shape[0]))


def test_basis_errors_match_explicit_projections():
    S, sims, _, _ = regimes_data(seed=3)
    C = S.T @ S
    _, groups = cl.simulation_groups(sims)
    train, held = np.array([0, 1, 2, 5, 6, 9]), np.array([3, 10])
    labels = np.array([0, 0, 0, 1, 1, 1])
    E = cr.basis_errors(C, groups, train, held, labels, [1, 2], 2)
    for b, members in enumerate([train[:3], train[3:], train]):
        cols = np.concatenate([groups[a] for a in members])
        U, sv, _ = np.linalg.svd(S[:, cols], full_matrices=False)
        for j, N in enumerate([1, 2]):
            for i, a in enumerate(held):
                Sa = S[:, groups[a]]
                r = Sa - U[:, :N] @ (U[:, :N].T @ Sa)
                assert E[i, b, j] == pytest.approx(np.linalg.norm(r) / np.linalg.norm(Sa), rel=1e-6, abs=1e-9)


def test_heldout_criterion_without_features_runs_the_global_basis():
    """No feature tells the simulations apart (e.g. only a file parameter and one temperature):
    the classifier is always unsure and every held-out simulation takes the global basis."""
    S, sims, _, _ = regimes_data()
    C = S.T @ S
    rows = cr.heldout_table(C, sims, [1, 3], [3], features=lambda train: (np.zeros((12, 0)), []),
                            folds=rt.folds_of(12, 4))
    glob, loc = rows
    assert loc["heldout_fallback"] == 1.0 and loc["heldout_mean"] == glob["heldout_mean"]
