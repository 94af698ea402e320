"""A full disk while writing a snapshot store: one clear message, no crash, nothing lost.

Every test writes into a 2 MB tmpfs mounted by the test (root only; skipped otherwise)
and unmounted afterwards. The store reserves the disk space of a simulation before
writing it (ddrom.io.h5atomic), so the full disk is found before anything is written:
every rank raises the same error naming the file and "No space left on device", the
store is closed (kept for a resume when it holds finished simulations, removed
otherwise), and the other files of the folder are untouched.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

import ddrom  # noqa: F401
from ddrom.io.integrity import verify_file
from ddrom.io.store import SnapshotStore, StoreOptions
from ddrom.mesh.generators import box
from ddrom.parallel import CollectiveError
from helpers import distributed

COMM = MPI.COMM_WORLD
DDROM = str(Path(sys.executable).parent / "ddrom")
PREVIOUS = b"an earlier output that must survive\n" * 100


@pytest.fixture
def tmpfs(shared_tmp):
    """A 2 MB tmpfs at a folder common to all ranks (mounted and unmounted by rank 0)."""
    folder = shared_tmp / "tmpfs"
    ok = None
    if COMM.rank == 0:
        folder.mkdir(exist_ok=True)
        ok = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
                                                  capture_output=True).returncode == 0
    if not COMM.bcast(ok, root=0):
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield folder
    finally:
        COMM.Barrier()
        if COMM.rank == 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _data(dm, k: float):
    ne, nq = dm.n_cells, dm.n_qp
    return (k * dm.coords[: dm.n_owned], np.full((ne, nq, 6), k), np.full((ne, nq), 0.1 * k),
            np.full((ne, nq, 2), k))


@pytest.mark.mpi
@pytest.mark.parametrize("n_steps, kept, layout", [(5, True, "full"), (30, False, "full"), (10, False, "default")])
def test_store_refuses_full_disk_collectively(tmpfs, n_steps, kept, layout):
    """Uncompressed with the internal variables: 5 steps: the first simulation fits, the
    second does not (the store is kept with one finished simulation); 30 steps: not even the
    first fits (the store is removed). Compressed (the default): the uncompressed size is
    reserved, so 10 steps are refused at once although they would compress to little."""
    dm = distributed(lambda: box(1.0, 1.0, 1.0, 6, 6, 6), COMM)
    previous = tmpfs / "previous.out"
    if COMM.rank == 0:
        previous.write_bytes(PREVIOUS)
    COMM.Barrier()
    path = tmpfs / "store.h5"
    opts = StoreOptions(store_state=True, compression="none") if layout == "full" else StoreOptions()
    st = SnapshotStore.create(path, dm, state_names=["a", "b"], comm=COMM, options=opts)
    done = 0
    with pytest.raises(CollectiveError) as info:
        for s in range(10):
            w = st.add_simulation(f"s{s}", {"s": s}, n_steps)
            for k in range(n_steps + 1):
                w.write_step(k, float(k), *_data(dm, k + s))
            w.finish()
            done += 1
    msg = str(info.value)
    assert "No space left on device" in msg and f"{path}.partial" in msg and "MiB free" in msg, msg
    assert done == (1 if kept else 0)
    st.close()                                      # already closed: a no-op
    COMM.Barrier()
    assert previous.read_bytes() == PREVIOUS        # the other outputs are intact
    assert not path.exists()                        # nothing incomplete at the final path
    assert Path(f"{path}.partial").exists() == kept
    assert ("kept for a resume" in msg) == kept and ("removed" in msg) == (not kept)
    if kept:
        rep = verify_file(f"{path}.partial", COMM)  # what was kept is sound
        assert rep.ok and not rep.unprotected, rep.summary()
        st = SnapshotStore.open(path, COMM, mode="a", dmesh=dm)
        assert [s.name for s in st.simulations() if s.complete] == ["s0"]
        u = st.read_block("displacement", dm)
        assert np.allclose(u[:, 1].reshape(-1, 3), dm.coords[: dm.n_owned])
        st.close()
    leftovers = sorted(p.name for p in tmpfs.iterdir())
    assert leftovers == sorted(["previous.out"] + (["store.h5.partial"] if kept else [])), leftovers


CASE = """
[case]
name = "full"

[mesh]
generator = "box"
args = { lx = 1.0, ly = 1.0, lz = 1.0, nx = 6, ny = 6, nz = 6 }

[material]
law = "elastic"
E = 200e3
nu = 0.3

[parameters]
u_max = { min = 0.001, max = 0.01, default = 0.005 }

[time]
t_end = 1.0
n_steps = 5

[loads]
dirichlet = [
  { region = "xmin", components = ["x"] },
  { region = "ymin", components = ["y"] },
  { region = "zmin", components = ["z"] },
  { region = "xmax", components = ["x"], value = "u_max * ramp(t, 1)" },
]

[training]
values = [{ u_max = 0.002 }, { u_max = 0.008 }, { u_max = 0.005 }]

[test]
values = [{ u_max = 0.005 }]
"""


@pytest.mark.parametrize("np_", [1, 3])
def test_ddrom_hf_on_a_full_disk(tmpfs, np_):
    """`ddrom hf` into a full tmpfs: exit 2 (not a crash), the words "No space left on
    device" and the file once, the finished simulation kept for the resume."""
    if COMM.size != 1:
        pytest.skip("starts its own mpirun")
    (tmpfs / "full.toml").write_text(CASE)
    (tmpfs / "previous.out").write_bytes(PREVIOUS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_COMM", "PMIX_", "OMPI_MCA_ess",
                                                                      "OMPI_MCA_orte", "OMPI_FILE"))}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    r = subprocess.run(["timeout", "120", "mpirun", "-n", str(np_), "--oversubscribe", DDROM, "hf",
                        str(tmpfs / "full.toml"), "--quiet"], env=env, capture_output=True, text=True)
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    store = tmpfs / "out" / "full" / "hf_training.h5"
    line = f"ddrom hf: error: snapshot store {store}.partial: No space left on device"
    assert r.stderr.count(line) == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "Segmentation" not in r.stderr
    assert (tmpfs / "previous.out").read_bytes() == PREVIOUS
    assert sorted(p.name for p in store.parent.iterdir()) == [".ddrom.lock", "hf_training.h5.partial"]
    assert (store.parent / ".ddrom.lock").read_text() == ""      # the lock was released
