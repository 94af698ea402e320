"""``ddrom import`` of an HF run re-written in other solvers' layouts: permuted node and cell
numbering (VTU + PVD), parallel VTU with 2 and 5 pieces (any piece count on any rank
count), several simulations from a CSV/TOML table or a file-name pattern, stresses written
by the "other solver" compared with the replay, and bad inputs that leave the store as it
was. The imported displacement must equal the HF one exactly and the replayed fields
must equal the HF ones to round-off, at 1 and 3 ranks (the files are written by rank 0
from a seeded permutation: the same data for every rank count)."""
from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest
from mpi4py import MPI

import ddrom  # noqa: F401
from ddrom.parallel import DdromError

from helpers import gather_natural
from helpers import all_ok as _all_ok
from helpers import import_box_mesh as _box_mesh
from helpers import IMPORT_CASE as _IMPORT_CASE
from helpers import write_import_case as _write_case

pytestmark = pytest.mark.slow

COMM = MPI.COMM_WORLD
SQ2 = np.sqrt(2.0)
P0, P1 = {"u_max": 0.004, "T_max": 100.0}, {"u_max": 0.008, "T_max": 500.0}


def _bcast_dir(prefix: str) -> str:
    return COMM.bcast(tempfile.mkdtemp(prefix=prefix) if COMM.rank == 0 else None, root=0)


@pytest.fixture(scope="module")
def ref():
    """HF run of test_import's Chaboche case; natural-order fields for writing files."""
    from ddrom.workflow.build import build_mesh, load_case_collectively
    from ddrom.workflow.hf import hf_sweep, store_path
    from ddrom.io.store import SnapshotStore

    d = _bcast_dir("ddrom_fmt_ref_")
    case = load_case_collectively(_write_case(d, "ref"), COMM)
    dm = build_mesh(case, COMM)
    hf_sweep(case, COMM, dm=dm)
    st = SnapshotStore.open(store_path(case, "training"), COMM, mode="r", dmesh=dm)
    times = st.read_times("train_000")
    w = dm.weights
    u, sig = {}, {}
    for s in ("train_000", "train_001"):
        u[s], sig[s] = [], []
        for k in range(len(times)):
            u[s].append(gather_natural(dm.natural_nodes, st.read_displacement(s, k, dm), COMM))
            sq = st.read_qp(s, "stress", k, dm)
            cell = np.einsum("eq,eqi->ei", w, sq) / w.sum(axis=1)[:, None]
            sig[s].append(gather_natural(dm.natural_cells, cell, COMM) / np.array([1, 1, 1, SQ2, SQ2, SQ2]))
    yield {"dir": d, "case": case, "dm": dm, "store": st, "times": times, "u": u, "sig": sig,
           "mesh": _box_mesh()}
    st.close()
    COMM.Barrier()
    if COMM.rank == 0:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def work():
    d = _bcast_dir("ddrom_fmt_")
    yield d
    COMM.Barrier()
    if COMM.rank == 0:
        shutil.rmtree(d, ignore_errors=True)


def _write_vtu_series(ref, folder: str, sim: str, perm: bool, with_stress: str | None = None,
                      skip_t0: bool = False) -> str:
    """VTU per step + PVD (rank 0); nodes and cells permuted (seeded) if ``perm``."""
    import meshio

    m = ref["mesh"]
    n, ne = len(m.points), len(m.cells)
    rng = np.random.default_rng(7)
    pn = rng.permutation(n) if perm else np.arange(n)      # file row j holds natural node pn[j]
    pc = rng.permutation(ne) if perm else np.arange(ne)
    inv = np.empty(n, dtype=np.int64)
    inv[pn] = np.arange(n)
    cells = inv[m.cells[pc]]
    os.makedirs(folder, exist_ok=True)
    entries = []
    for k, t in enumerate(ref["times"]):
        if skip_t0 and k == 0:
            continue
        f = f"{sim}_{k}.vtu"
        pd = {"displacement": ref["u"][sim][k][pn]}
        cd = {}
        if with_stress == "cell":
            cd = {"sigma": [ref["sig"][sim][k][pc]]}
        elif with_stress == "point":
            # a nodal stress: each node gets the mean of its cells' averages (what solvers export)
            acc = np.zeros((n, 6))
            cnt = np.zeros(n)
            np.add.at(acc, m.cells.ravel(), np.repeat(ref["sig"][sim][k], m.cells.shape[1], axis=0))
            np.add.at(cnt, m.cells.ravel(), 1)
            pd["sigma"] = (acc / cnt[:, None])[pn]
        meshio.write(os.path.join(folder, f), meshio.Mesh(m.points[pn], [("hexahedron", cells)],
                                                          point_data=pd, cell_data=cd))
        entries.append(f'<DataSet timestep="{t!r}" part="0" file="{f}"/>')
    return _write_pvd(folder, sim, entries)


