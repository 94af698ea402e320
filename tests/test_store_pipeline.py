"""The snapshot store's layout options through the workflow (``[output]`` of a case), at 1 and 3 ranks.

* the offline stage on a compressed store builds the same ROM file, bit for bit, as on an
  uncompressed one (the compression is lossless, and nothing else differs);
* ``[output] store_state``: the internal variables are stored only when asked, a store
  without them is recomputed by ``ddrom hf`` when a case asks for them, and reading them
  from a store without them is one clear error on every rank.
"""
from __future__ import annotations

import h5py
import numpy as np
import pytest
from mpi4py import MPI

import ddrom  # noqa: F401  (environment before h5py)
from ddrom.parallel import DdromError
from helpers import PLASTIC_LAW, write_bar_case

COMM = MPI.COMM_WORLD


def _case(folder, name: str, output: str) -> str:
    """The plastic bar of test_rom, trained at A = 0.5 and 2, no test points, with ``output``
    (an ``[output]`` table) after its ``[rom]`` keys."""
    return write_bar_case(folder, COMM, name, PLASTIC_LAW, pod_tol=1e-6, ecm_tol=1e-8, test=(),
                          extra_rom="\n" + output)


def _datasets(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return sorted(names)


def _transcode(src: str, dst: str, dm, options) -> None:
    """Write the simulations of store ``src`` again, with ``options``, as store ``dst``."""
    from ddrom.io.store import SnapshotStore

    with SnapshotStore.open(src, COMM, dmesh=dm) as a:
        b = SnapshotStore.create(dst, dm, state_names=a.state_names, case_hash=a.case_hash, comm=COMM,
                                 options=options)
        for s in a.simulations():
            w = b.add_simulation(s.name, s.params, s.n_steps)
            t = a.read_times(s.name)
            for k in range(s.n_steps + 1):
                w.write_step(k, float(t[k]), a.read_displacement(s.name, k, dm), a.read_qp(s.name, "stress", k, dm),
                             a.read_qp(s.name, "p", k, dm), None)
            w.finish()
        b.finalize()


@pytest.mark.mpi
def test_offline_on_a_compressed_store_equals_uncompressed(shared_tmp):
    """The same HF snapshots (one HF run: two runs at 3 ranks differ by round-off), stored
    uncompressed and compressed: the offline stage builds the same ROM file, bit for bit."""
    import os

    from ddrom.io.store import StoreOptions
    from ddrom.workflow.build import build_mesh, load_case_collectively
    from ddrom.workflow.hf import hf_sweep, store_path
    from ddrom.workflow.rom import build_rom

    path = _case(shared_tmp, "c", '[output]\ncompression = "none"')
    hf_sweep(path, COMM)
    case = load_case_collectively(path, COMM)
    dm = build_mesh(case, COMM)
    spath = str(store_path(case, "training"))
    plain = spath.replace(".h5", "_none.h5")
    roms = {c: shared_tmp / f"rom_{c}.h5" for c in ("none", "gzip-1")}
    build_rom(case, COMM, path=roms["none"])
    if COMM.rank == 0:
        os.replace(spath, plain)
    COMM.Barrier()
    _transcode(plain, spath, dm, StoreOptions(compression="gzip-1"))
    build_rom(case, COMM, path=roms["gzip-1"])
    msg = None
    if COMM.rank == 0:
        try:
            with h5py.File(plain, "r") as a, h5py.File(spath, "r") as b:
                assert a.attrs["compression"] == "none" and b.attrs["compression"] == "gzip-1"
                assert b["simulations/train_001/stress"].compression == "gzip"
                assert "state" not in a["simulations/train_000"]                 # not stored by default
                assert _datasets(a) == _datasets(b)
                for n in _datasets(a):
                    assert a[n][...].tobytes() == b[n][...].tobytes(), n
                size = [sum(f[n].id.get_storage_size() for n in _datasets(f)) for f in (a, b)]
                assert size[1] < 0.8 * size[0], size
            with h5py.File(roms["none"], "r") as a, h5py.File(roms["gzip-1"], "r") as b:
                assert _datasets(a) == _datasets(b) and len(_datasets(a)) > 10
                for n in _datasets(a):
                    x, y = a[n][...], b[n][...]
                    assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), n
        except Exception as exc:  # noqa: BLE001 - reported on every rank
            msg = f"{type(exc).__name__}: {exc}"
    msg = COMM.bcast(msg, root=0)
    assert msg is None, msg


@pytest.mark.mpi
def test_store_state_on_request_and_recomputed_when_missing(shared_tmp):
    from ddrom.io.store import SnapshotStore
    from ddrom.workflow.build import build_mesh, load_case_collectively
    from ddrom.workflow.hf import hf_sweep, store_path, store_up_to_date

    path = _case(shared_tmp, "st", "")
    hf_sweep(path, COMM)
    case = load_case_collectively(path, COMM)
    dm = build_mesh(case, COMM)
    spath = store_path(case, "training")
    with SnapshotStore.open(spath, COMM, dmesh=dm) as st:
        assert not st.state_stored and st.compression == "gzip-1" and len(st.state_names) == 13
        with pytest.raises(DdromError) as info:
            st.read_qp("train_000", "state", 2, dm)
        msg = str(info.value)
        assert msg.startswith(f"snapshot store {spath}: the internal variables (state, 13 per integration point) "
                              "were not stored") and "store_state = true" in msg, msg
        assert COMM.allgather(msg) == [msg] * COMM.size
        p_before = st.read_block("p", dm)
    assert store_up_to_date(spath, case, COMM, "training")
    # the same case asking for the internal variables: the store is not up to date any more
    # (its hash is the same: [output] is outside it), and the HF stage writes them
    if COMM.rank == 0:
        text = open(path).read().replace("\n[training]", "[output]\nstore_state = true\n\n[training]")
        open(path, "w").write(text)
    COMM.Barrier()
    case2 = load_case_collectively(path, COMM)
    assert case2.store_hash("training") == case.store_hash("training")
    assert not store_up_to_date(spath, case2, COMM, "training")
    hf_sweep(path, COMM)
    with SnapshotStore.open(spath, COMM, dmesh=dm) as st:
        assert st.state_stored
        # the state's last component is p (Chaboche), the cumulated plastic strain stored as p
        S = st.read_block("state", dm)
        assert S.shape[0] == dm.n_cells * dm.n_qp * 13
        np.testing.assert_array_equal(S.reshape(dm.n_cells, dm.n_qp, 13, -1)[:, :, 12, :].reshape(-1, S.shape[1]),
                                      st.read_block("p", dm))
        # the same simulations again (bitwise at 1 rank; at 3, two HF runs differ by round-off)
        np.testing.assert_allclose(st.read_block("p", dm), p_before, rtol=1e-8, atol=1e-12 * np.abs(p_before).max())
    assert store_up_to_date(spath, case2, COMM, "training")
