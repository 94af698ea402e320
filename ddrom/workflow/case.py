"""The case file: a TOML file validated in full against a declarative schema.

:func:`load_case` reads the file with :mod:`tomllib`, checks **every** key against
:data:`SCHEMA` and collects **all** the problems (unknown keys with a did-you-mean, wrong
types, missing required keys, bad values, referenced files that do not exist, expressions
with unknown names) before raising a single :class:`~ddrom.parallel.DdromError` that lists
them, each with its dotted path in the file (``loads.pressure[1].value: ...``). Nothing
heavy happens here: no mesh is built, no file is read besides the case file itself, so the
CLI can call it on every rank and let rank 0 print the error.

The schema is data: a tree of :class:`Table` specs whose :class:`Key` entries give the
type of each key (a :class:`Spec`), its default and its documentation, plus per-table rules
(mutually exclusive keys) and a few cross-section checks (:func:`_check_case`). The keys are
documented for users in ``cases/README.md``.

The result is a :class:`Case`: the validated dictionary with every default filled
(:attr:`Case.raw`), the compiled expressions, the sampled training and test parameters,
the warnings, and two hashes for provenance.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import inspect
import itertools
import json
import keyword
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ddrom.expressions import RESERVED, Expression
from ddrom.parallel.errors import DdromError

# ============================================================================ machinery
REQUIRED = object()      #: a key without default: its absence is an error
OPTIONAL = object()      #: a key without default that may be absent (then absent from ``raw``)
_BAD = object()          #: returned by a spec whose value was invalid (an error was recorded)

#: Coordinates and time: names of expressions that parameters may not take.
SPACE_TIME = ("x", "y", "z", "t")


@dataclass
class _Context:
    """What the validation accumulates while walking the file."""

    folder: Path
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    parameter_names: tuple[str, ...] = ()     # numeric parameters: the names expressions may use
    file_parameters: tuple[str, ...] = ()     # parameters of kind "file" (values are paths)
    expressions: dict[str, Expression] = field(default_factory=dict)

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}" if path else message)

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{path}: {message}" if path else message)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    k = key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)
    return f"{path}.{k}" if path else k


def _toml_type(value: Any) -> str:
    """The TOML name of a value's type, for messages."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


def _show(value: Any) -> str:
    s = repr(value)
    return s if len(s) <= 60 else s[:57] + "..."


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Spec:
    """Type of one value. ``check`` returns the normalized value, or ``_BAD`` after
    recording an error in ``ctx``."""

    expected = "a value"

    def check(self, value: Any, path: str, ctx: _Context) -> Any:
        raise NotImplementedError

    def wrong_type(self, value: Any, path: str, ctx: _Context) -> Any:
        ctx.error(path, f"expected {self.expected}, got {_toml_type(value)} {_show(value)}")
        return _BAD


class Str(Spec):
    """A string, optionally one of ``choices`` or matching ``pattern``."""

    def __init__(self, choices: Callable[[], Iterable[str]] | Iterable[str] | None = None,
                 pattern: str | None = None, pattern_doc: str = ""):
        self.choices, self.pattern, self.pattern_doc = choices, pattern, pattern_doc
        self.expected = "a string"

    def check(self, value, path, ctx):
        if not isinstance(value, str):
            return self.wrong_type(value, path, ctx)
        if self.choices is not None:
            choices = sorted(self.choices() if callable(self.choices) else self.choices)
            if value not in choices:
                ctx.error(path, f"{value!r} is not one of {', '.join(choices)}{_did_you_mean(value, choices)}")
                return _BAD
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            ctx.error(path, f"{value!r}: {self.pattern_doc}")
            return _BAD
        return value


class Num(Spec):
    """A finite number (TOML integer or float; booleans rejected), returned as float."""

    def __init__(self, gt: float | None = None, ge: float | None = None, lt: float | None = None,
                 le: float | None = None):
        self.gt, self.ge, self.lt, self.le = gt, ge, lt, le
        self.expected = "a number"

    def check(self, value, path, ctx):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return self.wrong_type(value, path, ctx)
        v = float(value)
        if not math.isfinite(v):
            ctx.error(path, f"must be finite, got {value!r}")
            return _BAD
        for bound, ok, word in ((self.gt, lambda b: v > b, ">"), (self.ge, lambda b: v >= b, ">="),
                                (self.lt, lambda b: v < b, "<"), (self.le, lambda b: v <= b, "<=")):
            if bound is not None and not ok(bound):
                ctx.error(path, f"must be {word} {bound:g}, got {value!r}")
                return _BAD
        return v


class Int(Spec):
    """A TOML integer (not a float, not a boolean), with an optional lower bound."""

    def __init__(self, ge: int | None = None):
        self.ge = ge
        self.expected = "an integer"

    def check(self, value, path, ctx):
        if isinstance(value, bool) or not isinstance(value, int):
            return self.wrong_type(value, path, ctx)
        if self.ge is not None and value < self.ge:
            ctx.error(path, f"must be >= {self.ge}, got {value!r}")
            return _BAD
        return value


class Bool(Spec):
    expected = "true or false"

    def check(self, value, path, ctx):
        return value if isinstance(value, bool) else self.wrong_type(value, path, ctx)


class Scalar(Spec):
    """A string, number or boolean (PETSc option values)."""

    expected = "a string, number or boolean"

    def check(self, value, path, ctx):
        if isinstance(value, (str, int, float, bool)):
            return value
        return self.wrong_type(value, path, ctx)


class ListOf(Spec):
    """An array of values of one spec, of a given length or at least ``min_len`` long."""

    def __init__(self, item: Spec, length: int | None = None, min_len: int = 0):
        self.item, self.length, self.min_len = item, length, min_len
        self.expected = f"an array of {length} values" if length else "an array"

    def check(self, value, path, ctx):
        if not isinstance(value, list):
            return self.wrong_type(value, path, ctx)
        if self.length is not None and len(value) != self.length:
            ctx.error(path, f"expected an array of {self.length} values, got {len(value)}")
            return _BAD
        if len(value) < self.min_len:
            ctx.error(path, f"expected at least {self.min_len} value(s), got {len(value)}")
            return _BAD
        out = [self.item.check(v, _join(path, i), ctx) for i, v in enumerate(value)]
        return _BAD if any(v is _BAD for v in out) else out