def _write_pvd(folder: str, sim: str, entries: list[str]) -> str:
    """The PVD collection ``<sim>.pvd`` listing the ``<DataSet .../>`` entries; its path."""
    pvd = os.path.join(folder, f"{sim}.pvd")
    with open(pvd, "w") as fh:
        fh.write('<?xml version="1.0"?>\n<VTKFile type="Collection" version="0.1">\n<Collection>\n'
                 + "\n".join(entries) + "\n</Collection>\n</VTKFile>\n")
    return pvd


def _write_pvtu_series(ref, folder: str, sim: str, n_pieces: int) -> str:
    """Parallel VTU per step (``n_pieces`` pieces, each with its own shuffled node order and the
    interface nodes repeated) + PVD (rank 0)."""
    import meshio

    m = ref["mesh"]
    ne = len(m.cells)
    owner = np.arange(ne) * n_pieces // ne
    rng = np.random.default_rng(11)
    pieces = []
    for p in range(n_pieces):
        cs = np.flatnonzero(owner == p)
        nodes = rng.permutation(np.unique(m.cells[cs]))
        loc = {int(g): i for i, g in enumerate(nodes)}
        pieces.append((cs, nodes, np.vectorize(loc.get)(m.cells[cs])))
    os.makedirs(folder, exist_ok=True)
    entries = []
    for k, t in enumerate(ref["times"]):
        names = []
        for p, (cs, nodes, cells) in enumerate(pieces):
            f = f"{sim}_{k}_p{p}.vtu"
            meshio.write(os.path.join(folder, f), meshio.Mesh(
                m.points[nodes], [("hexahedron", cells)], point_data={"displacement": ref["u"][sim][k][nodes]},
                cell_data={"sigma": [ref["sig"][sim][k][cs]]}))
            names.append(f)
        pv = f"{sim}_{k}.pvtu"
        with open(os.path.join(folder, pv), "w") as fh:
            fh.write('<?xml version="1.0"?>\n<VTKFile type="PUnstructuredGrid" version="0.1" '
                     'byte_order="LittleEndian">\n<PUnstructuredGrid GhostLevel="0">\n'
                     '<PPointData><PDataArray type="Float64" Name="displacement" NumberOfComponents="3"/>'
                     '</PPointData>\n<PCellData><PDataArray type="Float64" Name="sigma" '
                     'NumberOfComponents="6"/></PCellData>\n'
                     '<PPoints><PDataArray type="Float64" NumberOfComponents="3"/></PPoints>\n'
                     + "".join(f'<Piece Source="{n}"/>\n' for n in names)
                     + "</PUnstructuredGrid>\n</VTKFile>\n")
        entries.append(f'<DataSet timestep="{t!r}" part="0" file="{pv}"/>')
    return _write_pvd(folder, sim, entries)


def _check_store_equals_ref(ref, case_path: str, sims: list[str]) -> None:
    """Imported displacement == HF exactly; replayed stress, p, state == HF to 1e-10."""
    from ddrom.workflow.build import load_case_collectively
    from ddrom.workflow.hf import store_path
    from ddrom.io.store import SnapshotStore

    dm, st = ref["dm"], ref["store"]
    case = load_case_collectively(case_path, COMM)
    imp = SnapshotStore.open(store_path(case, "training"), COMM, mode="r", dmesh=dm)
    assert sorted(s.name for s in imp.simulations()) == sorted(sims)
    for s in sims:
        for k in range(len(ref["times"])):
            _all_ok(np.array_equal(imp.read_displacement(s, k, dm), st.read_displacement(s, k, dm)),
                    f"{s} step {k}: displacement differs")
            for f in ("stress", "p", "state"):
                a, b = imp.read_qp(s, f, k, dm), st.read_qp(s, f, k, dm)
                e = COMM.allreduce(float(np.abs(a - b).max()) if b.size else 0.0, op=MPI.MAX)
                sc = COMM.allreduce(float(np.abs(b).max()) if b.size else 0.0, op=MPI.MAX)
                assert e <= 1e-10 * max(sc, 1e-30) or sc == 0.0, (s, k, f, e, sc)
    imp.close()


def _no_store(case_path: str) -> bool:
    from ddrom.workflow.build import load_case_collectively
    from ddrom.workflow.hf import store_path

    p = str(store_path(load_case_collectively(case_path, COMM), "training"))
    return not COMM.bcast(os.path.exists(p) or os.path.exists(p + ".partial") if COMM.rank == 0 else None)


