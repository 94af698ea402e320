"""Early refusal (ddrom.io.estimate): mesh sizes without building, estimates, the verdict."""
from __future__ import annotations

import os

import numpy as np
import pytest
from mpi4py import MPI

from ddrom.io.estimate import (OVERRIDE_ENV, Estimate, available_memory, check_resources, estimate_hf,
                               estimate_offline, format_bytes, generator_mesh_size, store_bytes)
from ddrom.mesh.generators import generate
from ddrom.parallel import CollectiveError, DdromError

COMM = MPI.COMM_WORLD


@pytest.mark.parametrize("name, args", [
    ("box", dict(nx=3, ny=4, nz=5)),
    ("box", dict(nx=2, ny=1, nz=3, cell_type="tetra")),
    ("box", {}),
    ("plate_with_hole", dict(width=40.0, height=20.0, thickness=2.0, radius=2.5, n_around=48, n_radial=8,
                             n_thick=2)),
    ("plate_with_hole", dict(width=1.0, height=3.0, n_around=24, n_radial=3)),
    ("plate_with_hole", dict(n_around=16, cell_type="tet")),
])
def test_mesh_size_without_building(name, args):
    ms = generator_mesh_size(name, args)
    m = generate(name, **args)
    assert (ms.cells, ms.nodes, ms.cell_type) == (m.n_cells, m.n_nodes, m.cell_type)


def test_mesh_size_bad_arguments():
    with pytest.raises(DdromError, match="unknown mesh generator"):
        generator_mesh_size("sphere", {})
    with pytest.raises(DdromError, match="nx must be a positive integer"):
        generator_mesh_size("box", {"nx": 0})
    with pytest.raises(DdromError, match="unexpected keyword"):
        generator_mesh_size("box", {"n": 3})


def test_store_bytes_matches_a_real_store(tmp_path):
    """The disk estimate of a store is within a few percent of the file written."""
    from helpers import distributed

    from ddrom.io.store import SnapshotStore

    dm = distributed(lambda: generate("box", nx=4, ny=3, nz=5), MPI.COMM_SELF)
    path = tmp_path / "s.h5"
    st = SnapshotStore.create(path, dm, state_names=["a", "b", "c"], comm=MPI.COMM_SELF)
    ne, nq = dm.n_cells, dm.n_qp
    for s in range(2):
        w = st.add_simulation(f"s{s}", {}, 6)
        for k in range(7):
            w.write_step(k, k, np.zeros((dm.n_owned, 3)), np.zeros((ne, nq, 6)), np.zeros((ne, nq)),
                         np.zeros((ne, nq, 3)))
        w.finish()
    st.finalize()
    est = store_bytes(generator_mesh_size("box", dict(nx=4, ny=3, nz=5)), 6, 2, 3)
    real = os.path.getsize(path)
    assert 0.7 * real <= est <= 1.3 * real, (est, real)


def test_estimates_grow_with_the_request():
    small = generator_mesh_size("box", dict(nx=10, ny=10, nz=10))
    big = generator_mesh_size("box", dict(nx=400, ny=400, nz=400))
    e1, e2 = estimate_hf(small, 2, 10, 2), estimate_hf(big, 2, 10, 2)
    assert e2.memory_per_rank > 1000 * (e1.memory_per_rank - e1.breakdown["base"])
    assert e2.memory_rank0_extra > 50 * 2**30           # 64 M cells: rank 0 alone cannot hold them
    # more ranks: less memory per rank, the same disk
    e4 = estimate_hf(big, 8, 10, 2)
    assert e4.memory_per_rank < e2.memory_per_rank and e4.disk == e2.disk
    # a huge number of steps costs memory even on a tiny mesh
    assert estimate_hf(small, 1, 10**9, 1).breakdown["steps"] > 10 * 2**30
    off = estimate_offline(small, 2, 300, 13)
    assert off.memory_per_rank > off.breakdown["base"] and off.breakdown["snapshot_blocks"] > 0
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(10) == "10 B"


def test_available_memory():
    avail, source = available_memory()
    assert avail > 0 and source


@pytest.mark.mpi
def test_refusal_names_estimate_and_available(shared_tmp, monkeypatch):
    monkeypatch.delenv(OVERRIDE_ENV, raising=False)
    big = estimate_hf(generator_mesh_size("box", dict(nx=400, ny=400, nz=400)), COMM.size, 20, 12)
    with pytest.raises(CollectiveError) as info:
        check_resources(big, COMM, shared_tmp, what="ddrom hf")
    msg = str(info.value)
    assert msg.startswith("ddrom hf: refused before allocating anything: 64000000 hexahedron cells")
    assert "of memory on a node" in msg and "is available (" in msg and "of disk in" in msg and "is free" in msg
    assert OVERRIDE_ENV in msg and info.value.exit_code == 2
    # overridden: the same verdict, returned instead of raised
    rep = check_resources(big, COMM, shared_tmp, force=True)
    assert not rep.ok and rep.message == msg.replace("ddrom hf", "ddrom", 1)
    monkeypatch.setenv(OVERRIDE_ENV, "1")
    assert not check_resources(big, COMM, shared_tmp).ok
    monkeypatch.delenv(OVERRIDE_ENV)
    # what fits passes, on every rank
    small = estimate_hf(generator_mesh_size("box", dict(nx=4, ny=4, nz=4)), COMM.size, 5, 2)
    rep = check_resources(small, COMM, shared_tmp)
    assert rep.ok and rep.disk_free > 0 and rep.node_available > 0


@pytest.mark.mpi
def test_disk_only_refusal(shared_tmp, monkeypatch):
    monkeypatch.delenv(OVERRIDE_ENV, raising=False)
    est = Estimate(what="a test request", memory_per_rank=1 << 20, disk=1 << 62)
    with pytest.raises(CollectiveError, match=r"needs about 4096\.0 PiB of disk in .* is free\."):
        check_resources(est, COMM, shared_tmp)
    assert check_resources(est, COMM, None).ok          # no folder: memory only
