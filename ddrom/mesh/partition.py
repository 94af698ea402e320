"""Graph partitioning of the cells into one part per rank.

The dual graph (cells adjacent through a face) is built on the rank that holds the
serial mesh, its rows are spread in contiguous blocks, and PETSc's MatPartitioning
(PTScotch by default, any type through ``-mat_partitioning_type``) partitions it in
parallel. ``block`` (contiguous cell ranges) and ``rcb`` (recursive coordinate
bisection) need no graph library and serve as fallbacks and for tests.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ddrom.mesh.reference import FACES
from ddrom.parallel import as_mpi, as_petsc, root_only


def dual_graph(cells: np.ndarray, cell_type: str) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, indices) of the cell graph: an edge per interior face."""
    faces = np.asarray(FACES[cell_type])
    nc, nf = cells.shape[0], faces.shape[0]
    fn = np.sort(cells[:, faces].reshape(nc * nf, -1), axis=1)
    _, inv, counts = np.unique(fn, axis=0, return_inverse=True, return_counts=True)
    inv = inv.ravel()
    owner = np.repeat(np.arange(nc), nf)
    interior = counts[inv] == 2
    order = np.argsort(inv[interior], kind="stable")
    pairs = owner[interior][order].reshape(-1, 2)
    a = np.concatenate([pairs[:, 0], pairs[:, 1]])
    b = np.concatenate([pairs[:, 1], pairs[:, 0]])
    o = np.lexsort((b, a))
    indptr = np.zeros(nc + 1, dtype=np.int64)
    np.cumsum(np.bincount(a, minlength=nc), out=indptr[1:])
    return indptr, b[o]


def _reset_scotch_random() -> None:
    """Restart Scotch's random generator, so that a graph gets the same parts every time.

    PT-Scotch draws from one generator for the life of the process: a second partition of
    the same mesh in one process (a library user running two stages, a test comparing two
    runs) got other parts, hence results that differ in the last bits. Nothing happens
    when the library cannot be found (another partitioner, a static build).
    """
    import ctypes
    import ctypes.util

    for name in ("libscotch-7.0.so", "libscotch.so", ctypes.util.find_library("scotch")):
        if not name:
            continue
        try:
            ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL).SCOTCH_randomReset()
            return
        except (OSError, AttributeError):
            continue


def _petsc_partition(comm: Any, graph: tuple[np.ndarray, np.ndarray] | None, n_cells: int,
                     method: str) -> np.ndarray | None:
    """Partition a graph held on rank 0 with PETSc MatPartitioning; parts returned on rank 0."""
    c = as_mpi(comm)
    size = c.size
    bounds = [n_cells * r // size for r in range(size + 1)]
    if c.rank == 0:
        indptr, indices = graph
        chunks = []
        for r in range(size):
            lo, hi = bounds[r], bounds[r + 1]
            ip = indptr[lo:hi + 1]
            chunks.append((ip - ip[0], indices[ip[0]:ip[-1]]))
    else:
        chunks = None
    ip, idx = c.scatter(chunks, root=0)
    mine = partition_local_graph(c, ip, idx, n_cells, method)
    gathered = c.gather(mine, root=0)
    return np.concatenate(gathered) if c.rank == 0 else None


def partition_local_graph(comm: Any, indptr: np.ndarray, indices: np.ndarray, n_cells: int,
                          method: str) -> np.ndarray:
    """Partition a row-distributed dual graph with PETSc MatPartitioning (collective).

    Parameters
    ----------
    indptr, indices : CSR of this rank's rows (a contiguous block of the cells, in rank
        order), column indices global.
    n_cells : global number of cells (rows).
    method : PETSc MatPartitioning type (``-mat_partitioning_type`` overrides it).

    Returns
    -------
    (len(indptr) - 1,) int64
        The part (rank) of each of this rank's rows.
    """
    from petsc4py import PETSc

    c = as_mpi(comm)
    nloc = len(indptr) - 1
    adj = PETSc.Mat().createAIJ(size=((nloc, n_cells), (nloc, n_cells)),
                                csr=(np.asarray(indptr).astype(PETSc.IntType),
                                     np.asarray(indices).astype(PETSc.IntType), np.ones(len(indices))),
                                comm=as_petsc(c))
    adj.assemble()
    _reset_scotch_random()
    part = PETSc.MatPartitioning().create(as_petsc(c))
    part.setAdjacency(adj)
    part.setType(method)
    part.setFromOptions()  # -mat_partitioning_type overrides
    is_ = PETSc.IS()
    part.apply(is_)
    mine = is_.getIndices().astype(np.int64)
    is_.destroy(); part.destroy(); adj.destroy()
    return mine


def _rcb(centroids: np.ndarray, nparts: int) -> np.ndarray:
    """Recursive coordinate bisection along the longest extent, with proportional splits."""
    parts = np.zeros(len(centroids), dtype=np.int64)
    stack = [(np.arange(len(centroids)), 0, nparts)]
    while stack:
        idx, first, n = stack.pop()
        if n == 1:
            parts[idx] = first
            continue
        pts = centroids[idx]
        axis = int(np.argmax(pts.max(axis=0) - pts.min(axis=0)))
        nleft = n // 2
        k = len(idx) * nleft // n
        order = np.argsort(pts[:, axis], kind="stable")
        stack.append((idx[order[:k]], first, nleft))
        stack.append((idx[order[k:]], first + nleft, n - nleft))
    return parts


def partition_cells(comm: Any, points: np.ndarray | None, cells: np.ndarray | None,
                    cell_type: str | None, method: str = "ptscotch") -> np.ndarray | None:
    """Part (rank) of every cell, computed collectively; returned on rank 0 only.

    Parameters
    ----------
    method : {"ptscotch", "block", "rcb"} or any PETSc MatPartitioning type
        PETSc types run in parallel on the dual graph.
    """
    c = as_mpi(comm)
    n_cells = c.bcast(cells.shape[0] if c.rank == 0 else None, root=0)
    if c.size == 1:
        return np.zeros(n_cells, dtype=np.int64) if c.rank == 0 else None
    local: dict[str, Callable[[], np.ndarray]] = {
        "block": lambda: (np.arange(n_cells) * c.size) // max(n_cells, 1),
        "rcb": lambda: _rcb(points[cells].mean(axis=1), c.size),
    }
    # rank 0 works alone here: root_only makes a failure there (memory, ...) everyone's error
    if method in local:
        return root_only(c, local[method], f"partition ({method})", share=False)
    graph = root_only(c, lambda: dual_graph(cells, cell_type), "partition (dual graph)", share=False)
    return _petsc_partition(c, graph, n_cells, method)