# ============================================================================ tests
@pytest.mark.mpi
def test_permuted_vtu_series_matched_by_coordinates_with_cell_stress(ref, work):
    from ddrom.workflow.importing import import_series

    ext = os.path.join(work, "ext")
    pvd = COMM.bcast(_write_vtu_series(ref, ext, "train_000", perm=True, with_stress="cell")
                     if COMM.rank == 0 else None)
    case = _write_case(work, "imp")
    with pytest.raises(DdromError) as e:
        import_series(case, COMM, pvd, P0, node_order="keep")
    assert "coordinates differ" in str(e.value) and "--node-order" in str(e.value), str(e.value)
    assert _no_store(case)
    r = import_series(case, COMM, pvd, P0, stress_field="sigma", finalize=True)
    assert r["node_match"] == "coordinates" and r["max_coordinate_distance"] == 0.0
    cmp = r["stress_comparison"]
    assert cmp["center"] == "cell" and cmp["max_relative"] < 1e-12 and cmp["rms_relative"] < 1e-12, cmp
    _check_store_equals_ref(ref, case, ["train_000"])


@pytest.mark.mpi
def test_point_stress_is_compared_as_cell_mean_of_nodes(ref, work):
    from ddrom.workflow.importing import import_series

    pvd = COMM.bcast(_write_vtu_series(ref, os.path.join(work, "ext"), "train_001", perm=False,
                                       with_stress="point") if COMM.rank == 0 else None)
    r = import_series(_write_case(work, "imp"), COMM, pvd, P1, stress_field="sigma")
    cmp = r["stress_comparison"]
    assert r["node_match"] == "identity" and cmp["center"] == "point"
    # nodal averaging smooths the stress: a real, bounded difference (not round-off)
    assert 1e-4 < cmp["rms_relative"] < 0.5 and cmp["rms_relative"] <= cmp["max_relative"] < 1.0, cmp


@pytest.mark.mpi
@pytest.mark.parametrize("n_pieces", [2, 5])
def test_parallel_vtu_pieces(ref, work, n_pieces):
    from ddrom.workflow.importing import import_series

    pvd = COMM.bcast(_write_pvtu_series(ref, os.path.join(work, "ext"), "train_001", n_pieces)
                     if COMM.rank == 0 else None)
    case = _write_case(work, "imp")
    r = import_series(case, COMM, pvd, P1, stress_field="sigma", finalize=True)
    assert r["node_match"] == "coordinates" and r["steps"] == len(ref["times"]) - 1
    assert r["stress_comparison"]["max_relative"] < 1e-12, r["stress_comparison"]
    _check_store_equals_ref(ref, case, ["train_001"])


@pytest.mark.mpi
@pytest.mark.parametrize("fmt", ["csv", "toml"])
def test_several_simulations_from_a_table_all_or_nothing(ref, work, fmt):
    from ddrom.cli.main import main

    ext = os.path.join(work, "ext")
    table = os.path.join(work, f"runs.{fmt}")
    bad_table = os.path.join(work, f"bad.{fmt}")
    if COMM.rank == 0:
        _write_vtu_series(ref, ext, "train_000", perm=True)
        _write_vtu_series(ref, ext, "train_001", perm=False, skip_t0=True)
        # a series whose last step is not a VTU file: found only while writing -> rolled back
        broken = _write_vtu_series(ref, os.path.join(work, "broken"), "train_001", perm=False)
        with open(os.path.join(work, "broken", f"train_001_{len(ref['times']) - 1}.vtu"), "w") as fh:
            fh.write("not a vtu file\n")
        rows = [("ext/train_000.pvd", P0), ("ext/train_001.pvd", P1)]
        bad = [("ext/train_000.pvd", P0), (os.path.relpath(broken, work), P1)]
        for path, rr in ((table, rows), (bad_table, bad)):
            with open(path, "w") as fh:
                if fmt == "csv":
                    fh.write("series,u_max,T_max\n" + "".join(f"{s},{p['u_max']},{p['T_max']}\n" for s, p in rr))
                else:
                    fh.write("".join(f'[[simulation]]\nseries = "{s}"\nu_max = {p["u_max"]}\n'
                                     f'T_max = {p["T_max"]}\n' for s, p in rr))
    COMM.Barrier()
    case = _write_case(work, "imp")
    assert main(["import", case, "--table", bad_table, "--quiet"]) == 2
    assert _no_store(case), "a failed import must not leave a store"
    # one simulation first, then a failing table: the store keeps exactly what it had
    assert main(["import", case, "--series", os.path.join(ext, "train_000.pvd"), "--param", "u_max=0.004",
                 "--param", "T_max=100", "--quiet"]) == 0
    bad_one = os.path.join(work, f"bad1.{fmt}")
    if COMM.rank == 0:
        with open(bad_one, "w") as fh:
            s = os.path.join("broken", "train_001.pvd")
            fh.write(f"series,u_max,T_max\n{s},0.008,500\n" if fmt == "csv" else
                     f'[[simulation]]\nseries = "{s}"\nu_max = 0.008\nT_max = 500.0\n')
    COMM.Barrier()
    assert main(["import", case, "--table", bad_one, "--quiet"]) == 2
    _check_store_equals_ref_partial(case, ["train_000"])
    # the whole table into a fresh case
    case2 = _write_case(work, "imp2")
    assert main(["import", case2, "--table", table, "--quiet"]) == 0
    _check_store_equals_ref(ref, case2, ["train_000", "train_001"])


