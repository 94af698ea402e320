"""Parallel distribution of a slice-distributed mesh: no rank ever holds the whole mesh.

The input is one :class:`MeshSlice` per rank: a contiguous range of the natural cells
(their connectivity in natural node ids) and a contiguous range of the natural nodes
(their coordinates), as a sliced generator (:mod:`ddrom.mesh.generators`) or a
hyperslab reader (:mod:`ddrom.mesh.xdmf`) produces them. :func:`distribute_slices` then
builds the same :class:`~ddrom.mesh.distributed.DistributedMesh` as
:func:`ddrom.mesh.scatter.distribute` would from the serial mesh -- same natural
numbering, same regions, same node-ownership rule (:func:`ddrom.mesh.scatter._node_owners`)
-- with all-to-all exchanges only:

1. **faces**: every cell face, keyed by its sorted node tuple, goes to the rank holding
   the natural slice of its smallest node; equal keys meet there. A key seen once is an
   exterior face, twice an edge of the dual graph, more often a broken mesh. Edges and
   exterior faces go back to the ranks holding the cells.
2. **partition**: the dual graph is already row-distributed in natural cell slices, the
   layout :func:`ddrom.mesh.partition.partition_local_graph` (PETSc MatPartitioning,
   PTScotch by default) takes; ``block`` and ``rcb`` (a parallel recursive coordinate
   bisection, :func:`_rcb_parallel`) need no graph.
3. **cells** move to their part. **Nodes**: each rank sends the ids of the nodes its
   cells touch to the ranks holding their natural slices, which apply the ownership rule,
   number the owned nodes rank-major (PETSc numbering, through two ``Alltoall`` of ``P``
   counts) and answer with the PETSc id, the owner and the coordinates.
4. **sets**: facet and cell sets travel to the rank holding the cell's slice (which knows
   its part) and on to that part; node sets to the rank holding the node's slice (which
   knows which ranks touch it) and on to each of them.
5. case-file **regions** (geometric selectors) are evaluated on the distributed mesh: the
   exterior faces are those found in step 1 (a face cut by a slice boundary is matched
   like any other), the tolerance uses the global bounding box (one reduction), and the
   cell orientation is checked on every rank's cells.

Memory per rank is ``O((n_cells + n_nodes) / P)`` plus the exchange buffers; no array of
the global size exists anywhere (ranges are located with ``searchsorted`` over the ``P + 1``
slice bounds). Entries of the sets may be held by any rank.

Why not PETSc's DMPlex (measured at 1.07e6 DOFs, ``benchmarks/mesh_distribution.py``,
docs/SCALING.md): petsc4py 3.18 builds a DMPlex from a cell list on rank 0 only
(``createFromCellList``; the parallel ``DMPlexCreateFromCellListParallelPetsc`` is not
wrapped), so rank 0's peak stays 1.6-1.7x the others' for the bare cell-vertex graph and
2.1-2.5x with the faces our facet sets need as labels (``interpolate=True``, 700+ MB on
rank 0, 8-18x the time of this module in the same run); the natural numbering our files depend on is not
exposed (no ``DMSetUseNatural``/``DMPlexGlobalToNatural`` in petsc4py 3.18), the owner of a
shared vertex is PETSc's choice rather than ours, and its parallel HDF5 loader reads only
PETSc's own layout, not XDMF. This module keeps rank 0 at the others' peak (ratio 1.00).

Where a set entry lands after the move: facet sets are sorted by (local cell, local face),
node and cell sets are sorted unique local indices -- the same as
:func:`ddrom.mesh.scatter.distribute` up to the order of the facet pairs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ddrom.mesh.distributed import DistributedMesh
from ddrom.mesh.reference import CELL_TYPES, FACES
from ddrom.parallel import CollectiveError, DdromError, as_mpi, collective, raise_collective


class UnusedNodesError(CollectiveError):
    """Some nodes belong to no cell (raised on every rank by :func:`distribute_slices`)."""


@dataclass
class MeshSlice:
    """This rank's slice of a mesh in natural numbering (the input of :func:`distribute_slices`).

    Attributes
    ----------
    cell_type : str
        ``"hexahedron"`` or ``"tetra"`` (the same on every rank).
    n_cells, n_nodes : int
        Global numbers of cells and nodes.
    cell_start : int
        Natural id of the first cell of ``cells``; the slices of the ranks, in rank order,
        are contiguous and cover ``0 .. n_cells - 1``.
    cells : (mc, k) int64
        Connectivity of natural cells ``cell_start ..`` in natural node ids.
    node_start : int
        Natural id of the first node of ``points`` (contiguous slices as for cells).
    points : (mn, 3) float64
        Coordinates of natural nodes ``node_start ..``.
    facet_sets : dict[str, (F, 2) int64]
        ``(natural cell, local face)`` pairs; entries may be on any rank.
    node_sets, cell_sets : dict[str, int64 array]
        Natural node / cell ids; entries may be on any rank.

    Every rank must list the same set names (empty arrays where it holds no entry);
    :func:`distribute_slices` takes the union anyway.
    """

    cell_type: str
    n_cells: int
    n_nodes: int
    cell_start: int
    cells: np.ndarray
    node_start: int
    points: np.ndarray
    facet_sets: dict[str, np.ndarray] = field(default_factory=dict)
    node_sets: dict[str, np.ndarray] = field(default_factory=dict)
    cell_sets: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        k = CELL_TYPES[self.cell_type].n_nodes
        self.cells = np.ascontiguousarray(np.asarray(self.cells, dtype=np.int64).reshape(-1, k))
        self.points = np.ascontiguousarray(np.asarray(self.points, dtype=np.float64).reshape(-1, 3))
        self.facet_sets = {n: np.asarray(v, dtype=np.int64).reshape(-1, 2) for n, v in self.facet_sets.items()}
        self.node_sets = {n: np.asarray(v, dtype=np.int64).ravel() for n, v in self.node_sets.items()}
        self.cell_sets = {n: np.asarray(v, dtype=np.int64).ravel() for n, v in self.cell_sets.items()}


def slice_range(n: int, size: int, rank: int) -> tuple[int, int]:
    """The natural range ``[lo, hi)`` of rank ``rank`` when ``n`` items are cut into ``size`` slices.

    The same cut as :func:`ddrom.mesh.partition._petsc_partition` uses for the rows of the
    dual graph, so a sliced mesh gives PTScotch the same distributed graph as the old path.
    """
    return n * rank // size, n * (rank + 1) // size


# ------------------------------------------------------------------------ exchanges
def _exchange(c: Any, dest: np.ndarray, *arrays: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Send row ``i`` of every array to rank ``dest[i]`` (one ``Alltoallv`` per array).

    Returns the received arrays (rows grouped by source rank, in rank order, each source's
    rows in their original order) and the number of rows received from each rank.
    """
    size = c.size
    dest = np.asarray(dest, dtype=np.int64)
    order = np.argsort(dest, kind="stable")
    scount = np.bincount(dest, minlength=size).astype(np.int64)
    rcount = np.empty(size, dtype=np.int64)
    c.Alltoall(scount, rcount)
    out = []
    for a in arrays:
        a = np.asarray(a)
        if a.dtype == bool:
            a = a.astype(np.int8)
        a = np.ascontiguousarray(a[order])
        w = int(np.prod(a.shape[1:], dtype=np.int64))
        recv = np.empty((int(rcount.sum()),) + a.shape[1:], dtype=a.dtype)
        sc, rc = scount * w, rcount * w
        sd = np.concatenate([[0], np.cumsum(sc)[:-1]])
        rd = np.concatenate([[0], np.cumsum(rc)[:-1]])
        c.Alltoallv([a.reshape(-1), (sc, sd)], [recv.reshape(-1), (rc, rd)])
        out.append(recv)
    return out, rcount


