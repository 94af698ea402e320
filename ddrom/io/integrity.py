"""Checksums on every dataset of the HDF5 files ddrom writes, and their verification.

Which checksum
--------------
HDF5's Fletcher32 filter: a 4-byte checksum stored with every chunk, computed when the
chunk is written and checked by the HDF5 library on every read, in parallel too.
Measured here (Debian's parallel HDF5 1.10.8, h5py-mpi, driver ``mpio``): chunked
datasets with Fletcher32 and no fill are written by collective hyperslab writes at 2
and 3 ranks, read back on any number of ranks, and a byte flipped inside a chunk makes
the read of that chunk fail ("data error detected by Fletcher32 checksum") on the
ranks that read it, without hanging the others. So every dataset is chunked with the
filter (:func:`chunk_shape`, :func:`make_dcpl`, :func:`dataset_options`), and no
separate hash pass over the data is needed.

Datasets that cannot be chunked -- scalars -- carry a SHA-256 digest of their bytes
in the attribute :data:`DIGEST_ATTR` instead (:func:`stamp_digest`); empty datasets
hold nothing to protect. The root attribute :data:`CHECKSUM_ATTR` says that the file
was written this way.

Attributes hold data too: a ROM file keeps its material, expressions and calibration as
JSON text in attributes, where a flipped byte can turn one valid number into another.
Groups whose attributes are such data carry the SHA-256 of all their other attributes
in :data:`ATTRS_DIGEST_ATTR` (:func:`stamp_attrs`), checked by the readers
(:func:`check_attrs`) and by :func:`verify_file`.

Reading
-------
Readers turn a failed read into a message naming the file and the dataset
(:func:`read_error_message`): "dataset /simulations/s0/p is corrupt (Fletcher32
checksum mismatch)". :func:`verify_file` reads a whole file, chunk by chunk, spread
over the ranks of a communicator, and reports every corrupt or unreadable dataset; it
works on any HDF5 file (a file written before checksums existed is reported as
unprotected: its data can only be checked for readability).

For writers of other files (the ROM file): create datasets with
``group.create_dataset(name, data=..., **dataset_options(shape, dtype))`` and call
:func:`stamp_digest` on scalars; set ``f.attrs[CHECKSUM_ATTR] = CHECKSUM``.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ddrom.parallel import DdromError, as_mpi, describe_exception

__all__ = ["CHECKSUM", "CHECKSUM_ATTR", "COMPRESSIONS", "check_compression", "DIGEST_ATTR", "ATTRS_DIGEST_ATTR",
           "CHUNK_BYTES", "IntegrityError",
           "chunk_shape", "make_dcpl", "dataset_options", "disk_bytes", "digest", "stamp_digest", "attrs_digest",
           "stamp_attrs", "check_attrs", "attrs_error_message", "read_error_message", "is_checksum_error", "VerifyReport", "verify_file"]

#: Value of :data:`CHECKSUM_ATTR` in files whose datasets carry checksums.
CHECKSUM = "fletcher32"
#: Root attribute naming the checksum scheme of the file.
CHECKSUM_ATTR = "checksums"
#: Attribute holding the SHA-256 digest of a dataset that cannot be chunked (a scalar).
DIGEST_ATTR = "ddrom_sha256"
#: Attribute of a group (or the root) holding the SHA-256 of its other attributes.
ATTRS_DIGEST_ATTR = "ddrom_attrs_sha256"
#: Target size of a chunk. Small enough that the ranks own different chunks (parallel
#: HDF5 writes each filtered chunk from one rank: one chunk per step of the whole mesh
#: would funnel every write through one rank) and that a chunk fits HDF5's default
#: 1 MiB chunk cache; large enough that the chunk index stays small.
CHUNK_BYTES = 1 << 20


class IntegrityError(DdromError):
    """A dataset failed its checksum or could not be read."""


# --------------------------------------------------------------------------- writing
def chunk_shape(shape: Sequence[int], itemsize: int = 8, time_major: bool = False,
                target_bytes: int = CHUNK_BYTES) -> tuple[int, ...] | None:
    """Chunk shape of a checksummed dataset, or None when it cannot be chunked.

    ``time_major``: one step (first axis) per chunk, rows (second axis) split so that a
    chunk holds at most ``target_bytes``; otherwise the first axis is split. Scalars and
    datasets with a zero extent return None (no storage to protect, or no chunking).
    """
    shape = tuple(int(s) for s in shape)
    if not shape or any(s == 0 for s in shape):
        return None
    lead = 1 if time_major and len(shape) > 1 else None
    body = shape[1:] if lead is not None else shape
    tail = int(np.prod(body[1:], dtype=np.int64)) if len(body) > 1 else 1
    rows = max(1, min(body[0], target_bytes // max(1, tail * itemsize)))
    # the same number of chunks with rows spread evenly: a last chunk that is mostly
    # empty still takes a whole chunk of disk (measured +15 % on a store)
    rows = -(-body[0] // -(-body[0] // rows))
    inner = (rows,) + tuple(body[1:])
    return ((1,) + inner) if lead is not None else inner


#: Lossless compressions a chunked dataset may get (:func:`make_dcpl`): ``"none"``,
#: ``"gzip-1"`` .. ``"gzip-9"`` (byte shuffle then deflate, built into every HDF5, so
#: ParaView and h5dump read it) and ``"lzf"`` (byte shuffle then h5py's LZF filter: faster,
#: but only h5py can read it).
COMPRESSIONS = ("none",) + tuple(f"gzip-{n}" for n in range(1, 10)) + ("lzf",)


def check_compression(name: str) -> str:
    """``name`` if it is one of :data:`COMPRESSIONS`, else a DdromError listing them."""
    if name not in COMPRESSIONS:
        raise DdromError(f"unknown compression {name!r} (expected one of {', '.join(COMPRESSIONS)})")
    return name


def make_dcpl(shape: Sequence[int], itemsize: int = 8, time_major: bool = False, fill: bool = False,
              chunks: Sequence[int] | None = None, compression: str = "none"):
    """HDF5 dataset-creation property list: chunked + Fletcher32 (+ no fill unless ``fill``).

    ``compression`` (one of :data:`COMPRESSIONS`) adds a byte shuffle and a lossless
    compression filter before the checksum: the checksum covers the compressed bytes as
    stored, so a damaged chunk is still found before it is decompressed. Parallel HDF5
    (>= 1.10.2) writes such filtered chunks with collective writes (measured with 1.10.8,
    see :mod:`ddrom.io.store`).

    Without fill, parallel HDF5 does not write a fill value over the whole extent at
    creation. Returns a contiguous-layout list for shapes that cannot be chunked.
    """
    from h5py import h5d, h5p, h5z

    check_compression(compression)
    dcpl = h5p.create(h5p.DATASET_CREATE)
    ch = tuple(chunks) if chunks is not None else chunk_shape(shape, itemsize, time_major)
    if ch is not None:
        dcpl.set_chunk(ch)
        if compression != "none":
            dcpl.set_shuffle()
            if compression == "lzf":
                dcpl.set_filter(h5z.FILTER_LZF, h5z.FLAG_OPTIONAL)
            else:
                dcpl.set_deflate(int(compression.split("-")[1]))
        dcpl.set_fletcher32()
    if not fill:
        dcpl.set_fill_time(h5d.FILL_TIME_NEVER)
    return dcpl


def dataset_options(shape: Sequence[int], dtype: Any = "f8", time_major: bool = False) -> dict:
    """Keyword arguments of ``h5py.Group.create_dataset`` for a checksummed dataset.

    ``{"chunks": ..., "fletcher32": True}``, or ``{}`` for a scalar or empty dataset
    (then call :func:`stamp_digest` on a scalar after writing it).
    """
    ch = chunk_shape(shape, np.dtype(dtype).itemsize, time_major)
    return {} if ch is None else {"chunks": ch, "fletcher32": True}


def disk_bytes(shapes: Sequence[Sequence[int]], itemsize: int = 8, time_major: bool = False) -> int:
    """Bytes on disk of checksummed datasets of these shapes: data, plus the per-chunk
    checksum and chunk-index entry (64 bytes, generously) -- what a writer reserves."""
    total = 0
    for shape in shapes:
        shape = tuple(int(x) for x in shape)
        n = int(np.prod(shape, dtype=np.int64)) * itemsize
        ch = chunk_shape(shape, itemsize, time_major=time_major and len(shape) > 1)
        chunks = 0 if ch is None else int(np.prod([-(-a // b) for a, b in zip(shape, ch)], dtype=np.int64))
        total += n + 64 * chunks
    return total


def digest(data: Any) -> str:
    """SHA-256 (hex) of an array's dtype, shape and bytes (C order, its own byte order)."""
    a = np.ascontiguousarray(np.asarray(data))
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def stamp_digest(dset: Any, data: Any | None = None) -> None:
    """Store the digest of a dataset that carries no Fletcher32 filter (a scalar).

    ``data``: the values just written (the same on every rank of a parallel file: the
    attribute write is collective); read back from the dataset when omitted.
    """
    value = dset[()] if data is None else np.asarray(data, dtype=dset.dtype).reshape(dset.shape)
    dset.attrs[DIGEST_ATTR] = digest(value)