def _check_store_equals_ref_partial(case_path: str, sims: list[str]) -> None:
    """The .partial store holds exactly ``sims``, all complete."""
    import h5py

    from ddrom.workflow.build import load_case_collectively
    from ddrom.workflow.hf import store_path

    p = str(store_path(load_case_collectively(case_path, COMM), "training")) + ".partial"
    got = None
    if COMM.rank == 0:
        with h5py.File(p, "r") as f:
            got = {k: bool(g.attrs["complete"]) for k, g in f["simulations"].items()}
    got = COMM.bcast(got, root=0)
    assert got == {s: True for s in sims}, got


@pytest.mark.mpi
def test_pattern_with_globbed_vtu_series(ref, work):
    from ddrom.cli.main import main

    if COMM.rank == 0:
        for sim, p in (("train_000", P0), ("train_001", P1)):
            folder = os.path.join(work, "runs", f"u{p['u_max']:g}_T{p['T_max']:g}")
            _write_vtu_series(ref, folder, sim, perm=True)
            os.remove(os.path.join(folder, f"{sim}.pvd"))       # a bare VTU glob: the case's times
    COMM.Barrier()
    case = _write_case(work, "imp")
    pattern = os.path.join(work, "runs", "u{u_max}_T{T_max}", "*.vtu")
    assert main(["import", case, "--pattern", pattern, "--quiet"]) == 0
    _check_store_equals_ref(ref, case, ["train_000", "train_001"])
    assert main(["import", case, "--pattern", os.path.join(work, "nothing_{u_max}.xdmf"), "--quiet"]) == 2


@pytest.mark.mpi
def test_pattern_imports_only_the_points_of_the_list(ref, work):
    """``--pattern`` with a glob of ``.pvd`` files (one per folder): only the files of the case's
    training points are imported, a folder of another point is skipped and named; ``--which
    test`` imports the test point into ``hf_test.h5`` (named as ``ddrom hf`` would). The
    summary reports each simulation's equilibrium residual (ddrom's own double-precision data:
    round-off) and its noise floor (none to speak of)."""
    import json

    from ddrom.cli.main import main
    from ddrom.workflow.build import load_case_collectively
    from ddrom.workflow.hf import store_path

    case = os.path.join(work, "imp.toml")
    if COMM.rank == 0:
        for sim, p in (("train_000", P0), ("train_001", P1), ("train_000", {"u_max": 0.006, "T_max": 300.0})):
            _write_vtu_series(ref, os.path.join(work, "runs", f"u{p['u_max']:g}_T{p['T_max']:g}"), sim, perm=True)
        with open(case, "w") as f:
            f.write(_IMPORT_CASE.format(name="imp") + "\n[test]\nvalues = [{ u_max = 0.008, T_max = 500.0 }]\n")
    COMM.Barrier()
    pattern = os.path.join(work, "runs", "u{u_max}_T{T_max}", "*.pvd")
    out = os.path.join(work, "imp.json")
    assert main(["import", case, "--pattern", pattern, "--quiet", "--json", out]) == 0
    summary = COMM.bcast(json.loads(open(out).read()) if COMM.rank == 0 else None, root=0)
    assert summary["skipped"] == [os.path.join(work, "runs", "u0.006_T300", "*.pvd")], summary["skipped"]
    assert summary["finalized"] and summary["missing_training_points"] == []
    for sim in summary["simulations"]:
        assert sim["equilibrium"]["max_relative"] < 1e-6 and sim["noise_floor"]["digits"] is None, sim
        assert sim["noise_floor"]["stress"] < 1e-10 and sim["noise_floor"]["displacement"] < 1e-12, sim
    _check_store_equals_ref(ref, case, ["train_000", "train_001"])
    assert main(["import", case, "--pattern", pattern, "--which", "test", "--quiet", "--json", out]) == 0
    summary = COMM.bcast(json.loads(open(out).read()) if COMM.rank == 0 else None, root=0)
    assert [s["simulation"] for s in summary["simulations"]] == ["test_000"] and len(summary["skipped"]) == 2
    assert summary["which"] == "test" and summary["finalized"] and summary["store"].endswith("hf_test.h5")
    c = load_case_collectively(case, COMM)
    assert COMM.bcast(store_path(c, "test").is_file() if COMM.rank == 0 else None, root=0)
    # a pattern none of whose files is a point of the list
    assert main(["import", case, "--pattern", os.path.join(work, "runs", "u{u_max}_T300", "*.pvd"),
                 "--param", "T_max=300", "--quiet"]) == 2


