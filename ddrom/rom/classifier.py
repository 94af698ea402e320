"""Which local basis runs a new input: features, their learned relevance, a classifier, a fallback.

A ROM with local bases (``[rom] n_clusters > 1``) keeps, in its ROM file (group
``/classifier``, JSON metadata and numpy arrays only, no pickles, through
:mod:`ddrom.rom.model`), everything needed to route a new parameter point online:

* **features** (:class:`InputFeatures`) of a point: each number parameter as declared
  (``scale``: ``linear`` its value, ``log`` its logarithm, ``periodic`` the harmonics
  ``cos(2 pi h x / period), sin(2 pi h x / period)``, h = 1..:data:`PERIODIC_HARMONICS`,
  so that 0 and the period coincide and a regime of half the period is representable),
  and, when the training temperatures differ between simulations, the temperature the
  ROM reads anyway (``T - T_ref`` at its sample points and temperature sensors,
  :meth:`~ddrom.rom.inputs.PointTemperature.with_sensors`, at the training's times): its
  coefficients on the principal directions of the training simulations' values there, so
  that a new temperature field is routed by what it looks like, not by a file name;
* their **relevance**, learned from how much they move the simulations' subspaces
  (:func:`ddrom.reduction.routing.fit_relevance` on the Grassmann dissimilarities);
* a **classifier** on the relevance-scaled features: nearest medoid, k nearest
  neighbours or a neural network (:mod:`ddrom.reduction.routing`), chosen (``[rom]
  classifier = "auto"``) by leave-one-out over the training simulations: the one whose
  held-out simulations, routed by it, are best represented by the basis they reach;
* the **margin** below which the classifier is deemed unsure (``[rom] classifier_margin``):
  the run then takes the global basis.

:func:`train_router` builds it offline, :func:`load_router` reads it back identically on
every rank, :meth:`Router.route` decides for one online run (:class:`RoutingDecision`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ddrom.parallel import CollectiveError, DdromError, as_mpi, raise_collective

#: Harmonics of a periodic parameter seen by the classifier (each with its own relevance):
#: the second one represents regimes of half the period (a load direction theta and
#: theta + pi that give the same subspace).
PERIODIC_HARMONICS = 2

#: Principal directions of the training temperatures kept as features: singular values
#: above this fraction of the largest (at most n_simulations - 1).
TEMPERATURE_RTOL = 1e-3


@dataclass
class ClassifierOptions:
    """Options of the local-basis classifier (the single source of their defaults: the case
    file's ``[rom] classifier*`` keys take theirs from here).

    method : ``"auto"`` (chosen by leave-one-out over the training simulations among
        ``nearest_medoid``, ``knn``, ``mlp``) or one of them.
    margin : the classifier is unsure below this margin (``p_1 - p_2`` of its class
        probabilities; for the nearest medoid ``(d_2 - d_1) / (d_2 + d_1)``): the run takes
        the global basis. 0: always the classifier's choice. 0.2 means, for the nearest
        medoid, that the nearest medoid is at most 2/3 as far as the second one.
    seed : seed of the neural network's initialization (deterministic fits).
    """

    method: str = "auto"
    margin: float = 0.2
    seed: int = 0


CLASSIFIER_METHODS = ("auto", "nearest_medoid", "knn", "mlp")


# ======================================================================== features
class InputFeatures:
    """The feature vector of a parameter point (see the module doc).

    ``parameters``: name -> the ROM file's parameter description (``kind``, ``scale``,
    ``period``); file parameters contribute nothing themselves (their content does, through
    the temperature). ``temperature``: ``(times, T_ref, mean, modes)`` of the temperature
    block, or None.
    """

    def __init__(self, parameters: Mapping[str, Mapping[str, Any]], times: Sequence[float] | None = None,
                 T_ref: float = 0.0, mean: np.ndarray | None = None, modes: np.ndarray | None = None):
        from ddrom.reduction.routing import FeatureGroup

        self.parameters = {n: dict(p) for n, p in parameters.items()}
        self.times = None if times is None else [float(t) for t in times]
        self.T_ref = float(T_ref)
        self.mean = None if mean is None else np.asarray(mean, dtype=float)
        self.modes = None if modes is None else np.asarray(modes, dtype=float)
        groups, col = [], 0
        for n, p in self.parameters.items():
            if p.get("kind", "number") != "number":
                continue
            if p.get("scale", "linear") == "periodic":
                for h in range(1, PERIODIC_HARMONICS + 1):
                    groups.append(FeatureGroup(f"{n}:h{h}", (col, col + 1), n))
                    col += 2
            else:
                groups.append(FeatureGroup(n, (col,), n))
                col += 1
        self.n_parameter_features = col
        if self.modes is not None and self.modes.shape[1]:
            groups.append(FeatureGroup("temperature", tuple(range(col, col + self.modes.shape[1])), "temperature"))
            col += self.modes.shape[1]
        self.groups = groups
        self.n_features = col

    @property
    def uses_temperature(self) -> bool:
        return self.modes is not None and self.modes.shape[1] > 0

    def parameter_vector(self, params: Mapping[str, Any]) -> np.ndarray:
        """The parameter features of a point (:data:`ddrom.hf.problem.PARAMETER_SCALES`)."""
        out = []
        for n, p in self.parameters.items():
            if p.get("kind", "number") != "number":
                continue
            try:
                v = float(params[n])
            except KeyError:
                raise DdromError(f"classifier: parameter {n!r} has no value") from None
            scale = p.get("scale", "linear")
            if scale == "periodic":
                w = 2.0 * math.pi * v / float(p["period"])
                for h in range(1, PERIODIC_HARMONICS + 1):
                    out += [math.cos(h * w), math.sin(h * w)]
            elif scale == "log":
                if v <= 0:
                    raise DdromError(f"classifier: parameter {n!r} = {v:g} has scale \"log\" and must be > 0")
                out.append(math.log(v))
            else:
                out.append(v)
        return np.asarray(out, dtype=float)

    def vector(self, params: Mapping[str, Any], temperature: np.ndarray | None = None) -> np.ndarray:
        """All features: the parameters', then the temperature coefficients
        ``modes^T (v - mean)`` of ``temperature`` (:func:`temperature_vector`)."""
        x = self.parameter_vector(params)
        if self.uses_temperature:
            if temperature is None:
                raise DdromError("classifier: the temperature features need the point's temperature")
            v = np.asarray(temperature, dtype=float).ravel()
            if v.size != self.mean.size:
                raise DdromError(f"classifier: temperature vector of {v.size} values, trained on {self.mean.size}")
            x = np.concatenate([x, self.modes.T @ (v - self.mean)])
        return x

    @classmethod
    def fit(cls, parameters: Mapping[str, Mapping[str, Any]], temperatures: np.ndarray | None = None,
            times: Sequence[float] | None = None, T_ref: float = 0.0) -> "InputFeatures":
        """The feature map of training simulations whose temperature vectors are the rows of
        ``temperatures`` (n, L) (None: no temperature features). The temperature block is the
        principal directions of the centred rows with ``sigma_i > TEMPERATURE_RTOL sigma_1``
        (at most n - 1; none when the rows are all equal)."""
        if temperatures is None or len(temperatures) < 2:
            return cls(parameters)
        V = np.asarray(temperatures, dtype=float)
        mean = V.mean(axis=0)
        _, sv, Vt = np.linalg.svd(V - mean, full_matrices=False)
        scale = max(float(np.abs(V).max()), 1e-300)
        if sv.size == 0 or sv[0] <= 1e-12 * scale * math.sqrt(V.size):
            return cls(parameters)                # the same temperature in every simulation
        r = min(int(np.count_nonzero(sv > TEMPERATURE_RTOL * sv[0])), V.shape[0] - 1)
        modes = Vt[:r].T
        # sign: largest entry positive (independent of LAPACK's choice)
        idx = np.argmax(np.abs(modes), axis=0)
        modes = modes * np.sign(modes[idx, np.arange(r)])
        return cls(parameters, times, T_ref, mean, modes)

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        meta = {"parameters": self.parameters, "harmonics": PERIODIC_HARMONICS,
                "groups": [{"name": g.name, "columns": list(g.columns), "source": g.source} for g in self.groups],
                "temperature": None if not self.uses_temperature else
                {"times": self.times, "T_ref": self.T_ref, "n_modes": int(self.modes.shape[1])}}
        arrays = {} if not self.uses_temperature else {"temperature_mean": self.mean,
                                                       "temperature_modes": self.modes}
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict, arrays: dict) -> "InputFeatures":
        t = meta.get("temperature")
        if t is None:
            return cls(meta["parameters"])
        return cls(meta["parameters"], t["times"], t["T_ref"], arrays["temperature_mean"], arrays["temperature_modes"])


def temperature_vector(temperature: Any, times: Sequence[float], T_ref: float) -> np.ndarray:
    """``T - T_ref`` at the rows a :class:`~ddrom.rom.inputs.PointTemperature` is bound to (sample
    points and sensors), at ``times``, concatenated (collective for a temperature file)."""
    return np.concatenate([np.asarray(temperature.with_sensors(float(t)), dtype=float) - T_ref for t in times])


def training_temperature_vectors(problem: Any, params: Sequence[Mapping[str, Any]], probe: Any, times: Sequence[float],
                                 comm: Any) -> np.ndarray:
    """The temperature vectors (:func:`temperature_vector`) of training points at the rows of
    ``probe`` (a reduced model, or :func:`temperature_probe`), (n, L). Collective."""
    from ddrom.rom.inputs import PointTemperature

    out = []
    for p in params:
        pt = PointTemperature(problem.temperature, p, comm)
        try:
            pt.bind(probe)
            out.append(temperature_vector(pt, times, float(problem.temperature.T_ref)))
        finally:
            pt.close()
    return np.array(out)


@dataclass
class _Probe:
    """Rows where a :class:`~ddrom.rom.inputs.PointTemperature` reads the temperature without a
    reduced model: no sample point, ``temperature_data`` holding sensors only."""

    xyz: np.ndarray
    weights: np.ndarray
    point_nodes: np.ndarray
    point_shape: np.ndarray
    point_node_xyz: np.ndarray
    temperature_data: Any


def temperature_probe(solver: Any, n_sensors: int) -> _Probe:
    """Sensors spread over the part (farthest-point sampling), where the a priori criterion
    reads the training temperatures for its features (the ROM uses its own points). Collective."""
    from ddrom.reduction.coverage import farthest_points
    from ddrom.rom.model import TemperatureData
    from ddrom.rom.operators import natural_point_ids, point_coordinates, point_interpolation

    dm = solver.dm
    gids, radius = farthest_points(solver.xq.reshape(-1, 3), natural_point_ids(dm), n_sensors, solver.comm)
    nodes, shape, node_xyz = point_interpolation(dm, gids)
    td = TemperatureData(basis=np.zeros((len(gids), 0)), sigma=np.zeros(0), T_ref=0.0, sensor_gids=gids,
                         sensor_xyz=point_coordinates(solver, gids), sensor_nodes=nodes, sensor_shape=shape,
                         sensor_node_xyz=node_xyz, covering_radius=float(radius))
    k = nodes.shape[1]
    return _Probe(np.zeros((0, 3)), np.zeros(0), np.zeros((0, k), dtype=nodes.dtype), np.zeros((0, k)),
                  np.zeros((0, k, 3)), td)


# ========================================================================== router
@dataclass
class RoutingDecision:
    """The basis one online run takes.

    ``cluster``: the local model run (None: the global one); ``predicted``: the classifier's
    choice; ``margin``; ``fallback``: why the global basis was taken instead (``"margin"``,
    ``"features"``: the features could not be computed, ``"indicator"``: the local ROM's
    indicator exceeded its tolerance, ``"divergence"``: its reduced Newton diverged), or
    None; ``reason``: in words.
    """

    cluster: int | None
    predicted: int | None
    margin: float
    classifier: str
    threshold: float
    fallback: str | None = None
    reason: str = ""
    indicator: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"cluster": self.cluster, "predicted": self.predicted, "margin": self.margin,
                "classifier": self.classifier, "threshold": self.threshold, "fallback": self.fallback,
                "reason": self.reason, **({"indicator": self.indicator} if self.indicator else {})}


class Router:
    """Routes an online run to a local basis (module doc); identical on every rank."""

    def __init__(self, features: InputFeatures, multipliers: np.ndarray, classifier: Any, threshold: float,
                 meta: dict | None = None):
        self.features = features
        self.multipliers = np.asarray(multipliers, dtype=float)
        self.classifier = classifier
        self.threshold = float(threshold)
        self.meta = meta or {}

    @property
    def method(self) -> str:
        return getattr(self.classifier, "name", "?")

    def decide(self, x: np.ndarray) -> RoutingDecision:
        """The decision for raw features ``x`` (:meth:`InputFeatures.vector`)."""
        lab, mar = self.classifier.predict_margin((np.asarray(x, dtype=float) * self.multipliers)[None, :])
        c, m = int(lab[0]), float(mar[0])
        if m < self.threshold:
            return RoutingDecision(None, c, m, self.method, self.threshold, "margin",
                                   f"classifier unsure: margin {m:.3g} < {self.threshold:g} (cluster {c} "
                                   "predicted); the global basis runs")
        return RoutingDecision(c, c, m, self.method, self.threshold)

    def route(self, inputs: Any, model: Any) -> RoutingDecision:
        """The decision for an online run (``inputs``: :class:`~ddrom.rom.inputs.OnlineInputs`;
        ``model``: the global reduced model, whose points and sensors the temperature features
        are read at). Collective when the temperature is read from a file."""
        f = self.features
        T = None
        if f.uses_temperature:
            try:
                inputs.temperature.bind(model)
                T = temperature_vector(inputs.temperature, f.times, f.T_ref)
            except (CollectiveError, DdromError) as exc:
                return RoutingDecision(None, None, float("nan"), self.method, self.threshold, "features",
                                       f"temperature features unavailable ({exc}); the global basis runs")
        return self.decide(f.vector(inputs.params, T))


def train_router(problem: Any, model: Any, params: Sequence[Mapping[str, Any]], C: np.ndarray,
                 groups: Sequence[np.ndarray], labels: Sequence[int], D: np.ndarray, n_modes: Sequence[int],
                 n_global: int, options: ClassifierOptions, comm: Any) -> tuple[dict, dict[str, np.ndarray]]:
    """Fit the router of local bases (module doc); returns the ROM file's ``(meta, arrays)``.

    ``params``: the training points (in the order of ``groups``, ``labels``, ``D``); ``C``:
    the replicated Gram matrix of their displacement snapshots (``groups[a]``: the columns of
    simulation a); ``labels``: their clusters; ``D``: their dissimilarities; ``n_modes``: the
    local models' numbers of modes, ``n_global`` the global model's (the bases the
    classifier choice is scored with). Collective: the temperatures are read on every rank
    (files), the fits are made on rank 0 and broadcast (a neural network's fit is not
    bitwise reproducible across processes).
    """
    from ddrom.reduction.clustering import SV_RTOL
    from ddrom.reduction.criterion import choose_classifier, leave_one_out_errors
    from ddrom.reduction.routing import fit_relevance, make_classifier

    c = as_mpi(comm)
    times = [float(t) for t in np.asarray(model.times)[1:]]
    T_ref = float(problem.temperature.T_ref)
    V = training_temperature_vectors(problem, params, model, times, comm) if model.temperature_data is not None \
        else None
    out, msg = None, None
    if c.rank == 0:
        try:
            feats = InputFeatures.fit(model.parameters, V, times, T_ref)
            X = np.array([feats.vector(p, None if V is None else V[i]) for i, p in enumerate(params)]) \
                .reshape(len(params), feats.n_features)
            rel = fit_relevance(X, feats.groups, D) if feats.groups else None
            Xw = rel.transform(X) if rel is not None else X
            y = np.asarray(labels, dtype=int)
            k = int(y.max()) + 1
            Ns = sorted(set(int(n) for n in n_modes) | {int(n_global)})
            E = leave_one_out_errors(C, groups, np.arange(len(params)), y, Ns, k, SV_RTOL)
            # each basis at its own size: the local models' modes, the global model's
            Ek = np.stack([E[:, b, Ns.index(int(n_modes[b]) if b < k else int(n_global))] for b in range(k + 1)],
                          axis=1)
            name, losses = choose_classifier(Xw, y, Ek, options.margin, D=D, method=options.method, seed=options.seed)
            clf = make_classifier(name, options.seed).fit(Xw, y, D)
            cmeta, carrays = clf.state()
            fmeta, farrays = feats.state()
            meta = {"version": 2, "method": name, "requested": options.method, "margin": options.margin,
                    "seed": options.seed, "cv_loss": losses, "classifier": cmeta, "features": fmeta,
                    "relevance": {} if rel is None else {
                        "by_source": rel.by_source(),
                        "groups": {g.name: float(s) for g, s in zip(rel.groups, rel.shares)},
                        "r2": rel.r2, "uniform": rel.uniform}}
            arrays = {"features": X, "multipliers": np.ones(0) if rel is None else rel.multipliers,
                      **farrays, **{f"clf_{k_}": v for k_, v in carrays.items()}}
            out = (meta, arrays)
        except DdromError as exc:
            msg = f"local-basis classifier: {exc}"
        except Exception as exc:  # noqa: BLE001 - the other ranks wait for rank 0: one message, no hang
            msg = f"local-basis classifier: {type(exc).__name__}: {exc}"
    raise_collective(c, msg)
    return c.bcast(out, root=0)


def router_from_data(data: dict) -> Router:
    """A :class:`Router` from :func:`ddrom.rom.model.load_classifier`'s data (also of ROM files
    written before the classifier kept its arrays: nearest medoid or k-NN refitted from the
    training parameters, standardized, never unsure)."""
    from ddrom.reduction.routing import KNearest, NearestMedoid, classifier_from_state

    arrays = data.get("arrays", {})
    if data.get("version", 1) >= 2:
        feats = InputFeatures.from_state(data["features"], arrays)
        clf = classifier_from_state(data["classifier"], {k[4:]: v for k, v in arrays.items() if k.startswith("clf_")})
        mult = arrays["multipliers"] if arrays["multipliers"].size else np.ones(feats.n_features)
        return Router(feats, mult, clf, data["margin"], data)
    # ROM files before schema 5: the numeric parameters, scaled by their standard deviation
    params = data["params"]
    names = [n for n, v in params[0].items() if not isinstance(v, str)]
    feats = InputFeatures({n: {"kind": "number"} for n in names})
    P = np.array([[p[n] for n in names] for p in params], dtype=float)
    s = P.std(axis=0)
    mult = 1.0 / np.where(s > 0, s, 1.0)
    y = np.asarray(data["labels"], dtype=int)
    if data.get("method") == "knn":
        clf = KNearest(min(3, len(P))).fit(P * mult, y)
    else:
        clf = NearestMedoid()
        clf.classes_ = y[np.asarray(data["medoids"], dtype=int)]
        clf.centers_ = (P * mult)[np.asarray(data["medoids"], dtype=int)]
    return Router(feats, mult, clf, 0.0, data)


def load_router(path: str | os.PathLike, comm: Any) -> Router | None:
    """The router of a ROM file's local bases (None without local bases); the same on every rank."""
    from ddrom.rom.model import load_classifier

    data = load_classifier(path, comm)
    return None if not data else router_from_data(data)
