"""Strict JSON, written atomically.

Python's ``json`` writes ``NaN``, ``Infinity`` and ``-Infinity`` for non-finite floats:
not JSON (RFC 8259), and rejected by strict readers (``jq``, JavaScript's
``JSON.parse``, most databases). Here they become ``null``, and the places where it
happened are listed, so that a reader can tell a missing value from a value that was
not a number (e.g. an indicator that diverged).

:func:`strict` converts a value (numpy scalars and arrays, paths, nested dicts, lists
and tuples) and returns the dotted paths of the non-finite numbers it replaced;
:func:`dumps` returns the text; :func:`write_json` writes a file through
:func:`ddrom.io.atomic.atomic_path` (a temporary file renamed into place, removed on
any failure) and, for a dict, records the replaced paths under the key
:data:`NONFINITE_KEY`.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import PurePath
from typing import Any, Callable

import numpy as np

from ddrom.io.atomic import atomic_path

__all__ = ["NONFINITE_KEY", "strict", "dumps", "write_json"]

#: Key added to a top-level dict by :func:`write_json`: the paths of the non-finite
#: numbers written as null (absent when there were none).
NONFINITE_KEY = "nonfinite_as_null"


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def strict(obj: Any, default: Callable[[Any], Any] | None = None) -> tuple[Any, list[str]]:
    """A JSON-ready copy of ``obj`` with non-finite floats replaced by None.

    Parameters
    ----------
    obj
        dicts (keys converted to str), lists, tuples, numpy arrays and scalars,
        ``pathlib`` paths, str, int, float, bool, None.
    default
        Called on any other object to get a JSON-able value (e.g. ``str``); without
        it such objects raise TypeError naming their path.

    Returns
    -------
    (value, paths)
        ``paths``: where non-finite numbers were, as ``a.b[3].c`` (dict keys dotted,
        list indices in brackets).
    """
    bad: list[str] = []

    def conv(x: Any, where: str) -> Any:
        if x is None or isinstance(x, (str, bool)):
            return x
        if isinstance(x, (int, np.integer)) and not isinstance(x, np.bool_):
            return int(x)
        if isinstance(x, np.bool_):
            return bool(x)
        if isinstance(x, (float, np.floating)):
            v = float(x)
            if math.isfinite(v):
                return v
            bad.append(where or "(value)")
            return None
        if isinstance(x, dict):
            return {str(k): conv(v, _join(where, k)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [conv(v, f"{where}[{i}]") for i, v in enumerate(x)]
        if isinstance(x, np.ndarray):
            return conv(x.tolist(), where)
        if isinstance(x, np.generic):
            return conv(x.item(), where)
        if isinstance(x, PurePath):
            return str(x)
        if default is not None:
            return conv(default(x), where)
        raise TypeError(f"{where or 'value'}: {type(x).__name__} is not JSON serializable")

    return conv(obj, ""), bad


def dumps(obj: Any, *, indent: int | None = None, sort_keys: bool = False,
          default: Callable[[Any], Any] | None = None) -> tuple[str, list[str]]:
    """``(text, paths)``: strict JSON text of ``obj`` and where non-finite numbers became null."""
    value, bad = strict(obj, default)
    return json.dumps(value, indent=indent, sort_keys=sort_keys, allow_nan=False), bad


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = False,
               default: Callable[[Any], Any] | None = None, flag: bool = True) -> list[str]:
    """Write ``obj`` as strict JSON to ``path``, atomically (one process).

    Non-finite numbers are written as null; when ``obj`` is a dict and ``flag`` is
    true, their paths are added under :data:`NONFINITE_KEY`. The file appears at
    ``path`` complete or not at all (a temporary file renamed into place, removed on
    any failure, the previous file intact).

    Returns the paths of the non-finite numbers (empty if none).
    """
    value, bad = strict(obj, default)
    if bad and flag and isinstance(value, dict):
        value = dict(value)
        value[NONFINITE_KEY] = list(bad)
    text = json.dumps(value, indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
    return bad