class MapOf(Spec):
    """A table with free keys (checked by ``key_check(key, path, ctx) -> bool``) of one value spec."""

    def __init__(self, value: Spec, key_check: Callable[[str, str, _Context], bool] | None = None,
                 post: Callable[[dict, dict, str, _Context], None] | None = None):
        self.value, self.key_check, self.post = value, key_check, post
        self.expected = "a table"

    def check(self, value, path, ctx):
        if not isinstance(value, dict):
            return self.wrong_type(value, path, ctx)
        out = {}
        for k, v in value.items():
            p = _join(path, k)
            if self.key_check is not None and not self.key_check(k, p, ctx):
                continue
            r = self.value.check(v, p, ctx)
            if r is not _BAD:
                out[k] = r
        if self.post is not None:
            self.post(out, value, path, ctx)
        return out


@dataclass
class Key:
    """One key of a table: its spec, its default (``REQUIRED``, ``OPTIONAL`` or a value,
    validated by the spec -- so a table default ``{}`` gets its own defaults filled) and
    its user documentation."""

    spec: Spec
    default: Any = OPTIONAL
    doc: str = ""


class Table(Spec):
    """A table with known keys.

    Parameters
    ----------
    keys : dict
        ``name -> Key``; keys are validated in this order.
    unknown : {"error", "warn"}
        What an unknown key is (kept as is with a warning).
    one_of : list of tuples
        Groups of keys of which exactly one must be present.
    at_most_one : list of tuples
        Groups of keys of which at most one may be present.
    requires : dict
        ``key -> other key``: ``key`` may only be given together with ``other key``.
    post : callable, optional
        ``post(out, given, path, ctx)``: cross-key checks and computed values, called with
        the validated table ``out`` (invalid keys are absent from it) and the table as
        written (to test which keys were given without echoing their errors).
    """

    def __init__(self, keys: dict[str, Key], unknown: str = "error", one_of: Iterable[tuple[str, ...]] = (),
                 at_most_one: Iterable[tuple[str, ...]] = (), requires: Mapping[str, str] | None = None,
                 post: Callable[[dict, dict, str, _Context], None] | None = None):
        self.keys, self.unknown = keys, unknown
        self.one_of, self.at_most_one, self.post = list(one_of), list(at_most_one), post
        self.requires = dict(requires or {})
        self.expected = "a table"

    def check(self, value, path, ctx):
        if not isinstance(value, dict):
            return self.wrong_type(value, path, ctx)
        out: dict[str, Any] = {}
        for k in value:
            if k not in self.keys:
                p = _join(path, k)
                if self.unknown == "warn":
                    ctx.warn(p, "unknown key, kept as is (not used by this version)"
                             + _did_you_mean(k, self.keys))
                    out[k] = value[k]
                else:
                    ctx.error(p, f"unknown key{_did_you_mean(k, self.keys)}; "
                                 f"known keys{' of ' + path if path else ''}: {', '.join(self.keys)}")
        for group in self.one_of:
            present = [k for k in group if k in value]
            if len(present) != 1:
                what = "none is given" if not present else f"got {' and '.join(present)}"
                ctx.error(path, f"give exactly one of {', '.join(group)} ({what})")
        for group in self.at_most_one:
            present = [k for k in group if k in value]
            if len(present) > 1:
                ctx.error(path, f"give at most one of {', '.join(group)} (got {' and '.join(present)})")
        for k, other in self.requires.items():
            if k in value and other not in value:
                ctx.error(_join(path, k), f"requires {_join(path, other)}")
        for k, key in self.keys.items():
            p = _join(path, k)
            if k in value:
                r = key.spec.check(value[k], p, ctx)
            elif key.default is REQUIRED:
                ctx.error(p, "missing required key")
                continue
            elif key.default is OPTIONAL:
                continue
            else:
                r = key.spec.check(copy.deepcopy(key.default), p, ctx)
            if r is not _BAD:
                out[k] = r
        if self.post is not None:
            self.post(out, value, path, ctx)
        return out


class Custom(Spec):
    """A spec given by a function ``fn(value, path, ctx) -> value or _BAD``."""

    def __init__(self, fn: Callable[[Any, str, _Context], Any], expected: str = "a value"):
        self.fn, self.expected = fn, expected

    def check(self, value, path, ctx):
        return self.fn(value, path, ctx)


# ====================================================================== domain specs
class Expr(Spec):
    """An :class:`~ddrom.expressions.Expression` (string) or a number, in the names
    ``space_time`` plus the case's parameters; compiled now so that unknown names fail at
    load time. The raw value is kept in ``raw``; the compiled one in ``Case.expressions``."""

    def __init__(self, space_time: tuple[str, ...]):
        self.space_time = space_time
        self.expected = f"an expression in {', '.join(space_time) or 'the parameters'} or a number"

    def check(self, value, path, ctx):
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            return self.wrong_type(value, path, ctx)
        try:
            ctx.expressions[path] = Expression(value, set(self.space_time) | set(ctx.parameter_names), what=path)
        except DdromError as exc:
            msg = str(exc)
            ctx.errors.append(msg if msg.startswith(path) else f"{path}: {msg}")
            return _BAD
        return float(value) if isinstance(value, int) else value


class File(Spec):
    """A path relative to the case file's folder (or absolute) that must exist."""

    expected = "a file path (string)"

    def check(self, value, path, ctx):
        if not isinstance(value, str) or not value:
            return self.wrong_type(value, path, ctx)
        p = Path(value)
        full = p if p.is_absolute() else ctx.folder / p
        if not full.is_file():
            ctx.error(path, f"file {value!r} not found (looked for {full})")
            return _BAD
        return value


def _selector(value: Any, path: str, ctx: _Context) -> Any:
    """A region selector: validated by evaluating it on one dummy point (no mesh needed)."""
    from ddrom.mesh.boundary import point_mask
    if not isinstance(value, (str, dict)):
        ctx.error(path, f"expected a selector (a string expression in x, y, z or a table), "
                        f"got {_toml_type(value)} {_show(value)}")
        return _BAD
    try:
        point_mask(np.zeros((1, 3)), value, 1e-6)
    except DdromError as exc:
        ctx.error(path, str(exc))
        return _BAD
    return value


def _any_table(value: Any, path: str, ctx: _Context) -> Any:
    """A table whose keys are checked elsewhere (the material, by the law itself)."""
    if isinstance(value, dict):
        return value
    ctx.error(path, f"expected a table, got {_toml_type(value)} {_show(value)}")
    return _BAD


def _component(value: Any, path: str, ctx: _Context) -> Any:
    """A displacement component: "x"/"y"/"z" or 0/1/2, normalized to 0/1/2."""
    names = {"x": 0, "y": 1, "z": 2}
    if isinstance(value, str) and value in names:
        return names[value]
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1, 2):
        return value
    ctx.error(path, f"expected a component \"x\", \"y\", \"z\" or 0, 1, 2, got {_show(value)}")
    return _BAD


