"""The distributed argmax with owner (ddrom.parallel.argmax): the plain definition, at any partition.

Definition: M = the largest score; among the points with score >= M - tie_rtol |M| the
smallest global id; its owner. Checked against a serial evaluation of that definition on
shuffled, uneven partitions (empty ranks included), with exact duplicates (many near-ties
on one rank: the fallback reductions), near-ties across ranks, excluded points (-inf),
negative scores and nothing to pick.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
from mpi4py import MPI

from ddrom.parallel.argmax import argmax_with_owner

COMM = MPI.COMM_WORLD


def _reference(score: np.ndarray, gid: np.ndarray, tie_rtol: float) -> tuple[float, int]:
    finite = np.isfinite(score)
    if not finite.any():
        return -np.inf, -1
    m = score[finite].max()
    thr = m * (1 - tie_rtol) if m >= 0 else m * (1 + tie_rtol)
    return float(m), int(gid[score >= thr].min())


def _split(n: int, seed: int) -> np.ndarray:
    """This rank's indices of a shuffled, uneven partition of range(n); rank 1 gets none."""
    perm = np.random.default_rng(seed).permutation(n)
    shares = np.array([3, 0, 2, 5, 1][: COMM.size] if COMM.size <= 5 else [1] * COMM.size, dtype=float)
    cuts = np.concatenate(([0], np.round(np.cumsum(shares) / shares.sum() * n))).astype(int)
    return perm[cuts[COMM.rank]:cuts[COMM.rank + 1]]


def _cases():
    rng = np.random.default_rng(7)
    n = 400
    gid = rng.permutation(10 * n)[:n].astype(np.int64)          # unique, unordered ids
    plain = rng.uniform(0, 1, n)
    ties = plain.copy()
    ties[rng.choice(n, 30, replace=False)] = 2.0                # 30 exact ties (> TIES_SENT per rank)
    near = plain.copy()
    near[[5, 77, 300]] = [3.0, 3.0 * (1 - 5e-7), 3.0 * (1 - 2e-6)]   # two inside the window, one out
    excluded = plain.copy()
    excluded[::2] = -np.inf
    negative = -plain - 1.0
    none = np.full(n, -np.inf)
    return gid, {"plain": plain, "ties": ties, "near": near, "excluded": excluded, "negative": negative,
                 "none": none}


@pytest.mark.mpi
@pytest.mark.parametrize("name", ["plain", "ties", "near", "excluded", "negative", "none"])
@pytest.mark.parametrize("sent", [None, 0, 1])
def test_argmax_with_owner_is_the_definition_at_any_partition(monkeypatch, name, sent):
    mod = sys.modules["ddrom.parallel.argmax"]
    if sent is not None:
        monkeypatch.setattr(mod, "TIES_SENT", sent)            # force the fallback reductions
    gid, cases = _cases()
    score = cases[name]
    want_value, want_gid = _reference(score, gid, 1e-6)
    for seed in (0, 1):
        mine = _split(len(score), seed)
        res = argmax_with_owner(COMM, score[mine], gid[mine], 1e-6)
        assert (res.value == want_value) or (np.isinf(want_value) and np.isinf(res.value))
        assert res.gid == want_gid and res.found == (want_gid >= 0)
        if res.found:
            owns = COMM.allgather(bool(np.any(gid[mine] == want_gid)))
            assert owns.index(True) == res.owner
        else:
            assert res.owner == -1
        assert COMM.allgather((res.value, res.gid, res.owner)) == [(res.value, res.gid, res.owner)] * COMM.size
    if name == "near":
        assert want_gid == min(gid[5], gid[77])


@pytest.mark.mpi
def test_farthest_points_partition_independent():
    """Farthest-point sensors on a symmetric point cloud (mirror ties): the same ids at any
    partition as on one process."""
    from ddrom.reduction.coverage import farthest_points

    g = np.linspace(0.0, 1.0, 9)
    xyz = np.array(np.meshgrid(g, g, g[:3], indexing="ij")).reshape(3, -1).T      # symmetric: ties
    gid = (np.arange(len(xyz)) * 3 + 1).astype(np.int64)
    start = np.array([[0.5, 0.5, 0.0]])
    ref, r_ref = farthest_points(xyz, gid, 12, MPI.COMM_SELF, start=start)
    mine = _split(len(xyz), 3)
    got, r = farthest_points(xyz[mine], gid[mine], 12, COMM, start=start)
    assert np.array_equal(got, ref) and r == r_ref and len(ref) == 12