def _face_groups(fn: np.ndarray, n_nodes: int) -> tuple[np.ndarray, int]:
    """Group id of each face (rows of sorted node ids) and the number of groups.

    :func:`ddrom.mesh.boundary.row_groups` without its int64 copy of the rows: pairs of
    columns are packed into int64 keys directly (``n_nodes^2 < 2^63`` for any mesh that
    fits in memory).
    """
    n, k = fn.shape
    if n == 0:
        return np.zeros(0, np.int64), 0
    m = np.int64(n_nodes)
    keys = [fn[:, i].astype(np.int64) * m + fn[:, i + 1] for i in range(0, k - 1, 2)]
    if k % 2:
        keys.append(fn[:, -1].astype(np.int64))
    order = np.lexsort(keys[::-1])
    new = np.ones(n, dtype=bool)
    diff = np.zeros(n - 1, dtype=bool)
    for key in keys:
        ks = key[order]
        diff |= ks[1:] != ks[:-1]
    new[1:] = diff
    del keys, diff
    gsorted = np.cumsum(new) - 1
    ids = np.empty(n, dtype=np.int64)
    ids[order] = gsorted
    return ids, int(gsorted[-1]) + 1


def _holder(ids: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Rank whose slice ``[bounds[r], bounds[r+1])`` contains each id."""
    return np.searchsorted(bounds, ids, side="right") - 1


def _bounds(c: Any, start: int, count: int, total: int, what: str) -> np.ndarray:
    """The ``P + 1`` slice bounds, checked to be contiguous and to cover ``0 .. total - 1``."""
    got = np.array(c.allgather((int(start), int(count))), dtype=np.int64).reshape(-1, 2)
    b = np.concatenate([got[:, 0], [total]])
    if b[0] != 0 or np.any(got[:, 0] + got[:, 1] != b[1:]):
        raise CollectiveError(f"mesh slices of the {what} are not contiguous in rank order: "
                              f"(start, count) per rank {got.tolist()}, total {total}")
    return b


def _names(c: Any, local: Mapping[str, Any]) -> list[str]:
    """Union of the set names of every rank, in order of first appearance by rank."""
    out: list[str] = []
    for names in c.allgather(list(local)):
        out += [n for n in names if n not in out]
    return out


# ------------------------------------------------------------------ parallel RCB
def _rcb_parallel(c: Any, centroids: np.ndarray, gid: np.ndarray) -> np.ndarray:
    """Recursive coordinate bisection of distributed points (collective); part of each local point.

    The split of a group of ``m`` points into ``nleft = n // 2`` of its ``n`` parts puts the
    ``m nleft // n`` smallest points along the group's longest extent on the left, as the
    serial :func:`ddrom.mesh.partition._rcb` does; ties are broken by natural id (the serial
    one breaks them by the order of the previous splits, so the parts can differ). The
    k-th point is found by a parallel selection: each round takes the weighted median of
    the ranks' local medians of the remaining window as the pivot (one ``allgather`` and
    one ``allreduce``), which removes at least a quarter of the window.
    """
    from mpi4py import MPI

    parts = np.zeros(len(gid), dtype=np.int64)
    todo = [(0, c.size)]                          # replicated list of groups (first part, n parts)
    while todo:
        first, n = todo.pop()
        if n == 1:
            continue
        mine = np.flatnonzero(parts == first)
        pts = centroids[mine]
        lo = pts.min(axis=0) if len(mine) else np.full(3, np.inf)
        hi = pts.max(axis=0) if len(mine) else np.full(3, -np.inf)
        glo, ghi = np.empty(3), np.empty(3)
        c.Allreduce(lo, glo, op=MPI.MIN)
        c.Allreduce(hi, ghi, op=MPI.MAX)
        m = c.allreduce(len(mine))
        axis = int(np.argmax(np.where(m > 0, ghi - glo, 0.0)))
        nleft = n // 2
        k = m * nleft // n
        x, g = pts[:, axis], gid[mine]
        win = np.arange(len(mine))                # local window of candidate positions
        below = 0                                 # points known to be before the window
        pivot, inclusive = (np.inf, -1), False
        while True:
            w = len(win)
            if w:
                o = np.lexsort((g[win], x[win]))
                mid = win[o[(w - 1) // 2]]
                med = (float(x[mid]), int(g[mid]))
            else:
                med = (np.inf, -1)
            meds = [(mk, wc) for mk, wc in c.allgather((med, w)) if wc > 0]
            if not meds:
                break
            meds.sort(key=lambda t: t[0])
            total = sum(wc for _, wc in meds)
            acc, p = 0, meds[-1][0]
            for mk, wc in meds:
                acc += wc
                if 2 * acc >= total:
                    p = mk
                    break
            lt = (x[win] < p[0]) | ((x[win] == p[0]) & (g[win] < p[1]))
            eq = (x[win] == p[0]) & (g[win] == p[1])
            nl = c.allreduce(int(lt.sum()))
            if below + nl == k:
                pivot, inclusive = p, False
                break
            if below + nl + 1 == k:
                pivot, inclusive = p, True
                break
            if below + nl < k:
                below += nl + 1
                win = win[~lt & ~eq]
            else:
                win = win[lt]
        left = (x < pivot[0]) | ((x == pivot[0]) & (g < pivot[1]))
        if inclusive:
            left |= (x == pivot[0]) & (g == pivot[1])
        parts[mine[~left]] = first + nleft
        todo.append((first, nleft))
        todo.append((first + nleft, n - nleft))
    return parts


# ----------------------------------------------------------------------- the driver
def distribute_slices(ms: MeshSlice, comm: Any, partitioner: str = "ptscotch",
                      regions: Mapping[str, Any] | None = None, check: bool = True) -> DistributedMesh:
    """Partition a slice-distributed mesh and give each rank its subdomain (collective).

    Parameters
    ----------
    ms : MeshSlice
        This rank's slice.
    comm : communicator
    partitioner : str
        ``"ptscotch"`` (default; any PETSc MatPartitioning type works and
        ``-mat_partitioning_type`` overrides it), ``"rcb"`` or ``"block"``.
    regions : dict, optional
        Geometric regions of the case file ``{name: selector}``, added as
        :func:`ddrom.mesh.boundary.add_regions` does on a serial mesh.
    check : bool
        Check the orientation of every cell (as :func:`ddrom.mesh.boundary.check_orientation`).

    Returns
    -------
    DistributedMesh
        The same subdomain content, in natural terms, as :func:`ddrom.mesh.scatter.distribute`
        gives for the serial mesh with the same partition.

    Raises
    ------
    CollectiveError
        On every rank: fewer cells than ranks, node ids out of range, unused nodes, a face
        shared by more than two cells, an empty part, a bad region or an inverted cell.
    """
    c = as_mpi(comm)
    size, me = c.size, c.rank
    ct = ms.cell_type
    n_cells, n_nodes = int(ms.n_cells), int(ms.n_nodes)
    msg = None
    if n_cells < size:
        msg = f"the mesh has {n_cells} cells, fewer than the {size} ranks"
    elif ms.cells.size and (ms.cells.min() < 0 or ms.cells.max() >= n_nodes):
        msg = f"mesh connectivity refers to nodes outside 0..{n_nodes - 1}"
    raise_collective(c, msg)
    cb = _bounds(c, ms.cell_start, ms.cells.shape[0], n_cells, "cells")
    nb = _bounds(c, ms.node_start, ms.points.shape[0], n_nodes, "nodes")
    c0, mc = int(cb[me]), int(cb[me + 1] - cb[me])
    n0, mn = int(nb[me]), int(nb[me + 1] - nb[me])
    my_gid = c0 + np.arange(mc, dtype=np.int64)

    # 1. faces: matched on the rank holding the slice of their smallest node
    faces = np.asarray(FACES[ct])
    nf, fk = faces.shape
    # int32 ids where they fit: the face arrays are the peak of the whole distribution
    itype = np.int32 if max(n_nodes, n_cells) < 2**31 else np.int64
    fn = np.sort(ms.cells.astype(itype)[:, faces].reshape(mc * nf, fk), axis=1)
    (rfn, rcell, rface), _ = _exchange(c, _holder(fn[:, 0], nb), fn, np.repeat(my_gid.astype(itype), nf),
                                       np.tile(np.arange(nf, dtype=np.int8), mc))
    del fn
    ids, ng = _face_groups(rfn, n_nodes)
    del rfn
    counts = np.bincount(ids, minlength=ng)
    bad = np.flatnonzero(counts > 2)
    nbad = c.allreduce(len(bad))
    if nbad:
        ex = np.unique(rcell[np.isin(ids, bad[:5])]).astype(np.int64)[:6].tolist()
        ex = sorted(sum(c.allgather(ex), []))[:6]
        raise CollectiveError(f"invalid mesh: {nbad} face(s) shared by more than two cells "
                              f"(duplicated or overlapping cells), e.g. in cells {ex}")
    cnt = counts[ids]
    inter = np.flatnonzero(cnt == 2)
    inter = inter[np.argsort(ids[inter], kind="stable")]
    pairs = rcell[inter].astype(np.int64).reshape(-1, 2)
    ext = cnt == 1
    ecell, eface = rcell[ext].astype(np.int64), rface[ext]
    del ids, counts, cnt, inter, rcell, rface, ext
    graph = size > 1 and partitioner not in ("block", "rcb")     # only PETSc's partitioners need it
    if not graph:
        pairs = pairs[:0]
    a = np.concatenate([pairs[:, 0], pairs[:, 1]])
    b = np.concatenate([pairs[:, 1], pairs[:, 0]])
    del pairs
    (ra, rb), _ = _exchange(c, _holder(a, cb), a, b)
    (recell, reface), _ = _exchange(c, _holder(ecell, cb), ecell, eface)
    del a, b, ecell, eface
    emask = np.zeros(mc, dtype=np.int64)               # bit f: local face f is exterior
    np.bitwise_or.at(emask, recell - c0, np.left_shift(1, reface.astype(np.int64)))
    o = np.lexsort((rb, ra))
    ra, rb = ra[o] - c0, rb[o]
    indptr = np.zeros(mc + 1, dtype=np.int64)
    np.cumsum(np.bincount(ra, minlength=mc), out=indptr[1:])

    # 2. partition
    if size == 1:
        parts = np.zeros(mc, dtype=np.int64)
    elif partitioner == "block":
        parts = (my_gid * size) // n_cells
    elif partitioner == "rcb":
        parts = _rcb_parallel(c, _centroids(c, ms, nb), my_gid)
    else:
        from ddrom.mesh.partition import partition_local_graph

        parts = partition_local_graph(c, indptr, rb, n_cells, partitioner)
    del indptr, ra, rb
    per_part = np.zeros(size, dtype=np.int64)
    c.Allreduce(np.bincount(parts, minlength=size).astype(np.int64), per_part)
    empty = np.flatnonzero(per_part == 0)
    if len(empty):
        raise CollectiveError(f"partitioner {partitioner!r} left ranks {empty.tolist()} without cells")

    # 3a. cells move to their part (arrive in natural order: slices are in rank order)
    (cell_nat, conn_nat, cmask), _ = _exchange(c, parts, my_gid, ms.cells, emask)
    del emask
    o = np.argsort(cell_nat, kind="stable")
    cell_nat, conn_nat, cmask = cell_nat[o], conn_nat[o], cmask[o]
    ncell = len(cell_nat)
    cstart = c.exscan(ncell) or 0
    cell_range = (int(cstart), int(cstart + ncell))

    # 3b. node ownership on the holders of the natural node slices
    touched = np.unique(conn_nat)
    (tn,), rc = _exchange(c, _holder(touched, nb), touched)
    src = np.repeat(np.arange(size, dtype=np.int64), rc)
    o = np.lexsort((src, tn))
    tn, src = tn[o], src[o]                              # (node, touching rank) pairs, sorted
    ncount = np.bincount(tn - n0, minlength=mn)
    unused = c.allreduce(int(np.sum(ncount == 0)))
    if unused:
        # Natural node ids index the serial mesh; unused nodes would leave holes in files.
        raise UnusedNodesError("the mesh has nodes that belong to no cell; remove them before distribution")
    nstart = np.concatenate([[0], np.cumsum(ncount)[:-1]])
    slice_nodes = n0 + np.arange(mn, dtype=np.int64)
    owner = src[nstart + slice_nodes % ncount]           # _node_owners' rule
    ocount = np.bincount(owner, minlength=size).astype(np.int64)
    from_slices = np.empty(size, dtype=np.int64)
    c.Alltoall(ocount, from_slices)                      # how many of slice s's nodes I own
    n_owned = int(from_slices.sum())
    first = c.exscan(n_owned) or 0
    offsets = first + np.concatenate([[0], np.cumsum(from_slices)[:-1]])
    back = np.empty(size, dtype=np.int64)
    c.Alltoall(offsets.astype(np.int64), back)           # where my slice's nodes start in each owner's range
    order = np.argsort(owner, kind="stable")
    ostart = np.concatenate([[0], np.cumsum(ocount)[:-1]])
    petsc = np.empty(mn, dtype=np.int64)
    petsc[order] = back[owner[order]] + np.arange(mn) - ostart[owner[order]]
    loc = tn - n0
    (nat, gid, own, xyz), _ = _exchange(c, src, tn, petsc[loc], owner[loc], ms.points[loc])
    del loc, petsc, order
    o = np.argsort(nat, kind="stable")
    nat, gid, own, xyz = nat[o], gid[o], own[o], xyz[o]
    is_owned = own == me
    ghost = np.flatnonzero(~is_owned)
    ghost = ghost[np.argsort(gid[ghost], kind="stable")]
    perm = np.concatenate([np.flatnonzero(is_owned), ghost])   # local node -> position in nat
    local_of = np.empty(len(nat), dtype=np.int64)
    local_of[perm] = np.arange(len(nat))
    cells = local_of[np.searchsorted(nat, conn_nat)]
    node_natural, node_global, coords = nat[perm], gid[perm], xyz[perm]
    assert int(is_owned.sum()) == n_owned

    # 4. sets
    facet_sets = _route_cell_items(c, ms.facet_sets, cb, c0, parts, cell_nat, with_face=True)
    cell_sets = _route_cell_items(c, ms.cell_sets, cb, c0, parts, cell_nat, with_face=False)
    node_sets = _route_node_items(c, ms.node_sets, nb, tn, src, nat, local_of)
    dm = DistributedMesh(comm=comm, cell_type=ct, cells=cells, cell_natural=cell_nat, coords=coords,
                         node_global=node_global, node_natural=node_natural, n_owned=n_owned,
                         node_range=(int(first), int(first + n_owned)), cell_range=cell_range,
                         n_nodes_global=n_nodes, n_cells_global=n_cells, facet_sets=facet_sets,
                         node_sets=node_sets, cell_sets=cell_sets)
    # 5. regions of the case file, orientation
    if regions:
        add_regions_distributed(dm, regions, cmask)
    if check:
        check_orientation_distributed(dm)
    return dm


def _centroids(c: Any, ms: MeshSlice, nb: np.ndarray) -> np.ndarray:
    """Centroids of this rank's slice cells (coordinates fetched from the node holders)."""
    need = np.unique(ms.cells)
    (req,), rc = _exchange(c, _holder(need, nb), need)
    (xyz,), _ = _exchange(c, np.repeat(np.arange(c.size), rc), ms.points[req - nb[c.rank]])
    pos = np.searchsorted(need, ms.cells)
    return xyz[pos].mean(axis=1)


