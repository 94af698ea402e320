"""The parallel mesh path (sliced generators and readers, distribute_slices) against the rank-0 path.

Run at 1 and 3 ranks: the subdomains must hold exactly what ddrom.mesh.scatter.distribute
gives for the serial mesh (natural numbering, coordinates, regions, ownership rule).
"""
from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from ddrom.mesh.boundary import add_regions
from ddrom.mesh.generators import box, generate, generate_slice
from ddrom.mesh.io import read_mesh, write_mesh
from ddrom.mesh.scatter import _node_owners, distribute
from ddrom.mesh.slices import MeshSlice, distribute_slices, slice_range
from ddrom.mesh.xdmf import read_distributed, xdmf_layout
from ddrom.parallel import CollectiveError, DdromError, root_only

COMM = MPI.COMM_WORLD

GENERATED = [
    ("box", dict(lx=2.0, nx=5, ny=4, nz=3)),
    ("box", dict(lx=2.0, nx=4, ny=3, nz=3, cell_type="tetra", origin=(0.0, -1.0, 0.0))),
    ("plate_with_hole", dict(n_around=16, n_radial=3, n_thick=2)),
    ("plate_with_hole", dict(width=3.0, n_around=16, n_radial=3, n_thick=3, cell_type="tetra")),
]
BOX_REGIONS = {"fixed": {"x": 0.0}, "load": "x > 1.9 and near(z, 1)",
               "corner": "near(x, 0) and near(y, 0) and near(z, 0)"}
PLATE_REGIONS = {"hole2": {"cylinder": {"radius": 0.25}}, "pin": "near(x, -1) and near(y, -1)"}


def _content(dm) -> dict[str, np.ndarray]:
    """This rank's subdomain in natural terms (sets as sorted natural ids)."""
    nat = dm.node_natural
    d = dict(cells=dm.cell_natural, conn=nat[dm.cells], coords=dm.coords, owned=nat[: dm.n_owned],
             ghosts=nat[dm.n_owned:], node_global=dm.node_global, node_range=np.array(dm.node_range),
             cell_range=np.array(dm.cell_range), n=np.array([dm.n_nodes_global, dm.n_cells_global]))
    for n, fs in dm.facet_sets.items():
        f = np.column_stack([dm.cell_natural[fs[:, 0]], fs[:, 1]])
        d["facets:" + n] = f[np.lexsort((f[:, 1], f[:, 0]))]
    for n, ns in dm.node_sets.items():
        d["nodes:" + n] = np.sort(nat[ns])
    for n, cs in dm.cell_sets.items():
        d["cells:" + n] = np.sort(dm.cell_natural[cs])
    return d


def _assert_same(old, new) -> None:
    a, b = _content(old), _content(new)
    assert sorted(a) == sorted(b)
    bad = [k for k in a if a[k].shape != b[k].shape or not np.array_equal(a[k], b[k])]
    assert not bad, f"rank {COMM.rank}: differ in {bad}"
    assert COMM.allreduce(0) == 0


def _old(name, args, regions, partitioner):
    m = root_only(COMM, lambda: add_regions(generate(name, **args), regions), share=False)
    return distribute(m, COMM, partitioner=partitioner)


def _regions(name):
    return BOX_REGIONS if name == "box" else PLATE_REGIONS


@pytest.mark.mpi
@pytest.mark.parametrize("name,args", GENERATED, ids=["box-hex", "box-tet", "plate-hex", "plate-tet"])
def test_sliced_generator_equals_rank0_path(name, args):
    """Same partition (block): every rank holds exactly the same subdomain as before."""
    old = _old(name, args, _regions(name), "block")
    new = distribute_slices(generate_slice(name, COMM.rank, COMM.size, **args), COMM, "block",
                            regions=_regions(name))
    _assert_same(old, new)


