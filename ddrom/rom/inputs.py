"""What an online run computes, taken from the case at online time and checked against the ROM.

A ROM file records the problem it was trained on (:meth:`ddrom.hf.problem.Problem.describe`).
The online stage runs the problem of the case it is given -- its time grid, its load and
Dirichlet expressions, its temperature (an expression, one nodal field scaled in time, or
a time series of fields), its parameter values -- and the recorded one serves as
provenance and as the default (:meth:`OnlineInputs.from_model`). Every difference between
the two is classified by :func:`compare`:

=================================================  ==========================================
difference                                         verdict
=================================================  ==========================================
mesh (generator/arguments, or file and its hash)   refused
element technology (B-bar / full integration)      refused
material                                           refused
parameter names or kinds                           refused
Dirichlet regions or components                    refused
load kinds or regions (a term added or removed,     refused
a nodal force moved to other nodes)
a load constant in space made space-dependent      refused (the ROM projected its sum only)
time grid (longer span, other steps)               runs; a span beyond the training's is
                                                   reported as time extrapolation
Dirichlet values, load expressions                 runs (other amplitudes on the same regions)
temperature (expression, field, series, T_ref)     runs (a new temperature field)
parameter values outside the training range        runs, flagged as extrapolation
=================================================  ==========================================

A refusal is one :class:`~ddrom.parallel.CollectiveError` naming every refused difference.
ROM files older than schema 4 record no regions: they run only the expressions they store
(a case whose expressions differ is refused, naming them).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ddrom.expressions import Expression
from ddrom.parallel import CollectiveError, DdromError

SPACE_TIME = ("x", "y", "z", "t")


def load_expressions(problem: Any) -> dict[str, Expression]:
    """``source -> Expression`` of every scalar load term of a Problem (``loads.pressure[0].value``,
    ``loads.traction[1].vector[2]``, ``loads.nodal[0].force_per_node[1]``, ``loads.body_force.vector[0]``,
    ``loads.centrifugal.omega``: :meth:`~ddrom.hf.problem.LoadSpec.sources`)."""
    return {src: e for L in problem.loads for src, e in zip(L.sources(), L.values)}


def _space_dependent(expr: Expression) -> bool:
    return bool(set(expr.used) & {"x", "y", "z"})


@dataclass
class Comparison:
    """The outcome of :func:`compare`: refused differences and the ones that run (notes)."""

    refused: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)

    def raise_if_refused(self, rom: str, case: str) -> None:
        if self.refused:
            lines = "\n".join(f"  - {r}" for r in self.refused)
            raise CollectiveError(f"{rom} cannot run the problem of {case}: {len(self.refused)} difference(s) "
                                  f"the ROM cannot represent (rebuild it with `ddrom offline`):\n{lines}")


def compare(model: Any, problem: Any) -> Comparison:
    """Classify the differences between the problem a ROM was trained on and ``problem``."""
    out = Comparison()
    trained = model.problem
    desc = problem.describe()
    if trained is None:
        return _compare_old(model, problem, desc, out)
    if trained.get("mesh") != desc.get("mesh"):
        out.refused.append(f"mesh: the ROM was built on {_mesh_text(trained.get('mesh'))}, the case has "
                           f"{_mesh_text(desc.get('mesh'))}")
    if trained.get("element_technology") != desc["element_technology"]:
        out.refused.append(f"element technology: ROM {trained.get('element_technology')!r}, case "
                           f"{desc['element_technology']!r}")
    if _canon(trained.get("material")) != _canon(desc["material"]):
        keys = sorted(k for k in set(trained.get("material", {})) | set(desc["material"])
                      if _canon(trained.get("material", {}).get(k)) != _canon(desc["material"].get(k)))
        out.refused.append(f"material: differs in {keys}")
    tp = {n: p.get("kind", "number") for n, p in trained.get("parameters", {}).items()}
    cp = {n: p.get("kind", "number") for n, p in desc["parameters"].items()}
    if tp != cp:
        out.refused.append(f"parameters: the ROM takes {_fmt_params(tp)}, the case declares {_fmt_params(cp)}")
    td = [(d["region"], d["components"]) for d in trained.get("dirichlet", [])]
    cd = [(d["region"], d["components"]) for d in desc["dirichlet"]]
    if td != cd:
        out.refused.append(f"Dirichlet conditions (region, components): ROM {td}, case {cd}")
    elif [d["value"] for d in trained["dirichlet"]] != [d["value"] for d in desc["dirichlet"]]:
        out.runs.append("Dirichlet values differ from the training's")
    tl = [(L["key"], L["kind"], L["region"]) for L in trained.get("loads", [])]
    cl = [(L["key"], L["kind"], L["region"]) for L in desc["loads"]]
    if tl != cl:
        out.refused.append(f"loads (name, kind, region): ROM {tl}, case {cl}")
    else:
        for L in desc["loads"]:
            if L["kind"] == "centrifugal":
                old = next(x for x in trained["loads"] if x["key"] == L["key"])
                if [old["density"], old["axis"], old["center"]] != [L["density"], L["axis"], L["center"]]:
                    out.refused.append(f"{L['key']}: density, axis or center differ from the training's")
        constant = {t.source for t in model.loads if t.xyz is None}
        for src, expr in load_expressions(problem).items():
            if src in constant and _space_dependent(expr):
                out.refused.append(f"{src} = {expr.text!r} depends on x, y, z; the ROM was built with an "
                                   "expression constant in space and projected only its sum")
        if [L["values"] for L in trained["loads"]] != [L["values"] for L in desc["loads"]]:
            out.runs.append("load expressions differ from the training's (same regions)")
    tt, ct = trained.get("temperature", {}), desc["temperature"]
    if _canon(tt) != _canon(ct):
        out.runs.append(f"temperature: {_temp_text(ct)} (trained with {_temp_text(tt)})")
    if ct["kind"] != "expression" and model.point_nodes is None:
        out.refused.append("temperature from files: the ROM file has no nodes of its sample points")
    return out


def _compare_old(model: Any, problem: Any, desc: dict, out: Comparison) -> Comparison:
    """Schema < 4: no regions recorded; only the stored expressions can run."""
    why = "this ROM file (schema < 4) records no regions and runs only its stored expressions"
    if _canon(model.material) != _canon(desc["material"]):
        out.refused.append("material differs from the ROM's")
    if set(model.parameters) != set(desc["parameters"]):
        out.refused.append(f"parameters: the ROM takes {sorted(model.parameters)}, the case declares "
                           f"{sorted(desc['parameters'])}")
    dirichlet = [d["value"] for d in desc["dirichlet"] for _ in d["components"]]
    if dirichlet != list(model.dirichlet):
        out.refused.append(f"Dirichlet values differ ({why})")
    exprs = load_expressions(problem)
    if sorted(e.text for e in exprs.values()) != sorted(L.expression for L in model.loads):
        out.refused.append(f"load expressions differ ({why})")
    ct = desc["temperature"]
    if ct["kind"] != "expression" or ct["expression"] != model.temperature:
        out.refused.append(f"temperature differs ({why})")
    return out


def _canon(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _mesh_text(m: Any) -> str:
    if not m:
        return "an unrecorded mesh"
    if "generator" in m:
        return f"generator {m['generator']} {m.get('args')} (regions {sorted(m.get('regions', {}))})"
    return f"file {m.get('file')} (sha256 {str(m.get('sha256'))[:12]}..., regions {sorted(m.get('regions', {}))})"


def _fmt_params(p: Mapping[str, str]) -> str:
    return ", ".join(f"{n} ({k})" for n, k in p.items()) or "none"


def _temp_text(t: Mapping[str, Any]) -> str:
    if t.get("kind") == "expression":
        return f"expression {t.get('expression')!r}"
    return f"{t.get('kind')} {t.get('source')!r} (field {t.get('field')!r})"


# ===================================================================== temperature
class PointTemperature:
    """The temperature at a model's sample points, ``T(t)`` -> (K,), for one parameter point
    (also at its temperature sensors and its monitor points).

    An expression is evaluated at the points' coordinates. A field read from files is
    interpolated from the nodes of each point's cell with the shape-function values the
    ROM file keeps (:attr:`~ddrom.rom.model.ReducedModel.point_nodes`): only those nodes
    are read (:class:`~ddrom.io.fields.SampledField`; collective, rank 0 reads).
    """

    def __init__(self, spec: Any, params: Mapping[str, Any], comm: Any = None):
        self.spec, self.comm = spec, comm
        self.values = {k: float(v) for k, v in params.items() if not isinstance(v, str)}
        self.source = None
        self._field = None
        if spec.from_files:
            from ddrom.io.fields import SampledField, probe_field_source

            self.source = spec.source_for(params)
            info = probe_field_source(self.source, spec.field, spec.kind == "series", spec.times, comm)
            self._field = SampledField(info, comm)
        self._env: dict = {}

    def bind(self, model: Any) -> None:
        """Use the sample points (and temperature sensors) of ``model`` (after an enrichment:
        its new points)."""
        td, mon = model.temperature_data, getattr(model, "monitor", None)    # a probe has none
        x = model.xyz if td is None else np.vstack([model.xyz, td.sensor_xyz])
        self._K = len(model.weights)
        self._KS = len(x)
        if mon is not None:
            x = np.vstack([x, mon.xyz])
        self._n = len(x)
        self._env = {"x": x[:, 0], "y": x[:, 1], "z": x[:, 2]}
        self._last = (None, None)
        if self._field is not None:
            if model.point_nodes is None:
                raise CollectiveError("the ROM file has no nodes of its sample points (schema < 4): it "
                                      "cannot read a temperature file")
            nodes, shape, nxyz = model.point_nodes, model.point_shape, model.point_node_xyz
            if td is not None:
                nodes = np.vstack([nodes, td.sensor_nodes])
                shape = np.vstack([shape, td.sensor_shape])
                nxyz = np.concatenate([nxyz, td.sensor_node_xyz])
            if mon is not None:
                nodes = np.vstack([nodes, mon.point_nodes])
                shape = np.vstack([shape, mon.point_shape])
                nxyz = np.concatenate([nxyz, mon.point_node_xyz])
            ids, inv = np.unique(nodes, return_inverse=True)
            xyz = np.zeros((len(ids), 3))
            xyz[inv.ravel()] = nxyz.reshape(-1, 3)
            self._field.select(ids, xyz)
            self._inv = inv.reshape(nodes.shape)
            self._shape = shape

    def _all(self, t: float) -> np.ndarray:
        """T at the sample points, the sensors and the monitor points, (K + S + M,); cached for
        the last t."""
        if self._last[0] == t:
            return self._last[1]
        spec = self.spec
        if self._field is None:
            env = {**self.values, "t": t, **self._env}
            T = np.array(spec.expression.evaluate(env, shape=(self._n,)), dtype=float)
        else:
            try:
                nodal = self._field.at(float(t))
            except DdromError as exc:
                raise CollectiveError(str(exc)) from None
            T = np.einsum("gk,gk->g", self._shape, nodal[self._inv])
            if spec.kind == "field":
                s = 1.0 if spec.scale is None else float(np.asarray(spec.scale.evaluate({**self.values, "t": t})))
                T = spec.T_ref + s * (T - spec.T_ref)
        self._last = (t, T)
        return T

    def __call__(self, t: float) -> np.ndarray:
        """T at the model's sample points, (K,)."""
        return self._all(t)[: self._K]

    def with_sensors(self, t: float) -> np.ndarray:
        """T at the sample points then at the temperature sensors, (K + S,)."""
        return self._all(t)[: self._KS]

    def at_monitors(self, t: float) -> np.ndarray:
        """T at the model's monitor points, (M,) (empty without them)."""
        return self._all(t)[self._KS:]

    @property
    def access(self) -> str:
        """How the field file was read: "rows" (only the needed nodes) or "whole" ("" for an expression)."""
        return self._field.access if self._field is not None else ""

    def close(self) -> None:
        if self._field is not None:
            self._field.close()


