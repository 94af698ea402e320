"""Abaqus/CalculiX .inp decks (ddrom.mesh.abaqus, read_mesh): nodes, elements, node and element
sets (GENERATE, references, ELSET=), element- and node-based surfaces as ddrom regions, the
face labels S1..S6 / S1..S4 placed geometrically, *INCLUDE, and one clear error per bad deck."""
from __future__ import annotations

import logging
import textwrap

import numpy as np
import pytest
from mpi4py import MPI

from ddrom.mesh.abaqus import FACE_LABELS, FACE_OF_LABEL, read_inp
from ddrom.mesh.generators import box
from ddrom.mesh.io import read_mesh, write_mesh
from ddrom.mesh.reference import FACES
from ddrom.parallel import DdromError

from helpers import distributed

NX, NY, NZ = 3, 2, 2


def deck_of_box(cell_type: str = "hexahedron", shuffle: bool = True) -> tuple[str, np.ndarray, np.ndarray, object]:
    """A deck of a 3 x 1 x 1 box: node ids 1001.. and element ids 11.. (nodes written in a
    seeded random order, so that the deck order is not the id order), element records
    split over two lines (continuation comma)."""
    m = box(3.0, 1.0, 1.0, NX, NY, NZ, cell_type=cell_type)
    nid = 1001 + np.arange(m.n_nodes)
    eid = 11 + np.arange(m.n_cells)
    order = np.random.default_rng(3).permutation(m.n_nodes) if shuffle else np.arange(m.n_nodes)
    etype = "C3D8" if cell_type == "hexahedron" else "C3D4"
    lines = ["*HEADING", "a box, written by the test", "** a comment", "*Node, nset=Nall"]
    lines += [f"{nid[i]}, {m.points[i, 0]!r}, {m.points[i, 1]!r}, {m.points[i, 2]!r}" for i in order]
    lines.append(f"*ELEMENT, TYPE={etype}, ELSET=Eall")
    for e, c in zip(eid, m.cells):
        ids = [str(int(nid[j])) for j in c]
        h = len(ids) // 2
        lines += [f"{e}, " + ", ".join(ids[:h]) + ",", "    " + ", ".join(ids[h:])]
    return "\n".join(lines) + "\n", nid, eid, m


