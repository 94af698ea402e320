"""Rank-0 logging and progress bars (tqdm), silent on other ranks and with ``quiet``."""
from __future__ import annotations

import logging
import sys
import time
from typing import Any

from ddrom.parallel.comm import as_mpi

_LOGGER_NAME = "ddrom"


def get_logger(comm: Any = None) -> logging.Logger:
    """The ``ddrom`` logger; only rank 0 of ``comm`` emits anything."""
    log = logging.getLogger(_LOGGER_NAME if as_mpi(comm).rank == 0 else _LOGGER_NAME + ".silent")
    if as_mpi(comm).rank != 0:
        log.disabled = True
    return log


def configure_logging(level: int = logging.INFO) -> None:
    log = logging.getLogger(_LOGGER_NAME)
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(h)
    log.setLevel(level)
    log.propagate = False


def rank0_print(comm: Any, *args: Any, **kwargs: Any) -> None:
    if as_mpi(comm).rank == 0:
        print(*args, **kwargs, flush=True)


class Progress:
    """A progress bar on rank 0 (steps done, rate, ETA); a no-op elsewhere or when quiet.

    Usage::

        with Progress(comm, total=nsteps, desc="sim 3/8") as bar:
            for ...:
                bar.update(1, newton=4)
    """

    def __init__(self, comm: Any, total: int | None, desc: str = "", quiet: bool = False,
                 unit: str = "step"):
        self._bar = None
        self.t0 = time.perf_counter()
        if as_mpi(comm).rank == 0 and not quiet:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr,
                             dynamic_ncols=True, mininterval=0.5, leave=True)

    def update(self, n: int = 1, **postfix: Any) -> None:
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)

    def write(self, msg: str) -> None:
        if self._bar is not None:
            self._bar.write(msg, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
