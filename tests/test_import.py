"""``ddrom import``: an HF run exported with meshio (XDMF time series, VTU + PVD) and imported
into another case's store by replaying the material law must give the HF stress, p and
internal variables to round-off, at 1 and 3 ranks; mismatched meshes are clear errors."""
from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest
from mpi4py import MPI

import ddrom  # noqa: F401
from ddrom.parallel import DdromError

from helpers import all_ok as _all_ok
from helpers import gather_natural
from helpers import import_box_mesh as _box_mesh
from helpers import write_import_case as _write_case

pytestmark = pytest.mark.slow

COMM = MPI.COMM_WORLD

# Viscoplastic Chaboche law with temperature-dependent E and sigma_y, a parameter-dependent
# temperature and a load-then-hold-then-unload path: the replay must get the temperature,
# the time increments and the internal-variable history right, not just Hooke's law.


@pytest.fixture
def shared_dir():
    d = COMM.bcast(tempfile.mkdtemp(prefix="ddrom_import_") if COMM.rank == 0 else None, root=0)
    yield d
    COMM.Barrier()
    if COMM.rank == 0:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.mpi
def test_import_replays_hf_to_round_off(shared_dir):
    import meshio

    from ddrom.workflow.build import build_mesh, load_case_collectively
    from ddrom.workflow.importing import import_series
    from ddrom.workflow.hf import hf_sweep, store_path
    from ddrom.io.store import SnapshotStore

    ref_case = load_case_collectively(_write_case(shared_dir, "ref"), COMM)
    imp_path = _write_case(shared_dir, "imp")
    dm = build_mesh(ref_case, COMM)
    hf_sweep(ref_case, COMM, dm=dm)
    ref = SnapshotStore.open(store_path(ref_case, "training"), COMM, mode="r", dmesh=dm)
    sims = [s.name for s in ref.simulations()]
    assert sims == ["train_000", "train_001"]
    times = ref.read_times("train_000")
    # Export: gather the natural-order displacement on rank 0, write with meshio.
    u = {s: [gather_natural(dm.natural_nodes, ref.read_displacement(s, k, dm), COMM)
             for k in range(len(times))] for s in sims}
    pmax = max(COMM.allreduce(float(ref.read_qp("train_001", "p", k, dm).max()), op=MPI.MAX)
               for k in range(len(times)))
    assert pmax > 1e-4, f"the reference run must be plastic (max p = {pmax})"
    xdmf = os.path.join(shared_dir, "ext", "u0.xdmf")
    pvd = os.path.join(shared_dir, "ext", "u1.pvd")
    if COMM.rank == 0:
        os.makedirs(os.path.dirname(xdmf))
        m = _box_mesh()
        cells = [("hexahedron", m.cells)]
        # the XDMF series omits t = 0 (as many solvers do): the importer prepends a zero step
        # (meshio's writer puts the .h5 in the working directory, the reader looks next to the .xdmf)
        cwd = os.getcwd()
        os.chdir(os.path.dirname(xdmf))
        try:
            with meshio.xdmf.TimeSeriesWriter(xdmf) as w:
                w.write_points_cells(m.points, cells)
                for k in range(1, len(times)):
                    w.write_data(times[k], point_data={"displacement": u["train_000"][k]})
        finally:
            os.chdir(cwd)
        # VTU files, listed out of order in the PVD (sorted by timestep on reading)
        entries = []
        for k in range(len(times)):
            f = f"u1_{k}.vtu"
            meshio.write(os.path.join(shared_dir, "ext", f),
                         meshio.Mesh(m.points, cells, point_data={"u": u["train_001"][k]}))
            entries.append(f'<DataSet timestep="{times[k]!r}" part="0" file="{f}"/>')
        with open(pvd, "w") as fh:
            fh.write('<?xml version="1.0"?>\n<VTKFile type="Collection" version="0.1">\n<Collection>\n'
                     + "\n".join(entries[::-1]) + "\n</Collection>\n</VTKFile>\n")
    COMM.Barrier()

    r0 = import_series(imp_path, COMM, xdmf, {"u_max": 0.004, "T_max": 100.0})
    assert r0["simulation"] == "train_000" and r0["prepended_zero_step"] and not r0["finalized"]
    imp_case = load_case_collectively(imp_path, COMM)
    assert COMM.bcast(os.path.exists(str(store_path(imp_case, "training")) + ".partial")
                      if COMM.rank == 0 else None)
    r1 = import_series(imp_path, COMM, pvd, {"u_max": 0.008, "T_max": 500.0}, field="u")
    assert r1["simulation"] == "train_001" and r1["finalized"] and not r1["prepended_zero_step"]
    assert r1["max_coordinate_distance"] == 0.0

    imp = SnapshotStore.open(store_path(imp_case, "training"), COMM, mode="r", dmesh=dm)
    assert [s.name for s in imp.simulations()] == sims
    err, scale = {}, {}     # max |difference| relative to the field's max over all steps and sims
    for s in sims:
        assert np.array_equal(imp.read_times(s), times)
        assert imp.simulations()[sims.index(s)].params == ref.simulations()[sims.index(s)].params
        for k in range(len(times)):
            _all_ok(np.array_equal(imp.read_displacement(s, k, dm), ref.read_displacement(s, k, dm)),
                    f"{s} step {k}: displacement changed")
            for field in ("stress", "p", "state"):
                a, b = imp.read_qp(s, field, k, dm), ref.read_qp(s, field, k, dm)
                sc = COMM.allreduce(float(np.abs(b).max()) if b.size else 0.0, op=MPI.MAX)
                e = COMM.allreduce(float(np.abs(a - b).max()) if b.size else 0.0, op=MPI.MAX)
                scale[field], err[field] = max(scale.get(field, 0.0), sc), max(err.get(field, 0.0), e)
    ref.close()
    imp.close()
    assert min(scale.values()) > 0
    worst = {f: err[f] / scale[f] for f in err}
    if COMM.rank == 0:
        print(f"replay vs HF, max relative difference: {worst}")
    assert worst["stress"] <= 1e-10 and worst["p"] <= 1e-10 and worst["state"] <= 1e-10, worst