def _global_view(dm):
    """TESTS ONLY: the whole mesh in natural terms from the subdomains, and the part of each cell."""
    c = dm.mpi
    nat = dm.node_natural
    cells = np.concatenate(c.allgather(dm.cell_natural))
    conn = np.concatenate(c.allgather(nat[dm.cells]))
    parts = np.concatenate(c.allgather(np.full(dm.n_cells, c.rank)))
    owned = np.concatenate(c.allgather(nat[: dm.n_owned]))
    owner = np.concatenate(c.allgather(np.full(dm.n_owned, c.rank)))
    o = np.argsort(cells)
    return cells[o], conn[o], parts[o], owned, owner


@pytest.mark.mpi
@pytest.mark.parametrize("name,args", GENERATED, ids=["box-hex", "box-tet", "plate-hex", "plate-tet"])
@pytest.mark.parametrize("partitioner", ["ptscotch", "rcb"])
def test_sliced_generator_natural_content(name, args, partitioner):
    """Any partition (PTScotch is not reproducible from run to run): the same mesh in natural
    terms, the ownership rule of the rank-0 path, PETSc numbering rank-major."""
    serial = generate(name, **args)
    add_regions(serial, _regions(name))
    dm = distribute_slices(generate_slice(name, COMM.rank, COMM.size, **args), COMM, partitioner,
                           regions=_regions(name))
    cells, conn, parts, owned, owner = _global_view(dm)
    assert np.array_equal(cells, np.arange(serial.n_cells))
    assert np.array_equal(conn, serial.cells)
    assert np.array_equal(dm.coords, serial.points[dm.node_natural])
    expect = _node_owners(serial.cells, parts, COMM.size, serial.n_nodes)
    assert np.array_equal(np.sort(owned), np.arange(serial.n_nodes))
    assert np.array_equal(owner[np.argsort(owned)], expect)
    lo, hi = dm.node_range
    assert np.array_equal(dm.node_global[: dm.n_owned], np.arange(lo, hi))
    assert np.all(np.diff(dm.node_natural[: dm.n_owned]) > 0)
    assert np.all(np.diff(dm.node_global[dm.n_owned:]) > 0)
    for n, fs in serial.facet_sets.items():
        mine = np.column_stack([dm.cell_natural[dm.facet_sets[n][:, 0]], dm.facet_sets[n][:, 1]])
        got = np.concatenate(COMM.allgather(mine))
        assert np.array_equal(got[np.lexsort((got[:, 1], got[:, 0]))],
                              fs[np.lexsort((fs[:, 1], fs[:, 0]))]), n
    for n, ns in serial.node_sets.items():
        assert np.array_equal(np.sort(dm.node_natural[dm.node_sets[n]]),
                              np.intersect1d(ns, dm.node_natural)), n
    assert sorted(dm.facet_sets) == sorted(serial.facet_sets)
    assert sorted(dm.node_sets) == sorted(serial.node_sets)


def _shared_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("slices") if COMM.rank == 0 else None
    return COMM.bcast(d, root=0)


@pytest.mark.mpi
@pytest.mark.parametrize("ext", ["xdmf", "vtu", "msh"])
def test_file_read_in_slices_equals_rank0_path(ext, tmp_path_factory):
    d = _shared_dir(tmp_path_factory)
    path = d / f"plate.{ext}"
    regions = {"fixed": {"x": -1.0}, "corner": "near(x, -1) and near(y, -1)"}
    if COMM.rank == 0:
        m = generate("plate_with_hole", n_around=16, n_radial=3, n_thick=2, cell_type="tetra")
        m.node_sets["pin"] = np.array([0, 5, 77])
        m.cell_sets["some"] = np.array([3, 4, 100])
        write_mesh(m, path)
    COMM.Barrier()
    if ext == "xdmf":
        assert xdmf_layout(path) is not None, "meshio's XDMF must be read in hyperslabs"
    m = root_only(COMM, lambda: read_mesh(path, regions), share=False)
    old = distribute(m, COMM, partitioner="block")
    new = read_distributed(path, COMM, "block", regions=regions)
    _assert_same(old, new)


