"""Readers of displacement (and optionally stress) time series written by other solvers.

Supported sources (:func:`probe_series` picks by the name):

* ``*.xdmf`` / ``*.xmf``: an XDMF 3 time series: one or more temporal collections (as
  written by dolfinx's ``XDMFFile.write_function``, one collection per function, and by
  meshio's ``TimeSeriesWriter``, one collection with several attributes per step), the
  mesh in a uniform grid outside the collections (or in the first step's grid). The steps
  are the times at which the displacement field is present; another field (the stress) is
  looked up at the same time. Read by a small XML reader and ``h5py`` (DataItems of
  format HDF, XML or HyperSlab), so several collections per file work (meshio's reader
  sees only the last one).
* ``*.pvd``: a ParaView collection; its ``<DataSet timestep=... file=...>`` entries
  (sorted by time) name VTU (or any meshio-readable) files, or ``.pvtu`` files, relative
  to the .pvd.
* ``*.pvtu``: a parallel VTU file (one ``<Piece Source=...>`` per subdomain of the
  producing solver); a single one is one step, a glob or a .pvd of them a series.
  A piece listed twice (DOLFINx 0.5) is read once; the cells a piece flags as ghosts
  (``vtkGhostType``) are left to the piece that owns them.
* ``*.vtu`` of any VTK XML version: meshio reads versions 0.1 and 1.0, :mod:`ddrom.io.vtu`
  the others (DOLFINx's ``VTKFile`` writes 2.2, with degree-1 Lagrange cells, which are
  read as hexahedra and tetrahedra).
* ``*.frd``: CalculiX results (:class:`ddrom.io.calculix.FrdFile`): the solid mesh of the
  file and its nodal blocks per output time (total time); the displacement is the
  ``DISP`` block (``field`` ``"displacement"``, ``"u"`` or ``"DISP"``), a stress field the
  nodal ``STRESS`` (6 components in VTK's order) or any other block by its name. Values
  have 6 significant digits, coordinates too: the node matching tolerance is raised to
  that precision.
* a single-file kind given by a glob (``runs/E200/*.pvd``) is the one file it matches
  (several matches are an error: one series is one file).
* anything else: a glob pattern (``"out/u_*.vtu"``) or a single file; the files are
  sorted *naturally* (``u_2`` before ``u_10``) and carry no time: the caller supplies
  the times (the case's).

Parallel model
--------------
* Single files (XDMF, VTU, ...): rank 0 reads, one step at a time; the values go to the
  ranks by their natural ids (:class:`~ddrom.io.matching.Router`), so only one step's
  array is ever held on rank 0.
* Parallel VTU: the pieces are dealt round-robin over the ranks (piece ``i`` to rank
  ``i % size``; any piece count works with any rank count); each rank reads only its
  pieces (meshio, per piece) and sends the values to the ranks that hold them.

Node (and cell) matching: see :mod:`ddrom.io.matching` (``--node-order``: ``auto``
keeps the file's order when it is the case's natural order, else matches by
coordinates; ``keep`` requires the natural order; ``coordinates`` always matches).

Stress (``stress_field``) and plastic strain (``peeq_field``, a scalar): a cell field or
a point field. A point field is reduced to cells as the mean of the cell's node values
(the cell average of the interpolated field for affine cells), computed on the reading
rank on the file's own cells. Cells are matched by their centroids, like nodes.

Stress components (conventions)
-------------------------------
* **In files**, a stress tensor is 9 components (row-major 3x3, e.g. dolfinx) or 6
  components of the symmetric tensor with *tensor* (not engineering) shear values. The
  order of the 6 differs between codes, and nothing in a file says which it is:

  ====================  ===========================  ==========================
  order                 written by                   ``order=`` string
  ====================  ===========================  ==========================
  xx yy zz xy yz xz     VTK, ParaView, meshio,       ``"xx yy zz xy yz xz"``
                        CalculiX ``.frd`` (SZX = xz)  (:data:`VTK_ORDER`, default)
  xx yy zz xy xz yz     CalculiX ``.dat``, Abaqus    ``"xx yy zz xy xz yz"``
                        (S11 S22 S33 S12 S13 S23)    (:data:`ABAQUS_ORDER`)
  ====================  ===========================  ==========================

  :func:`to_mandel` takes the order explicitly (``order=``: 6 names, or ``"vtk"`` /
  ``"abaqus"``, :data:`NAMED_ORDERS`); the default is VTK's. ``ddrom import
  --stress-order`` passes it (default: VTK's for a field of the series, Abaqus' for a
  CalculiX ``.dat``). Reading CalculiX's ``.dat`` stresses in VTK order swaps the xz and
  yz shears, which shows as a "difference" of tens of percent with no other hint.
* **In the snapshot store** and everywhere inside ddrom, stresses (and strains) are
  Mandel 6-vectors ``[s11, s22, s33, sqrt2 s12, sqrt2 s23, sqrt2 s13]``
  (:mod:`ddrom.materials.tensors`): the Euclidean norm of the 6-vector is the Frobenius
  norm of the tensor, ``a : b`` is a dot product. To get tensor components back divide
  the last three by ``sqrt2`` (note the order: 23 before 13, like VTK).
"""
from __future__ import annotations

import glob
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ddrom.io.matching import (Router, bbox_diagonal, case_cell_centroids, case_node_coordinates,
                               match_rows)
