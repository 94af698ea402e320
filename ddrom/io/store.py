"""The parallel snapshot store: one HDF5 file, written collectively, in natural numbering.

Layout (schema ``ddrom-snapshots``, version :data:`SCHEMA_VERSION`)
-------------------------------------------------------------------
``/`` attributes
    ``schema``, ``schema_version``, ``ddrom_version``, ``case_hash`` (given by the caller),
    ``created`` (ISO 8601, UTC), ``provenance`` (JSON string), ``state_stored`` and
    ``compression`` (the :class:`StoreOptions` it was created with) and ``complete`` (set
    last, by :meth:`SnapshotStore.finalize`).
``/mesh``
    ``points`` (N, 3) float64 and ``cells`` (M, k) int64 in the natural (serial) numbering;
    attributes ``cell_type``, ``n_qp``, ``state_names``; ``node_sets/<name>`` (P,) sorted
    natural node ids and ``facet_sets/<name>`` (F, 2) natural ``(cell, local face)`` pairs
    sorted by cell then face.
``/simulations/<name>``
    attributes ``params`` (JSON), ``index`` (creation order), ``n_steps``, ``last_step``
    and ``complete`` (set by :meth:`SimulationWriter.finish`); datasets, all float64,
    time-major with ``nt = n_steps + 1`` (step 0 is t = 0) and chunked by time step (chunks
    of at most 1 MiB, see below):

    ============================  =========================================  ==============
    dataset                       content                                    read by
    ============================  =========================================  ==============
    ``time`` (nt,)                output times                               every stage
    ``displacement`` (nt, N, 3)   nodal displacement                         offline POD,
                                                                             evaluation,
                                                                             clustering,
                                                                             export
    ``stress`` (nt, M, nq, 6)     Mandel stress at the integration points    offline (ECM,
                                                                             stress basis),
                                                                             evaluation,
                                                                             export
    ``p`` (nt, M, nq)             cumulated plastic strain                   offline (dual
                                                                             basis),
                                                                             evaluation,
                                                                             export
    ``p_cell`` (nt, M)            volume average of p per cell               ParaView, through
    ``von_mises_cell`` (nt, M)    volume average of the von Mises stress     the XDMF sidecar
    ``state`` (nt, M, nq, ns)     internal variables (``state_names``)       nothing of ddrom;
                                  only if ``state_stored``                   users
    ============================  =========================================  ==============

    ``state`` is written only with ``StoreOptions(store_state=True)`` (case key ``[output]
    store_state``): uncompressed it is the largest dataset (ns / 6 times the stress: 166 of
    the 267 B per DOF and step of the demo, Chaboche, 13 internal variables) and no stage
    reads it. Reading it from a store without it raises one error naming the file and how
    to write it. The two cell averages (3.2 B per DOF and step on the demo, 1.4 compressed)
    stay: they let ParaView open the store's XDMF sidecar directly (``ddrom export``
    computes its own from p and the stress).

Size (``benchmarks/store_size.py``, demo physics, B per DOF and stored step, the whole
file): version 1 (everything, uncompressed) 267.5; version 2 default (no ``state``,
``gzip-1``) 63.6; without compression 101.4; with ``state`` and ``gzip-1`` 69.8.
Compression is lossless (byte shuffle + deflate, or LZF): every value reads back bitwise;
the stress and the displacement shrink by ~25-30 %, p and the internal variables (zero
outside the plastic zone around the hole) by ~95 %. It costs write time: 15 instead of 5
ms per step at 1 rank (38 instead of 23 at 3), 1-3 % of an HF step of the demo.

Version 1 files (``state`` in every simulation, no compression) are read as before; a
store opened with ``mode="a"`` keeps its own layout for the simulations it adds.

Because every array is in the natural numbering, the file does not depend on the number
of ranks that wrote it: a store written on 3 ranks is read on 1 or 2. Each rank writes
and reads the contiguous natural slice given by :class:`~ddrom.mesh.distributed.NaturalMap`
with one collective hyperslab transfer per dataset; no mesh-size array is ever gathered.

Integrity: every dataset is chunked and carries HDF5's Fletcher32 checksum per chunk
(root attribute ``checksums = "fletcher32"``; :mod:`ddrom.io.integrity`), computed after
the compression (it covers the bytes on disk). Every read
verifies the chunks it touches; a damaged one raises, on every rank, an error naming the
file and the dataset. ``ddrom verify FILE`` checks a whole file. Files written before
checksums are read as before (their datasets are reported as unprotected).

Full disks: the disk space of a simulation is reserved (``fallocate``) when it is added,
before anything is computed or written (compressed sizes are only known once written: the
uncompressed size is reserved, :func:`_nbytes`; the blocks not used are given back when
the store is finalized); on a full disk :meth:`SnapshotStore.add_simulation`
raises one error naming the file, the space needed and the space free, and closes the
store (kept for a resume if it holds finished simulations, removed otherwise). Any other
failed write removes the ``.partial`` file and is reported the same way
(:mod:`ddrom.io.h5atomic`, which explains why: Open MPI's collective I/O can lose a
write error silently, and HDF5 crashes at exit once a flush has failed).

Crash safety: the file is written under ``<path>.partial`` and renamed to ``<path>`` by
:meth:`SnapshotStore.finalize` after ``complete`` is set and the file closed and flushed
to the disk (``fsync``), so a file at the final path is always complete. Reopening a
finalized store with ``mode="a"`` (to extend it) works on a copy, ``.partial`` (a
copy-on-write clone where the file system has them): the finalized file stays intact at
its path until the extended store is finalized over it, so an extension that fails, is
interrupted or killed loses nothing of the previous output. The file is flushed when a simulation is added
and when it is finished (not per step: the fsync costs more than the write), so an
interrupted sweep resumes with its finished simulations; an unfinished one is rewritten.
Datasets are created without fill (unwritten steps hold no meaningful values: trust
``complete`` / ``last_step``), and replacing an incomplete simulation does not shrink the file.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

import ddrom
from ddrom.io.h5atomic import PARTIAL_SUFFIX, ParallelH5, io_error_message
from ddrom.io.integrity import COMPRESSIONS, check_compression
from ddrom.mesh.reference import CELL_TYPES, FACES
from ddrom.parallel import (CollectiveError, DdromError, as_mpi, check_all, collective, describe_exception,
                            raise_collective)

SCHEMA = "ddrom-snapshots"
#: Version written. 2: ``state`` only when asked (root attribute ``state_stored``), datasets
#: compressed (root attribute ``compression``).
SCHEMA_VERSION = 2
#: Versions read. Version 1 (every store always has ``state``, nothing compressed) is read
#: as a version-2 store with ``state_stored = True`` and ``compression = "none"``.
READABLE_VERSIONS = (1, 2)
QP_FIELDS = ("stress", "p", "state")
FIELDS = ("displacement",) + QP_FIELDS
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
_COORD_RTOL = 1e-9              # relative to the bounding-box diagonal in check_mesh


# ------------------------------------------------------------------------ helpers
def _h5py():
    import h5py

    if not h5py.get_config().mpi:
        raise DdromError("the snapshot store needs h5py built with MPI (parallel HDF5); "
                         "import ddrom before h5py (it sets H5PY_ALWAYS_USE_MPI) or install "
                         "a parallel h5py (Debian: python3-h5py-mpi)")
    return h5py


@dataclass(frozen=True)
class StoreOptions:
    """What a new store holds, and how (the ``[output]`` keys of a case; their defaults are these).

    store_state : bool
        Also write the material's internal variables ``state`` (nt, M, nq, n_state). No
        stage of ddrom reads them (offline POD, ECM and evaluation, export, clustering,
        enrichment and import read ``displacement``, ``stress`` and ``p``), and they are the
        largest dataset of an uncompressed store: n_state / 6 times the stress (13 / 6 for
        Chaboche, 166 of the demo's 267 B per DOF and step; compressed, 6 B on the demo,
        whose plasticity stays around the hole). Keep them to post-process internal variables
        (back stresses, plastic strain tensor) or to restart a material from a stored step.
    compression : str
        Lossless compression of every dataset, one of
        :data:`~ddrom.io.integrity.COMPRESSIONS`. ``"gzip-1"``: byte shuffle + deflate level
        1, in every HDF5 (ParaView reads the XDMF sidecar as before); on the demo it stores
        64 instead of 101 B per DOF and step (benchmarks/store_size.py), for ~10 ms more
        per step of the HF run (1-3 % of its solve). ``"none"``: the fastest writes and reads; ``"lzf"``: faster than
        gzip, a little larger, readable by h5py only.
    """

    store_state: bool = False
    compression: str = "gzip-1"

    def __post_init__(self) -> None:
        if not isinstance(self.store_state, bool):
            raise DdromError(f"StoreOptions.store_state must be true or false, got {self.store_state!r}")
        check_compression(self.compression)


def _nbytes(shapes: Iterable[Sequence[int]], itemsize: int = 8, compressed: bool = False) -> int:
    """Bytes of data of datasets of these shapes, plus the per-chunk checksums and index.

    ``compressed``: the bound of a compressed dataset, whose size is only known once
    written: a chunk that does not shrink is stored as it is (the filters are optional), or
    takes at most 0.1 % + 12 bytes more (HDF5's deflate buffer); so the uncompressed size
    plus that margin is what a writer reserves.
    """
    from ddrom.io.integrity import chunk_shape

    total = 0
    for shape in shapes:
        n = int(np.prod(shape, dtype=np.int64)) * itemsize
        ch = chunk_shape(shape, itemsize, time_major=len(shape) > 1)
        chunks = 0 if ch is None else int(np.prod([-(-a // b) for a, b in zip(shape, ch)], dtype=np.int64))
        total += n + 64 * chunks         # 4 bytes of checksum + the chunk index entry, generously
        if compressed:
            total += n // 1000 + 16 * chunks
    return total


def _idle_wait(comm) -> None:
    """Barrier that sleeps while rank 0 works alone (file checks, rename, XDMF): with
    more ranks than cores, busy-polling ranks would otherwise slow rank 0 several-fold."""
    import time

    req = as_mpi(comm).Ibarrier()
    while not req.Test():
        time.sleep(0.001)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _to_json(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, sort_keys=True, default=_json_default, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise DdromError(f"{what} must be JSON-serializable (finite numbers, strings, lists, "
                         f"dicts): {exc}") from None


def _same_everywhere(comm, value: Any, what: str) -> None:
    """Collective check that the arguments of a collective call agree on every rank."""
    c = as_mpi(comm)
    ref = c.bcast(value, root=0)
    check_all(c, ref == value, f"{what} differs between ranks: every rank must pass the same value")


def von_mises(stress: np.ndarray) -> np.ndarray:
    """Von Mises stress sqrt(3/2 s:s), s = deviator, of Mandel stresses (..., 6)."""
    s = np.array(stress, dtype=np.float64, copy=True)
    tr = s[..., :3].sum(axis=-1, keepdims=True) / 3.0
    s[..., :3] -= tr
    return np.sqrt(1.5 * np.einsum("...i,...i->...", s, s))


def _cell_weights(dmesh, chunk: int = 65536) -> np.ndarray:
    """w_q * det J (ne, nq), computed by blocks of cells (only the (ne, nq) result is kept)."""
    ref = dmesh.ref
    dNr = ref.dshape(ref.qp)
    out = np.empty((dmesh.n_cells, len(ref.qw)))
    for a in range(0, dmesh.n_cells, chunk):
        X = dmesh.coords[dmesh.cells[a:a + chunk]]
        J = np.einsum("qka,ekb->eqba", dNr, X)
        out[a:a + chunk] = np.abs(np.linalg.det(J)) * ref.qw[None, :]
    return out


@dataclass(frozen=True)
class SimulationInfo:
    """What the store knows of one simulation (identical on every rank)."""

    name: str
    params: dict
    complete: bool
    n_steps: int
    index: int
    last_step: int      # highest step written so far (-1: none)


# ----------------------------------------------------------- rank-0 validation
def _inspect(file: str, require_complete: bool) -> dict:
    """Open ``file`` serially (rank 0 only) and check schema and structure.

    Returns the metadata every rank needs; raises DdromError naming the file and the reason.
    """
    h5py = _h5py()
    where = f"snapshot store {file}"
    if not os.path.exists(file):
        raise DdromError(f"{where}: file not found")
    try:
        is_h5 = h5py.is_hdf5(file)
    except Exception as exc:  # noqa: BLE001 - permissions, a directory, ...
        raise DdromError(f"{where}: cannot be read ({exc})") from None
    if not is_h5:
        raise DdromError(f"{where}: not an HDF5 file")
    try:
        with h5py.File(file, "r") as f:
            return _read_meta(f, where, require_complete)
    except DdromError:
        raise
    except Exception as exc:  # noqa: BLE001 - HDF5 reports truncation/corruption as OSError/KeyError
        raise DdromError(f"{where}: cannot be read, the file is truncated or corrupt "
                         f"({type(exc).__name__}: {exc})") from None


def _attr(obj, name: str, where: str):
    if name not in obj.attrs:
        raise DdromError(f"{where}: attribute {name!r} missing in {obj.name}")
    v = obj.attrs[name]
    if isinstance(v, bytes):
        v = v.decode()
    return v.item() if isinstance(v, np.generic) else v


def _read_meta(f, where: str, require_complete: bool) -> dict:
    schema = f.attrs.get("schema")
    if isinstance(schema, bytes):
        schema = schema.decode()
    if schema != SCHEMA:
        raise DdromError(f"{where}: not a ddrom snapshot store (root attribute schema is "
                         f"{schema!r}, expected {SCHEMA!r})")
    version = _attr(f, "schema_version", where)
    if version not in READABLE_VERSIONS:
        raise DdromError(f"{where}: schema version {version}, this ddrom "
                         f"({ddrom.__version__}) reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    if version == 1:
        state_stored, compression = True, "none"
    else:
        state_stored = bool(_attr(f, "state_stored", where))
        compression = str(_attr(f, "compression", where))
        if compression not in COMPRESSIONS:
            raise DdromError(f"{where}: unknown compression {compression!r} in the root attributes")
    complete = bool(_attr(f, "complete", where))
    if require_complete and not complete:
        raise DdromError(f"{where}: the store is incomplete (complete=False): the run that wrote "
                         "it was interrupted or did not call finalize()")
    if "mesh" not in f or "simulations" not in f:
        raise DdromError(f"{where}: group /mesh or /simulations missing")
    m = f["mesh"]
    cell_type = str(_attr(m, "cell_type", where))
    if cell_type not in CELL_TYPES:
        raise DdromError(f"{where}: unknown cell type {cell_type!r}")
    k = CELL_TYPES[cell_type].n_nodes
    n_nodes, dim = m["points"].shape
    n_cells, kk = m["cells"].shape
    if dim != 3 or kk != k:
        raise DdromError(f"{where}: /mesh/points {m['points'].shape} or /mesh/cells "
                         f"{m['cells'].shape} do not fit {cell_type}")
    nq = int(_attr(m, "n_qp", where))
    state_names = [s.decode() if isinstance(s, bytes) else str(s) for s in _attr(m, "state_names", where)]
    ns = len(state_names)
    shapes = {"time": (), "displacement": (n_nodes, 3), "stress": (n_cells, nq, 6),
              "p": (n_cells, nq), "state": (n_cells, nq, ns), "p_cell": (n_cells,),
              "von_mises_cell": (n_cells,)}
    if not state_stored:
        del shapes["state"]
    sims = {}
    for name, g in f["simulations"].items():
        n_steps = int(_attr(g, "n_steps", where))
        for ds, tail in shapes.items():
            if ds not in g:
                raise DdromError(f"{where}: simulation {name!r} has no dataset {ds!r}")
            if g[ds].shape != (n_steps + 1,) + tail:
                raise DdromError(f"{where}: simulation {name!r}: {ds} has shape {g[ds].shape}, "
                                 f"expected {(n_steps + 1,) + tail}")
        sims[name] = dict(params=json.loads(_attr(g, "params", where)), n_steps=n_steps,
                          index=int(_attr(g, "index", where)), complete=bool(_attr(g, "complete", where)),
                          last_step=int(_attr(g, "last_step", where)))
    return dict(cell_type=cell_type, n_nodes=n_nodes, n_cells=n_cells, n_qp=nq,
                state_names=state_names, complete=complete, sims=sims,
                case_hash=str(f.attrs.get("case_hash", "")), schema_version=int(version),
                state_stored=state_stored, compression=compression)


# ------------------------------------------------------------------- the store
class SnapshotStore:
    """A snapshot store opened on a communicator (see the module docstring for the layout).

    Every method is collective: all ranks of ``comm`` call it with the same arguments.
    Errors (bad file, mismatched mesh, NaN in the data, ...) are raised as the same
    :class:`~ddrom.parallel.DdromError` on every rank.
    """

    def __init__(self, comm: Any, h5: ParallelH5, meta: dict, writable: bool):
        self.comm = as_mpi(comm)
        self._h5 = h5                 # the file: collective, checksummed, fault-safe I/O
        self._meta = meta
        self.writable = writable
        self._dmesh = None
        self._checked: set[int] = set()

    @property
    def path(self) -> str:
        """Final path of the store."""
        return self._h5.path

    @property
    def file(self) -> str:
        """The file actually open (``path`` or ``path + ".partial"``)."""
        return self._h5.file

    # ------------------------------------------------------------- properties
    @property
    def cell_type(self) -> str:
        return self._meta["cell_type"]

    @property
    def n_nodes(self) -> int:
        return self._meta["n_nodes"]

    @property
    def n_cells(self) -> int:
        return self._meta["n_cells"]

    @property
    def n_qp(self) -> int:
        return self._meta["n_qp"]

    @property
    def state_names(self) -> list[str]:
        return list(self._meta["state_names"])

    @property
    def case_hash(self) -> str:
        return self._meta.get("case_hash", "")

    @property
    def schema_version(self) -> int:
        """Schema version of the file (:data:`READABLE_VERSIONS`)."""
        return self._meta["schema_version"]

    @property
    def state_stored(self) -> bool:
        """True if the simulations hold the internal variables ``state`` (see :class:`StoreOptions`)."""
        return self._meta["state_stored"]

    @property
    def compression(self) -> str:
        """Compression of the datasets of new simulations (that of the file when it was created)."""
        return self._meta["compression"]

    @property
    def options(self) -> StoreOptions:
        """The store's layout options (those it was created with)."""
        return StoreOptions(store_state=self.state_stored, compression=self.compression)

    def _no_state(self) -> bool:
        """True when ``state`` has nothing to read: a material without internal variables.
        Raises DdromError (on every rank: it depends on the file only) when the material has
        some but the store does not hold them."""
        if self.state_stored:
            return False
        if not self.state_names:
            return True
        raise DdromError(
            f"{self._where()}: the internal variables (state, {len(self.state_names)} per integration "
            "point) were not stored: the store was written with store_state = false (the default). "
            "To read them, write it again with `store_state = true` in the [output] table of the case "
            "file (`ddrom hf --restart`), or SnapshotStore.create(..., options=StoreOptions(store_state=True))")

    @property
    def is_open(self) -> bool:
        return self._h5.is_open

    def _where(self) -> str:
        return f"snapshot store {self.file}"

    def _file(self):
        if not self._h5.is_open:
            raise DdromError(f"{self._where()} is closed")
        return self._h5.f

    # ----------------------------------------------------------------- create
    @classmethod
    def create(cls, path: str | os.PathLike, dmesh, *, state_names: Sequence[str],
               case_hash: str = "", provenance: dict | None = None, comm: Any,
               private: bool = False, options: StoreOptions | None = None) -> "SnapshotStore":
        """Create a new store for ``dmesh`` (collective).

        The file is written as ``path + ".partial"`` (an existing one is overwritten) and
        only appears at ``path`` when :meth:`finalize` succeeds; an existing file at
        ``path`` stays untouched until then.

        Parameters
        ----------
        path : str or PathLike
            Final path of the ``.h5`` file.
        dmesh : DistributedMesh
            The distributed mesh the snapshots live on (written to /mesh in natural order).
        state_names : sequence of str
            Names of the material internal variables (last axis of ``state``).
        case_hash : str
            SHA-256 of the case file, stored for provenance.
        provenance : dict, optional
            JSON-serializable description of the run, stored with the software versions.
        comm : communicator
        private : bool
            Written as ``path + ".partial.<pid>"`` (not resumable) instead of
            ``path + ".partial"``: for a file that two commands may write at the same time
            (``ddrom online --fields``; :meth:`ddrom.io.h5atomic.ParallelH5.create`).
        options : StoreOptions, optional
            Whether ``state`` is stored, and the compression (default: ``StoreOptions()``).
        """
        h5py = _h5py()
        c = as_mpi(comm)
        path = os.fspath(path)
        state_names = [str(s) for s in state_names]
        options = StoreOptions() if options is None else options
        _same_everywhere(c, (path, state_names, case_hash, options), "SnapshotStore.create arguments")
        check_all(c, dmesh.n_nodes_global == c.allreduce(dmesh.n_owned),
                  "SnapshotStore.create: the distributed mesh is inconsistent (owned nodes)")
        msg, header = None, None
        if c.rank == 0:
            try:
                prov = {"software": {"ddrom": ddrom.__version__, "python": platform.python_version(),
                                     "numpy": np.__version__, "h5py": h5py.version.version,
                                     "hdf5": h5py.version.hdf5_version},
                        "mpi_ranks": c.size, "host": platform.node()}
                if provenance:
                    prov.update(provenance)
                header = dict(created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                              provenance=_to_json(prov, "provenance"))
            except BaseException as exc:  # noqa: BLE001 - the other ranks wait for the verdict
                msg = describe_exception(exc, f"snapshot store {path}")
        raise_collective(c, msg)
        header = c.bcast(header, root=0)
        h5 = ParallelH5.create(path, c, "snapshot store", private=private)
        meta = dict(cell_type=dmesh.cell_type, n_nodes=dmesh.n_nodes_global, n_cells=dmesh.n_cells_global,
                    n_qp=dmesh.n_qp, state_names=state_names, complete=False, sims={}, case_hash=case_hash,
                    schema_version=SCHEMA_VERSION, state_stored=options.store_state, compression=options.compression)
        store = cls(c, h5, meta, writable=True)
        try:
            k = dmesh.cells.shape[1]
            h5.reserve(_nbytes([(dmesh.n_nodes_global, 3), (dmesh.n_cells_global, k)]))
            h5.set_attrs(dict(schema=SCHEMA, schema_version=SCHEMA_VERSION, ddrom_version=ddrom.__version__,
                              case_hash=case_hash, created=header["created"], provenance=header["provenance"],
                              state_stored=options.store_state, compression=options.compression,
                              complete=False))
            store._write_mesh(dmesh)
            store._file().create_group("simulations")
            h5.flush()
        except BaseException:
            h5.abort()      # a new store that could not even hold its mesh: nothing to keep
            raise
        store._dmesh = dmesh
        store._checked.add(id(dmesh))
        return store

    def _write_mesh(self, dmesh) -> None:
        f = self._file()
        c = self.comm
        m = f.create_group("mesh")
        m.attrs["cell_type"] = dmesh.cell_type
        m.attrs["n_qp"] = dmesh.n_qp
        m.attrs["state_names"] = np.array(self._meta["state_names"], dtype=_h5py().string_dtype())
        nn, nc = dmesh.natural_nodes, dmesh.natural_cells
        k = dmesh.cells.shape[1]
        h5 = self._h5
        pts = h5.create_dataset(m, "points", (dmesh.n_nodes_global, 3))
        h5.write(pts, (nn.natural_range[0], 0), nn.to_natural(dmesh.coords[: dmesh.n_owned]))
        conn = nc.to_natural(dmesh.node_natural[dmesh.cells].astype(np.float64))
        cells = h5.create_dataset(m, "cells", (dmesh.n_cells_global, k), "i8")
        h5.write(cells, (nc.natural_range[0], 0), np.rint(conn).astype(np.int64))

        def write_ids(group, name: str, ids: np.ndarray) -> None:
            # The natural slices are contiguous and rank-ordered, so concatenating the
            # ranks' sorted ids gives the globally sorted list at offset = exclusive scan.
            counts = c.allgather(len(ids))
            d = h5.create_dataset(group, name, (sum(counts),) + ids.shape[1:], "i8")
            h5.write(d, (sum(counts[: c.rank]),) + (0,) * (ids.ndim - 1), ids)

        ns = m.create_group("node_sets")
        for name in sorted(dmesh.node_sets):
            local = dmesh.node_sets[name]
            mask = np.zeros(dmesh.n_owned)
            mask[local[local < dmesh.n_owned]] = 1.0     # each node is counted by its owner
            nat = nn.to_natural(mask)
            write_ids(ns, name, nn.natural_range[0] + np.flatnonzero(nat > 0.5))
        fs = m.create_group("facet_sets")
        nfaces = len(FACES[dmesh.cell_type])
        for name in sorted(dmesh.facet_sets):
            pairs = dmesh.facet_sets[name]
            bits = np.zeros((dmesh.n_cells, nfaces))
            bits[pairs[:, 0], pairs[:, 1]] = 1.0
            nat = nc.to_natural(bits) > 0.5
            cell, face = np.nonzero(nat)                 # row-major: sorted by cell, then face
            write_ids(fs, name, np.column_stack([cell + nc.natural_range[0], face]).astype(np.int64))

    # ------------------------------------------------------------------- open
    @classmethod
    def open(cls, path: str | os.PathLike, comm: Any, mode: str = "r", dmesh=None) -> "SnapshotStore":
        """Open an existing store (collective).

        Parameters
        ----------
        path : str or PathLike
            Final path of the store.
        mode : {"r", "a"}
            ``"r"``: read a finalized store (``complete`` must be true). ``"a"``: resume or
            extend: opens ``path + ".partial"`` if present (an interrupted run), else a copy
            of the finalized ``path`` as ``.partial``; ``path`` itself is untouched until
            the next :meth:`finalize` replaces it (:meth:`abort` leaves it as it was).
        dmesh : DistributedMesh, optional
            If given, :meth:`check_mesh` is called (needed before writing).

        Raises
        ------
        DdromError
            On every rank, naming the file and the reason: missing file, not HDF5,
            truncated or corrupt, not a ddrom store, another schema version, incomplete
            store (mode ``"r"``).
        """
        _h5py()
        c = as_mpi(comm)
        path = os.fspath(path)
        partial = path + PARTIAL_SUFFIX
        if mode not in ("r", "a"):
            raise DdromError(f"SnapshotStore.open: mode must be 'r' or 'a', got {mode!r}")
        msg, info = None, None
        if c.rank == 0:
            try:
                if mode == "a" and os.path.exists(partial):
                    file = partial
                elif os.path.exists(path):
                    file = path
                elif os.path.exists(partial):
                    raise DdromError(f"snapshot store {path}: file not found; an incomplete store "
                                     f"{partial} exists (interrupted run): resume it with mode 'a'")
                else:
                    raise DdromError(f"snapshot store {path}: file not found")
                meta = _inspect(file, require_complete=(mode == "r"))
                if mode == "a" and file == path:
                    # Never modify a file at the final path: it must stay complete, and stay
                    # there (with its XDMF) until the extended copy replaces it.
                    from ddrom.io.atomic import copy_file, remove_quietly

                    try:
                        copy_file(path, partial)
                    except BaseException:
                        remove_quietly(partial)
                        raise
                    file = partial
                info = (file, meta)
            except DdromError as exc:
                msg = str(exc)
            except BaseException as exc:  # noqa: BLE001 - SystemExit too: the other ranks wait
                msg = io_error_message(exc, f"snapshot store {path}", partial if mode == "a" else None)
        _idle_wait(c)
        raise_collective(c, msg)
        file, meta = c.bcast(info, root=0)
        h5 = ParallelH5.open(file, c, "snapshot store", mode="r" if mode == "r" else "r+", path=path)
        store = cls(c, h5, meta, writable=(mode == "a"))
        if mode == "a":
            h5.set_attrs({"complete": False})
            h5.flush()
        if dmesh is not None:
            store.check_mesh(dmesh)
        return store

    # ------------------------------------------------------------------- mesh
    def check_mesh(self, dmesh, rtol: float = _COORD_RTOL) -> None:
        """Check that ``dmesh`` is the mesh of the store, and bind it for writing.

        Compares the cell type, the numbers of nodes, cells and integration points, the
        connectivity (exactly) and the coordinates: max |x_file - x_mesh| <= rtol * D,
        D the diagonal of the stored bounding box. Raises DdromError on every rank.
        """
        c = self.comm
        f = self._file()
        where = self._where()
        m = self._meta
        check_all(c, dmesh.cell_type == m["cell_type"],
                  f"{where}: mesh mismatch: the store has {m['cell_type']} cells, the mesh {dmesh.cell_type}")
        check_all(c, (dmesh.n_nodes_global, dmesh.n_cells_global) == (m["n_nodes"], m["n_cells"]),
                  f"{where}: mesh mismatch: the store has {m['n_nodes']} nodes and {m['n_cells']} cells, "
                  f"the mesh {dmesh.n_nodes_global} nodes and {dmesh.n_cells_global} cells")
        check_all(c, dmesh.n_qp == m["n_qp"],
                  f"{where}: mesh mismatch: {m['n_qp']} integration points per cell in the store, "
                  f"{dmesh.n_qp} in the mesh")
        nn, nc = dmesh.natural_nodes, dmesh.natural_cells
        lo, hi = nn.natural_range
        stored = self._h5.read(f["mesh/points"], (lo, 0), (hi - lo, 3))
        mine = nn.to_natural(dmesh.coords[: dmesh.n_owned])
        box = np.concatenate([stored.min(axis=0), -stored.max(axis=0)]) if len(stored) else np.full(6, np.inf)
        c.Allreduce(box.copy(), box, op=_op("MIN"))
        diag = float(np.linalg.norm(-box[3:] - box[:3]))
        err = c.allreduce(float(np.abs(stored - mine).max()) if len(stored) else 0.0, op=_op("MAX"))
        check_all(c, err <= rtol * max(diag, np.finfo(float).tiny),
                  f"{where}: mesh mismatch: node coordinates differ by up to {err:.3e} "
                  f"(tolerance {rtol:g} x bounding-box diagonal {diag:.3e})")
        lo, hi = nc.natural_range
        k = dmesh.cells.shape[1]
        conn = self._h5.read(f["mesh/cells"], (lo, 0), (hi - lo, k))
        mine = np.rint(nc.to_natural(dmesh.node_natural[dmesh.cells].astype(np.float64))).astype(np.int64)
        bad = c.allreduce(int((conn != mine).any(axis=1).sum()))
        check_all(c, bad == 0, f"{where}: mesh mismatch: {bad} cells have a different connectivity")
        self._dmesh = dmesh
        self._checked.add(id(dmesh))

    def _ensure_mesh(self, dmesh) -> None:
        if id(dmesh) not in self._checked:
            self.check_mesh(dmesh)

    # ------------------------------------------------------------ simulations
    def simulations(self) -> list[SimulationInfo]:
        """The simulations of the store, in creation order (``index``)."""
        f = self._file()
        out = []
        for name, g in f["simulations"].items():
            a = g.attrs
            out.append(SimulationInfo(name=name, params=json.loads(a["params"]),
                                      complete=bool(a["complete"]), n_steps=int(a["n_steps"]),
                                      index=int(a["index"]), last_step=int(a["last_step"])))
        return sorted(out, key=lambda s: s.index)

    def _sim(self, name: str):
        f = self._file()
        if name not in f["simulations"]:
            raise DdromError(f"{self._where()}: no simulation {name!r} (it has "
                             f"{[s.name for s in self.simulations()]})")
        return f["simulations"][name]

    def set_metadata(self, name: str, key: str, value: Any) -> None:
        """Attach a JSON-able value to simulation ``name`` (collective; the same value on every rank)."""
        self._sim(name).attrs[f"meta_{key}"] = _to_json(value, f"metadata {key!r}")

    def metadata(self, name: str, key: str, default: Any = None) -> Any:
        """A value attached by :meth:`set_metadata` (``default`` if absent)."""
        raw = self._sim(name).attrs.get(f"meta_{key}")
        return default if raw is None else json.loads(raw)

    def add_simulation(self, name: str, params: dict, n_steps: int,
                       overwrite_incomplete: bool = True) -> "SimulationWriter":
        """Create simulation ``name`` with ``n_steps + 1`` output steps (step 0 is t = 0).

        An incomplete simulation of that name (an interrupted run) is replaced if
        ``overwrite_incomplete`` (keeping its index), else DdromError; a complete one is
        never replaced (DdromError).
        """
        c = self.comm
        where = self._where()
        if not self.writable:
            raise DdromError(f"{where} is open read-only; open it with mode 'a' to add simulations")
        if self._dmesh is None:
            raise DdromError(f"{where}: call check_mesh(dmesh) (or open(..., dmesh=...)) before writing")
        params_json = None
        with collective(c, "add_simulation"):   # a rank with other arguments must not hang the rest
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise DdromError(f"simulation name {name!r}: use letters, digits and _ . + - "
                                 "(it becomes an HDF5 group and an XDMF path)")
            if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 0:
                raise DdromError(f"simulation {name!r}: n_steps must be an integer >= 0, got {n_steps!r}")
            params_json = _to_json(params, f"parameters of simulation {name!r}")
        n_steps = int(n_steps)
        _same_everywhere(c, (name, params_json, n_steps, bool(overwrite_incomplete)),
                         "SnapshotStore.add_simulation arguments")
        f = self._file()
        sims = {s.name: s for s in self.simulations()}
        index = max((s.index for s in sims.values()), default=-1) + 1
        nt, N, M, nq = n_steps + 1, self.n_nodes, self.n_cells, self.n_qp
        shapes = {"time": (nt,), "displacement": (nt, N, 3), "stress": (nt, M, nq, 6),
                  "p": (nt, M, nq), "state": (nt, M, nq, len(self.state_names)),
                  "p_cell": (nt, M), "von_mises_cell": (nt, M)}
        if not self.state_stored:
            del shapes["state"]
        compression = self.compression
        # The disk space of the whole simulation is reserved before anything is written:
        # a full disk is refused here, before the simulation is computed, with the store
        # still healthy (see ddrom.io.h5atomic). The store is then closed: kept for resume
        # when it holds finished simulations, removed otherwise (nothing worth keeping).
        try:
            self._h5.reserve(_nbytes(shapes.values(), compressed=compression != "none"))
        except DdromError as exc:
            keep = any(s.complete for s in sims.values()) and not self._h5.failed
            if keep:
                self._h5.close()
            else:
                self._h5.abort()
            raise CollectiveError(f"{exc}; the store was "
                                  + ("closed, its finished simulations are kept for a resume once there is "
                                     "space" if keep else "removed (it held no finished simulation)")) from None
        if name in sims:
            old = sims[name]
            if old.complete:
                raise DdromError(f"{where}: simulation {name!r} is already complete")
            if not overwrite_incomplete:
                raise DdromError(f"{where}: simulation {name!r} exists and is incomplete "
                                 "(overwrite_incomplete=False)")
            index = old.index
            del f["simulations"][name]
        g = f["simulations"].create_group(name)
        g.attrs["params"] = params_json
        g.attrs["index"] = index
        g.attrs["n_steps"] = n_steps
        g.attrs["last_step"] = -1
        g.attrs["complete"] = False
        for ds, shape in shapes.items():
            self._h5.create_dataset(g, ds, shape, time_major=True, compression=compression)
        self._h5.flush()
        return SimulationWriter(self, name, n_steps)

    # ----------------------------------------------------------------- finish
    def finalize(self) -> None:
        """Mark the store complete, close it, rename ``.partial`` to the final path (rank 0,
        after a barrier) and write the XDMF sidecar ``<path without .h5>.xdmf``."""
        c = self.comm
        self._file()
        if not self.writable:
            raise DdromError(f"{self._where()} is open read-only; nothing to finalize")
        # set last: the file is complete once this is on disk; commit() closes, fsyncs and
        # renames (an I/O failure removes the file and names the cause on every rank)
        self._h5.set_attrs({"complete": True})
        self._h5.commit()
        msg = None
        if c.rank == 0:
            try:
                from ddrom.io.xdmf import write_store_xdmf

                write_store_xdmf(self.path)
            except BaseException as exc:  # noqa: BLE001 - reported on every rank
                msg = io_error_message(exc, f"snapshot store {self.path}: cannot write the XDMF sidecar")
        _idle_wait(c)
        raise_collective(c, msg)

    def close(self) -> None:
        """Close the file without finalizing (collective). A ``.partial`` file stays resumable.

        After a failed write the file cannot be trusted: it is removed instead (and a
        later ``open(mode="a")`` starts over).
        """
        self._h5.close()

    def abort(self) -> None:
        """Close and remove the file being written (collective): nothing of this run is kept."""
        self._h5.abort()

    def __enter__(self) -> "SnapshotStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- reading
    def _step_ok(self, g, name: str, step: int) -> int:
        n_steps, last = int(g.attrs["n_steps"]), int(g.attrs["last_step"])
        complete = bool(g.attrs["complete"])
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= step <= n_steps:
            raise DdromError(f"{self._where()}: simulation {name!r} has steps 0..{n_steps}, got {step!r}")
        if not complete and step > last:
            raise DdromError(f"{self._where()}: simulation {name!r} is incomplete and step {step} "
                             f"was not written (last written: {last})")
        return int(step)

    def mesh_points(self) -> np.ndarray:
        """(N_nodes, 3) node coordinates in natural order (every rank reads them all: for
        reports and tests of small meshes, not for the solvers)."""
        d = self._file()["mesh/points"]
        return self._h5.read(d, (0, 0), d.shape)

    def read_times(self, sim: str) -> np.ndarray:
        """(n_steps + 1,) output times of ``sim`` (on every rank)."""
        d = self._sim(sim)["time"]
        out = self._h5.read(d, (0,), d.shape)
        return out

    def read_displacement(self, sim: str, step: int, dmesh) -> np.ndarray:
        """(n_owned, 3) displacement of this rank's owned nodes (rank-major order)."""
        self._ensure_mesh(dmesh)
        g = self._sim(sim)
        step = self._step_ok(g, sim, step)
        nn = dmesh.natural_nodes
        lo, hi = nn.natural_range
        return nn.from_natural(self._h5.read(g["displacement"], (step, lo, 0), (1, hi - lo, 3))[0])

    def read_qp(self, sim: str, field: str, step: int, dmesh) -> np.ndarray:
        """(ne_local, nq, ...) integration-point field ``stress``, ``p`` or ``state`` of the local cells."""
        self._ensure_mesh(dmesh)
        if field not in QP_FIELDS:
            raise DdromError(f"unknown integration-point field {field!r} (expected one of {QP_FIELDS})")
        g = self._sim(sim)
        step = self._step_ok(g, sim, step)
        if field == "state" and self._no_state():
            return np.zeros((dmesh.n_cells, self.n_qp, 0))
        d = g[field]
        nc = dmesh.natural_cells
        lo, hi = nc.natural_range
        nat = self._h5.read(d, (step, lo) + (0,) * (d.ndim - 2), (1, hi - lo) + d.shape[2:])[0]
        if nat.size == 0 and d.shape[-1] == 0:
            return np.zeros((dmesh.n_cells,) + d.shape[2:])
        return nc.from_natural(nat)

    def _select(self, sims: Iterable[str] | None, steps: Iterable[int] | None) -> list[tuple[str, list[int]]]:
        infos = {s.name: s for s in self.simulations()}
        if sims is None:
            names = [s.name for s in sorted(infos.values(), key=lambda s: s.index) if s.complete]
        else:
            names = [sims] if isinstance(sims, str) else list(sims)
        out = []
        for name in names:
            g = self._sim(name)
            n_steps = int(g.attrs["n_steps"])
            ks = list(range(n_steps + 1)) if steps is None else [int(k) for k in steps]
            out.append((name, [self._step_ok(g, name, k) for k in ks]))
        return out

    def snapshot_labels(self, sims: Iterable[str] | None = None,
                        steps: Iterable[int] | None = None) -> list[tuple[str, int]]:
        """The ``(simulation, step)`` of each column of :meth:`read_block` with the same arguments."""
        return [(name, k) for name, ks in self._select(sims, steps) for k in ks]

    def read_block(self, field: str, dmesh, sims: Iterable[str] | None = None,
                   steps: Iterable[int] | None = None) -> np.ndarray:
        """Local rows of the snapshot matrix of ``field``, one column per (simulation, step).

        Parameters
        ----------
        field : {"displacement", "stress", "p", "state"}
        dmesh : DistributedMesh
            Any distribution of the store's mesh (checked once).
        sims : iterable of str, optional
            Default: every complete simulation, in creation order.
        steps : iterable of int, optional
            Steps taken from each simulation (default all, 0..n_steps, t = 0 included).

        Returns
        -------
        (n_rows, m) ndarray, Fortran order
            ``displacement``: rows are the owned DOFs ``3 i + c`` of the owned nodes i in
            rank-major (PETSc) order, i.e. ``n_owned * 3`` rows, the layout of the owned
            part of a PETSc vector. Integration-point fields: rows are the local cells
            times ``nq`` (times the components), flattened in C order (cell, qp, comp).
            Columns ordered simulation-major, as listed by :meth:`snapshot_labels`.
        """
        self._ensure_mesh(dmesh)
        if field not in FIELDS:
            raise DdromError(f"unknown snapshot field {field!r} (expected one of {FIELDS})")
        sel = self._select(sims, steps)
        if field == "state" and self._no_state():
            return np.empty((0, sum(len(ks) for _, ks in sel)), order="F")
        nmap = dmesh.natural_nodes if field == "displacement" else dmesh.natural_cells
        lo, hi = nmap.natural_range
        n_local = dmesh.n_owned if field == "displacement" else dmesh.n_cells
        nq = self.n_qp
        tail = {"displacement": (3,), "stress": (nq, 6), "p": (nq,), "state": (nq, len(self.state_names))}[field]
        width = n_local * int(np.prod(tail, dtype=np.int64))
        # column-major: each snapshot is one contiguous column (and PETSc dense is column-major)
        out = np.empty((width, sum(len(ks) for _, ks in sel)), order="F")
        j = 0
        for name, ks in sel:
            d = self._sim(name)[field]
            ks = np.asarray(ks, dtype=np.int64)
            # one collective read per run of consecutive steps
            for run in np.split(ks, np.flatnonzero(np.diff(ks) != 1) + 1) if len(ks) else []:
                nat = self._h5.read(d, (int(run[0]), lo) + (0,) * len(tail), (len(run), hi - lo) + tail)
                for i in range(len(run)):
                    if width:
                        out[:, j] = nmap.from_natural(nat[i]).reshape(-1)
                    j += 1
        return out


def _op(name: str):
    from mpi4py import MPI

    return getattr(MPI, name)


# ------------------------------------------------------------------- the writer
class SimulationWriter:
    """Writes the output steps of one simulation (collective calls on the store's communicator)."""

    def __init__(self, store: SnapshotStore, name: str, n_steps: int):
        self.store = store
        self.name = name
        self.n_steps = n_steps
        self._written: set[int] = set()
        self._weights = None

    @property
    def complete(self) -> bool:
        return len(self._written) == self.n_steps + 1

    def write_step(self, k: int, t: float, u_owned: np.ndarray, stress: np.ndarray,
                   p: np.ndarray, state: np.ndarray | None) -> None:
        """Write output step ``k`` at time ``t`` (collective).

        Parameters
        ----------
        k : int
            Output step, 0 <= k <= n_steps.
        t : float
        u_owned : (n_owned, 3)
            Displacement of the owned nodes (rank-major order, as the first ``n_owned``
            local nodes of the distributed mesh).
        stress : (ne, nq, 6)
            Mandel stress at the integration points of the local cells.
        p : (ne, nq)
            Cumulated plastic strain.
        state : (ne, nq, n_state) or None
            Internal variables (None allowed when the store has no state names or does not
            store them, :attr:`SnapshotStore.state_stored`). Checked, written only if stored.

        The cell averages written for ParaView are volume averages over the integration
        points, sum_q w_q detJ_q f_q / sum_q w_q detJ_q, of p and of the von Mises stress
        sqrt(3/2 s:s). Non-finite values anywhere raise DdromError on every rank before
        anything is written.
        """
        st = self.store
        c = st.comm
        dm = st._dmesh
        f = st._file()
        ns = len(st.state_names)
        ne, nq = dm.n_cells, dm.n_qp
        where = f"snapshot store {st.file}, simulation {self.name!r}, step {k}"
        with collective(c, where):
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= self.n_steps:
                raise DdromError(f"{where}: step must be an integer in 0..{self.n_steps}")
            if state is None and (ns == 0 or not st.state_stored):
                state = np.zeros((ne, nq, ns))
            arrays = {"time": np.asarray(t, dtype=np.float64),
                      "displacement": np.asarray(u_owned, dtype=np.float64),
                      "stress": np.asarray(stress, dtype=np.float64),
                      "p": np.asarray(p, dtype=np.float64),
                      "state": np.asarray(state if state is not None else np.zeros((ne, nq, 0)),
                                          dtype=np.float64)}
            expected = {"time": (), "displacement": (dm.n_owned, 3), "stress": (ne, nq, 6),
                        "p": (ne, nq), "state": (ne, nq, ns)}
            for key, a in arrays.items():
                if a.shape != expected[key]:
                    raise DdromError(f"{where}: {key} has shape {a.shape}, expected {expected[key]}")
                bad = int(np.count_nonzero(~np.isfinite(a)))
                if bad:
                    raise DdromError(f"{where}: {key} has {bad} non-finite values (NaN/Inf); "
                                     "refusing to store them")
        if self._weights is None:
            self._weights = _cell_weights(dm)
        w = self._weights
        vol = w.sum(axis=1)
        p_cell = (w * arrays["p"]).sum(axis=1) / vol
        vm_cell = (w * von_mises(arrays["stress"])).sum(axis=1) / vol
        g = f["simulations"][self.name]
        nn, nc = dm.natural_nodes, dm.natural_cells
        lo, _ = nn.natural_range
        st._h5.write(g["displacement"], (k, lo, 0), nn.to_natural(arrays["displacement"])[None])
        lo, _ = nc.natural_range
        for key in ("stress", "p", "state") if st.state_stored else ("stress", "p"):
            a = arrays[key]
            # a state without internal variables has nothing to move (empty collective write)
            nat = nc.to_natural(a) if a.shape[-1] else np.zeros((0,) + a.shape[1:])
            st._h5.write(g[key], (k, lo) + (0,) * (a.ndim - 1), nat[None])
        st._h5.write(g["p_cell"], (k, lo), nc.to_natural(p_cell)[None])
        st._h5.write(g["von_mises_cell"], (k, lo), nc.to_natural(vm_cell)[None])
        st._h5.write(g["time"], (k,), arrays["time"].reshape(1) if c.rank == 0 else np.zeros(0))
        self._written.add(int(k))
        # No flush here: MPI_File_sync per step cost more than the write itself. An
        # interrupted simulation is rewritten from step 0 on resume; finish() flushes.
        g.attrs["last_step"] = max(int(g.attrs["last_step"]), int(k))

    def finish(self) -> None:
        """Mark the simulation complete (collective); every step must have been written."""
        st = self.store
        missing = sorted(set(range(self.n_steps + 1)) - self._written)
        if missing:
            raise DdromError(f"snapshot store {st.file}, simulation {self.name!r}: steps "
                             f"{missing[:10]}{'...' if len(missing) > 10 else ''} were not written")
        f = st._file()
        f["simulations"][self.name].attrs["complete"] = True
        f.flush()
