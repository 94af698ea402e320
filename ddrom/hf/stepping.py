"""Time-step cut-back shared by the HF and the reduced solvers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class NewtonOptions:
    """Options of a Newton march with line search and cut-backs (HF and reduced solvers).

    Convergence: ``||r|| <= rtol * ref + atol`` (``ref`` as each solver defines it).
    """

    rtol: float = 1e-8
    atol: float = 1e-12
    max_iterations: int = 25
    line_search: bool = True
    max_cutbacks: int = 6


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
