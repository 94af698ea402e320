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
    """The disk estimate of a store is within a few percent of the file written without
    compression (with and without the internal variables), and bounds a compressed one."""
    from helpers import distributed

    from ddrom.io.store import SnapshotStore, StoreOptions

    dm = distributed(lambda: generate("box", nx=4, ny=3, nz=5), MPI.COMM_SELF)
    size = generator_mesh_size("box", dict(nx=4, ny=3, nz=5))
    ne, nq = dm.n_cells, dm.n_qp
    rng = np.random.default_rng(0)
    real = {}
    for opts, n_state in ((StoreOptions(store_state=True, compression="none"), 3),
                          (StoreOptions(compression="none"), 0), (StoreOptions(), 0)):
        path = tmp_path / f"s{n_state}_{opts.compression}.h5"
        st = SnapshotStore.create(path, dm, state_names=["a", "b", "c"], comm=MPI.COMM_SELF, options=opts)
        for s in range(2):
            w = st.add_simulation(f"s{s}", {}, 6)
            for k in range(7):
                w.write_step(k, k, rng.random((dm.n_owned, 3)), rng.random((ne, nq, 6)), rng.random((ne, nq)),
                             rng.random((ne, nq, 3)))
            w.finish()
        st.finalize()
        real[opts] = os.path.getsize(path)
        # the blocks reserved past the end of the file are given back when it is finalized
        assert os.stat(path).st_blocks * 512 < real[opts] + (64 << 10), (os.stat(path).st_blocks, real[opts])
        if opts.compression == "none":
            est = store_bytes(size, 6, 2, n_state)
            assert 0.7 * real[opts] <= est <= 1.3 * real[opts], (opts, est, real[opts])
    # the estimate is that of the uncompressed store: a compressed one (here of random
    # values, which hardly compress) is smaller
    assert real[StoreOptions()] < real[StoreOptions(compression="none")], real


def test_estimates_grow_with_the_request():
    small = generator_mesh_size("box", dict(nx=10, ny=10, nz=10))
    big = generator_mesh_size("box", dict(nx=400, ny=400, nz=400))
    e1, e2 = estimate_hf(small, 2, 10, 2), estimate_hf(big, 2, 10, 2)
    assert e2.memory_per_rank > 1000 * (e1.memory_per_rank - e1.breakdown["base"])
    assert e2.memory_rank0_extra == 0                   # generated in slices: rank 0 is like the others
    # a file that rank 0 reads whole: 64 M cells on rank 0 alone cannot fit
    assert estimate_hf(big, 2, 10, 2, serial_on_rank0=True).memory_rank0_extra > 50 * 2**30
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


# ------------------------------------------------------------------ wired into the stages
BOX_CASE = """
[case]
name = "big"

[mesh]
generator = "box"
args = {{ lx = 1.0, ly = 1.0, lz = 1.0, nx = {n}, ny = {n}, nz = {n} }}

[material]
law = "elastic"
E = 200e3
nu = 0.3

[parameters]
u_max = {{ min = 0.001, max = 0.01, default = 0.005 }}

[time]
t_end = 1.0
n_steps = 20

[loads]
dirichlet = [
  {{ region = "xmin", components = ["x"] }},
  {{ region = "ymin", components = ["y"] }},
  {{ region = "zmin", components = ["z"] }},
  {{ region = "xmax", components = ["x"], value = "u_max * ramp(t, 1)" }},
]

[training]
values = [{{ u_max = 0.002 }}, {{ u_max = 0.008 }}]
"""


@pytest.mark.parametrize("command", ["hf", "run"])
def test_huge_box_refused_before_allocating(tmp_path, command):
    """A 400^3 box (64 million cells): refused with the estimate and what is available, in
    a bounded time, before rank 0 builds anything (its peak memory stays that of a start-up)."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    from helpers import clean_mpi_env

    if COMM.size != 1:
        pytest.skip("starts its own mpirun")
    (tmp_path / "big.toml").write_text(BOX_CASE.format(n=400))
    env = {k: v for k, v in clean_mpi_env().items() if k != OVERRIDE_ENV}
    t0 = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "maxrss_kb=%M", "mpirun", "-n", "2", "--oversubscribe",
                        str(Path(sys.executable).parent / "ddrom"), command, str(tmp_path / "big.toml"), "--quiet"],
                       env=env, capture_output=True, text=True, timeout=120)
    secs = time.perf_counter() - t0
    assert r.returncode == 2 and secs < 60, (r.returncode, secs, r.stderr[-3000:])
    line = [ln for ln in r.stderr.splitlines() if ln.startswith(f"ddrom {command}: error:")]
    assert len(line) == 1, r.stderr[-3000:]
    stage = {"hf": "HF sweep", "run": "pipeline"}[command]
    assert f"ddrom {command}: error: {stage}: refused before allocating anything:" in line[0], line[0]
    assert "64000000 hexahedron cells" in line[0]
    assert "of memory on a node" in line[0] and "is available (" in line[0] and OVERRIDE_ENV in line[0]
    assert "--ignore-resources" in line[0]
    rss = int(r.stderr.rsplit("maxrss_kb=", 1)[1].split()[0])
    assert rss < 1_000_000, f"{rss} kB: something was allocated before the refusal"
    assert not (tmp_path / "out" / "big" / "hf_training.h5.partial").exists()


@pytest.mark.mpi
def test_stages_refuse_and_override(shared_tmp, monkeypatch):
    """With (pretend) 1 MiB of memory, the HF sweep is refused before its mesh or store
    exists; --ignore-resources / the environment variable run it anyway, with a warning."""
    import logging

    import ddrom.io.estimate as est_mod
    from ddrom.io.estimate import MeshSize
    from ddrom.workflow.case import load_case
    from ddrom.workflow.hf import hf_sweep
    from ddrom.workflow.resources import check_hf, check_offline

    monkeypatch.delenv(OVERRIDE_ENV, raising=False)
    folder = shared_tmp / "refuse"
    if COMM.rank == 0:
        folder.mkdir()
        (folder / "box.toml").write_text(BOX_CASE.format(n=2).replace("n_steps = 20", "n_steps = 2"))
    COMM.Barrier()
    case = load_case(folder / "box.toml")
    monkeypatch.setattr(est_mod, "available_memory", lambda: (1 << 20, "a test limit"))
    monkeypatch.setattr(est_mod, "_rss", lambda: 0)
    with pytest.raises(CollectiveError, match=r"^HF sweep: refused before allocating anything: 8 hexahedron cells, "
                                              r"27 nodes, 2 steps x 2 simulation\(s\) .* is available \(a test limit\)"):
        hf_sweep(case, COMM)
    assert not (folder / "out" / "big").exists() or not any((folder / "out" / "big").iterdir())
    with pytest.raises(CollectiveError, match=r"^offline stage: refused before allocating anything: offline on "
                                              r"30 snapshots"):
        check_offline(case, COMM, MeshSize(8, 27), 30)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("ddrom").addHandler(handler)
    try:
        rep = check_hf(case, COMM, ["training"], ignore=True)
        monkeypatch.setenv(OVERRIDE_ENV, "1")
        assert not check_hf(case, COMM, ["training"]).ok
    finally:
        logging.getLogger("ddrom").removeHandler(handler)
    assert not rep.ok and "refused before allocating" in rep.message
    if COMM.rank == 0:
        assert any("running anyway" in r.getMessage() for r in records)