def _canonical(value: Any) -> bytes:
    """Bytes of an attribute value that do not depend on how h5py hands it back."""
    if isinstance(value, bytes):
        return b"s" + value
    if isinstance(value, str):
        return b"s" + value.encode()
    a = np.asarray(value)
    if a.dtype.kind in "OSU":
        return b"l" + repr([v.decode() if isinstance(v, bytes) else str(v) for v in a.ravel().tolist()]).encode()
    return b"a" + digest(a).encode()


def attrs_digest(attrs: Any) -> str:
    """SHA-256 (hex) of a group's attributes (names and values; :data:`ATTRS_DIGEST_ATTR` excluded)."""
    h = hashlib.sha256()
    for key in sorted(k for k in attrs.keys() if k != ATTRS_DIGEST_ATTR):
        h.update(key.encode() + b"\0" + _canonical(attrs[key]) + b"\0")
    return h.hexdigest()


def stamp_attrs(obj: Any) -> None:
    """Record the digest of the attributes of ``obj`` (a group or file) once they are all set.

    Computed from the attributes as stored (read back), so that a reader recomputes the
    same bytes; in a parallel file every rank computes and writes the same value.
    """
    obj.attrs[ATTRS_DIGEST_ATTR] = attrs_digest(obj.attrs)


def check_attrs(obj: Any) -> bool | None:
    """True if the attributes of ``obj`` match their recorded digest, False if not, None
    when no digest was recorded (a file written before attribute digests)."""
    want = obj.attrs.get(ATTRS_DIGEST_ATTR)
    if want is None:
        return None
    want = want.decode() if isinstance(want, bytes) else str(want)
    return attrs_digest(obj.attrs) == want