@pytest.mark.mpi
def test_boundary_values_other_than_the_cases_are_caught(ref, work):
    """Data computed with another prescribed displacement (u_max = 0.004 imported as 0.005):
    the deviation at the case's Dirichlet DOFs stops the import, naming the boundary conditions."""
    from ddrom.parallel import CollectiveError
    from ddrom.workflow.importing import import_series

    pvd = COMM.bcast(_write_vtu_series(ref, os.path.join(work, "ext"), "train_000", perm=False)
                     if COMM.rank == 0 else None)
    case = _write_case(work, "imp")
    with pytest.raises(CollectiveError, match=r"-> import_000: step 1 \(t = 0\.5\) is not a solution of the case's "
                                              r"problem: the displacement at the case's Dirichlet DOFs differs from "
                                              r"the prescribed values by 2\.50e-01 of the largest displacement"):
        import_series(case, COMM, pvd, {"u_max": 0.005, "T_max": 100.0})
    assert _no_store(case)


def test_pattern_parsing(tmp_path):
    from ddrom.workflow.importing import _pattern_jobs

    for name in ("run_E200e3_F-1.5.xdmf", "run_E1e5_F.5.xdmf", "run_Eabc_F1.xdmf", "other.xdmf"):
        (tmp_path / name).write_text("")
    jobs = _pattern_jobs(str(tmp_path / "run_E{E}_F{F}.xdmf"))
    got = sorted((os.path.basename(j.series), j.params["E"], j.params["F"]) for j in jobs)
    assert got == [("run_E1e5_F.5.xdmf", 1e5, 0.5), ("run_E200e3_F-1.5.xdmf", 200e3, -1.5)]


def test_precision_of_values_and_rounding_noise():
    """Significant digits read off the values (6 for CalculiX's E12.5, none for computed
    doubles or float32 data, 0 for a zero field); the rounding-noise realization stays within
    half a unit of each value's last digit and depends on the ids only (not on the partition)."""
    from ddrom.io.precision import half_units, hash_uniform, rounding_noise, significant_digits

    rng = np.random.default_rng(2)
    x = rng.normal(size=5000) * 10.0 ** rng.integers(-8, 3, 5000)
    printed = np.array([float(f"{v:12.5E}") for v in x])
    assert significant_digits(printed) == 6 and significant_digits(np.round(printed, 20)) == 6
    assert significant_digits(np.array([float(f"{v:.3e}") for v in x])) == 4
    assert significant_digits(x) is None and significant_digits(x.astype(np.float32)) is None
    assert significant_digits(np.zeros(7)) == 0 and significant_digits([0.25, 1000.0, 12.5]) == 3
    h = half_units(printed, 6)
    np.testing.assert_allclose(h, 0.5 * 10.0 ** (np.floor(np.log10(np.abs(printed))) - 5))      # d.ddddd E e
    assert half_units([0.0, 2.0], 6)[0] == 0.0 and half_units([2.0], None, 1e-7)[0] == 1e-7
    ids = np.arange(30000)
    u = hash_uniform(ids, 4)
    assert 0.0 <= u.min() and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.01
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02
    np.testing.assert_array_equal(hash_uniform(ids[::-1], 4), u[::-1])         # the same for an id anywhere
    assert not np.array_equal(hash_uniform(ids, 5), u)                            # another step, another draw
    d = rounding_noise(printed, ids[:5000], 6, salt=1)
    assert np.all(np.abs(d) <= h) and np.abs(d).max() > 0.9 * h.max()


def test_to_mandel():
    from ddrom.io.importers import to_mandel

    t = np.array([[1.0, 4.0, 6.0], [4.0, 2.0, 5.0], [6.0, 5.0, 3.0]])
    want = np.array([1.0, 2.0, 3.0, 4 * SQ2, 5 * SQ2, 6 * SQ2])
    assert np.allclose(to_mandel(t.reshape(1, 9))[0], want)
    assert np.allclose(to_mandel(np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]))[0], want)
    with pytest.raises(DdromError):
        to_mandel(np.zeros((2, 4)))