def _parameter_name(name: str, path: str, ctx: _Context) -> bool:
    if not name.isidentifier() or keyword.iskeyword(name):
        ctx.error(path, f"parameter name {name!r} is not an identifier (letters, digits, _)")
        return False
    if name in SPACE_TIME or name in RESERVED or name == "tol":
        ctx.error(path, f"parameter name {name!r} is reserved (coordinates x, y, z, time t, "
                        "and the functions and constants of expressions)")
        return False
    return True


def _declared_parameter(name: str, path: str, ctx: _Context) -> bool:
    names = ctx.parameter_names + ctx.file_parameters
    if name in names:
        return True
    ctx.error(path, f"unknown parameter {name!r}{_did_you_mean(name, names)}; "
                    f"parameters: {', '.join(names) or 'none declared in [parameters]'}")
    return False


class Value(Spec):
    """A parameter value: a number, or a path (a string) for a parameter of kind "file"
    (checked against the parameter's kind when the points are sampled)."""

    expected = "a number (or a file path for a parameter of kind \"file\")"

    def check(self, value, path, ctx):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            return self.wrong_type(value, path, ctx)
        if isinstance(value, str):
            return value
        return Num().check(value, path, ctx)


def _petsc_key(name: str, path: str, ctx: _Context) -> bool:
    if name.startswith("-"):
        ctx.error(path, f"write PETSc option names without the leading dash ({name.lstrip('-')!r})")
        return False
    return True


def _generators() -> list[str]:
    from ddrom.mesh.generators import GENERATORS
    return list(GENERATORS)


def _spec_from_signature(param: inspect.Parameter) -> Spec | None:
    """Light type check of a generator argument from its annotation (values are checked by
    the generator itself when the mesh is built)."""
    ann = str(param.annotation)
    if "tuple" in ann:
        return ListOf(Num(), length=3)
    if "float" in ann:
        return Num()
    if "int" in ann:
        return Int()
    if "str" in ann:
        return Str()
    return None


# ------------------------------------------------------------------------ post checks
def _post_case(out: dict, given: dict, path: str, ctx: _Context) -> None:
    if "output" not in out and "name" in out:
        out["output"] = f"out/{out['name']}"


def _post_mesh(out: dict, given: dict, path: str, ctx: _Context) -> None:
    from ddrom.mesh.generators import GENERATORS
    if "args" in out and "generator" not in out:
        ctx.error(_join(path, "args"), "mesh arguments are only for a generator (mesh.generator)")
        return
    gen = out.get("generator")
    if gen not in GENERATORS:
        return
    args = out.setdefault("args", {})
    sig = inspect.signature(GENERATORS[gen]).parameters
    for k in list(args):
        p = _join(_join(path, "args"), k)
        if k not in sig:
            ctx.error(p, f"unknown argument of generator {gen!r}{_did_you_mean(k, sig)}; "
                         f"arguments: {', '.join(sig)}")
            del args[k]
            continue
        spec = _spec_from_signature(sig[k])
        if spec is not None and spec.check(args[k], p, ctx) is _BAD:
            del args[k]
    for k, prm in sig.items():
        if prm.default is inspect.Parameter.empty and k not in args:
            ctx.error(_join(_join(path, "args"), k), f"missing required argument of generator {gen!r}")


def _post_parameters(out: dict, given: dict, path: str, ctx: _Context) -> None:
    for name, p in out.items():
        scale = p.get("scale", "linear")
        if "period" in p and scale != "periodic":
            ctx.error(_join(_join(path, name), "period"), f"a period needs scale = \"periodic\" (scale is {scale!r})")
        if p.get("kind") == "file":
            extra = [k for k in ("min", "max", "scale") if k in p]
            if extra:
                ctx.error(_join(path, name), f"a parameter of kind \"file\" has no range or scale "
                                             f"({', '.join(extra)})")
            if "default" in p and not isinstance(p["default"], str):
                ctx.error(_join(_join(path, name), "default"), "a file parameter's default is a path (a string)")
            continue
        missing = [k for k in ("min", "max") if k not in p]
        if missing:
            ctx.error(_join(path, name), f"missing {' and '.join(missing)} (a number parameter needs its range)")
            continue
        if isinstance(p.get("default"), str):
            ctx.error(_join(_join(path, name), "default"), "expected a number")
            continue
        if scale == "periodic" and "period" not in p:
            ctx.error(_join(path, name), "scale = \"periodic\" needs a period (e.g. period = 360 for degrees)")
        if scale == "log" and "min" in p and p["min"] <= 0:
            ctx.error(_join(_join(path, name), "scale"), f"scale = \"log\" needs min > 0, got min = {p['min']:g}")
        if "min" in p and "max" in p and p["min"] > p["max"]:
            ctx.error(_join(path, name), f"min = {p['min']:g} is greater than max = {p['max']:g}")
        elif "default" in p and "min" in p and not p["min"] <= p["default"] <= p["max"]:
            ctx.error(_join(_join(path, name), "default"),
                      f"{p['default']:g} is outside [min, max] = [{p['min']:g}, {p['max']:g}]")


def _post_temperature(out: dict, given: dict, path: str, ctx: _Context) -> None:
    if out.get("series") and "scale" in given:
        ctx.error(_join(path, "scale"), "a series gives the temperature at each time: no scale")
    if "file" in out:
        from ddrom.hf.problem import placeholders

        try:
            names = placeholders(out["file"])
        except ValueError as exc:
            ctx.error(_join(path, "file"), f"bad {{placeholder}} in {out['file']!r}: {exc}")
            return
        known = ctx.parameter_names + ctx.file_parameters
        for n in names:
            if n not in known:
                ctx.error(_join(path, "file"), f"placeholder {{{n}}} is not a parameter{_did_you_mean(n, known)}; "
                                               f"parameters: {', '.join(known) or 'none'}")


