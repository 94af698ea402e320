"""Collective error handling: one rank fails, every rank stops with the same message.

Two mechanisms, used together:

* :func:`collective` wraps a phase in which ranks do not wait on each other in the
  middle (reading and validating input, local computations). Any exception on any
  rank becomes the same :class:`DdromError` on every rank, after one ``allreduce``.
* The CLI catches what escapes anyway (an error inside a collective PETSc call on one
  rank only) and aborts the whole job with ``MPI_Abort``, so that no rank hangs.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from ddrom.parallel.comm import as_mpi


class DdromError(Exception):
    """An error whose message is meant for the user (bad input, divergence, ...)."""


class CollectiveError(DdromError):
    """A DdromError raised identically on every rank of the communicator.

    The CLI prints it once (rank 0) and every rank exits non-zero on its own; any other
    error may have been raised on some ranks only, so the CLI aborts the whole job.
    """


def raise_collective(comm: Any, message: str | None) -> None:
    """Raise :class:`CollectiveError` on every rank if any rank passes a non-empty message.

    The message of the lowest failing rank is the one shown (the same on all ranks).
    """
    c = as_mpi(comm)
    failed = c.allreduce(c.rank if message else c.size, op=_min())
    if failed < c.size:
        msg = c.bcast(message, root=failed)
        raise CollectiveError(msg)


def check_all(comm: Any, ok: bool, message: str) -> None:
    """Collective assertion: raise ``DdromError(message)`` everywhere if ``ok`` is false anywhere."""
    raise_collective(comm, None if ok else message)


@contextlib.contextmanager
def collective(comm: Any, what: str = "") -> Iterator[None]:
    """Run a block; if it raises on any rank, raise the same ``DdromError`` on all ranks.

    Ranks must not wait on each other inside the block (otherwise a failing rank
    leaves the others blocked before they reach the check).
    """
    message = None
    try:
        yield
    except DdromError as exc:
        message = str(exc)
    except Exception as exc:  # noqa: BLE001 - converted into a collective error
        message = f"{what + ': ' if what else ''}{type(exc).__name__}: {exc}"
    raise_collective(comm, message)


def _min():
    from mpi4py import MPI

    return MPI.MIN
