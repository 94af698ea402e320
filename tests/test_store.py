"""Parallel snapshot store (ddrom.io.store) and its XDMF sidecar (ddrom.io.xdmf).

Every test is collective (mpi-marked, run at 1 and 3 ranks). The synthetic fields are
functions of natural node coordinates and natural cell ids, so the expected values are
the same for every number of ranks and every partition. The serial mesh and the full
expected arrays exist on rank 0 IN TESTS ONLY, to check the file contents.
"""
import os
import re
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from mpi4py import MPI

import ddrom  # noqa: F401  (environment before h5py/petsc4py)
import h5py
from ddrom.io import SnapshotStore, StoreOptions, read_data_item, von_mises
from ddrom.io.store import SCHEMA_VERSION
from ddrom.mesh import CELL_TYPES, Mesh
from ddrom.mesh.scatter import distribute
from ddrom.mesh.generators import box
from ddrom.parallel import DdromError

pytestmark = pytest.mark.mpi
COMM = MPI.COMM_WORLD
STATE = ["alpha_11", "alpha_22", "r"]
N_STEPS = 3
SIMS = {"train_0": {"T": 300.0, "load": [1.0, 2.0]}, "train_1": {"T": 450.5, "load": [0.5, -1.0]}}


# ------------------------------------------------------------------ meshes, data
def serial_mesh(kind: str) -> Mesh:
    """Small meshes with a node set, a facet set and (hex) distorted interior nodes."""
    if kind == "hex":
        m = box(1.0, 0.6, 1.2, 4, 3, 5)
        X = m.points
        inner = np.all((X > 1e-9) & (X < np.array([1.0, 0.6, 1.2]) - 1e-9), axis=1)
        # distort so that integration-point weights differ within a cell
        X[inner] += 0.04 * np.sin(7.0 * X[inner][:, [1, 2, 0]])
    else:
        m = box(1.0, 1.0, 0.5, 2, 2, 3, cell_type="tetra")
    m.node_sets["probe"] = np.flatnonzero(m.points[:, 0] + m.points[:, 1] < 0.51).astype(np.int64)
    return m


def make_dmesh(kind: str, comm=COMM, partitioner: str = "ptscotch"):
    return distribute(serial_mesh(kind) if comm.rank == 0 else None, comm, partitioner)


def u_field(X: np.ndarray, s: int, k: int) -> np.ndarray:
    x, y, z = X.T
    return np.column_stack([np.sin(2 * x + s) * k, y * z + 0.1 * k * s, np.cos(z - s) * (k + 1)])


def qp_fields(cell_nat: np.ndarray, nq: int, s: int, k: int):
    e = cell_nat[:, None, None].astype(float)
    q = np.arange(nq)[None, :, None]
    stress = 100.0 * np.sin(0.37 * e + 1.1 * q + 0.23 * np.arange(6) + s + 0.5 * k)
    p = 0.01 * (cell_nat[:, None] + np.arange(nq)[None, :]) * k + 1e-3 * s
    state = np.cos(e + 3.0 * q + 7.0 * np.arange(len(STATE)) + s * k)
    return stress, p, state


def times(s: int) -> np.ndarray:
    return np.linspace(0.0, 1.0 + s, N_STEPS + 1)


def write_sims(store, dmesh, sims=SIMS, finish=True):
    for s, (name, params) in enumerate(sims.items()):
        w = store.add_simulation(name, params, N_STEPS)
        for k in range(N_STEPS + 1):
            stress, p, state = qp_fields(dmesh.cell_natural, dmesh.n_qp, s, k)
            w.write_step(k, times(s)[k], u_field(dmesh.coords[: dmesh.n_owned], s, k), stress, p, state)
        if finish:
            w.finish()


def write_store(path, kind="hex", partitioner="ptscotch", comm=COMM, options=None):
    dm = make_dmesh(kind, comm, partitioner)
    st = SnapshotStore.create(path, dm, state_names=STATE, case_hash="ab" * 32,
                              provenance={"case": "unit test"}, comm=comm, options=options)
    write_sims(st, dm)
    st.finalize()
    return dm


