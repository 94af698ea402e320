"""The physical problem of a case, independent of the parameter values.

A :class:`Problem` is what the HF solver, the material replay and the reduced model need
to know about a case, as explicit objects instead of a configuration file: the declared
parameters, the Dirichlet conditions and loads (compiled expressions of ``x, y, z, t``
and the numeric parameters, with the regions they act on), the temperature (an
expression, one nodal field scaled in time, or a time series of nodal fields read from
files), the material configuration, the time grid and the element technology.

``problem.bind(params, dm)`` gives the :class:`~ddrom.hf.loads.Loads` of one parameter
point (parameter values bound, temperature files opened on the distributed mesh);
``problem.describe()`` a JSON-able description that a ROM file keeps, so that the online
stage can tell what a later case changed (:mod:`ddrom.rom.inputs`).

Temperature from files
----------------------
``kind = "field"``: ``T(x, t) = T_ref + scale(t) (T_file(x) - T_ref)``, ``T_file`` one nodal
field; ``kind = "series"``: ``T(x, t)`` interpolated linearly in time between the frames
of a series (a time outside the series' span is an error, never a silent constant).
Nodal values are interpolated to the integration points with the element's shape
functions. The file of a parameter point is ``source`` with ``{name}`` placeholders
replaced by the point's parameter values (``{name:spec}`` applies a format spec to a
number; a parameter of kind ``file`` is a path), so each training or test point may have
its own thermal analysis.
"""
from __future__ import annotations

import os
import string
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ddrom.expressions import Expression
from ddrom.hf.loads import BodyForce, Centrifugal, Dirichlet, Loads, NodalForce, Pressure, Traction
from ddrom.parallel import DdromError

PARAMETER_KINDS = ("number", "file")


