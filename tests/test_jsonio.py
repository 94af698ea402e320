"""Strict JSON written atomically (ddrom.io.jsonio)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from ddrom.io.jsonio import NONFINITE_KEY, dumps, strict, write_json


def _strict_load(text: str):
    """json.loads refusing NaN/Infinity, like a strict reader."""
    def bad(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=bad)


def test_nonfinite_become_null_with_their_paths(tmp_path):
    obj = {"runs": [{"name": "a", "max_indicator": float("nan"), "speedup": 12.5},
                    {"name": "b", "max_indicator": np.float64(np.inf), "errors": np.array([1.0, -np.inf])}],
           "wall": np.float32(1.5), "n": np.int64(3), "ok": np.bool_(True), "path": Path("/x/y")}
    paths = write_json(tmp_path / "s.json", obj)
    assert paths == ["runs[0].max_indicator", "runs[1].max_indicator", "runs[1].errors[1]"]
    data = _strict_load((tmp_path / "s.json").read_text())
    assert data["runs"][0]["max_indicator"] is None and data["runs"][1]["errors"] == [1.0, None]
    assert data[NONFINITE_KEY] == paths
    assert data["wall"] == 1.5 and data["n"] == 3 and data["ok"] is True and data["path"] == "/x/y"


def test_finite_output_has_no_flag_and_matches_json(tmp_path):
    obj = {"a": [1, 2.5, "x", None, True], "b": {"c": (1, 2)}}
    assert write_json(tmp_path / "f.json", obj, indent=None) == []
    assert (tmp_path / "f.json").read_text() == json.dumps(obj) + "\n"
    text, bad = dumps([math.nan, 1.0])
    assert text == "[null, 1.0]" and bad == ["[0]"]
    value, bad = strict(float("-inf"))
    assert value is None and bad == ["(value)"]


def test_unknown_types_refused_or_converted():
    with pytest.raises(TypeError, match="runs.obj: object is not JSON serializable"):
        strict({"runs": {"obj": object()}})
    assert strict({"x": object()}, default=lambda o: "obj")[0] == {"x": "obj"}


def test_atomic_previous_file_intact_on_failure(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text('{"previous": true}\n')
    with pytest.raises(TypeError):
        write_json(target, {"bad": object()})          # fails before anything is written
    assert target.read_text() == '{"previous": true}\n'

    class Boom:
        def __str__(self):
            raise KeyboardInterrupt                     # interrupted while converting
    with pytest.raises(KeyboardInterrupt):
        write_json(target, {"x": Boom()}, default=str)
    assert target.read_text() == '{"previous": true}\n'
    assert sorted(os.listdir(tmp_path)) == ["summary.json"]  # no temporary left behind


def test_write_failure_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "s.json"
    real_replace = os.replace

    def failing_replace(a, b):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        write_json(target, {"a": 1})
    monkeypatch.setattr(os, "replace", real_replace)
    assert os.listdir(tmp_path) == []
