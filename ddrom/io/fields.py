"""Scalar nodal fields written by another code -- the temperature of a thermal analysis.

A *source* is a file path and a point-data name. It holds either

* one field (``series=False``): a VTU (or anything meshio reads), or an XDMF file with one
  step carrying the field; or
* a time series of fields (``series=True``): an XDMF temporal collection, a ``.pvd``, or a
  glob of files (sorted naturally). Frame times come from the file (XDMF, PVD); a glob has
  none and the caller gives them.

Two readers, for two uses:

:class:`DistributedField` (HF solver, replay, enrichment, offline)
    Every rank gets a frame's values at its local (owned and ghost) nodes. The file's
    nodes are matched to the case mesh by coordinates exactly as ``ddrom import`` matches a
    displacement series (:class:`~ddrom.io.importers.DisplacementSeries`: a single file is
    read by rank 0 one frame at a time and its values are routed to their owners; the
    pieces of a parallel VTU are read by every rank). Memory: O(n/P) per rank plus one
    frame on the reading rank; a few frames are cached.

:class:`SampledField` (online ROM)
    The values at a few nodes given by their natural ids and coordinates (the nodes of the
    ROM's sample points and of its temperature sensors), the same on every rank (rank 0
    reads, then one broadcast). For an XDMF file with HDF5 data, rank 0 reads the geometry
    rows at those ids first (an HDF5 point selection); when every row has the coordinates
    of its node -- the file was written on the case mesh in its natural node order, as
    ddrom's own files and a thermal code run on the same mesh file are -- only those rows of
    each frame are read: **the cost is proportional to the number of nodes asked for,
    independent of the mesh size.** Otherwise (another node order, or a format without
    random access such as VTU or a PVD of VTUs, which meshio reads whole), rank 0 reads the
    file's points once, matches the asked coordinates with a k-d tree (O(n log n), once per
    source) and reads whole frames (O(n) per frame).

Coordinates are compared with ``coord_rtol`` times the diagonal of the asked nodes'
bounding box (or an explicit tolerance), as :mod:`ddrom.io.matching` does.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ddrom.io.importers import DEFAULT_COORD_RTOL, DisplacementSeries, probe_series
from ddrom.parallel import DdromError, as_mpi, raise_collective

#: Frames kept in memory by a reader (a linear interpolation in time needs two).
CACHED_FRAMES = 3


@dataclass(frozen=True)
class FieldSourceInfo:
    """What every rank knows of a source: its frame times (None for one field without a time)."""

    path: str
    field: str
    series: bool
    times: tuple[float, ...] | None
    n_frames: int


def frame_weights(times: Sequence[float] | None, n_frames: int, t: float, source: str) -> list[tuple[int, float]]:
    """``[(frame, weight)]`` whose combination is the field at time ``t``: linear interpolation
    between the two frames around ``t``; the single frame of a one-field source.

    Raises
    ------
    DdromError
        ``t`` outside the series' time span (a silent constant extrapolation would answer
        another question): the message names the source, ``t`` and the span.
    """
    if n_frames == 1 or times is None:
        return [(0, 1.0)]
    ts = np.asarray(times, dtype=float)
    span = ts[-1] - ts[0]
    eps = 1e-9 * max(span, abs(ts[-1]), 1.0)
    if t < ts[0] - eps or t > ts[-1] + eps:
        raise DdromError(f"{source}: time {t:g} is outside the series' time span "
                         f"[{ts[0]:g}, {ts[-1]:g}] ({n_frames} frames)")
    i = int(np.clip(np.searchsorted(ts, t, side="right") - 1, 0, n_frames - 2))
    a = float(np.clip((t - ts[i]) / (ts[i + 1] - ts[i]), 0.0, 1.0))
    return [(i, 1.0 - a), (i + 1, a)] if a > 0 else [(i, 1.0)]


def probe_field_source(path: str, field: str, series: bool, times: Sequence[float] | None = None,
                       comm: Any = None) -> FieldSourceInfo:
    """Describe a source (rank 0 looks, every rank gets the answer; collective).

    ``times``: frame times of a glob series (files without times), refused for the others
    when they disagree with the file's own.
    """
    c = as_mpi(comm)
    info, msg = None, None
    if c.rank == 0:
        try:
            info = _probe(path, field, series, times)
        except DdromError as exc:
            msg = str(exc)
        except BaseException as exc:  # noqa: BLE001 - readers may exit: one message, every rank
            msg = f"{path}: cannot read it ({type(exc).__name__}: {exc})"
    raise_collective(c, msg)
    return c.bcast(info, root=0)


def _probe(path: str, field: str, series: bool, times: Sequence[float] | None) -> FieldSourceInfo:
    from ddrom.io.importers import _XdmfReader

    if path.lower().endswith((".xdmf", ".xmf")) and _has_collection(path):
        rd = _XdmfReader(path, field)
        ts = rd.times.tolist()
    else:
        sinfo = probe_series(path)
        ts = sinfo.times
        if sinfo.kind == "xdmf":          # an XDMF file without a collection: one field (meshio)
            ts = None
        n = max(sinfo.n_steps, 1)
        if ts is None and n > 1 and times is None:
            raise DdromError(f"{path}: {n} files and no frame times: give temperature.times")
        if ts is None and times is not None:
            ts = list(times)
        return _checked(path, field, series, ts, n, times)
    return _checked(path, field, series, ts, len(ts), times)


def _checked(path, field, series, ts, n, times) -> FieldSourceInfo:
    if not series and n != 1:
        raise DdromError(f"{path}: {n} frames of {field!r} where one field was expected "
                         "(set temperature.series = true to interpolate them in time)")
    if ts is not None:
        if len(ts) != n:
            raise DdromError(f"{path}: {len(ts)} frame times for {n} frames")
        if any(b <= a for a, b in zip(ts, ts[1:])):
            raise DdromError(f"{path}: frame times are not strictly increasing ({list(ts)[:6]}...)")
    if times is not None and ts is not None and not np.allclose(times, ts, rtol=1e-9, atol=0):
        raise DdromError(f"{path}: temperature.times {list(times)[:4]}... differ from the file's frame "
                         f"times {list(ts)[:4]}...")
    return FieldSourceInfo(path, field, bool(series), None if ts is None else tuple(float(t) for t in ts), n)


def _has_collection(path: str) -> bool:
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DdromError(f"{path}: not a readable XDMF file ({exc})") from None
    return any(g.get("GridType") == "Collection" for g in root.iter() if g.tag.rsplit("}", 1)[-1] == "Grid")


class _Frames:
    """The frame cache and the interpolation in time shared by the two readers."""

    info: FieldSourceInfo

    def __init__(self) -> None:
        self._cache: dict[int, np.ndarray] = {}

    def frame(self, i: int) -> np.ndarray:
        raise NotImplementedError  # pragma: no cover

    def _remember(self, i: int, values: np.ndarray) -> np.ndarray:
        if len(self._cache) >= CACHED_FRAMES:
            self._cache.pop(next(iter(self._cache)))
        self._cache[i] = values
        return values

    def at(self, t: float) -> np.ndarray:
        """The field at time ``t`` (linear in time between the two frames around it)."""
        out = None
        for i, w in frame_weights(self.info.times, self.info.n_frames, t, self.info.path):
            out = w * self.frame(i) if out is None else out + w * self.frame(i)
        return out


# ===================================================================== distributed
class DistributedField(_Frames):
    """A source matched to a distributed mesh; frames at the local nodes, on demand (collective).

    Parameters
    ----------
    info : from :func:`probe_field_source`
    dm : the distributed case mesh
    coord_rtol : node matching tolerance relative to the mesh diagonal
    """

    def __init__(self, info: FieldSourceInfo, dm: Any, coord_rtol: float = DEFAULT_COORD_RTOL):
        super().__init__()
        self.info, self.dm = info, dm
        self._series = DisplacementSeries(info.path, dm, field=info.field, coord_rtol=coord_rtol)
        self._gvec = None

    def frame(self, i: int) -> np.ndarray:
        """Values of frame ``i`` at this rank's local nodes (owned then ghost), (n_local_nodes,)."""
        if i in self._cache:
            return self._cache[i]
        from petsc4py import PETSc

        owned = self._series.point_values(i, self.info.field, 1)[:, 0]
        if self._gvec is None:
            self._gvec = self.dm.create_vector(1)
        g = self._gvec
        g.array[:] = owned
        g.ghostUpdate(PETSc.InsertMode.INSERT_VALUES, PETSc.ScatterMode.FORWARD)
        with g.localForm() as lf:
            return self._remember(i, lf.array.copy())

    def close(self) -> None:
        self._series.close()
        if self._gvec is not None:
            self._gvec.destroy()
            self._gvec = None


