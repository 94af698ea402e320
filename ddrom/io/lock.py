"""An advisory lock on an output folder: one ddrom command writes there at a time.

Two ``ddrom hf`` of one case at the same time wrote one store from two jobs and left a
corrupt file at the final path. A command that writes an output folder therefore
takes :func:`acquire` first: rank 0 opens ``<folder>/.ddrom.lock`` and takes an
exclusive ``flock`` on it (non-blocking), then writes who holds it (host, pid,
command line, start time, ranks); the verdict is broadcast, so a second writer gets,
on every rank, one :class:`~ddrom.parallel.CollectiveError` naming the holder.

Properties
----------
* The kernel releases a ``flock`` when its holder dies, however it dies (``kill -9``
  included): a lock file whose holder is gone is not locked, and the next command
  takes it over (:attr:`OutputLock.previous` tells whose it was).
* Release truncates the file while still holding the lock, then closes it; the file
  itself is never removed, because removing it would let two commands lock two
  different files of the same name.
* The descriptor is not inherited by child processes (``os.open`` makes it
  non-inheritable), so a subprocess cannot keep a folder locked after ddrom exits.
* ``flock`` works on local file systems and on NFSv4 (Linux maps it to NFS locks); on
  a file system without locks, :func:`acquire` fails with a message saying so.
"""
from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import platform
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

from ddrom.parallel import CollectiveError, as_mpi, describe_exception

__all__ = ["LOCK_NAME", "OutputLock", "acquire", "read_holder"]

#: Name of the lock file inside the output folder.
LOCK_NAME = ".ddrom.lock"


def read_holder(folder: str | os.PathLike) -> dict | None:
    """What the lock file of ``folder`` says about its holder (None if empty or unreadable)."""
    try:
        with open(os.path.join(os.fspath(folder), LOCK_NAME), encoding="utf-8") as fh:
            text = fh.read()
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None


def _describe(h: dict | None) -> str:
    if not h:
        return "another process (it has not written its name yet)"
    cmd = " ".join(h.get("argv") or []) or "?"
    return (f"'{cmd}' (pid {h.get('pid', '?')} on host {h.get('host', '?')}, {h.get('ranks', '?')} rank(s), "
            f"since {h.get('started', '?')})")


@dataclass
class OutputLock:
    """A held lock (returned by :func:`acquire`). Release with :meth:`release` or ``with``.

    Attributes
    ----------
    folder : the locked folder.
    holder : what was written in the lock file (identical on every rank).
    previous : the holder recorded by a process that died holding the lock (a stale
        lock file, taken over), else None.
    """

    folder: str
    comm: Any
    holder: dict = field(default_factory=dict)
    previous: dict | None = None
    _fd: int | None = None

    @property
    def held(self) -> bool:
        """True until released (on every rank; only rank 0 holds the descriptor)."""
        return bool(self.holder)

    def release(self) -> None:
        """Release the lock (rank 0's descriptor; the other ranks hold nothing). Not collective."""
        fd, self._fd = self._fd, None
        self.holder = {}
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)              # still locked: nobody can read a half-cleared file
        except OSError:
            pass
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "OutputLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def acquire(folder: str | os.PathLike, comm: Any, argv: Sequence[str] | None = None) -> OutputLock:
    """Lock ``folder`` for this command (collective; created if missing).

    Parameters
    ----------
    folder
        The output folder (the lock file is ``folder/.ddrom.lock``).
    comm
        Communicator; rank 0 takes and holds the lock.
    argv
        Command line recorded for whoever finds the folder locked (default ``sys.argv``).

    Returns
    -------
    OutputLock
        Held until :meth:`OutputLock.release` (or the end of the process).

    Raises
    ------
    CollectiveError
        On every rank, exit code 2: the folder is locked by another process (named),
        or the lock cannot be taken (folder not writable, no lock support).
    """
    c = as_mpi(comm)
    folder = os.fspath(folder)
    payload: tuple = ("", None, None)
    fd = None
    if c.rank == 0:
        try:
            fd, holder, previous = _lock_on_root(folder, list(sys.argv if argv is None else argv), c.size)
            payload = ("", holder, previous)
        except _Busy as busy:
            payload = (f"output folder {folder} is in use by {_describe(busy.holder)}: one command at a time "
                       "writes a folder; wait for it to finish, or stop it", None, None)
        except BaseException as exc:  # noqa: BLE001 - the verdict goes to every rank
            payload = (_lock_error(folder, exc), None, None)
    msg, holder, previous = c.bcast(payload, root=0)
    if msg:
        raise CollectiveError(msg)
    return OutputLock(folder=folder, comm=c, holder=holder, previous=previous, _fd=fd)


class _Busy(Exception):
    def __init__(self, holder: dict | None):
        super().__init__("busy")
        self.holder = holder


def _lock_error(folder: str, exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        return (f"output folder {folder}: the file system does not support locks ({os.strerror(exc.errno)}); "
                "write the outputs to a local or NFSv4 folder")
    return describe_exception(exc, f"output folder {folder}: cannot take the lock")


def _lock_on_root(folder: str, argv: list[str], ranks: int) -> tuple[int, dict, dict | None]:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _Busy(read_holder(folder)) from None
        previous = read_holder(folder)        # locked by nobody, yet not empty: its holder died
        holder = {"host": platform.node(), "pid": os.getpid(), "argv": argv, "ranks": ranks,
                  "cwd": os.getcwd(),
                  "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        data = (json.dumps(holder, indent=1) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        return fd, holder, previous
    except BaseException:
        os.close(fd)                          # releases the lock if it was taken
        raise