from ddrom.parallel import CollectiveError, DdromError, as_mpi, describe_exception, raise_collective

DEFAULT_COORD_RTOL = 1e-6   # files in single precision or ASCII lose digits; relative to the diagonal
_VOLUME = {"hexahedron": 8, "tetra": 4}
_XDMF_TOPO = {"hexahedron": "hexahedron", "tetrahedron": "tetra"}
_SQ2 = np.sqrt(2.0)


def natural_key(s: str) -> list:
    """Sort key that orders embedded integers numerically (``u_2`` < ``u_10``)."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", s)]


#: VTK's (and ParaView's, meshio's, CalculiX ``.frd``'s) order of 6 symmetric components.
VTK_ORDER = "xx yy zz xy yz xz"
#: Abaqus' and CalculiX ``.dat``'s order (S11 S22 S33 S12 S13 S23).
ABAQUS_ORDER = "xx yy zz xy xz yz"
#: Orders a user may give by name (``--stress-order abaqus``).
NAMED_ORDERS = {"vtk": VTK_ORDER, "abaqus": ABAQUS_ORDER}
#: Mandel slot of each component name (either index order of a shear names the same slot).
_SLOT = {"xx": 0, "yy": 1, "zz": 2, "xy": 3, "yx": 3, "yz": 4, "zy": 4, "xz": 5, "zx": 5,
         "11": 0, "22": 1, "33": 2, "12": 3, "21": 3, "23": 4, "32": 4, "13": 5, "31": 5}


def component_order(order: str | Sequence[str], where: str = "") -> np.ndarray:
    """Mandel slot of each of 6 named components: ``"xx yy zz xy xz yz"`` -> ``[0, 1, 2, 3, 5, 4]``.

    ``order`` is a string of 6 names separated by blanks or commas (or a sequence of
    them); a name is ``xx, yy, zz, xy, yz, xz`` (or ``yx``, ``zy``, ``zx``, or the index
    form ``11, 22, 33, 12, 23, 13``), case-insensitive. Each of the 6 components must
    appear exactly once. ``"vtk"`` and ``"abaqus"`` name :data:`VTK_ORDER` and
    :data:`ABAQUS_ORDER` (:data:`NAMED_ORDERS`).

    Raises
    ------
    DdromError
        Naming ``where`` and the order: a wrong count, an unknown name or a repeated component.
    """
    if isinstance(order, str) and order.strip().lower() in NAMED_ORDERS:
        order = NAMED_ORDERS[order.strip().lower()]
    names = (re.split(r"[\s,;]+", order.strip()) if isinstance(order, str) else [str(n) for n in order])
    names = [n.lower().strip() for n in names if n.strip()]
    head = f"{where}: " if where else ""
    if len(names) != 6:
        raise DdromError(f"{head}stress component order {order!r}: expected 6 names such as "
                         f"{VTK_ORDER!r}, or one of {', '.join(NAMED_ORDERS)}, got {len(names)} name(s)")
    bad = [n for n in names if n not in _SLOT]
    if bad:
        raise DdromError(f"{head}stress component order {order!r}: unknown component {bad[0]!r} "
                         "(names are xx yy zz xy yz xz, or 11 22 33 12 23 13)")
    slots = np.array([_SLOT[n] for n in names])
    if len(set(slots.tolist())) != 6:
        raise DdromError(f"{head}stress component order {order!r}: a component appears twice")
    return slots


def to_mandel(a: np.ndarray, where: str = "", order: str | Sequence[str] | None = None) -> np.ndarray:
    """Stress tensors from a file -> Mandel 6-vectors ``[s11, s22, s33, sqrt2 s12, sqrt2 s23, sqrt2 s13]``.

    Parameters
    ----------
    a : (n, 9), (n, 3, 3) or (n, 6) array
        Full tensors (row-major; the off-diagonal terms are symmetrized,
        ``(s_ij + s_ji) / 2``) or 6 symmetric components with tensor shears in ``order``.
    where : str
        Prefix of error messages (file, step, field).
    order : str or sequence of 6 names, optional
        Order of 6 components (see :func:`component_order` and the module doc), default
        :data:`VTK_ORDER` ``"xx yy zz xy yz xz"``; CalculiX ``.dat`` and Abaqus use
        :data:`ABAQUS_ORDER` ``"xx yy zz xy xz yz"``. Ignored for 9 components.

    Raises
    ------
    DdromError
        A component count other than 9 or 6, or an invalid ``order``.
    """
    a = np.asarray(a, dtype=float)
    a = a.reshape(len(a), -1)
    if a.shape[1] == 9:
        t = a.reshape(-1, 3, 3)
        return np.column_stack([t[:, 0, 0], t[:, 1, 1], t[:, 2, 2],
                                _SQ2 * 0.5 * (t[:, 0, 1] + t[:, 1, 0]),
                                _SQ2 * 0.5 * (t[:, 1, 2] + t[:, 2, 1]),
                                _SQ2 * 0.5 * (t[:, 0, 2] + t[:, 2, 0])])
    if a.shape[1] == 6:
        slots = component_order(VTK_ORDER if order is None else order, where)
        out = np.empty_like(a)
        out[:, slots] = a
        return out * np.array([1.0, 1.0, 1.0, _SQ2, _SQ2, _SQ2])
    hint = VTK_ORDER if order is None else (order if isinstance(order, str) else " ".join(order))
    raise DdromError(f"{where}: a stress field needs 9 (3x3) or 6 ({hint}) components per "
                     f"item, got {a.shape[1]}")


# ============================================================== rank-local readers
class _Reader:
    """What a reading rank holds: ``points`` (m, 3) rows, ``cells`` (c, k) row indices of
    the volume cells, and per-step fields. Ranks that read nothing hold empty arrays."""

    points: np.ndarray
    cells: np.ndarray

    def read(self, k: int, name: str, center: str) -> np.ndarray:
        raise NotImplementedError  # pragma: no cover

    def centers(self, k: int, name: str) -> list[str]:
        """Centers ('point', 'cell') at which field ``name`` exists at step ``k``."""
        raise NotImplementedError  # pragma: no cover

    def field_names(self, k: int) -> list[str]:
        raise NotImplementedError  # pragma: no cover

    def close(self) -> None:
        pass


class _Empty(_Reader):
    def __init__(self):
        self.points = np.zeros((0, 3))
        self.cells = np.zeros((0, 0), dtype=np.int64)

    def read(self, k, name, center):
        return np.zeros((0, 0))


def _pad3(points: np.ndarray, where: str) -> np.ndarray:
    points = np.asarray(points, dtype=float)
    if points.ndim != 2 or points.shape[1] not in (2, 3):
        raise DdromError(f"{where}: points of shape {points.shape}, expected (N, 3)")
    if points.shape[1] == 2:
        points = np.hstack([points, np.zeros((len(points), 1))])
    return points


def _strip(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


@dataclass
class _XdmfStep:
    time: float
    attrs: dict          # name -> (center, DataItem element)


class _XdmfReader(_Reader):
    """XDMF 3 time series (see the module doc). Holds no field data between calls."""

    def __init__(self, path: str, field: str):
        self.source, self.base = path, os.path.dirname(os.path.abspath(path))
        try:
            root = ET.parse(path).getroot()
        except (ET.ParseError, OSError) as exc:
            raise DdromError(f"{path}: not a readable XDMF file ({exc})") from None
        domain = next((e for e in root if _strip(e.tag) == "Domain"), None)
        if _strip(root.tag) != "Xdmf" or domain is None:
            raise DdromError(f"{path}: not an XDMF file (no <Xdmf><Domain>)")
        grids = [g for g in domain if _strip(g.tag) == "Grid"]
        colls = [g for g in grids if g.get("GridType") == "Collection"]
        if not colls:
            raise DdromError(f"{path}: no temporal collection (<Grid GridType=\"Collection\">): "
                             "not a time series")
        mesh_grid = next((g for g in grids if g.get("GridType") != "Collection"), None)
        by_time: dict[float, dict] = {}
        for coll in colls:
            for g in coll:
                if _strip(g.tag) != "Grid":
                    continue
                tv = [c.get("Value") for c in g if _strip(c.tag) == "Time"]
                if not tv:
                    raise DdromError(f"{path}: a step grid of collection {coll.get('Name')!r} has no <Time>")
                t = float(tv[0])
                slot = by_time.setdefault(t, {})
                for a in g:
                    if _strip(a.tag) == "Attribute":
                        items = [d for d in a if _strip(d.tag) == "DataItem"]
                        if items:
                            slot[a.get("Name")] = (a.get("Center", "Node").lower(), items[0])
                if mesh_grid is None and any(_strip(c.tag) == "Geometry" for c in g):
                    mesh_grid = g
        if mesh_grid is None:
            raise DdromError(f"{path}: no grid with a <Geometry>")
        names = sorted({n for s in by_time.values() for n in s})
        self.steps = [_XdmfStep(t, by_time[t]) for t in sorted(by_time) if field in by_time[t]]
        if not self.steps:
            raise DdromError(f"{path}: no field {field!r} (fields: {names}); choose it with --field")
        self.times = np.array([s.time for s in self.steps])
        geo = next((c for c in mesh_grid if _strip(c.tag) == "Geometry"), None)
        top = next((c for c in mesh_grid if _strip(c.tag) == "Topology"), None)
        if geo is None:
            raise DdromError(f"{path}: the mesh grid has no <Geometry>")
        if geo.get("GeometryType", "XYZ") not in ("XYZ", "XY"):
            raise DdromError(f"{path}: GeometryType {geo.get('GeometryType')} not supported (XYZ or XY)")
        self.geometry, self._ncol = geo, 2 if geo.get("GeometryType") == "XY" else 3
        self._points: np.ndarray | None = None
        self._top = top

    @property
    def points(self) -> np.ndarray:  # type: ignore[override]
        # read on first use: a reader of a few rows (ddrom.io.fields.SampledField) never needs them all
        if self._points is None:
            self._points = _pad3(self._item(self.geometry).reshape(-1, self._ncol), self.source)
        return self._points

    def rows(self, item: ET.Element, rows: np.ndarray) -> np.ndarray:
        """Rows of a DataItem (the geometry, or a step's attribute) without reading the others
        where the format allows (:func:`ddrom.io.xdmf.read_data_item_rows`)."""
        from ddrom.io.xdmf import read_data_item_rows

        if _strip(item.tag) != "DataItem":
            item = next((d for d in item if _strip(d.tag) == "DataItem"), item)
        try:
            return np.asarray(read_data_item_rows(item, self.base, rows))
        except DdromError:
            raise
        except Exception as exc:  # noqa: BLE001 - any h5py/XML failure names the file
            raise DdromError(f"{self.source}: cannot read DataItem {(item.text or '').strip()!r} "
                             f"({type(exc).__name__}: {exc})") from None

    def _item(self, parent_or_item: ET.Element) -> np.ndarray:
        from ddrom.io.xdmf import read_data_item

        el = parent_or_item
        if _strip(el.tag) != "DataItem":
            el = next((d for d in el if _strip(d.tag) == "DataItem"), None)
            if el is None:
                raise DdromError(f"{self.source}: <{_strip(parent_or_item.tag)}> has no DataItem")
        try:
            return np.asarray(read_data_item(el, self.base))
        except DdromError:
            raise
        except Exception as exc:  # noqa: BLE001 - any h5py/XML failure names the file
            raise DdromError(f"{self.source}: cannot read DataItem {(el.text or '').strip()!r} "
                             f"({type(exc).__name__}: {exc})") from None

    @property
    def cells(self) -> np.ndarray:  # type: ignore[override]
        if self._top is None:
            raise DdromError(f"{self.source}: the mesh grid has no <Topology>")
        kind = self._top.get("TopologyType", "").lower()
        if kind not in _XDMF_TOPO:
            raise DdromError(f"{self.source}: topology {kind!r}: only hexahedra and tetrahedra are supported")
        return self._item(self._top).astype(np.int64).reshape(-1, _VOLUME[_XDMF_TOPO[kind]])

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    def field_names(self, k):
        return sorted(self.steps[k].attrs)

    def centers(self, k, name):
        a = self.steps[k].attrs.get(name)
        return [] if a is None else [{"node": "point", "cell": "cell"}.get(a[0], a[0])]

    def read(self, k, name, center):
        a = self.steps[k].attrs.get(name)
        if a is None:
            raise DdromError(f"{self.source} (t = {self.steps[k].time:g}): no field {name!r} "
                             f"(fields: {self.field_names(k)})")
        return self._item(a[1])


class _FrdReader(_Reader):
    """A CalculiX ``.frd`` (rank 0): its solid mesh and its nodal blocks, one output time per step.

    Only the nodes used by the solid elements are rows (the node block may hold others,
    e.g. CalculiX's expansion nodes); a block must give a value at each of them.
    """

    #: names a caller may use for the displacement and the stress
    ALIASES = {"DISPLACEMENT": "DISP", "U": "DISP", "STRESS": "STRESS", "S": "STRESS", "SIGMA": "STRESS",
               "PEEQ": "PE"}

    def __init__(self, path: str, field: str):
        from ddrom.io.calculix import FrdFile

        self.source = path
        self.frd = FrdFile(path)
        try:
            _, cells, _, used = self.frd.volume_mesh()
            new_of_old = np.full(len(self.frd.node_ids), -1, dtype=np.int64)
            new_of_old[used] = np.arange(used.size)
            self._used = used
            self._new_of_old = new_of_old
            self.points = self.frd.points[used]
            self.cells = new_of_old[cells]
            # E12.5: 6 significant digits, i.e. within 5e-6 relative of the largest coordinate
            self.coordinate_precision = 1e-5 * float(np.abs(self.points).max()) if len(self.points) else 0.0
            name = self._name(field)
            blocks = self.frd.series(name)
            if not blocks:
                raise DdromError(f"{path}: no nodal block {name!r} (blocks: {self.frd.names()}); choose the "
                                 "displacement with --field, or write it with *NODE FILE, U")
            self.times = np.array([b.time for b in blocks])
            rep = np.flatnonzero(np.diff(self.times) <= 0)
            if rep.size:
                i = int(rep[0])
                raise DdromError(f"{path}: {name} blocks at times {self.times[i]:g} (line {blocks[i].line}) then "
                                 f"{self.times[i + 1]:g} (line {blocks[i + 1].line}): the times must increase")
            self._steps = [(b.time, b.step, b.increment) for b in blocks]
        except Exception:
            self.frd.close()
            raise

    def _name(self, field: str) -> str:
        return self.ALIASES.get(field.upper(), field.upper())

    def _block(self, k: int, name: str):
        t, step, inc = self._steps[k]
        found = [b for b in self.frd.series(self._name(name)) if b.time == t and (b.step, b.increment) == (step, inc)]
        return found[-1] if found else None

    def field_names(self, k):
        t, step, inc = self._steps[k]
        return sorted({b.name for b in self.frd.blocks if b.time == t and (b.step, b.increment) == (step, inc)})

    def centers(self, k, name):
        return ["point"] if self._block(k, name) is not None else []

    def read(self, k, name, center):
        b = self._block(k, name)
        if b is None or center != "point":
            raise DdromError(f"{self.source} (t = {self._steps[k][0]:g}): no nodal block {name!r} "
                             f"(blocks: {self.field_names(k)})")
        ids, vals = self.frd.read(b)
        rows = self._new_of_old[self.frd.rows_of_nodes(ids, f"block {b.name} at t = {b.time:g}")]
        out = np.full((len(self.points), vals.shape[1]), np.nan)
        keep = rows >= 0
        out[rows[keep]] = vals[keep]
        missing = np.flatnonzero(np.isnan(out).any(axis=1))
        if missing.size:
            nid = int(self.frd.node_ids[self._used[missing[0]]])
            raise DdromError(f"{self.source}: block {b.name} at t = {b.time:g} (line {b.line}) has no value at "
                             f"{missing.size} node(s) of the elements, e.g. node {nid}: write it for every node "
                             "(*NODE FILE without NSET=)")
        return out

    def close(self):
        self.frd.close()


def _read_meshio(path: str):
    import meshio

    try:
        return meshio.read(path)
    except SystemExit:      # meshio exits when no reader accepts the file
        raise DdromError(f"{path}: cannot read it (meshio cannot parse it as "
                         f"{os.path.splitext(path)[1] or 'any format'})") from None
    except Exception as exc:  # noqa: BLE001 - any reader failure names the file
        raise DdromError(f"{path}: cannot read it ({type(exc).__name__}: {exc})") from None


class _MeshFile:
    """One file of a series: points, the volume cells, and the fields on them.

    A ``.vtu`` of a VTK XML version meshio does not read (DOLFINx's ``VTKFile`` writes
    2.2) is read by :func:`ddrom.io.vtu.read_vtu`. Degree-1 Lagrange cells (DOLFINx) are
    hexahedra and tetrahedra; cells flagged as ghosts (``vtkGhostType``, a parallel
    writer's copies of other processes' cells) are dropped, with their cell data.
    """

    def __init__(self, path: str):
        from ddrom.io.vtu import GHOST_CELL, MESHIO_LAGRANGE, MESHIO_VERSIONS, read_vtu, volume_cells, vtu_version

        self.path = path
        if path.lower().endswith(".vtu") and vtu_version(path) not in MESHIO_VERSIONS + ("",):
            v = read_vtu(path)
            self.points = _pad3(v.points, path)
            self.cells, kept = volume_cells(v, path)
            self.point_data = v.point_data
            self.cell_data = {k: np.asarray(a)[kept].reshape(len(kept), -1) for k, a in v.cell_data.items()}
            return
        m = _read_meshio(path)
        self.points = _pad3(m.points, path)

        def kind(b) -> str | None:
            if b.type in _VOLUME:
                return b.type
            lag = MESHIO_LAGRANGE.get(b.type)
            return lag[0] if lag and np.asarray(b.data).shape[1] == lag[1] else None

        blocks = [i for i, b in enumerate(m.cells) if kind(b)]
        types = {kind(m.cells[i]) for i in blocks}
        if len(types) > 1:
            raise DdromError(f"{path}: mixed volume cells {sorted(types)}")
        ghost = m.cell_data.get("vtkGhostType")
        keep = {i: (np.ones(len(m.cells[i].data), bool) if ghost is None else
                    (np.asarray(ghost[i]).reshape(-1).astype(np.int64) & GHOST_CELL) == 0) for i in blocks}
        self._blocks = blocks
        self.cells = (np.concatenate([np.asarray(m.cells[i].data)[keep[i]] for i in blocks]).astype(np.int64)
                      if blocks else np.zeros((0, 0), dtype=np.int64))
        self.point_data = m.point_data
        self.cell_data = {k: np.concatenate([np.asarray(v[i]).reshape(len(m.cells[i].data), -1)[keep[i]]
                                             for i in blocks]) for k, v in m.cell_data.items() if blocks}

    def field(self, name: str, center: str) -> np.ndarray:
        data = self.point_data if center == "point" else self.cell_data
        if name not in data:
            raise DdromError(f"{self.path}: no {center} field {name!r} ({center} fields: {sorted(data)})")
        return np.asarray(data[name], dtype=float)


class _FilesReader(_Reader):
    """One meshio-readable file per step (rank 0)."""

    def __init__(self, files: list[str], source: str):
        self.source, self.files = source, files
        self._cur = (0, _MeshFile(files[0]))
        self.points = self._cur[1].points
        self.cells = self._cur[1].cells

    def _file(self, k: int) -> _MeshFile:
        if self._cur[0] != k:
            m = _MeshFile(self.files[k])
            if len(m.points) != len(self.points) or not np.array_equal(m.points, self.points):
                raise DdromError(f"{self.files[k]}: its points differ from those of {self.files[0]} "
                                 "(a series must keep one mesh)")
            self._cur = (k, m)
        return self._cur[1]

    def field_names(self, k):
        m = self._file(k)
        return sorted(set(m.point_data) | set(m.cell_data))

    def centers(self, k, name):
        m = self._file(k)
        return [c for c, d in (("point", m.point_data), ("cell", m.cell_data)) if name in d]

    def read(self, k, name, center):
        return self._file(k).field(name, center)


def pvtu_pieces(path: str) -> list[str]:
    """The piece files of a .pvtu (``<Piece Source=...>``, relative to its folder)."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DdromError(f"{path}: not a readable PVTU file ({exc})") from None
    if root.get("type") != "PUnstructuredGrid":
        raise DdromError(f"{path}: not a parallel VTU file (VTKFile type {root.get('type')!r})")
    folder = os.path.dirname(os.path.abspath(path))
    out = []
    for p in root.iter("Piece"):
        src = p.get("Source")
        if not src:
            raise DdromError(f"{path}: a <Piece> has no 'Source' attribute")
        out.append(src if os.path.isabs(src) else os.path.join(folder, src))
    if not out:
        raise DdromError(f"{path}: no <Piece> entries")
    # DOLFINx 0.5's VTKFile lists every piece twice: read each file once
    return list(dict.fromkeys(out))


class _PiecesReader(_Reader):
    """This rank's pieces of a parallel VTU series (piece ``i`` read by rank ``i % size``)."""

    def __init__(self, steps: list[list[str]], rank: int, size: int):
        self.steps = [[f for i, f in enumerate(files) if i % size == rank] for files in steps]
        self._cur: tuple[int, list[_MeshFile]] | None = None
        first = self._files(0, check=False)
        self._ref = [m.points for m in first]
        self.points = np.concatenate([m.points for m in first]) if first else np.zeros((0, 3))
        off = np.cumsum([0] + [len(m.points) for m in first])
        cells = [m.cells + o for m, o in zip(first, off) if m.cells.size]
        self.cells = np.concatenate(cells) if cells else np.zeros((0, 0), dtype=np.int64)

    def _files(self, k: int, check: bool = True) -> list[_MeshFile]:
        if self._cur is None or self._cur[0] != k:
            ms = [_MeshFile(f) for f in self.steps[k]]
            if check:
                for m, ref, f0 in zip(ms, self._ref, self.steps[0]):
                    if len(m.points) != len(ref) or not np.array_equal(m.points, ref):
                        raise DdromError(f"{m.path}: its points differ from those of {f0} "
                                         "(a series must keep one mesh and one decomposition)")
            self._cur = (k, ms)
        return self._cur[1]

    def field_names(self, k):
        ms = self._files(k)
        return sorted(set().union(*[set(m.point_data) | set(m.cell_data) for m in ms])) if ms else []

    def centers(self, k, name):
        ms = self._files(k)
        return [c for c in ("point", "cell") if ms and all(name in (m.point_data if c == "point"
                                                                    else m.cell_data) for m in ms)]

    def read(self, k, name, center):
        ms = self._files(k)
        if not ms:
            return np.zeros((0, 0))
        parts = [m.field(name, center) for m in ms]
        return np.concatenate([p.reshape(len(p), -1) for p in parts])


# ================================================================ series description
def _pvd_entries(path: str) -> tuple[list[str], np.ndarray | None]:
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


@dataclass
class SeriesInfo:
    """What every rank knows of a series: ``kind`` is "xdmf", "frd", "files" or "pieces".

    ``source`` is the file a single-file kind resolved to (a glob expanded);
    ``coordinate_precision`` the absolute precision of the file's coordinates when it is
    coarser than double (CalculiX's ``.frd``), else 0.
    """

    source: str
    kind: str
    times: list | None
    n_steps: int
    files: list | None = None          # files: one per step; pieces: a list of pieces per step
    coordinate_precision: float = 0.0


_SINGLE_FILE = (".xdmf", ".xmf", ".pvd", ".frd")


def _one_file(spec: str) -> str:
    """A single-file series given by a glob is the one file it matches."""
    if not glob.has_magic(spec):
        if not os.path.exists(spec):
            raise DdromError(f"{spec}: file not found")
        return spec
    found = sorted(glob.glob(spec), key=natural_key)
    if not found:
        raise DdromError(f"{spec}: no file matches")
    if len(found) > 1:
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise DdromError(f"{spec}: matches {len(found)} files ({shown}); a series is one such file (several "
                         "series are several simulations: import them with a pattern or a table)")
    return found[0]


def probe_series(spec: str) -> SeriesInfo:
    """Describe a series from its name and index files (call on ONE rank); see the module doc."""
    low = spec.lower()
    if low.endswith(_SINGLE_FILE):
        spec = _one_file(spec)
    if low.endswith((".xdmf", ".xmf")):
        return SeriesInfo(spec, "xdmf", None, 0)
    if low.endswith(".frd"):
        return SeriesInfo(spec, "frd", None, 0)
    times = None
    if low.endswith(".pvd"):
        files, times = _pvd_entries(spec)
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise DdromError(f"{spec}: {len(missing)} listed file(s) missing, e.g. {missing[0]}")
    else:
        files = sorted(glob.glob(spec), key=natural_key)
        if not files:
            raise DdromError(f"{spec}: no file matches")
    tl = None if times is None else times.tolist()
    pv = [f.lower().endswith(".pvtu") for f in files]
    if any(pv) and not all(pv):
        raise DdromError(f"{spec}: mixes .pvtu and other files")
    if all(pv):
        steps = [pvtu_pieces(f) for f in files]
        if len({len(s) for s in steps}) != 1:
            raise DdromError(f"{spec}: the steps have different piece counts "
                             f"{sorted({len(s) for s in steps})}")
        missing = [p for s in steps for p in s if not os.path.exists(p)]
        if missing:
            raise DdromError(f"{spec}: {len(missing)} piece file(s) missing, e.g. {missing[0]}")
        return SeriesInfo(spec, "pieces", tl, len(files), steps)
    return SeriesInfo(spec, "files", tl, len(files), files)


# ===================================================================== the series
class DisplacementSeries:
    """A displacement (and optionally stress) time series matched to a distributed case mesh.

    Collective. Opens the series (rank 0, or every rank for parallel VTU pieces), matches
    the file's nodes to the case's (:func:`~ddrom.io.matching.match_rows`) and, with
    ``stress_field``, its cells.

    Attributes (same on every rank)
    ----------
    source : str
    kind : "xdmf" | "frd" | "files" | "pieces"
    times : ndarray (n,) or None
        The file's times, None when the format has none (VTU glob).
    n_steps : int
        Number of stored steps in the file.
    node_match : str
        "identity" or "coordinates".
    max_coordinate_distance : float
        Largest distance between a file node and its case node.
    stress_center : "point" | "cell" | None
    stress_order : str or None
        Order of 6-component stresses (see :func:`to_mandel`); None is VTK's.
    peeq_center : "point" | "cell" | None
        Where the plastic-strain field ``peeq_field`` is given (a scalar per node or cell,
        e.g. CalculiX's nodal ``PE``), None without one.
    n_pieces : int
        Pieces per step (parallel VTU), else 1.
    value_epsilon : float
        Machine epsilon of the binary type of the point values read so far (``float32``
        data: 1.2e-7; 0 before the first read).
    """

    def __init__(self, spec: str, dm: Any, field: str = "displacement",
                 coord_rtol: float = DEFAULT_COORD_RTOL, node_order: str = "auto",
                 stress_field: str | None = None, stress_order: str | Sequence[str] | None = None,
                 peeq_field: str | None = None):
        c = as_mpi(dm.comm)
        self.dm, self.field, self._c, self.stress_field = dm, field, c, stress_field
        self.peeq_field = peeq_field
        if stress_order is not None:
            try:        # the same verdict on every rank (a pure function of the argument)
                component_order(stress_order, spec)
            except DdromError as exc:
                raise CollectiveError(str(exc)) from None
        self.stress_order = stress_order
        self.value_epsilon = 0.0
        self._reader: _Reader = _Empty()
        info, msg = None, None
        if c.rank == 0:
            try:
                info = probe_series(spec)
                if info.kind == "xdmf":
                    self._reader = _XdmfReader(info.source, field)
                    info.times, info.n_steps = self._reader.times.tolist(), self._reader.n_steps
                elif info.kind == "frd":
                    self._reader = _FrdReader(info.source, field)
                    info.times, info.n_steps = self._reader.times.tolist(), len(self._reader.times)
                    info.coordinate_precision = self._reader.coordinate_precision
                elif info.kind == "files":
                    self._reader = _FilesReader(info.files, spec)
            except DdromError as exc:
                msg = str(exc)
            except BaseException as exc:  # noqa: BLE001 - SystemExit too: the other ranks wait
                msg = describe_exception(exc, f"{spec}: cannot read it")
        raise_collective(c, msg)
        info = c.bcast(info, root=0)
        self.source, self.kind, self.n_steps = info.source, info.kind, info.n_steps
        self.coordinate_precision = info.coordinate_precision
        self.times = None if info.times is None else np.array(info.times)
        self.n_pieces = len(info.files[0]) if info.kind == "pieces" else 1
        if info.kind == "pieces":
            self._collective(lambda: setattr(self, "_reader", _PiecesReader(info.files, c.rank, c.size)))
        try:
            self._setup(dm, coord_rtol, node_order)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ setup
    def _collective(self, fn):
        """Run ``fn`` on every rank; any rank's DdromError is raised on all ranks."""
        msg = None
        try:
            fn()
        except DdromError as exc:
            msg = str(exc)
        except BaseException as exc:  # noqa: BLE001 - SystemExit too: the other ranks wait
            msg = describe_exception(exc, f"{self.source}: cannot read it")
        raise_collective(self._c, msg)

    def _setup(self, dm: Any, coord_rtol: float, node_order: str) -> None:
        c, single = self._c, self.kind != "pieces"
        # Element check first: the same node count with other elements would match nodes
        # and give wrong strains silently.
        cells = [None]
        self._collective(lambda: cells.__setitem__(0, self._reader.cells))
        cells = cells[0]
        k_case = dm.cells.shape[1]
        raise_collective(c, f"{self.source}: its cells have {cells.shape[1]} nodes, the case mesh's "
                            f"{dm.cell_type} {k_case}: the results are not on the case's elements"
                            if cells.size and cells.shape[1] != k_case else None)
        self._file_cells = cells
        x_case = case_node_coordinates(dm)
        diag = bbox_diagonal(c, x_case)
        if diag > 0:        # coordinates printed with few digits (.frd) match to their precision
            coord_rtol = max(coord_rtol, self.coordinate_precision / diag)
        hint = ("the series must be written on the case mesh's nodes (see --node-order)" if single
                else "the pieces must cover the case mesh")
        m = match_rows(c, self._reader.points, x_case, diag, mode=node_order, coord_rtol=coord_rtol,
                       single=single, what="node", source=self.source, hint=hint)
        self.node_match, self.max_coordinate_distance = m.method, m.max_distance
        self._nodes = Router(c, dm.natural_nodes, m.natural_ids, self.source, "node")
        self.stress_center, self.peeq_center, self._cells = None, None, None
        if self.stress_field is None and self.peeq_field is None:
            return
        # The fields' centers, decided on rank 0 (it reads the first piece of a parallel file).
        wanted = [f for f in (self.stress_field, self.peeq_field) if f is not None]
        got = [None]
        self._collective(lambda: got.__setitem__(0, ([self._reader.centers(0, f) for f in wanted],
                                                     self._reader.field_names(0)) if c.rank == 0 else None))
        centers, names = c.bcast(got[0], root=0)
        for f, cs, option in zip(wanted, centers, [o for o, f in (("--stress-field", self.stress_field),
                                                                 ("--peeq-field", self.peeq_field)) if f]):
            if not cs:
                raise CollectiveError(f"{self.source}: no field {f!r} for {option} (fields: {names})")
        where = ["cell" if "cell" in cs else "point" for cs in centers]
        if self.stress_field is not None:
            self.stress_center = where.pop(0)
        if self.peeq_field is not None:
            self.peeq_center = where.pop(0)
        n_cells = c.allreduce(len(cells))
        if n_cells == 0:
            raise CollectiveError(f"{self.source}: no hexahedra or tetrahedra: cannot compare a field per cell")
        centroids = self._reader.points[cells].mean(axis=1) if cells.size else np.zeros((0, 3))
        mc = match_rows(c, centroids, case_cell_centroids(dm), diag, mode=node_order, coord_rtol=coord_rtol,
                        single=single, what="cell", source=self.source,
                        hint="the compared fields must be given on the case mesh's cells")
        self._cells = Router(c, dm.natural_cells, mc.natural_ids, self.source, "cell")

    # ------------------------------------------------------------------ steps
    def _read(self, k: int, name: str, center: str, ncomp: int | None) -> np.ndarray:
        out = [None]

        def go():
            v = self._reader.read(k, name, center)
            v = v.reshape(len(v), -1) if v.size or len(v) else np.zeros((0, ncomp or 0))
            if not np.all(np.isfinite(v)):
                raise DdromError(f"{self.source} (step {k}): field {name!r} has NaN or Inf values")
            out[0] = v

        self._collective(go)
        return out[0]

    def displacement(self, k: int) -> np.ndarray:
        """(n_owned, 3) displacement of step ``k`` of the file at this rank's owned nodes (collective)."""
        return self.point_values(k, self.field, 3)

    def point_values(self, k: int, name: str, ncomp: int) -> np.ndarray:
        """(n_owned, ncomp) values of point field ``name`` at step ``k`` at this rank's owned
        nodes (collective). A 2-component field read for 3 components gets a zero third."""
        u = self._read(k, name, "point", ncomp)
        # the binary precision of the file's values (float32 data keep ~7 digits), for the
        # noise-floor estimate of an import (ddrom.io.precision)
        eps = float(np.finfo(u.dtype).eps) if u.dtype.kind == "f" and u.size else 0.0
        self.value_epsilon = max(self.value_epsilon, self._c.allreduce(eps, op=_mpi_max()))
        rows = len(self._reader.points)
        bad = None
        ok = (2, 3) if ncomp == 3 else (ncomp,)
        if rows and (u.shape[0] != rows or u.shape[1] not in ok):
            bad = (f"{self.source} (step {k}): field {name!r} has shape {u.shape}, expected "
                   f"({rows}, {ncomp}) point values")
        raise_collective(self._c, bad)
        if u.shape[1] == 2 and ncomp == 3:
            u = np.hstack([u, np.zeros((len(u), 1))])
        return self._nodes.route(u.reshape(-1, ncomp) if rows else np.zeros((0, ncomp)), ncomp)

    def stress_cells(self, k: int) -> np.ndarray:
        """(n_cells, 6) Mandel stress of step ``k`` per local cell (cell mean of a point field)."""
        if self.stress_field is None:
            raise DdromError("no stress field was requested")
        return self._cell_field(k, self.stress_field, self.stress_center, 6,
                                lambda v, where: to_mandel(v, where, self.stress_order))

    def peeq_cells(self, k: int) -> np.ndarray:
        """(n_cells,) plastic-strain field of step ``k`` per local cell (cell mean of a point field)."""
        if self.peeq_field is None:
            raise DdromError("no plastic-strain field was requested")

        def scalar(v: np.ndarray, where: str) -> np.ndarray:
            if v.shape[1] != 1:
                raise DdromError(f"{where}: a plastic-strain field has 1 component per item, got {v.shape[1]}")
            return v

        return self._cell_field(k, self.peeq_field, self.peeq_center, 1, scalar)[:, 0]

    def _cell_field(self, k: int, name: str, center: str, ncomp: int, convert) -> np.ndarray:
        """(n_cells, ncomp) values of field ``name`` of step ``k`` per local cell: ``convert(values,
        where)`` on the reading rank, then the mean over each cell's nodes for a point field."""
        v = self._read(k, name, center, None)
        msg, s = None, np.zeros((0, ncomp))
        n = len(self._reader.points) if center == "point" else len(self._file_cells)
        if n:
            try:
                if v.shape[0] != n:
                    raise DdromError(f"{self.source} (step {k}): {center} field {name!r} "
                                     f"has {v.shape[0]} rows, expected {n}")
                s = convert(v, f"{self.source} (step {k}): field {name!r}")
                if center == "point":
                    s = s[self._file_cells].mean(axis=1)
            except BaseException as exc:  # noqa: BLE001 - reported on every rank
                msg = describe_exception(exc, f"{self.source} (step {k}): field {self.stress_field!r}")
        raise_collective(self._c, msg)
        return self._cells.route(s, ncomp)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = _Empty()


def _mpi_max():
    from mpi4py import MPI

    return MPI.MAX