# ------------------------------------------------- collective assertions (no hang)
def all_ok(ok: bool, what: str = "check failed") -> None:
    """Fail on EVERY rank when the check fails on any: a rank that failed alone would
    leave the others blocked in the next collective call instead of reporting."""
    bad = [f"rank {r}: {m}" for r, m in enumerate(COMM.allgather(None if ok else what)) if m is not None]
    assert not bad, "; ".join(bad)


def eq_all(a, b, what: str = "arrays") -> None:
    """Collective exact equality of two local arrays."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return all_ok(False, f"{what}: shape {a.shape} != {b.shape}")
    ok = np.array_equal(a, b)
    all_ok(ok, f"{what}: max |diff| {np.abs(a - b).max() if a.size else 0:.3e}")


def idle_barrier() -> None:
    """Barrier that sleeps instead of busy-polling: waiting ranks must not steal the
    (oversubscribed) cores from rank 0 while it checks files alone."""
    req = COMM.Ibarrier()
    while not req.Test():
        time.sleep(0.002)


def on_rank0(check) -> None:
    """Run ``check()`` on rank 0 only (serial file checks); its failure fails every rank."""
    msg = None
    if COMM.rank == 0:
        try:
            check()
        except Exception as exc:  # noqa: BLE001
            msg = f"{type(exc).__name__}: {exc}"
    idle_barrier()
    msg = COMM.bcast(msg, root=0)
    assert msg is None, msg


def raises_all(pattern: str, fn, *args, **kwargs) -> str:
    """``fn`` must raise DdromError matching ``pattern`` on every rank; returns the message."""
    msg = None
    try:
        fn(*args, **kwargs)
    except DdromError as exc:
        msg = str(exc)
    all_ok(msg is not None, f"{getattr(fn, '__name__', fn)} did not raise DdromError")
    all_ok(re.search(pattern, msg) is not None, f"message {msg!r} does not match {pattern!r}")
    all_ok(msg == COMM.bcast(msg, root=0), "not the same message on every rank")
    return msg


@pytest.fixture
def tmpdir_shared():
    """A temporary folder shared by all ranks (created by rank 0, removed at the end)."""
    d = COMM.bcast(tempfile.mkdtemp(prefix="ddrom_store_") if COMM.rank == 0 else None, root=0)
    yield d
    idle_barrier()
    if COMM.rank == 0:
        shutil.rmtree(d, ignore_errors=True)


def qp_weights(mesh: Mesh) -> np.ndarray:
    """w_q det J (M, nq) of the serial mesh (independent of the store's code)."""
    ref = CELL_TYPES[mesh.cell_type]
    J = np.einsum("qka,ekb->eqab", ref.dshape(ref.qp), mesh.points[mesh.cells])
    return np.linalg.det(J) * ref.qw


NO_STATE = r"the internal variables \(state, 3 per integration point\) were not stored: .*store_state = true"
LAYOUTS = {"default": StoreOptions(), "state": StoreOptions(store_state=True, compression="none"),
           "state-lzf": StoreOptions(store_state=True, compression="lzf")}


# ------------------------------------------------------------------------- tests
@pytest.mark.parametrize("kind,layout", [("hex", "default"), ("tet", "default"), ("hex", "state"),
                                         ("tet", "state-lzf")])
def test_roundtrip_contents_and_reads(kind, layout, tmpdir_shared):
    """Every dataset reads back bitwise (compressed or not); ``state`` is absent by default,
    present when asked; the file equals the serial arrays whatever the number of ranks."""
    path = os.path.join(tmpdir_shared, f"snap_{kind}.h5")
    opts = LAYOUTS[layout]
    dm = make_dmesh(kind)
    st = SnapshotStore.create(path, dm, state_names=STATE, case_hash="c0ffee", comm=COMM, options=opts)
    write_sims(st, dm)
    # nothing at the final path before finalize(), on any rank
    all_ok(not os.path.exists(path) and os.path.exists(path + ".partial"), "final path exists early")
    COMM.Barrier()
    st.finalize()
    all_ok(os.path.exists(path) and not os.path.exists(path + ".partial"), "finalize did not rename")
    all_ok(os.path.exists(os.path.join(tmpdir_shared, f"snap_{kind}.xdmf")), "no XDMF sidecar")

    st = SnapshotStore.open(path, COMM, dmesh=dm)
    info = [(i.name, i.params, i.complete, i.n_steps, i.index, i.last_step) for i in st.simulations()]
    all_ok(info == [(n, p, True, N_STEPS, j, N_STEPS) for j, (n, p) in enumerate(SIMS.items())], str(info))
    all_ok(st.case_hash == "c0ffee" and st.state_names == STATE, "root attributes")
    all_ok(st.options == opts and st.schema_version == SCHEMA_VERSION, f"options {st.options}")
    X = dm.coords[: dm.n_owned]
    fields = ("stress", "p", "state") if opts.store_state else ("stress", "p")
    for s, name in enumerate(SIMS):
        eq_all(st.read_times(name), times(s), "times")
        for k in range(N_STEPS + 1):
            eq_all(st.read_displacement(name, k, dm), u_field(X, s, k), f"u {name} {k}")
            ref = qp_fields(dm.cell_natural, dm.n_qp, s, k)
            for field, r in zip(fields, ref):
                eq_all(st.read_qp(name, field, k, dm), r, f"{field} {name} {k}")
    if not opts.store_state:        # one clear error, naming the file, on every rank
        msg = raises_all(NO_STATE, st.read_qp, "train_0", "state", 1, dm)
        all_ok(msg.startswith(f"snapshot store {path}: "), msg)
        raises_all(NO_STATE, st.read_block, "state", dm)
    # snapshot blocks: owned DOFs 3 i + c in rank-major order, columns sim-major
    B = st.read_block("displacement", dm)
    all_ok(B.shape == (3 * dm.n_owned, len(SIMS) * (N_STEPS + 1)), f"block shape {B.shape}")
    all_ok(st.snapshot_labels() == [(n, k) for n in SIMS for k in range(N_STEPS + 1)], "labels")
    ref = np.column_stack([u_field(X, s, k).ravel() for s in range(len(SIMS)) for k in range(N_STEPS + 1)])
    eq_all(B, ref, "displacement block")
    Bs = st.read_block("stress", dm, sims=["train_1"], steps=[3, 1, 2])
    ref = np.column_stack([qp_fields(dm.cell_natural, dm.n_qp, 1, k)[0].ravel() for k in (3, 1, 2)])
    eq_all(Bs, ref, "stress block")
    if opts.store_state:
        Bq = st.read_block("state", dm, steps=[2])
        ref = np.column_stack([qp_fields(dm.cell_natural, dm.n_qp, s, 2)[2].ravel() for s in range(len(SIMS))])
        eq_all(Bq, ref, "state block")
    st.close()

    def file_contents():
        """Natural numbering: the file equals the serial arrays, whatever the rank count."""
        mesh = serial_mesh(kind)
        w = qp_weights(mesh)
        assert np.all(w > 0)
        with h5py.File(path, "r") as f:
            assert f.attrs["schema"] == "ddrom-snapshots" and f.attrs["schema_version"] == SCHEMA_VERSION
            assert bool(f.attrs["state_stored"]) == opts.store_state and f.attrs["compression"] == opts.compression
            assert bool(f.attrs["complete"]) and f.attrs["ddrom_version"] == ddrom.__version__
            assert '"mpi_ranks": %d' % COMM.size in f.attrs["provenance"]
            np.testing.assert_array_equal(f["mesh/points"][...], mesh.points)
            np.testing.assert_array_equal(f["mesh/cells"][...], mesh.cells)
            assert f["mesh"].attrs["cell_type"] == mesh.cell_type
            assert list(f["mesh"].attrs["state_names"]) == STATE
            np.testing.assert_array_equal(f["mesh/node_sets/probe"][...], mesh.node_sets["probe"])
            assert sorted(f["mesh/facet_sets"]) == sorted(mesh.facet_sets)
            for name, fs in mesh.facet_sets.items():
                order = np.lexsort((fs[:, 1], fs[:, 0]))
                np.testing.assert_array_equal(f["mesh/facet_sets"][name][...], fs[order])
            nq = w.shape[1]
            for s, name in enumerate(SIMS):
                g = f["simulations"][name]
                assert g["displacement"].chunks[0] == 1       # chunked by time step
                assert ("state" in g) == opts.store_state
                for ds in g.values():     # compressed as asked, checksummed after the compression
                    comp = {"none": None, "lzf": "lzf"}.get(opts.compression, "gzip")
                    assert ds.compression == comp and ds.shuffle == (comp is not None) and ds.fletcher32, ds.name
                for k in range(N_STEPS + 1):
                    np.testing.assert_array_equal(g["displacement"][k], u_field(mesh.points, s, k))
                    stress, p, state = qp_fields(np.arange(mesh.n_cells), nq, s, k)
                    np.testing.assert_array_equal(g["stress"][k], stress)
                    np.testing.assert_array_equal(g["p"][k], p)
                    if opts.store_state:
                        np.testing.assert_array_equal(g["state"][k], state)
                    np.testing.assert_allclose(g["p_cell"][k], (w * p).sum(1) / w.sum(1), rtol=1e-13)
                    np.testing.assert_allclose(g["von_mises_cell"][k],
                                               (w * von_mises(stress)).sum(1) / w.sum(1), rtol=1e-13)
            if kind == "hex":    # the weights matter: the plain mean differs on distorted cells
                assert np.abs((w * p).sum(1) / w.sum(1) - p.mean(1)).max() > 1e-6

    on_rank0(file_contents)


def test_von_mises_formula():
    # uniaxial sigma: vm = |sigma|; pure shear tau (Mandel sqrt2*tau): vm = sqrt(3) tau
    np.testing.assert_allclose(von_mises(np.array([5.0, 0, 0, 0, 0, 0])), 5.0, rtol=1e-15)
    np.testing.assert_allclose(von_mises(np.array([0, 0, 0, np.sqrt(2) * 2.0, 0, 0])), np.sqrt(3) * 2.0,
                               rtol=1e-15)
    np.testing.assert_allclose(von_mises(np.array([7.0, 7.0, 7.0, 0, 0, 0])), 0.0, atol=1e-14)


@pytest.mark.parametrize("kind", ["hex", "tet"])
def test_xdmf_sidecar(kind, tmpdir_shared):
    path = os.path.join(tmpdir_shared, "s.h5")
    write_store(path, kind)

    def check():
        mesh = serial_mesh(kind)
        root = ET.parse(os.path.join(tmpdir_shared, "s.xdmf")).getroot()
        assert root.tag == "Xdmf" and root.get("Version") == "3.0"
        (domain,) = list(root)
        colls = list(domain)
        assert [c.get("Name") for c in colls] == list(SIMS)
        with h5py.File(path, "r") as f:
            for s, coll in enumerate(colls):
                assert coll.get("GridType") == "Collection" and coll.get("CollectionType") == "Temporal"
                grids = coll.findall("Grid")
                assert len(grids) == N_STEPS + 1
                for k, grid in enumerate(grids):
                    assert float(grid.find("Time").get("Value")) == times(s)[k]
                    topo = grid.find("Topology")
                    assert topo.get("TopologyType") == {"hex": "Hexahedron", "tet": "Tetrahedron"}[kind]
                    assert int(topo.get("NumberOfElements")) == mesh.n_cells
                    np.testing.assert_array_equal(read_data_item(topo[0], tmpdir_shared), mesh.cells)
                    np.testing.assert_array_equal(read_data_item(grid.find("Geometry")[0], tmpdir_shared),
                                                  mesh.points)
                    att = {a.get("Name"): a for a in grid.findall("Attribute")}
                    assert sorted(att) == ["displacement", "p_cell", "von_mises_cell"]
                    assert (att["displacement"].get("Center"), att["displacement"].get("AttributeType")) == \
                        ("Node", "Vector")
                    assert att["p_cell"].get("Center") == "Cell"
                    item = att["displacement"][0]
                    assert item.get("ItemType") == "HyperSlab"
                    u = read_data_item(item, tmpdir_shared).reshape(-1, 3)
                    np.testing.assert_array_equal(u, u_field(mesh.points, s, k))
                    g = f["simulations"][list(SIMS)[s]]
                    for name in ("p_cell", "von_mises_cell"):
                        v = read_data_item(att[name][0], tmpdir_shared).ravel()
                        np.testing.assert_array_equal(v, g[name][k])

    on_rank0(check)


def test_written_on_all_ranks_read_on_fewer_and_other_partitions(tmpdir_shared):
    """Write on every rank; read on 1..size ranks (sub-communicators) and other partitioners."""
    path = os.path.join(tmpdir_shared, "w.h5")
    write_store(path, "hex", partitioner="block")
    path2 = os.path.join(tmpdir_shared, "w2.h5")
    write_store(path2, "hex", partitioner="rcb")
    for n in range(1, COMM.size + 1):
        sub = COMM.Split(0 if COMM.rank < n else MPI.UNDEFINED, COMM.rank)
        errors = []
        if sub != MPI.COMM_NULL:
            for part in ("ptscotch", "rcb"):
                dm = make_dmesh("hex", sub, part)
                with SnapshotStore.open(path, sub, dmesh=dm) as st:
                    X = dm.coords[: dm.n_owned]
                    B = st.read_block("displacement", dm, sims=["train_1"])
                    ref = np.column_stack([u_field(X, 1, k).ravel() for k in range(N_STEPS + 1)])
                    if not np.array_equal(B, ref):
                        errors.append(f"displacement read on {n} ranks ({part})")
                    P = st.read_block("p", dm, steps=[N_STEPS])
                    ref = np.column_stack([qp_fields(dm.cell_natural, dm.n_qp, s, N_STEPS)[1].ravel()
                                           for s in range(len(SIMS))])
                    if not np.array_equal(P, ref):
                        errors.append(f"p read on {n} ranks ({part})")
            sub.Free()
        all_ok(not errors, "; ".join(errors))

    def identical():
        # the files written with two partitions are identical, bit for bit, dataset by dataset
        with h5py.File(path, "r") as a, h5py.File(path2, "r") as b:
            names = []
            a.visit(names.append)
            dsets = [n for n in names if isinstance(a[n], h5py.Dataset)]
            assert len(dsets) > 20
            for n in dsets:
                np.testing.assert_array_equal(a[n][...], b[n][...], err_msg=n)

    on_rank0(identical)


def test_resume_incomplete_simulation(tmpdir_shared):
    path = os.path.join(tmpdir_shared, "r.h5")
    dm = make_dmesh("hex")
    st = SnapshotStore.create(path, dm, state_names=STATE, comm=COMM)
    write_sims(st, dm, {"train_0": SIMS["train_0"]})
    w = st.add_simulation("train_1", SIMS["train_1"], N_STEPS)
    stress, p, state = qp_fields(dm.cell_natural, dm.n_qp, 1, 0)
    w.write_step(0, 0.0, np.full((dm.n_owned, 3), 99.0), stress, p, state)   # wrong data, then "crash"
    raises_all(r"steps \[1, 2, 3\] were not written", w.finish)
    st.close()
    all_ok(not os.path.exists(path), "final path exists without finalize()")
    raises_all("interrupted run", SnapshotStore.open, path, COMM)

    st = SnapshotStore.open(path, COMM, mode="a")
    raises_all("check_mesh", st.add_simulation, "train_1", SIMS["train_1"], N_STEPS)
    info = {i.name: i for i in st.simulations()}
    all_ok(info["train_0"].complete and not info["train_1"].complete, str(info))
    all_ok(info["train_1"].last_step == 0 and info["train_1"].index == 1, str(info))
    raises_all("step 2 was not written", st.read_displacement, "train_1", 2, dm)
    eq_all(st.read_displacement("train_1", 0, dm), np.full((dm.n_owned, 3), 99.0), "partial step")
    st.check_mesh(dm)
    raises_all("already complete", st.add_simulation, "train_0", SIMS["train_0"], N_STEPS)
    raises_all("overwrite_incomplete=False", st.add_simulation, "train_1", SIMS["train_1"], N_STEPS,
               overwrite_incomplete=False)
    write_sims(st, dm, {"train_1": SIMS["train_1"]})
    st.finalize()

    st = SnapshotStore.open(path, COMM, dmesh=dm)
    info = [(i.name, i.complete, i.index) for i in st.simulations()]
    all_ok(info == [("train_0", True, 0), ("train_1", True, 1)], str(info))
    X = dm.coords[: dm.n_owned]
    eq_all(st.read_displacement("train_1", 0, dm), u_field(X, 0, 0), "overwritten step")
    st.close()

    # reopening a finalized store for appending extends a copy (.partial); the finalized file
    # stays at its path, untouched, until the copy is finalized over it ...
    def digest(p):
        import hashlib

        return COMM.bcast(hashlib.sha256(open(p, "rb").read()).hexdigest() if COMM.rank == 0 else None, root=0)

    final = digest(path)
    st = SnapshotStore.open(path, COMM, mode="a", dmesh=dm)
    all_ok(os.path.exists(path) and os.path.exists(path + ".partial"), "extended in place")
    write_sims(st, dm, {"test_0": {"T": 1.0}})
    all_ok(digest(path) == final, "the finalized file changed while being extended")
    # ... so an extension that fails (or is killed) loses nothing: abort() removes the copy
    st.abort()
    idle_barrier()
    all_ok(digest(path) == final and not os.path.exists(path + ".partial"), "abort of an extension")
    st = SnapshotStore.open(path, COMM, mode="a", dmesh=dm)
    write_sims(st, dm, {"test_0": {"T": 1.0}})
    st.finalize()
    with SnapshotStore.open(path, COMM) as st:
        all_ok([i.name for i in st.simulations()] == ["train_0", "train_1", "test_0"], "names")
        all_ok(st.read_block("p", dm).shape[1] == 3 * (N_STEPS + 1), "columns")


def _set_attr(name, value, group="/"):
    def edit(p):
        with h5py.File(p, "r+") as f:
            f[group].attrs[name] = value
    return edit


def _del_attr(name, group="/"):
    def edit(p):
        with h5py.File(p, "r+") as f:
            del f[group].attrs[name]
    return edit


def _truncate(p):
    os.truncate(p, os.path.getsize(p) // 2)


def _garbage(p):
    with open(p, "wb") as f:
        f.write(np.random.default_rng(0).bytes(4096))


def _other_hdf5(p):
    os.remove(p)
    with h5py.File(p, "w") as f:
        f["x"] = np.arange(3)


def _drop_dataset(p):
    with h5py.File(p, "r+") as f:
        del f["simulations/train_1/stress"]


BAD = {
    "schema_version": (_set_attr("schema_version", SCHEMA_VERSION + 1),
                       f"schema version {SCHEMA_VERSION + 1}, this ddrom .* reads versions 1, 2"),
    "no_layout": (_del_attr("state_stored"), "attribute 'state_stored' missing"),
    "incomplete": (_set_attr("complete", False), "incomplete"),
    "truncated": (_truncate, "truncated or corrupt"),
    "garbage": (_garbage, "not an HDF5 file"),
    "other_hdf5": (_other_hdf5, "not a ddrom snapshot store"),
    "malformed": (_drop_dataset, "has no dataset 'stress'"),
    "missing": (os.remove, "file not found"),
}


@pytest.fixture(scope="module")
def good_store():
    """One valid store for all bad-file cases (each case edits its own copy)."""
    d = COMM.bcast(tempfile.mkdtemp(prefix="ddrom_good_") if COMM.rank == 0 else None, root=0)
    path = os.path.join(d, "good.h5")
    write_store(path, "tet")
    yield path
    idle_barrier()
    if COMM.rank == 0:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_raise_on_every_rank(case, good_store, tmpdir_shared):
    good = good_store
    bad = os.path.join(tmpdir_shared, f"bad_{case}.h5")
    edit, pattern = BAD[case]
    on_rank0(lambda: (shutil.copy(good, bad), edit(bad)))
    msg = raises_all(pattern, SnapshotStore.open, bad, COMM)
    all_ok(msg.startswith(f"snapshot store {bad}: "), msg)
    if case == "incomplete":        # resumable though
        SnapshotStore.open(bad, COMM, mode="a").close()


def test_mismatched_mesh(tmpdir_shared):
    path = os.path.join(tmpdir_shared, "m.h5")
    write_store(path, "hex")
    with SnapshotStore.open(path, COMM) as st:
        other = distribute(box(1.0, 0.6, 1.2, 4, 3, 5) if COMM.rank == 0 else None, COMM)  # not distorted
        raises_all("m.h5: mesh mismatch: node coordinates differ by up to", st.check_mesh, other)
        small = distribute(box(nx=2, ny=2, nz=2) if COMM.rank == 0 else None, COMM)
        raises_all("mesh mismatch: the store has 120 nodes and 60 cells", st.read_block, "displacement", small)
        raises_all("mesh mismatch: the store has hexahedron cells", st.check_mesh, make_dmesh("tet"))
        st.check_mesh(make_dmesh("hex", partitioner="rcb"))     # same mesh, another partition: fine


def test_non_finite_and_bad_shapes_rejected_everywhere(tmpdir_shared):
    path = os.path.join(tmpdir_shared, "n.h5")
    dm = make_dmesh("hex")
    st = SnapshotStore.create(path, dm, state_names=STATE, comm=COMM)
    w = st.add_simulation("s", {}, 1)
    stress, p, state = qp_fields(dm.cell_natural, dm.n_qp, 0, 1)
    u = u_field(dm.coords[: dm.n_owned], 0, 1)
    bad = stress.copy()
    if COMM.rank == COMM.size - 1:      # only the last rank has the bad value
        bad[0, 0, 2] = np.nan
    raises_all("n.h5.partial, simulation 's', step 1: stress has 1 non-finite values", w.write_step,
               1, 0.5, u, bad, p, state)
    raises_all(r"displacement has shape \(\d+, 2\)", w.write_step, 1, 0.5, u[:, :2], stress, p, state)
    raises_all("step must be an integer in 0..1", w.write_step, 2, 0.5, u, stress, p, state)
    all_ok(st.simulations()[0].last_step == -1, "something was written")
    raises_all("simulation name", st.add_simulation, "a/b", {}, 1)
    raises_all("JSON-serializable", st.add_simulation, "c", {"x": object()}, 1)
    st.close()
    all_ok(not os.path.exists(path), "final path exists")
    st = SnapshotStore.open(path, COMM, mode="a")
    st.finalize()
    with SnapshotStore.open(path, COMM) as st:
        raises_all("read-only", st.add_simulation, "d", {}, 1)
        raises_all("no simulation 'zz'", st.read_times, "zz")
        raises_all("incomplete and step 0 was not written", st.read_block, "p", dm, sims=["s"])


def test_store_without_internal_variables(tmpdir_shared):
    path = os.path.join(tmpdir_shared, "e.h5")
    dm = make_dmesh("tet")
    st = SnapshotStore.create(path, dm, state_names=[], comm=COMM)
    w = st.add_simulation("elastic", {"E": 2.0e5}, 1)
    for k in range(2):
        stress, p, _ = qp_fields(dm.cell_natural, dm.n_qp, 0, k)
        w.write_step(k, float(k), u_field(dm.coords[: dm.n_owned], 0, k), stress, p, None)
    w.finish()
    st.finalize()
    with SnapshotStore.open(path, COMM, dmesh=dm) as st:
        all_ok(st.read_qp("elastic", "state", 1, dm).shape == (dm.n_cells, dm.n_qp, 0), "state shape")
        all_ok(st.read_block("state", dm).shape == (0, 2), "state block shape")
        ref = np.column_stack([qp_fields(dm.cell_natural, dm.n_qp, 0, k)[1].ravel() for k in range(2)])
        eq_all(st.read_block("p", dm), ref, "p block")


def _as_version_1(p):
    """Turn a store written with ``state`` and without compression into the version-1 layout
    (the one before StoreOptions): no layout attributes, schema_version 1."""
    with h5py.File(p, "r+") as f:
        assert bool(f.attrs["state_stored"]) and f.attrs["compression"] == "none"
        del f.attrs["state_stored"]
        del f.attrs["compression"]
        f.attrs["schema_version"] = 1


def test_version_1_store_still_read_and_extended(tmpdir_shared):
    """A store of the previous schema (state in every simulation, nothing compressed) reads as
    before, and an extension keeps its layout."""
    path = os.path.join(tmpdir_shared, "v1.h5")
    dm = write_store(path, "hex", options=StoreOptions(store_state=True, compression="none"))
    on_rank0(lambda: _as_version_1(path))
    X = dm.coords[: dm.n_owned]
    with SnapshotStore.open(path, COMM, dmesh=dm) as st:
        all_ok(st.schema_version == 1 and st.state_stored and st.compression == "none", f"{st.options}")
        for s, name in enumerate(SIMS):
            for k in range(N_STEPS + 1):
                eq_all(st.read_displacement(name, k, dm), u_field(X, s, k), f"u {name} {k}")
                for field, r in zip(("stress", "p", "state"), qp_fields(dm.cell_natural, dm.n_qp, s, k)):
                    eq_all(st.read_qp(name, field, k, dm), r, f"{field} {name} {k}")
    st = SnapshotStore.open(path, COMM, mode="a", dmesh=dm)
    write_sims(st, dm, {"test_0": {"T": 1.0}})
    st.finalize()
    with SnapshotStore.open(path, COMM, dmesh=dm) as st:
        all_ok(st.schema_version == 1, "the version changed")
        ref = np.column_stack([qp_fields(dm.cell_natural, dm.n_qp, 0, k)[2].ravel() for k in range(N_STEPS + 1)])
        eq_all(st.read_block("state", dm, sims=["test_0"]), ref, "state of the added simulation")

    def layout():
        with h5py.File(path, "r") as f:
            assert f.attrs["schema_version"] == 1 and "state_stored" not in f.attrs
            g = f["simulations/test_0"]
            assert "state" in g and g["stress"].compression is None
    on_rank0(layout)


def test_compression_lossless_and_independent_of_the_rank_count(tmpdir_shared):
    """Every compression reads back the same bits as no compression, and a compressed store
    written on all ranks holds the same values as one written on rank 0 alone."""
    paths = {c: os.path.join(tmpdir_shared, f"c_{c}.h5") for c in ("none", "gzip-1", "gzip-4", "lzf")}
    for comp, path in paths.items():
        write_store(path, "hex", options=StoreOptions(store_state=True, compression=comp))
    serial = os.path.join(tmpdir_shared, "c_serial.h5")
    sub = COMM.Split(0 if COMM.rank == 0 else MPI.UNDEFINED, COMM.rank)
    if sub != MPI.COMM_NULL:
        write_store(serial, "hex", comm=sub, options=StoreOptions(store_state=True))
        sub.Free()
    from ddrom.io.integrity import verify_file

    for path in list(paths.values()) + [serial]:
        rep = verify_file(path, COMM)
        all_ok(rep.ok and not rep.unprotected, rep.summary())

    def same():
        sizes = {}
        with h5py.File(paths["none"], "r") as ref:
            names = []
            ref.visit(names.append)
            dsets = [n for n in names if isinstance(ref[n], h5py.Dataset)]
            for path in list(paths.values()) + [serial]:
                with h5py.File(path, "r") as f:
                    for n in dsets:
                        a, b = ref[n][...], f[n][...]
                        assert a.dtype == b.dtype and a.shape == b.shape, n
                        assert a.tobytes() == b.tobytes(), (path, n)
                    sizes[path] = sum(f[n].id.get_storage_size() for n in dsets if n.startswith("simulations"))
        assert all(sizes[p] < sizes[paths["none"]] for p in sizes if p != paths["none"]), sizes

    on_rank0(same)
