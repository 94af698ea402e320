"""Safe, vectorized numpy expressions from case files (parsed once, never ``eval``).

An :class:`Expression` is a string such as ``"A * tri(t, 10) * (1 + 0.1 * x)"`` written by a
user in a case file. It is parsed with :mod:`ast` **once**, at construction, into a tree of
numpy closures; every name is checked then against the declared set, so a typo fails when
the case file is loaded, not hours later in the middle of a run. Calling the expression
evaluates the closures on scalars or arrays (numpy broadcasting).

Accepted syntax (anything else is rejected at construction):

* numbers (converted to float64: there are no unbounded Python integers, so ``9**9**9`` is
  ``inf``, not a memory bomb), ``True``/``False``;
* the declared names, and the constant ``pi``;
* ``+ - * / ** %``, unary ``-``/``+``, comparisons (chained: ``0 <= x <= 1``), and
  ``and``/``or``/``not`` and ``&``/``|``/``~`` (all elementwise), ``a if c else b``
  (elementwise, as ``where(c, a, b)``);
* calls of the functions of :data:`FUNCTIONS` (plus extra functions given by the caller),
  with positional arguments; list literals only as the tables of ``interp``.

There is no attribute access, subscript, lambda, comprehension, string, starred argument or
keyword argument, and no builtins: the only callables are those of the function table.

Time functions (for cyclic loading; ``t`` any array, the other arguments scalars):

* ``ramp(t, t1)``: ``clip(t / t1, 0, 1)`` -- 0 to 1 linearly over ``[0, t1]``, then 1;
* ``step(t, t0)``: 1 where ``t >= t0``, else 0;
* ``tri(t, period)``: triangle wave, 0 at ``t = k period``, 1 at ``t = (k + 1/2) period``;
* ``cycle(t, period)``: ``0.5 (1 - cos(2 pi t / period))``, a smooth 0 -> 1 -> 0 cycle;
* ``trapezoid(t, period, rise, hold[, fall])``: per period, 0 -> 1 over ``rise``, 1 for
  ``hold``, 1 -> 0 over ``fall`` (default ``rise``), then 0 until the end of the period
  (``rise + hold + fall <= period``);
* ``interp(t, [t0, t1, ...], [v0, v1, ...])``: piecewise-linear table (``np.interp``:
  strictly increasing abscissae, constant beyond the ends). Table entries may be
  expressions of scalar names (e.g. a parameter: ``interp(t, [0, 1, 2], [0, A, 0])``).

Numbers are accepted wherever an expression is (``Expression(2.5)`` is a constant).

Degenerate calls are refused when the expression is built, not at its first evaluation:
a time function whose shape arguments (period, width, table) are constants is checked
then (``tri(t, 0)``, ``ramp(t, -1)``, ``trapezoid(t, 10, 6, 0, 6)``, ``interp(t, [1, 0],
[0, 1])``), and so is a constant divisor of 0 in ``mod(t, 0)`` or ``t % 0``.
"""
from __future__ import annotations

import ast
import inspect
import math
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ddrom.parallel.errors import DdromError

#: longest accepted expression text (characters)
MAX_LENGTH = 2000
#: deepest accepted nesting of the syntax tree (guards against recursion-limit crashes)
MAX_DEPTH = 60

Number = float | int


# ------------------------------------------------------------------------- time functions
def _positive_scalar(fn: str, name: str, value: Any) -> float:
    v = np.asarray(value, dtype=float)
    if v.ndim != 0 or not (float(v) > 0 and math.isfinite(float(v))):
        raise DdromError(f"{fn}(): {name} must be a positive finite number, got {value!r}")
    return float(v)


def ramp(t: Any, t1: Any) -> np.ndarray:
    """``clip(t / t1, 0, 1)``: 0 for ``t <= 0``, linear on ``[0, t1]``, 1 after (``t1 > 0``)."""
    t1 = _positive_scalar("ramp", "t1", t1)
    return np.clip(np.divide(t, t1), 0.0, 1.0)