def _post_time(out: dict, given: dict, path: str, ctx: _Context) -> None:
    if "times" in given:
        if "t_end" in given or "n_steps" in given or "dt" in given:
            ctx.error(path, "give either times, or t_end with n_steps or dt (not both)")
            return
        ts = out.get("times")
        if ts and (ts[0] <= 0 or any(b <= a for a, b in zip(ts, ts[1:]))):
            ctx.error(_join(path, "times"), "times must be positive and strictly increasing "
                                            "(the initial state is at t = 0)")
        return
    if "t_end" not in given:
        ctx.error(path, "give t_end with n_steps or dt, or an explicit list of times")
    elif ("n_steps" in given) == ("dt" in given):
        ctx.error(path, "give exactly one of n_steps and dt with t_end")
    else:
        # A time grid of 1e9 or 1e12 steps is a typo (dt = 1e-12), not a run: refuse it here,
        # naming the keys, before anything allocates per-step arrays.
        from ddrom.io.estimate import MAX_TIME_STEPS

        t_end, dt, n = out.get("t_end"), out.get("dt"), out.get("n_steps")
        if "dt" in given and isinstance(t_end, (int, float)) and isinstance(dt, (int, float)) and dt > 0:
            steps = t_end / dt
            if not math.isfinite(steps) or steps > MAX_TIME_STEPS:
                ctx.error(_join(path, "dt"), f"t_end = {t_end:g} with dt = {dt:g} gives {steps:.3g} time steps, "
                                             f"more than the {MAX_TIME_STEPS} a case may have")
        elif "n_steps" in given and isinstance(n, int) and n > MAX_TIME_STEPS:
            ctx.error(_join(path, "n_steps"), f"n_steps = {n} is more than the {MAX_TIME_STEPS} time steps "
                                              "a case may have")


def _sampling_table(kind: str) -> Table:
    return Table({
        "grid": Key(MapOf(ListOf(Value(), min_len=1), key_check=_declared_parameter),
                    doc="cartesian product of value lists, one per parameter"),
        "random": Key(Table({"n": Key(Int(ge=1), REQUIRED), "seed": Key(Int(ge=0), 0)}),
                      doc="n points uniform in [min, max] (numpy default_rng(seed))"),
        "values": Key(ListOf(MapOf(Value(), key_check=_declared_parameter), min_len=1),
                      doc="explicit points"),
        "table": Key(File(), doc="a CSV file: a header of parameter names, one point per row"),
    }, one_of=[("grid", "random", "values", "table")])


def _line_search(value: Any, path: str, ctx: _Context) -> Any:
    """``"fallback"``, ``"always"`` or ``"never"``; ``true``/``false`` mean fallback/never."""
    from ddrom.hf.stepping import LINE_SEARCH

    if isinstance(value, bool):
        return "fallback" if value else "never"
    if isinstance(value, str) and value in LINE_SEARCH:
        return value
    ctx.error(path, f"expected one of {', '.join(LINE_SEARCH)} (or true/false), got {_show(value)}")
    return _BAD


def _indicator_component(name: str, path: str, ctx: _Context) -> bool:
    from ddrom.rom.online import INDICATOR_COMPONENTS

    if name in INDICATOR_COMPONENTS and name != "p":
        return True
    ctx.error(path, f"unknown indicator component {name!r} (the p tolerance is indicator_tol; others: "
                    f"{', '.join(c for c in INDICATOR_COMPONENTS if c != 'p')})")
    return False


from ddrom.hf.problem import PARAMETER_SCALES as _PARAMETER_SCALES  # noqa: E402


def _defaults():
    """The option objects whose field defaults are the case keys' defaults (one source)."""
    from ddrom.hf.solver import SolverOptions
    from ddrom.io.store import StoreOptions
    from ddrom.rom.enrichment import EnrichmentOptions
    from ddrom.rom.offline import OfflineOptions
    from ddrom.rom.classifier import ClassifierOptions
    from ddrom.workflow.options import ImportOptions, IndicatorOptions

    return (SolverOptions(), OfflineOptions(), EnrichmentOptions(), IndicatorOptions(), ImportOptions(),
            ClassifierOptions(), StoreOptions())


_SOLVER, _OFFLINE, _ENRICH, _INDICATOR, _IMPORT, _CLASSIFIER, _STORE = _defaults()
from ddrom.io.integrity import COMPRESSIONS as _COMPRESSIONS  # noqa: E402
from ddrom.rom.classifier import CLASSIFIER_METHODS as _CLASSIFIER_METHODS  # noqa: E402
_XYZT = ("x", "y", "z", "t")
_VECTOR3 = ListOf(Expr(_XYZT), length=3)

