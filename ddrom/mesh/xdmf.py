"""Mesh files read in slices: no rank holds the whole mesh (XDMF/HDF5), or only while reading.

:func:`read_distributed` is the parallel counterpart of :func:`ddrom.mesh.io.read_mesh`
followed by :func:`ddrom.mesh.scatter.distribute`; it gives the same
:class:`~ddrom.mesh.distributed.DistributedMesh` (natural numbering, regions, ownership).

* **XDMF with HDF5 heavy data** in the layout :func:`ddrom.mesh.io.write_mesh` writes (and
  most single-grid writers use): one uniform grid, one ``Hexahedron`` or ``Tetrahedron``
  topology, ``XYZ``/``XY`` geometry, attributes ``facets:<name>`` (face bit masks on the
  cells), ``cells:<name>`` (cell flags) and ``nodes:<name>`` (node flags). Every rank
  parses the small XML file and reads its hyperslabs -- natural cells and nodes
  :func:`ddrom.mesh.slices.slice_range` -- with h5py (the serial driver: concurrent
  readers of one file need no MPI-IO), then :func:`ddrom.mesh.slices.distribute_slices`.
* **Anything else** (VTU, Gmsh, Medit, Abaqus ``.inp``, XDMF with several grids, a
  mixed topology, inline XML data, or nodes that no cell uses, which the serial reader
  drops and renumbers): rank 0 reads the file with :func:`~ddrom.mesh.io.read_mesh` (these
  formats cannot be read in parts), sends each rank its contiguous slice in turn (one
  point-to-point message of ``O(n/P)`` per rank, no per-rank package built from the whole
  mesh), drops the mesh, and the distribution is the parallel one. Rank 0's peak is then
  the whole mesh while reading, nothing more.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ddrom.mesh.distributed import DistributedMesh
from ddrom.mesh.reference import CELL_TYPES, FACES
from ddrom.mesh.slices import MeshSlice, UnusedNodesError, distribute_slices, slice_range
from ddrom.parallel import CollectiveError, DdromError, as_mpi, collective, root_only

_TOPOLOGY = {"hexahedron": "hexahedron", "tetrahedron": "tetra"}
_PREFIXES = ("facets:", "cells:", "nodes:")


def _hdf_item(item: ET.Element | None, folder: Path) -> tuple[Path, str] | None:
    """``(h5 file, dataset)`` of an HDF DataItem, None for any other kind."""
    if item is None or item.get("Format", "XML").upper() != "HDF" or item.get("ItemType") not in (None, "Uniform"):
        return None
    text = (item.text or "").strip()
    if ":" not in text:
        return None
    fname, dset = text.rsplit(":", 1)
    return folder / fname, dset


def xdmf_layout(path: str | Path) -> dict[str, Any] | None:
    """What a sliced read needs from an XDMF file, or None if it is not in the sliceable layout.

    Raises
    ------
    DdromError
        If the file cannot be parsed as XML.
    """
    p = Path(path)
    try:
        root = ET.parse(p).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DdromError(f"cannot read mesh file {p}: {type(exc).__name__}: {exc}") from None
    grids = root.findall("./Domain/Grid")
    if len(grids) != 1 or grids[0].get("GridType", "Uniform") != "Uniform":
        return None
    grid = grids[0]
    topo, geom = grid.findall("Topology"), grid.findall("Geometry")
    if len(topo) != 1 or len(geom) != 1:
        return None
    cell_type = _TOPOLOGY.get(topo[0].get("TopologyType", "").lower())
    if cell_type is None or geom[0].get("GeometryType", "XYZ") not in ("XYZ", "XY"):
        return None
    cells, points = _hdf_item(topo[0].find("DataItem"), p.parent), _hdf_item(geom[0].find("DataItem"), p.parent)
    if cells is None or points is None:
        return None
    attrs = {}
    for a in grid.findall("Attribute"):
        name, center = a.get("Name", ""), a.get("Center", "Node")
        if not name.startswith(_PREFIXES) or (center == "Node") != name.startswith("nodes:"):
            continue
        item = _hdf_item(a.find("DataItem"), p.parent)
        if item is None:
            return None
        attrs[name] = item
    return {"cell_type": cell_type, "cells": cells, "points": points, "attrs": attrs}


def _read_slice(path: Path, layout: Mapping[str, Any], rank: int, size: int) -> tuple[MeshSlice, dict]:
    """This rank's hyperslabs; also the number of set entries read (to drop empty sets)."""
    import h5py

    files: dict[Path, Any] = {}

    def dset(item):
        f, name = item
        if f not in files:
            if not f.is_file():
                raise DdromError(f"mesh file {path}: heavy-data file {f} not found")
            files[f] = h5py.File(f, "r")
        if name not in files[f]:
            raise DdromError(f"mesh file {path}: dataset {name} not found in {f}")
        return files[f][name]

    try:
        ct = layout["cell_type"]
        k = CELL_TYPES[ct].n_nodes
        dc, dp = dset(layout["cells"]), dset(layout["points"])
        if dc.ndim != 2 or dc.shape[1] != k or dp.ndim != 2 or dp.shape[1] not in (2, 3):
            raise DdromError(f"mesh file {path}: cells of shape {dc.shape} and points of shape {dp.shape} do not "
                             f"describe {ct} cells")
        n_cells, n_nodes = int(dc.shape[0]), int(dp.shape[0])
        c0, c1 = slice_range(n_cells, size, rank)
        n0, n1 = slice_range(n_nodes, size, rank)
        cells = np.asarray(dc[c0:c1], dtype=np.int64)
        pts = np.asarray(dp[n0:n1], dtype=np.float64)
        if pts.shape[1] == 2:
            pts = np.column_stack([pts, np.zeros(len(pts))])
        if cells.size and (cells.min() < 0 or cells.max() >= n_nodes):
            raise DdromError(f"mesh file {path}: cell connectivity refers to nodes outside 0..{n_nodes - 1}")
        fsets, csets, nsets = {}, {}, {}
        nf = len(FACES[ct])
        for name, item in layout["attrs"].items():
            d = dset(item)
            kind, rname = name.split(":", 1)
            if kind == "nodes":
                if d.shape[0] == n_nodes:
                    nsets[rname] = n0 + np.flatnonzero(np.asarray(d[n0:n1]).ravel() != 0)
            elif d.shape[0] == n_cells:
                v = np.asarray(d[c0:c1]).ravel()
                if kind == "cells":
                    csets[rname] = c0 + np.flatnonzero(v != 0)
                else:
                    v = v.astype(np.int64)
                    cell, face = np.nonzero((v[:, None] >> np.arange(nf)) & 1)
                    fsets[rname] = np.column_stack([c0 + cell, face])
    finally:
        for f in files.values():
            f.close()
    ms = MeshSlice(ct, n_cells, n_nodes, c0, cells, n0, pts, fsets, nsets, csets)
    counts = {("F", n): len(v) for n, v in fsets.items()}
    counts.update({("N", n): len(v) for n, v in nsets.items()})
    counts.update({("C", n): len(v) for n, v in csets.items()})
    return ms, counts


