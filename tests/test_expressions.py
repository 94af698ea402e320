"""Safe expressions: values, time functions, rejection of unsafe code, unknown names."""
import pickle

import numpy as np
import pytest

from ddrom.expressions import RESERVED, Expression, cycle, interp, ramp, step, trapezoid, tri
from ddrom.parallel import DdromError

XYZT = {"x", "y", "z", "t"}


def test_values_broadcast_and_parse_once():
    e = Expression("A * sqrt(x**2 + y**2) + 2 * t - z % 0.5", XYZT | {"A"})
    x = np.array([3.0, 0.0, 1.0])
    y = np.array([4.0, 1.0, 0.0])
    out = e(x=x, y=y, z=0.75, t=0.5, A=2.0)
    np.testing.assert_allclose(out, [10.75, 2.75, 2.75], rtol=0, atol=1e-15)
    # second call with other shapes: no re-parse needed, same compiled tree
    np.testing.assert_allclose(e(x=1.0, y=0.0, z=0.0, t=0.0, A=3.0), 3.0)
    assert e.used == {"A", "x", "y", "z", "t"}
    # extra values are ignored; a missing one is an error naming it
    assert Expression("2 * t", XYZT)(t=1.5, x=9.0, B=7) == 3.0
    with pytest.raises(DdromError, match=r"no value given for \['t'\]"):
        Expression("2 * t", XYZT)(x=1.0)


def test_logic_comparisons_and_functions():
    x = np.linspace(-1, 1, 5)                    # -1, -0.5, 0, 0.5, 1
    e = Expression("-0.5 <= x < 1 and not (x == 0)", {"x"})
    np.testing.assert_array_equal(e(x=x), [False, True, False, True, False])
    np.testing.assert_array_equal(Expression("(x > 0) | (x < -0.9)", {"x"})(x=x), [1, 0, 0, 1, 1])
    np.testing.assert_allclose(Expression("where(x > 0, x, 0) + clip(x, -0.6, 0.2)", {"x"})(x=x),
                               [-0.6, -0.5, 0.0, 0.7, 1.2])
    np.testing.assert_allclose(Expression("2 if x > 0 else -3", {"x"})(x=x), [-3, -3, -3, 2, 2])
    np.testing.assert_allclose(Expression("exp(log(2)) + tanh(0) + arctan2(1, 1) * 4 / pi", set())(), 3.0)
    np.testing.assert_array_equal(Expression("isclose(x, 0.5) or logical_and(x < 0, x > -0.7)", {"x"})(x=x),
                                  [False, True, False, True, False])
    np.testing.assert_allclose(Expression("maximum(minimum(x, 0.5), -0.5)", {"x"})(x=x), [-.5, -.5, 0, .5, .5])


def test_numbers_are_constant_expressions():
    for v in (2.5, 3, "1.5e3 - 500", np.float64(2.0)):
        e = Expression(v, XYZT)
        assert e.is_constant and e.constant == float(eval(str(v)))  # noqa: S307 (test data)
    assert Expression(2.5)(t=np.ones(4)) == 2.5
    np.testing.assert_array_equal(Expression(2.5).evaluate({}, shape=(2, 3)), np.full((2, 3), 2.5))
    with pytest.raises(DdromError, match="finite"):
        Expression(float("nan"))
    for bad in (True, None, [1.0], {"a": 1}):
        with pytest.raises(DdromError, match="expected an expression"):
            Expression(bad, what="loads.pressure[0].value")
    # integers are floats: no exact big-integer arithmetic
    assert Expression("9 ** 9 ** 9")() == np.inf


def test_time_functions():
    t = np.array([-1.0, 0.0, 0.5, 1.0, 2.0, 2.5, 3.0, 10.25])
    np.testing.assert_allclose(ramp(t, 2.0), [0, 0, 0.25, 0.5, 1, 1, 1, 1])
    np.testing.assert_allclose(step(t, 1.0), [0, 0, 0, 1, 1, 1, 1, 1])
    np.testing.assert_allclose(tri(t, 2.0), [1, 0, 0.5, 1, 0, 0.5, 1, 0.25])
    np.testing.assert_allclose(cycle(t, 2.0), 0.5 * (1 - np.cos(np.pi * t)), atol=1e-15)
    np.testing.assert_allclose(cycle(np.array([0.0, 1.0, 2.0]), 2.0), [0, 1, 0], atol=1e-15)
    # period 4: up over 1, hold 1.5, down over 0.5, zero for 1
    s = np.array([0.0, 0.5, 1.0, 2.0, 2.5, 2.75, 3.0, 3.5, 4.5, 6.75])
    np.testing.assert_allclose(trapezoid(s, 4.0, 1.0, 1.5, 0.5), [0, .5, 1, 1, 1, .5, 0, 0, .5, .5])
    np.testing.assert_allclose(trapezoid(s, 4.0, 1.0, 0.0), [0, .5, 1, 0, 0, 0, 0, 0, .5, 0])
    np.testing.assert_allclose(interp(t, [0, 1, 3], [0, 10, -10]), [0, 0, 5, 10, 0, -5, -10, -10])
    # through expressions, tables may hold scalar parameters
    e = Expression("interp(t, [0, 1, 2], [0, A, -A / 2]) + tri(t, 2) * step(t, 1)", {"t", "A"})
    np.testing.assert_allclose(e(t=np.array([0.5, 1.0, 1.5, 2.0]), A=4.0), [2.0, 5.0, 1.0 + 0.5, -2.0])
    with pytest.raises(DdromError, match="strictly increasing"):
        interp(0.0, [0, 0], [1, 2])
    with pytest.raises(DdromError, match="exceeds the period"):
        trapezoid(0.0, 1.0, 0.5, 0.1, 0.5)
    with pytest.raises(DdromError, match="period must be a positive"):
        tri(0.0, 0.0)
    with pytest.raises(DdromError, match="table entries must be scalars"):
        Expression("interp(t, [0, x], [0, 1])", {"t", "x"})(t=0.0, x=np.ones(3))
    # constant arguments are checked at construction
    with pytest.raises(DdromError, match=r"expression 'ramp\(1, -1\)': .*t1 must be a positive"):
        Expression("ramp(1, -1)")


