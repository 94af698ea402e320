"""Reduced operators computed once offline from the distributed mesh and the bases.

Everything returned here is small and replicated on every rank (K points x N modes),
in an order that does not depend on the partition (natural point ids), so the ROM
file is the same for any number of ranks.

Displacement representation (exact Dirichlet conditions, no penalty)::

    u(t) = sum_d v_d(t) chi_d + Phi q,

``chi_d`` the indicator of the DOFs that Dirichlet condition d prescribes (the last
condition wins on shared DOFs, as in the HF solver), ``v_d(t)`` its value, and ``Phi``
a basis vanishing on every prescribed DOF (POD of the snapshots with their prescribed
DOFs zeroed: exactly ``u - lifting``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ddrom.hf.solver import HFSolver
from ddrom.parallel import as_mpi
from ddrom.reduction.exact import reproducible_colsum


def natural_point_ids(dm) -> np.ndarray:
    """Natural ids (cell_natural * nq + q) of this rank's integration points, (ne*nq,)."""
    nq = dm.n_qp
    return (dm.cell_natural[:, None] * nq + np.arange(nq)).ravel().astype(np.int64)


def local_points(dm, gids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which of the global point ids this rank owns: (positions in gids, local cells, qps)."""
    nq = dm.n_qp
    cell_nat, q = np.divmod(np.asarray(gids, dtype=np.int64), nq)
    order = np.argsort(dm.cell_natural)
    pos = np.searchsorted(dm.cell_natural[order], cell_nat)
    pos = np.minimum(pos, len(order) - 1)
    mine = dm.cell_natural[order][pos] == cell_nat
    return np.flatnonzero(mine), order[pos[mine]], q[mine]


def _replicate(comm, K: int, tail: tuple[int, ...], where: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Assemble a replicated (K, *tail) array from the rows each owner computed (one allreduce)."""
    out = np.zeros((K,) + tail)
    out[where] = rows
    return as_mpi(comm).allreduce(out)


def values_at_points(dm, values: np.ndarray, gids: np.ndarray) -> np.ndarray:
    """Rows of a field at this rank's integration points, at global point ids, replicated.

    ``values``: (ne * nq, ...) on this rank, point-major; returns (len(gids), ...) on every
    rank, each row from the rank that owns the point (one allreduce).
    """
    where, cells, qps = local_points(dm, gids)
    v = np.asarray(values).reshape((dm.n_cells, dm.n_qp) + np.shape(values)[1:])
    return _replicate(dm.comm, len(gids), v.shape[2:], where, v[cells, qps])


def mode_values_local(solver: HFSolver, modes_owned: np.ndarray) -> np.ndarray:
    """Modes on the local (owned + ghost) DOFs: (3 * n_local_nodes, N)."""
    return np.column_stack([solver.owned_to_local(modes_owned[:, k]) for k in range(modes_owned.shape[1])])


def strain_operators(solver: HFSolver, modes_local: np.ndarray, gids: np.ndarray) -> np.ndarray:
    """E[g, k, :] = strain of mode k at point g (Mandel), (K, N, 6), replicated."""
    dm, asm = solver.dm, solver.asm
    where, cells, qps = local_points(dm, gids)
    B = asm.b_at(cells, qps)                                        # (k_loc, 6, 3nn)
    ue = modes_local[asm.edofs[cells]]                              # (k_loc, 3nn, N)
    rows = np.einsum("kij,kjn->kni", B, ue)
    return _replicate(solver.comm, len(gids), rows.shape[1:], where, rows)


def lifting_fields(solver: HFSolver) -> list[np.ndarray]:
    """chi_d on the local DOFs for every Dirichlet condition d (last condition wins)."""
    n = solver.asm.n_local_dofs
    last = np.full(n, -1)
    for d, (dofs, _, _) in enumerate(solver._dirichlet):
        last[dofs] = d
    return [(last == d).astype(float) for d in range(len(solver._dirichlet))]


def point_coordinates(solver: HFSolver, gids: np.ndarray) -> np.ndarray:
    return values_at_points(solver.dm, solver.xq.reshape(-1, 3), gids)


def all_mode_strains(solver: HFSolver, modes_local: np.ndarray) -> np.ndarray:
    """Strains of every mode at every local point: (ne * nq, N, 6). Offline only (ECM integrand)."""
    dm = solver.dm
    eps = solver.asm.strains(modes_local).reshape(dm.n_cells * dm.n_qp, 6, -1)
    return np.ascontiguousarray(eps.transpose(0, 2, 1))


@dataclass
class LoadTerm:
    """One scalar-valued load term projected on the basis.

    Online: ``F_ext += sum_j value(x_j, t) * coeff[j]``. When the value does not depend
    on space there is one row (``xyz`` None) and the cost is O(N); otherwise one row per
    quadrature point of the loaded surface or volume, or per node of a nodal force (cost
    proportional to it).
    """

    kind: str              # pressure | traction | nodal | body | centrifugal
    source: str            # the case path of the expression, e.g. loads.pressure[0].value
    coeff: np.ndarray      # (J, N)
    xyz: np.ndarray | None  # (J, 3) or None when spatially constant


def _space_dependent(expr: Any) -> bool:
    used = getattr(expr, "used", None)
    return used is None or bool(set(used) & {"x", "y", "z"})


def reduced_load_terms(solver: HFSolver, problem: Any, modes_local: np.ndarray) -> list[LoadTerm]:
    """Project every load term of a :class:`~ddrom.hf.problem.Problem` on the basis (surface and
    volume quadrature; a nodal force: the modes' values at the region's nodes). Each scalar
    term is named by ``source`` (``"loads.traction[0].vector[1]"``)."""
    dm, asm = solver.dm, solver.asm
    terms: list[LoadTerm] = []
    comm = solver.comm

    def surface(kind, source, expr, region, direction):
        nodes, N, xq, nw = solver._facets[region]
        vec = direction(nw)                                           # (F, nqf, 3) incl. w dA
        dofs = 3 * nodes[:, :, None] + np.arange(3)                    # (F, nf, 3)
        # c[f,q,k] = sum_a N_a(q) phi_k(node_a) . vec(f,q)
        phi = modes_local[dofs]                                        # (F, nf, 3, N)
        c = np.einsum("qa,faik,fqi->fqk", N, phi, vec)
        _add(kind, source, expr, c.reshape(-1, c.shape[-1]), xq.reshape(-1, 3))

    def volume(kind, source, expr, density):
        Nsh = dm.ref.shape(dm.ref.qp)
        phi = modes_local[asm.edofs].reshape(dm.n_cells, dm.ref.n_nodes, 3, -1)
        c = np.einsum("qa,eaik,eqi,eq->eqk", Nsh, phi, density, asm.wdet)
        _add(kind, source, expr, c.reshape(-1, c.shape[-1]), solver.xq.reshape(-1, 3))

    def _add(kind, source, expr, c, xyz):
        if not _space_dependent(expr):
            # exact sum (the same bits for any partition, as the rest of the ROM file)
            terms.append(LoadTerm(kind, source, reproducible_colsum(c, comm)[None, :], None))
        else:
            # partition-independent order: sort the gathered rows by coordinates
            rows = np.concatenate(as_mpi(comm).allgather(np.column_stack([xyz, c])))
            rows = rows[np.lexsort(rows[:, :3].T[::-1])]
            terms.append(LoadTerm(kind, source, rows[:, 3:], rows[:, :3]))

    for L in problem.loads:
        src = L.sources()
        if L.kind == "pressure":
            surface("pressure", src[0], L.values[0], L.region, lambda nw: -nw)
        elif L.kind == "traction":
            for j in range(3):
                e = np.eye(3)[j]
                surface("traction", src[j], L.values[j], L.region,
                        lambda nw, e=e: np.linalg.norm(nw, axis=-1)[..., None] * e)
        elif L.kind == "nodal":
            # a force at each node: the projection is the modes' values there (owned nodes
            # only, each node counted once over the ranks)
            nodes = dm.region_nodes(L.region)
            nodes = nodes[nodes < dm.n_owned]
            for j in range(3):
                _add("nodal", src[j], L.values[j], modes_local[3 * nodes + j], dm.coords[nodes])
        elif L.kind == "body":
            for j in range(3):
                dens = np.zeros(solver.xq.shape)
                dens[..., j] = 1.0
                volume("body", src[j], L.values[j], dens)
        elif L.kind == "centrifugal":
            from ddrom.hf.loads import Centrifugal

            unit = Centrifugal(1.0, L.density, L.axis, L.center)
            dens = unit.force(solver.xq, 0.0)            # rho * 1^2 * r ; online times omega(t)^2
            Nsh = dm.ref.shape(dm.ref.qp)
            phi = modes_local[asm.edofs].reshape(dm.n_cells, dm.ref.n_nodes, 3, -1)
            c = np.einsum("qa,eaik,eqi,eq->eqk", Nsh, phi, dens, asm.wdet).reshape(-1, phi.shape[-1])
            terms.append(LoadTerm("centrifugal", f"{L.key}.omega", reproducible_colsum(c, comm)[None, :], None))
    return terms


def point_interpolation(dm: Any, gids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a nodal field needs to be known at integration points ``gids`` (replicated):
    the natural ids of each point's cell nodes (K, k), the shape-function values there
    (K, k) and those nodes' coordinates (K, k, 3). A field's value at point g is
    ``sum_a shape[g, a] * field[nodes[g, a]]``."""
    where, cells, qps = local_points(dm, gids)
    N = dm.ref.shape(dm.ref.qp)                                      # (nq, k)
    local = dm.cells[cells]                                          # (k_loc, k)
    K, k = len(gids), dm.cells.shape[1]
    nodes = _replicate(dm.comm, K, (k,), where, dm.node_natural[local].astype(float))
    shape = _replicate(dm.comm, K, (k,), where, N[qps])
    xyz = _replicate(dm.comm, K, (k, 3), where, dm.coords[local])
    return np.rint(nodes).astype(np.int64), shape, xyz
