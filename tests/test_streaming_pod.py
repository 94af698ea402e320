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
