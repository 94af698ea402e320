"""Routing a new input to a local basis: learned feature relevance and classifiers kept as arrays.

Everything here is serial and small (items = training simulations, a few features); it
runs identically on every rank or, where a fit is not bitwise reproducible (the neural
network), on one rank whose result is broadcast by the caller.

Features and their relevance
----------------------------
The features of an item are grouped (:class:`FeatureGroup`): one group per linear or
log-scale parameter, one per harmonic of a periodic parameter, one for the coefficients
of an input field. A group's squared distance between items a and b is
``d_g(a, b)^2 = ||x_a,g - x_b,g||^2 / s_g`` with ``s_g`` its mean over the training
pairs (so every group has mean 1). The relevance of the groups is learned from the
dissimilarity ``D`` of the items' solution subspaces (e.g. the Grassmann distance of the
simulations) by non-negative least squares over the training pairs::

    D_ab^2  ~  c_0 + sum_g w_g d_g(a, b)^2,      c_0, w_g >= 0

A group that does not move the subspaces gets ``w_g = 0``; the classifiers then see the
features scaled by ``sqrt(w_g / s_g)``, so that their Euclidean distance is the fitted
metric ``sum_g w_g d_g^2``. ``w_g`` is also group g's mean share of the fitted ``D^2``
(each ``d_g^2`` has mean 1), reported normalized as its relevance.

Classifiers
-----------
Three, each with ``predict_margin(X) -> (labels, margins)`` and a state made of JSON
metadata and numpy arrays (no pickles: a ROM file stores them as datasets):

* :class:`NearestMedoid`: the class of the nearest medoid; margin
  ``(d_2 - d_1) / (d_2 + d_1)`` with ``d_1 <= d_2`` the two nearest medoid distances
  (``p_1 - p_2`` for probabilities proportional to ``1 / d`` over the two);
* :class:`KNearest`: k nearest neighbours, votes weighted by ``1 / d`` (an exact match
  takes the vote alone); margin ``p_1 - p_2`` of the vote shares;
* :class:`MLP`: a neural network (scikit-learn's ``MLPClassifier``, L-BFGS, ``tanh``,
  fixed seed) whose weights are stored and evaluated here in numpy; margin
  ``p_1 - p_2`` of its output probabilities.

:func:`heldout_predictions` gives the predictions of a classifier for items it was not
fitted on (folds of the training items); :func:`select_classifier` chooses the
candidate whose held-out routing costs least under a loss the caller gives (the
projection error of the held-out simulation onto the basis it is routed to).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ddrom.parallel import DdromError

__all__ = ["FeatureGroup", "Relevance", "group_sq_distances", "fit_relevance", "NearestMedoid", "KNearest",
           "MLP", "CLASSIFIERS", "make_classifier", "classifier_from_state", "folds_of", "heldout_predictions",
           "select_classifier", "class_medoids", "DEFAULT_FOLDS"]


@dataclass(frozen=True)
class FeatureGroup:
    """Columns of the feature matrix that share one relevance weight.

    ``source`` names what they come from (a parameter, or ``"temperature"``); a periodic
    parameter has one group per harmonic (``name`` ``"phi:h1"``, ``"phi:h2"``).
    """

    name: str
    columns: tuple[int, ...]
    source: str


def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, 1)


def group_sq_distances(X: np.ndarray, groups: Sequence[FeatureGroup]) -> np.ndarray:
    """``G[p, g] = ||X[a_p, cols_g] - X[b_p, cols_g]||^2`` over the pairs a < b (``triu`` order)."""
    X = np.asarray(X, dtype=float)
    iu, ju = _pairs(X.shape[0])
    G = np.zeros((iu.size, len(groups)))
    for j, g in enumerate(groups):
        diff = X[iu][:, list(g.columns)] - X[ju][:, list(g.columns)]
        G[:, j] = (diff * diff).sum(axis=1)
    return G


@dataclass
class Relevance:
    """The fitted metric of :func:`fit_relevance` (see the module doc).

    ``weights`` (n_groups,) ``w_g``; ``scales`` ``s_g``; ``multipliers`` (n_features,) the
    column factors ``sqrt(w_g / s_g)``; ``shares`` the weights normalized to sum 1;
    ``intercept`` ``c_0``; ``r2`` the fit's coefficient of determination; ``uniform``:
    the fit found no relevant group (or had no pairs), every group weighs 1.
    """

    groups: list[FeatureGroup]
    weights: np.ndarray
    scales: np.ndarray
    multipliers: np.ndarray
    shares: np.ndarray
    intercept: float = 0.0
    r2: float = float("nan")
    uniform: bool = False

    def by_source(self) -> dict[str, float]:
        """Relevance share per source (a parameter, or ``temperature``), summed over its groups."""
        out: dict[str, float] = {}
        for g, s in zip(self.groups, self.shares):
            out[g.source] = out.get(g.source, 0.0) + float(s)
        return out

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Features scaled by the multipliers: Euclidean distance = the fitted metric."""
        return np.asarray(X, dtype=float) * self.multipliers


