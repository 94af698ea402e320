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

Shared holders
--------------
Commands that only add files of their own to a folder (``ddrom online`` writes
``online_<point>.*``, and job arrays run many of them side by side on one case) take
the lock *shared* (``shared=True``): any number of them at a time, none while an
exclusive holder (``hf``, ``offline``, ``calibrate``, ``run``, ...) works there, and no
exclusive holder while one of them runs. A shared holder records itself in
``<folder>/.ddrom.lock.d/<host>.<pid>.json``, a file it keeps locked (so that a record
whose holder died is recognized and removed by the next one who looks), and an
exclusive writer refused by shared holders names them. Files that two shared holders may
both write (a reconstruction ``rom_fields.h5``) are written under private temporary
names (``*.partial.<pid>``, ``*.tmp.<pid>``) and renamed whole.

Leftovers
---------
A command killed while writing leaves its private temporaries (``<name>.tmp.<pid>``,
``<name>.partial.<pid>``). The next exclusive holder removes those of the folder (and of
its ``report/`` subfolder) whose process is gone (:attr:`OutputLock.removed`); resumable
``*.partial`` stores are kept.
"""
from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import platform
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ddrom.parallel import CollectiveError, as_mpi, describe_exception

__all__ = ["LOCK_NAME", "OutputLock", "acquire", "read_holder", "shared_holders"]

#: Name of the lock file inside the output folder.
LOCK_NAME = ".ddrom.lock"
#: Folder (inside the output folder) of the records of the shared holders.
SHARED_DIR = LOCK_NAME + ".d"
#: A private temporary of a ddrom writer: ``<final>.tmp.<pid>`` or ``<final>.partial.<pid>``.
_PRIVATE_TMP = re.compile(r"\.(tmp|partial)\.(\d+)$")


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


def shared_holders(folder: str | os.PathLike, prune: bool = True) -> list[dict]:
    """The live shared holders of ``folder`` (their records); records of dead holders are
    removed when ``prune`` (their lock is free: the kernel released it when they died)."""
    d = Path(os.fspath(folder)) / SHARED_DIR
    out = []
    try:
        records = sorted(d.glob("*.json"))
    except OSError:
        return out
    for rec in records:
        try:
            fd = os.open(rec, os.O_RDWR)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:              # locked: its holder is alive
                try:
                    text = os.pread(fd, 1 << 16, 0).decode("utf-8", "replace")
                    out.append(json.loads(text) if text.strip() else {})
                except ValueError:
                    out.append({})
                continue
            if prune:                            # not locked: its holder died
                try:
                    os.unlink(rec)
                except OSError:
                    pass
        finally:
            os.close(fd)
    return out


def _describe_shared(holders: list[dict]) -> str:
    if not holders:
        return _describe(None)
    names = "; ".join(_describe(h) for h in holders[:3]) + (f"; and {len(holders) - 3} more" if len(holders) > 3 else "")
    return f"{len(holders)} command(s) sharing it: {names}"


def _remove_stale_temporaries(folder: str) -> list[str]:
    """Private temporaries (``*.tmp.<pid>``, ``*.partial.<pid>``) of dead processes in the
    folder and its ``report/`` subfolder (the caller holds the exclusive lock)."""
    from ddrom.io.atomic import _alive

    removed = []
    for d in (Path(folder), Path(folder) / "report"):
        try:
            entries = list(d.iterdir())
        except OSError:
            continue
        for p in entries:
            m = _PRIVATE_TMP.search(p.name)
            if m and p.is_file() and not _alive(int(m.group(2))):
                try:
                    p.unlink()
                    removed.append(str(p))
                except OSError:
                    pass
    return removed


@dataclass
class OutputLock:
    """A held lock (returned by :func:`acquire`). Release with :meth:`release` or ``with``.

    Attributes
    ----------
    folder : the locked folder.
    holder : what was written in the lock file (identical on every rank).
    previous : the holder recorded by a process that died holding the lock (a stale
        lock file, taken over), else None.
    shared : held shared (with other shared holders) rather than exclusively.
    removed : private temporaries of killed commands removed when the lock was taken
        (exclusive holders only).
    """

    folder: str
    comm: Any
    holder: dict = field(default_factory=dict)
    previous: dict | None = None
    shared: bool = False
    removed: list = field(default_factory=list)
    _fd: int | None = None
    _record: tuple | None = None

    @property
    def held(self) -> bool:
        """True until released (on every rank; only rank 0 holds the descriptor)."""
        return bool(self.holder)

    def release(self) -> None:
        """Release the lock (rank 0's descriptor; the other ranks hold nothing). Not collective."""
        fd, self._fd = self._fd, None
        record, self._record = self._record, None
        self.holder = {}
        if record is not None:               # remove our record while it is still ours
            rfd, rpath = record
            try:
                os.unlink(rpath)
            except OSError:
                pass
            os.close(rfd)
        if fd is None:
            return
        if not self.shared:
            try:
                os.ftruncate(fd, 0)          # still locked: nobody can read a half-cleared file
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


def acquire(folder: str | os.PathLike, comm: Any, argv: Sequence[str] | None = None,
            shared: bool = False) -> OutputLock:
    """Lock ``folder`` for this command (collective; created if missing).

    Parameters
    ----------
    folder
        The output folder (the lock file is ``folder/.ddrom.lock``).
    comm
        Communicator; rank 0 takes and holds the lock.
    argv
        Command line recorded for whoever finds the folder locked (default ``sys.argv``).
    shared
        Take it shared (see the module docstring): other shared holders are welcome, an
        exclusive holder is not.

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
    payload: tuple = ("", None, None, [])
    fd = record = None
    if c.rank == 0:
        try:
            if argv is None:                  # `ddrom hf case.toml`, not the venv's full path
                argv = [os.path.basename(sys.argv[0])] + sys.argv[1:] if sys.argv else []
            fd, record, holder, previous, removed = _lock_on_root(folder, list(argv), c.size, shared)
            payload = ("", holder, previous, removed)
        except _Busy as busy:
            who = _describe_shared(busy.shared) if busy.holder is None and busy.shared is not None \
                else _describe(busy.holder)
            payload = (f"output folder {folder} is in use by {who}: one command at a time writes a folder "
                       "(ddrom online runs may share one); wait for it to finish, or stop it", None, None, [])
        except BaseException as exc:  # noqa: BLE001 - the verdict goes to every rank
            payload = (_lock_error(folder, exc), None, None, [])
    msg, holder, previous, removed = c.bcast(payload, root=0)
    if msg:
        raise CollectiveError(msg)
    return OutputLock(folder=folder, comm=c, holder=holder, previous=previous, shared=shared, removed=removed,
                      _fd=fd, _record=record)


class _Busy(Exception):
    def __init__(self, holder: dict | None, shared: list[dict] | None = None):
        super().__init__("busy")
        self.holder = holder
        self.shared = shared


def _lock_error(folder: str, exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        return (f"output folder {folder}: the file system does not support locks ({os.strerror(exc.errno)}); "
                "write the outputs to a local or NFSv4 folder")
    return describe_exception(exc, f"output folder {folder}: cannot take the lock")


def _holder(argv: list[str], ranks: int, shared: bool) -> dict:
    return {"host": platform.node(), "pid": os.getpid(), "argv": argv, "ranks": ranks, "cwd": os.getcwd(),
            "shared": shared, "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def _lock_on_root(folder: str, argv: list[str], ranks: int, shared: bool
                  ) -> tuple[int, tuple | None, dict, dict | None, list[str]]:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    record = None
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(folder)
            # an exclusive holder writes its name in the lock file; shared holders in records
            raise _Busy(holder, None if holder else shared_holders(folder, prune=False)) from None
        holder = _holder(argv, ranks, shared)
        data = (json.dumps(holder, indent=1) + "\n").encode()
        if shared:
            previous, removed = None, []
            if os.fstat(fd).st_size:          # the name of an exclusive holder that died
                os.ftruncate(fd, 0)
            shared_holders(folder)            # prune the records of dead holders
            d = os.path.join(folder, SHARED_DIR)
            os.makedirs(d, exist_ok=True)
            rpath = os.path.join(d, f"{platform.node()}.{os.getpid()}.json")
            rfd = os.open(rpath, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            record = (rfd, rpath)
            fcntl.flock(rfd, fcntl.LOCK_EX)   # ours: locked as long as we live
            os.pwrite(rfd, data, 0)
            return fd, record, holder, previous, removed
        previous = read_holder(folder)        # locked by nobody, yet not empty: its holder died
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        removed = _remove_stale_temporaries(folder)
        return fd, None, holder, previous, removed
    except BaseException:
        if record is not None:
            try:
                os.unlink(record[1])
            except OSError:
                pass
            os.close(record[0])
        os.close(fd)                          # releases the lock if it was taken
        raise