def step(t: Any, t0: Any) -> np.ndarray:
    """Heaviside step ``1.0`` where ``t >= t0``, else ``0.0``."""
    return np.where(np.greater_equal(t, t0), 1.0, 0.0)


def _phase(fn: str, t: Any, period: Any) -> tuple[np.ndarray, float]:
    period = _positive_scalar(fn, "period", period)
    return np.mod(np.asarray(t, dtype=float), period), period


def tri(t: Any, period: Any) -> np.ndarray:
    """Triangle wave ``1 - |1 - 2 s / period|`` with ``s = t mod period`` (0 -> 1 -> 0 per period)."""
    s, period = _phase("tri", t, period)
    return 1.0 - np.abs(1.0 - 2.0 * s / period)


def cycle(t: Any, period: Any) -> np.ndarray:
    """Smooth cycle ``0.5 (1 - cos(2 pi t / period))`` (0 at multiples of the period, 1 halfway)."""
    period = _positive_scalar("cycle", "period", period)
    return 0.5 * (1.0 - np.cos(2.0 * np.pi * np.divide(t, period)))


def trapezoid(t: Any, period: Any, rise: Any, hold: Any, fall: Any = None) -> np.ndarray:
    """Trapezoidal cycle: with ``s = t mod period``, rises 0 -> 1 on ``[0, rise]``, holds 1 on
    ``[rise, rise + hold]``, falls 1 -> 0 over ``fall`` (default ``rise``), then 0.

    Requires ``rise, fall > 0``, ``hold >= 0`` and ``rise + hold + fall <= period``.
    """
    s, period = _phase("trapezoid", t, period)
    rise = _positive_scalar("trapezoid", "rise", rise)
    fall = rise if fall is None else _positive_scalar("trapezoid", "fall", fall)
    hold = float(np.asarray(hold, dtype=float))
    if not (hold >= 0 and math.isfinite(hold)):
        raise DdromError(f"trapezoid(): hold must be a finite number >= 0, got {hold!r}")
    if rise + hold + fall > period * (1 + 1e-12):
        raise DdromError(f"trapezoid(): rise + hold + fall = {rise + hold + fall} exceeds the period {period}")
    up = s / rise
    down = 1.0 - (s - rise - hold) / fall
    return np.clip(np.minimum(up, down), 0.0, 1.0)


def interp(t: Any, ts: Any, vs: Any) -> np.ndarray:
    """Piecewise-linear table ``np.interp(t, ts, vs)`` (strictly increasing ``ts``, constant beyond)."""
    ts = np.asarray(ts, dtype=float)
    vs = np.asarray(vs, dtype=float)
    if ts.ndim != 1 or ts.shape != vs.shape or ts.size == 0:
        raise DdromError(f"interp(): the two tables must be non-empty lists of scalars of the same length "
                         f"(got shapes {ts.shape} and {vs.shape})")
    if np.any(np.diff(ts) <= 0) or not np.all(np.isfinite(ts)):
        raise DdromError(f"interp(): the abscissae must be finite and strictly increasing, got {ts.tolist()}")
    return np.interp(t, ts, vs)


# --------------------------------------------------------------------------- function table
class _Fn:
    """A callable of the function table with its accepted number of positional arguments."""

    __slots__ = ("fn", "nmin", "nmax", "lists")

    def __init__(self, fn: Callable[..., Any], nmin: int, nmax: int | None = None, lists: tuple[int, ...] = ()):
        self.fn, self.nmin, self.nmax, self.lists = fn, nmin, nmin if nmax is None else nmax, lists


