"""Readers of displacement time series written by other solvers (meshio formats).

Supported sources (``open_series`` picks by the name):

* ``*.xdmf`` / ``*.xmf``: an XDMF time series (one mesh, one data set per step), as
  written by ``meshio.xdmf.TimeSeriesWriter`` (and FEniCS/dolfinx); read with
  ``meshio.xdmf.TimeSeriesReader``; the times are the file's.
* ``*.pvd``: a ParaView collection; its ``<DataSet timestep=... file=...>`` entries
  (sorted by time) name VTU (or any meshio-readable) files relative to the .pvd.
* anything else: a glob pattern (``"out/u_*.vtu"``) or a single file; the files are
  sorted *naturally* (``u_2`` before ``u_10``) and carry no time: the caller supplies
  the times (the case's).

Parallel model: rank 0 reads the file(s), one step at a time, and sends each rank the
contiguous *natural* slice of the nodes ``NaturalMap.natural_range`` (``comm.scatter``),
which :meth:`NaturalMap.from_natural` turns into the rank's owned rows. Only one
step's nodal array is ever held on rank 0.

Node matching: the series' points must be the case mesh's nodes **in the case mesh's
natural order** (the order of the mesh file or generator): same count, and
``max_i |x_file_i - x_mesh_i| <= coord_rtol * D`` with ``D`` the diagonal of the mesh's
bounding box. No renumbering is attempted; a mismatch is a :class:`DdromError` naming
the file.
"""
from __future__ import annotations

import glob
import os
import re
import xml.etree.ElementTree as ET
from typing import Any, Callable

import numpy as np

from ddrom.parallel import DdromError, as_mpi, raise_collective

DEFAULT_COORD_RTOL = 1e-6   # files in single precision or ASCII lose digits; relative to the diagonal


