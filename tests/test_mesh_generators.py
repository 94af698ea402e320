"""Built-in mesh generators: exact volumes and areas, orientation, conformity, regions (serial)."""
import numpy as np
import pytest
from scipy.spatial import cKDTree

from ddrom.mesh.boundary import boundary_facets, cell_volumes, check_orientation, facet_areas
from ddrom.mesh.generators import GENERATORS, box, generate, hex_to_tet, plate_with_hole
from ddrom.parallel import DdromError

CELL_TYPES = ["hexahedron", "tetra"]


def assert_regions_partition_boundary(mesh):
    """Every exterior face is in exactly one facet set, and facet sets hold only exterior faces."""
    bnd = boundary_facets(mesh)
    nf = 6 if mesh.cell_type == "hexahedron" else 4
    keys = np.concatenate([fs[:, 0] * nf + fs[:, 1] for fs in mesh.facet_sets.values()])
    assert keys.size == np.unique(keys).size, "a face is in two regions"
    np.testing.assert_array_equal(np.sort(keys), np.sort(bnd[:, 0] * nf + bnd[:, 1]))


def assert_no_duplicate_nodes(mesh, scale):
    pairs = cKDTree(mesh.points).query_pairs(1e-9 * scale, output_type="ndarray")
    assert pairs.size == 0
    np.testing.assert_array_equal(np.unique(mesh.cells), np.arange(mesh.n_nodes))   # no orphan node


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_box_volume_areas_regions(cell_type):
    lx, ly, lz = 2.0, 3.0, 0.5
    m = box(lx, ly, lz, 3, 4, 2, origin=(1.0, -1.0, 2.0), cell_type=cell_type)
    assert m.n_cells == 24 * (6 if cell_type == "tetra" else 1)
    assert m.n_nodes == 4 * 5 * 3
    np.testing.assert_allclose(m.points.min(axis=0), [1.0, -1.0, 2.0])
    np.testing.assert_allclose(m.points.max(axis=0), [3.0, 2.0, 2.5])
    vol = cell_volumes(m)
    np.testing.assert_allclose(vol, lx * ly * lz / m.n_cells, rtol=1e-13)     # all equal, all positive
    assert np.all(check_orientation(m) > 0)
    assert_regions_partition_boundary(m)
    expected = {"xmin": ly * lz, "xmax": ly * lz, "ymin": lx * lz, "ymax": lx * lz, "zmin": lx * ly, "zmax": lx * ly}
    for name, area in expected.items():
        np.testing.assert_allclose(facet_areas(m, name).sum(), area, rtol=1e-13)
    coord = {"x": 0, "y": 1, "z": 2}
    for name in expected:
        c = m.points[m.nodes_of(name), coord[name[0]]]
        ref = m.points[:, coord[name[0]]].min() if name.endswith("min") else m.points[:, coord[name[0]]].max()
        np.testing.assert_allclose(c, ref)


def test_box_tets_conform():
    """A non-conforming split would leave interior faces that look exterior."""
    h = box(1, 1, 1, 3, 3, 3)
    t = box(1, 1, 1, 3, 3, 3, cell_type="tetra")
    assert len(boundary_facets(t)) == 2 * len(boundary_facets(h)) == 2 * 6 * 9


def test_hex_to_tet_distorted_box_keeps_volume():
    m = box(1, 1, 1, 3, 3, 3)
    rng = np.random.default_rng(0)
    interior = np.all((m.points > 1e-9) & (m.points < 1 - 1e-9), axis=1)
    m.points[interior] += 0.08 * rng.uniform(-1, 1, (interior.sum(), 3))
    t = hex_to_tet(m)
    check_orientation(t)
    np.testing.assert_allclose(cell_volumes(t).sum(), 1.0, rtol=1e-13)
    assert_regions_partition_boundary(t)


def polygon_volume(w, h, t, r, n):
    return (w * h - 0.5 * n * r**2 * np.sin(2 * np.pi / n)) * t


