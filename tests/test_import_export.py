"""VTU + PVD export of a snapshot store (``ddrom.io.export``), read back with meshio: the
same files (natural order) at 1 and 3 ranks, fields equal to the store's."""
from __future__ import annotations

import os
import shutil
import tempfile
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from mpi4py import MPI

import ddrom  # noqa: F401

from helpers import gather_natural
from helpers import import_box_mesh as _box_mesh
from helpers import write_import_case as _write_case

pytestmark = pytest.mark.slow

COMM = MPI.COMM_WORLD
SQ2 = np.sqrt(2.0)


@pytest.fixture
def work():
    d = COMM.bcast(tempfile.mkdtemp(prefix="ddrom_export_") if COMM.rank == 0 else None, root=0)
    yield d
    COMM.Barrier()
    if COMM.rank == 0:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.mpi
def test_store_exported_as_vtu_pvd_reads_back(work):
    import meshio

    from ddrom.workflow.build import build_mesh, load_case_collectively
    from ddrom.workflow.hf import hf_sweep, store_path
    from ddrom.io.export import export_store_vtu
    from ddrom.io.store import SnapshotStore

    case = load_case_collectively(_write_case(work, "ref"), COMM)
    dm = build_mesh(case, COMM)
    hf_sweep(case, COMM, dm=dm)
    path = store_path(case, "training")
    out = os.path.join(work, "vtu")
    pvds = export_store_vtu(path, COMM, dm, out)
    assert [os.path.basename(p) for p in pvds] == ["train_000.pvd", "train_001.pvd"]

    st = SnapshotStore.open(path, COMM, mode="r", dmesh=dm)
    w = dm.weights
    mesh = _box_mesh()
    for pvd, sim in zip(pvds, ("train_000", "train_001")):
        times = st.read_times(sim)
        entries = [(float(d.get("timestep")), d.get("file")) for d in ET.parse(pvd).getroot().iter("DataSet")]
        assert [t for t, _ in entries] == times.tolist()
        for k, (_, f) in enumerate(entries):
            u = gather_natural(dm.natural_nodes, st.read_displacement(sim, k, dm), COMM)
            sq = st.read_qp(sim, "stress", k, dm)
            s = gather_natural(dm.natural_cells, np.einsum("eq,eqi->ei", w, sq) / w.sum(axis=1)[:, None], COMM)
            p = gather_natural(dm.natural_cells, (w * st.read_qp(sim, "p", k, dm)).sum(axis=1) / w.sum(axis=1),
                               COMM)
            # von Mises per integration point sqrt(3/2 dev:dev) (Mandel: a dot product), then the cell average
            dev = sq.copy()
            dev[..., :3] -= sq[..., :3].mean(axis=-1, keepdims=True)
            vq = np.sqrt(1.5 * (dev * dev).sum(axis=-1))
            vm = gather_natural(dm.natural_cells, (w * vq).sum(axis=1) / w.sum(axis=1), COMM)
            if COMM.rank == 0:
                m = meshio.read(os.path.join(out, f))
                assert np.array_equal(m.points, mesh.points)
                assert np.array_equal(m.cells_dict["hexahedron"], mesh.cells)
                assert np.array_equal(m.point_data["displacement"], u)
                s_file = m.cell_data["stress"][0] * np.array([1, 1, 1, SQ2, SQ2, SQ2])
                assert np.abs(s_file - s).max() <= 1e-13 * max(np.abs(s).max(), 1e-300)
                assert np.abs(m.cell_data["p"][0] - p).max() <= 1e-13 * max(np.abs(p).max(), 1e-300)
                assert np.abs(m.cell_data["von_mises"][0] - vm).max() <= 1e-13 * max(np.abs(vm).max(), 1e-300)
                if k == len(entries) // 2:
                    assert p.max() > 0 and np.abs(s).max() > 0
    st.close()