#: The case-file schema (documented for users in cases/README.md). ``parameters`` comes
#: first: expressions of the other sections may use the parameter names.
SCHEMA = Table({
    "parameters": Key(MapOf(Table({
        "kind": Key(Str(choices=("number", "file")), doc="number (default) or file (values are paths)"),
        "min": Key(Num()),
        "max": Key(Num()),
        "default": Key(Value()),
        "description": Key(Str()),
        "scale": Key(Str(choices=_PARAMETER_SCALES), doc="how the local-basis classifier sees the value: "
                     "linear (default), log, periodic (with period)"),
        "period": Key(Num(gt=0), doc="period of a periodic parameter (e.g. 360 for an angle in degrees)"),
    }), key_check=_parameter_name, post=_post_parameters), {}, doc="name -> {min, max, default}"),
    "case": Key(Table({
        "name": Key(Str(pattern=r"[A-Za-z0-9_.-]+", pattern_doc="use letters, digits and _ . - "
                        "(it names folders and files)"), REQUIRED),
        "description": Key(Str()),
        "output": Key(Str()),
    }, post=_post_case), REQUIRED),
    "mesh": Key(Table({
        "generator": Key(Str(choices=_generators)),
        "args": Key(MapOf(Custom(lambda v, p, c: v))),
        "file": Key(File()),
        "regions": Key(MapOf(Custom(_selector, "a selector")), {}),
        "partitioner": Key(Str(choices=("ptscotch", "rcb", "block")), "ptscotch"),
    }, one_of=[("generator", "file")], post=_post_mesh), REQUIRED),
    "material": Key(Custom(_any_table, "a table"), REQUIRED),
    "time": Key(Table({
        "t_end": Key(Num(gt=0)),
        "n_steps": Key(Int(ge=1)),
        "dt": Key(Num(gt=0)),
        "times": Key(ListOf(Num(), min_len=1)),
    }, post=_post_time), REQUIRED),
    "loads": Key(Table({
        "dirichlet": Key(ListOf(Table({
            "region": Key(Str(), REQUIRED),
            "components": Key(ListOf(Custom(_component, "a component"), min_len=1), ["x", "y", "z"]),
            "value": Key(Expr(("t",)), 0.0),
        })), []),
        "pressure": Key(ListOf(Table({
            "region": Key(Str(), REQUIRED),
            "value": Key(Expr(_XYZT), REQUIRED),
        })), []),
        "traction": Key(ListOf(Table({
            "region": Key(Str(), REQUIRED),
            "vector": Key(_VECTOR3, REQUIRED),
        })), []),
        # optional (absent when not given): a default [] would change the hashes of every
        # existing case, and so invalidate its snapshot stores, for a key it does not use
        "nodal": Key(ListOf(Table({
            "region": Key(Str(), REQUIRED),
            "force_per_node": Key(_VECTOR3, REQUIRED),
        })), doc="*CLOAD: the force vector applied at every node of the region"),
        "body_force": Key(Table({"vector": Key(_VECTOR3, REQUIRED)})),
        "centrifugal": Key(Table({
            "omega": Key(Expr(("t",)), REQUIRED),
            "density": Key(Num(gt=0), REQUIRED),
            "axis": Key(ListOf(Num(), length=3), [0.0, 0.0, 1.0]),
            "center": Key(ListOf(Num(), length=3), [0.0, 0.0, 0.0]),
        })),
    }), {}),
    "temperature": Key(Table({
        "expression": Key(Expr(_XYZT)),
        "file": Key(Str(), doc="nodal temperature file(s); {name} placeholders take the point's parameter values"),
        "field": Key(Str(), doc="point-data name of the temperature in the file(s)"),
        "series": Key(Bool(), doc="the file is a time series, interpolated linearly in time (default false)"),
        "times": Key(ListOf(Num(), min_len=2), doc="frame times of a series of files without times (a glob)"),
        "scale": Key(Expr(("t",)), 1.0),
        "T_ref": Key(Num(), 20.0),
    }, at_most_one=[("expression", "file")], requires={"file": "field", "field": "file", "series": "file",
                                                       "times": "series"}, post=_post_temperature), {}),
    "solver": Key(Table({
        "newton_rtol": Key(Num(gt=0, lt=1), _SOLVER.rtol),
        "newton_atol": Key(Num(ge=0), _SOLVER.atol),
        "max_iterations": Key(Int(ge=1), _SOLVER.max_iterations),
        "line_search": Key(Custom(_line_search, "fallback, always, never (or true/false)"), _SOLVER.line_search),
        "max_cutbacks": Key(Int(ge=0), _SOLVER.max_cutbacks),
        "petsc_options": Key(MapOf(Scalar(), key_check=_petsc_key), {}),
        "element_technology": Key(Str(choices=("full", "bbar")), "bbar" if _SOLVER.bbar else "full"),
    }), {}),
    "rom": Key(Table({
        "pod_tol": Key(Num(gt=0, lt=1), _OFFLINE.pod_tol),
        "max_modes": Key(Int(ge=1)),
        "ecm_tol": Key(Num(gt=0, lt=1), _OFFLINE.ecm_tol),
        "dual_pod_tol": Key(Num(gt=0, lt=1), _OFFLINE.p_tol),
        "stress_tol": Key(Num(gt=0, lt=1), _OFFLINE.stress_tol),
        "temperature_tol": Key(Num(gt=0, lt=1), _OFFLINE.temperature_tol),
        "temperature_sensors": Key(Int(ge=0), _OFFLINE.temperature_sensors),
        "monitor_points": Key(Int(ge=0), _OFFLINE.monitor_points),
        "noise_margin": Key(Num(ge=0), _OFFLINE.noise_margin),
        "pod_method": Key(Str(choices=("rcholqr", "tsqr", "snapshots", "slepc", "streaming"))),
        "stream_during_hf": Key(Bool(), False),
        "n_clusters": Key(Int(ge=1), 1),
        "classifier": Key(Str(choices=_CLASSIFIER_METHODS), _CLASSIFIER.method),
        "classifier_margin": Key(Num(ge=0, le=1), _CLASSIFIER.margin),
        "indicator_tol": Key(Num(gt=0)),
        "indicator_target": Key(Num(gt=0, lt=1), _INDICATOR.target),
        "indicator_target_u": Key(Num(gt=0, lt=1), _INDICATOR.target_u),
        "indicator_confidence": Key(Num(ge=0.5, lt=1), _INDICATOR.confidence),
        "enrichment": Key(Table({
            "enabled": Key(Bool(), _ENRICH.enabled),
            "indicator_tol": Key(Num(gt=0)),
            "indicator_tols": Key(MapOf(Num(gt=0), key_check=_indicator_component)),
            "max_enrichments": Key(Int(ge=0), _ENRICH.max_enrichments),
            "basis_tol": Key(Num(gt=0, lt=1), _ENRICH.basis_tol),
            "hf_rtol": Key(Num(gt=0, lt=1), _ENRICH.hf_rtol),
            "ecm_tol": Key(Num(gt=0, lt=1)),
            "save": Key(Bool(), _ENRICH.save),
        }), {}),
    }, unknown="warn"), {}),
    # optional (absent when not given) and outside the hashes: the checks of an import do not
    # change what a store holds
    "import": Key(Table({
        "equilibrium_tol": Key(Num(gt=0), _IMPORT.equilibrium_tol),
    })),
    # optional and outside the hashes, as [import]: how a snapshot store is written, not what
    # its simulations compute (a store without the state a case asks for is recomputed:
    # ddrom.workflow.hf.store_up_to_date)
    "output": Key(Table({
        "store_state": Key(Bool(), _STORE.store_state,
                           doc="also store the material's internal variables (no stage reads them)"),
        "compression": Key(Str(choices=_COMPRESSIONS), _STORE.compression,
                           doc="lossless compression of the snapshot stores"),
    })),
    "training": Key(_sampling_table("training")),
    "test": Key(_sampling_table("test")),
})


# ================================================================= cross-section checks
def _read_table(kind: str, spec: dict, names: list[str], ctx: _Context) -> list[dict] | None:
    """Points of a CSV table (header: parameter names; numbers, or paths for file parameters)."""
    import csv

    rel = spec["table"]
    path = Path(rel) if Path(rel).is_absolute() else ctx.folder / rel
    where = f"{kind}.table"
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r and not r[0].lstrip().startswith("#")]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        ctx.error(where, f"cannot read {rel!r}: {exc}")
        return None
    if len(rows) < 2:
        ctx.error(where, f"{rel!r}: a header of parameter names and at least one row are needed")
        return None
    header = [h.strip() for h in rows[0]]
    bad = [h for h in header if h not in names]
    if bad:
        ctx.error(where, f"{rel!r}: unknown parameter(s) {bad} in the header; parameters: {', '.join(names)}")
        return None
    pts = []
    for i, r in enumerate(rows[1:], start=2):
        if len(r) != len(header):
            ctx.error(where, f"{rel!r} line {i}: {len(r)} values for {len(header)} columns")
            return None
        pt = {}
        for h, v in zip(header, r):
            v = v.strip()
            if h in ctx.file_parameters:
                pt[h] = v
                continue
            try:
                pt[h] = float(v)
            except ValueError:
                ctx.error(where, f"{rel!r} line {i}: {h} = {v!r} is not a number")
                return None
        pts.append(pt)
    return pts