def _route_cell_items(c: Any, sets: Mapping[str, np.ndarray], cb: np.ndarray, c0: int,
                      parts: np.ndarray, cell_nat: np.ndarray, with_face: bool) -> dict[str, np.ndarray]:
    """Facet or cell sets in natural cell ids (any rank) -> local cell ids on the cells' parts."""
    names = _names(c, sets)
    cols = 2 if with_face else 1
    rows = [np.column_stack([np.full(len(v), i, dtype=np.int64), np.asarray(v, dtype=np.int64).reshape(-1, cols)])
            for i, v in enumerate(sets.get(n, np.zeros((0, cols), np.int64)) for n in names)]
    items = np.concatenate(rows) if rows else np.zeros((0, cols + 1), np.int64)
    items = items.reshape(-1, cols + 1)
    (got,), _ = _exchange(c, _holder(items[:, 1], cb), items)
    (got,), _ = _exchange(c, parts[got[:, 1] - c0], got)
    got[:, 1] = np.searchsorted(cell_nat, got[:, 1])
    out = {}
    for i, n in enumerate(names):
        g = got[got[:, 0] == i, 1:]
        if with_face:
            out[n] = g[np.lexsort((g[:, 1], g[:, 0]))]
        else:
            out[n] = np.unique(g[:, 0])
    return out


