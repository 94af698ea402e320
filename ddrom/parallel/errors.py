"""Collective error handling: one rank fails, every rank stops with the same message.

Two mechanisms, used together:

* :func:`collective` wraps a phase in which ranks do not wait on each other in the
  middle (reading and validating input, local computations). Any exception on any
  rank becomes the same :class:`DdromError` on every rank, after one ``allreduce``.
  "Any" means any :class:`BaseException`: a library that calls ``sys.exit`` (meshio
  does on a file it cannot read), a ``KeyboardInterrupt`` delivered to one rank, or a
  ``BaseException`` subclass would otherwise leave that rank while the others wait
  forever in :func:`raise_collective`.
* The CLI catches what escapes anyway (an error inside a collective PETSc call on one
  rank only, a ``SystemExit`` outside a collective block) and aborts the whole job with
  ``MPI_Abort``, so that no rank hangs.

Code that lets one rank work alone and then calls :func:`raise_collective` (rank 0
reads a file, the others wait) must catch ``BaseException`` there too and turn it into
the message with :func:`describe_exception`.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, TypeVar

from ddrom.parallel.comm import as_mpi

T = TypeVar("T")

#: Exit status of a command stopped by an error (bad input, a fault found collectively).
EXIT_ERROR = 2
#: Exit status of a command stopped by a KeyboardInterrupt (128 + SIGINT, as shells do).
EXIT_INTERRUPTED = 130


class DdromError(Exception):
    """An error whose message is meant for the user (bad input, divergence, ...)."""


class CollectiveError(DdromError):
    """A DdromError raised identically on every rank of the communicator.

    The CLI prints it once (rank 0) and every rank exits with :attr:`exit_code` on its
    own; any other error may have been raised on some ranks only, so the CLI aborts the
    whole job.

    Parameters
    ----------
    message : str
        What went wrong, for the user.
    exit_code : int
        Exit status the command should end with on every rank: 2 (bad input or a fault,
        the default), 130 when the cause was a ``KeyboardInterrupt`` on some rank.
    """

    def __init__(self, message: str = "", exit_code: int = EXIT_ERROR):
        super().__init__(message)
        self.exit_code = int(exit_code)


def describe_exception(exc: BaseException, what: str = "") -> str:
    """A one-line message for ``exc``, prefixed by ``what``, for any kind of exception.

    A :class:`DdromError` keeps its own message (it is meant for the user and names its
    culprit), without the prefix. Exceptions
    that are not errors in the usual sense say what happened, because their text alone
    ("1", "") would be meaningless: ``SystemExit`` names the exit status a library asked
    for, ``KeyboardInterrupt`` says the rank was interrupted.
    """
    prefix = f"{what}: " if what else ""
    if isinstance(exc, DdromError):
        return str(exc)
    if isinstance(exc, SystemExit):
        code = exc.code
        detail = "" if code is None or isinstance(code, int) else f" ({code})"
        status = code if isinstance(code, int) else (0 if code is None else 1)
        return f"{prefix}SystemExit: a library called sys.exit({status}){detail}"
    if isinstance(exc, KeyboardInterrupt):
        return f"{prefix}KeyboardInterrupt: interrupted"
    text = str(exc)
    return f"{prefix}{type(exc).__name__}" + (f": {text}" if text else "")


def exit_code_of(exc: BaseException) -> int:
    """The exit status every rank should end with when ``exc`` stopped a collective phase."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, CollectiveError):
        return exc.exit_code
    return EXIT_ERROR


def raise_collective(comm: Any, message: str | None, exit_code: int = EXIT_ERROR) -> None:
    """Raise :class:`CollectiveError` on every rank if any rank passes a non-empty message.

    The message (and ``exit_code``) of the lowest failing rank is the one shown (the
    same on all ranks).
    """
    c = as_mpi(comm)
    failed = c.allreduce(c.rank if message else c.size, op=_min())
    if failed < c.size:
        msg, code = c.bcast((message, int(exit_code)) if c.rank == failed else None, root=failed)
        raise CollectiveError(msg, exit_code=code)


def root_only(comm: Any, fn: Callable[[], T], what: str = "", root: int = 0, share: bool = True) -> T | None:
    """Run ``fn()`` on rank ``root`` alone; any exception there is raised on every rank.

    The pattern "rank 0 reads or computes, the others wait for the result" hangs the
    others when rank 0 raises (anything, ``SystemExit`` included) before it reaches the
    broadcast. Here the outcome travels in one broadcast: the result, or the message
    (:func:`describe_exception` with ``what``) that every rank raises as a
    :class:`CollectiveError`.

    Parameters
    ----------
    comm
        Communicator (every rank calls).
    fn
        Called on ``root`` only, without arguments.
    what
        Prefix of the message of an exception that is not a :class:`DdromError`.
    root
        The rank that runs ``fn``.
    share
        True: broadcast the result and return it on every rank. False: return it on
        ``root`` only (None elsewhere) and broadcast only the verdict; use this for
        results of the size of the mesh.
    """
    c = as_mpi(comm)
    payload = None
    if c.rank == root:
        try:
            value = fn()
            payload = (None, value if share else None)
        except BaseException as exc:  # noqa: BLE001 - any failure on root must reach every rank
            value = None
            payload = ((describe_exception(exc, what), exit_code_of(exc)), None)
    error, shared = c.bcast(payload, root=root)
    if error is not None:
        raise CollectiveError(error[0], exit_code=error[1])
    if share:
        return shared
    return value if c.rank == root else None


def check_all(comm: Any, ok: bool, message: str) -> None:
    """Collective assertion: raise ``DdromError(message)`` everywhere if ``ok`` is false anywhere."""
    raise_collective(comm, None if ok else message)


@contextlib.contextmanager
def collective(comm: Any, what: str = "") -> Iterator[None]:
    """Run a block; if it raises on any rank, raise the same ``DdromError`` on all ranks.

    Ranks must not wait on each other inside the block (otherwise a failing rank
    leaves the others blocked before they reach the check).

    Every :class:`BaseException` is converted, not only :class:`Exception`: a
    ``SystemExit`` or ``KeyboardInterrupt`` on one rank must not let that rank leave
    while the others wait in :func:`raise_collective`. The message names the kind
    (:func:`describe_exception`); a ``KeyboardInterrupt`` carries exit code 130.
    """
    message, code = None, EXIT_ERROR
    try:
        yield
    except DdromError as exc:
        message, code = str(exc), exit_code_of(exc)
    except BaseException as exc:  # noqa: BLE001 - converted into a collective error, whatever it is
        message, code = describe_exception(exc, what), exit_code_of(exc)
    raise_collective(comm, message, code)


def _min():
    from mpi4py import MPI

    return MPI.MIN
