"""Material parameters: constants or temperature tables, with validation.

A parameter in a case file is either a number or a table
``{"T": [T0, T1, ...], "value": [v0, v1, ...]}`` with strictly increasing ``T``.
Tables are interpolated linearly in temperature (``np.interp``) and held constant
beyond their end points. Validation happens once, when a law is built, and every
error is a :class:`~ddrom.parallel.DdromError` whose message names the offending key.
Range checks (``E > 0`` ...) are applied to every table value: a piecewise-linear
interpolant of admissible nodal values stays admissible for the convex ranges used here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from ddrom.parallel.errors import DdromError


@dataclass(frozen=True)
class Parameter:
    """A scalar material parameter, constant or tabulated in temperature.

    Attributes
    ----------
    name : str
        The case-file key (used in error messages and in :meth:`to_config`).
    value : numpy.ndarray
        Shape ``()`` for a constant, ``(m,)`` for a table.
    T : numpy.ndarray or None
        Table temperatures, shape ``(m,)``, strictly increasing; ``None`` for a constant.
    """

    name: str
    value: np.ndarray
    T: np.ndarray | None = None

    @property
    def is_constant(self) -> bool:
        return self.T is None

    def __call__(self, temperature: np.ndarray | float, n: int | None = None) -> np.ndarray:
        """Value at the given temperatures, shape ``(n,)`` (``np.interp``, constant beyond the ends)."""
        temperature = np.asarray(temperature, dtype=float)
        if n is None:
            n = temperature.size if temperature.ndim else 1
        if self.T is None:
            return np.full(n, float(self.value))
        return np.broadcast_to(np.interp(temperature, self.T, self.value), (n,)).copy()

    def bounds(self, T_lo: np.ndarray, T_hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Smallest and largest value over each temperature interval ``[T_lo, T_hi]``
        (arrays of one shape): a piecewise-linear table takes them at the interval's ends
        or at its nodes inside it."""
        lo, hi = np.asarray(T_lo, dtype=float), np.asarray(T_hi, dtype=float)
        if self.T is None:
            return np.full(lo.shape, float(self.value)), np.full(lo.shape, float(self.value))
        a, b = np.interp(lo, self.T, self.value), np.interp(hi, self.T, self.value)
        vmin, vmax = np.minimum(a, b), np.maximum(a, b)
        for Tk, vk in zip(self.T, self.value):
            inside = (lo <= Tk) & (Tk <= hi)
            vmin = np.where(inside, np.minimum(vmin, vk), vmin)
            vmax = np.where(inside, np.maximum(vmax, vk), vmax)
        return vmin, vmax

    def to_config(self) -> float | dict:
        """Case-file form: a float, or ``{"T": [...], "value": [...]}``."""
        if self.T is None:
            return float(self.value)
        return {"T": [float(t) for t in self.T], "value": [float(v) for v in self.value]}

    @property
    def nodal_values(self) -> np.ndarray:
        """All values that the interpolant takes at its nodes (for range checks)."""
        return np.atleast_1d(self.value)


@dataclass(frozen=True)
class Spec:
    """How one key of a law is read.

    Attributes
    ----------
    default : float or None
        Value when the key is absent; ``None`` means the key is required.
    check : callable or None
        ``check(values) -> bool`` on the array of nodal values.
    requirement : str
        Human-readable statement of ``check`` for the error message (e.g. ``"> 0"``).
    table : bool
        Whether a temperature table is allowed (``T_ref`` must be a number).
    """

    default: float | None = None
    check: Callable[[np.ndarray], bool] | None = None
    requirement: str = ""
    table: bool = True


def positive() -> Spec:
    return Spec(None, lambda v: bool(np.all(v > 0)), "> 0")


def nonnegative(default: float | None = 0.0) -> Spec:
    return Spec(default, lambda v: bool(np.all(v >= 0)), ">= 0")


def _number(law: str, key: str, x: Any, where: str = "") -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise DdromError(f"material '{law}': parameter '{key}'{where} must be a number, got {x!r}")
    x = float(x)
    if not math.isfinite(x):
        raise DdromError(f"material '{law}': parameter '{key}'{where} must be finite, got {x!r}")
    return x


def parse_parameter(law: str, key: str, raw: Any, spec: Spec) -> Parameter:
    """Read one parameter (number or table) and check its range.

    Raises
    ------
    DdromError
        Naming ``key``: not a number, malformed table (keys other than ``T`` and
        ``value``, different lengths, empty, ``T`` not strictly increasing), or a
        value outside the admissible range.
    """
    if isinstance(raw, Mapping):
        if not spec.table:
            raise DdromError(f"material '{law}': parameter '{key}' must be a number, not a table")
        extra = set(raw) - {"T", "value"}
        if extra or "T" not in raw or "value" not in raw:
            raise DdromError(f"material '{law}': table '{key}' must have exactly the keys 'T' and 'value'"
                             f" (got {sorted(raw)})")
        ts, vs = raw["T"], raw["value"]
        if not isinstance(ts, (list, tuple, np.ndarray)) or not isinstance(vs, (list, tuple, np.ndarray)):
            raise DdromError(f"material '{law}': table '{key}': 'T' and 'value' must be lists of numbers")
        if len(ts) != len(vs) or len(ts) == 0:
            raise DdromError(f"material '{law}': table '{key}': 'T' and 'value' must be non-empty lists of"
                             f" the same length (got {len(ts)} and {len(vs)})")
        T = np.array([_number(law, key, t, ".T") for t in ts])
        v = np.array([_number(law, key, x, ".value") for x in vs])
        if np.any(np.diff(T) <= 0):
            raise DdromError(f"material '{law}': table '{key}': temperatures 'T' must be strictly"
                             f" increasing (got {list(T)})")
        p = Parameter(key, v, T)
    else:
        p = Parameter(key, np.array(_number(law, key, raw)))
    if spec.check is not None and not spec.check(p.nodal_values):
        raise DdromError(f"material '{law}': parameter '{key}' must be {spec.requirement}"
                         f" (got {p.to_config()!r})")
    return p


def parse_parameters(law: str, cfg: Mapping[str, Any], specs: Mapping[str, Spec],
                     ignore: tuple[str, ...] = ("law",)) -> dict[str, Parameter]:
    """Read every key of ``specs`` from ``cfg``; reject unknown and missing keys.

    Returns
    -------
    dict
        ``{key: Parameter}`` for every key of ``specs`` (defaults filled in).
    """
    unknown = sorted(set(cfg) - set(specs) - set(ignore))
    if unknown:
        raise DdromError(f"material '{law}': unknown parameter(s) {unknown}; allowed: {sorted(specs)}")
    out = {}
    for key, spec in specs.items():
        if key in cfg:
            out[key] = parse_parameter(law, key, cfg[key], spec)
        elif spec.default is None:
            raise DdromError(f"material '{law}': missing required parameter '{key}'")
        else:
            out[key] = Parameter(key, np.array(float(spec.default)))
    return out
