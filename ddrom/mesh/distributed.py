"""One subdomain per rank: cells, owned and ghost nodes, global numbering, natural ordering.

Numbering
---------
* PETSc numbering of nodes: the nodes owned by rank r are the contiguous range
  ``node_range`` (rank-major). DOF ``3*g + c`` is component c of node g, so DOFs are
  contiguous per rank too.
* Natural numbering: the node and cell ids of the serial mesh (file or generator).
  It does not depend on the number of ranks, so files are written in it
  (:class:`NaturalMap`), and a file written on 3 ranks is read on 1 or 2.
* Local node arrays hold the owned nodes first (``n_owned``), then the ghosts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache, cached_property
from typing import Any

import numpy as np

from ddrom.mesh.reference import CELL_TYPES, FACE_TYPES, FACES
from ddrom.parallel import CollectiveError, as_mpi, as_petsc, check_all


@dataclass
class DistributedMesh:
    comm: Any
    cell_type: str
    cells: np.ndarray            # (ne, k) local node indices
    cell_natural: np.ndarray     # (ne,) natural cell ids
    coords: np.ndarray           # (nn, 3) local nodes: owned then ghosts
    node_global: np.ndarray      # (nn,) PETSc node numbers
    node_natural: np.ndarray     # (nn,) natural node ids
    n_owned: int
    node_range: tuple[int, int]
    cell_range: tuple[int, int]  # rank-major cell numbering (for integration-point layouts)
    n_nodes_global: int
    n_cells_global: int
    facet_sets: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (F,2) local cell, face
    node_sets: dict[str, np.ndarray] = field(default_factory=dict)   # name -> local node indices
    cell_sets: dict[str, np.ndarray] = field(default_factory=dict)   # name -> local cell indices (not regions)

    # ------------------------------------------------------------------ sizes
    @property
    def mpi(self):
        return as_mpi(self.comm)

    @property
    def ref(self):
        return CELL_TYPES[self.cell_type]

    @property
    def n_cells(self) -> int:
        return self.cells.shape[0]

    @property
    def n_local_nodes(self) -> int:
        return self.coords.shape[0]

    @property
    def n_qp(self) -> int:
        return len(self.ref.qw)

    @property
    def ghost_global(self) -> np.ndarray:
        return self.node_global[self.n_owned:]

    # ------------------------------------------------- partition-independent ids
    def natural_dof_ids(self, block: int = 3) -> np.ndarray:
        """``block * node_natural + component`` of the owned DOFs, in their local (PETSc) order.

        The ids of a row that do not depend on the partition: give them to
        :func:`ddrom.reduction.pod.pod` (``row_ids``) for a POD that is bitwise the same
        at any number of ranks.
        """
        nat = self.node_natural[: self.n_owned].astype(np.int64)
        return (block * nat[:, None] + np.arange(block, dtype=np.int64)).ravel()

    def natural_qp_row_ids(self, ncomp: int = 1) -> np.ndarray:
        """``(cell_natural nq + q) ncomp + component`` of the local integration-point rows
        (the layout of :meth:`ddrom.io.store.SnapshotStore.read_block` for ``stress``
        (ncomp 6), ``p`` (1), ``state`` (n_state)): partition-independent row ids."""
        nq = self.n_qp
        pts = (self.cell_natural.astype(np.int64)[:, None] * nq + np.arange(nq, dtype=np.int64)).ravel()
        return (pts[:, None] * ncomp + np.arange(ncomp, dtype=np.int64)).ravel()

    def region_names(self) -> list[str]:
        return sorted(set(self.facet_sets) | set(self.node_sets))

    def region_nodes(self, name: str) -> np.ndarray:
        """Local node indices (owned and ghost) of a region, from its node or facet set."""
        parts = []
        if name in self.node_sets:
            parts.append(self.node_sets[name])
        if name in self.facet_sets:
            fs = self.facet_sets[name]
            faces = np.asarray(FACES[self.cell_type])
            parts.append(self.cells[fs[:, 0][:, None], faces[fs[:, 1]]].ravel())
        if not parts:
            raise CollectiveError(f"unknown region {name!r}; the mesh has {self.region_names()}")
        return np.unique(np.concatenate(parts)).astype(np.int64)

    # --------------------------------------------------------------- geometry
    @cached_property
    def weights(self) -> np.ndarray:
        """Integration weights w*detJ (ne, nq). Raises CollectiveError on inverted or
        degenerate cells (collective)."""
        ne = self.n_cells
        det = np.empty((ne, self.n_qp))
        for s in range(0, ne, _GEOMETRY_CHUNK):
            det[s:s + _GEOMETRY_CHUNK] = _inverse(self._jacobians(slice(s, s + _GEOMETRY_CHUNK)))[1].T
        bad = det <= 0
        nbad = int(bad.any(axis=1).sum())
        first = self.cell_natural[bad.any(axis=1)][:5].tolist()
        total_bad = self.mpi.allreduce(nbad)
        check_all(self.comm, total_bad == 0,
                  f"mesh has {total_bad} inverted or degenerate cells (non-positive Jacobian), "
                  f"e.g. cells {self.mpi.allreduce(first)[:5]}")
        return det * self.ref.qw[None, :]

    def _jacobians(self, cells: slice | np.ndarray) -> np.ndarray:
        """J[i, j] = dx_i/dxi_j of the selected cells' integration points, component-major
        (3, 3, nq, nc): one (3 x k) @ (k x 3nq) product per cell (the same shape whatever
        the selection, hence the same bits for a cell in any selection), then transposed so
        that each component is a contiguous (nq, nc) array."""
        _, Rk = _reference_gradients(self.cell_type)
        X = self.coords[self.cells[cells]]                     # (nc, k, 3)
        nc, nq = X.shape[0], Rk.shape[1] // 3
        J = np.matmul(X.transpose(0, 2, 1), Rk)                # (nc, 3[i], 3nq[(j, q)])
        return np.ascontiguousarray(J.reshape(nc, 3, 3, nq).transpose(1, 2, 3, 0))

    def inverse_jacobians(self, cells: slice | np.ndarray = slice(None)) -> np.ndarray:
        """dxi_a/dx_d (3[a], 3[d], nq, nc) of the integration points of the cells selected by
        a slice or an index array, component-major: each component a contiguous (nq, nc)
        array, so that the kernels' per-point 3x3 algebra is elementwise arithmetic on
        contiguous memory (an explicit adjugate). The shape-function gradients are
        ``dN/dx[q, a, d] = sum_b dN/dxi[q, a, b] Jinv[b, d, q]``; the kernels contract the
        constant dN/dxi by one matrix product per chunk instead of forming them. The same
        cell gives the same bits whatever the selection it is part of. The cells are assumed
        valid (:attr:`weights` checks them)."""
        return _inverse(self._jacobians(cells))[0]

    def gradients(self, cells: slice | np.ndarray = slice(None), jinv: np.ndarray | None = None) -> np.ndarray:
        """Shape-function gradients dN/dx (nc, nq, k, 3) of the cells selected by a slice or
        an index array (or from their :meth:`inverse_jacobians` ``jinv``): one (k x 3) @ (3 x 3)
        product per point. The same cell gives the same bits whatever the selection it is
        part of. The cells are assumed valid (:attr:`weights` checks them)."""
        dNr, _ = _reference_gradients(self.cell_type)
        Ji = self.inverse_jacobians(cells) if jinv is None else jinv
        return np.matmul(dNr[None], np.ascontiguousarray(Ji.transpose(3, 2, 0, 1)))

    def qp_coordinates(self) -> np.ndarray:
        """(ne, nq, 3) physical coordinates of the integration points."""
        N = self.ref.shape(self.ref.qp)
        return np.einsum("qk,ekd->eqd", N, self.coords[self.cells])

    def facet_geometry(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Face quadrature of region ``name`` on this rank.

        Returns
        -------
        nodes : (F, nf) local node indices of each face
        N : (nqf, nf) face shape functions at the face quadrature points
        xq : (F, nqf, 3) physical quadrature points
        nw : (F, nqf, 3) outward unit normal times w*dA
        """
        fs = self.facet_sets.get(name)
        if fs is None:
            raise CollectiveError(f"region {name!r} has no boundary faces; the mesh's facet regions are "
                             f"{sorted(self.facet_sets)}")
        faces = np.asarray(FACES[self.cell_type])
        fref = FACE_TYPES[self.ref.face_type]
        nodes = self.cells[fs[:, 0][:, None], faces[fs[:, 1]]]
        N = fref.shape(fref.qp)
        dN = fref.dshape(fref.qp)                              # (nqf, nf, 2)
        X = self.coords[nodes]                                 # (F, nf, 3)
        xq = np.einsum("qk,fkd->fqd", N, X)
        t = np.einsum("qka,fkd->fqad", dN, X)
        n = np.cross(t[:, :, 0], t[:, :, 1])                   # area-weighted normal
        # Orient outward whatever the face node order: away from the cell centroid.
        cc = self.coords[self.cells[fs[:, 0]]].mean(axis=1)
        sgn = np.sign(np.einsum("fqd,fqd->fq", n, xq - cc[:, None, :]))
        nw = n * (sgn * fref.qw[None, :])[:, :, None]
        return nodes, N, xq, nw

    # ------------------------------------------------------------------- DOFs
    def create_vector(self, bs: int = 3):
        """A ghosted PETSc vector with ``bs`` components per node (owned + ghost storage)."""
        from petsc4py import PETSc

        return PETSc.Vec().createGhost(self.ghost_global.astype(PETSc.IntType),
                                       size=(bs * self.n_owned, PETSc.DECIDE), bsize=bs,
                                       comm=as_petsc(self.comm))

    @cached_property
    def natural_nodes(self) -> "NaturalMap":
        return NaturalMap(self.comm, self.node_natural[: self.n_owned], self.n_nodes_global,
                          self.node_range[0])

    @cached_property
    def natural_cells(self) -> "NaturalMap":
        return NaturalMap(self.comm, self.cell_natural, self.n_cells_global, self.cell_range[0])

    def summary(self) -> dict[str, Any]:
        c = self.mpi
        cells = c.allgather(self.n_cells)
        owned = c.allgather(self.n_owned)
        ghosts = c.allgather(self.n_local_nodes - self.n_owned)
        return {"cell_type": self.cell_type, "cells": self.n_cells_global, "nodes": self.n_nodes_global,
                "dofs": 3 * self.n_nodes_global, "ranks": c.size, "cells_per_rank": cells,
                "owned_nodes_per_rank": owned, "ghost_nodes_per_rank": ghosts}


