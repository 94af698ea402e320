"""Progress of a multi-stage command on rank 0: one line when a stage starts and ends.

The library times its stages with :class:`~ddrom.parallel.timers.Timers`
(``with timers("pod_displacement"): ...``). A :class:`StagePrinter`, active in a
``with`` block, listens to every ``Timers`` instance and prints, on rank 0 only::

    [offline] pod_displacement ...
    [offline] pod_displacement done in 1.23 s (elapsed 3.4 s)

so that a command shows what is running without the library code printing anything.
Only the stage names given are printed (the HF solver's own ``assembly`` or
``linear_solve`` timers are not stages of a command), but every timed stage is
recorded in :attr:`StagePrinter.timers`, whose :meth:`~ddrom.parallel.timers.Timers.summary`
gives the seconds per stage (max over ranks, nested stages included in their parents)
for a command's JSON output.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Iterable, TextIO

from ddrom.parallel.comm import as_mpi
from ddrom.parallel.timers import Timers


class StagePrinter:
    """Print the start and end of named stages on rank 0 while active; record all stage times.

    Parameters
    ----------
    comm
        Communicator; only its rank 0 prints.
    label
        Prefix of every line (the command name).
    stages
        Stage names to print; None prints every stage timed by any :class:`Timers`.
    quiet
        Print nothing (the stage times are still recorded in :attr:`timers`).
    stream
        Where to print (default ``sys.stderr``, like the progress bars, so that
        ``--json -`` keeps stdout clean).
    """

    def __init__(self, comm: Any, label: str, stages: Iterable[str] | None = None, quiet: bool = False,
                 stream: TextIO | None = None):
        self.label = label
        self.stages = None if stages is None else set(stages)
        self.show = as_mpi(comm).rank == 0 and not quiet
        self.stream = stream
        self.t0 = time.perf_counter()
        #: Every stage timed while active (rank-local seconds and calls; ``summary(comm)`` reduces).
        self.timers = Timers()

    def _print(self, name: str, msg: str) -> None:
        if self.show and (self.stages is None or name in self.stages):
            print(f"[{self.label}] {name} {msg}", file=self.stream or sys.stderr, flush=True)

    def stage_start(self, name: str) -> None:
        self._print(name, "...")

    def stage_end(self, name: str, seconds: float) -> None:
        self.timers.add(name, seconds)
        self._print(name, f"done in {seconds:.2f} s (elapsed {time.perf_counter() - self.t0:.1f} s)")

    def __enter__(self) -> "StagePrinter":
        Timers.listeners.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        Timers.listeners.remove(self)