def test_to_mandel_explicit_component_order():
    """CalculiX .dat / Abaqus order (xx yy zz xy xz yz) vs VTK's (xx yy zz xy yz xz): the
    same tensor read in its own order gives the same Mandel vector; in the wrong order the
    xz and yz shears swap."""
    from ddrom.io.importers import ABAQUS_ORDER, VTK_ORDER, component_order, to_mandel

    t = np.array([[1.0, 4.0, 6.0], [4.0, 2.0, 5.0], [6.0, 5.0, 3.0]])
    want = np.array([1.0, 2.0, 3.0, 4 * SQ2, 5 * SQ2, 6 * SQ2])
    vtk = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])          # xy yz xz
    abq = np.array([[1.0, 2.0, 3.0, 4.0, 6.0, 5.0]])          # xy xz yz
    np.testing.assert_allclose(to_mandel(vtk, order=VTK_ORDER)[0], want)
    np.testing.assert_allclose(to_mandel(abq, order=ABAQUS_ORDER)[0], want)
    np.testing.assert_allclose(to_mandel(abq, order="11, 22, 33, 12, 13, 23")[0], want)
    np.testing.assert_allclose(to_mandel(abq, order=["XX", "YY", "ZZ", "YX", "ZX", "ZY"])[0], want)
    np.testing.assert_allclose(to_mandel(abq)[0], [1, 2, 3, 4 * SQ2, 6 * SQ2, 5 * SQ2])   # VTK default
    np.testing.assert_array_equal(component_order(ABAQUS_ORDER), [0, 1, 2, 3, 5, 4])
    # 9 components ignore the order
    np.testing.assert_allclose(to_mandel(t.reshape(1, 9), order=ABAQUS_ORDER)[0], want)
    for bad, match in [("xx yy zz xy xz", "expected 6 names"), ("xx yy zz xy xz ab", "unknown component 'ab'"),
                       ("xx yy zz xy xz zx", "appears twice")]:
        with pytest.raises(DdromError, match=rf"f\.dat: stress component order .*{match}"):
            to_mandel(abq, "f.dat", order=bad)


def test_matching_errors_are_specific():
    from ddrom.io.matching import _match_on_root

    rng = np.random.default_rng(3)
    X = np.stack(np.meshgrid(*[np.arange(3.0)] * 3, indexing="ij"), -1).reshape(-1, 3)   # spacing 1
    perm = rng.permutation(len(X))
    ids, how, d = _match_on_root(X[perm], X, "auto", 1e-9, True, "node", "f", "hint")
    assert how == "coordinates" and np.array_equal(ids, perm) and d == 0.0
    ids, how, _ = _match_on_root(X.copy(), X, "auto", 1e-9, True, "node", "f", "hint")
    assert how == "identity" and np.array_equal(ids, np.arange(len(X)))
    moved = X[perm].copy()
    moved[4] += 0.01
    with pytest.raises(DdromError, match=r"1 of its 27 nodes are farther than the tolerance"):
        _match_on_root(moved, X, "auto", 1e-6, True, "node", "f", "hint")
    with pytest.raises(DdromError, match=r"not below the mesh spacing"):
        _match_on_root(X[perm], X, "auto", 1.5, True, "node", "f", "hint")
    dup = X[perm].copy()
    dup[0] = dup[1]
    with pytest.raises(DdromError, match=r"have no counterpart"):
        _match_on_root(dup, X, "auto", 1e-9, True, "node", "f", "hint")
    with pytest.raises(DdromError, match=r"26 nodes, the case mesh has 27"):
        _match_on_root(X[1:], X, "auto", 1e-9, True, "node", "f", "hint")
    # pieces may repeat interface nodes, but must cover the mesh
    ids, _, _ = _match_on_root(np.vstack([X, X[:5]]), X, "auto", 1e-9, False, "node", "f", "hint")
    assert np.array_equal(ids[-5:], np.arange(5))
    with pytest.raises(DdromError, match=r"have no counterpart"):
        _match_on_root(np.vstack([X[1:], X[1:3]]), X, "auto", 1e-9, False, "node", "f", "hint")


