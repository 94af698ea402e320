"""Wall-clock timers per named stage, reduced over ranks (max) for reporting."""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Any, Iterator

from ddrom.parallel.comm import as_mpi


class Timers:
    """Accumulates seconds and call counts per stage name.

    ``with timers("assembly"): ...`` adds the elapsed time to "assembly".
    :meth:`summary` returns, per stage, the maximum over ranks (the time the job waited).

    :attr:`listeners` (class-wide) receive ``stage_start(name)`` and
    ``stage_end(name, seconds)`` for every timed stage of every instance, e.g. a
    :class:`~ddrom.parallel.stages.StagePrinter` that shows a command's progress on
    rank 0 without the library code knowing about it.
    """

    #: Objects notified of every stage start/end (see :class:`~ddrom.parallel.stages.StagePrinter`).
    listeners: list = []

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        for lis in Timers.listeners:
            lis.stage_start(name)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            self.seconds[name] += dt
            self.calls[name] += 1
            for lis in Timers.listeners:
                lis.stage_end(name, dt)

    def add(self, name: str, seconds: float, calls: int = 1) -> None:
        self.seconds[name] += seconds
        self.calls[name] += calls

    def summary(self, comm: Any) -> dict[str, dict[str, float]]:
        c = as_mpi(comm)
        names = sorted(set().union(*c.allgather(set(self.seconds))))
        out = {}
        for n in names:
            out[n] = {"seconds": c.allreduce(self.seconds.get(n, 0.0), op=_max()),
                      "calls": c.allreduce(self.calls.get(n, 0), op=_max())}
        return out


def _max():
    from mpi4py import MPI

    return MPI.MAX