def attrs_error_message(file: str | os.PathLike, group: str, what: str = "") -> str:
    """One line naming the file and the group whose attributes fail their digest."""
    where = f"{what} {os.fspath(file)}" if what else os.fspath(file)
    return (f"{where}: the attributes of {group} are corrupt (their SHA-256 digest does not match): the file "
            "was damaged after it was written; recompute or restore it (`ddrom verify` lists every damaged "
            "part)")


# --------------------------------------------------------------------------- reading
def is_checksum_error(exc: BaseException) -> bool:
    """True if ``exc`` is HDF5's report of a chunk whose Fletcher32 checksum does not match."""
    text = str(exc).lower()
    return "fletcher32" in text or "checksum" in text


def read_error_message(exc: BaseException, file: str | os.PathLike, dataset: str, what: str = "") -> str:
    """One line naming the file, the dataset and what went wrong with reading it."""
    where = f"{what} {os.fspath(file)}" if what else os.fspath(file)
    if is_checksum_error(exc):
        return (f"{where}: dataset {dataset} is corrupt (Fletcher32 checksum mismatch): the file was "
                "damaged after it was written; recompute or restore it (`ddrom verify` lists every "
                "damaged dataset)")
    return f"{where}: dataset {dataset} cannot be read ({describe_exception(exc)})"