@pytest.mark.mpi
def test_node_count_and_coordinate_mismatch_are_clear_errors(shared_dir):
    import meshio

    from ddrom.workflow.build import load_case_collectively
    from ddrom.workflow.importing import import_series
    from ddrom.workflow.hf import store_path

    case = _write_case(shared_dir, "imp")
    wrong_count = os.path.join(shared_dir, "coarse.vtu")
    shifted = os.path.join(shared_dir, "shifted_*.vtu")
    if COMM.rank == 0:
        m = _box_mesh(nx=2)
        meshio.write(wrong_count, meshio.Mesh(m.points, [("hexahedron", m.cells)],
                                              point_data={"displacement": np.zeros((len(m.points), 3))}))
        m = _box_mesh()
        pts = m.points.copy()
        pts[[0, 1]] = pts[[1, 0]]      # two nodes swapped: another node order
        for k in (0, 1):
            meshio.write(os.path.join(shared_dir, f"shifted_{k}.vtu"),
                         meshio.Mesh(pts, [("hexahedron", m.cells)],
                                     point_data={"displacement": np.zeros((len(pts), 3))}))
    COMM.Barrier()
    with pytest.raises(DdromError) as e:
        import_series(case, COMM, wrong_count, {"u_max": 0.004})
    msg = str(e.value)
    assert "coarse.vtu" in msg and "27 nodes" in msg and "36" in msg and "case mesh's nodes" in msg, msg
    with pytest.raises(DdromError) as e:
        import_series(case, COMM, shifted, {"u_max": 0.004}, node_order="keep")
    msg = str(e.value)
    assert "shifted_*.vtu" in msg and "coordinates differ" in msg and "same order" in msg, msg
    # nothing was written by the failed imports
    imp = load_case_collectively(case, COMM)
    p = str(store_path(imp, "training"))
    assert not COMM.bcast(os.path.exists(p) or os.path.exists(p + ".partial") if COMM.rank == 0 else None)
    _all_ok(True, "")


def test_natural_sort_and_pvd_order(tmp_path):
    from ddrom.io.importers import _pvd_entries, natural_key

    names = ["u_10.vtu", "u_2.vtu", "u_1.vtu"]
    assert sorted(names, key=natural_key) == ["u_1.vtu", "u_2.vtu", "u_10.vtu"]
    p = tmp_path / "c.pvd"
    p.write_text('<VTKFile type="Collection"><Collection>'
                 '<DataSet timestep="2.5" file="b.vtu"/><DataSet timestep="0.5" file="sub/a.vtu"/>'
                 "</Collection></VTKFile>")
    files, times = _pvd_entries(str(p))
    assert times.tolist() == [0.5, 2.5]
    assert files == [str(tmp_path / "sub" / "a.vtu"), str(tmp_path / "b.vtu")]