@pytest.mark.mpi
def test_cli_bad_inputs_exit_2_with_one_message(ref, work, capfd):
    import meshio

    from ddrom.cli.main import main

    case = _write_case(work, "imp")
    ext = os.path.join(work, "ext")
    if COMM.rank == 0:
        pvtu = _write_pvtu_series(ref, ext, "train_000", 3)
        os.remove(os.path.join(ext, "train_000_2_p1.vtu"))
        m = _box_mesh(nx=2)
        meshio.write(os.path.join(work, "tet.vtu"), meshio.Mesh(
            m.points, [("tetra", m.cells[:, :4])], point_data={"displacement": np.zeros((len(m.points), 3))}))
    COMM.Barrier()
    capfd.readouterr()
    assert main(["import", case, "--series", os.path.join(ext, "train_000.pvd"), "--quiet"]) == 2
    err = capfd.readouterr().err
    if COMM.rank == 0:
        assert err.count("error") == 1 and "piece file(s) missing" in err and "train_000_2_p1.vtu" in err, err
    else:
        assert err == "", err
    assert main(["import", case, "--series", os.path.join(work, "tet.vtu"), "--quiet"]) == 2
    err = capfd.readouterr().err
    if COMM.rank == 0:
        assert "4 nodes" in err and "hexahedron 8" in err, err
    assert main(["import", case, "--series", os.path.join(ext, "train_000.pvd"), "--param", "nope=1"]) == 2
    assert main(["import", case, "--series", os.path.join(work, "tet.vtu"), "--stress-field", "s"]) == 2
    assert _no_store(case)


# ------------------------------------------------------------------------------ VTU of any version
def _vtu_xml(points, conn, offsets, types, point_arrays, cell_arrays, version="2.2", fmt="ascii",
             extra_root="", appended=None):
    def da(name, a, dtype, ncomp=1):
        n = f' Name="{name}"' if name else ""
        body = " ".join(repr(float(v)) if dtype.startswith("Float") else str(int(v)) for v in np.ravel(a))
        return f'<DataArray type="{dtype}"{n} NumberOfComponents="{ncomp}" format="{fmt}">{body}</DataArray>'
    pd = "".join(da(k, v, "Float64", v.shape[1] if v.ndim > 1 else 1) for k, v in point_arrays.items())
    cd = "".join(da(k, v, "UInt8" if k == "vtkGhostType" else "Float64", v.shape[1] if v.ndim > 1 else 1)
                 for k, v in cell_arrays.items())
    return (f'<?xml version="1.0"?><VTKFile type="UnstructuredGrid" version="{version}"{extra_root}>'
            f'<UnstructuredGrid><Piece NumberOfPoints="{len(points)}" NumberOfCells="{len(types)}">'
            f'<Points>{da("", points, "Float64", 3)}</Points><Cells>{da("connectivity", conn, "Int32")}'
            f'{da("offsets", offsets, "Int32")}{da("types", types, "Int8")}</Cells>'
            f'<PointData>{pd}</PointData><CellData>{cd}</CellData></Piece></UnstructuredGrid></VTKFile>')


def test_vtu_version_2_with_lagrange_and_ghost_cells(tmp_path):
    """What DOLFINx writes (version 2.2, type 72 = degree-1 Lagrange hexahedron, a ghost cell
    flagged in vtkGhostType): the ghost is dropped with its cell data; meshio rejects the file."""
    import meshio

    from ddrom.io.importers import _MeshFile

    m = meshio.Mesh(np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [1, 1, 1],
                              [0, 1, 1], [2, 0, 0], [2, 1, 0], [2, 0, 1], [2, 1, 1]], float), [])
    conn = np.array([0, 1, 2, 3, 4, 5, 6, 7, 1, 8, 9, 2, 5, 10, 11, 6])
    u = np.arange(36.0).reshape(12, 3)
    p = tmp_path / "d.vtu"
    p.write_text(_vtu_xml(m.points, conn, [8, 16], [72, 72], {"u": u},
                          {"vtkGhostType": np.array([0, 1]), "c": np.array([[1.0, 2.0], [3.0, 4.0]])}))
    with pytest.raises(BaseException):
        meshio.read(str(p))
    f = _MeshFile(str(p))
    np.testing.assert_array_equal(f.cells, [conn[:8]])
    np.testing.assert_array_equal(f.field("u", "point"), u)
    np.testing.assert_array_equal(f.field("c", "cell"), [[1.0, 2.0]])
    # offsets with a leading 0 (another writer's layout) read the same
    p.write_text(_vtu_xml(m.points, conn, [0, 8, 16], [12, 12], {"u": u}, {}))
    np.testing.assert_array_equal(_MeshFile(str(p)).cells, conn.reshape(2, 8))
    p.write_text(_vtu_xml(m.points, conn, [8, 16], [12, 10], {"u": u}, {}))
    with pytest.raises(DdromError, match=r"d\.vtu: cell 1 of VTK type 10 has 8 nodes, expected 4"):
        _MeshFile(str(p))


