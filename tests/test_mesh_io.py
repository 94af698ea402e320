"""Mesh files through meshio: round trips, Gmsh physical groups, tags, bad files (serial)."""
import logging

import meshio
import numpy as np
import pytest

from ddrom.mesh.boundary import facet_areas
from ddrom.mesh.generators import box, plate_with_hole
from ddrom.mesh.io import read_mesh, write_mesh
from ddrom.mesh.mesh import Mesh
from ddrom.parallel import DdromError

FACE_TYPE = {"hexahedron": "quad", "tetra": "triangle"}


def same_sets(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(np.unique(a[k], axis=0), np.unique(b[k], axis=0), err_msg=k)


@pytest.mark.parametrize("cell_type", ["hexahedron", "tetra"])
@pytest.mark.parametrize("ext", ["vtu", "xdmf", "msh"])
def test_round_trip(tmp_path, cell_type, ext):
    m = plate_with_hole(2.0, 1.5, 0.2, 0.3, 16, 3, 2, cell_type=cell_type)
    m.node_sets["pin"] = np.array([3, 7, 11])
    m.node_sets["hole"] = np.array([0])            # a name both a facet set and a node set
    path = tmp_path / f"plate.{ext}"
    write_mesh(m, path)
    r = read_mesh(path)
    assert r.cell_type == cell_type
    np.testing.assert_array_equal(r.points, m.points)
    np.testing.assert_array_equal(r.cells, m.cells)
    same_sets(r.facet_sets, m.facet_sets)
    same_sets(r.node_sets, m.node_sets)


def gmsh_box(cell_type, n=3):
    """A box whose 6 faces are Gmsh physical surfaces (one entity each), as meshio data."""
    m = box(1.0, 2.0, 3.0, n, n, n, cell_type=cell_type)
    names = sorted(m.facet_sets)
    cells, tags = [], []
    dim_tags = np.tile([3, 100], (m.n_nodes, 1))
    for t, name in enumerate(names, start=1):
        rows = m.facet_nodes(name)
        cells.append((FACE_TYPE[cell_type], rows[:, ::-1]))          # any orientation is accepted
        tags.append(np.full(len(rows), t))
        dim_tags[np.unique(rows)] = [2, t]
    cells.append((cell_type, m.cells))
    tags.append(np.full(m.n_cells, 100))
    field_data = {name: np.array([t, 2]) for t, name in enumerate(names, start=1)}
    field_data["solid"] = np.array([100, 3])
    mm = meshio.Mesh(m.points, cells, cell_data={"gmsh:physical": tags, "gmsh:geometrical": tags},
                     field_data=field_data, point_data={"gmsh:dim_tags": dim_tags})
    return m, mm


@pytest.mark.parametrize("cell_type", ["hexahedron", "tetra"])
@pytest.mark.parametrize("fmt", ["gmsh22", "gmsh"])
@pytest.mark.parametrize("binary", [False, True])
def test_gmsh_physical_groups(tmp_path, cell_type, fmt, binary):
    m, mm = gmsh_box(cell_type)
    path = tmp_path / "box.msh"
    meshio.write(path, mm, file_format=fmt, binary=binary)
    r = read_mesh(path)
    assert r.n_cells == m.n_cells and r.cell_type == cell_type
    # Gmsh 4.1 groups nodes by entity (renumbered), cells keep their order
    np.testing.assert_allclose(r.points[r.cells], m.points[m.cells])
    same_sets(r.facet_sets, m.facet_sets)
    areas = {"xmin": 6.0, "xmax": 6.0, "ymin": 3.0, "ymax": 3.0, "zmin": 2.0, "zmax": 2.0}
    for name, a in areas.items():
        np.testing.assert_allclose(facet_areas(r, name).sum(), a, rtol=1e-12)


def test_medit_refs_without_names_and_unused_nodes(tmp_path):
    m = box(1, 1, 1, 2, 2, 2, cell_type="tetra")
    extra = np.array([[5.0, 5.0, 5.0], [6.0, 6.0, 6.0]])
    pts = np.concatenate([extra, m.points])                    # two orphan nodes first
    tri = m.facet_nodes("zmax") + 2
    mm = meshio.Mesh(pts, [("tetra", m.cells + 2), ("triangle", tri)],
                     cell_data={"medit:ref": [np.zeros(m.n_cells, int), np.full(len(tri), 7)]})
    path = tmp_path / "box.mesh"
    meshio.write(path, mm)
    r, file_ids = read_mesh(path, return_node_map=True)
    assert r.n_nodes == m.n_nodes
    np.testing.assert_array_equal(file_ids, np.arange(m.n_nodes) + 2)
    np.testing.assert_allclose(r.points, pts[file_ids])
    assert sorted(r.facet_sets) == ["tag_7"]
    same_sets({"z": r.facet_sets["tag_7"]}, {"z": m.facet_sets["zmax"]})


def test_geometric_regions_on_read(tmp_path):
    path = tmp_path / "plain.vtu"
    m = box(1, 1, 1, 2, 2, 2)
    meshio.write(path, meshio.Mesh(m.points, [("hexahedron", m.cells)]))
    r = read_mesh(path, regions={"clamp": {"x": 0.0}, "load": "near(x, 1) and z > 0.5 - tol",
                                 "corner": "near(x, 0) and near(y, 0) and near(z, 0)"})
    same_sets({"c": r.facet_sets["clamp"]}, {"c": m.facet_sets["xmin"]})
    np.testing.assert_allclose(facet_areas(r, "load").sum(), 0.5)
    np.testing.assert_array_equal(r.node_sets["corner"], [0])
    with pytest.raises(DdromError, match=r"plain.vtu: region 'far': selector .* selects no face"):
        read_mesh(path, regions={"far": {"x": 2.0}})


def test_interior_and_foreign_surface_cells(tmp_path, caplog):
    m = box(2, 1, 1, 2, 1, 1)
    inner = np.array([[1, 4, 10, 7]])                 # the quad x = 1 between the two cells
    assert np.allclose(m.points[inner[0], 0], 1.0)
    mm = meshio.Mesh(m.points, [("hexahedron", m.cells), ("quad", np.concatenate([inner, m.facet_nodes("xmin")]))],
                     cell_data={"cell_tags": [np.zeros(2, int), np.array([4, 5])]})
    path = tmp_path / "inner.vtu"
    meshio.write(path, mm)
    with caplog.at_level(logging.WARNING, logger="ddrom.mesh"):
        r = read_mesh(path)
    assert "1 surface cell(s) of region 'tag_4' lie inside the volume" in caplog.text
    assert sorted(r.facet_sets) == ["tag_5"]
    mm.cells[1].data[1] = [0, 1, 2, 3]                # not a face of any cell
    meshio.write(path, mm)
    with pytest.raises(DdromError, match=r"inner.vtu: 1 surface cell\(s\) of region 'tag_5' are not faces"):
        read_mesh(path)


def test_inverted_cells_in_file(tmp_path):
    m = box(1, 1, 1, 2, 2, 2, cell_type="tetra")
    cells = m.cells.copy()
    cells[4] = cells[4][[0, 2, 1, 3]]
    path = tmp_path / "inv.vtu"
    meshio.write(path, meshio.Mesh(m.points, [("tetra", cells)]))
    with pytest.raises(DdromError, match=r"inv.vtu: invalid tetra mesh of 48 cells: 1 inverted cell\(s\).*\[4\]"):
        read_mesh(path)
    assert read_mesh(path, check=False).n_cells == 48


@pytest.mark.parametrize("cells,match", [
    ([("tetra", np.array([[0, 1, 2, 3]])), ("hexahedron", np.arange(8)[None])],
     r"volume cells of type\(s\) \['hexahedron', 'tetra'\]"),
    ([("wedge", np.array([[0, 1, 2, 3, 4, 5]]))], r"volume cells of type\(s\) \['wedge'\]"),
    ([("triangle", np.array([[0, 1, 2]]))], r"no volume cells .* found: \['triangle'\]"),
])
def test_unsupported_cells(tmp_path, cells, match):
    pts = box(1, 1, 1, 1, 1, 1).points
    path = tmp_path / "bad.vtu"
    meshio.write(path, meshio.Mesh(pts, cells))
    with pytest.raises(DdromError, match="bad.vtu.*" + match):
        read_mesh(path)


def test_surface_type_mismatch(tmp_path):
    m = box(1, 1, 1, 1, 1, 1, cell_type="tetra")
    path = tmp_path / "mix.vtu"
    meshio.write(path, meshio.Mesh(m.points, [("tetra", m.cells), ("quad", np.array([[0, 1, 3, 2]]))],
                                   cell_data={"cell_tags": [np.zeros(6, int), np.array([1])]}))
    with pytest.raises(DdromError, match="region 'tag_1' has surface cells with 4 nodes.*tetra"):
        read_mesh(path)


def test_bad_files(tmp_path):
    with pytest.raises(DdromError, match="mesh file not found: .*nowhere.msh"):
        read_mesh(tmp_path / "nowhere.msh")
    with pytest.raises(DdromError, match="mesh path is not a file"):
        read_mesh(tmp_path)
    garbage = tmp_path / "garbage.vtu"
    garbage.write_bytes(b"\x00\x01 this is not xml")
    with pytest.raises(DdromError, match="cannot read mesh file .*garbage.vtu"):
        read_mesh(garbage)
    m, mm = gmsh_box("hexahedron")
    good = tmp_path / "good.msh"
    meshio.write(good, mm, file_format="gmsh22", binary=True)
    truncated = tmp_path / "truncated.msh"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DdromError, match="cannot read mesh file .*truncated.msh"):
        read_mesh(truncated)
    unknown = tmp_path / "mesh.foo"
    unknown.write_text("1 2 3\n")
    with pytest.raises(DdromError, match="cannot read mesh file .*mesh.foo"):
        read_mesh(unknown)
    xdmf = tmp_path / "lost.xdmf"
    write_mesh(box(1, 1, 1, 1, 1, 1), xdmf)
    xdmf.with_suffix(".h5").unlink()                   # heavy data gone
    with pytest.raises(DdromError, match="cannot read mesh file .*lost.xdmf"):
        read_mesh(xdmf)
    with pytest.raises(DdromError, match="cannot write mesh file .*out.stl: supported extensions"):
        write_mesh(box(1, 1, 1, 1, 1, 1), tmp_path / "out.stl")


def test_connectivity_out_of_range(tmp_path):
    path = tmp_path / "oob.vtu"
    pts = box(1, 1, 1, 1, 1, 1).points[:4]
    meshio.write(path, meshio.Mesh(pts, [("tetra", np.array([[0, 1, 2, 42]]))]))
    with pytest.raises(DdromError, match="oob.vtu: cell connectivity refers to nodes outside 0..3"):
        read_mesh(path)
