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


class _CurrentStream(logging.StreamHandler):
    """A handler writing to whatever ``sys.stdout`` / ``sys.stderr`` is at emit time (they are
    replaced by output capture, e.g. pytest's or contextlib.redirect_stdout)."""

    def __init__(self, name: str):
        super().__init__()
        self._name = name

    @property
    def stream(self):  # type: ignore[override]
        return getattr(sys, self._name)

    @stream.setter
    def stream(self, value) -> None:
        pass


class _Below(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


def configure_logging(level: int = logging.INFO) -> None:
    """Show the library's messages (rank 0 only: other ranks' loggers are disabled): INFO on
    stdout, warnings and errors on stderr (so that machine-readable output on stdout stays
    clean with ``level=WARNING``). Idempotent; a later call changes the level.

    The library itself never prints: without this (a notebook, a script), its messages go
    to Python's logging defaults (warnings on stderr, INFO nowhere unless configured)."""
    log = logging.getLogger(_LOGGER_NAME)
    if not getattr(log, "_ddrom_configured", False):
        out = _CurrentStream("stdout")
        out.addFilter(_Below(logging.WARNING))
        err = _CurrentStream("stderr")
        err.setLevel(logging.WARNING)
        for h in (out, err):
            h.setFormatter(logging.Formatter("%(message)s"))
            log.addHandler(h)
        log._ddrom_configured = True  # type: ignore[attr-defined]
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