@pytest.mark.parametrize("text,match", [
    ("__import__('os').system('ls')", "unsupported syntax"),
    ("__import__('os')", "unknown name '__import__'"),
    ("x.__class__", "unsupported syntax .*Attribute"),
    ("(1).real", "unsupported syntax"),
    ("x[0]", "unsupported syntax .*Subscript"),
    ("lambda: 1", "unsupported syntax .*Lambda"),
    ("[c for c in (1, 2)]", "unsupported syntax .*ListComp"),
    ("{c: 1 for c in (1,)}", "unsupported syntax .*DictComp"),
    ("(c for c in (1,))", "unsupported syntax"),
    ("open('f')", "unknown name 'open'"),
    ("eval('1')", "unknown name 'eval'"),
    ("'a' + 'b'", "constant 'a' is not a number"),
    ("x in (1, 2)", "unsupported syntax"),
    ("x is 1", "unsupported syntax"),
    ("[1, 2]", "unsupported syntax"),
    ("sin([1, 2])", "list is not allowed"),
    ("sin(x=1)", "keyword arguments are not allowed"),
    ("sin(*x)", "unsupported syntax"),
    ("sin(1, 2)", r"sin\(\) takes 1 argument\(s\), got 2"),
    ("trapezoid(t, 1)", r"takes 4 to 5 argument"),
    ("x := 1", "syntax error"),
    ("x >", "syntax error"),
    ("sin + 1", "'sin' is a function"),
    ("t(1)", "'t' is not a function"),
    ("-" * 100 + "1", "nested"),
    ("1 + " * 1000 + "1", "longer than|nested"),
])
def test_unsafe_or_unsupported_code_is_rejected_at_construction(text, match):
    with pytest.raises(DdromError, match=match):
        Expression(text, XYZT)


def test_unknown_names_are_listed_with_a_suggestion():
    with pytest.raises(DdromError) as exc:
        Expression("amplitude * tri(t, 10)", XYZT | {"amplitud"}, what="loads.traction[0].vector[0]")
    msg = str(exc.value)
    assert msg.startswith("loads.traction[0].vector[0] 'amplitude * tri(t, 10)': unknown name 'amplitude'")
    assert "did you mean 'amplitud'?" in msg and "allowed names: amplitud, pi, t, x, y, z" in msg
    with pytest.raises(DdromError, match=r"unknown name 'sinn' \(called as a function\) \(did you mean 'sin'\?\)"):
        Expression("sinn(t)", XYZT)
    # a declared name may not shadow a function or a constant
    with pytest.raises(DdromError, match="clash"):
        Expression("exp", {"exp"})
    assert {"ramp", "pi", "interp", "where"} <= RESERVED


def test_extra_functions_and_pickling():
    e = Expression("near(x, 1) and y > 0", {"x", "y"}, {"near": lambda a, b: abs(a - b) < 0.1})
    np.testing.assert_array_equal(e(x=np.array([1.05, 1.2, 0.95]), y=np.array([1, 1, -1])), [True, False, False])
    with pytest.raises(DdromError, match=r"near\(\) takes 2 argument"):
        Expression("near(x)", {"x"}, {"near": lambda a, b: a})
    f = pickle.loads(pickle.dumps(Expression("A * ramp(t, 2)", {"t", "A"}, what="w")))
    assert f(t=1.0, A=4.0) == 2.0 and f.what == "w" and f.names == {"t", "A"}


def test_small_integer_powers_by_products_match_pow():
    """``a ** 2``, ``** 3``, ``** 4`` are products (np.power is ~20x slower on negative bases):
    the same values as ``np.power`` to 2 ulp, for either sign, arrays and scalars, and a
    float result for an integer base."""
    x = np.linspace(-20.0, 20.0, 4001)
    for n in (2, 3, 4):
        got = Expression(f"(x / 8) ** {n}", XYZT)(x=x, y=0.0, z=0.0, t=0.0)
        ref = np.power(x / 8, float(n))
        assert np.allclose(got, ref, rtol=4 * np.finfo(float).eps, atol=0.0)
        assert np.array_equal(np.sign(got), np.sign(ref))
    assert Expression("(0 - 3) ** 3")() == -27.0
    assert Expression("2 ** 2.5")() == pytest.approx(2 ** 2.5)
    v = Expression("x ** 2", XYZT)(x=np.arange(-3, 4), y=0, z=0, t=0)
    assert v.dtype == np.float64 and v.tolist() == [9.0, 4.0, 1.0, 0.0, 1.0, 4.0, 9.0]
    assert Expression("x ** t", XYZT)(x=-2.0, y=0, z=0, t=3.0) == -8.0     # exponent not constant: pow
