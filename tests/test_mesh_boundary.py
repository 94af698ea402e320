"""Boundary faces, geometric selectors and regions, orientation checks (serial)."""
import numpy as np
import pytest

from ddrom.mesh.boundary import (add_regions, boundary_facets, check_orientation, facet_areas, match_faces,
                                 row_groups, select_facets, select_nodes)
from ddrom.mesh.generators import box, plate_with_hole
from ddrom.mesh.mesh import Mesh
from ddrom.mesh.reference import FACES
from ddrom.parallel import DdromError


def test_row_groups_matches_numpy_unique():
    rng = np.random.default_rng(1)
    for hi in (5, 2**40):                       # packed keys and plain lexsort
        rows = rng.integers(0, hi, (500, 4)) if hi < 10 else rng.integers(0, 3, (500, 4)) * (hi // 3)
        ids, n = row_groups(rows)
        u, inv = np.unique(rows, axis=0, return_inverse=True)
        assert n == len(u)
        np.testing.assert_array_equal(ids, inv.ravel())


@pytest.mark.parametrize("cell_type", ["hexahedron", "tetra"])
def test_boundary_facets_of_box(cell_type):
    m = box(1, 2, 3, 2, 3, 4, cell_type=cell_type)
    bnd = boundary_facets(m)
    per_quad = 2 if cell_type == "tetra" else 1
    assert len(bnd) == per_quad * 2 * (2 * 3 + 3 * 4 + 2 * 4)
    np.testing.assert_allclose(facet_areas(m, bnd).sum(), 2 * (2 + 6 + 3), rtol=1e-13)
    # outward normals: the divergence theorem gives int x.n dA = 3 V (planar faces here)
    X = m.points[m.cells[bnd[:, 0][:, None], np.asarray(FACES[cell_type])[bnd[:, 1]]]]
    if cell_type == "tetra":
        na = 0.5 * np.cross(X[:, 1] - X[:, 0], X[:, 2] - X[:, 0])
    else:
        na = 0.5 * np.cross(X[:, 2] - X[:, 0], X[:, 3] - X[:, 1])
    np.testing.assert_allclose(np.sum(X.mean(axis=1) * na), 3 * 6.0, rtol=1e-13)


def test_boundary_facets_rejects_duplicated_cells():
    m = box(1, 1, 1, 2, 1, 1)
    bad = Mesh(m.points, np.concatenate([m.cells, m.cells[:1]]), "hexahedron")
    with pytest.raises(DdromError, match="1 face\\(s\\) shared by more than two cells.*cells \\[0, 1, 2\\]"):
        boundary_facets(bad)


def test_match_faces_any_node_order():
    m = box(1, 1, 1, 2, 2, 2, cell_type="tetra")
    bnd = boundary_facets(m)
    rows = m.cells[bnd[:, 0][:, None], np.asarray([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])[bnd[:, 1]]]
    rows = np.roll(rows, 1, axis=1)[::-1]
    np.testing.assert_array_equal(match_faces(m, rows, bnd), bnd[::-1])
    assert np.all(match_faces(m, np.array([[0, 1, 2]]), bnd) == -1)


def test_select_facets_string_and_dict_selectors():
    m = box(2, 1, 1, 4, 2, 2)
    xmax = m.facet_sets["xmax"]
    same = lambda a, b: np.array_equal(np.unique(a, axis=0), np.unique(b, axis=0))  # noqa: E731
    assert same(select_facets(m, "x > 2 - tol"), xmax)
    assert same(select_facets(m, "near(x, 2)"), xmax)
    assert same(select_facets(m, {"x": 2.0}), xmax)
    assert same(select_facets(m, "isclose(x, 2.0)"), xmax)
    assert same(select_facets(m, {"box": [[2, -1, -1], [2, 5, 5]]}), xmax)
    # chained comparison, and/or, functions, and a dict with two entries (intersection)
    half = select_facets(m, "near(x, 2) and 0.5 - tol <= y <= 1 + tol")
    assert len(half) == 2 and np.all(m.points[m.cells[half[:, 0]]][:, :, 1].min(axis=1) >= 0.5 - 1e-12)
    assert same(select_facets(m, {"x": 2.0, "expr": "y >= 0.5 - tol"}), half)
    assert same(select_facets(m, "near(x, 0) or near(x, 2)"), np.concatenate([m.facet_sets["xmin"], xmax]))
    assert len(select_facets(m, "sqrt(x**2) > 1e9")) == 0
    # a selector tests all nodes of a face: the line y = 0 alone selects no face
    assert len(select_facets(m, "near(y, 0) and near(z, 0)")) == 0


def test_select_cylinder_and_nodes():
    r = 0.3
    m = plate_with_hole(2, 2, 0.2, r, 16, 2, 1)
    hole = select_facets(m, {"cylinder": {"radius": r, "center": [0, 0, 5], "axis": [0, 0, -2]}})
    assert np.array_equal(np.unique(hole, axis=0), np.unique(m.facet_sets["hole"], axis=0))
    np.testing.assert_array_equal(select_nodes(m, "near(sqrt(x**2 + y**2), 0.3)"), m.nodes_of("hole"))
    corner = select_nodes(m, {"x": 1.0, "y": 1.0})
    np.testing.assert_allclose(m.points[corner], [[1, 1, -0.1], [1, 1, 0.1]])


@pytest.mark.parametrize("expr,match", [
    ("__import__('os').system('true')", "unknown name '__import__'|unsupported syntax"),
    ("x.__class__", "unsupported syntax"),
    ("open('f')", "unsupported syntax|unknown name"),
    ("[c for c in ()]", "unsupported syntax"),
    ("lambda: 1", "unsupported syntax"),
    ("y > 'a'", "is not a number"),
    ("x + 1", "is not a condition"),
    ("w > 0", "unknown name 'w'"),
    ("x >", "syntax error"),
    ("x in (1, 2)", "unsupported syntax"),
    ("9 ** 9 ** 9 > x", "is not a condition|selects no"),
])
def test_selector_expressions_are_restricted(expr, match):
    m = box(1, 1, 1, 1, 1, 1)
    if "9 ** 9" in expr:       # floats only: overflows to inf at once instead of a huge integer
        assert len(select_facets(m, expr)) == 6
        return
    with pytest.raises(DdromError, match=match):
        select_facets(m, expr)


@pytest.mark.parametrize("sel,match", [
    ({"plane": 1}, "unknown selector key"),
    ({"box": [[0, 0], [1, 1]]}, "box"),
    ({"cylinder": {"r": 1}}, "cylinder"),
    ({"x": "a"}, "expected 1 numbers"),
    ({}, "non-empty"),
    (3.0, "string expression or a non-empty table"),
])
def test_bad_dict_selectors(sel, match):
    with pytest.raises(DdromError, match=match):
        select_facets(box(1, 1, 1, 1, 1, 1), sel)


def test_add_regions():
    m = box(1, 1, 1, 2, 2, 2)
    add_regions(m, {"load": {"x": 1.0, "expr": "y > 0.5 - tol"}, "edge": "near(x, 0) and near(y, 0)",
                    "centre": {"box": [[0.4, 0.4, 0.4], [0.6, 0.6, 0.6]]}})
    np.testing.assert_allclose(facet_areas(m, "load").sum(), 0.5)
    assert "edge" in m.node_sets and "edge" not in m.facet_sets                  # a line: nodes only
    np.testing.assert_allclose(m.points[m.node_sets["edge"]][:, :2], 0.0)
    assert m.node_sets["edge"].size == 3
    np.testing.assert_allclose(m.points[m.node_sets["centre"]], [[0.5, 0.5, 0.5]])  # an interior node
    with pytest.raises(DdromError, match="region 'nothing': selector .* selects no face and no node"):
        add_regions(m, {"nothing": {"x": 3.0}})
    with pytest.raises(DdromError, match="region 'xmin' is defined twice"):
        add_regions(m, {"xmin": {"x": 0.0}})
    with pytest.raises(DdromError, match="region 'bad': selector 'x >'"):
        add_regions(m, {"bad": "x >"})


@pytest.mark.parametrize("cell_type", ["hexahedron", "tetra"])
def test_check_orientation_finds_inverted_and_degenerate_cells(cell_type):
    m = box(1, 1, 1, 3, 3, 3, cell_type=cell_type)
    assert np.all(check_orientation(m) > 0)
    cells = m.cells.copy()
    swap = [0, 1, 2, 3, 4, 5, 6, 7] if cell_type == "hexahedron" else [0, 1, 2, 3]
    swap[1], swap[3] = swap[3], swap[1]                  # mirror: reverses the orientation
    cells[[5, 17]] = cells[[5, 17]][:, swap]
    with pytest.raises(DdromError, match=r"2 inverted cell\(s\).*cell\(s\) \[5, 17\]"):
        check_orientation(Mesh(m.points, cells, cell_type))
    pts = m.points.copy()
    flat = m.cells[0]
    pts[flat] = pts[flat] * [1, 1, 0]                    # squash cell 0 into z = 0
    with pytest.raises(DdromError, match=r"degenerate cell\(s\) \(zero volume\), e.g. cell\(s\) \[0"):
        check_orientation(Mesh(pts, m.cells, cell_type))