def natural_key(s: str) -> list:
    """Sort key that orders embedded integers numerically (``u_2`` < ``u_10``)."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", s)]


class _Series:
    """Rank-0 reader: ``points`` (N, 3), ``times`` (n,) or None, ``read(k)`` -> (N, ncomp)."""

    source: str
    points: np.ndarray
    times: np.ndarray | None
    n_steps: int

    def read(self, k: int, field: str) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


def _point_field(point_data: dict, field: str, where: str) -> np.ndarray:
    if field not in point_data:
        raise DdromError(f"{where}: no point field {field!r} (point fields: {sorted(point_data)}); "
                         "choose it with --field")
    return np.asarray(point_data[field], dtype=float)


class _XdmfSeries(_Series):
    def __init__(self, path: str):
        import meshio

        self.source = path
        self._reader = meshio.xdmf.TimeSeriesReader(path)
        points, _ = self._reader.read_points_cells()
        self.points = np.asarray(points, dtype=float)
        self.n_steps = int(self._reader.num_steps)
        # The times are the <Time Value=...> of the step grids: read from the XML only.
        times = []
        for k, grid in enumerate(self._reader.collection):
            tv = [c.get("Value") for c in grid if c.tag == "Time"]
            if not tv:
                raise DdromError(f"{path}: step {k} has no <Time>")
            times.append(float(tv[0]))
        self.times = np.array(times)

    def read(self, k: int, field: str) -> np.ndarray:
        _, pd, _ = self._reader.read_data(k)
        return _point_field(pd, field, f"{self.source} (step {k})")

    def close(self) -> None:
        self._reader.__exit__(None, None, None)


class _FileSeries(_Series):
    """One meshio-readable file per step (VTU, ...)."""

    def __init__(self, files: list[str], times: np.ndarray | None, source: str):
        import meshio

        if not files:
            raise DdromError(f"{source}: no file matches")
        self.source = source
        self.files = files
        self.times = times
        self.n_steps = len(files)
        self._meshio = meshio
        first = self._read_mesh(0)
        self.points = np.asarray(first.points, dtype=float)
        self._first = first

    def _read_mesh(self, k: int):
        try:
            return self._meshio.read(self.files[k])
        except Exception as exc:  # noqa: BLE001 - any reader failure names the file
            raise DdromError(f"{self.files[k]}: cannot read it ({type(exc).__name__}: {exc})") from None

    def read(self, k: int, field: str) -> np.ndarray:
        m = self._first if k == 0 and self._first is not None else self._read_mesh(k)
        if k == 0:
            self._first = None
        if len(m.points) != len(self.points) or not np.array_equal(np.asarray(m.points, float), self.points):
            raise DdromError(f"{self.files[k]}: its points differ from those of {self.files[0]} "
                             "(a series must keep one mesh)")
        return _point_field(m.point_data, field, self.files[k])


def _pvd_entries(path: str) -> tuple[list[str], np.ndarray]:
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DdromError(f"{path}: not a readable PVD file ({exc})") from None
    folder = os.path.dirname(os.path.abspath(path))
    entries = []
    for ds in root.iter("DataSet"):
        f = ds.get("file")
        if f is None:
            raise DdromError(f"{path}: a <DataSet> has no 'file' attribute")
        if ds.get("part", "0") not in ("0", ""):
            raise DdromError(f"{path}: multi-part collections (part={ds.get('part')}) are not supported")
        try:
            t = float(ds.get("timestep", "nan"))
        except ValueError:
            raise DdromError(f"{path}: timestep {ds.get('timestep')!r} is not a number") from None
        entries.append((t, f if os.path.isabs(f) else os.path.join(folder, f)))
    if not entries:
        raise DdromError(f"{path}: no <DataSet> entries")
    entries.sort(key=lambda e: e[0])
    times = np.array([e[0] for e in entries])
    return [e[1] for e in entries], (None if np.isnan(times).any() else times)


def open_series(spec: str) -> _Series:
    """Open a time series on the calling rank (rank 0 only in ddrom). See the module doc."""
    low = spec.lower()
    if low.endswith((".xdmf", ".xmf")):
        if not os.path.exists(spec):
            raise DdromError(f"{spec}: file not found")
        try:
            return _XdmfSeries(spec)
        except DdromError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise DdromError(f"{spec}: cannot read it as an XDMF time series "
                             f"({type(exc).__name__}: {exc})") from None
    if low.endswith(".pvd"):
        if not os.path.exists(spec):
            raise DdromError(f"{spec}: file not found")
        files, times = _pvd_entries(spec)
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise DdromError(f"{spec}: {len(missing)} listed file(s) missing, e.g. {missing[0]}")
        return _FileSeries(files, times, spec)
    files = sorted(glob.glob(spec), key=natural_key)
    return _FileSeries(files, None, spec)


def scatter_natural(comm: Any, nmap: Any, values: np.ndarray | None) -> np.ndarray:
    """Rank 0's whole array (N, ...) in natural order -> this rank's owned rows (n_owned, ...).

    Rank 0 sends each rank its slice ``natural_range`` (one ``comm.scatter``), then
    :meth:`NaturalMap.from_natural` moves the rows to the rank-major owned layout.
    ``values`` is ignored on the other ranks.
    """
    c = as_mpi(comm)
    bounds = c.allgather(nmap.natural_range)
    chunk = c.scatter([values[lo:hi] for lo, hi in bounds] if c.rank == 0 else None, root=0)
    return nmap.from_natural(chunk)


class DisplacementSeries:
    """A displacement time series matched to a distributed case mesh (collective).

    Attributes (same on every rank)
    ----------
    source : str
    times : ndarray (n,) or None
        The file's times, None when the format has none (VTU glob).
    n_steps : int
        Number of stored steps in the file.
    """

    def __init__(self, spec: str, dm: Any, field: str = "displacement",
                 coord_rtol: float = DEFAULT_COORD_RTOL):
        c = as_mpi(dm.comm)
        self.dm, self.field, self._c = dm, field, c
        self._series, msg, head, points = None, None, None, None
        if c.rank == 0:
            try:
                self._series = open_series(spec)
                s = self._series
                points = s.points
                if points.ndim != 2 or points.shape[1] not in (2, 3):
                    raise DdromError(f"{s.source}: points of shape {points.shape}, expected (N, 3)")
                if points.shape[1] == 2:
                    points = np.hstack([points, np.zeros((len(points), 1))])
                if len(points) != dm.n_nodes_global:
                    raise DdromError(
                        f"{s.source}: {len(points)} nodes, the case mesh has {dm.n_nodes_global}; the "
                        "series must be written on the case mesh's nodes, in its natural order")
                head = (s.source, None if s.times is None else s.times.tolist(), s.n_steps)
            except DdromError as exc:
                msg = str(exc)
            except Exception as exc:  # noqa: BLE001
                msg = f"{spec}: cannot read it ({type(exc).__name__}: {exc})"
        raise_collective(c, msg)
        self.source, times, self.n_steps = c.bcast(head, root=0)
        self.times = None if times is None else np.array(times)
        # Coordinates, compared on each rank's natural slice: nothing mesh-sized is gathered.
        x_file = scatter_natural(c, dm.natural_nodes, points)
        del points
        x_mesh = dm.coords[: dm.n_owned]
        lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
        if dm.n_owned:
            lo, hi = x_mesh.min(axis=0), x_mesh.max(axis=0)
        c.Allreduce(_in_place(), lo, op=_op("MIN"))
        c.Allreduce(_in_place(), hi, op=_op("MAX"))
        diag = float(np.linalg.norm(hi - lo))
        d = np.linalg.norm(x_file - x_mesh, axis=1) if dm.n_owned else np.zeros(0)
        local = (float(d.max()), int(dm.natural_nodes.owned_natural[int(d.argmax())])) if d.size else (-1.0, -1)
        dmax, node = max(c.allgather(local))
        self.max_coordinate_distance = dmax
        if dmax > coord_rtol * diag:
            self.close()
            raise DdromError(
                f"{self.source}: node coordinates differ from the case mesh's by up to {dmax:.3e} "
                f"(node {node} in natural order; tolerance {coord_rtol:g} x diagonal {diag:.4g}). "
                "The series must be written on the case mesh's nodes in the same order (the natural "
                "order of the mesh file or generator)")

    def displacement(self, k: int) -> np.ndarray:
        """(n_owned, 3) displacement of step ``k`` of the file at this rank's owned nodes (collective)."""
        c = self._c
        u, msg = None, None
        if c.rank == 0:
            try:
                u = self._series.read(k, self.field)
                u = u.reshape(len(u), -1)
                if u.shape[1] == 2:
                    u = np.hstack([u, np.zeros((len(u), 1))])
                if u.shape != (self.dm.n_nodes_global, 3):
                    raise DdromError(f"{self.source} (step {k}): field {self.field!r} has shape {u.shape}, "
                                     f"expected ({self.dm.n_nodes_global}, 3)")
                if not np.all(np.isfinite(u)):
                    raise DdromError(f"{self.source} (step {k}): field {self.field!r} has NaN or Inf values")
            except DdromError as exc:
                msg = str(exc)
            except Exception as exc:  # noqa: BLE001
                msg = f"{self.source} (step {k}): cannot read it ({type(exc).__name__}: {exc})"
        raise_collective(c, msg)
        return scatter_natural(c, self.dm.natural_nodes, u)

    def close(self) -> None:
        if self._series is not None:
            self._series.close()
            self._series = None


def _in_place():
    from mpi4py import MPI

    return MPI.IN_PLACE


def _op(name: str) -> Callable:
    from mpi4py import MPI

    return getattr(MPI, name)