# ======================================================================== inputs
@dataclass
class OnlineInputs:
    """Everything an online march needs besides the model (replicated on every rank).

    Attributes
    ----------
    params : the full parameter point (file parameters as paths)
    defaulted : parameter names that took their declared default
    times : (n + 1,) the time grid, ``times[0] = 0``
    dirichlet : one expression per lifting column (condition x component, the model's order)
    loads : ``source -> Expression`` for the model's load terms
    temperature : a :class:`PointTemperature` (bound to the model by the solver)
    notes : differences from the training that run (:func:`compare`), extrapolation flags
    extrapolation : ``{"parameters": [...], "time": {...}}`` (empty when within the training)
    """

    params: dict[str, Any]
    times: np.ndarray
    dirichlet: list[Expression]
    loads: dict[str, Expression]
    temperature: PointTemperature
    defaulted: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extrapolation: dict = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: Any, params: Mapping[str, Any], comm: Any = None,
                   times: np.ndarray | None = None) -> "OnlineInputs":
        """The inputs the ROM was trained with (its stored expressions and time grid), at ``params``;
        a declared default fills a missing parameter."""
        from ddrom.hf.problem import ParameterSpec, TemperatureSpec

        specs = {n: ParameterSpec.from_dict(n, p) for n, p in model.parameters.items()}
        unknown = sorted(set(params) - set(specs))
        if unknown:
            raise DdromError(f"unknown parameter(s) {unknown}; the ROM takes {list(specs)}")
        full, defaulted = {}, []
        for n, spec in specs.items():
            if n in params:
                full[n] = params[n] if spec.kind == "file" else float(params[n])
            elif spec.default is not None:
                full[n], defaulted = spec.default, defaulted + [n]
            else:
                raise DdromError(f"parameter {n!r} has no value and no default")
        names = set(SPACE_TIME) | {n for n, s in specs.items() if s.kind == "number"}
        dirichlet = [Expression(e, names, what=f"dirichlet[{i}]") for i, e in enumerate(model.dirichlet)]
        loads = {(L.source or str(i)): Expression(L.expression, names, what=L.source or L.kind)
                 for i, L in enumerate(model.loads)}
        tp = (model.problem or {}).get("temperature", {})
        if tp.get("kind", "expression") == "expression":
            spec = TemperatureSpec("expression", float(tp.get("T_ref", 20.0)),
                                   expression=Expression(model.temperature, names, what="temperature"))
        else:
            spec = TemperatureSpec(tp["kind"], float(tp["T_ref"]), source=tp["source"], field=tp["field"],
                                   scale=Expression(tp.get("scale", 1.0), names, what="temperature.scale")
                                   if tp["kind"] == "field" else None,
                                   times=None if tp.get("times") is None else tuple(tp["times"]),
                                   folder=tp.get("folder", "."), file_parameters=tuple(n for n, s in specs.items() if s.kind == "file"))
        t = np.asarray(model.times if times is None else times, dtype=float)
        return cls(full, t, dirichlet, loads, PointTemperature(spec, full, comm), defaulted,
                   extrapolation=_extrapolation(model, full, t))