def fit_relevance(X: np.ndarray, groups: Sequence[FeatureGroup], D: np.ndarray) -> Relevance:
    """Relevance weights of the feature groups from the items' dissimilarities ``D``.

    Non-negative least squares ``D_ab^2 ~ c_0 + sum_g w_g ||x_a,g - x_b,g||^2 / s_g`` over
    the pairs a < b (module doc). A group constant over the items has ``s_g = 0``: weight
    0. If every weight is 0 (no pair, or no group explains D), every group weighs 1
    (``uniform``).

    Parameters
    ----------
    X : (n, f) features of the n training items
    groups : the column groups (every column in at most one group)
    D : (n, n) symmetric dissimilarities of the items
    """
    from scipy.optimize import nnls

    X = np.asarray(X, dtype=float)
    D = np.asarray(D, dtype=float)
    n, f = X.shape
    if D.shape != (n, n):
        raise DdromError(f"relevance: {n} feature rows but a dissimilarity matrix of shape {D.shape}")
    groups = list(groups)
    G = group_sq_distances(X, groups)
    scales = G.mean(axis=0) if G.shape[0] else np.zeros(len(groups))
    active = scales > 1e-300
    Gn = np.where(active, G / np.where(active, scales, 1.0), 0.0)
    iu, ju = _pairs(n)
    y = D[iu, ju] ** 2
    w = np.zeros(len(groups))
    c0, r2, uniform = 0.0, float("nan"), False
    if y.size and active.any():
        A = np.column_stack([np.ones(y.size), Gn[:, active]])
        sol, _ = nnls(A, y)
        c0, w[active] = float(sol[0]), sol[1:]
        res = y - A @ sol
        tot = float(((y - y.mean()) ** 2).sum())
        r2 = 1.0 - float(res @ res) / tot if tot > 0 else float("nan")
    if not (w > 0).any():
        w = active.astype(float) if active.any() else np.ones(len(groups))
        uniform = True
    mult = np.zeros(f)
    for g, wg, sg in zip(groups, w, scales):
        mult[list(g.columns)] = np.sqrt(wg / sg) if sg > 1e-300 else 0.0
    shares = w / w.sum() if w.sum() > 0 else w
    return Relevance(groups, w, np.asarray(scales, dtype=float), mult, shares, c0, r2, uniform)


# ------------------------------------------------------------------------ classifiers
def _as_features(X: Any, name: str = "features") -> np.ndarray:
    X = np.asarray(X, dtype=float)
    if X.ndim == 1:
        X = X[None, :]
    if X.ndim != 2 or not np.all(np.isfinite(X)):
        raise DdromError(f"{name}: expected a finite (n_items, n_features) array, got shape {X.shape}")
    return X


