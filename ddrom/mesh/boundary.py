"""Boundary faces, geometric selectors for regions, and cell geometry checks (serial, rank 0).

Everything here works on a serial :class:`~ddrom.mesh.mesh.Mesh` (before distribution)
and is vectorized over cells and faces.

Faces are identified by their *sorted* node tuple: a face is exterior iff its tuple occurs
in exactly one cell; two cells share a face iff they have the same tuple. A tuple occurring
three times or more means a broken (non-manifold or duplicated-cell) mesh and is an error.

Selectors
---------
A region is chosen by a *selector*, tested on node coordinates:

* a string expression in ``x, y, z`` such as ``"abs(x - 1) < tol and y > 0"``: a
  :class:`ddrom.expressions.Expression` (parsed with :mod:`ast`, never ``eval``) in the
  names ``x, y, z, tol`` (and ``pi``) with arithmetic, comparisons (chained comparisons
  allowed), ``and``/``or``/``not`` (applied elementwise), the functions of
  :data:`ddrom.expressions.FUNCTIONS` (``abs, sqrt, sin, cos, arctan2, minimum, maximum,
  isclose, logical_and, ...``) and ``near(a, b)``, which is ``|a - b| <= tol``.
* a dict whose entries are all required (intersection):

  - ``{"x": v}`` (or ``"y"``, ``"z"``): the plane ``x == v`` within ``tol``;
  - ``{"box": [[x0, y0, z0], [x1, y1, z1]]}``: inside the box, enlarged by ``tol``;
  - ``{"cylinder": {"radius": r, "center": [..], "axis": [..]}}``: points at distance ``r``
    (within ``tol``) from the axis through ``center`` (default origin) along ``axis``
    (default ``z``);
  - ``{"expr": "..."}``: a string expression as above;
  - ``{"tol": t}``: overrides the tolerance.

The default tolerance is ``1e-6`` times the diagonal of the mesh bounding box, so that
selectors do not depend on the unit of length.

A facet is selected iff *all* its nodes satisfy the selector, and only exterior facets are
candidates; a node selection considers every node of the mesh (interior ones included).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Union

import numpy as np

from ddrom.expressions import Expression
from ddrom.mesh.mesh import Mesh
from ddrom.mesh.reference import CELL_TYPES, FACE_TYPES, FACES
from ddrom.parallel.errors import DdromError

Selector = Union[str, Mapping[str, Any]]

_log = logging.getLogger("ddrom.mesh")

#: relative tolerance of geometric selectors (times the bounding-box diagonal)
REL_TOL = 1e-6
#: |det J| / diag^3 below this (per cell, diag = cell bounding-box diagonal) is degenerate
DEGENERATE_RATIO = 1e-8


# ----------------------------------------------------------------------------- faces
def row_groups(rows: np.ndarray) -> tuple[np.ndarray, int]:
    """Label equal rows of an integer array with the same group id.

    Parameters
    ----------
    rows : (n, k) int
        Rows to compare (sort each row first to compare them as sets).

    Returns
    -------
    ids : (n,) int64
        Group of each row, numbered by increasing lexicographic row value.
    n_groups : int
    """
    rows = np.asarray(rows, dtype=np.int64)
    n, k = rows.shape
    if n == 0:
        return np.zeros(0, np.int64), 0
    # Pack pairs of columns into one int64 key when the values allow it: half as many
    # lexsort passes, which is what dominates for millions of faces.
    m = int(rows.max()) + 1
    if m < 2**31:
        keys = [rows[:, i] * m + rows[:, i + 1] for i in range(0, k - 1, 2)]
        if k % 2:
            keys.append(rows[:, -1])
    else:
        keys = [rows[:, i] for i in range(k)]
    order = np.lexsort(keys[::-1])               # lexsort: last key is the primary one
    new = np.empty(n, dtype=bool)
    new[0] = True
    diff = np.zeros(n - 1, dtype=bool)
    for key in keys:
        ks = key[order]
        diff |= ks[1:] != ks[:-1]
    new[1:] = diff
    gsorted = np.cumsum(new) - 1
    ids = np.empty(n, dtype=np.int64)
    ids[order] = gsorted
    return ids, int(gsorted[-1]) + 1


def all_face_nodes(mesh: Mesh) -> np.ndarray:
    """(M, n_faces, nf) node ids of every local face of every cell (oriented outward)."""
    return mesh.cells[:, np.asarray(FACES[mesh.cell_type])]


def boundary_facets(mesh: Mesh) -> np.ndarray:
    """All exterior faces as ``(cell, local face)`` pairs, sorted by cell then face.

    A face is exterior iff its sorted node tuple belongs to one cell only.

    Raises
    ------
    DdromError
        If a face is shared by more than two cells (duplicated cells, non-manifold mesh).
    """
    fn = all_face_nodes(mesh)
    m, nf, k = fn.shape
    ids, ng = row_groups(np.sort(fn.reshape(-1, k), axis=1))
    counts = np.bincount(ids, minlength=ng)
    bad = np.flatnonzero(counts > 2)
    if bad.size:
        cells = np.unique(np.flatnonzero(np.isin(ids, bad[:5])) // nf)
        raise DdromError(f"invalid mesh: {bad.size} face(s) shared by more than two cells "
                         f"(duplicated or overlapping cells), e.g. in cells {cells[:6].tolist()}")
    flat = np.flatnonzero(counts[ids] == 1)
    return np.column_stack([flat // nf, flat % nf]).astype(np.int64)


def match_faces(mesh: Mesh, face_rows: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
    """Find the ``(cell, local face)`` of each given face (node tuple, any order).

    Parameters
    ----------
    face_rows : (F, nf) int
        Node ids of the faces to look up (e.g. tagged surface cells of a file).
    candidates : (C, 2) int, optional
        Facets to search (default: every face of every cell; if a face is shared by two
        cells, the first cell is returned).

    Returns
    -------
    (F, 2) int64
        The matching facet, or ``(-1, -1)`` for faces that are not among the candidates.
    """
    face_rows = np.asarray(face_rows, dtype=np.int64)
    faces = np.asarray(FACES[mesh.cell_type])
    k = faces.shape[1]
    if face_rows.ndim != 2 or face_rows.shape[1] != k:
        raise ValueError(f"faces of a {mesh.cell_type} mesh have {k} nodes, got shape {face_rows.shape}")
    if candidates is None:
        c, lf = np.divmod(np.arange(mesh.n_cells * faces.shape[0]), faces.shape[0])
        candidates = np.column_stack([c, lf])
    candidates = np.asarray(candidates, dtype=np.int64).reshape(-1, 2)
    cand_rows = mesh.cells[candidates[:, 0][:, None], faces[candidates[:, 1]]]
    both = np.sort(np.concatenate([cand_rows, face_rows]), axis=1)
    ids, ng = row_groups(both)
    nc = candidates.shape[0]
    first = np.full(ng, -1, dtype=np.int64)
    # reversed assignment: the first candidate of a group wins
    first[ids[:nc][::-1]] = np.arange(nc)[::-1]
    hit = first[ids[nc:]]
    out = np.full((face_rows.shape[0], 2), -1, dtype=np.int64)
    ok = hit >= 0
    out[ok] = candidates[hit[ok]]
    return out


# ------------------------------------------------------------------------- selectors
#: names a selector expression may use besides the constant ``pi``
SELECTOR_NAMES = ("x", "y", "z", "tol")


def selector_expression(text: str, tol: float) -> Expression:
    """Parse a string selector: an :class:`~ddrom.expressions.Expression` in ``x, y, z, tol``
    with the extra function ``near(a, b) = |a - b| <= tol``."""
    return Expression(text, SELECTOR_NAMES, {"near": lambda a, b: np.abs(np.subtract(a, b)) <= tol},
                      what="selector")


def _mesh_tol(mesh: Mesh) -> float:
    if mesh.n_nodes == 0:
        return REL_TOL
    ext = mesh.points.max(axis=0) - mesh.points.min(axis=0)
    return REL_TOL * max(float(np.linalg.norm(ext)), np.finfo(float).tiny)


def _vec(value: Any, n: int, what: str) -> np.ndarray:
    try:
        v = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        v = np.zeros(0)
    if v.size != n or not np.all(np.isfinite(v)):
        raise DdromError(f"selector {what}: expected {n} numbers, got {value!r}")
    return v


def point_mask(points: np.ndarray, selector: Selector, tol: float) -> np.ndarray:
    """Boolean mask of the points (..., 3) that satisfy a selector (see module doc)."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    if isinstance(selector, str):
        val = np.asarray(selector_expression(selector, tol)(x=x, y=y, z=z, tol=tol))
        if val.dtype != bool:
            raise DdromError(f"selector {selector!r} is not a condition (it gives {val.dtype} values, "
                             "not true/false): use a comparison such as 'abs(x) < tol'")
        return np.broadcast_to(val, x.shape)
    if not isinstance(selector, Mapping) or not selector:
        raise DdromError(f"a selector is a string expression or a non-empty table, got {selector!r}")
    known = {"x", "y", "z", "box", "cylinder", "expr", "tol"}
    unknown = sorted(set(selector) - known)
    if unknown:
        raise DdromError(f"unknown selector key(s) {unknown} (known: {sorted(known)})")
    if "tol" in selector:
        tol = float(_vec(selector["tol"], 1, "tol")[0])
    mask = np.ones(x.shape, dtype=bool)
    for axis, c in (("x", x), ("y", y), ("z", z)):
        if axis in selector:
            mask &= np.abs(c - _vec(selector[axis], 1, axis)[0]) <= tol
    if "box" in selector:
        b = np.asarray(selector["box"], dtype=object)
        if b.shape != (2, 3):
            raise DdromError(f"selector box: expected [[x0, y0, z0], [x1, y1, z1]], got {selector['box']!r}")
        lo, hi = _vec(list(b[0]), 3, "box"), _vec(list(b[1]), 3, "box")
        mask &= np.all((points >= np.minimum(lo, hi) - tol) & (points <= np.maximum(lo, hi) + tol), axis=-1)
    if "cylinder" in selector:
        cyl = selector["cylinder"]
        if not isinstance(cyl, Mapping) or "radius" not in cyl or set(cyl) - {"radius", "center", "axis"}:
            raise DdromError("selector cylinder: expected {radius = r, center = [x, y, z], axis = [ax, ay, az]}"
                             f" (center and axis optional), got {cyl!r}")
        r = _vec(cyl["radius"], 1, "cylinder radius")[0]
        c = _vec(cyl.get("center", [0.0, 0.0, 0.0]), 3, "cylinder center")
        a = _vec(cyl.get("axis", [0.0, 0.0, 1.0]), 3, "cylinder axis")
        if np.linalg.norm(a) == 0:
            raise DdromError("selector cylinder: the axis is the zero vector")
        a = a / np.linalg.norm(a)
        d = points - c
        d = d - (d @ a)[..., None] * a
        mask &= np.abs(np.linalg.norm(d, axis=-1) - r) <= tol
    if "expr" in selector:
        mask &= point_mask(points, str(selector["expr"]), tol)
    return mask