@dataclass
class VerifyReport:
    """Result of :func:`verify_file` (identical on every rank).

    Attributes
    ----------
    path : the file.
    datasets : number of datasets.
    chunks_checked : chunks read with their Fletcher32 checksum verified.
    digests_checked : scalar datasets compared with their stored digest.
    unprotected : datasets with data but no checksum (read, not verified).
    corrupt : one message per damaged or unreadable dataset (or the file structure).
    checksums : the file's :data:`CHECKSUM_ATTR` attribute ("" if none).
    """

    path: str
    datasets: int = 0
    chunks_checked: int = 0
    digests_checked: int = 0
    unprotected: list = field(default_factory=list)
    corrupt: list = field(default_factory=list)
    checksums: str = ""

    @property
    def ok(self) -> bool:
        """No corrupt or unreadable dataset (unprotected datasets do not count)."""
        return not self.corrupt

    def summary(self) -> str:
        """A few lines for the user."""
        head = (f"{self.path}: {'OK' if self.ok else 'CORRUPT'} -- {self.datasets} datasets, "
                f"{self.chunks_checked} checksummed chunks and {self.digests_checked} digests verified")
        lines = [head] + [f"  corrupt: {m}" for m in self.corrupt]
        if self.unprotected:
            names = ", ".join(self.unprotected[:8]) + (" ..." if len(self.unprotected) > 8 else "")
            lines.append(f"  warning: {len(self.unprotected)} dataset(s) carry no checksum (readable, not "
                         f"verifiable): {names}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"path": self.path, "ok": self.ok, "datasets": self.datasets,
                "chunks_checked": self.chunks_checked, "digests_checked": self.digests_checked,
                "unprotected": list(self.unprotected), "corrupt": list(self.corrupt),
                "checksums": self.checksums}


def _walk(path: str) -> tuple[list[dict], str, list[str]]:
    """Rank 0: every dataset of the file (name, shape, dtype, chunks, fletcher32, digest),
    the checksum scheme, and a message per group whose attributes fail their digest.

    Also reads every attribute, so that damaged object headers show up here.
    """
    import h5py

    items: list[dict] = []
    bad_attrs: list[str] = []
    with h5py.File(path, "r") as f:
        checksums = f.attrs.get(CHECKSUM_ATTR, "")
        checksums = checksums.decode() if isinstance(checksums, bytes) else str(checksums)

        def visit(name: str, obj: Any) -> None:
            for key in obj.attrs:
                obj.attrs[key]                 # decode every attribute (damaged headers fail here)
            if not isinstance(obj, h5py.Dataset) and check_attrs(obj) is False:
                bad_attrs.append(attrs_error_message(path, "/" + name))
            if isinstance(obj, h5py.Dataset):
                dg = obj.attrs.get(DIGEST_ATTR)
                items.append(dict(name="/" + name, shape=tuple(obj.shape), itemsize=obj.dtype.itemsize,
                                  chunks=obj.chunks, fletcher32=bool(obj.fletcher32),
                                  digest=dg.decode() if isinstance(dg, bytes) else dg))

        for key in f.attrs:
            f.attrs[key]
        if check_attrs(f) is False:
            bad_attrs.append(attrs_error_message(path, "/ (the root)"))
        f.visititems(visit)
    return items, checksums, bad_attrs