class NaturalMap:
    """Moves per-item blocks between the rank-major (PETSc) layout and the natural layout.

    In the natural layout, rank r holds the contiguous slice ``natural_range`` of the
    items sorted by natural id: exactly what a collective HDF5 hyperslab write wants.
    The move is one PETSc VecScatter per block size (created once, reused).
    """

    def __init__(self, comm: Any, owned_natural: np.ndarray, n_global: int, first: int):
        c = as_mpi(comm)
        self.comm = comm
        self.owned_natural = np.asarray(owned_natural, dtype=np.int64)
        self.n_owned = len(self.owned_natural)
        self.n_global = n_global
        self.first = first
        lo, hi = n_global * c.rank // c.size, n_global * (c.rank + 1) // c.size
        self.natural_range = (lo, hi)
        self._scatters: dict[int, Any] = {}

    def _scatter(self, bs: int):
        if bs not in self._scatters:
            from petsc4py import PETSc

            pc = as_petsc(self.comm)
            lo, hi = self.natural_range
            x = PETSc.Vec().createMPI((bs * self.n_owned, bs * self.n_global), comm=pc)
            y = PETSc.Vec().createMPI((bs * (hi - lo), bs * self.n_global), comm=pc)
            isx = PETSc.IS().createStride(bs * self.n_owned, first=bs * self.first, step=1, comm=pc)
            isy = PETSc.IS().createBlock(bs, self.owned_natural.astype(PETSc.IntType), comm=pc)
            self._scatters[bs] = (PETSc.Scatter().create(x, isx, y, isy), x, y)
        return self._scatters[bs]

    def to_natural(self, owned: np.ndarray) -> np.ndarray:
        """Rank-major owned items (n_owned, ...) -> this rank's natural slice (n_nat, ...)."""
        from petsc4py import PETSc

        owned = np.asarray(owned, dtype=np.float64)
        tail = owned.shape[1:]
        bs = int(np.prod(tail)) if tail else 1
        sc, x, y = self._scatter(bs)
        x.array[:] = owned.reshape(-1)
        sc.scatter(x, y, PETSc.InsertMode.INSERT, PETSc.ScatterMode.FORWARD)
        return y.array.copy().reshape((-1,) + tail)

    def from_natural(self, natural: np.ndarray) -> np.ndarray:
        """This rank's natural slice (n_nat, ...) -> rank-major owned items (n_owned, ...)."""
        from petsc4py import PETSc

        natural = np.asarray(natural, dtype=np.float64)
        tail = natural.shape[1:]
        bs = int(np.prod(tail)) if tail else 1
        sc, x, y = self._scatter(bs)
        y.array[:] = natural.reshape(-1)
        sc.scatter(y, x, PETSc.InsertMode.INSERT, PETSc.ScatterMode.REVERSE)
        return x.array.copy().reshape((-1,) + tail)