def select_facets(mesh: Mesh, selector: Selector, candidates: np.ndarray | None = None) -> np.ndarray:
    """Exterior facets whose nodes all satisfy ``selector``.

    Parameters
    ----------
    candidates : (F, 2), optional
        Facets to filter (default :func:`boundary_facets`; pass them when selecting many
        regions to compute them once).

    Returns
    -------
    (S, 2) int64
        ``(cell, local face)`` pairs, possibly empty.
    """
    if candidates is None:
        candidates = boundary_facets(mesh)
    faces = np.asarray(FACES[mesh.cell_type])
    nodes = mesh.cells[candidates[:, 0][:, None], faces[candidates[:, 1]]]
    mask = point_mask(mesh.points[nodes], selector, _mesh_tol(mesh)).all(axis=1)
    return candidates[mask]


def select_nodes(mesh: Mesh, selector: Selector) -> np.ndarray:
    """Sorted ids of the nodes (interior ones included) that satisfy ``selector``."""
    return np.flatnonzero(point_mask(mesh.points, selector, _mesh_tol(mesh))).astype(np.int64)


def add_regions(mesh: Mesh, regions: Mapping[str, Selector]) -> Mesh:
    """Add geometric regions (from the case file) to ``mesh`` in place and return it.

    Each selector first selects exterior facets; if none match (a selector for an edge or a
    point, e.g. ``"near(x, 0) and near(y, 0)"``), it selects nodes instead and the region is
    a node set (enough for Dirichlet conditions, not for pressure).

    Raises
    ------
    DdromError
        If a region selects nothing, or its name is already a region of the mesh.
    """
    bnd = boundary_facets(mesh) if regions else None
    for name, sel in regions.items():
        if name in mesh.facet_sets or name in mesh.node_sets:
            raise DdromError(f"region {name!r} is defined twice (already a region of the mesh: "
                             f"{mesh.region_names()})")
        try:
            facets = select_facets(mesh, sel, bnd)
            nodes = select_nodes(mesh, sel) if facets.size == 0 else None
        except DdromError as exc:
            raise DdromError(f"region {name!r}: {exc}") from None
        if facets.size:
            mesh.facet_sets[name] = facets
        elif nodes is not None and nodes.size:
            mesh.node_sets[name] = nodes
            _log.info("region %r selects no boundary face: node set of %d nodes", name, nodes.size)
        else:
            lo, hi = mesh.points.min(axis=0), mesh.points.max(axis=0)
            raise DdromError(f"region {name!r}: selector {sel!r} selects no face and no node of the mesh "
                             f"(bounding box {lo.tolist()} .. {hi.tolist()})")
    return mesh