#: Built-in functions: name -> (callable, min args, max args). ``interp`` takes list literals.
FUNCTIONS: dict[str, _Fn] = {
    **{n: _Fn(getattr(np, n), 1) for n in ("abs", "sqrt", "exp", "log", "log10", "sin", "cos", "tan",
                                          "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh",
                                          "sign", "floor", "ceil", "logical_not")},
    **{n: _Fn(getattr(np, n), 2) for n in ("arctan2", "hypot", "minimum", "maximum", "mod",
                                          "logical_and", "logical_or", "logical_xor")},
    "where": _Fn(np.where, 3),
    "clip": _Fn(np.clip, 3),
    "isclose": _Fn(np.isclose, 2, 4),           # isclose(a, b[, rtol[, atol]])
    "ramp": _Fn(ramp, 2),
    "step": _Fn(step, 2),
    "tri": _Fn(tri, 2),
    "cycle": _Fn(cycle, 2),
    "trapezoid": _Fn(trapezoid, 4, 5),
    "interp": _Fn(interp, 3, lists=(1, 2)),
}

#: Time functions whose arguments after ``t`` shape the signal (period, width, table):
#: degenerate constant values are refused when the expression is built.
_SHAPE_ARGUMENTS = frozenset({"ramp", "tri", "cycle", "trapezoid", "interp"})

#: Named constants.
CONSTANTS: dict[str, float] = {"pi": float(np.pi)}

#: Names that user-declared names (parameters, ...) must not take.
RESERVED: frozenset[str] = frozenset(FUNCTIONS) | frozenset(CONSTANTS) | frozenset({"True", "False"})

_BINOPS = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide,
           ast.Pow: np.power, ast.Mod: np.mod, ast.BitAnd: np.logical_and, ast.BitOr: np.logical_or,
           ast.BitXor: np.logical_xor}
#: ``a ** n`` for these constant exponents by products: ``np.power`` takes glibc's ``pow``,
#: ~20x slower on negative bases (a Gaussian hot spot ``exp(-(x / w)**2)`` over a mesh
#: centred on 0: 6.5 ms instead of 1.3 ms per evaluation at 66k points). The product is
#: correctly rounded for n = 2 and within 2 ulp for 3 and 4 (``pow``: within 1 ulp).
_INTEGER_POWERS: dict[float, Callable[[Any], Any]] = {
    2.0: lambda v: np.square(np.asarray(v, dtype=np.float64)),
    3.0: lambda v: np.multiply(np.square(np.asarray(v, dtype=np.float64)), v),
    4.0: lambda v: np.square(np.square(np.asarray(v, dtype=np.float64))),
}


def _small_integer_power(exponent: Any) -> Callable[[Any], Any] | None:
    e = np.asarray(exponent)
    if e.ndim != 0 or not np.issubdtype(e.dtype, np.number) or np.iscomplexobj(e):
        return None
    return _INTEGER_POWERS.get(float(e))


_CMPOPS = {ast.Lt: np.less, ast.LtE: np.less_equal, ast.Gt: np.greater, ast.GtE: np.greater_equal,
           ast.Eq: np.equal, ast.NotEq: np.not_equal}


def _arity(fn: Callable[..., Any]) -> tuple[int, int]:
    """(min, max) positional arguments of a caller-supplied function (ufuncs: ``nin``)."""
    if isinstance(fn, np.ufunc):
        return fn.nin, fn.nin
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 0, 255
    pos = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return sum(p.default is p.empty for p in pos), 255
    return sum(p.default is p.empty for p in pos), len(pos)


Compiled = Callable[[Mapping[str, Any]], Any]