def _route_node_items(c: Any, sets: Mapping[str, np.ndarray], nb: np.ndarray, tn: np.ndarray,
                      src: np.ndarray, nat: np.ndarray, local_of: np.ndarray) -> dict[str, np.ndarray]:
    """Node sets in natural ids (any rank) -> sorted local node ids on every rank touching them."""
    names = _names(c, sets)
    rows = [np.column_stack([np.full(len(v), i, dtype=np.int64), np.asarray(v, dtype=np.int64)])
            for i, v in enumerate(sets.get(n, np.zeros(0, np.int64)) for n in names)]
    items = np.concatenate(rows) if rows else np.zeros((0, 2), np.int64)
    (got,), _ = _exchange(c, _holder(items[:, 1], nb), items.reshape(-1, 2))
    lo = np.searchsorted(tn, got[:, 1], side="left")
    hi = np.searchsorted(tn, got[:, 1], side="right")
    rep = hi - lo
    idx = np.repeat(lo - np.concatenate([[0], np.cumsum(rep)[:-1]]), rep) + np.arange(int(rep.sum()))
    (got,), _ = _exchange(c, src[idx], np.repeat(got, rep, axis=0))
    out = {}
    for i, n in enumerate(names):
        g = got[got[:, 0] == i, 1]
        out[n] = np.unique(local_of[np.searchsorted(nat, g)])
    return out


