"""The shared kernel of ddrom's parallel HDF5 writers: atomic, checksummed, fault-safe.

:class:`ParallelH5` is one HDF5 file open on every rank of a communicator (driver
``mpio``), written under a temporary name (``<path>.partial``) and renamed to its final
path by :meth:`ParallelH5.commit` once closed: a file at the final path is always
complete. Its datasets carry Fletcher32 checksums (:mod:`ddrom.io.integrity`); its
collective reads and writes (:meth:`~ParallelH5.write`, :meth:`~ParallelH5.read`) turn
a failure on any rank into one :class:`~ddrom.parallel.CollectiveError` on every rank
that names the file, the dataset and the cause.

Full disks, measured with Debian's HDF5 1.10.8 and Open MPI 4.1 (a 2 MB tmpfs):

* at 3 ranks a collective write that runs out of space is NOT reported: Open MPI's
  collective I/O (OMPIO, every fcoll component but ``individual``) prints
  "No space left on device" and returns success, so the data are lost silently;
* the next metadata flush (``H5Fflush``, ``H5Fclose``) does fail, and after that the
  file cannot be closed any more: a second close, or HDF5's own clean-up at exit,
  dereferences freed memory (segmentation fault; this is the "PETSc SEGV, exit 59"
  of a full disk during ``ddrom offline``).

Hence two rules, which this module enforces:

1. Space is reserved before HDF5 needs it (:meth:`ParallelH5.reserve`: rank 0
   ``fallocate``\\ s the blocks past the end of the file, ``FALLOC_FL_KEEP_SIZE``, plus
   :data:`SLACK` for the metadata of the final flush). A full disk is then found
   before anything is written, as a clean error with the file, the cause, the space
   needed and the space free, and the file stays healthy (a resumable store stays
   resumable). Writes into reserved blocks cannot run out of space.
2. After any failed write or flush the file is never flushed again: rank 0 truncates
   it to zero length (which frees the disk and leaves HDF5 nothing to fail on), every
   rank closes it, and it is removed. If a close fails all the same, the process is
   marked: at exit it finalizes MPI and leaves with ``os._exit`` (status 2), before
   HDF5's clean-up could crash.
"""
from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import errno
import os
import shutil
import sys
from typing import Any, Sequence

import numpy as np

from ddrom.io.atomic import os_error_message, remove_quietly
from ddrom.io.integrity import CHECKSUM, CHECKSUM_ATTR, make_dcpl, read_error_message
from ddrom.parallel import CollectiveError, DdromError, as_mpi, collective, describe_exception, raise_collective

__all__ = ["ParallelH5", "PARTIAL_SUFFIX", "SLACK", "reserve_space", "io_error_message", "h5py_mpi", "write_on_root",
           "write_small_h5"]

PARTIAL_SUFFIX = ".partial"
#: Bytes kept reserved past the data for HDF5's metadata (object headers, chunk
#: indexes, the final flush).
SLACK = 1 << 20
_FALLOC_FL_KEEP_SIZE = 1


def h5py_mpi():
    """h5py built with MPI, or a DdromError saying how to get it."""
    import h5py

    if not h5py.get_config().mpi:
        raise DdromError("parallel HDF5 files need h5py built with MPI; import ddrom before h5py "
                         "(it sets H5PY_ALWAYS_USE_MPI) or install a parallel h5py (Debian: python3-h5py-mpi)")
    return h5py


def io_error_message(exc: BaseException, what: str, path: str | os.PathLike | None = None) -> str:
    """``what: <cause>`` with an OSError named by its cause ("No space left on device").

    HDF5 reports a failed write as "file write failed", without the system's reason;
    when ``path`` is given and its file system has (almost) no space left, the message
    says so.
    """
    text = f"{what}: {os_error_message(exc)}" if isinstance(exc, OSError) else describe_exception(exc, what)
    if path is not None and "space" not in text.lower():
        try:
            free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        except OSError:
            free = None
        if free is not None and free < SLACK:
            text += (f" -- {os.strerror(errno.ENOSPC)}: {free / 2**20:.1f} MiB free on the file system of "
                     f"{os.fspath(path)}")
    return text