class Expression:
    """A restricted numpy expression, parsed and checked once, evaluated many times.

    Parameters
    ----------
    text : str or float or int
        The expression (see the module documentation), or a number (a constant).
    names : iterable of str
        Names the expression may use (e.g. ``{"x", "y", "z", "t"} | parameters``). ``pi``
        and the functions are always available; a declared name must not be one of them.
    functions : mapping, optional
        Extra functions ``name -> callable`` (e.g. a selector's ``near``); the number of
        positional arguments is checked at construction from their signature.
    what : str
        How error messages name the expression (``"expression"``, ``"selector"``, or a
        case-file path such as ``"loads.pressure[0].value"``).

    Raises
    ------
    DdromError
        Not a string or a number, too long or too deep, syntax error, unsupported syntax,
        a constant that is not a number, an unknown name (the message lists the allowed
        names and functions), a wrong number of arguments, or a declared name clashing
        with a function or constant.

    Attributes
    ----------
    text : str
    names : frozenset of str
        The declared names.
    used : frozenset of str
        The declared names the expression actually uses (e.g. ``"t" not in used`` means
        the value does not depend on time).
    """

    def __init__(self, text: str | Number, names: Iterable[str] = (), functions: Mapping[str, Callable] | None = None,
                 what: str = "expression"):
        self.what = what
        self.names = frozenset(names)
        self._extra = dict(functions or {})
        self.functions: dict[str, _Fn] = dict(FUNCTIONS)
        for name, fn in self._extra.items():
            self.functions[name] = _Fn(fn, *_arity(fn))
        clash = sorted(self.names & (set(self.functions) | set(CONSTANTS)))
        if clash:
            raise DdromError(f"{what}: name(s) {clash} clash with built-in functions or constants")
        if isinstance(text, bool):
            raise DdromError(f"{what}: expected an expression or a number, got {text!r}")
        if isinstance(text, (int, float, np.integer, np.floating)):
            value = float(text)
            if not math.isfinite(value):
                raise DdromError(f"{what}: expected a finite number, got {text!r}")
            self.text = repr(value)
            self.used = frozenset()
            self._fn: Compiled = lambda env, v=np.float64(value): v
            self.constant: float | None = value
            return
        if not isinstance(text, str):
            raise DdromError(f"{what}: expected an expression (a string) or a number, got "
                             f"{type(text).__name__} {text!r}")
        if len(text) > MAX_LENGTH:
            raise DdromError(f"{what}: the expression is longer than {MAX_LENGTH} characters")
        self.text = text.strip()
        try:
            tree = ast.parse(self.text, mode="eval")
        except SyntaxError as exc:
            raise DdromError(f"{self._label()}: syntax error: {exc.msg}") from None
        except (RecursionError, MemoryError, ValueError):
            raise DdromError(f"{self._label()}: the expression is too deeply nested") from None
        used: set[str] = set()
        self._fn = self._compile(tree.body, used, 0)
        self.used = frozenset(used)
        self.constant = None
        if not self.used:
            # no name: evaluate now (catches e.g. bad time-function arguments at load time)
            value = np.asarray(self.evaluate({}))
            if value.ndim == 0 and value.dtype.kind == "f":
                self.constant = float(value)

    # ------------------------------------------------------------------ public
    def __call__(self, **values: Any) -> Any:
        """Evaluate with ``name=value`` keywords (see :meth:`evaluate`)."""
        return self.evaluate(values)

    def evaluate(self, values: Mapping[str, Any], shape: tuple[int, ...] | None = None) -> Any:
        """Evaluate elementwise with numpy broadcasting.

        Parameters
        ----------
        values : mapping
            A value (scalar or array) for every used name; extra entries are ignored, so a
            caller may pass one environment (coordinates, time, all parameters) to every
            expression.
        shape : tuple, optional
            Broadcast the result to this shape (a constant expression otherwise returns a
            scalar).

        Raises
        ------
        DdromError
            A used name without a value, or a function rejecting its arguments.
        """
        missing = self.used - set(values)
        if missing:
            raise DdromError(f"{self._label()}: no value given for {sorted(missing)}")
        with np.errstate(all="ignore"):
            out = self._fn(values)
        if shape is not None:
            out = np.broadcast_to(out, shape)
        return out

    @property
    def is_constant(self) -> bool:
        """True if the expression uses no name (its value is :attr:`constant` if numeric)."""
        return not self.used

    def __repr__(self) -> str:
        return f"Expression({self.text!r}, names={sorted(self.names)})"

    def __reduce__(self):  # picklable (e.g. for mpi4py) as long as the extra functions are
        return (Expression, (self.text, self.names, self._extra, self.what))

    # ----------------------------------------------------------------- compiler
    def _label(self) -> str:
        return f"{self.what} {self.text!r}"

    def _err(self, msg: str) -> DdromError:
        return DdromError(f"{self._label()}: {msg}")

    def _unsupported(self, node: ast.AST) -> DdromError:
        try:
            src = ast.unparse(node)
        except Exception:  # pragma: no cover - unparse of a parsed tree does not fail
            src = type(node).__name__
        return self._err(f"unsupported syntax {src!r} ({type(node).__name__})")

    def _compile(self, node: ast.AST, used: set[str], depth: int) -> Compiled:
        if depth > MAX_DEPTH:
            raise self._err(f"the expression is nested deeper than {MAX_DEPTH} levels")
        sub = lambda n: self._compile(n, used, depth + 1)  # noqa: E731
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool):
                v = np.bool_(node.value)
            elif isinstance(node.value, (int, float)):
                try:
                    v = np.float64(node.value)       # floats only: no unbounded Python integers
                except OverflowError:
                    v = np.float64(np.inf)
            else:
                raise self._err(f"constant {node.value!r} is not a number")
            return lambda env: v
        if isinstance(node, ast.Name):
            name = node.id
            if name in self.names:
                used.add(name)
                return lambda env: env[name]
            if name in CONSTANTS:
                v = np.float64(CONSTANTS[name])
                return lambda env: v
            if name in self.functions:
                raise self._err(f"{name!r} is a function: call it, e.g. {name}(...)")
            raise self._err(self._unknown(name))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            right_used: set[str] = set()
            op, a, b = _BINOPS[type(node.op)], sub(node.left), self._compile(node.right, right_used, depth + 1)
            used |= right_used
            if isinstance(node.op, ast.Mod) and not right_used:
                with np.errstate(all="ignore"):
                    divisor = np.asarray(b({}))
                if divisor.ndim == 0 and float(divisor) == 0.0:
                    raise self._err("'%': the divisor (period) is 0")
            if isinstance(node.op, ast.Pow) and not right_used:
                power = _small_integer_power(b({}))
                if power is not None:
                    return lambda env: power(a(env))
            return lambda env: op(a(env), b(env))
        if isinstance(node, ast.UnaryOp):
            a = sub(node.operand)
            if isinstance(node.op, ast.USub):
                return lambda env: np.negative(a(env))
            if isinstance(node.op, ast.UAdd):
                return a
            return lambda env: np.logical_not(a(env))       # Not, Invert
        if isinstance(node, ast.BoolOp):
            op = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            parts = [sub(v) for v in node.values]

            def boolop(env: Mapping[str, Any]) -> Any:
                out = parts[0](env)
                for p in parts[1:]:
                    out = op(out, p(env))
                return out
            return boolop
        if isinstance(node, ast.Compare):
            if any(type(op) not in _CMPOPS for op in node.ops):
                raise self._unsupported(node)
            ops = [_CMPOPS[type(op)] for op in node.ops]
            terms = [sub(node.left)] + [sub(c) for c in node.comparators]

            def compare(env: Mapping[str, Any]) -> Any:
                left = terms[0](env)
                out = None
                for op, term in zip(ops, terms[1:]):
                    right = term(env)
                    res = op(left, right)
                    out = res if out is None else np.logical_and(out, res)
                    left = right
                return out
            return compare
        if isinstance(node, ast.IfExp):
            c, a, b = sub(node.test), sub(node.body), sub(node.orelse)
            return lambda env: np.where(c(env), a(env), b(env))
        if isinstance(node, ast.Call):
            return self._compile_call(node, used, depth)
        raise self._unsupported(node)

    def _compile_call(self, node: ast.Call, used: set[str], depth: int) -> Compiled:
        if not isinstance(node.func, ast.Name):
            raise self._unsupported(node)
        name = node.func.id
        if name not in self.functions:
            if name in self.names or name in CONSTANTS:
                raise self._err(f"{name!r} is not a function")
            raise self._err(self._unknown(name, function=True))
        spec = self.functions[name]
        if node.keywords:
            raise self._err(f"{name}(): keyword arguments are not allowed (pass arguments by position)")
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise self._unsupported(node)
        n = len(node.args)
        if not spec.nmin <= n <= spec.nmax:
            want = str(spec.nmin) if spec.nmin == spec.nmax else f"{spec.nmin} to {spec.nmax}"
            raise self._err(f"{name}() takes {want} argument(s), got {n}")
        args: list[Compiled] = []
        arg_used: list[set[str]] = []
        for i, a in enumerate(node.args):
            mine: set[str] = set()
            if isinstance(a, (ast.List, ast.Tuple)):
                if i not in spec.lists:
                    raise self._err(f"{name}(): a list is not allowed as argument {i + 1}"
                                    + (" (lists are accepted only as the tables of interp)" if name != "interp" else ""))
                items = [self._compile(e, mine, depth + 2) for e in a.elts]
                args.append(self._table(name, items))
            else:
                args.append(self._compile(a, mine, depth + 1))
            used |= mine
            arg_used.append(mine)
        fn = spec.fn
        self._check_constant_arguments(name, fn, args, arg_used)

        def call(env: Mapping[str, Any]) -> Any:
            vals = [a(env) for a in args]
            try:
                return fn(*vals)
            except DdromError as exc:       # a time function's own message, e.g. "ramp(): ..."
                raise self._err(str(exc)) from None
            except (TypeError, ValueError) as exc:
                raise self._err(f"{name}(): {exc}") from None
        return call

    def _check_constant_arguments(self, name: str, fn: Callable[..., Any], args: list[Compiled],
                                  arg_used: list[set[str]]) -> None:
        """Refuse a degenerate call at construction when its shape arguments are constants.

        ``tri(t, 0)`` depends on ``t``, so it is not evaluated at construction; without this
        check it passed validation and failed at the first evaluation, on every rank
        separately. The time functions (:data:`_SHAPE_ARGUMENTS`) are called once here
        with ``t = 0`` and their constant arguments, so that their own checks (period,
        width, table) run now; ``mod`` with a constant divisor of 0 is refused too.
        Arguments that use a name (a parameter) can only be checked when evaluated.
        """
        if name == "mod" and len(args) == 2 and not arg_used[1]:
            with np.errstate(all="ignore"):
                divisor = np.asarray(args[1]({}))
            if divisor.ndim == 0 and float(divisor) == 0.0:
                raise self._err("mod(): the divisor (period) is 0")
            return
        if name not in _SHAPE_ARGUMENTS or self.functions.get(name) is not FUNCTIONS.get(name):
            return
        if any(arg_used[1:]):
            return
        try:
            with np.errstate(all="ignore"):
                fn(np.float64(0.0), *[a({}) for a in args[1:]])
        except DdromError as exc:
            raise self._err(str(exc)) from None
        except (TypeError, ValueError) as exc:
            raise self._err(f"{name}(): {exc}") from None

    def _table(self, fname: str, items: list[Compiled]) -> Compiled:
        def table(env: Mapping[str, Any]) -> np.ndarray:
            vals = [np.asarray(f(env), dtype=float) for f in items]
            if any(v.ndim for v in vals):
                raise self._err(f"{fname}(): table entries must be scalars (numbers or expressions "
                                "of scalar names such as parameters)")
            return np.array(vals, dtype=float)
        return table

    def _unknown(self, name: str, function: bool = False) -> str:
        import difflib
        pool = sorted(self.functions) if function else sorted(self.names | set(CONSTANTS))
        close = difflib.get_close_matches(name, pool, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        kind = " (called as a function)" if function else ""
        allowed = ", ".join(sorted(self.names | set(CONSTANTS)))
        if function:
            return f"unknown name {name!r}{kind}{hint}; functions: {', '.join(sorted(self.functions))}"
        return f"unknown name {name!r}{hint}; allowed names: {allowed}"


def as_expression(value: Any, names: Iterable[str] = (), functions: Mapping[str, Callable] | None = None,
                  what: str = "expression") -> Expression:
    """``value`` if it is already an :class:`Expression`, else ``Expression(value, names, ...)``."""
    if isinstance(value, Expression):
        return value
    return Expression(value, names, functions, what)
