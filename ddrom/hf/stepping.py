"""Time-step cut-back shared by the HF and the reduced solvers."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable


#: Line-search policies (:attr:`NewtonOptions.line_search`).
LINE_SEARCH = ("fallback", "always", "never")


@dataclass
class NewtonOptions:
    """Options of a Newton march with line search and cut-backs (HF and reduced solvers).

    Convergence: ``||r|| <= rtol * ref + atol`` (``ref`` as each solver defines it).

    ``line_search``: ``"fallback"`` (default) takes the full Newton step unless it fails --
    a residual that is not finite (a failed constitutive update) or that grows after the first
    iteration -- and only then backtracks (halving, down to 1/16). The first iteration may
    grow the residual: from the elastic predictor of a plastic increment it routinely does,
    and that step is where quadratic convergence starts. Plain Newton's growth from later
    iterates is how its 2-cycles on plastic problems begin (measured: a thermally loaded J2
    box cycled at a relative residual ~0.9 for 25 iterations and cut back 5 times, where
    backtracking on any later growth needs no cut-back); ``"always"``
    backtracks at every iteration until the residual decreases enough (Armijo): safe, but on
    plastic problems whose residual does not decrease monotonically it turns quadratic
    convergence into slow halving (measured: 3x the iterations on a J2 cantilever);
    ``"never"`` is plain Newton. ``True``/``False`` mean ``"fallback"``/``"never"``.
    """

    rtol: float = 1e-8
    atol: float = 1e-12
    max_iterations: int = 25
    line_search: str = "fallback"
    max_cutbacks: int = 6

    def __post_init__(self) -> None:
        if isinstance(self.line_search, bool):
            self.line_search = "fallback" if self.line_search else "never"
        if self.line_search not in LINE_SEARCH:
            from ddrom.parallel import DdromError

            raise DdromError(f"line_search {self.line_search!r}: expected one of {', '.join(LINE_SEARCH)}")


class LineSearch:
    """The backtracking decision of one Newton solve (see :attr:`NewtonOptions.line_search`).

    Usage per iteration: ``alpha = 1``; evaluate the residual norm ``n_t`` at ``u + alpha du``;
    while ``search.backtrack(n_t, n, alpha)``: ``alpha /= 2`` and evaluate again; then
    ``search.accepted(n_t, n)``.
    """

    def __init__(self, policy: str):
        self.policy = policy
        self.iterations = 0       # accepted updates so far

    def backtrack(self, norm_t: float, norm: float, alpha: float) -> bool:
        if self.policy == "never" or alpha < 1.0 / 16:
            return False
        if not math.isfinite(norm_t):
            return True
        if self.policy == "always":
            return norm_t > (1.0 - 1e-4 * alpha) * norm
        # fallback: the first update's growth is Newton's own business, a later one is not
        return norm_t > norm and self.iterations >= 1

    def accepted(self, norm_t: float, norm: float) -> None:
        self.iterations += 1


class NotConverged(Exception):
    """An attempt at one increment failed; the caller may cut the increment."""


class CutbacksExhausted(Exception):
    """Still failing after the allowed number of cut-backs."""

    def __init__(self, message: str, t_from: float, t_to: float, cutbacks: int):
        super().__init__(message)
        self.t_from, self.t_to, self.cutbacks = t_from, t_to, cutbacks


def advance(state: Any, t_of: Callable[[Any], float], t: float, attempt: Callable[[Any, float], Any],
            max_cutbacks: int) -> tuple[Any, int]:
    """Advance ``state`` to time ``t``, halving the failing increment up to ``max_cutbacks`` times.

    ``attempt(state, t_new)`` returns the state at ``t_new`` or raises :class:`NotConverged`.
    Returns the state at ``t`` and the number of cut-backs. Raises
    :class:`CutbacksExhausted` (with the last failure's message and failing increment).
    """
    pending, depth, cuts = [t], {t: 0}, 0
    while pending:
        target = pending[-1]
        try:
            state = attempt(state, target)
            pending.pop()
        except NotConverged as exc:
            if depth[target] >= max_cutbacks:
                raise CutbacksExhausted(str(exc), t_of(state), target, cuts) from None
            cuts += 1
            mid = 0.5 * (t_of(state) + target)
            depth[mid] = depth[target] = depth[target] + 1
            pending.append(mid)
    return state, cuts
