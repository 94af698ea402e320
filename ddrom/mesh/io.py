"""Volume meshes from and to files through meshio (serial, rank 0).

Reading (:func:`read_mesh`) accepts whatever meshio reads (VTU, XDMF, Gmsh ``.msh``
2.2/4.1 ascii or binary, Medit ``.mesh``, ...) and keeps what follows. Abaqus/CalculiX
``.inp`` decks are read by :mod:`ddrom.mesh.abaqus` instead (node sets, element sets and
surfaces become regions; see there).

* the volume cells, which must all be linear tetrahedra (``tetra``) or all trilinear
  hexahedra (``hexahedron``); any other volume cell type, or a mix, is an error;
* boundary regions from tagged lower-dimensional cells:

  - an integer tag array of the cell data, the first present of :data:`TAG_KEYS`
    (``gmsh:physical``, ``medit:ref``, ``cell_tags``, ...). Surface cells (triangles for a
    tetrahedral mesh, quadrilaterals for a hexahedral one) with tag ``n > 0`` are matched to
    the exterior faces of the volume cells and become the facet set named after
    ``field_data`` (Gmsh physical names, ``{name: [tag, dim]}``) or ``"tag_<n>"``; tagged
    line and vertex cells become node sets the same way. Tag 0 / negative means untagged.
  - what :func:`write_mesh` writes: flag arrays ``"region:<name>"`` on surface and vertex
    cells (VTU), or bit masks ``"facets:<name>"`` on the volume cells and point-data flags
    ``"nodes:<name>"`` (XDMF); cell sets from flags ``"cells:<name>"`` on the volume cells
    (both).

  Tagged surface cells on *interior* faces of the volume mesh are dropped (a warning);
  surface cells that are not faces of the volume mesh at all are an error.
* only the nodes used by volume cells, renumbered in their file order
  (``return_node_map=True`` also returns the file id of each kept node).

Geometric regions from the case file (``regions``) are then added by
:func:`ddrom.mesh.boundary.add_regions`, and the cell orientation is checked.

Writing (:func:`write_mesh`):

* VTU holds three cell blocks: the volume cells, one surface cell per facet that belongs to
  any facet set (in the face node order of :data:`~ddrom.mesh.reference.FACES`, normal
  pointing out), and one ``vertex`` cell per node of any node set; a cell-data flag array
  ``region:<name>`` (int8, 1 = member) per region says which of them belong to which
  region (facet and node sets may overlap). In ParaView, threshold on ``region:<name>``.
* XDMF holds the volume cells only (one topology: meshio's reader of XDMF "Mixed"
  topologies loops in Python over cells and mishandles vertices). A facet set is the
  cell-data array ``facets:<name>`` (int32 on the volume cells, bit ``f`` set iff local
  face ``f`` of the cell is in the set) and a node set the point-data array
  ``nodes:<name>`` (int8, 1 = member).
* Cell sets (:attr:`Mesh.cell_sets`) are int8 flags ``cells:<name>`` on the volume cells
  in VTU and XDMF.
* Gmsh ``.msh`` (format 2.2) is written with one
  physical group per region (a surface element per facet of each region, so overlapping
  regions repeat elements, as Gmsh itself does), a physical point group per node set
  (named ``<name>:nodes`` if a facet set has the same name, as meshio keeps one physical
  group per name) and the volume as physical group ``domain``. Cell sets are not written
  (a volume element has one physical group in meshio's model).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ddrom.mesh.boundary import Selector, add_regions, boundary_facets, check_orientation, match_faces
from ddrom.mesh.mesh import Mesh
from ddrom.mesh.reference import CELL_TYPES, FACES
from ddrom.parallel.errors import DdromError

_log = logging.getLogger("ddrom.mesh")

#: cell-data keys holding integer region tags, in order of preference
TAG_KEYS = ("gmsh:physical", "medit:ref", "cell_tags", "CellEntityIds", "cell_markers",
            "boundary_id", "tags", "ddrom:tag")
#: prefix of the per-region flag arrays written by :func:`write_mesh`
FLAG_PREFIX = "region:"
#: prefixes of the XDMF face bit masks (cell data) and node flags (point data)
MASK_PREFIX = "facets:"
NODE_PREFIX = "nodes:"
#: suffix of a Gmsh physical point group holding the node set of the same name as a facet set
NODE_SUFFIX = ":nodes"
#: prefix of the cell-set flags (int8 cell data on the volume cells, VTU and XDMF)
CELL_PREFIX = "cells:"
_VOLUME_TYPES = ("tetra", "hexahedron")


def _meshio():
    import meshio

    return meshio


def _dim(block: Any) -> int:
    d = getattr(block, "dim", None)
    if d is None:
        from meshio._mesh import topological_dimension

        d = topological_dimension[block.type]
    return int(d)


def read_mesh(path: str | Path, regions: Mapping[str, Selector] | None = None, *,
              check: bool = True, return_node_map: bool = False) -> Mesh | tuple[Mesh, np.ndarray]:
    """Read a volume mesh with its boundary regions (see the module documentation).

    Parameters
    ----------
    path : str or Path
        Any file meshio reads (format from the extension).
    regions : dict, optional
        Geometric regions ``{name: selector}`` added after the tagged ones.
    check : bool
        Check that no cell is inverted or degenerate (:func:`check_orientation`).
    return_node_map : bool
        Also return ``file_ids`` (N,): the node id in the file of each mesh node (the
        row in meshio's points; the Abaqus node number for an ``.inp``).

    Raises
    ------
    DdromError
        Missing or unreadable file, unsupported or mixed volume cells, surface cells that
        are not faces of the volume mesh, empty geometric region, inverted cells. The
        message names the file.
    """
    p = Path(path)
    if not p.exists():
        raise DdromError(f"mesh file not found: {p}")
    if not p.is_file():
        raise DdromError(f"mesh path is not a file: {p}")
    if p.suffix.lower() == ".inp":
        from ddrom.mesh.abaqus import read_inp

        inp = read_inp(p, regions, check=check)
        return (inp.mesh, inp.node_ids) if return_node_map else inp.mesh
    meshio = _meshio()
    try:
        m = meshio.read(str(p))
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - meshio raises many types (even SystemExit)
        raise DdromError(f"cannot read mesh file {p}: {type(exc).__name__}: {exc}".rstrip(": ")) from None
    try:
        mesh, file_ids = _from_meshio(m, str(p))
        if regions:
            add_regions(mesh, regions)
        if check:
            check_orientation(mesh)
    except DdromError as exc:
        msg = str(exc)
        raise DdromError(msg if str(p) in msg else f"mesh file {p}: {msg}") from None
    return (mesh, file_ids) if return_node_map else mesh


def _from_meshio(m: Any, name: str) -> tuple[Mesh, np.ndarray]:
    blocks = list(m.cells)
    found = sorted({b.type for b in blocks})
    vol = [b for b in blocks if _dim(b) == 3]
    vtypes = sorted({b.type for b in vol})
    if not vol:
        raise DdromError(f"mesh file {name} has no volume cells (tetra or hexahedron); cell types found: {found}")
    if len(vtypes) > 1 or vtypes[0] not in _VOLUME_TYPES:
        raise DdromError(f"mesh file {name} has volume cells of type(s) {vtypes}: ddrom needs a mesh of "
                         f"linear tetrahedra only ('tetra') or trilinear hexahedra only ('hexahedron')")
    cell_type = vtypes[0]
    points = np.asarray(m.points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] not in (2, 3):
        raise DdromError(f"mesh file {name}: points have shape {points.shape}")
    if points.shape[1] == 2:
        points = np.column_stack([points, np.zeros(len(points))])
    cells_file = np.concatenate([np.asarray(b.data, dtype=np.int64) for b in vol])
    if cells_file.size and (cells_file.min() < 0 or cells_file.max() >= len(points)):
        raise DdromError(f"mesh file {name}: cell connectivity refers to nodes outside 0..{len(points) - 1}")
    used = np.unique(cells_file)
    new_of_old = np.full(len(points), -1, dtype=np.int64)
    new_of_old[used] = np.arange(used.size)
    mesh = Mesh(points[used], new_of_old[cells_file], cell_type)

    vol_ids = [i for i, b in enumerate(blocks) if _dim(b) == 3]
    n_faces = len(FACES[cell_type])
    for key, arrays in m.cell_data.items():
        if key.startswith(MASK_PREFIX):
            mask = np.concatenate([np.asarray(arrays[i]).ravel() for i in vol_ids]).astype(np.int64)
            if mask.size != mesh.n_cells:
                continue
            pairs = [np.column_stack([c, np.full(c.size, f)])
                     for f in range(n_faces) for c in [np.flatnonzero(mask & (1 << f))]]
            fs = np.concatenate(pairs)
            if fs.size:
                mesh.facet_sets[key[len(MASK_PREFIX):]] = fs[np.lexsort((fs[:, 1], fs[:, 0]))]
        elif key.startswith(CELL_PREFIX):
            flag = np.concatenate([np.asarray(arrays[i]).ravel() for i in vol_ids])
            if flag.size == mesh.n_cells and np.any(flag != 0):
                mesh.cell_sets[key[len(CELL_PREFIX):]] = np.flatnonzero(flag != 0)
    for key, arr in (m.point_data or {}).items():
        if key.startswith(NODE_PREFIX):
            flag = np.asarray(arr).ravel()
            if flag.size == len(points):
                nodes = new_of_old[np.flatnonzero(flag != 0)]
                if np.any(nodes >= 0):
                    mesh.node_sets[key[len(NODE_PREFIX):]] = np.unique(nodes[nodes >= 0])

    # Collect tagged lower-dimensional cells: {region name: {dim: [node rows]}}
    groups: dict[str, dict[int, list[np.ndarray]]] = {}
    tag_key = next((k for k in TAG_KEYS if k in m.cell_data), None)
    names_by_dim: dict[tuple[int, int], str] = {}
    for fname, val in (m.field_data or {}).items():
        v = np.asarray(val).ravel()
        if v.size >= 2:
            names_by_dim[(int(v[0]), int(v[1]))] = str(fname)
    for ib, b in enumerate(blocks):
        d = _dim(b)
        if d == 3:
            continue
        data = np.asarray(b.data, dtype=np.int64)
        if tag_key is not None:
            tags = np.asarray(m.cell_data[tag_key][ib]).ravel()
            if tags.size == len(data) and np.issubdtype(tags.dtype, np.number):
                tags = tags.astype(np.int64)
                for t in np.unique(tags[tags > 0]):
                    rname = names_by_dim.get((int(t), d), f"tag_{int(t)}")
                    groups.setdefault(rname, {}).setdefault(d, []).append(data[tags == t])
        for key, arrays in m.cell_data.items():
            if key.startswith(FLAG_PREFIX):
                flag = np.asarray(arrays[ib]).ravel()
                if flag.size == len(data) and np.any(flag != 0):
                    groups.setdefault(key[len(FLAG_PREFIX):], {}).setdefault(d, []).append(data[flag != 0])

    face_type = CELL_TYPES[cell_type].face_type
    nf = len(FACES[cell_type][0])
    bnd = boundary_facets(mesh) if any(2 in g for g in groups.values()) else None
    for rname, by_dim in groups.items():
        for d, arrays in by_dim.items():
            rows = [new_of_old[a] for a in arrays]
            if d == 2:
                bad = [a.shape[1] for a in arrays if a.shape[1] != nf]
                if bad:
                    raise DdromError(f"mesh file {name}: region {rname!r} has surface cells with {bad[0]} nodes, "
                                     f"which cannot be faces of {cell_type} cells ({face_type}s)")
                faces = np.concatenate(rows)
                if np.any(faces < 0):
                    raise DdromError(f"mesh file {name}: region {rname!r} has surface cells on nodes that no "
                                     "volume cell uses")
                hit = match_faces(mesh, faces, bnd)
                miss = hit[:, 0] < 0
                if np.any(miss):
                    anywhere = match_faces(mesh, faces[miss])
                    n_out = int(np.sum(anywhere[:, 0] < 0))
                    if n_out:
                        raise DdromError(f"mesh file {name}: {n_out} surface cell(s) of region {rname!r} are not "
                                         "faces of the volume cells (non-conforming surface mesh)")
                    _log.warning("mesh file %s: %d surface cell(s) of region %r lie inside the volume, ignored",
                                 name, int(miss.sum()), rname)
                hit = hit[~miss]
                if hit.size:
                    mesh.facet_sets[rname] = np.unique(hit, axis=0)
            else:
                if rname.endswith(NODE_SUFFIX) and d == 0:
                    rname = rname[: -len(NODE_SUFFIX)]
                nodes = np.concatenate([r.ravel() for r in rows])
                nodes = np.unique(nodes[nodes >= 0])
                if nodes.size:
                    prev = mesh.node_sets.get(rname, np.zeros(0, np.int64))
                    mesh.node_sets[rname] = np.union1d(prev, nodes)
    return mesh, used


def write_mesh(mesh: Mesh, path: str | Path) -> None:
    """Write a mesh and its regions to VTU, XDMF (+ .h5) or Gmsh 2.2 (see the module documentation).

    :func:`read_mesh` reads the result back with the same cells, facet sets and node sets
    (node sets that are also facet set names are written only if not implied by the facets).
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".vtu", ".xdmf", ".xmf", ".msh"):
        raise DdromError(f"cannot write mesh file {p}: supported extensions are .vtu, .xdmf and .msh")
    meshio = _meshio()
    faces = np.asarray(FACES[mesh.cell_type])
    face_type = CELL_TYPES[mesh.cell_type].face_type
    fnames = sorted(mesh.facet_sets)
    nnames = sorted(mesh.node_sets)
    if suffix == ".msh":
        cells, phys, field_data = [], [], {}
        for t, n in enumerate(fnames, start=1):
            fs = mesh.facet_sets[n]
            cells.append((face_type, mesh.cells[fs[:, 0][:, None], faces[fs[:, 1]]]))
            phys.append(np.full(len(fs), t))
            field_data[n] = np.array([t, 2])
        for t, n in enumerate(nnames, start=len(fnames) + 1):
            cells.append(("vertex", mesh.node_sets[n][:, None]))
            phys.append(np.full(mesh.node_sets[n].size, t))
            # meshio keeps one (tag, dim) per physical name: a node set named like a facet set
            # is written as "<name>:nodes" (read back as "<name>")
            field_data[n + NODE_SUFFIX if n in mesh.facet_sets else n] = np.array([t, 0])
        tv = len(fnames) + len(nnames) + 1
        cells.append((mesh.cell_type, mesh.cells))
        phys.append(np.full(mesh.n_cells, tv))
        field_data["domain" if "domain" not in field_data else "domain_volume"] = np.array([tv, 3])
        phys = [a.astype(np.int32) for a in phys]
        out = meshio.Mesh(mesh.points, cells, cell_data={"gmsh:physical": phys, "gmsh:geometrical": phys},
                          field_data=field_data)
        kwargs: dict[str, Any] = {"file_format": "gmsh22", "binary": False}
    elif suffix == ".vtu":
        cells = [(mesh.cell_type, mesh.cells)]
        flags: dict[str, list[np.ndarray]] = {}
        allf = (np.unique(np.concatenate([mesh.facet_sets[n] for n in fnames]), axis=0)
                if fnames else np.zeros((0, 2), np.int64))
        alln = (np.unique(np.concatenate([mesh.node_sets[n] for n in nnames]))
                if nnames else np.zeros(0, np.int64))
        if allf.size:
            cells.append((face_type, mesh.cells[allf[:, 0][:, None], faces[allf[:, 1]]]))
        if alln.size:
            cells.append(("vertex", alln[:, None]))
        key_f = allf[:, 0] * faces.shape[0] + allf[:, 1]
        for n in sorted(set(fnames) | set(nnames)):
            arrs = [np.zeros(mesh.n_cells, np.int8)]
            if allf.size:
                fs = mesh.facet_sets.get(n, np.zeros((0, 2), np.int64))
                arrs.append(np.isin(key_f, fs[:, 0] * faces.shape[0] + fs[:, 1]).astype(np.int8))
            if alln.size:
                arrs.append(np.isin(alln, mesh.node_sets.get(n, np.zeros(0, np.int64))).astype(np.int8))
            flags[FLAG_PREFIX + n] = arrs
        for n, cs in mesh.cell_sets.items():
            vol = np.zeros(mesh.n_cells, np.int8)
            vol[cs] = 1
            flags[CELL_PREFIX + n] = [vol] + [np.zeros(len(b[1]), np.int8) for b in cells[1:]]
        out = meshio.Mesh(mesh.points, cells, cell_data=flags)
        kwargs = {"file_format": "vtu"}
    else:
        cell_data = {}
        for n in fnames:
            fs = mesh.facet_sets[n]
            mask = np.zeros(mesh.n_cells, np.int32)
            np.bitwise_or.at(mask, fs[:, 0], (1 << fs[:, 1]).astype(np.int32))
            cell_data[MASK_PREFIX + n] = [mask]
        for n, cs in mesh.cell_sets.items():
            flag = np.zeros(mesh.n_cells, np.int8)
            flag[cs] = 1
            cell_data[CELL_PREFIX + n] = [flag]
        point_data = {}
        for n in nnames:
            flag = np.zeros(mesh.n_nodes, np.int8)
            flag[mesh.node_sets[n]] = 1
            point_data[NODE_PREFIX + n] = flag
        out = meshio.Mesh(mesh.points, [(mesh.cell_type, mesh.cells)], cell_data=cell_data,
                          point_data=point_data)
        kwargs = {"file_format": "xdmf"}
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        meshio.write(str(p), out, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise DdromError(f"cannot write mesh file {p}: {type(exc).__name__}: {exc}") from None