# ------------------------------------------------------- regions and checks, distributed
def _global_bbox(dm: DistributedMesh) -> tuple[np.ndarray, np.ndarray]:
    from mpi4py import MPI

    c = dm.mpi
    x = dm.coords[: dm.n_owned]
    lo = x.min(axis=0) if len(x) else np.full(3, np.inf)
    hi = x.max(axis=0) if len(x) else np.full(3, -np.inf)
    glo, ghi = np.empty(3), np.empty(3)
    c.Allreduce(np.ascontiguousarray(lo), glo, op=MPI.MIN)
    c.Allreduce(np.ascontiguousarray(hi), ghi, op=MPI.MAX)
    return glo, ghi


def add_regions_distributed(dm: DistributedMesh, regions: Mapping[str, Any], exterior: np.ndarray) -> None:
    """:func:`ddrom.mesh.boundary.add_regions` on a distributed mesh (collective, in place).

    Parameters
    ----------
    regions : ``{name: selector}`` of the case file.
    exterior : (n_cells,) int
        Bit ``f`` set iff local face ``f`` of the local cell is on the exterior of the whole
        mesh (from the distributed face matching, not from this rank's cells alone).
    """
    from ddrom.mesh.boundary import REL_TOL, point_mask

    c = dm.mpi
    lo, hi = _global_bbox(dm)
    tol = REL_TOL * max(float(np.linalg.norm(hi - lo)), np.finfo(float).tiny)
    faces = np.asarray(FACES[dm.cell_type])
    cell, face = np.nonzero((exterior[:, None] >> np.arange(faces.shape[0])) & 1)
    cand = np.column_stack([cell, face]).astype(np.int64)     # sorted by cell then face
    fcoords = dm.coords[dm.cells[cand[:, 0][:, None], faces[cand[:, 1]]]]
    for name, sel in regions.items():
        if name in dm.facet_sets or name in dm.node_sets:
            raise CollectiveError(f"region {name!r} is defined twice (already a region of the mesh: "
                                  f"{dm.region_names()})")
        facets = nodes = None
        with collective(c, f"region {name!r}"):
            try:
                facets = cand[point_mask(fcoords, sel, tol).all(axis=1)]
            except DdromError as exc:
                raise DdromError(f"region {name!r}: {exc}") from None
        if c.allreduce(len(facets)):
            dm.facet_sets[name] = facets
            continue
        with collective(c, f"region {name!r}"):
            nodes = np.flatnonzero(point_mask(dm.coords, sel, tol)).astype(np.int64)
        if c.allreduce(int(np.sum(nodes < dm.n_owned))):
            dm.node_sets[name] = nodes
        else:
            raise CollectiveError(f"region {name!r}: selector {sel!r} selects no face and no node of the mesh "
                                  f"(bounding box {lo.tolist()} .. {hi.tolist()})")