@dataclass(frozen=True)
class ParameterSpec:
    """A declared parameter. ``kind = "file"``: its values are file paths (no range)."""

    name: str
    kind: str = "number"
    min: float | None = None
    max: float | None = None
    default: float | str | None = None
    description: str = ""

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"kind": self.kind}
        for k in ("min", "max", "default"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.description:
            d["description"] = self.description
        return d

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> "ParameterSpec":
        return cls(name, d.get("kind", "number"), d.get("min"), d.get("max"), d.get("default"),
                   d.get("description", ""))


@dataclass(frozen=True)
class DirichletSpec:
    """Imposed displacement ``value(t)`` on ``components`` (0, 1, 2) of the nodes of ``region``."""

    region: str
    components: tuple[int, ...]
    value: Expression


@dataclass(frozen=True)
class LoadSpec:
    """One load: ``pressure`` (one value), ``traction`` or ``body`` (three components, force per
    area / per volume), ``nodal`` (three components, the force applied at every node of the
    region: ``*CLOAD``), ``centrifugal`` (``rho omega(t)^2 r``: one value, ``omega``)."""

    kind: str
    values: tuple[Expression, ...]
    region: str | None = None
    density: float = 0.0
    axis: tuple[float, float, float] = (0.0, 0.0, 1.0)
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    key: str = ""                    # how messages and the ROM file name it, e.g. "loads.traction[0]"

    def sources(self) -> list[str]:
        """The case paths of its scalar terms, one per value: ``loads.traction[0].vector[1]``,
        ``loads.nodal[0].force_per_node[2]``, ``loads.pressure[0].value``, ``loads.centrifugal.omega``
        (how the ROM file names its projected load terms)."""
        return [f"{self.key}.{c}" for c in LOAD_COMPONENTS[self.kind]]


#: The case keys of each load kind's scalar values, in order.
LOAD_COMPONENTS = {"pressure": ("value",), "traction": tuple(f"vector[{j}]" for j in range(3)),
                   "body": tuple(f"vector[{j}]" for j in range(3)),
                   "nodal": tuple(f"force_per_node[{j}]" for j in range(3)), "centrifugal": ("omega",)}


@dataclass(frozen=True)
class TemperatureSpec:
    """The temperature field: ``kind`` "expression", "field" or "series" (see the module doc)."""

    kind: str = "expression"
    T_ref: float = 20.0
    expression: Expression | None = None
    source: str | None = None        # path or pattern ({name} placeholders), absolute
    field: str = "T"
    scale: Expression | None = None  # "field": amplitude in t (and parameters)
    times: tuple[float, ...] | None = None   # "series" of files without times (a glob)
    folder: str = "."                # relative paths (the source, file parameters) are relative to it
    file_parameters: tuple[str, ...] = ()

    @property
    def from_files(self) -> bool:
        return self.kind in ("field", "series")

    def source_for(self, params: Mapping[str, Any]) -> str:
        """The file of one parameter point: ``source`` with its ``{name}`` placeholders filled."""
        if self.source is None:
            raise DdromError("the temperature is not read from a file")
        # a file parameter's value is substituted as given; the result, like every path of a
        # case, is relative to the case's folder (absolute paths stay as they are)
        return _resolve(fill_placeholders(self.source, params, "temperature.file"), self.folder)


def _resolve(path: str, folder: str) -> str:
    return path if os.path.isabs(path) else os.path.join(folder, path)


def placeholders(pattern: str) -> list[str]:
    """Names of the ``{name}`` / ``{name:spec}`` placeholders of a path pattern."""
    return [f for _, f, _, _ in string.Formatter().parse(pattern) if f]


def fill_placeholders(pattern: str, params: Mapping[str, Any], what: str) -> str:
    """``pattern`` with ``{name}`` replaced by ``params[name]`` (numbers as ``:g`` unless a
    spec is given; strings as they are)."""
    out = []
    for literal, name, spec, conv in string.Formatter().parse(pattern):
        out.append(literal)
        if name is None:
            continue
        if name not in params:
            raise DdromError(f"{what} {pattern!r}: no value for placeholder {{{name}}} "
                             f"(parameters: {sorted(params)})")
        v = params[name]
        if isinstance(v, str):
            out.append(v if not spec else format(v, spec))
        else:
            try:
                out.append(format(float(v), spec or "g") if not (spec and spec[-1] in "dxob")
                           else format(int(round(float(v))), spec))
            except ValueError as exc:
                raise DdromError(f"{what} {pattern!r}: placeholder {{{name}:{spec}}}: {exc}") from None
    return "".join(out)


@dataclass
class Problem:
    """A case's physics without parameter values (see the module doc).

    Attributes
    ----------
    parameters : name -> :class:`ParameterSpec`, in the case's order
    dirichlet, loads : the conditions and loads, in the case's order
    temperature : :class:`TemperatureSpec`
    material : the material configuration (``ddrom.materials.from_config``)
    times : (n + 1,) the time instants, ``times[0] = 0`` the initial state
    element_technology : "bbar" or "full" (hexahedra)
    mesh_signature : what identifies the mesh (generator and arguments, or file and its
        SHA-256, and the regions); the ROM file keeps it
    """

    parameters: dict[str, ParameterSpec]
    dirichlet: list[DirichletSpec]
    loads: list[LoadSpec]
    temperature: TemperatureSpec
    material: dict
    times: np.ndarray
    element_technology: str = "bbar"
    mesh_signature: dict = field(default_factory=dict)

    # ------------------------------------------------------------- parameters
    @property
    def numeric_parameters(self) -> list[str]:
        return [n for n, p in self.parameters.items() if p.kind == "number"]

    def complete(self, params: Mapping[str, Any], *, allow_defaults: bool = True, what: str = "parameters"
                 ) -> tuple[dict[str, Any], list[str]]:
        """Check a parameter point: every name declared, every parameter given (or defaulted).

        Returns the full point and the names that took their declared default. Unknown
        names are errors; a missing one is an error unless it has a default and
        ``allow_defaults``.
        """
        unknown = sorted(set(params) - set(self.parameters))
        if unknown:
            raise DdromError(f"{what}: unknown parameter(s) {unknown}; declared: {list(self.parameters)}")
        out: dict[str, Any] = {}
        defaulted = []
        for n, spec in self.parameters.items():
            if n in params:
                v = params[n]
                if spec.kind == "number":
                    try:
                        v = float(v)
                    except (TypeError, ValueError):
                        raise DdromError(f"{what}: parameter {n!r} = {v!r} is not a number") from None
                    if not np.isfinite(v):
                        raise DdromError(f"{what}: parameter {n!r} = {v!r} is not finite")
                else:
                    v = str(v)
                out[n] = v
            elif allow_defaults and spec.default is not None:
                out[n] = spec.default
                defaulted.append(n)
            else:
                hint = "" if spec.default is None else " (it has a default: allow defaults to use it)"
                raise DdromError(f"{what}: no value for parameter {n!r}{hint}")
        return out, defaulted

    def out_of_range(self, params: Mapping[str, Any]) -> list[str]:
        """Human-readable notes for numeric values outside their declared [min, max]."""
        notes = []
        for n, spec in self.parameters.items():
            v = params.get(n)
            if spec.kind == "number" and v is not None and spec.min is not None and spec.max is not None \
                    and not spec.min <= float(v) <= spec.max:
                notes.append(f"{n} = {float(v):g} is outside [{spec.min:g}, {spec.max:g}]")
        return notes

    def numeric_values(self, params: Mapping[str, Any]) -> dict[str, float]:
        return {n: float(params[n]) for n in self.numeric_parameters if n in params}

    # ---------------------------------------------------------------- binding
    def bind(self, params: Mapping[str, Any], dm: Any = None) -> Loads:
        """The loads of one parameter point (expressions bound to the values; temperature files
        opened on ``dm``, which they need)."""
        values = self.numeric_values(params)
        out = Loads()
        for d in self.dirichlet:
            out.dirichlet.append(Dirichlet(d.region, d.components, _bind(d.value, values)))
        for L in self.loads:
            vals = [_bind(e, values) for e in L.values]
            if L.kind == "pressure":
                out.pressure.append(Pressure(L.region, vals[0]))
            elif L.kind == "traction":
                out.traction.append(Traction(L.region, vals))
            elif L.kind == "nodal":
                out.nodal.append(NodalForce(L.region, vals))
            elif L.kind == "body":
                out.body.append(BodyForce(vals))
            elif L.kind == "centrifugal":
                out.centrifugal.append(Centrifugal(vals[0], L.density, L.axis, L.center))
            else:
                raise DdromError(f"{L.key}: unknown load kind {L.kind!r}")
        out.temperature = self.temperature_field(params, dm)
        return out

    def temperature_field(self, params: Mapping[str, Any], dm: Any = None):
        """The temperature callable ``(x, y, z, t) -> T`` of one parameter point (HF layout:
        values at ``dm``'s integration points (ne, nq) for a field read from files)."""
        T = self.temperature
        values = self.numeric_values(params)
        if not T.from_files:
            return _bind(T.expression, values)
        if dm is None:
            raise DdromError("a temperature read from files needs the distributed mesh")
        src = self.field_source(params, dm)
        shape = dm.ref.shape(dm.ref.qp)                      # (nq, k)
        cells = dm.cells
        T_ref = float(T.T_ref)
        if T.kind == "series":
            return lambda t, **kw: np.einsum("qk,ek->eq", shape, src.at(float(np.asarray(t)))[cells])
        scale = _bind(T.scale if T.scale is not None else Expression(1.0), values)
        T_qp = np.einsum("qk,ek->eq", shape, src.frame(0)[cells])
        if callable(scale):
            return lambda t, **kw: T_ref + float(np.asarray(scale(t=t))) * (T_qp - T_ref)
        s0 = float(scale)
        return lambda t, **kw: T_ref + s0 * (T_qp - T_ref)

    def field_source(self, params: Mapping[str, Any], dm: Any):
        """The :class:`~ddrom.io.fields.DistributedField` of a parameter point's temperature
        (opened once per file and mesh; collective)."""
        from ddrom.io.fields import DistributedField, probe_field_source

        path = self.temperature.source_for(params)
        # kept on the mesh: a field is matched to one distribution and lives as long as it does
        # (a cache keyed by id(dm) would hand a later mesh, given the same id, a stale matching)
        cache = dm.__dict__.setdefault("_field_sources", {})
        key = (path, self.temperature.field, self.temperature.kind, self.temperature.times)
        if key not in cache:
            info = probe_field_source(path, self.temperature.field, self.temperature.kind == "series",
                                      self.temperature.times, dm.comm)
            cache[key] = DistributedField(info, dm)
        return cache[key]

    # ---------------------------------------------------------- description
    def describe(self) -> dict:
        """A JSON-able description (texts of the expressions, regions, kinds): what a ROM file
        records of the problem it was built for."""
        T = self.temperature
        temp: dict[str, Any] = {"kind": T.kind, "T_ref": float(T.T_ref)}
        if T.kind == "expression":
            temp["expression"] = T.expression.text
        else:
            temp.update(source=T.source, field=T.field, folder=T.folder,
                        times=None if T.times is None else list(T.times))
            if T.kind == "field":
                temp["scale"] = T.scale.text if T.scale is not None else "1.0"
        return {
            "parameters": {n: p.to_dict() for n, p in self.parameters.items()},
            "dirichlet": [{"region": d.region, "components": list(d.components), "value": d.value.text}
                          for d in self.dirichlet],
            "loads": [{"key": L.key, "kind": L.kind, "region": L.region, "values": [e.text for e in L.values],
                       **({"density": L.density, "axis": list(L.axis), "center": list(L.center)}
                          if L.kind == "centrifugal" else {})} for L in self.loads],
            "temperature": temp,
            "material": self.material,
            "times": [float(t) for t in self.times],
            "element_technology": self.element_technology,
            "mesh": self.mesh_signature,
        }


def _bind(expr: Expression, params: Mapping[str, float]):
    """A field callable of (x, y, z, t) with the parameter values bound (a number if constant)."""
    if expr.constant is not None:
        return expr.constant
    fixed = dict(params)
    return lambda **kw: expr.evaluate({**fixed, **kw})


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (a mesh file's identity in :attr:`Problem.mesh_signature`)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
