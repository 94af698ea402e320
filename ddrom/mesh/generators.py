"""Built-in structured mesh generators (serial, rank 0), vectorized with numpy.

* :func:`box` -- a structured box of hexahedra (or of tetrahedra, 6 per hexahedron);
* :func:`plate_with_hole` -- a plate with a central circular hole (stress concentration
  factor about 3 in uniaxial tension for a small hole), hexahedra or tetrahedra.

:data:`GENERATORS` maps the case-file name (``[mesh] generator = "plate_with_hole"``) to
the function; :func:`generate` calls it with the case-file keyword arguments and turns
unknown, missing or invalid arguments into :class:`DdromError`.

Tetrahedral meshes split every hexahedron into the 6 tetrahedra of Kuhn's
triangulation (all around the diagonal from local node 0 to local node 6). Each face of
the hexahedron is then cut along the diagonal from its lowest to its highest local corner
in (xi, eta, zeta), so two hexahedra whose local axes agree on their common face produce
conforming tetrahedra; the generators below build every block with such consistent axes.
"""
from __future__ import annotations

import inspect
import itertools
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ddrom.mesh.boundary import boundary_facets, select_facets
from ddrom.mesh.mesh import Mesh
from ddrom.mesh.reference import FACES
from ddrom.parallel.errors import DdromError

if TYPE_CHECKING:
    from ddrom.mesh.slices import MeshSlice

# Hexahedron corners of the unit cube in VTK order.
_HEX_CORNERS = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0],
                         [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]])


def _kuhn_tets() -> tuple[np.ndarray, np.ndarray]:
    """The 6 Kuhn tetrahedra of a hexahedron (local node ids, positively oriented) and,
    for each hexahedron face, the 2 ``(tet, tet face)`` pairs that tile it: shape (6, 2, 2)."""
    index = {tuple(c): n for n, c in enumerate(_HEX_CORNERS)}
    tets = []
    for perm in itertools.permutations(range(3)):
        v = np.zeros(3, dtype=int)
        path = [index[tuple(v)]]
        for axis in perm:
            v[axis] = 1
            path.append(index[tuple(v)])
        X = _HEX_CORNERS[path].astype(float)
        if np.linalg.det((X[1:] - X[0]).T) < 0:
            path[1], path[2] = path[2], path[1]
        tets.append(path)
    tets = np.array(tets)
    tfaces = np.asarray(FACES["tetra"])
    table = np.empty((6, 2, 2), dtype=int)
    for f, hface in enumerate(FACES["hexahedron"]):
        pairs = [(t, lf) for t in range(6) for lf in range(4) if set(tets[t, tfaces[lf]]) <= set(hface)]
        assert len(pairs) == 2
        table[f] = pairs
    return tets, table


KUHN_TETS, KUHN_FACE_TABLE = _kuhn_tets()


def hex_to_tet(mesh: Mesh) -> Mesh:
    """Split every hexahedron into 6 tetrahedra (Kuhn), carrying facet and node sets over.

    Tetrahedron ``6 c + t`` is the t-th of :data:`KUHN_TETS` in hexahedron ``c``. The
    result conforms wherever neighbouring hexahedra have consistent local axes on their
    common face (true for the generators of this module).
    """
    if mesh.cell_type != "hexahedron":
        raise ValueError("hex_to_tet needs a hexahedral mesh")
    cells = mesh.cells[:, KUHN_TETS].reshape(-1, 4)
    fsets = {name: _tet_facets(fs) for name, fs in mesh.facet_sets.items()}
    return Mesh(mesh.points, cells, "tetra", fsets, dict(mesh.node_sets))


def _tet_facets(fs: np.ndarray) -> np.ndarray:
    """Hexahedron facets ``(cell, face)`` -> the tetrahedron facets of :func:`hex_to_tet` that tile them."""
    pairs = KUHN_FACE_TABLE[fs[:, 1]]                              # (F, 2, 2)
    tet = 6 * fs[:, 0][:, None] + pairs[:, :, 0]
    return np.column_stack([tet.ravel(), pairs[:, :, 1].ravel()])