def _sample(kind: str, spec: dict, params: dict[str, dict], ctx: _Context) -> list[dict[str, float]]:
    """Points of a [training] or [test] table: a list of ``{name: value}`` with every parameter."""
    names = list(params)
    numeric = [n for n in names if params[n].get("kind", "number") == "number"]

    def fill(point: dict[str, float], path: str) -> dict[str, float] | None:
        out = {}
        for n in names:
            if n in point:
                out[n] = point[n]
            elif "default" in params[n]:
                out[n] = params[n]["default"]
            else:
                ctx.error(path, f"no value for parameter {n!r} (and it has no default)")
                return None
        return out

    if "grid" in spec:
        grid = spec["grid"]
        missing = [n for n in names if n not in grid and "default" not in params[n]]
        if missing:
            ctx.error(f"{kind}.grid", f"no values for parameter(s) {missing} (and no default)")
            return []
        pts, where = [], []
        # first parameter of [parameters] varies slowest
        for combo in itertools.product(*[range(len(grid[n])) if n in grid else [None] for n in names]):
            pts.append({n: params[n]["default"] if i is None else grid[n][i] for n, i in zip(names, combo)})
            where.append([f"parameters.{n}.default" if i is None else f"{kind}.grid.{n}[{i}]"
                          for n, i in zip(names, combo)])
    elif "random" in spec:
        if len(numeric) != len(names):
            ctx.error(f"{kind}.random", "file parameters cannot be sampled at random: list the points "
                                        "(values or table)")
            return []
        rng = np.random.default_rng(spec["random"]["seed"])
        u = rng.uniform(size=(spec["random"]["n"], len(names)))
        lo = np.array([params[n]["min"] for n in names])
        hi = np.array([params[n]["max"] for n in names])
        vals = lo + (hi - lo) * u
        return [{n: float(v) for n, v in zip(names, row)} for row in vals]
    elif "table" in spec:
        rows = _read_table(kind, spec, names, ctx)
        if rows is None:
            return []
        pts = [fill(p, f"{kind}.table row {i + 1}") for i, p in enumerate(rows)]
        where = [[f"{kind}.table row {i + 1} {n}" for n in names] for i in range(len(pts))]
    else:
        pts = [fill(p, f"{kind}.values[{i}]") for i, p in enumerate(spec["values"])]
        where = [[f"{kind}.values[{i}].{n}" for n in names] for i in range(len(pts))]
    good, seen = [], set()
    for p, paths in zip(pts, where):
        if p is None:
            continue
        ok = True
        for n, path in zip(names, paths):
            is_file = params[n].get("kind", "number") == "file"
            if is_file != isinstance(p[n], str):
                ctx.error(path, f"{n} = {p[n]!r}: expected " + ("a file path (a string)" if is_file else "a number"))
                ok = False
        if not ok:
            continue
        for n, path in zip(numeric, [pa for n_, pa in zip(names, paths) if n_ in numeric]):
            p[n] = float(p[n])
            lo, hi = params[n]["min"], params[n]["max"]
            if not lo <= p[n] <= hi and path not in seen:
                seen.add(path)          # a grid value is in many points: report it once
                msg = f"{n} = {p[n]:g} is outside [min, max] = [{lo:g}, {hi:g}]"
                if kind == "training":
                    ctx.error(path, msg)
                else:
                    ctx.warn(path, msg + " (extrapolation outside the training box)")
        good.append(p)
    return good


def _check_material(raw: dict, ctx: _Context) -> None:
    from ddrom.materials import from_config
    from ddrom.materials.plugin import resolve_paths
    mat = raw.get("material")
    if not isinstance(mat, dict):
        return
    # a plugin library path is relative to the case folder: made absolute here, so that every
    # from_config(case.raw["material"]) (HF, replay, ROM file read elsewhere) finds it
    mat.update(resolve_paths(mat, ctx.folder))
    try:
        from_config(mat)
    except DdromError as exc:
        msg = str(exc)
        m = re.search(r"(?:parameter|table) '(\w+)'", msg)
        ctx.error(f"material.{m.group(1)}" if m else "material", msg)
        return
    temp = raw.get("temperature", {})
    alpha = mat.get("alpha", 0.0)
    if "T_ref" in temp and "T_ref" in mat and alpha != 0 and float(mat["T_ref"]) != temp["T_ref"]:
        ctx.warn("material.T_ref", f"the stress-free temperature {mat['T_ref']} differs from "
                                   f"temperature.T_ref = {temp['T_ref']}: a thermal strain exists at t = 0")


def _check_case(raw: dict, ctx: _Context) -> dict[str, list[dict[str, float]]]:
    """Checks that involve several sections; returns the sampled parameter points."""
    _check_material(raw, ctx)
    temp = raw.get("temperature")
    if isinstance(temp, dict):
        if "expression" not in temp and "file" not in temp and "field" not in temp and "T_ref" in temp:
            # default: a uniform field at the reference temperature
            temp["expression"] = temp["T_ref"]
            ctx.expressions["temperature.expression"] = Expression(temp["T_ref"], what="temperature.expression")
    params = raw.get("parameters", {})
    points: dict[str, list[dict[str, float]]] = {"training": [], "test": []}
    if any(e.startswith(("parameters", "training", "test")) for e in ctx.errors):
        return points          # already reported: sampling would only echo these errors
    for kind in ("training", "test"):
        spec = raw.get(kind)
        if spec is None:
            if kind == "training":
                missing = [n for n, p in params.items() if "default" not in p]
                if missing:
                    ctx.error("training", f"missing section [training] (required: parameter(s) {missing} "
                                          "have no default)")
                else:
                    points[kind] = [{n: p["default"] for n, p in params.items()}]
            continue
        if sum(k in spec for k in ("grid", "random", "values", "table")) == 1:
            points[kind] = _sample(kind, spec, params, ctx)
    _check_temperature_files(raw, points, ctx)
    return points