@pytest.mark.parametrize("cell_type", CELL_TYPES)
@pytest.mark.parametrize("w,h", [(2.0, 2.0), (3.0, 2.0), (1.5, 2.5)])
def test_plate_with_hole_geometry(cell_type, w, h):
    t, r, n = 0.3, 0.4, 32
    m = plate_with_hole(w, h, t, r, n_around=n, n_radial=6, n_thick=2, cell_type=cell_type)
    assert m.cell_type == cell_type
    assert np.all(check_orientation(m) > 0)
    np.testing.assert_allclose(cell_volumes(m).sum(), polygon_volume(w, h, t, r, n), rtol=1e-12)
    assert_no_duplicate_nodes(m, w)
    assert sorted(m.facet_sets) == sorted(["left", "right", "bottom", "top", "back", "front", "hole"])
    assert_regions_partition_boundary(m)
    areas = {k: facet_areas(m, k).sum() for k in m.facet_sets}
    np.testing.assert_allclose([areas["left"], areas["right"]], h * t, rtol=1e-12)
    np.testing.assert_allclose([areas["bottom"], areas["top"]], w * t, rtol=1e-12)
    np.testing.assert_allclose([areas["back"], areas["front"]], polygon_volume(w, h, t, r, n) / t, rtol=1e-12)
    np.testing.assert_allclose(areas["hole"], 2 * n * r * np.sin(np.pi / n) * t, rtol=1e-12)
    assert abs(areas["hole"] / (2 * np.pi * r * t) - 1) < 0.007
    np.testing.assert_allclose(m.points.min(axis=0), [-w / 2, -h / 2, -t / 2])
    np.testing.assert_allclose(m.points.max(axis=0), [w / 2, h / 2, t / 2])
    hole_nodes = m.points[m.nodes_of("hole")]
    np.testing.assert_allclose(np.hypot(hole_nodes[:, 0], hole_nodes[:, 1]), r, rtol=1e-13)
    np.testing.assert_allclose(m.points[m.nodes_of("front"), 2], t / 2)


def test_plate_volume_converges_to_circular_hole():
    """Polygonal hole: volume error ~ (2 pi^3 / 3) r^2 t / n^2, quartered when n doubles."""
    w, h, t, r = 2.0, 2.0, 0.1, 0.5
    exact = (w * h - np.pi * r**2) * t
    errs = []
    for n in (16, 32, 64):
        v = cell_volumes(plate_with_hole(w, h, t, r, n, 4, 1)).sum()
        errs.append(v - exact)
        np.testing.assert_allclose(errs[-1], 2 * np.pi**3 / 3 * r**2 * t / n**2, rtol=0.02)
    assert errs[0] > errs[1] > errs[2] > 0
    np.testing.assert_allclose(np.array(errs[:-1]) / errs[1:], 4.0, rtol=0.02)


def test_plate_grading_toward_hole():
    r, n = 0.25, 32
    m = plate_with_hole(2, 2, 0.2, r, n, 10, 1)
    on_axis = m.points[(np.abs(m.points[:, 1]) < 1e-12) & (m.points[:, 0] > 0) & (m.points[:, 2] < 0)]
    x = np.sort(on_axis[:, 0])
    dx = np.diff(x)
    assert x[0] == pytest.approx(r) and x[-1] == pytest.approx(1.0)
    assert np.all(np.diff(dx) > 0)                          # growing away from the hole
    assert dx[0] == pytest.approx(2 * np.pi * r / n, rel=1e-6)   # default: square elements at the hole
    uniform = plate_with_hole(2, 2, 0.2, r, n, 10, 1, grading=1.0)
    xu = np.sort(uniform.points[(np.abs(uniform.points[:, 1]) < 1e-12) & (uniform.points[:, 0] > 0)
                                & (uniform.points[:, 2] < 0), 0])
    np.testing.assert_allclose(np.diff(xu), (1.0 - r) / 10)


def test_generate_table_and_bad_arguments():
    m = generate("plate_with_hole", width=2.0, height=1.0, thickness=0.1, radius=0.2, n_around=16,
                 n_radial=2, n_thick=1, cell_type="tetra")
    assert m.cell_type == "tetra" and set(GENERATORS) >= {"box", "plate_with_hole"}
    assert generate("box", nx=2, ny=2, nz=2).n_cells == 8
    with pytest.raises(DdromError, match="unknown mesh generator 'boxx'.*available: box, plate_with_hole"):
        generate("boxx")
    with pytest.raises(DdromError, match=r"unknown argument\(s\) \['nxx'\]"):
        generate("box", nxx=3)
    with pytest.raises(DdromError, match="n_around must be an integer >= 8 and a multiple of 8"):
        generate("plate_with_hole", n_around=20)
    with pytest.raises(DdromError, match="radius"):
        generate("plate_with_hole", width=1.0, height=1.0, radius=0.5)
    with pytest.raises(DdromError, match="lx must be a positive number"):
        generate("box", lx=-1.0)
    with pytest.raises(DdromError, match="nx must be an integer"):
        generate("box", nx=2.5)
    with pytest.raises(DdromError, match="cell_type"):
        generate("box", cell_type="wedge")