def merge_nodes(points: np.ndarray, cells: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge nodes closer than ``tol`` (clusters of any size) and renumber.

    Returns
    -------
    points : (N', d)
        One node per cluster, kept in order of first occurrence.
    cells : same shape as ``cells``
        Renumbered connectivity.
    new_of_old : (N,) int64
        New id of each old node.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = points.shape[0]
    pairs = cKDTree(points).query_pairs(tol, output_type="ndarray")
    if pairs.size == 0:
        return points, cells, np.arange(n, dtype=np.int64)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    _, first, inv = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    new_of_old = rank[inv].astype(np.int64)
    return points[first[order]], new_of_old[cells], new_of_old


def _extrude(points2d: np.ndarray, quads: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Extrude counter-clockwise quadrilaterals along z into hexahedra (node p of layer k is p + N k)."""
    n2, nl = points2d.shape[0], z.size
    pts = np.empty((nl, n2, 3))
    pts[:, :, :2] = points2d[None]
    pts[:, :, 2] = z[:, None]
    layer = n2 * np.arange(nl - 1)[:, None, None]
    hexes = np.concatenate([quads[None] + layer, quads[None] + layer + n2], axis=2)
    return pts.reshape(-1, 3), hexes.reshape(-1, 8)


# ------------------------------------------------------------------ argument checks
def _positive(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DdromError(f"mesh argument {name} must be a positive number, got {value!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise DdromError(f"mesh argument {name} must be a positive number, got {value!r}")
    return v


def _count(name: str, value: Any, minimum: int = 1, multiple: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum or value % multiple:
        extra = f" and a multiple of {multiple}" if multiple > 1 else ""
        raise DdromError(f"mesh argument {name} must be an integer >= {minimum}{extra}, got {value!r}")
    return int(value)


def _cell_type(value: Any) -> str:
    aliases = {"hexahedron": "hexahedron", "hex": "hexahedron", "hex8": "hexahedron",
               "tetra": "tetra", "tet": "tetra", "tet4": "tetra", "tetrahedron": "tetra"}
    if value not in aliases:
        raise DdromError(f"mesh argument cell_type must be 'hexahedron' or 'tetra', got {value!r}")
    return aliases[value]


# ------------------------------------------------------------------------------ box
def _box_args(lx, ly, lz, nx, ny, nz, origin, cell_type):
    lx, ly, lz = (_positive(n, v) for n, v in (("lx", lx), ("ly", ly), ("lz", lz)))
    nx, ny, nz = (_count(n, v) for n, v in (("nx", nx), ("ny", ny), ("nz", nz)))
    cell_type = _cell_type(cell_type)
    try:
        o = np.asarray(origin, dtype=float).reshape(3)
    except (TypeError, ValueError):
        raise DdromError(f"mesh argument origin must be 3 numbers, got {origin!r}") from None
    return lx, ly, lz, nx, ny, nz, o, cell_type


# local faces of reference.FACES: 0 zeta=-1, 1 zeta=+1, 2 eta=-1, 3 eta=+1, 4 xi=-1, 5 xi=+1
_BOX_FACES = (("xmin", 4), ("xmax", 5), ("ymin", 2), ("ymax", 3), ("zmin", 0), ("zmax", 1))


def _box_facets(i, j, k, cell_ids, nx, ny, nz) -> dict[str, np.ndarray]:
    at = {"xmin": i == 0, "xmax": i == nx - 1, "ymin": j == 0, "ymax": j == ny - 1, "zmin": k == 0,
          "zmax": k == nz - 1}
    fsets = {}
    for name, face in _BOX_FACES:
        c = cell_ids[at[name]]
        fsets[name] = np.column_stack([c, np.full(c.size, face)])
    return fsets


def box(lx: float = 1.0, ly: float = 1.0, lz: float = 1.0, nx: int = 4, ny: int = 4, nz: int = 4,
        origin: tuple[float, float, float] = (0.0, 0.0, 0.0), cell_type: str = "hexahedron") -> Mesh:
    """Structured box ``[x0, x0 + lx] x [y0, y0 + ly] x [z0, z0 + lz]``.

    ``nx * ny * nz`` hexahedra (or ``6 nx ny nz`` tetrahedra), node ``i + (nx+1) (j + (ny+1) k)``
    at ``(x0 + i lx/nx, y0 + j ly/ny, z0 + k lz/nz)``. Facet sets ``xmin, xmax, ymin, ymax,
    zmin, zmax`` partition the boundary (edges and corners belong to the node sets of
    several of them).
    """
    lx, ly, lz, nx, ny, nz, o, cell_type = _box_args(lx, ly, lz, nx, ny, nz, origin, cell_type)
    xs = o[0] + lx * np.arange(nx + 1) / nx
    ys = o[1] + ly * np.arange(ny + 1) / ny
    zs = o[2] + lz * np.arange(nz + 1) / nz
    pts = np.empty((nz + 1, ny + 1, nx + 1, 3))
    pts[..., 0] = xs[None, None, :]
    pts[..., 1] = ys[None, :, None]
    pts[..., 2] = zs[:, None, None]
    sx, sz = nx + 1, (nx + 1) * (ny + 1)
    k, j, i = (a.ravel() for a in np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij"))
    base = i + sx * j + sz * k
    offsets = np.array([0, 1, 1 + sx, sx, sz, sz + 1, sz + 1 + sx, sz + sx])
    cells = base[:, None] + offsets
    fsets = _box_facets(i, j, k, np.arange(len(base)), nx, ny, nz)
    mesh = Mesh(pts.reshape(-1, 3), cells, "hexahedron", fsets)
    return hex_to_tet(mesh) if cell_type == "tetra" else mesh


def box_slice(rank: int, size: int, lx: float = 1.0, ly: float = 1.0, lz: float = 1.0, nx: int = 4,
              ny: int = 4, nz: int = 4, origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
              cell_type: str = "hexahedron") -> "MeshSlice":
    """Slice ``rank`` of ``size`` of :func:`box`: the same natural numbering, built alone.

    Cells ``slice_range(n_cells, size, rank)`` and nodes ``slice_range(n_nodes, size, rank)``
    (:func:`ddrom.mesh.slices.slice_range`), with the facet sets of those cells; nothing of
    the global size is allocated.
    """
    from ddrom.mesh.slices import MeshSlice, slice_range

    lx, ly, lz, nx, ny, nz, o, cell_type = _box_args(lx, ly, lz, nx, ny, nz, origin, cell_type)
    tet = cell_type == "tetra"
    per = 6 if tet else 1
    n_cells, n_nodes = per * nx * ny * nz, (nx + 1) * (ny + 1) * (nz + 1)
    sx, sz = nx + 1, (nx + 1) * (ny + 1)
    c0, c1 = slice_range(n_cells, size, rank)
    h0, h1 = c0 // per, -(-c1 // per)
    hid = np.arange(h0, h1, dtype=np.int64)
    k, rem = np.divmod(hid, nx * ny)
    j, i = np.divmod(rem, nx)
    offsets = np.array([0, 1, 1 + sx, sx, sz, sz + 1, sz + 1 + sx, sz + sx])
    cells = (i + sx * j + sz * k)[:, None] + offsets
    fsets = _box_facets(i, j, k, hid, nx, ny, nz)
    if tet:
        cells, fsets = _tet_slice(cells, fsets, h0, c0, c1)
    n0, n1 = slice_range(n_nodes, size, rank)
    nid = np.arange(n0, n1, dtype=np.int64)
    nk, rem = np.divmod(nid, sz)
    nj, ni = np.divmod(rem, sx)
    # the same expressions as box(), so the coordinates are bitwise equal
    xs = o[0] + lx * np.arange(nx + 1) / nx
    ys = o[1] + ly * np.arange(ny + 1) / ny
    zs = o[2] + lz * np.arange(nz + 1) / nz
    pts = np.column_stack([xs[ni], ys[nj], zs[nk]])
    return MeshSlice(cell_type, n_cells, n_nodes, c0, cells, n0, pts, fsets)


def _tet_slice(hex_cells: np.ndarray, hex_fsets: dict[str, np.ndarray], h0: int, c0: int,
               c1: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Tetrahedra ``c0 .. c1 - 1`` of :func:`hex_to_tet` from the hexahedra ``h0 ..`` that contain them."""
    cells = hex_cells[:, KUHN_TETS].reshape(-1, 4)[c0 - 6 * h0: c1 - 6 * h0]
    fsets = {}
    for name, fs in hex_fsets.items():
        tf = _tet_facets(fs)
        fsets[name] = tf[(tf[:, 0] >= c0) & (tf[:, 0] < c1)]
    return cells, fsets


# ------------------------------------------------------------------ plate with hole
def _geometric(n: int, ratio: float) -> np.ndarray:
    """n+1 points in [0, 1], element sizes in geometric progression (last / first = ratio)."""
    if n == 1 or ratio == 1.0:
        return np.linspace(0.0, 1.0, n + 1)
    q = ratio ** (1.0 / (n - 1))
    s = (q ** np.arange(n + 1) - 1.0) / (q**n - 1.0)
    s[-1] = 1.0
    return s


def _auto_grading(n: int, length: float, h0: float) -> float:
    """Ratio last/first of a geometric progression of n sizes summing to length, first = h0."""
    if n == 1 or n * h0 >= length:
        return 1.0
    lo, hi = 0.0, np.log(1e3)          # bisection on log(q), q the common ratio
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        q = np.exp(mid)
        first = length * (q - 1.0) / (q**n - 1.0)
        lo, hi = (mid, hi) if first > h0 else (lo, mid)
    return float(np.exp(0.5 * (lo + hi)) ** (n - 1))


def _block2d(origin, u, v, nu: int, nv: int) -> tuple[np.ndarray, np.ndarray]:
    """Structured quads of the parallelogram origin + s u + t v (counter-clockwise if u x v > 0)."""
    s = np.arange(nu + 1) / nu
    t = np.arange(nv + 1) / nv
    pts = (np.asarray(origin)[None, None] + s[None, :, None] * np.asarray(u)
           + t[:, None, None] * np.asarray(v)).reshape(-1, 2)    # node p + (nu+1) q
    q, p = (a.ravel() for a in np.meshgrid(np.arange(nv), np.arange(nu), indexing="ij"))
    b = p + (nu + 1) * q
    quads = np.column_stack([b, b + 1, b + nu + 2, b + nu + 1])
    return pts, quads


def plate_with_hole(width: float = 2.0, height: float = 2.0, thickness: float = 0.2, radius: float = 0.25,
                    n_around: int = 32, n_radial: int = 8, n_thick: int = 2,
                    cell_type: str = "hexahedron", grading: float | None = None) -> Mesh:
    """Rectangular plate ``[-w/2, w/2] x [-h/2, h/2] x [-t/2, t/2]`` with a central hole of radius r.

    Construction (2D, then extruded in ``n_thick`` layers):

    * an O-grid around the hole fills the square ``[-a, a]^2``, ``a = min(w, h)/2``: node
      ``(i, j)`` is ``(1 - s_i) H_j + s_i S_j`` with ``H_j`` on the circle at angle
      ``2 pi j / n_around`` and ``S_j`` the matching point of the square boundary (each of
      its 8 half-sides gets ``n_around/8`` equal segments, the block boundaries are the rays
      at multiples of 45 degrees); radial parameters ``s_i`` are graded geometrically toward
      the hole;
    * if ``w != h``, two structured rectangles extend the square to the plate, with element
      size about that of the square's boundary.

    The hole is the polygon through the ``n_around`` points of the circle, so the volume is
    ``(w h - n/2 r^2 sin(2 pi/n)) t``, which tends to ``(w h - pi r^2) t`` as ``O(n^-2)``.

    Parameters
    ----------
    n_around : int
        Elements around the hole, a multiple of 8.
    n_radial : int
        Elements from the hole to the square ``[-a, a]^2``.
    grading : float, optional
        Radial size ratio outermost / innermost element. Default: chosen so that the
        innermost radial size equals the arc size ``2 pi r / n_around`` (uniform if that
        is impossible with ``n_radial`` elements).

    Regions: facet sets ``left, right`` (x = -w/2, w/2), ``bottom, top`` (y = -h/2, h/2),
    ``back, front`` (z = -t/2, t/2) and ``hole``; they partition the boundary.
    """
    pts2, quads2, z, sels, cell_type = _plate2d(width, height, thickness, radius, n_around, n_radial, n_thick,
                                                cell_type, grading)
    points, hexes = _extrude(pts2, quads2, z)
    mesh = Mesh(points, hexes, "hexahedron")
    bnd = boundary_facets(mesh)
    mesh.facet_sets = {name: select_facets(mesh, sel, bnd) for name, sel in sels.items()}
    return hex_to_tet(mesh) if cell_type == "tetra" else mesh


def _plate2d(width, height, thickness, radius, n_around, n_radial, n_thick, cell_type, grading):
    """The 2-D quadrilaterals, layer heights and region selectors of :func:`plate_with_hole`
    (validated arguments); ``O(n_around n_radial)``, cheap enough for every rank."""
    w, h, t, r = (_positive(n, v) for n, v in (("width", width), ("height", height),
                                               ("thickness", thickness), ("radius", radius)))
    n_around = _count("n_around", n_around, 8, 8)
    n_radial = _count("n_radial", n_radial)
    n_thick = _count("n_thick", n_thick)
    cell_type = _cell_type(cell_type)
    a = min(w, h) / 2
    if r >= 0.95 * a:
        raise DdromError(f"plate_with_hole: radius {r} must be less than 0.95 min(width, height)/2 = {0.95 * a}")
    nq = n_around // 8
    if grading is None:
        grading = _auto_grading(n_radial, a - r, 2 * np.pi * r / n_around)
    else:
        grading = _positive("grading", grading)

    # O-grid: node i * n_around + j; local axes (radial, counter-clockwise): positive orientation.
    theta = 2 * np.pi * np.arange(n_around) / n_around
    hole = r * np.column_stack([np.cos(theta), np.sin(theta)])
    ang = np.pi / 4 * np.arange(9)
    corners = a * np.column_stack([np.cos(ang), np.sin(ang)]) / np.maximum(
        np.abs(np.cos(ang)), np.abs(np.sin(ang)))[:, None]
    corners = np.round(corners / a) * a               # exact 0 and +-a
    seg, loc = np.divmod(np.arange(n_around), nq)
    tt = (loc / nq)[:, None]
    square = (1 - tt) * corners[seg] + tt * corners[seg + 1]
    s = _geometric(n_radial, grading)
    pts = ((1 - s)[:, None, None] * hole[None] + s[:, None, None] * square[None]).reshape(-1, 2)
    i, j = (x.ravel() for x in np.meshgrid(np.arange(n_radial), np.arange(n_around), indexing="ij"))
    jn = (j + 1) % n_around
    quads = np.column_stack([i * n_around + j, (i + 1) * n_around + j,
                             (i + 1) * n_around + jn, i * n_around + jn])
    blocks_pts, blocks_quads = [pts], [quads]

    # Extensions: local axes (outward, counter-clockwise along the square) as in the O-grid,
    # so that tetrahedral splits conform across the interface.
    ext = (max(w, h) - min(w, h)) / 2
    if ext > 1e-12 * a:
        ne = max(1, int(round(ext / (a / nq))))
        if w > h:
            blocks = [((a, -a), (ext, 0), (0, 2 * a)), ((-a, a), (-ext, 0), (0, -2 * a))]
        else:
            blocks = [((a, a), (0, ext), (-2 * a, 0)), ((-a, -a), (0, -ext), (2 * a, 0))]
        n0 = pts.shape[0]
        for origin, u, v in blocks:
            bp, bq = _block2d(origin, u, v, ne, 2 * nq)
            blocks_pts.append(bp)
            blocks_quads.append(bq + n0)
            n0 += bp.shape[0]
    pts2, quads2, _ = merge_nodes(np.concatenate(blocks_pts), np.concatenate(blocks_quads), 1e-9 * a)

    z = -t / 2 + t * np.arange(n_thick + 1) / n_thick
    sels = {"left": {"x": -w / 2}, "right": {"x": w / 2}, "bottom": {"y": -h / 2}, "top": {"y": h / 2},
            "back": {"z": -t / 2}, "front": {"z": t / 2}, "hole": {"cylinder": {"radius": r}}}
    return pts2, quads2, z, sels, cell_type


def plate_with_hole_slice(rank: int, size: int, width: float = 2.0, height: float = 2.0,
                          thickness: float = 0.2, radius: float = 0.25, n_around: int = 32,
                          n_radial: int = 8, n_thick: int = 2, cell_type: str = "hexahedron",
                          grading: float | None = None) -> "MeshSlice":
    """Slice ``rank`` of ``size`` of :func:`plate_with_hole`, in its natural numbering.

    Every rank builds the 2-D mesh (``O(n^(2/3))``) and extrudes only its cells and nodes.
    The regions are selected as in the serial generator (exterior faces whose nodes all
    satisfy the selectors, tolerance from the bounding box of the whole plate), with the
    exterior decided analytically: a side face is exterior iff it is on the boundary of the
    2-D mesh, a bottom (top) face iff the cell is in the first (last) layer.
    """
    from ddrom.mesh.boundary import REL_TOL, point_mask
    from ddrom.mesh.slices import MeshSlice, slice_range

    pts2, quads2, z, sels, cell_type = _plate2d(width, height, thickness, radius, n_around, n_radial, n_thick,
                                                cell_type, grading)
    tet = cell_type == "tetra"
    per = 6 if tet else 1
    n2, nq2, nl = pts2.shape[0], quads2.shape[0], z.size
    n_cells, n_nodes = per * nq2 * (nl - 1), n2 * nl
    c0, c1 = slice_range(n_cells, size, rank)
    h0, h1 = c0 // per, -(-c1 // per)
    layer, q = np.divmod(np.arange(h0, h1, dtype=np.int64), nq2)
    bottom = quads2[q] + n2 * layer[:, None]
    hexes = np.concatenate([bottom, bottom + n2], axis=1)        # as _extrude numbers them

    def coords(nodes: np.ndarray) -> np.ndarray:
        lay, p = np.divmod(nodes, n2)
        return np.concatenate([pts2[p], z[lay][..., None]], axis=-1)

    one = Mesh(*_extrude(pts2, quads2, z[:2]), "hexahedron")     # one layer: the exterior sides
    ext2 = np.zeros((nq2, 6), dtype=bool)
    bf = boundary_facets(one)
    ext2[bf[:, 0], bf[:, 1]] = True
    ext = ext2[q]
    ext[:, 0] = layer == 0                                       # face 0: zeta = -1 (bottom layer)
    ext[:, 1] = layer == nl - 2                                  # face 1: zeta = +1 (top layer)
    cell, face = np.nonzero(ext)                                 # sorted by cell, then face
    cand = np.column_stack([cell + h0, face]).astype(np.int64)
    fcoords = coords(hexes[cell[:, None], np.asarray(FACES["hexahedron"])[face]])
    lo = np.array([pts2[:, 0].min(), pts2[:, 1].min(), z.min()])
    hi = np.array([pts2[:, 0].max(), pts2[:, 1].max(), z.max()])
    tol = REL_TOL * max(float(np.linalg.norm(hi - lo)), np.finfo(float).tiny)   # boundary._mesh_tol
    fsets = {name: cand[point_mask(fcoords, sel, tol).all(axis=1)] for name, sel in sels.items()}
    cells = hexes
    if tet:
        cells, fsets = _tet_slice(hexes, fsets, h0, c0, c1)
    n0, n1 = slice_range(n_nodes, size, rank)
    return MeshSlice(cell_type, n_cells, n_nodes, c0, cells, n0, coords(np.arange(n0, n1, dtype=np.int64)),
                     fsets)


# ---------------------------------------------------------------------------- table
GENERATORS: dict[str, Callable[..., Mesh]] = {
    "box": box,
    "plate_with_hole": plate_with_hole,
}


#: sliced versions of :data:`GENERATORS` (same arguments after ``rank, size``)
SLICE_GENERATORS: dict[str, Callable[..., Any]] = {
    "box": box_slice,
    "plate_with_hole": plate_with_hole_slice,
}


def _check_arguments(name: str, kwargs: dict[str, Any]) -> None:
    """The errors of :func:`generate` and :func:`generate_slice` for a name or arguments."""
    if name not in GENERATORS:
        raise DdromError(f"unknown mesh generator {name!r} (available: {', '.join(sorted(GENERATORS))})")
    sig = inspect.signature(GENERATORS[name])
    unknown = sorted(set(kwargs) - set(sig.parameters))
    if unknown:
        raise DdromError(f"mesh generator {name!r}: unknown argument(s) {unknown} "
                         f"(arguments: {', '.join(sig.parameters)})")
    try:
        sig.bind(**kwargs)
    except TypeError as exc:
        raise DdromError(f"mesh generator {name!r}: {exc}") from None


def generate(name: str, **kwargs: Any) -> Mesh:
    """Build the mesh of generator ``name`` with case-file keyword arguments.

    Raises
    ------
    DdromError
        Unknown generator, unknown or missing argument, invalid value.
    """
    _check_arguments(name, kwargs)
    return GENERATORS[name](**kwargs)


def generate_slice(name: str, rank: int, size: int, **kwargs: Any) -> "MeshSlice":
    """This rank's :class:`~ddrom.mesh.slices.MeshSlice` of generator ``name`` (no communication).

    The arguments are checked as by :func:`generate` (the same errors on every rank).
    """
    _check_arguments(name, kwargs)
    return SLICE_GENERATORS[name](rank, size, **kwargs)
