"""Checksums of stores and files (ddrom.io.integrity), `ddrom verify`, and reads of damaged data.

Collective tests (mpi-marked: 1 and 3 ranks) write a small store, flip one byte inside
a chunk of one dataset (its file offset from h5py's chunk index), and check that
reading it fails on every rank naming the file and the dataset, that the other
datasets still read, and that :func:`verify_file` finds exactly that dataset.
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
import h5py
from ddrom.io.integrity import (CHECKSUM, CHECKSUM_ATTR, DIGEST_ATTR, chunk_shape, dataset_options, digest,
                                stamp_digest, verify_file)
from ddrom.io.store import SnapshotStore, StoreOptions
from ddrom.mesh.generators import box
from ddrom.parallel import DdromError
from helpers import distributed, flip_byte

COMM = MPI.COMM_WORLD
DDROM = str(Path(sys.executable).parent / "ddrom")


def _store(folder: Path, n_steps: int = 3, compression: str = "gzip-1") -> tuple[str, object]:
    dm = distributed(lambda: box(1.0, 1.0, 2.0, 2, 3, 4), COMM)
    path = str(folder / "store.h5")
    st = SnapshotStore.create(path, dm, state_names=["r"], comm=COMM,
                              options=StoreOptions(store_state=True, compression=compression))
    ne, nq = dm.n_cells, dm.n_qp
    for s in range(2):
        w = st.add_simulation(f"s{s}", {"a": float(s)}, n_steps)
        for k in range(n_steps + 1):
            x = dm.coords[: dm.n_owned]
            w.write_step(k, 0.1 * k, (k + s + 1) * x, np.full((ne, nq, 6), k + 1.0),
                         np.full((ne, nq), 0.01 * k), np.full((ne, nq, 1), 2.0 * k))
        w.finish()
    st.finalize()
    return path, dm


@pytest.mark.mpi
def test_store_datasets_carry_checksums_and_verify(shared_tmp):
    path, dm = _store(shared_tmp)
    if COMM.rank == 0:
        with h5py.File(path, "r") as f:
            assert f.attrs[CHECKSUM_ATTR] == CHECKSUM
            names = []
            f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and o.size else None)
            assert names and all(f[n].fletcher32 for n in names), [n for n in names if not f[n].fletcher32]
    rep = verify_file(path, COMM)
    assert rep.ok and not rep.unprotected and rep.chunks_checked >= rep.datasets, rep.summary()


@pytest.mark.mpi
@pytest.mark.parametrize("compression", ["none", "gzip-1", "lzf"])
def test_flipped_byte_is_named_on_every_rank(shared_tmp, compression):
    """The checksum covers the bytes on disk: a damaged compressed chunk is found too."""
    path, dm = _store(shared_tmp, compression=compression)
    if COMM.rank == 0:
        with h5py.File(path, "r") as f:
            assert f["/simulations/s1/p"].compression == {"none": None, "lzf": "lzf"}.get(compression, "gzip")
        flip_byte(path, "/simulations/s1/p", (2, 0, 0), at=8)
    COMM.Barrier()
    st = SnapshotStore.open(path, COMM, mode="r", dmesh=dm)
    u = st.read_block("displacement", dm)          # the other datasets still read
    assert u.shape[1] == 8
    with pytest.raises(DdromError) as info:
        st.read_block("p", dm, sims=["s1"])
    msg = str(info.value)
    assert "/simulations/s1/p" in msg and "corrupt" in msg and path in msg, msg
    st.read_block("p", dm, sims=["s0"])               # the same field of another simulation is fine
    st.close()
    rep = verify_file(path, COMM)
    assert not rep.ok and len(rep.corrupt) == 1 and "/simulations/s1/p" in rep.corrupt[0], rep.summary()


@pytest.mark.mpi
def test_flipped_byte_in_the_mesh_is_found_at_open(shared_tmp):
    path, dm = _store(shared_tmp)
    if COMM.rank == 0:
        flip_byte(path, "/mesh/points", (0, 0), at=8)
    COMM.Barrier()
    with pytest.raises(DdromError, match="/mesh/points is corrupt"):
        SnapshotStore.open(path, COMM, mode="r", dmesh=dm)


@pytest.mark.mpi
def test_verify_bad_files(shared_tmp):
    junk = shared_tmp / "junk.h5"
    if COMM.rank == 0:
        junk.write_bytes(b"not hdf5 at all" * 10)
    COMM.Barrier()
    rep = verify_file(junk, COMM)
    assert not rep.ok and "not an HDF5 file" in rep.corrupt[0]
    rep = verify_file(shared_tmp / "missing.h5", COMM)
    assert not rep.ok and "not found" in rep.corrupt[0]
    path, _ = _store(shared_tmp)
    trunc = shared_tmp / "trunc.h5"
    if COMM.rank == 0:
        trunc.write_bytes(Path(path).read_bytes()[: os.path.getsize(path) // 3])
    COMM.Barrier()
    rep = verify_file(trunc, COMM)
    assert not rep.ok, rep.summary()


def test_scalar_digest_and_unprotected(tmp_path):
    """Datasets that cannot be chunked carry a SHA-256 digest; a file without checksums is
    reported as unprotected but readable."""
    p = tmp_path / "x.h5"
    with h5py.File(p, "w") as f:
        d = f.create_dataset("scalar", data=3.25)
        stamp_digest(d)
        f.create_dataset("plain", data=np.arange(10.0))                      # no checksum
        f.create_dataset("checked", data=np.arange(12.0).reshape(4, 3), **dataset_options((4, 3)))
        f.create_dataset("empty", shape=(0, 3))
    rep = verify_file(p, MPI.COMM_SELF)
    assert rep.ok and rep.unprotected == ["/plain"] and rep.digests_checked == 1 and rep.chunks_checked == 1
    with h5py.File(p, "r+") as f:
        f["scalar"][()] = 3.5                          # changed behind the digest's back
    rep = verify_file(p, MPI.COMM_SELF)
    assert not rep.ok and "/scalar" in rep.corrupt[0] and "digest" in rep.corrupt[0]
    assert digest(np.arange(3.0)) != digest(np.arange(3.0).astype(np.float32))
    assert DIGEST_ATTR == "ddrom_sha256"


def test_chunk_shapes():
    assert chunk_shape(()) is None and chunk_shape((0, 3)) is None
    assert chunk_shape((10, 3)) == (10, 3)
    # one step per chunk, rows split evenly below 1 MiB
    ch = chunk_shape((5, 100000, 8, 6), 8, time_major=True)
    assert ch[0] == 1 and ch[2:] == (8, 6) and ch[1] * 8 * 6 * 8 <= 1 << 20
    n_chunks = -(-100000 // ch[1])
    assert n_chunks * ch[1] - 100000 < n_chunks       # no mostly empty last chunk
    assert chunk_shape((7,), time_major=True) == (7,)


def _run(np_: int, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_COMM", "PMIX_", "OMPI_MCA_ess",
                                                                      "OMPI_MCA_orte", "OMPI_FILE"))}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return subprocess.run(["timeout", "120", "mpirun", "-n", str(np_), "--oversubscribe", DDROM, *args],
                          env=env, capture_output=True, text=True)


def test_ddrom_verify_command(tmp_path):
    """`ddrom verify` at 1 and 3 ranks: exit 0 on a good store, 2 naming the damaged dataset."""
    good = tmp_path / "good"
    good.mkdir()
    path, _ = _store_serial(good)
    r = _run(1, "verify", path)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
    flip_byte(path, "/simulations/s0/displacement", (1, 0, 0))
    for np_ in (1, 3):
        r = _run(np_, "verify", path)
        assert r.returncode == 2, r.stdout + r.stderr
        assert r.stdout.count("/simulations/s0/displacement is corrupt") == 1, r.stdout
    r = _run(1, "verify", path, "--quiet")
    assert r.returncode == 2 and r.stdout == "" and "/simulations/s0/displacement" in r.stderr


def _store_serial(folder: Path) -> tuple[str, object]:
    """The store of _store, written by this (single) process."""
    if COMM.size != 1:
        pytest.skip("writes its store on one rank")
    return _store(folder)


@pytest.mark.mpi
def test_parallel_writer_kernel_for_other_files(shared_tmp):
    """What the ROM writer will use: replicated arrays, scalars and a distributed array through
    ParallelH5, committed atomically; verify_file checks them all; a flipped byte is named."""
    from ddrom.io.h5atomic import ParallelH5

    path = shared_tmp / "rom.h5"
    E = np.arange(60.0).reshape(5, 4, 3)
    with ParallelH5.create(path, COMM, "ROM file") as h5:
        g = h5.f.create_group("online")
        h5.write_array(g, "E", E)
        h5.write_array(g, "point_gids", np.arange(5))
        h5.write_array(g, "volume", np.float64(2.5))
        h5.write_array(g, "empty", np.zeros((0, 3)))
        n_per = 7
        d = h5.create_dataset(h5.f, "basis", (n_per * COMM.size, 2))
        h5.write(d, (n_per * COMM.rank, 0), np.full((n_per, 2), float(COMM.rank)))
    assert not os.path.exists(f"{path}.partial") and os.path.exists(path)
    rep = verify_file(path, COMM)
    assert rep.ok and not rep.unprotected and rep.digests_checked == 1, rep.summary()
    if COMM.rank == 0:
        with h5py.File(path, "r") as f:
            assert np.array_equal(f["online/E"][...], E) and f["online/volume"][()] == 2.5
            assert np.array_equal(f["basis"][:, 0], np.repeat(np.arange(COMM.size), n_per).astype(float))
        flip_byte(str(path), "/online/E", (0, 0, 0))
    COMM.Barrier()
    rep = verify_file(path, COMM)
    assert not rep.ok and "/online/E is corrupt" in rep.corrupt[0]


@pytest.mark.mpi
def test_parallel_writer_failure_on_one_rank_leaves_nothing(shared_tmp):
    """An exception on one rank inside the with-block: every rank raises, no file is left."""
    from ddrom.io.h5atomic import ParallelH5
    from ddrom.parallel import CollectiveError

    path = shared_tmp / "out.h5"
    with pytest.raises(CollectiveError, match="ValueError: only on the last rank"):
        with ParallelH5.create(path, COMM, "ROM file") as h5:
            h5.write_array(h5.f, "x", np.ones(3))
            if COMM.rank == COMM.size - 1:
                raise ValueError("only on the last rank")
    COMM.Barrier()
    assert not path.exists() and not Path(f"{path}.partial").exists()
