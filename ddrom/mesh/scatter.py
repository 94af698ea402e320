"""Scatter of a serial mesh (read or generated on rank 0) into one subdomain per rank.

Rank 0 reads or generates the whole mesh, the cells are partitioned in parallel, and
each rank receives only its cells, its owned nodes and its ghost nodes. Rank 0 drops
the serial mesh afterwards: from then on no rank holds the whole mesh.

This is the former default path, kept for callers that build a serial :class:`Mesh`
(tests, small meshes) and as the reference of :mod:`ddrom.mesh.slices`, which gives the
same subdomains without rank 0 ever holding the whole mesh (``build_mesh`` uses it).

Node ownership: a node belongs to one of the ranks whose cells contain it, so every
owned node is touched by a local cell (the solver relies on it).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ddrom.mesh.distributed import DistributedMesh
from ddrom.mesh.mesh import Mesh
from ddrom.mesh.partition import partition_cells
from ddrom.parallel import DdromError, as_mpi, raise_collective, root_only


def _node_owners(cells: np.ndarray, parts: np.ndarray, size: int, n: int) -> np.ndarray:
    """Owner rank of every node: one of the ranks whose cells contain it.

    An interface node shared by c ranks goes to the (natural id mod c)-th of them, which
    splits interfaces evenly instead of piling them on the lowest rank.
    """
    k = cells.shape[1]
    keys = np.unique(cells.ravel() * size + np.repeat(parts, k))
    node, rank = keys // size, keys % size
    counts = np.bincount(node, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return rank[starts + np.arange(n) % np.maximum(counts, 1)]


def _packages(mesh: Mesh, parts: np.ndarray, size: int) -> list[dict]:
    k = mesh.cells.shape[1]
    n = mesh.n_nodes
    owner = _node_owners(mesh.cells, parts, size, n)
    order = np.argsort(owner, kind="stable")          # rank-major, natural order within a rank
    petsc_id = np.empty(n, dtype=np.int64)
    petsc_id[order] = np.arange(n)
    counts = np.bincount(owner, minlength=size)
    node_start = np.concatenate([[0], np.cumsum(counts)])
    cell_order = np.argsort(parts, kind="stable")
    cell_counts = np.bincount(parts, minlength=size)
    cell_start = np.concatenate([[0], np.cumsum(cell_counts)])
    fs_cells = {name: fs for name, fs in mesh.facet_sets.items()}
    pkgs = []
    for r in range(size):
        my_cells = cell_order[cell_start[r]:cell_start[r + 1]]
        conn = mesh.cells[my_cells]
        touched = np.unique(conn.ravel())
        owned = order[node_start[r]:node_start[r + 1]]
        ghosts = touched[owner[touched] != r]
        ghosts = ghosts[np.argsort(petsc_id[ghosts], kind="stable")]
        local_nodes = np.concatenate([owned, ghosts])
        g2l = np.full(n, -1, dtype=np.int64)
        g2l[local_nodes] = np.arange(len(local_nodes))
        c2l = np.full(mesh.n_cells, -1, dtype=np.int64)
        c2l[my_cells] = np.arange(len(my_cells))
        facet_sets = {}
        for name, fs in fs_cells.items():
            lc = c2l[fs[:, 0]]
            keep = lc >= 0
            facet_sets[name] = np.column_stack([lc[keep], fs[keep, 1]])
        node_sets = {}
        for name, ns in mesh.node_sets.items():
            ln = g2l[ns]
            node_sets[name] = np.sort(ln[ln >= 0])
        cell_sets = {}
        for name, cs in mesh.cell_sets.items():
            lc = c2l[cs]
            cell_sets[name] = np.sort(lc[lc >= 0])
        pkgs.append(dict(
            cells=g2l[conn], cell_natural=my_cells, coords=mesh.points[local_nodes],
            node_global=petsc_id[local_nodes], node_natural=local_nodes, n_owned=len(owned),
            node_range=(int(node_start[r]), int(node_start[r + 1])),
            cell_range=(int(cell_start[r]), int(cell_start[r + 1])),
            facet_sets=facet_sets, node_sets=node_sets, cell_sets=cell_sets))
    return pkgs


def distribute(mesh: Mesh | None, comm: Any, partitioner: str = "ptscotch") -> DistributedMesh:
    """Partition ``mesh`` (given on rank 0, ``None`` elsewhere) and give each rank its subdomain.

    Parameters
    ----------
    partitioner : str
        ``"ptscotch"`` (default; any PETSc MatPartitioning type works, and
        ``-mat_partitioning_type`` overrides it), ``"rcb"`` or ``"block"``.
    """
    c = as_mpi(comm)

    def check() -> tuple:
        if mesh is None:
            raise DdromError("distribute: rank 0 holds no mesh")
        if mesh.n_cells < c.size:
            raise DdromError(f"the mesh has {mesh.n_cells} cells, fewer than the {c.size} ranks")
        if np.unique(mesh.cells).size != mesh.n_nodes:
            # Natural node ids index the serial mesh; unused nodes would leave holes in files.
            raise DdromError("the mesh has nodes that belong to no cell; remove them before distribution")
        return (mesh.cell_type, mesh.n_nodes, mesh.n_cells, sorted(mesh.facet_sets), sorted(mesh.node_sets),
                sorted(mesh.cell_sets))

    cell_type, n_nodes, n_cells, facet_names, node_names, cell_names = root_only(c, check, "distribute")
    parts = partition_cells(c, mesh.points if c.rank == 0 else None,
                            mesh.cells if c.rank == 0 else None, cell_type, partitioner)
    msg = None
    if c.rank == 0:
        empty = np.flatnonzero(np.bincount(parts, minlength=c.size) == 0)
        msg = (f"partitioner {partitioner!r} left ranks {empty.tolist()} without cells"
               if len(empty) else None)
    raise_collective(c, msg if c.rank == 0 else None)
    packages = root_only(c, lambda: _packages(mesh, parts, c.size), "distribute", share=False)
    pkg = c.scatter(packages, root=0)
    del packages
    for name in facet_names:
        pkg["facet_sets"].setdefault(name, np.zeros((0, 2), dtype=np.int64))
    for name in node_names:
        pkg["node_sets"].setdefault(name, np.zeros(0, dtype=np.int64))
    for name in cell_names:
        pkg["cell_sets"].setdefault(name, np.zeros(0, dtype=np.int64))
    return DistributedMesh(comm=comm, cell_type=cell_type, n_nodes_global=n_nodes,
                           n_cells_global=n_cells, **pkg)