# ---------------------------------------------------------------------- cell geometry
def _det3(J: np.ndarray) -> np.ndarray:
    return (J[..., 0, 0] * (J[..., 1, 1] * J[..., 2, 2] - J[..., 1, 2] * J[..., 2, 1])
            - J[..., 0, 1] * (J[..., 1, 0] * J[..., 2, 2] - J[..., 1, 2] * J[..., 2, 0])
            + J[..., 0, 2] * (J[..., 1, 0] * J[..., 2, 1] - J[..., 1, 1] * J[..., 2, 0]))


def jacobian_determinants(mesh: Mesh, chunk: int = 131072) -> np.ndarray:
    """det J = det(dx/dxi) at the quadrature points of every cell, shape (M, nq).

    Computed by chunks of cells to bound the memory of the (chunk, nq, 3, 3) Jacobians.
    """
    ref = CELL_TYPES[mesh.cell_type]
    dN = ref.dshape(ref.qp)                                     # (nq, k, 3)
    out = np.empty((mesh.n_cells, ref.qp.shape[0]))
    for s in range(0, mesh.n_cells, chunk):
        X = mesh.points[mesh.cells[s:s + chunk]]                # (m, k, 3)
        out[s:s + chunk] = _det3(np.einsum("mka,qkb->mqab", X, dN, optimize=True))
    return out