@pytest.mark.mpi
def test_xdmf_with_unused_nodes_falls_back_to_the_serial_reader(tmp_path_factory):
    """The serial reader drops nodes no cell uses and renumbers; the sliced path must agree."""
    import meshio

    d = _shared_dir(tmp_path_factory)
    path = d / "unused.xdmf"
    if COMM.rank == 0:
        m = box(1, 1, 1, 3, 2, 2)
        pts = np.concatenate([[[9.0, 9.0, 9.0]], m.points])
        meshio.write(str(path), meshio.Mesh(pts, [("hexahedron", m.cells + 1)]))
    COMM.Barrier()
    old = distribute(root_only(COMM, lambda: read_mesh(path), share=False), COMM, partitioner="block")
    new = read_distributed(path, COMM, "block")
    _assert_same(old, new)


@pytest.mark.mpi
@pytest.mark.parametrize("bad", ["missing", "corrupt-xml", "missing-h5", "truncated-h5"])
def test_bad_xdmf_is_one_collective_error(bad, tmp_path_factory):
    d = _shared_dir(tmp_path_factory)
    path = d / f"{bad}.xdmf"
    if COMM.rank == 0 and bad != "missing":
        write_mesh(box(1, 1, 1, 3, 3, 3), path)
        h5 = path.with_suffix(".h5")
        if bad == "corrupt-xml":
            path.write_text(path.read_text()[:120])
        elif bad == "missing-h5":
            h5.unlink()
        else:
            h5.write_bytes(h5.read_bytes()[:300])
    COMM.Barrier()
    with pytest.raises(CollectiveError) as err:
        read_distributed(path, COMM)
    assert str(path) in str(err.value)
    assert COMM.allgather(str(err.value)) == [str(err.value)] * COMM.size


@pytest.mark.mpi
def test_fewer_cells_than_ranks_and_bad_regions_are_collective_errors():
    if COMM.size > 1:
        with pytest.raises(CollectiveError, match="fewer than the"):
            distribute_slices(generate_slice("box", COMM.rank, COMM.size, nx=COMM.size - 1, ny=1, nz=1), COMM)
    with pytest.raises(CollectiveError, match="selects no face and no node"):
        distribute_slices(generate_slice("box", COMM.rank, COMM.size, nx=4, ny=3, nz=3), COMM,
                          regions={"far": {"x": 7.0}})
    with pytest.raises(CollectiveError, match="defined twice"):
        distribute_slices(generate_slice("box", COMM.rank, COMM.size, nx=4, ny=3, nz=3), COMM,
                          regions={"xmin": {"x": 0.0}})
    with pytest.raises(DdromError, match="must be an integer"):
        generate_slice("box", COMM.rank, COMM.size, nx=0)


@pytest.mark.mpi
def test_inverted_cells_and_unused_nodes_are_reported_like_the_serial_checks():
    ms = generate_slice("box", COMM.rank, COMM.size, nx=4, ny=3, nz=3)
    lo, _ = slice_range(ms.n_cells, COMM.size, COMM.rank)
    flip = (lo <= 5) and 5 < lo + len(ms.cells)
    if flip:                                  # natural cell 5 turned inside out
        ms.cells[5 - lo] = ms.cells[5 - lo][[4, 5, 6, 7, 0, 1, 2, 3]]
    with pytest.raises(CollectiveError, match=r"1 inverted cell\(s\).*cell\(s\) \[5\]"):
        distribute_slices(ms, COMM)
    ms = generate_slice("box", COMM.rank, COMM.size, nx=4, ny=3, nz=3)
    pts = np.concatenate([ms.points, [[5.0, 5.0, 5.0]]]) if COMM.rank == COMM.size - 1 else ms.points
    extra = MeshSlice(ms.cell_type, ms.n_cells, ms.n_nodes + 1, ms.cell_start, ms.cells, ms.node_start, pts)
    with pytest.raises(CollectiveError, match="belong to no cell"):
        distribute_slices(extra, COMM)


