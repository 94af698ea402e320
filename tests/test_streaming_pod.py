"""Streaming POD (ddrom.reduction.streaming): incremental SVD against the batch POD,
error bounds, memory O(n N), HAPOD bound, bad input. Global data from a seed, uneven
row partitions; gathered matrices used in the tests only."""
import numpy as np
import pytest
from mpi4py import MPI

import ddrom  # noqa: F401
from ddrom.parallel import DdromError
from ddrom.reduction import Diagonal, Euclidean, pod
from ddrom.reduction.streaming import IncrementalPOD, hapod


from helpers import cuts, gather, local  # noqa: E402  (uneven row partitions)

pytestmark = pytest.mark.slow


def trajectory(n=600, m=240, seed=0):
    """Snapshots with geometric spectrum 0.75^i plus noise of relative size 1e-10."""
    rng = np.random.default_rng(seed)
    s = 0.75 ** np.arange(m)
    U, _ = np.linalg.qr(rng.standard_normal((n, m)))
    V, _ = np.linalg.qr(rng.standard_normal((m, m)))
    return (U * s) @ V.T


@pytest.mark.mpi
@pytest.mark.parametrize("block", [1, 7])
@pytest.mark.parametrize("weighted", [False, True])
def test_incremental_matches_batch_within_tolerance(block, weighted):
    comm = MPI.COMM_WORLD
    S = trajectory()
    n, m = S.shape
    w = np.random.default_rng(5).uniform(0.5, 2.0, n) if weighted else np.ones(n)
    inner = Diagonal(local(w, comm)) if weighted else Euclidean()
    eps = 1e-5
    ip = IncrementalPOD(comm, inner, eps=eps)
    S_loc = local(S, comm)
    for j in range(0, m, block):
        ip.update(S_loc[:, j] if block == 1 else S_loc[:, j:j + block])
    r = ip.result()
    batch = pod(S_loc, comm, inner, rtol=0.0)
    W = np.sqrt(w)[:, None]
    normS = np.linalg.norm(W * S)
    tol = eps * normS
    assert r.info["tolerance"] == pytest.approx(tol, rel=1e-12)
    # Projection error of every snapshot onto the streamed basis (M-orthogonal projection).
    Psi = gather(r.modes_loc, comm)
    E = S - Psi @ (Psi.T @ (w[:, None] * S))
    err = np.linalg.norm(W * E)
    assert err <= r.info["error_bound"] * (1 + 1e-8) + 1e-12 * normS
    assert r.info["error_bound"] <= tol
    assert np.max(np.linalg.norm(W * E, axis=0)) <= tol
    # Not more modes than needed: the batch POD needs N_b modes for the same tolerance.
    N_b = int(np.count_nonzero(np.cumsum(batch.sigma_all[::-1] ** 2)[::-1] > tol ** 2))
    assert N_b <= r.n_modes <= N_b + 2
    # Singular values: Weyl, |s_i - sigma_i| <= error bound.
    k = r.n_modes
    assert np.max(np.abs(r.sigma - batch.sigma_all[:k])) <= r.info["error_bound"] + 1e-12
    assert r.info["orth_err"] <= 1e-12
    assert r.info["n_snapshots"] == m


@pytest.mark.mpi
def test_memory_is_bounded_by_the_rank():
    """Rank-6 snapshots, m = 400: the state never holds more than N + b columns."""
    comm = MPI.COMM_WORLD
    rng = np.random.default_rng(2)
    n, m, k = 300, 400, 6
    S = rng.standard_normal((n, k)) @ rng.standard_normal((k, m))
    S_loc = local(S, comm)
    ip = IncrementalPOD(comm, eps=1e-10)
    widths = []
    for j in range(m):
        ip.update(S_loc[:, j])
        widths.append(ip.U.shape[1])
    assert max(widths) == k
    r = ip.result()
    ref = np.linalg.svd(S, compute_uv=False)[:k]
    assert np.allclose(r.sigma, ref, rtol=1e-10)