def _check_temperature_files(raw: dict, points: dict[str, list[dict]], ctx: _Context) -> None:
    """The temperature file(s) of every training and test point exist (placeholders filled)."""
    from ddrom.hf.problem import fill_placeholders
    from ddrom.io.fields import check_field_path, resolve

    temp = raw.get("temperature", {})
    if "file" not in temp or any(e.startswith(("temperature", "parameters")) for e in ctx.errors):
        return
    pts = points["training"] + points["test"] or [{n: p.get("default") for n, p in raw.get("parameters", {}).items()
                                                    if "default" in p}]
    seen = set()
    templated = "{" in temp["file"]
    for p in pts:
        try:
            shown = fill_placeholders(temp["file"], p, "temperature.file")
            f = resolve(shown, ctx.folder)
        except DdromError as exc:
            if "temperature.file" not in seen:
                ctx.error("temperature.file", str(exc))
                seen.add("temperature.file")
            continue
        if f in seen:
            continue
        seen.add(f)
        if check_field_path(f):
            what = "no file matches" if any(ch in shown for ch in "*?[") else "file"
            ctx.error("temperature.file", f"{what} {shown!r} {'' if what != 'file' else 'not found '}"
                                          f"(looked for {f}){f' for the point {p}' if templated else ''}")
            if len([e for e in ctx.errors if e.startswith("temperature.file")]) >= 5:
                return


# ================================================================================ Case
@dataclass
class Case:
    """A validated case file.

    Attributes
    ----------
    path : Path
        The case file (absolute).
    folder : Path
        Its folder: relative paths of the file are relative to it.
    raw : dict
        The validated content, defaults filled (plain TOML data: strings, numbers, lists,
        tables; expressions are kept as written, compiled ones are in :attr:`expressions`).
    hash : str
        SHA-256 of the file's bytes.
    config_hash : str
        SHA-256 of the canonical JSON of :attr:`raw` (sorted keys): the same for files that
        differ only by comments, formatting, key order or explicitly written defaults.
        Results record it to tell which configuration produced them.
    hf_hash : str
        The same without the ``[rom]``, ``[import]`` and ``[output]`` tables: what the HF
        snapshot stores depend on.
    warnings : list of str
        Non-fatal findings (unknown ``[rom]`` keys, test points outside the training box...),
        each with its path; the CLI prints them on rank 0.
    expressions : dict
        Compiled :class:`~ddrom.expressions.Expression` by dotted path, e.g.
        ``"loads.pressure[0].value"``, ``"loads.traction[1].vector[2]"``,
        ``"temperature.expression"``.
    """

    path: Path
    folder: Path
    raw: dict
    hash: str
    config_hash: str
    warnings: list[str]
    expressions: dict[str, Expression]
    _points: dict[str, list[dict[str, float]]] = field(repr=False, default_factory=dict)
    hf_hash: str = ""
    #: the parsed data as given (before defaults), from which :meth:`replace` derives variants
    data: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], folder: str | Path = ".", path: str | Path | None = None) -> "Case":
        """Validate a case given as a dictionary (the TOML file's content), relative paths
        relative to ``folder``; ``path`` names it in messages and records (default
        ``folder/<case.name>.toml``). Raises :class:`DdromError` listing every error."""
        folder = Path(folder).resolve()
        name = (data.get("case") or {}).get("name", "case") if isinstance(data.get("case"), dict) else "case"
        path = Path(path).resolve() if path is not None else folder / f"{name}.toml"
        text = json.dumps(data, sort_keys=True, default=str).encode()
        return _build_case(dict(data), path, folder, hashlib.sha256(text).hexdigest())

    def replace(self, changes: Mapping[str, Any]) -> "Case":
        """A new case: this one's data with ``changes`` merged in (tables merged key by key,
        other values replaced; a value None removes the key), validated again.

        ``case.replace({"rom": {"pod_tol": 1e-6}, "time": {"t_end": 600.0}})``
        """
        data = _merge(copy.deepcopy(self.data), changes)
        text = json.dumps(data, sort_keys=True, default=str).encode()
        return _build_case(data, self.path, self.folder, hashlib.sha256(text).hexdigest())

    def with_t_end(self, t_end: float) -> "Case":
        """The case run up to ``t_end`` with its step size (``n_steps`` scaled, or ``dt`` kept)."""
        tm = self.raw["time"]
        if "times" in tm:
            raise DdromError(f"{self.path.name}: [time] lists explicit times: give the new times instead of t_end")
        if not (t_end > 0 and math.isfinite(t_end)):
            raise DdromError(f"t_end = {t_end!r}: expected a positive number")
        if "n_steps" in tm:
            n = max(1, round(tm["n_steps"] * t_end / tm["t_end"]))
            if not math.isclose(n * tm["t_end"] / tm["n_steps"], t_end, rel_tol=1e-9):
                raise DdromError(f"t_end = {t_end:g} is not a whole number of steps of {tm['t_end'] / tm['n_steps']:g}")
            return self.replace({"time": {"t_end": float(t_end), "n_steps": int(n)}})
        return self.replace({"time": {"t_end": float(t_end)}})

    @property
    def name(self) -> str:
        return self.raw["case"]["name"]

    @property
    def parameter_names(self) -> list[str]:
        """Parameter names in the order of the file (the order of sample coordinates)."""
        return list(self.raw["parameters"])

    @property
    def output_dir(self) -> Path:
        """``case.output`` resolved against the case folder (not created here)."""
        out = Path(self.raw["case"]["output"])
        return out if out.is_absolute() else self.folder / out

    @property
    def mesh_file(self) -> Path | None:
        f = self.raw["mesh"].get("file")
        return None if f is None else self._resolve(f)

    @property
    def temperature_file(self) -> Path | None:
        f = self.raw["temperature"].get("file")
        return None if f is None else self._resolve(f)

    def _resolve(self, f: str) -> Path:
        p = Path(f)
        return p if p.is_absolute() else self.folder / p

    def store_hash(self, which: str) -> str:
        """What the HF store of parameter set ``which`` depends on: ``hf_hash`` without the
        other set, so that editing the test points does not invalidate the training runs."""
        base = {k: v for k, v in self.raw.items()
                if k not in ("rom", "training", "test", "import", "output", "parameters")}
        # a parameter's scale and period only tell the local-basis classifier how to see it
        base["parameters"] = {n: {k: v for k, v in p.items() if k not in ("scale", "period")}
                              for n, p in self.raw.get("parameters", {}).items()}
        base["points"] = {which: self._points.get(which, [])}
        files = self.input_file_hashes(which)
        if files:
            # the content of the files the HF reads (a temperature field edited in place must
            # not leave an up-to-date store of the old field)
            base["files"] = files
        return hashlib.sha256(json.dumps(base, sort_keys=True, separators=(",", ":"),
                                         allow_nan=False).encode()).hexdigest()

    def input_file_hashes(self, which: str) -> dict[str, str]:
        """SHA-256 of the temperature files of the points of ``which`` (and of a series' frame
        files), by path as the case names them; cached (computed once per case object)."""
        cache = self.__dict__.setdefault("_file_hashes", {})
        if which in cache:
            return cache[which]
        import glob
        import os

        from ddrom.hf.problem import file_sha256, fill_placeholders

        out: dict[str, str] = {}
        temp = self.raw.get("temperature", {})
        if temp.get("file"):
            for p in self._points.get(which, []) or [self.default_parameters()]:
                name = fill_placeholders(temp["file"], p, "temperature.file")
                full = self._resolve(name)
                paths = sorted(glob.glob(str(full))) if any(ch in name for ch in "*?[") else [str(full)]
                for f in paths:
                    out.setdefault(os.path.relpath(f, self.folder), file_sha256(f))
                    for side in _side_files(f):
                        out.setdefault(os.path.relpath(side, self.folder), file_sha256(side))
        cache[which] = out
        return out

    def training_parameters(self) -> list[dict[str, float]]:
        """The training points, ``[{name: value}]`` with every parameter (a fresh copy)."""
        return copy.deepcopy(self._points["training"])

    def test_parameters(self) -> list[dict[str, float]]:
        """The test points (empty without a ``[test]`` section)."""
        return copy.deepcopy(self._points["test"])

    def times(self) -> np.ndarray:
        """End times of the steps (the initial state, t = 0, excluded), increasing.

        ``times`` as given; or ``t_end * k / n_steps``; or ``k dt`` up to ``t_end`` (the
        last step is shorter when ``dt`` does not divide ``t_end``, up to a relative 1e-9).
        """
        tm = self.raw["time"]
        if "times" in tm:
            return np.array(tm["times"], dtype=float)
        t_end = tm["t_end"]
        if "n_steps" in tm:
            return t_end * np.arange(1, tm["n_steps"] + 1) / tm["n_steps"]
        n = max(1, math.ceil(t_end / tm["dt"] * (1 - 1e-9)))
        t = np.minimum(tm["dt"] * np.arange(1, n + 1), t_end)
        t[-1] = t_end
        return t

    def expression(self, path: str) -> Expression:
        """The compiled expression at a dotted path (KeyError listing the paths if absent)."""
        try:
            return self.expressions[path]
        except KeyError:
            raise KeyError(f"no expression at {path!r}; expressions: {sorted(self.expressions)}") from None

    def default_parameters(self) -> dict[str, float]:
        """``{name: default}`` for the parameters that have a default."""
        return {n: p["default"] for n, p in self.raw["parameters"].items() if "default" in p}


