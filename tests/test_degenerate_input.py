"""Degenerate expressions and time grids are refused when the case is validated, naming them."""
from __future__ import annotations

import pytest

from ddrom.workflow.case import load_case
from ddrom.expressions import Expression
from ddrom.io.estimate import MAX_TIME_STEPS
from ddrom.parallel import DdromError
from test_case import BASE, errors_of, loads, write


@pytest.mark.parametrize("text, words", [
    ("tri(t, 0)", "tri(): period must be a positive finite number, got 0.0"),
    ("A * tri(t, 2 - 2)", "tri(): period must be a positive"),
    ("ramp(t, -1)", "ramp(): t1 must be a positive"),
    ("cycle(t, 0)", "cycle(): period must be a positive"),
    ("trapezoid(t, 10, 6, 0, 6)", "exceeds the period"),
    ("trapezoid(t, 10, 0, 1)", "rise must be a positive"),
    ("interp(t, [0, 0], [0, 1])", "strictly increasing"),
    ("mod(t, 0)", "mod(): the divisor (period) is 0"),
    ("t % 0", "'%': the divisor (period) is 0"),
])
def test_degenerate_constant_shape_arguments_refused_at_construction(text, words):
    with pytest.raises(DdromError) as info:
        Expression(text, {"t", "A"}, what="loads.traction[0].vector[0]")
    msg = str(info.value)
    assert msg.startswith(f"loads.traction[0].vector[0] {text!r}: ") and words in msg, msg


@pytest.mark.parametrize("text", ["tri(t, 20)", "tri(t, A)", "mod(t, 2)", "interp(t, [0, A], [0, 1])",
                                  "trapezoid(t, 10, 2, 1)", "t % A"])
def test_valid_or_parameter_dependent_calls_pass(text):
    Expression(text, {"t", "A"})       # a parameter-dependent period is checked when evaluated


def test_case_with_degenerate_expression_names_it(tmp_path):
    msg = errors_of(tmp_path, loads('traction = [{ region = "xmax", vector = ["A * tri(t, 0)", 0.0, 0.0] }]')(BASE))
    assert "loads.traction[0].vector[0]" in msg and "tri(): period must be a positive" in msg, msg


@pytest.mark.parametrize("time, key, words", [
    ("t_end = 1.0\ndt = 1e-12", "time.dt", "gives 1e+12 time steps"),
    ("t_end = 1.0\nn_steps = 1000000000", "time.n_steps", "n_steps = 1000000000 is more than"),
])
def test_time_grid_beyond_the_limit_refused(tmp_path, time, key, words):
    text = BASE.replace("t_end = 1.0\nn_steps = 2", time)
    msg = errors_of(tmp_path, text)
    assert key in msg and words in msg, msg
    assert str(MAX_TIME_STEPS) in msg


def test_time_grid_at_the_limit_is_fine(tmp_path):
    case = load_case(write(tmp_path, BASE.replace("t_end = 1.0\nn_steps = 2", "t_end = 1.0\ndt = 0.25")))
    assert len(case.times()) == 4