@pytest.mark.parametrize("compression", [None, "zlib", "lzma"])
@pytest.mark.parametrize("header", ["UInt32", "UInt64"])
def test_vtu_reader_decodes_binary_like_meshio(tmp_path, compression, header):
    import meshio

    from ddrom.io.vtu import read_vtu, volume_cells

    from ddrom.mesh.generators import box

    b = box(1.0, 2.0, 1.0, 3, 2, 2)
    rng = np.random.default_rng(0)
    mm = meshio.Mesh(b.points, [("hexahedron", b.cells)], point_data={"u": rng.normal(size=(b.n_nodes, 3))},
                     cell_data={"s": [rng.normal(size=(b.n_cells, 9))]})
    p = tmp_path / "m.vtu"
    meshio.write(str(p), mm, binary=True, compression=compression, header_type=header)
    v = read_vtu(str(p))
    cells, kept = volume_cells(v, str(p))
    np.testing.assert_array_equal(cells, b.cells)
    np.testing.assert_array_equal(v.points, b.points)
    np.testing.assert_array_equal(v.point_data["u"], mm.point_data["u"])
    np.testing.assert_array_equal(v.cell_data["s"], mm.cell_data["s"][0])


@pytest.mark.parametrize("encoding", ["raw", "base64"])
def test_vtu_reader_appended_data(tmp_path, encoding):
    import base64 as b64

    from ddrom.io.vtu import read_vtu

    pts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    arrays = [("Float64", pts, 3, "Points", ""), ("Int64", np.arange(4), 1, "Cells", "connectivity"),
              ("Int64", np.array([4]), 1, "Cells", "offsets"), ("UInt8", np.array([10]), 1, "Cells", "types"),
              ("Float32", np.array([1.5, 2.5, 3.5, 4.5]), 1, "PointData", "f")]
    blob, tags, off = b"", {"Points": "", "Cells": "", "PointData": ""}, 0
    np_t = {"Float64": "<f8", "Int64": "<i8", "UInt8": "u1", "Float32": "<f4"}
    for t, a, nc, where, name in arrays:
        data = np.asarray(a, dtype=np_t[t]).tobytes()
        chunk = np.array([len(data)], "<u4").tobytes() + data
        chunk = b64.b64encode(chunk) if encoding == "base64" else chunk
        n = f' Name="{name}"' if name else ""
        tags[where] += f'<DataArray type="{t}"{n} NumberOfComponents="{nc}" format="appended" offset="{off}"/>'
        blob += chunk
        off += len(chunk)
    head = (f'<?xml version="1.0"?><VTKFile type="UnstructuredGrid" version="2.2" byte_order="LittleEndian">'
            f'<UnstructuredGrid><Piece NumberOfPoints="4" NumberOfCells="1"><Points>{tags["Points"]}</Points>'
            f'<Cells>{tags["Cells"]}</Cells><PointData>{tags["PointData"]}</PointData></Piece></UnstructuredGrid>'
            f'<AppendedData encoding="{encoding}">\n_').encode()
    p = tmp_path / "a.vtu"
    p.write_bytes(head + blob + b"\n</AppendedData></VTKFile>\n")
    v = read_vtu(str(p))
    np.testing.assert_array_equal(v.points, pts)
    np.testing.assert_array_equal(v.connectivity, np.arange(4))
    np.testing.assert_array_equal(v.point_data["f"], [1.5, 2.5, 3.5, 4.5])


def test_single_file_series_given_by_a_glob(tmp_path):
    """A .pvd (or .xdmf, .frd) given by a glob is the one file it matches: the patterns of
    `ddrom import --pattern 'runs/E{E}/*.pvd'` work; several matches are an error."""
    from ddrom.io.importers import probe_series

    d = tmp_path / "E200"
    d.mkdir()
    (d / "u_0.vtu").write_text("")
    (d / "run.pvd").write_text('<VTKFile type="Collection"><Collection><DataSet timestep="1" file="u_0.vtu"/>'
                               "</Collection></VTKFile>")
    info = probe_series(str(d / "*.pvd"))
    assert info.source == str(d / "run.pvd") and info.kind == "files" and info.times == [1.0]
    (d / "other.pvd").write_text((d / "run.pvd").read_text())
    with pytest.raises(DdromError, match=r"\*\.pvd: matches 2 files \(.*other\.pvd, .*run\.pvd\); a series is one"):
        probe_series(str(d / "*.pvd"))
    with pytest.raises(DdromError, match=r"nothing\*\.frd: no file matches"):
        probe_series(str(d / "nothing*.frd"))
    with pytest.raises(DdromError, match=r"absent\.xdmf: file not found"):
        probe_series(str(d / "absent.xdmf"))