# ========================================================================= sampled
class SampledField(_Frames):
    """Values of a source at given nodes (natural ids and coordinates), replicated (collective).

    See the module documentation for the fast path (XDMF + HDF5 in the case's node order:
    only the asked rows are read) and the fallback (whole frames, nodes matched once by
    coordinates).
    """

    def __init__(self, info: FieldSourceInfo, comm: Any, coord_rtol: float = DEFAULT_COORD_RTOL):
        super().__init__()
        self.info, self._c, self.coord_rtol = info, as_mpi(comm), coord_rtol
        self._reader = None
        self._rows: np.ndarray | None = None            # file row of each asked node (rank 0)
        self._ids: np.ndarray | None = None
        #: "rows" (only the asked rows were read) or "whole" (whole frames), for the record
        self.access = ""

    def select(self, natural_ids: np.ndarray, coords: np.ndarray) -> None:
        """The nodes asked for from now on (collective; the same on every rank)."""
        ids = np.asarray(natural_ids, dtype=np.int64)
        if self._ids is not None and np.array_equal(ids, self._ids):
            return
        self._ids, self._cache = ids, {}
        msg = None
        if self._c.rank == 0:
            try:
                self._locate(ids, np.asarray(coords, dtype=float).reshape(-1, 3))
            except DdromError as exc:
                msg = str(exc)
            except BaseException as exc:  # noqa: BLE001 - one message on every rank, no hang
                msg = f"{self.info.path}: cannot read it ({type(exc).__name__}: {exc})"
        raise_collective(self._c, msg)
        self.access = self._c.bcast(self.access, root=0)

    def _tol(self, coords: np.ndarray) -> float:
        diag = float(np.linalg.norm(np.ptp(coords, axis=0))) if len(coords) > 1 else 1.0
        return self.coord_rtol * max(diag, 1e-300)

    def _open(self):
        from ddrom.io.importers import _FilesReader, _XdmfReader

        if self._reader is None:
            p = self.info.path
            if p.lower().endswith((".xdmf", ".xmf")) and _has_collection(p):
                self._reader = _XdmfReader(p, self.info.field)
            else:
                sinfo = probe_series(p)
                files = sinfo.files if sinfo.kind == "files" else [p]
                if sinfo.kind == "pieces":
                    raise DdromError(f"{p}: a parallel VTU temperature is read by the HF stages only; "
                                     "the online ROM needs one file per frame (VTU, XDMF)")
                self._reader = _FilesReader(files, p)
        return self._reader

    def _locate(self, ids: np.ndarray, coords: np.ndarray) -> None:
        from ddrom.io.importers import _XdmfReader

        rd = self._open()
        tol = self._tol(coords)
        if isinstance(rd, _XdmfReader) and len(ids):
            try:
                x = rd.rows(rd.geometry, ids)
                x = np.hstack([x, np.zeros((len(x), 3 - x.shape[1]))]) if x.shape[1] < 3 else x
                if np.all(np.linalg.norm(x - coords, axis=1) <= tol):
                    self._rows, self.access = ids, "rows"
                    return
            except DdromError:
                pass                          # fewer rows than the ids: another mesh order, match below
        from scipy.spatial import cKDTree

        pts = rd.points
        d, rows = cKDTree(pts).query(coords, k=1)
        bad = np.flatnonzero(d > tol)
        if len(bad):
            j = int(bad[0])
            raise DdromError(f"{self.info.path}: {len(bad)} of the {len(ids)} nodes the ROM needs have no "
                             f"point of the file within {tol:.3g} (e.g. natural node {int(ids[j])} at "
                             f"{np.round(coords[j], 6).tolist()}, nearest at distance {d[j]:.3g}): "
                             "the field is not given on the case mesh")
        self._rows, self.access = np.asarray(rows, dtype=np.int64), "whole"

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` at the selected nodes, (len(ids),), the same on every rank (collective)."""
        if self._ids is None:
            raise DdromError("SampledField.frame: select() the nodes first")
        if i in self._cache:
            return self._cache[i]
        from ddrom.io.importers import _XdmfReader

        vals, msg = None, None
        if self._c.rank == 0:
            try:
                rd = self._reader
                if self.access == "rows" and isinstance(rd, _XdmfReader):
                    a = rd.steps[i].attrs.get(self.info.field)
                    if a is None:
                        raise DdromError(f"{self.info.path} (frame {i}): no field {self.info.field!r}")
                    v = rd.rows(a[1], self._rows)
                else:
                    v = rd.read(i, self.info.field, "point")
                    v = np.asarray(v).reshape(len(rd.points), -1)[self._rows]
                v = np.asarray(v, dtype=float).reshape(len(self._rows), -1)
                if v.shape[1] != 1:
                    raise DdromError(f"{self.info.path}: field {self.info.field!r} has {v.shape[1]} "
                                     "components, a scalar was expected")
                vals = v[:, 0]
                if not np.all(np.isfinite(vals)):
                    raise DdromError(f"{self.info.path} (frame {i}): field {self.info.field!r} has NaN or "
                                     "Inf values")
            except DdromError as exc:
                msg = str(exc)
            except BaseException as exc:  # noqa: BLE001
                msg = f"{self.info.path}: cannot read frame {i} ({type(exc).__name__}: {exc})"
        raise_collective(self._c, msg)
        return self._remember(i, self._c.bcast(vals, root=0))

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def resolve(path: str, folder: str | os.PathLike) -> str:
    """A source path relative to ``folder`` (the case's) made absolute; a glob stays a glob."""
    return path if os.path.isabs(path) else os.path.join(os.fspath(folder), path)


def check_field_path(path: str) -> str | None:
    """Why a source path cannot be a field source (None if it can): a missing file, an empty glob."""
    import glob

    if any(ch in path for ch in "*?["):
        return None if glob.glob(path) else f"no file matches {path!r}"
    return None if os.path.isfile(path) else f"file {path!r} not found"


__all__ = ["FieldSourceInfo", "probe_field_source", "frame_weights", "DistributedField", "SampledField",
           "resolve", "check_field_path"]