@pytest.mark.mpi
def test_max_modes_and_reported_bound():
    comm = MPI.COMM_WORLD
    S = trajectory(400, 120, seed=3)
    ip = IncrementalPOD(comm, eps=0.0, max_modes=10)
    S_loc = local(S, comm)
    for j in range(0, 120, 10):
        ip.update(S_loc[:, j:j + 10])
    r = ip.result()
    assert r.n_modes == 10
    Psi = gather(r.modes_loc, comm)
    err = np.linalg.norm(S - Psi @ (Psi.T @ S))
    assert err <= r.info["error_bound"] * (1 + 1e-8)
    best = np.sqrt(np.sum(np.linalg.svd(S, compute_uv=False)[10:] ** 2))
    assert best <= err <= 1.5 * best          # close to the optimal rank-10 error


@pytest.mark.mpi
def test_hapod_bound_holds():
    comm = MPI.COMM_WORLD
    S = trajectory(500, 200, seed=4)
    l2 = 1e-4 * np.linalg.norm(S)
    S_loc = local(S, comm)
    r = hapod((S_loc[:, j:j + 20] for j in range(0, 200, 20)), 10, comm, l2_err=l2)
    Psi = gather(r.modes_loc, comm)
    err = np.linalg.norm(S - Psi @ (Psi.T @ S))
    assert err <= r.info["error_bound"] * (1 + 1e-8) <= l2 * (1 + 1e-8)
    batch = pod(S_loc, comm, rtol=0.0, l2_err=l2)
    assert batch.n_modes <= r.n_modes <= batch.n_modes + 3


@pytest.mark.mpi
def test_bad_input_streaming():
    comm = MPI.COMM_WORLD
    S_loc = local(trajectory(200, 10), comm)
    ip = IncrementalPOD(comm, name="velocity")
    with pytest.raises(DdromError, match="'velocity'.*no snapshot"):
        ip.result()
    ip.update(S_loc[:, :3])
    bad = S_loc[:, 3].copy()
    if comm.rank == comm.size - 1:
        bad[0] = np.nan
    with pytest.raises(DdromError, match=r"'velocity'.*NaN or Inf \(columns \[0\]\)"):
        ip.update(bad)
    with pytest.raises(DdromError, match="'velocity'.*empty snapshot block"):
        ip.update(S_loc[:, :0])
    with pytest.raises(DdromError, match="'velocity'.*local rows"):
        ip.update(S_loc[:-1, 3:5] if comm.rank == 0 else S_loc[:, 3:5])
    ip.update(S_loc[:, 3:])                   # still usable, still collective
    assert ip.result().info["n_snapshots"] == 10


# ------------------------------------------------------------ fed by the HF sweep
HF_CASE = """
[case]
name = "stream_hf"

[mesh]
generator = "box"
args = { lx = 4.0, ly = 1.0, lz = 1.0, nx = 6, ny = 2, nz = 2 }
partitioner = "rcb"

[material]
law = "j2"
E = 200e3
nu = 0.3
sigma_y = 120.0
H = 2000.0
C = 20e3

[parameters]
A = { min = 0.5, max = 2.0, default = 1.0 }

[time]
t_end = 2.0
n_steps = 4

[loads]
dirichlet = [{ region = "xmin", components = ["x", "y", "z"] }]
traction = [{ region = "xmax", vector = ["90 * A * tri(t, 2)", 0.0, "-3 * A * ramp(t, 1)"] }]

[solver]
newton_rtol = 1e-10

[rom]
pod_tol = 1e-7
pod_method = "streaming"
stream_during_hf = true

[training]
values = [{ A = 0.5 }, { A = 1.2 }, { A = 2.0 }]
"""


def _shared_dir(tmp_path, comm):
    return comm.bcast(str(tmp_path) if comm.rank == 0 else None, root=0)