def _drop_empty_sets(c: Any, ms: MeshSlice, counts: dict) -> None:
    """The serial reader keeps only sets with members; drop those empty on every rank."""
    keys = sorted(counts)
    total = np.zeros(len(keys), dtype=np.int64)
    c.Allreduce(np.array([counts[k] for k in keys], dtype=np.int64), total)
    for (kind, name), t in zip(keys, total):
        if t == 0:
            {"F": ms.facet_sets, "N": ms.node_sets, "C": ms.cell_sets}[kind].pop(name)


def _streamed_slice(path: Path, c: Any) -> MeshSlice:
    """Rank 0 reads a file that cannot be sliced and sends every rank its contiguous slice."""
    from ddrom.mesh.io import read_mesh

    mesh = root_only(c, lambda: read_mesh(path, check=False), "read mesh", share=False)
    head = c.bcast((mesh.cell_type, mesh.n_cells, mesh.n_nodes) if c.rank == 0 else None, root=0)
    ct, n_cells, n_nodes = head
    size = c.size
    if c.rank == 0:
        for r in range(size - 1, -1, -1):       # rank 0's own slice last: it keeps the sets
            c0, c1 = slice_range(n_cells, size, r)
            n0, n1 = slice_range(n_nodes, size, r)
            part = (mesh.cells[c0:c1].copy(), mesh.points[n0:n1].copy())
            if r:
                c.send(part, dest=r, tag=77)
            else:
                ms = MeshSlice(ct, n_cells, n_nodes, c0, part[0], n0, part[1], dict(mesh.facet_sets),
                               dict(mesh.node_sets), dict(mesh.cell_sets))
        del mesh, part
        return ms
    cells, pts = c.recv(source=0, tag=77)
    c0, _ = slice_range(n_cells, size, c.rank)
    n0, _ = slice_range(n_nodes, size, c.rank)
    return MeshSlice(ct, n_cells, n_nodes, c0, cells, n0, pts)


def read_distributed(path: str | Path, comm: Any, partitioner: str = "ptscotch",
                     regions: Mapping[str, Any] | None = None, check: bool = True) -> DistributedMesh:
    """Read a mesh file straight into a :class:`DistributedMesh` (collective).

    Parameters
    ----------
    path : any file :func:`ddrom.mesh.io.read_mesh` reads; XDMF/HDF5 in the sliceable layout
        is read in hyperslabs by every rank (see the module documentation).
    partitioner, regions, check : as :func:`ddrom.mesh.slices.distribute_slices`.

    Raises
    ------
    CollectiveError
        On every rank, naming the file: missing or unreadable file (XML or HDF5), anything
        :func:`~ddrom.mesh.io.read_mesh` or :func:`~ddrom.mesh.slices.distribute_slices`
        refuses.
    """
    c = as_mpi(comm)
    p = Path(path)
    layout = None
    with collective(c, f"read mesh {p}"):
        if not p.exists():
            raise DdromError(f"mesh file not found: {p}")
        if not p.is_file():
            raise DdromError(f"mesh path is not a file: {p}")
        if p.suffix.lower() in (".xdmf", ".xmf"):
            layout = xdmf_layout(p)
    # every rank parsed the same file; agree anyway (a file changing under us must not split the ranks)
    sliced = c.allreduce(layout is not None, op=_land())
    try:
        if sliced:
            ms = counts = None
            with collective(c, f"read mesh {p}"):
                ms, counts = _read_slice(p, layout, c.rank, c.size)
            _drop_empty_sets(c, ms, counts)
            try:
                return distribute_slices(ms, c, partitioner, regions=regions, check=check)
            except UnusedNodesError:
                pass            # the serial reader drops and renumbers them: read it that way
            del ms
        return distribute_slices(_streamed_slice(p, c), c, partitioner, regions=regions, check=check)
    except CollectiveError as exc:
        msg = str(exc)
        raise CollectiveError(msg if str(p) in msg else f"mesh file {p}: {msg}", exit_code=exc.exit_code) from None


def _land():
    from mpi4py import MPI

    return MPI.LAND