def online_inputs(model: Any, problem: Any, params: Mapping[str, Any], *, comm: Any = None,
                  times: np.ndarray | None = None, allow_defaults: bool = True, rom: str = "ROM file",
                  case: str = "the case") -> OnlineInputs:
    """The inputs of one online run of ``problem`` at ``params`` (collective: same verdict everywhere).

    Raises
    ------
    CollectiveError
        A difference the ROM cannot represent (:func:`compare`), an unknown parameter name, or
        a missing one without a declared default (or with ``allow_defaults`` false).
    """
    cmp = compare(model, problem)
    cmp.raise_if_refused(rom, case)
    try:
        full, defaulted = problem.complete(params, allow_defaults=allow_defaults)
    except DdromError as exc:
        raise CollectiveError(str(exc)) from None
    t = np.asarray(problem.times if times is None else times, dtype=float)
    if len(t) < 2 or t[0] != 0.0 or np.any(np.diff(t) <= 0):
        raise CollectiveError("the online time grid must start at 0 and increase strictly")
    exprs = load_expressions(problem)
    loads = {}
    for i, L in enumerate(model.loads):
        key = L.source
        if not key:          # schema < 4: terms in the case's order (checked by compare)
            key = list(exprs)[i]
        loads[L.source or str(i)] = exprs[key]
    dirichlet = [d.value for d in problem.dirichlet for _ in d.components]
    notes = list(cmp.runs)
    if defaulted:
        notes.append("parameter(s) " + ", ".join(f"{n} = {full[n]}" for n in defaulted) + " took the declared default")
    return OnlineInputs(full, t, dirichlet, loads, PointTemperature(problem.temperature, full, comm), defaulted,
                        notes, _extrapolation(model, full, t))


def _extrapolation(model: Any, params: Mapping[str, Any], times: np.ndarray) -> dict:
    """Parameters outside the training range and a time span beyond the training's."""
    out: dict = {}
    outside = []
    for n, spec in model.parameters.items():
        v = params.get(n)
        if spec.get("kind", "number") == "number" and v is not None and "min" in spec \
                and not spec["min"] <= float(v) <= spec["max"]:
            outside.append({"name": n, "value": float(v), "min": spec["min"], "max": spec["max"]})
    if outside:
        out["parameters"] = outside
    t_train = float(np.asarray(model.times)[-1])
    t_end = float(times[-1])
    if t_end > t_train * (1 + 1e-12):
        out["time"] = {"t_end": t_end, "training_t_end": t_train, "factor": t_end / t_train}
    return out