@pytest.mark.mpi
def test_hf_solve_on_the_sliced_mesh_equals_one_rank():
    """An elastic-plastic solve on the parallel path at P ranks equals the 1-rank rank-0 path."""
    from helpers import gather_natural

    from ddrom.hf.loads import Dirichlet, Loads, Pressure
    from ddrom.hf.solver import HFSolver, SolverOptions
    from ddrom.materials import from_config

    args = dict(n_around=16, n_radial=4, n_thick=2)
    mat = from_config({"law": "chaboche", "E": 200e3, "nu": 0.3, "sigma_y": 200.0, "H": 2000.0, "C": 20e3,
                       "gamma": 100.0, "K": 50.0, "N": 5.0})
    loads = Loads(dirichlet=[Dirichlet("left", (0,)), Dirichlet("pin", (1,)), Dirichlet("back", (2,))],
                  pressure=[Pressure("right", lambda x, y, z, t, **k: -220.0 * t)])
    opts = SolverOptions(rtol=1e-11, atol=1e-14, petsc_options={"ksp_rtol": 1e-13})

    def solve(dm, comm):
        s = HFSolver(dm, mat, loads, opts)
        st = s.initial_state()
        for k, t in enumerate([0.5, 1.0]):
            st, _ = s.step(st, t, k)
        return gather_natural(dm.natural_nodes, st.owned_displacement(dm.n_owned), comm)

    regions = {"pin": "near(x, -1) and near(y, -1)"}
    u_par = solve(distribute_slices(generate_slice("plate_with_hole", COMM.rank, COMM.size, **args), COMM,
                                    regions=regions), COMM)
    m = generate("plate_with_hole", **args)
    add_regions(m, regions)
    u_one = solve(distribute(m, MPI.COMM_SELF), MPI.COMM_SELF)
    assert np.abs(u_par - u_one).max() <= 1e-8 * np.abs(u_one).max()
    if COMM.size >= 3:                        # and on 2 ranks, with the parallel RCB
        sub = COMM.Split(0 if COMM.rank < 2 else 1, COMM.rank)
        u_two = solve(distribute_slices(generate_slice("plate_with_hole", sub.rank, sub.size, **args), sub,
                                        "rcb", regions=regions), sub)
        sub.Free()
        assert np.abs(u_two - u_one).max() <= 1e-8 * np.abs(u_one).max()


@pytest.mark.mpi
@pytest.mark.parametrize("source", ["generator", "xdmf", "vtu"])
def test_build_mesh_of_a_case_equals_the_rank0_path(source, tmp_path_factory):
    """What the workflow builds (build_mesh, the sliced path) is what it built before."""
    import re

    from helpers import tiny_case_text, write_case

    from ddrom.workflow.build import build_mesh, build_mesh_serial, load_case_collectively

    d = _shared_dir(tmp_path_factory)
    mesh = ('generator = "plate_with_hole"\nargs = { n_around = 16, n_radial = 3, n_thick = 2, '
            'cell_type = "tetra" }\n')
    if source != "generator":
        mesh = f'file = "plate.{source}"\n'
        if COMM.rank == 0:
            write_mesh(generate("plate_with_hole", n_around=16, n_radial=3, n_thick=2, cell_type="tetra"),
                       d / f"plate.{source}")
    mesh += ('partitioner = "block"\nregions = { xmin = { x = -1.0 }, xmax = { x = 1.0 }, '
             'ymin = { y = -1.0 }, zmin = { z = -0.1 }, pin = "near(x, 1) and near(y, 1)" }\n')
    text = re.sub(r'generator = "box"\nargs = .*\n', mesh, tiny_case_text())
    path = write_case(d, text, f"case_{source}.toml") if COMM.rank == 0 else d / f"case_{source}.toml"
    COMM.Barrier()
    case = load_case_collectively(str(path), COMM)
    _assert_same(build_mesh_serial(case, COMM), build_mesh(case, COMM))