def check_orientation_distributed(dm: DistributedMesh, max_report: int = 8) -> None:
    """:func:`ddrom.mesh.boundary.check_orientation` on a distributed mesh (collective).

    The message is the serial one: global counts and the smallest natural ids.
    """
    from ddrom.mesh.boundary import DEGENERATE_RATIO, jacobian_determinants
    from ddrom.mesh.mesh import Mesh

    c = dm.mpi
    r = np.empty(dm.n_cells)
    chunk = 16384                  # small chunks: (chunk, nq, 3, 3) Jacobians, not a peak of their own
    for s in range(0, dm.n_cells, chunk):
        cells = dm.cells[s:s + chunk]
        detj = jacobian_determinants(Mesh(dm.coords, cells, dm.cell_type), chunk=chunk).min(axis=1)
        X = dm.coords[cells]
        diag = np.linalg.norm(X.max(axis=1) - X.min(axis=1), axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            r[s:s + chunk] = np.where(diag > 0, detj / diag**3, 0.0)
    inv = dm.cell_natural[r < -DEGENERATE_RATIO]
    deg = dm.cell_natural[np.abs(r) <= DEGENERATE_RATIO]
    n_inv, n_deg = c.allreduce(len(inv)), c.allreduce(len(deg))
    if not (n_inv or n_deg):
        return
    ex_inv = sorted(sum(c.allgather(np.sort(inv)[:max_report].tolist()), []))[:max_report]
    ex_deg = sorted(sum(c.allgather(np.sort(deg)[:max_report].tolist()), []))[:max_report]
    parts = []
    if n_inv:
        parts.append(f"{n_inv} inverted cell(s) (negative Jacobian determinant, wrong node "
                     f"order), e.g. cell(s) {ex_inv}")
    if n_deg:
        parts.append(f"{n_deg} degenerate cell(s) (zero volume), e.g. cell(s) {ex_deg}")
    raise CollectiveError(f"invalid {dm.cell_type} mesh of {dm.n_cells_global} cells: " + "; ".join(parts))