def _top_two(P: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label of the largest column of P (ties: the first, i.e. the smallest class) and p_1 - p_2."""
    idx = np.argmax(P, axis=1)
    if P.shape[1] < 2:
        return classes[idx], np.ones(P.shape[0])
    s = np.sort(P, axis=1)
    return classes[idx], s[:, -1] - s[:, -2]


def class_medoids(y: np.ndarray, D: np.ndarray | None, X: np.ndarray) -> dict[int, int]:
    """Index of each class's medoid: the member minimizing its summed dissimilarity to the
    class's other members (``D``), or without ``D`` the member nearest the class mean
    (ties: the smallest index)."""
    out = {}
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        if D is not None:
            cost = np.asarray(D)[np.ix_(members, members)].sum(axis=1)
        else:
            cost = ((X[members] - X[members].mean(axis=0)) ** 2).sum(axis=1)
        out[int(c)] = int(members[int(np.argmin(cost))])
    return out


class NearestMedoid:
    """The class of the nearest medoid (features already relevance-scaled). See the module doc."""

    name = "nearest_medoid"

    def fit(self, X: Any, y: Any, D: np.ndarray | None = None) -> "NearestMedoid":
        """``D``: the items' dissimilarities, for the medoids (:func:`class_medoids`)."""
        X, y = _as_features(X, "training features"), np.asarray(y, dtype=int)
        med = class_medoids(y, D, X)
        self.classes_ = np.array(sorted(med), dtype=int)
        self.centers_ = X[[med[c] for c in self.classes_]]
        self.medoids_ = np.array([med[c] for c in self.classes_], dtype=int)
        return self

    def predict_margin(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        X = _as_features(X)
        d = np.sqrt(((X[:, None, :] - self.centers_[None, :, :]) ** 2).sum(axis=-1))
        lab = self.classes_[np.argmin(d, axis=1)]
        if d.shape[1] < 2:
            return lab, np.ones(len(X))
        s = np.sort(d, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            m = np.where(s[:, 1] + s[:, 0] > 0, (s[:, 1] - s[:, 0]) / (s[:, 1] + s[:, 0]), 0.0)
        return lab, m

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        return {"name": self.name}, {"classes": self.classes_, "centers": self.centers_}

    @classmethod
    def from_state(cls, meta: dict, arrays: dict) -> "NearestMedoid":
        self = cls()
        self.classes_ = np.asarray(arrays["classes"], dtype=int)
        self.centers_ = np.asarray(arrays["centers"], dtype=float)
        return self


class KNearest:
    """k nearest neighbours with votes weighted by ``1 / d`` (scikit-learn's
    ``KNeighborsClassifier(weights="distance")``, evaluated here in numpy). See the module doc."""

    name = "knn"

    def __init__(self, n_neighbors: int = 3):
        self.n_neighbors = int(n_neighbors)

    def fit(self, X: Any, y: Any, D: np.ndarray | None = None) -> "KNearest":
        self.X_ = _as_features(X, "training features")
        self.y_ = np.asarray(y, dtype=int)
        self.classes_ = np.unique(self.y_)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        X = _as_features(X)
        d = np.sqrt(((X[:, None, :] - self.X_[None, :, :]) ** 2).sum(axis=-1))
        k = min(self.n_neighbors, self.X_.shape[0])
        nn = np.argsort(d, axis=1, kind="stable")[:, :k]
        dn = np.take_along_axis(d, nn, axis=1)
        with np.errstate(divide="ignore"):
            w = 1.0 / dn
        exact = np.isinf(w)
        # an exact match takes the vote alone (as scikit-learn)
        w = np.where(exact.any(axis=1, keepdims=True), exact.astype(float), w)
        P = np.zeros((len(X), self.classes_.size))
        cls = np.searchsorted(self.classes_, self.y_[nn])
        for j in range(k):
            np.add.at(P, (np.arange(len(X)), cls[:, j]), w[:, j])
        return P / P.sum(axis=1, keepdims=True)

    def predict_margin(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        return _top_two(self.predict_proba(X), self.classes_)

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        return {"name": self.name, "n_neighbors": self.n_neighbors}, {"X": self.X_, "y": self.y_}

    @classmethod
    def from_state(cls, meta: dict, arrays: dict) -> "KNearest":
        return cls(int(meta["n_neighbors"])).fit(arrays["X"], arrays["y"])


class MLP:
    """A neural network classifier (the ROM-net of the local-basis method): scikit-learn's
    ``MLPClassifier`` (L-BFGS, ``tanh`` hidden layers, L2 penalty ``alpha``, seed ``seed``)
    fitted on the relevance-scaled features, kept as its weight arrays and evaluated in
    numpy::

        h_0 = x / r,  h_l = tanh(h_{l-1} W_l + b_l),  z = h_L W_out + b_out
        p = softmax(z)   (two classes: p_1 = 1 / (1 + exp(-z)), p_0 = 1 - p_1)

    with ``r`` the RMS of the training features (one number: the relevance scaling of the
    features, i.e. their relative weights, is kept; the network only sees them at unit size).
    """

    name = "mlp"

    def __init__(self, hidden: Sequence[int] = (16,), alpha: float = 1e-2, seed: int = 0, max_iter: int = 500):
        self.hidden, self.alpha, self.seed, self.max_iter = tuple(int(h) for h in hidden), float(alpha), int(seed), \
            int(max_iter)

    def fit(self, X: Any, y: Any, D: np.ndarray | None = None) -> "MLP":
        X, y = _as_features(X, "training features"), np.asarray(y, dtype=int)
        self.classes_ = np.unique(y)
        rms = float(np.sqrt(np.mean((X - X.mean(axis=0)) ** 2))) if X.size else 0.0
        self.input_scale_ = rms if rms > 0 else 1.0
        if self.classes_.size < 2:          # one class: nothing to learn
            self.coefs_, self.intercepts_ = [], []
            return self
        try:
            from sklearn.exceptions import ConvergenceWarning
            from sklearn.neural_network import MLPClassifier
        except ImportError as exc:  # pragma: no cover - a dependency of ddrom
            raise DdromError("the neural-network classifier needs scikit-learn: pip install scikit-learn") from exc
        net = MLPClassifier(hidden_layer_sizes=self.hidden, activation="tanh", solver="lbfgs", alpha=self.alpha,
                            max_iter=self.max_iter, random_state=self.seed)
        with warnings.catch_warnings():
            # a few items: L-BFGS reaching max_iter is a fit to the noise level, not a failure
            warnings.simplefilter("ignore", ConvergenceWarning)
            net.fit(X / self.input_scale_, y)
        self.coefs_ = [np.asarray(c, dtype=float) for c in net.coefs_]
        self.intercepts_ = [np.asarray(b, dtype=float) for b in net.intercepts_]
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        X = _as_features(X)
        if not self.coefs_:
            return np.ones((len(X), 1))
        h = X / self.input_scale_
        for W, b in zip(self.coefs_[:-1], self.intercepts_[:-1]):
            h = np.tanh(h @ W + b)
        z = h @ self.coefs_[-1] + self.intercepts_[-1]
        if z.shape[1] == 1:
            p = 1.0 / (1.0 + np.exp(-np.clip(z[:, 0], -500, 500)))
            return np.column_stack([1.0 - p, p])
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict_margin(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        return _top_two(self.predict_proba(X), self.classes_)

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        arrays = {"classes": self.classes_, "input_scale": np.array([self.input_scale_])}
        for i, (W, b) in enumerate(zip(self.coefs_, self.intercepts_)):
            arrays[f"W{i}"], arrays[f"b{i}"] = W, b
        return {"name": self.name, "hidden": list(self.hidden), "alpha": self.alpha, "seed": self.seed,
                "n_layers": len(self.coefs_), "activation": "tanh"}, arrays

    @classmethod
    def from_state(cls, meta: dict, arrays: dict) -> "MLP":
        self = cls(meta.get("hidden", (16,)), meta.get("alpha", 1e-2), meta.get("seed", 0))
        self.classes_ = np.asarray(arrays["classes"], dtype=int)
        self.input_scale_ = float(np.asarray(arrays["input_scale"]).ravel()[0])
        n = int(meta.get("n_layers", 0))
        self.coefs_ = [np.asarray(arrays[f"W{i}"], dtype=float) for i in range(n)]
        self.intercepts_ = [np.asarray(arrays[f"b{i}"], dtype=float) for i in range(n)]
        return self


#: name -> factory(seed) of the candidate classifiers, simplest first (ties go to the first)
CLASSIFIERS: dict[str, Callable[[int], Any]] = {
    "nearest_medoid": lambda seed: NearestMedoid(),
    "knn": lambda seed: KNearest(3),
    "mlp": lambda seed: MLP(seed=seed),
}


def make_classifier(name: str, seed: int = 0) -> Any:
    try:
        return CLASSIFIERS[name](seed)
    except KeyError:
        raise DdromError(f"unknown classifier {name!r}; known: {', '.join(CLASSIFIERS)}") from None


def classifier_from_state(meta: dict, arrays: dict) -> Any:
    """A classifier rebuilt from :meth:`state` (what a ROM file keeps)."""
    kinds = {"nearest_medoid": NearestMedoid, "knn": KNearest, "mlp": MLP}
    try:
        return kinds[meta["name"]].from_state(meta, arrays)
    except KeyError:
        raise DdromError(f"unknown stored classifier {meta.get('name')!r}") from None


# ---------------------------------------------------------------- cross-validation
#: Default number of folds of the held-out criterion and check of ``ddrom cluster`` (simulation
#: i held out in fold i mod DEFAULT_FOLDS; fewer simulations: leave-one-out).
DEFAULT_FOLDS = 4


def folds_of(n: int, n_folds: int | None) -> list[np.ndarray]:
    """Held-out items of each fold: item i in fold ``i mod n_folds`` (None or >= n: leave-one-out).

    Interleaved rather than contiguous, so that with items ordered along a parameter the
    held-out ones lie between training ones. Deterministic.
    """
    n_folds = n if n_folds is None or n_folds >= n else int(n_folds)
    if n_folds < 2:
        raise DdromError(f"cross-validation needs at least 2 folds, got {n_folds} (items: {n})")
    return [np.arange(f, n, n_folds) for f in range(n_folds)]


def heldout_predictions(name: str, X: np.ndarray, y: np.ndarray, D: np.ndarray | None = None,
                        folds: Sequence[np.ndarray] | None = None, seed: int = 0
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Label and margin of each item predicted by classifier ``name`` fitted without it.

    ``folds``: held-out items per fit (default leave-one-out). ``D``: the items'
    dissimilarities (the medoids of the nearest-medoid classifier).
    """
    X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=int)
    n = len(y)
    folds = folds if folds is not None else folds_of(n, None)
    lab, mar = np.full(n, -1), np.zeros(n)
    for held in folds:
        train = np.setdiff1d(np.arange(n), held)
        if train.size == 0:
            continue
        clf = make_classifier(name, seed).fit(X[train], y[train], None if D is None else D[np.ix_(train, train)])
        lab[held], mar[held] = clf.predict_margin(X[held])
    return lab, mar


def select_classifier(X: np.ndarray, y: np.ndarray, loss: Callable[[np.ndarray, np.ndarray], Any], *,
                      D: np.ndarray | None = None, candidates: Sequence[str] = tuple(CLASSIFIERS),
                      folds: Sequence[np.ndarray] | None = None, seed: int = 0
                      ) -> tuple[Any, dict[str, Any]]:
    """The candidate whose held-out routing has the smallest ``loss(labels, margins)``.

    Each candidate predicts every item from a fit without it (:func:`heldout_predictions`,
    one set of fits per candidate); ``loss`` turns the held-out labels and margins into a
    number (e.g. the mean projection error of the held-out simulations onto the bases they
    are routed to) or into an array of numbers (one per basis size: then one choice per
    entry, from the same fits). Ties (within a relative 1e-9) go to the earlier candidate
    (the simpler one). Returns the name (or an array of names) and every candidate's loss.
    """
    losses: dict[str, Any] = {}
    for name in candidates:
        lab, mar = heldout_predictions(name, X, y, D, folds, seed)
        losses[name] = np.asarray(loss(lab, mar), dtype=float)
    L = np.array([losses[n] for n in candidates])                    # (n_candidates, ...)
    best = L.min(axis=0)
    first = np.argmax(L <= best * (1 + 1e-9) + 1e-300, axis=0)
    names = np.asarray(candidates, dtype=object)[first]
    if np.ndim(names) == 0:
        return str(names), {n: float(v) for n, v in losses.items()}
    return names, {n: v.tolist() for n, v in losses.items()}