def _work_units(items: list[dict]) -> list[tuple[int, tuple]]:
    """(item index, selection) for every chunk (chunked) or block of rows (contiguous)."""
    units: list[tuple[int, tuple]] = []
    for i, it in enumerate(items):
        shape = it["shape"]
        if not shape:
            units.append((i, ()))
            continue
        if any(s == 0 for s in shape):
            continue
        ch = it["chunks"] or chunk_shape(shape, it["itemsize"])
        ranges = [range(0, s, c) for s, c in zip(shape, ch)]
        for start in np.ndindex(*[len(r) for r in ranges]):
            sel = tuple(slice(r[j], min(r[j] + c, s)) for j, r, c, s in zip(start, ranges, ch, shape))
            units.append((i, sel))
    return units


def verify_file(path: str | os.PathLike, comm: Any = None) -> VerifyReport:
    """Read every dataset of an HDF5 file and check its checksums (collective).

    The chunks (blocks of rows for unchunked datasets) are dealt round-robin over the
    ranks; each rank opens the file read-only on its own and reads its share, so the
    checksums of a large store are verified in parallel, and nothing of the size of a
    dataset is ever gathered. The report is the same on every rank.

    Returns
    -------
    VerifyReport
        ``corrupt`` names each dataset whose checksum failed or that could not be read
        (at most one message per dataset), or the file when it cannot be opened or its
        structure is damaged. ``unprotected`` lists datasets without a checksum.
    """
    import h5py

    c = as_mpi(comm)
    path = os.fspath(path)
    head = None
    if c.rank == 0:
        try:
            if not os.path.exists(path):
                raise DdromError(f"{path}: file not found")
            if not h5py.is_hdf5(path):
                raise DdromError(f"{path}: not an HDF5 file")
            head = ("ok", _walk(path))
        except BaseException as exc:  # noqa: BLE001 - the verdict goes to every rank
            head = ("bad", describe_exception(exc) if isinstance(exc, DdromError)
                    else f"{path}: the file structure is damaged or unreadable ({describe_exception(exc)})")
    kind, payload = c.bcast(head, root=0)
    report = VerifyReport(path=path)
    if kind == "bad":
        report.corrupt.append(payload)
        return report
    items, report.checksums, bad_attrs = payload
    report.datasets = len(items)
    units = _work_units(items)
    bad: dict[int, str] = {}
    chunks = digests = 0
    mine = units[c.rank::c.size]
    if mine:
        try:
            with h5py.File(path, "r") as f:
                for i, sel in mine:
                    if i in bad:
                        continue
                    it = items[i]
                    try:
                        data = f[it["name"]][sel]
                    except BaseException as exc:  # noqa: BLE001 - recorded, reported collectively
                        where = "" if sel == () else " at [" + ", ".join(f"{s.start}:{s.stop}" for s in sel) + "]"
                        bad[i] = read_error_message(exc, path, it["name"]) + where
                        continue
                    if it["fletcher32"]:
                        chunks += 1
                    elif not it["shape"] and it["digest"] is not None:
                        digests += 1
                        if digest(data) != it["digest"]:
                            bad[i] = (f"{path}: dataset {it['name']} is corrupt (its SHA-256 digest does not "
                                      "match the stored one)")
        except BaseException as exc:  # noqa: BLE001
            bad[-1] = f"{path}: cannot be opened for reading ({describe_exception(exc)})"
    gathered = c.allgather((bad, chunks, digests))
    merged: dict[int, str] = {}
    for b, n_ch, n_dg in gathered:
        report.chunks_checked += n_ch
        report.digests_checked += n_dg
        for i, msg in b.items():
            merged.setdefault(i, msg)
    report.corrupt = list(bad_attrs) + [merged[i] for i in sorted(merged)]
    report.unprotected = [it["name"] for it in items
                          if not it["fletcher32"] and it["digest"] is None and not any(s == 0 for s in it["shape"])]
    return report