def _offline_context(path, comm):
    from ddrom.workflow.build import build_loads, build_mesh, load_case_collectively
    from ddrom.workflow.options import solver_options
    from ddrom.workflow.hf import store_path
    from ddrom.hf.solver import HFSolver
    from ddrom.io.store import SnapshotStore
    from ddrom.materials import from_config
    from ddrom.rom.offline import OfflineOptions

    case = load_case_collectively(path, comm)
    dm = build_mesh(case, comm)
    solver = HFSolver(dm, from_config(case.raw["material"]),
                      build_loads(case, case.training_parameters()[0], dm), solver_options(case))
    store = SnapshotStore.open(store_path(case, "training"), comm, mode="r", dmesh=dm)
    return case, dm, solver, store, OfflineOptions(pod_tol=1e-7, pod_method="streaming")


@pytest.mark.mpi
def test_streaming_pod_fed_by_the_hf_sweep_equals_the_store_fed_one(tmp_path):
    """rom.stream_during_hf: the HF sweep feeds the incremental POD step by step and saves
    its state after each simulation; interrupted twice (once as if it crashed between the
    store's finish and the state's save), resumed, it ends with the same POD as the
    offline stage streaming the store: modes up to sign, singular values to round-off,
    every snapshot counted once."""
    import json
    from pathlib import Path

    import h5py

    from ddrom.workflow.hf import hf_sweep
    from ddrom.rom.offline import _streaming_displacement_pod, hf_stream_path

    comm = MPI.COMM_WORLD
    folder = Path(_shared_dir(tmp_path, comm))
    path = folder / "stream_hf.toml"
    if comm.rank == 0:
        path.write_text(HF_CASE)
    comm.Barrier()
    state = folder / "out" / "stream_hf" / "hf_training.pod_stream.h5"

    def saved_sims():
        comm.Barrier()
        with h5py.File(state, "r", driver="mpio", comm=comm) as f:
            return [s for s, _ in json.loads(f.attrs["meta"])["simulations"]]

    s1 = hf_sweep(str(path), comm, max_simulations=1)
    assert not s1["sets"]["training"]["complete"]
    assert saved_sims() == ["train_000"]
    # a crash after the store's finish and before the state's rename: no state at all
    if comm.rank == 0:
        state.unlink()
    comm.Barrier()
    hf_sweep(str(path), comm, max_simulations=1)        # catches up train_000
    assert saved_sims() == ["train_000", "train_001"]
    s3 = hf_sweep(str(path), comm)                        # resumes from the state
    assert s3["sets"]["training"]["complete"] and s3["sets"]["training"]["computed"] == 1
    assert saved_sims() == ["train_000", "train_001", "train_002"]
    assert not Path(str(state) + ".tmp").exists()

    case, dm, solver, store, opts = _offline_context(str(path), comm)
    try:
        assert hf_stream_path(store.path) == state
        r_hf = _streaming_displacement_pod(solver, store, None, opts)
        r_st = _streaming_displacement_pod(solver, store, None, opts, use_hf_state=False)
        assert r_hf.info["fed_by"] == "hf" and r_st.info["fed_by"] == "store"
        assert r_hf.info["n_snapshots"] == r_st.info["n_snapshots"] == 3 * 5   # no double count
        assert r_hf.n_modes == r_st.n_modes >= 3
        np.testing.assert_allclose(r_hf.sigma, r_st.sigma, rtol=1e-12, atol=1e-14 * r_st.sigma[0])
        assert r_hf.info["error_bound"] == pytest.approx(r_st.info["error_bound"], rel=1e-8)
        A, B = gather(r_hf.modes_loc, comm), gather(r_st.modes_loc, comm)
        signs = np.sign(np.sum(A * B, axis=0))
        np.testing.assert_allclose(A * signs, B, atol=1e-9)
        # inconsistent requests fall back to the store, saying why
        other = _streaming_displacement_pod(solver, store, ["train_000", "train_002"], opts)
        assert other.info["fed_by"] == "store" and "other simulations" in other.info["hf_state"]
        opts.pod_tol = 1e-6
        other = _streaming_displacement_pod(solver, store, None, opts)
        assert other.info["fed_by"] == "store" and "other tolerances" in other.info["hf_state"]
    finally:
        store.close()