#: cells per block when the weights are computed (bounds the temporaries: ~1.5 KB per hexahedron)
_GEOMETRY_CHUNK = 16384


@cache
def _reference_gradients(cell_type: str) -> tuple[np.ndarray, np.ndarray]:
    """dN/dxi at the integration points of a cell type, (nq, k, 3), and arranged
    ``[node, (b, q)]`` (k, 3nq) for the kernels' products (read-only)."""
    ref = CELL_TYPES[cell_type]
    dNr = ref.dshape(ref.qp)
    nq, k = dNr.shape[:2]
    Rk = np.ascontiguousarray(dNr.transpose(1, 2, 0).reshape(k, 3 * nq))
    dNr.flags.writeable = Rk.flags.writeable = False
    return dNr, Rk


def _inverse(J: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverses and determinants of a stack of 3x3 matrices stored component-major
    (3, 3, ...), by the adjugate: elementwise arithmetic (on contiguous arrays when ``J`` is
    contiguous), ~20x faster than ``np.linalg.inv`` on small matrices, and each matrix's
    result independent of the stack it is in."""
    m = J
    adj = np.empty_like(J)
    t = np.empty_like(J[0, 0])

    def cofactor(out, a, b, c, d):                               # a b - c d, without temporaries
        np.multiply(a, b, out=out)
        np.multiply(c, d, out=t)
        out -= t
    cofactor(adj[0, 0], m[1, 1], m[2, 2], m[1, 2], m[2, 1])
    cofactor(adj[0, 1], m[0, 2], m[2, 1], m[0, 1], m[2, 2])
    cofactor(adj[0, 2], m[0, 1], m[1, 2], m[0, 2], m[1, 1])
    cofactor(adj[1, 0], m[1, 2], m[2, 0], m[1, 0], m[2, 2])
    cofactor(adj[1, 1], m[0, 0], m[2, 2], m[0, 2], m[2, 0])
    cofactor(adj[1, 2], m[0, 2], m[1, 0], m[0, 0], m[1, 2])
    cofactor(adj[2, 0], m[1, 0], m[2, 1], m[1, 1], m[2, 0])
    cofactor(adj[2, 1], m[0, 1], m[2, 0], m[0, 0], m[2, 1])
    cofactor(adj[2, 2], m[0, 0], m[1, 1], m[0, 1], m[1, 0])
    det = m[0, 0] * adj[0, 0]
    np.multiply(m[0, 1], adj[1, 0], out=t)
    det += t
    np.multiply(m[0, 2], adj[2, 0], out=t)
    det += t
    with np.errstate(divide="ignore", invalid="ignore"):        # degenerate cells: caught by the caller
        adj /= det
    return adj, det