def write(tmp_path, text: str, name: str = "model.inp"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def centroid_of(mesh, facets):
    faces = np.asarray(FACES[mesh.cell_type])
    return mesh.points[mesh.cells[facets[:, 0][:, None], faces[facets[:, 1]]]].mean(axis=1)


# ------------------------------------------------------------------------------ face labels
def test_face_labels_match_ddrom_faces_as_node_sets():
    for ct, labels in FACE_LABELS.items():
        for lab, nodes in labels.items():
            assert set(FACES[ct][FACE_OF_LABEL[ct][lab]]) == set(nodes), (ct, lab)
        assert sorted(FACE_OF_LABEL[ct].values()) == list(range(len(FACES[ct])))


def test_hexahedron_face_labels_are_on_the_abaqus_faces(tmp_path):
    """S1 z-, S2 z+, S3 y-, S4 x+, S5 y+, S6 x- (reference axes = x, y, z here), as CalculiX loads them."""
    deck, nid, eid, m = deck_of_box()
    planes = {"S1": (2, 0.0), "S2": (2, 1.0), "S3": (1, 0.0), "S4": (0, 3.0), "S5": (1, 1.0), "S6": (0, 0.0)}
    for lab, (axis, value) in planes.items():
        # the elements touching that plane
        cc = m.points[m.cells].mean(axis=1)[:, axis]
        h = {0: 1.0, 1: 0.5, 2: 0.5}[axis] / 2
        touching = eid[np.abs(cc - value) < h * 1.01]
        deck += f"*ELSET, ELSET=E{lab}\n" + ", ".join(map(str, touching)) + f"\n*SURFACE, NAME=F{lab}\nE{lab}, {lab}\n"
    inp = read_inp(write(tmp_path, deck))
    mesh = inp.mesh
    for lab, (axis, value) in planes.items():
        fs = mesh.facet_sets[f"F{lab}"]
        assert len(fs) > 0
        np.testing.assert_allclose(centroid_of(mesh, fs)[:, axis], value, atol=1e-12, err_msg=lab)
        # the same faces as the generator's boundary regions
        name = {0: "x", 1: "y", 2: "z"}[axis] + ("min" if value == 0.0 else "max")
        np.testing.assert_array_equal(np.unique(mesh.nodes_of(f"F{lab}")),
                                      np.unique(_renumber(inp, nid, m.nodes_of(name))))


def _renumber(inp, nid, natural_of_box):
    """Rows of inp.mesh of the box generator's node ids."""
    pos = {int(a): i for i, a in enumerate(inp.node_ids)}
    return np.array([pos[int(nid[j])] for j in natural_of_box])


def test_tetra_face_labels_are_on_the_abaqus_faces(tmp_path):
    deck = """\
        *NODE
        1, 0, 0, 0
        2, 1, 0, 0
        3, 0, 1, 0
        4, 0, 0, 1
        *ELEMENT, TYPE=C3D4, ELSET=E
        7, 1, 2, 3, 4
        """
    for lab in ("S1", "S2", "S3", "S4"):
        deck += f"*SURFACE, NAME=F{lab}\n7, {lab}\n"
    mesh = read_inp(write(tmp_path, deck)).mesh
    c = {lab: centroid_of(mesh, mesh.facet_sets[f"F{lab}"])[0] for lab in ("S1", "S2", "S3", "S4")}
    np.testing.assert_allclose(c["S1"], [1 / 3, 1 / 3, 0])
    np.testing.assert_allclose(c["S2"], [1 / 3, 0, 1 / 3])
    np.testing.assert_allclose(c["S3"], [1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(c["S4"], [0, 1 / 3, 1 / 3])


# ------------------------------------------------------------------------------ sets
@pytest.mark.parametrize("cell_type", ["hexahedron", "tetra"])
def test_deck_mesh_sets_and_surfaces(tmp_path, cell_type, caplog):
    deck, nid, eid, m = deck_of_box(cell_type)
    xmin = nid[m.nodes_of("xmin")]
    xmax = nid[m.nodes_of("xmax")]
    ids_first = eid[:4]
    top = m.facet_sets["zmax"][:, 0]
    deck += textwrap.dedent(f"""\
        *NSET, NSET=Fix
        {', '.join(map(str, xmin))}
        *nset, nset=FIX
        {int(xmax[0])}
        *NSET, NSET=Both
        fix, {int(xmax[1])}
        *NSET, NSET=Gen, GENERATE
        1001, 1010, 3
        *NSET, NSET=Of first, ELSET=First
        *ELSET, ELSET=First, GENERATE
        {ids_first[0]}, {ids_first[-1]}
        *ELSET, ELSET=Top
        {', '.join(map(str, eid[np.unique(top)]))}
        *SURFACE, NAME=Free
        top
        *SURFACE, NAME=Pinned, TYPE=NODE
        FIX, 1.0
        {int(xmax[2])}
        *INCLUDE, INPUT=more.inp
        """)
    # *NSET ELSET= refers to a set defined later in the deck than the *NSET: Abaqus needs it
    # before; this deck has it after, which must be a clear error ...
    p = write(tmp_path, deck)
    (tmp_path / "more.inp").write_text("** included\n*NSET, NSET=Inc\n1001\n")
    with pytest.raises(DdromError, match=r"line \d+: element set 'First' is not defined before this line"):
        read_inp(p)
    # ... and works in the right order
    p.write_text(deck.replace(f"*NSET, NSET=Of first, ELSET=First\n", "") + "*NSET, NSET=Of first, ELSET=First\n")
    with caplog.at_level(logging.WARNING, logger="ddrom.mesh"):
        inp = read_inp(p)
    mesh = inp.mesh
    assert mesh.cell_type == cell_type and mesh.n_cells == m.n_cells and mesh.n_nodes == m.n_nodes
    np.testing.assert_array_equal(inp.element_ids, eid)
    row = {int(a): i for i, a in enumerate(inp.node_ids)}
    rows = lambda ids: np.sort([row[int(i)] for i in ids])          # noqa: E731
    # deck order of the nodes, coordinates kept exactly
    np.testing.assert_array_equal(mesh.points, m.points[np.random.default_rng(3).permutation(m.n_nodes)])
    np.testing.assert_array_equal(mesh.node_sets["Fix"], rows(np.append(xmin, xmax[0])))
    np.testing.assert_array_equal(mesh.node_sets["Both"], rows(np.append(xmin, xmax[:2])))
    np.testing.assert_array_equal(mesh.node_sets["Gen"], rows(np.arange(1001, 1011, 3)))
    np.testing.assert_array_equal(mesh.node_sets["Nall"], np.arange(mesh.n_nodes))
    np.testing.assert_array_equal(mesh.node_sets["Of first"], rows(np.unique(nid[m.cells[:4]])))
    np.testing.assert_array_equal(mesh.node_sets["Inc"], rows([1001]))
    assert sorted(mesh.cell_sets) == ["Eall", "First", "Top"]
    np.testing.assert_array_equal(mesh.cell_sets["First"], np.arange(4))
    np.testing.assert_array_equal(mesh.cell_sets["Top"], np.unique(top))
    # "Free": the boundary faces of the top elements (no face label)
    fs = mesh.facet_sets["Free"]
    assert set(fs[:, 0].tolist()) == set(np.unique(top).tolist())
    assert np.any(np.isclose(centroid_of(mesh, fs)[:, 2], 1.0))
    # a node-based surface merged with the node set it names ... and a node set name
    np.testing.assert_array_equal(mesh.node_sets["Pinned"], rows(np.append(np.append(xmin, xmax[0]), xmax[2])))
    assert "Pinned" not in mesh.facet_sets
    # read_mesh gives the same, and the Abaqus node numbers as its node map
    m2, ids = read_mesh(p, return_node_map=True)
    np.testing.assert_array_equal(ids, inp.node_ids)
    assert sorted(m2.node_sets) == sorted(mesh.node_sets) and sorted(m2.facet_sets) == ["Free"]


def test_surface_and_node_set_of_one_name_warn_when_different(tmp_path, caplog):
    deck, nid, eid, m = deck_of_box()
    top = np.unique(m.facet_sets["zmax"][:, 0])
    deck += ("*NSET, NSET=Top\n" + ", ".join(map(str, nid[m.nodes_of("zmax")][:3])) + "\n*ELSET, ELSET=T\n"
             + ", ".join(map(str, eid[top])) + "\n*SURFACE, NAME=TOP\nT, S2\n")
    with caplog.at_level(logging.WARNING, logger="ddrom.mesh"):
        mesh = read_inp(write(tmp_path, deck)).mesh
    assert "Top" in mesh.facet_sets and "Top" in mesh.node_sets
    assert any("surface 'Top' and node set 'Top' of the same name have different nodes" in r.message
               for r in caplog.records)


def test_interior_surface_faces_are_dropped_with_a_warning(tmp_path, caplog):
    deck, nid, eid, m = deck_of_box()
    # S4 (x+) of the first element is shared with its neighbour
    deck += f"*SURFACE, NAME=Inner\n{eid[0]}, S4\n{eid[0]}, S6\n"
    with caplog.at_level(logging.WARNING, logger="ddrom.mesh"):
        mesh = read_inp(write(tmp_path, deck)).mesh
    assert len(mesh.facet_sets["Inner"]) == 1
    assert any("1 face(s) of surface 'Inner' lie inside the volume" in r.message for r in caplog.records)


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("extra, match", [
    ("*NSET, NSET=Gen, GENERATE\n1001, 1027, 1\n1, 2000, 1\n",
     r"model\.inp, line \d+: \*NSET, NSET=Gen \(GENERATE 1, 2000, 1\): node 1 is not defined"),
    ("*NSET, NSET=Bad\n1001, 99\n", r"line \d+: \*NSET, NSET=Bad: node 99 is not defined"),
    ("*ELSET, ELSET=Bad\n11, nosuch\n", r"line \d+: element set 'nosuch' is not defined before this line"),
    ("*ELSET, ELSET=Bad, GENERATE\n11, 500, 1\n",
     r"\*ELSET, ELSET=Bad \(GENERATE 11, 500, 1\): element 23 is not defined \(478 undefined elements"),
    ("*SURFACE, NAME=S\n11, S7\n", r"face label 'S7' is not one of \['S1', 'S2', 'S3', 'S4', 'S5', 'S6'\]"),
    ("*SURFACE, NAME=S\n99, S1\n", r"\*SURFACE, NAME=S: element 99 is not defined"),
    ("*SURFACE, NAME=S, TYPE=CUTTING SURFACE\n", r"\*SURFACE, TYPE=CUTTING SURFACE is not supported"),
    ("*NSET\n1001\n", r"line \d+: \*NSET needs NSET=<name>"),
    ("*ELEMENT, TYPE=C3D20, ELSET=Q\n", r"line \d+: element type C3D20 is not supported: ddrom reads the solids"),
    ("*ELEMENT, TYPE=S4R\n", r"element type S4R is not supported"),
    ("*ELEMENT, TYPE=C3D4\n100, 1001, 1002, 1003, 1013\n", r"mixes hexahedra and tetrahedra \(C3D4, C3D8\)"),
    ("*ELEMENT, TYPE=C3D8\n12, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008\n", r"element 12 is defined twice"),
    ("*ELEMENT, TYPE=C3D8\n100, 1001, 1002, 1003\n", r"line \d+: C3D8 element 100: expected an id and 8 nodes, got 3"),
    ("*ELEMENT, TYPE=C3D8\n100, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 5\n",
     r"\*ELEMENT, TYPE=C3D8: node 5 is not defined"),
    ("*NODE\n1001, 0.0, 0.0, 0.0\n", r"line \d+: node 1001 is defined twice \(first at .*line \d+\)"),
    ("*NODE\n5000, 0.0, abc, 0.0\n", r"line \d+: \*NODE data '5000, 0.0, abc, 0.0': a coordinate is not a number"),
    ("*PART, NAME=P\n", r"\*PART: decks with parts and assemblies are not supported"),
    ("*INCLUDE, INPUT=absent.inp\n", r"\*INCLUDE, INPUT=absent\.inp: no such file"),
])
def test_bad_decks_give_one_clear_error(tmp_path, extra, match):
    deck, *_ = deck_of_box(shuffle=False)
    with pytest.raises(DdromError, match=match):
        read_inp(write(tmp_path, deck + extra))


def test_reduced_integration_types_are_read_with_a_warning(tmp_path, caplog):
    deck, *_ = deck_of_box(shuffle=False)
    with caplog.at_level(logging.WARNING, logger="ddrom.mesh"):
        mesh = read_mesh(write(tmp_path, deck.replace("TYPE=C3D8", "TYPE=C3D8R")))
    assert mesh.cell_type == "hexahedron"
    assert any("['C3D8R'] are read as plain hexahedron cells" in r.message for r in caplog.records)


def test_inverted_elements_name_the_file(tmp_path):
    deck = "*NODE\n1,0,0,0\n2,1,0,0\n3,0,1,0\n4,0,0,1\n*ELEMENT, TYPE=C3D4\n1, 1, 3, 2, 4\n"
    with pytest.raises(DdromError, match=r"mesh file .*model\.inp: invalid tetra mesh of 1 cells: 1 inverted"):
        read_mesh(write(tmp_path, deck))


# ------------------------------------------------------------------------------ cell sets
@pytest.mark.parametrize("ext", ["vtu", "xdmf"])
def test_cell_sets_round_trip(tmp_path, ext):
    deck, nid, eid, m = deck_of_box()
    deck += "*ELSET, ELSET=Few\n11, 14, 17\n*SURFACE, NAME=Top\nFew, S2\n"
    mesh = read_mesh(write(tmp_path, deck))
    write_mesh(mesh, tmp_path / f"m.{ext}")
    r = read_mesh(tmp_path / f"m.{ext}")
    assert sorted(r.cell_sets) == sorted(mesh.cell_sets) == ["Eall", "Few"]
    np.testing.assert_array_equal(r.cell_sets["Few"], [0, 3, 6])
    np.testing.assert_array_equal(r.facet_sets["Top"], mesh.facet_sets["Top"])


@pytest.mark.mpi
def test_distributed_deck_keeps_its_regions_and_cell_sets(shared_tmp):
    comm = MPI.COMM_WORLD
    p = shared_tmp / "dist.inp"
    if comm.rank == 0:
        deck, nid, eid, m = deck_of_box()
        deck += "*ELSET, ELSET=Few\n17, 18, 20, 21\n*SURFACE, NAME=Top\nFew, S2\n*NSET, NSET=One\n1001\n"
        p.write_text(deck)
    comm.Barrier()
    dm = distributed(lambda: read_mesh(p), comm)
    assert dm.region_names() == ["One", "Top", "Nall"] or sorted(dm.region_names()) == ["Nall", "One", "Top"]
    assert sorted(dm.cell_sets) == ["Eall", "Few"]
    few = np.sort(np.concatenate(comm.allgather(dm.cell_natural[dm.cell_sets["Few"]])))
    np.testing.assert_array_equal(few, [6, 7, 9, 10])
    assert comm.allreduce(len(dm.facet_sets["Top"])) == 4
    assert comm.allreduce(len(dm.cell_sets["Eall"])) == NX * NY * NZ