def _side_files(path: str) -> list[str]:
    """Heavy-data files an XDMF or PVD file points to (their content is the field's)."""
    import os
    import re as _re

    low = path.lower()
    if not low.endswith((".xdmf", ".xmf", ".pvd")) or not os.path.isfile(path):
        return []
    text = open(path, encoding="utf-8", errors="replace").read()
    names = _re.findall(r"([\w./-]+\.h5):" if not low.endswith(".pvd") else r'file="([^"]+)"', text)
    base = os.path.dirname(os.path.abspath(path))
    return sorted({os.path.join(base, n) for n in names if os.path.isfile(os.path.join(base, n))})


def validate(data: Mapping[str, Any], folder: Path | str = ".") -> tuple[dict, list[str], list[str], dict, dict]:
    """Validate a parsed case dictionary (see :func:`load_case`).

    Returns
    -------
    raw, errors, warnings, expressions, points
    """
    ctx = _Context(folder=Path(folder))
    params = data.get("parameters")
    if isinstance(params, dict):
        # names usable by expressions: every syntactically valid one (even if its table has
        # errors), so that a bad min/max does not cascade into "unknown name" errors
        valid = [n for n in params if n.isidentifier() and not keyword.iskeyword(n)
                 and n not in SPACE_TIME and n not in RESERVED and n != "tol"]
        is_file = {n: isinstance(params[n], dict) and params[n].get("kind") == "file" for n in valid}
        ctx.parameter_names = tuple(n for n in valid if not is_file[n])
        ctx.file_parameters = tuple(n for n in valid if is_file[n])
    raw = SCHEMA.check(dict(data), "", ctx)
    if raw is _BAD:
        raw = {}
    points = _check_case(raw, ctx)
    return raw, ctx.errors, ctx.warnings, ctx.expressions, points


def load_case(path: str | Path) -> Case:
    """Read and validate a case file.

    Raises
    ------
    DdromError
        The file is missing or not valid TOML, or it has one or more errors; the message
        starts with the file name and lists every error with its dotted path, one per line.
    """
    path = Path(path).resolve()
    try:
        data_bytes = path.read_bytes()
    except OSError as exc:
        raise DdromError(f"cannot read case file {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(data_bytes.decode("utf-8"))
    except UnicodeDecodeError:
        raise DdromError(f"{path.name}: not a UTF-8 text file") from None
    except tomllib.TOMLDecodeError as exc:
        raise DdromError(f"{path.name}: invalid TOML: {exc}") from None
    return _build_case(data, path, path.parent, hashlib.sha256(data_bytes).hexdigest())


def _build_case(data: dict, path: Path, folder: Path, file_hash: str) -> Case:
    raw, errors, warnings, expressions, points = validate(copy.deepcopy(data), folder)
    if errors:
        lines = "\n".join(f"  - {e}" for e in errors)
        raise DdromError(f"{path.name}: {len(errors)} error(s) in the case file:\n{lines}")
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), allow_nan=False)
    # What the HF results depend on: everything but the ROM settings, so that tuning the
    # ROM tolerances does not invalidate (and recompute) the snapshot stores.
    hf_raw = {k: v for k, v in raw.items() if k not in ("rom", "import", "output")}
    hf_canonical = json.dumps(hf_raw, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return Case(path=path, folder=folder, raw=raw, hash=file_hash,
                config_hash=hashlib.sha256(canonical.encode()).hexdigest(), warnings=warnings,
                expressions=expressions, _points=points,
                hf_hash=hashlib.sha256(hf_canonical.encode()).hexdigest(), data=data)


def _merge(base: dict, changes: Mapping[str, Any]) -> dict:
    for k, v in changes.items():
        if v is None:
            base.pop(k, None)
        elif isinstance(v, Mapping) and isinstance(base.get(k), dict):
            # [time] t_end / n_steps / dt / times are one choice: a new one replaces the table
            if k == "time" and any(x in v for x in ("times", "dt", "n_steps")):
                base[k] = {kk: vv for kk, vv in base[k].items() if kk not in ("times", "dt", "n_steps", "t_end")
                           or kk in v}
            _merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base