def cell_volumes(mesh: Mesh) -> np.ndarray:
    """Volume of every cell, ``sum_q w_q det J_q`` (exact for tetrahedra and parallelepipeds)."""
    return jacobian_determinants(mesh) @ CELL_TYPES[mesh.cell_type].qw


def facet_areas(mesh: Mesh, facets: np.ndarray | str) -> np.ndarray:
    """Area of each facet ``sum_q w_q |dx/ds x dx/dt|`` (facets as (F, 2) pairs or a region name)."""
    if isinstance(facets, str):
        facets = mesh.facet_sets[facets]
    facets = np.asarray(facets, dtype=np.int64).reshape(-1, 2)
    faces = np.asarray(FACES[mesh.cell_type])
    fref = FACE_TYPES[CELL_TYPES[mesh.cell_type].face_type]
    X = mesh.points[mesh.cells[facets[:, 0][:, None], faces[facets[:, 1]]]]   # (F, nf, 3)
    T = np.einsum("fka,qkb->fqab", X, fref.dshape(fref.qp), optimize=True)     # (F, nq, 3, 2)
    n = np.cross(T[..., 0], T[..., 1])
    return np.linalg.norm(n, axis=-1) @ fref.qw


def check_orientation(mesh: Mesh, max_report: int = 8) -> np.ndarray:
    """Check that every cell is positively oriented and not degenerate.

    The test is on ``r = det J / d^3`` at each quadrature point, with ``d`` the diagonal
    of the cell's bounding box (a scale-free measure): a cell is *inverted* if
    ``min r < -DEGENERATE_RATIO`` and *degenerate* if ``|min r| <= DEGENERATE_RATIO``.

    Returns
    -------
    (M,) float
        Minimum det J over the quadrature points of each cell.

    Raises
    ------
    DdromError
        With the number of inverted and degenerate cells and the first few ids of each.
    """
    if mesh.n_cells == 0:
        return np.zeros(0)
    detj = jacobian_determinants(mesh).min(axis=1)
    X = mesh.points[mesh.cells]
    diag = np.linalg.norm(X.max(axis=1) - X.min(axis=1), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(diag > 0, detj / diag**3, 0.0)
    inverted = np.flatnonzero(r < -DEGENERATE_RATIO)
    degenerate = np.flatnonzero(np.abs(r) <= DEGENERATE_RATIO)
    if inverted.size or degenerate.size:
        parts = []
        if inverted.size:
            parts.append(f"{inverted.size} inverted cell(s) (negative Jacobian determinant, wrong node "
                         f"order), e.g. cell(s) {inverted[:max_report].tolist()}")
        if degenerate.size:
            parts.append(f"{degenerate.size} degenerate cell(s) (zero volume), e.g. cell(s) "
                         f"{degenerate[:max_report].tolist()}")
        raise DdromError(f"invalid {mesh.cell_type} mesh of {mesh.n_cells} cells: " + "; ".join(parts))
    return detj
