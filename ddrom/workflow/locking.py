"""The output-folder lock for library users: one writer per folder, as the ``ddrom`` command does.

The command line takes the lock of the folder a command writes (``ddrom hf``, ``import``,
``offline``, ``calibrate``, ``run``, ``cluster``, ``report``: exclusive; ``ddrom online``:
shared, so that many ROM runs of one case can run side by side) for the whole command --
``ddrom run`` once, across its stages. The library functions themselves do not lock: a
stage called from another (``run`` calls ``hf_sweep``, ``build_rom``, ...) would lock
its own folder twice, and a notebook may run several stages under one lock. A Python
user who may run concurrently with other writers (two notebooks, a batch job) holds it
around the calls::

    with ddrom.output_lock(case, comm):
        ddrom.run_hf(case, comm)
        ddrom.build_rom(case, comm)

The semantics are those of :func:`ddrom.io.lock.acquire`: advisory (``flock``), held by
rank 0, released when the block ends or the process dies (``kill -9`` included); a second
writer gets one :class:`~ddrom.parallel.CollectiveError` (exit code 2 at the command line)
naming the holder, at once.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from ddrom.io.lock import OutputLock, acquire
from ddrom.parallel import get_logger

__all__ = ["output_lock", "output_folder"]


def output_folder(target: Any) -> Path:
    """The folder a lock is taken on: a case's output folder, or the folder given."""
    out = getattr(target, "output_dir", None)
    return Path(out) if out is not None else Path(os.fspath(target))


@contextlib.contextmanager
def output_lock(target: Any, comm: Any, *, shared: bool = False,
                argv: Sequence[str] | None = None) -> Iterator[OutputLock]:
    """Hold the lock of an output folder for the duration of the block (collective).

    Parameters
    ----------
    target
        A :class:`~ddrom.workflow.case.Case` (its ``output_dir``) or a folder path
        (created if missing).
    comm
        Communicator; rank 0 holds the lock.
    shared
        Shared with other shared holders (online runs), refused while an exclusive
        holder writes there, and refusing exclusive holders meanwhile.
    argv
        What is recorded as the holder's command line (default ``sys.argv``).

    Raises
    ------
    CollectiveError
        On every rank when the folder is in use (the holder named) or cannot be locked.
    """
    lock = acquire(output_folder(target), comm, argv=argv, shared=shared)
    log = get_logger(comm)
    if lock.previous:
        prev = lock.previous
        log.info(f"  output folder {lock.folder}: taking over the lock of a command that did not finish "
                 f"('{' '.join(prev.get('argv') or [])}', pid {prev.get('pid', '?')} on {prev.get('host', '?')}, "
                 f"since {prev.get('started', '?')})")
    if lock.removed:
        log.info(f"  output folder {lock.folder}: removed {len(lock.removed)} temporary file(s) left by killed "
                 f"commands: {', '.join(Path(p).name for p in lock.removed[:5])}"
                 + (" ..." if len(lock.removed) > 5 else ""))
    try:
        yield lock
    finally:
        lock.release()              # rank 0's descriptor only: safe on any exit path
