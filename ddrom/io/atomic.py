"""Nothing incomplete at a final path: write under a temporary name, rename when complete.

Serial helpers (one process writes): :func:`atomic_path` yields a temporary name next to
the final one and renames it into place only when the block ends normally; on any
exception (``KeyboardInterrupt`` and ``SystemExit`` included) the temporary file is
removed and the exception goes on. :func:`write_text_atomic` and
:func:`write_bytes_atomic` are the common cases.

The temporary name is ``<final>.tmp.<pid>`` (two writers never share one, and a
crashed writer's leftover is recognizable by its pid) in the final file's folder, so
that ``os.replace`` is an atomic rename on the same file system. The data are flushed
to the disk (``fsync``) before the rename: after a crash the final path holds the old
file or the new one, never a truncated new one.

The parallel (collective HDF5) kernel is :mod:`ddrom.io.h5atomic`.
"""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "write_text_atomic", "write_bytes_atomic", "remove_quietly", "temporary_name",
           "fsync_path", "os_error_message", "stale_temporaries", "copy_file", "atomic_update"]


def temporary_name(final: str | os.PathLike, tag: str = "tmp") -> str:
    """``<final>.<tag>.<pid>``: a temporary name beside ``final``, private to this process."""
    return f"{os.fspath(final)}.{tag}.{os.getpid()}"


def remove_quietly(path: str | os.PathLike | None) -> None:
    """Remove a file if it exists; never raises (used while another error is on its way)."""
    if path is None:
        return
    try:
        os.remove(path)
    except OSError:
        pass


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a written file to the disk (and, best effort, its folder entry)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:      # some file systems do not sync folders: the rename is still atomic
        pass
    finally:
        os.close(fd)


def os_error_message(exc: BaseException) -> str:
    """The cause of an I/O error in words a user recognizes ("No space left on device").

    ``OSError`` raised by h5py often carries HDF5's own text ("Can't write data") and
    hides the errno in its chain; the errno's ``strerror`` is looked up along
    ``__cause__``/``__context__`` and put first.
    """
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno:
            text = os.strerror(e.errno)
            if isinstance(e.strerror, str) and e.strerror.startswith(text):
                return e.strerror            # ddrom's own, with details after the reason
            own = str(e)
            return text if text in own else f"{text} ({own})" if own else text
        e = e.__cause__ or e.__context__
    text = str(exc)
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES):
        if os.strerror(code).lower() in text.lower():
            return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, sync: bool = True) -> Iterator[str]:
    """Yield a temporary path; rename it to ``final`` when the block ends normally.

    On any exception the temporary file is removed and the exception is re-raised;
    ``final`` is then untouched (the previous version, if any, is intact).
    """
    final = os.fspath(final)
    tmp = temporary_name(final)
    try:
        yield tmp
        if sync and os.path.exists(tmp):
            fsync_path(tmp)
        os.replace(tmp, final)
    except BaseException:
        remove_quietly(tmp)
        raise
    if sync:
        _fsync_dir(os.path.dirname(os.path.abspath(final)))


_FICLONE = 0x40049409          # ioctl(dst, FICLONE, src): Linux reflink (btrfs, XFS, ...)


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy ``src`` to ``dst`` (created or truncated): a copy-on-write clone where the file
    system has one (instant, no extra space until modified), else an in-kernel copy."""
    import fcntl
    import shutil

    with open(src, "rb") as fs, open(dst, "wb") as fd:
        try:
            fcntl.ioctl(fd.fileno(), _FICLONE, fs.fileno())
            return
        except OSError:
            pass
    shutil.copyfile(src, dst)


@contextlib.contextmanager
def atomic_update(final: str | os.PathLike, tmp: str | os.PathLike | None = None) -> Iterator[str]:
    """Modify a complete file without ever modifying it in place (one process).

    Yields a copy (:func:`copy_file`) under a temporary name (``tmp``, default
    :func:`temporary_name`); when the block ends normally the copy is flushed to the disk
    and renamed over ``final``. On any exception the copy is removed and ``final`` is the
    previous version, intact: an update interrupted by a crash, a full disk or a kill
    never leaves a half-modified file at the final path.
    """
    final = os.fspath(final)
    tmp = os.fspath(tmp) if tmp is not None else temporary_name(final)
    try:
        copy_file(final, tmp)
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, final)
    except BaseException:
        remove_quietly(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(final)))


def write_bytes_atomic(path: str | os.PathLike, data: bytes, sync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + rename)."""
    with atomic_path(path, sync=sync) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8", sync: bool = True) -> None:
    """Write ``text`` to ``path`` atomically (temporary file + rename)."""
    write_bytes_atomic(path, text.encode(encoding), sync=sync)


def stale_temporaries(final: str | os.PathLike) -> list[Path]:
    """Temporary files of ``final`` whose writer process is gone (leftovers of a crash)."""
    final = Path(final)
    out = []
    for p in final.parent.glob(final.name + ".*.*"):
        pid = p.name.rsplit(".", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            out.append(p)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