def write_on_root(comm: Any, fn: Any, what: str, path: str | os.PathLike | None = None) -> Any:
    """``fn()`` on rank 0 (a small file: JSON, a figure, a report), its outcome on every rank.

    The pattern "rank 0 writes, the others go on" leaves the others in their next
    collective call when rank 0 fails (a full disk, a read-only folder). Here any failure
    of ``fn`` is raised on every rank as one :class:`~ddrom.parallel.CollectiveError`
    ``"<what>: <cause>"`` (a full disk named as such, :func:`io_error_message`), with the
    exit code of an interrupt for a ``KeyboardInterrupt``. ``fn`` should write through
    :mod:`ddrom.io.atomic` so that nothing half-written stays behind. Returns ``fn()``'s
    result on every rank (it must be small and picklable).
    """
    from ddrom.parallel import root_only

    def run() -> Any:
        try:
            return fn()
        except (DdromError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - named here, raised on every rank by root_only
            raise DdromError(io_error_message(exc, what, path)) from None

    return root_only(comm, run, what)


def write_small_h5(path: str | os.PathLike, fill: Any) -> None:
    """Write a small HDF5 file (one process): ``fill(f)`` builds it in memory, then its image
    is written atomically (:func:`ddrom.io.atomic.write_bytes_atomic`).

    HDF5 never touches the disk here. Measured on a full tmpfs (serial HDF5 1.10.8, as in
    parallel): once a write fails, HDF5 cannot close the file any more and the process
    dies of a segmentation fault at exit. Built in memory (driver ``core`` without a
    backing store), the file reaches the disk as plain bytes: a full disk is an ordinary
    ``OSError`` ("No space left on device"), the temporary is removed, and a previous file
    at ``path`` stays intact. For files of the size of a reduced model's results, not of
    the mesh.
    """
    import h5py

    from ddrom.io.atomic import write_bytes_atomic
    from ddrom.io.integrity import CHECKSUM, CHECKSUM_ATTR

    f = h5py.File(f"{os.fspath(path)}.image", "w", driver="core", backing_store=False)
    try:
        f.attrs[CHECKSUM_ATTR] = CHECKSUM
        fill(f)
        f.flush()
        image = f.id.get_file_image()
    finally:
        f.close()
    write_bytes_atomic(path, image)


# ------------------------------------------------------------------------- space
_LIBC: Any = None


def _fallocate(fd: int, offset: int, length: int) -> None:
    """fallocate(2) with KEEP_SIZE; OSError on failure (EOPNOTSUPP where unsupported)."""
    global _LIBC
    if _LIBC is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            fn = lib.fallocate
            fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
            fn.restype = ctypes.c_int
            _LIBC = fn
        except (OSError, AttributeError, TypeError):
            _LIBC = False
    if _LIBC is False:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
    if _LIBC(fd, _FALLOC_FL_KEEP_SIZE, int(offset), int(length)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def reserve_space(path: str | os.PathLike, nbytes: int) -> None:
    """Reserve ``nbytes`` of disk past the end of ``path`` (one process; the file exists).

    Uses ``fallocate(FALLOC_FL_KEEP_SIZE)``: the blocks are allocated, the file size is
    unchanged, later writes there cannot fail for lack of space. Where the file system
    has no fallocate, checks the free space instead (a race with other writers remains).

    Raises
    ------
    OSError
        ``ENOSPC`` with a message giving what was needed and what is free.
    """
    path = os.fspath(path)
    nbytes = int(max(0, nbytes))
    size = os.path.getsize(path)
    fd = os.open(path, os.O_WRONLY)
    try:
        _fallocate(fd, size, nbytes)
        return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            if exc.errno == errno.ENOSPC:
                raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: {_need_text(path, nbytes)}",
                              path) from None
            raise OSError(exc.errno, exc.strerror, path) from None
    finally:
        os.close(fd)
    if shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free < nbytes:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: {_need_text(path, nbytes)}", path)


def _need_text(path: str, nbytes: int) -> str:
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    st = os.stat(path)
    held = max(0, st.st_blocks * 512 - st.st_size)      # reserved earlier for this file
    return (f"{nbytes / 2**20:.1f} MiB needed past the end of {os.path.basename(path)}, "
            f"{free / 2**20:.1f} MiB free" + (f" (+{held / 2**20:.1f} MiB already reserved for it)" if held else ""))


# -------------------------------------------------------------- the exit guard
_POISONED: list[int] = []


def _exit_guard() -> None:
    """At exit after a failed HDF5 close: leave before HDF5's clean-up can crash."""
    if not _POISONED:
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:  # noqa: BLE001
        pass
    try:
        from mpi4py import MPI

        if MPI.Is_initialized() and not MPI.Is_finalized():
            MPI.Finalize()
    except Exception:  # noqa: BLE001 - leaving anyway
        pass
    os._exit(_POISONED[0])


def _poison(code: int = 2) -> None:
    if not _POISONED:
        _POISONED.append(int(code))
        atexit.register(_exit_guard)


def poisoned() -> bool:
    """True once a failed close left HDF5 in a state that would crash at exit."""
    return bool(_POISONED)


# ------------------------------------------------------------------ the file
class ParallelH5:
    """A parallel HDF5 file of ddrom (see the module docstring).

    Every method is collective (all ranks of ``comm``, same arguments).

    Attributes
    ----------
    path : final path.
    file : the file open (``path + ".partial"`` while being written, or ``path``).
    f : the ``h5py.File``.
    what : what the file is, for messages ("snapshot store", "ROM file").
    """

    def __init__(self, comm: Any, path: str, file: str, f: Any, what: str, writable: bool):
        self.comm = as_mpi(comm)
        self.path = path
        self.file = file
        self.f = f
        self.what = what
        self.writable = writable
        self.failed = False

    # ------------------------------------------------------------ open/create
    @classmethod
    def create(cls, path: str | os.PathLike, comm: Any, what: str, *, partial: bool = True,
               suffix: str = PARTIAL_SUFFIX, private: bool = False) -> "ParallelH5":
        """Create (truncate) ``path + suffix`` (or ``path`` if not ``partial``) for writing.

        ``private``: the temporary name is ``path + suffix + ".<pid of rank 0>"``, so that
        two commands that may write the same final path at the same time (``ddrom online``
        runs share their output folder) never write into one file: the last one to
        finish replaces the file whole. Not resumable (a resume looks for
        ``path + suffix``); a leftover of a killed run is recognized by its pid
        (:func:`ddrom.io.atomic.stale_temporaries`).

        The root attribute :data:`~ddrom.io.integrity.CHECKSUM_ATTR` is set. Raises a
        CollectiveError naming the file if its folder is missing or the file cannot be
        created; nothing is left behind then.
        """
        h5py = h5py_mpi()
        c = as_mpi(comm)
        path = os.fspath(path)
        if private:
            suffix = f"{suffix}.{c.bcast(os.getpid() if c.rank == 0 else None, root=0)}"
        file = path + suffix if partial else path

        def check_folder() -> None:
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise DdromError(f"{what} {path}: directory {parent} does not exist")

        from ddrom.parallel import root_only

        root_only(c, check_folder, f"{what} {path}")
        f = None
        msg = None
        try:
            f = h5py.File(file, "w", driver="mpio", comm=c)
        except BaseException as exc:  # noqa: BLE001 - reported on every rank
            msg = io_error_message(exc, f"{what} {file}: cannot create", file)
        if c.allreduce(msg is not None, op=_lor()):
            if f is not None:
                # opened on some ranks only: its close is collective and the others would
                # not take part; it stays open, and the exit guard keeps HDF5's clean-up away
                _poison()
            if c.rank == 0:
                remove_quietly(file)
            raise_collective(c, msg or f"{what} {file}: cannot create (failed on another rank)")
        out = cls(c, path, file, f, what, writable=True)
        out.set_attrs({CHECKSUM_ATTR: CHECKSUM})
        return out

    @classmethod
    def open(cls, file: str | os.PathLike, comm: Any, what: str, mode: str = "r",
             path: str | os.PathLike | None = None) -> "ParallelH5":
        """Open an existing file (``mode`` "r" or "r+"); ``path`` is its final path (default ``file``)."""
        h5py = h5py_mpi()
        c = as_mpi(comm)
        file = os.fspath(file)
        if mode not in ("r", "r+"):
            raise DdromError(f"ParallelH5.open: mode must be 'r' or 'r+', got {mode!r}")
        with collective(c, f"{what} {file}: cannot open"):
            f = h5py.File(file, mode, driver="mpio", comm=c)
        return cls(c, os.fspath(path) if path is not None else file, file, f, what, writable=(mode == "r+"))

    @property
    def is_open(self) -> bool:
        return self.f is not None

    def _file(self) -> Any:
        if self.f is None:
            raise DdromError(f"{self.what} {self.file} is closed")
        return self.f

    # ---------------------------------------------------------------- checks
    def _agree(self, msg: str | None, failure: bool = True) -> None:
        """Collective verdict. A failed write or flush discards the file at once.

        Every rank is here together, so the file is truncated, closed and removed now
        (rule 2 of the module docstring), before anything else can flush it: left
        open, it would be flushed by the garbage collector at exit and crash there.
        """
        try:
            raise_collective(self.comm, msg)
        except CollectiveError as exc:
            if failure:
                self.failed = True
                self._discard()
                raise CollectiveError(f"{exc}; {self.file} was removed", exit_code=exc.exit_code) from None
            raise

    def set_attrs(self, attrs: dict, obj: Any = None) -> None:
        """Set attributes (same values on every rank) of ``obj`` (default: the root)."""
        target = self._file() if obj is None else obj
        msg = None
        try:
            for k, v in attrs.items():
                target.attrs[k] = v
        except BaseException as exc:  # noqa: BLE001
            msg = io_error_message(exc, f"{self.what} {self.file}: cannot set attributes of {target.name}",
                                   self.file)
        self._agree(msg)

    def stamp_attrs(self, obj: Any = None) -> None:
        """Record the digest of the attributes of ``obj`` (default: the root) once they are
        all set (:func:`ddrom.io.integrity.stamp_attrs`; collective)."""
        from ddrom.io.integrity import stamp_attrs

        target = self._file() if obj is None else obj
        msg = None
        try:
            stamp_attrs(target)
        except BaseException as exc:  # noqa: BLE001
            msg = io_error_message(exc, f"{self.what} {self.file}: cannot set attributes of {target.name}",
                                   self.file)
        self._agree(msg)

    def create_group(self, parent: Any, name: str) -> Any:
        """``parent/name`` (intermediate groups too), created collectively with a checked outcome."""
        msg, g = None, None
        try:
            g = parent.create_group(name)
        except BaseException as exc:  # noqa: BLE001
            msg = io_error_message(exc, f"{self.what} {self.file}: cannot create group {parent.name}/{name}",
                                   self.file)
        self._agree(msg)
        return g

    # ------------------------------------------------------------------ data
    def create_dataset(self, group: Any, name: str, shape: Sequence[int], dtype: str = "f8",
                       time_major: bool = False, chunks: Sequence[int] | None = None,
                       compression: str = "none") -> Any:
        """A dataset with Fletcher32 chunks and no fill, compressed losslessly if asked
        (see :func:`ddrom.io.integrity.make_dcpl`)."""
        from h5py import h5d, h5s, h5t

        shape = tuple(int(s) for s in shape)
        tid = {"f8": h5t.IEEE_F64LE, "i8": h5t.STD_I64LE}[dtype]
        msg = None
        try:
            dcpl = make_dcpl(shape, 8, time_major=time_major, chunks=chunks, compression=compression)
            h5d.create(group.id, name.encode(), tid, h5s.create_simple(shape), dcpl=dcpl)
        except BaseException as exc:  # noqa: BLE001
            msg = io_error_message(exc, f"{self.what} {self.file}: cannot create dataset {group.name}/{name}",
                                   self.file)
        self._agree(msg)
        return group[name]

    def write_array(self, group: Any, name: str, data: Any) -> Any:
        """Create ``group/name`` holding ``data``, the same array on every rank (replicated,
        e.g. the small reduced operators of a ROM file), with its checksum.

        Arrays get Fletcher32 chunks and are written collectively from rank 0 (parallel
        HDF5 refuses an independent write through a filter, which is what
        ``h5py.Group.create_dataset(data=...)`` would do); scalars are stored
        contiguous with a SHA-256 digest attribute; empty arrays hold nothing.
        Distributed arrays: :meth:`create_dataset` then :meth:`write` of each rank's slice.
        """
        from ddrom.io.integrity import stamp_digest

        a = np.asarray(data)
        a = np.ascontiguousarray(a) if a.ndim else a       # (ascontiguousarray makes a scalar 1-D)
        if a.dtype.kind not in "fiub":
            raise DdromError(f"{self.what} {self.file}: dataset {group.name}/{name}: only numeric arrays "
                             f"(got {a.dtype})")
        if a.ndim == 0 or 0 in a.shape:
            msg, d = None, None
            try:
                d = group.create_dataset(name, data=a)
                if a.ndim == 0:
                    stamp_digest(d, a)
            except BaseException as exc:  # noqa: BLE001
                msg = io_error_message(exc, f"{self.what} {self.file}: cannot write dataset {group.name}/{name}",
                                       self.file)
            self._agree(msg)
            return d
        dtype = "i8" if a.dtype.kind in "iub" else "f8"
        d = self.create_dataset(group, name, a.shape, dtype)
        self.write(d, (0,) * a.ndim, a if self.comm.rank == 0 else np.zeros((0,) * a.ndim))
        return d

    @staticmethod
    def _spaces(dset: Any, start: Sequence[int], count: Sequence[int]):
        """File and memory dataspaces of the block ``start:start+count`` (empty if a count is 0)."""
        from h5py import h5s

        fspace = dset.id.get_space()
        mspace = h5s.create_simple(tuple(int(c) for c in count))
        if all(c > 0 for c in count):
            fspace.select_hyperslab(tuple(int(s) for s in start), tuple(int(c) for c in count))
        else:
            # an empty selection still takes part in the collective transfer (h5py's
            # __setitem__ would return early and leave the other ranks waiting)
            fspace.select_none()
            mspace.select_none()
        return fspace, mspace

    @staticmethod
    def _dxpl():
        from h5py import h5fd, h5p

        p = h5p.create(h5p.DATASET_XFER)
        p.set_dxpl_mpio(h5fd.MPIO_COLLECTIVE)
        return p

    def write(self, dset: Any, start: Sequence[int], data: np.ndarray) -> None:
        """Collective write of ``data`` at ``start`` (every rank, possibly empty data).

        A failure on any rank raises the same CollectiveError everywhere, naming the
        file, the dataset and the cause, and marks the file failed (:meth:`close` then
        removes it).
        """
        data = np.ascontiguousarray(data, dtype=dset.dtype)
        if 0 in dset.shape:      # no storage at all; the same on every rank
            return
        msg = None
        try:
            fspace, mspace = self._spaces(dset, start, data.shape)
            dset.id.write(mspace, fspace, data, dxpl=self._dxpl())
        except BaseException as exc:  # noqa: BLE001
            msg = io_error_message(exc, f"{self.what} {self.file}: cannot write dataset {dset.name}", self.file)
        self._agree(msg)

    def read(self, dset: Any, start: Sequence[int], count: Sequence[int]) -> np.ndarray:
        """Collective read of the block ``start:start+count``; a checksum failure names the dataset."""
        out = np.empty(tuple(int(c) for c in count), dtype=dset.dtype)
        if 0 in dset.shape:
            return out
        msg = None
        try:
            fspace, mspace = self._spaces(dset, start, count)
            dset.id.read(mspace, fspace, out, dxpl=self._dxpl())
        except BaseException as exc:  # noqa: BLE001
            msg = read_error_message(exc, self.file, dset.name, self.what)
        self._agree(msg, failure=False)
        return out

    def reserve(self, nbytes: int) -> None:
        """Reserve ``nbytes`` (+ :data:`SLACK`) of disk past the end of the file (collective).

        On a full disk: tries to keep :data:`SLACK` for a clean close; raises a
        CollectiveError "<what> <file>: No space left on device: N MiB more needed, M
        MiB free". The file stays healthy (it can still be closed and resumed) unless
        not even the slack could be reserved (then it is marked failed).
        """
        msg, fatal = None, False
        if self.comm.rank == 0:
            try:
                reserve_space(self.file, int(nbytes) + SLACK)
            except BaseException as exc:  # noqa: BLE001
                msg = io_error_message(exc, f"{self.what} {self.file}")
                try:
                    reserve_space(self.file, SLACK)
                except BaseException:  # noqa: BLE001
                    fatal = True
        fatal = bool(self.comm.bcast(fatal, root=0))
        self._agree(msg, failure=fatal)

    def flush(self) -> None:
        """Collective flush; a failure marks the file failed (it cannot be flushed again)."""
        msg = None
        try:
            self._file().flush()
        except BaseException as exc:  # noqa: BLE001
            msg = io_error_message(exc, f"{self.what} {self.file}: cannot flush", self.file)
        self._agree(msg)

    # ------------------------------------------------------------------ end
    def close(self) -> None:
        """Close (collective). A failed file is truncated, closed and removed instead."""
        if self.f is None:
            return
        if self.failed:
            self._discard()
            return
        msg = None
        try:
            self.f.close()
        except BaseException as exc:  # noqa: BLE001
            msg = io_error_message(exc, f"{self.what} {self.file}: cannot close", self.file)
            _poison()
        self.f = None
        if self.comm.allreduce(msg is not None, op=_lor()):
            self.failed = True
            self.comm.Barrier()
            if self.comm.rank == 0:
                remove_quietly(self.file)
        raise_collective(self.comm, msg)

    def abort(self) -> None:
        """Close and remove the file (collective): the run that wrote it did not finish."""
        self.failed = True
        self._discard()

    def _discard(self) -> None:
        c = self.comm
        if self.f is not None:
            c.Barrier()
            if c.rank == 0:
                # nothing left for HDF5 to fail on, and the disk space is given back
                try:
                    os.truncate(self.file, 0)
                except OSError:
                    pass
            c.Barrier()
            try:
                self.f.close()
            except BaseException:  # noqa: BLE001 - see the module docstring
                _poison()
            self.f = None
        c.Barrier()
        if c.rank == 0:
            remove_quietly(self.file)
        c.Barrier()

    def commit(self) -> None:
        """Close, flush to disk and rename to the final path (collective).

        The file appears at :attr:`path` only complete; on any failure it is removed
        and a CollectiveError names the file and the cause.
        """
        if self.failed:
            self._discard()
            raise CollectiveError(f"{self.what} {self.file}: an earlier write failed; the file was removed")
        self.close()
        msg = None
        if self.comm.rank == 0:
            try:
                _release_reserve(self.file)
                _fsync(self.file)
                if self.file != self.path:
                    os.replace(self.file, self.path)
                    _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
            except BaseException as exc:  # noqa: BLE001
                msg = io_error_message(exc, f"{self.what} {self.file}: cannot move to {self.path}")
                remove_quietly(self.file)
        raise_collective(self.comm, msg)
        self.file = self.path

    def __enter__(self) -> "ParallelH5":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Commit when the block ends normally; on an exception, discard the file.

        The exception must be collective (raised on every rank, as the methods of this
        class do); a rank-local one is first made collective here, so that no rank
        waits for the others in a close they will never reach.
        """
        msg = None if exc is None else (str(exc) if isinstance(exc, CollectiveError)
                                        else describe_exception(exc, f"{self.what} {self.file}"))
        anyone = self.comm.allreduce(msg is not None, op=_lor())
        if not anyone:
            self.commit()
            return
        self.abort()
        if exc is None:
            raise_collective(self.comm, None)     # matches the raise on the failing ranks
            raise CollectiveError(f"{self.what} {self.file}: failed on another rank; the file was removed")
        if not isinstance(exc, CollectiveError):
            raise_collective(self.comm, msg)


def _release_reserve(path: str) -> None:
    """Give back the blocks :meth:`ParallelH5.reserve` allocated past the end of a file that
    is complete: a truncation to its own size frees them (measured on ext4: a store of 458 kB
    held 1.5 MB of disk before). Without it a finalized file keeps its last reservation --
    with compressed datasets, up to a whole simulation's uncompressed size -- for good."""
    try:
        os.truncate(path, os.path.getsize(path))
    except OSError:
        pass            # best effort: the file is complete either way


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _lor():
    from mpi4py import MPI

    return MPI.LOR
