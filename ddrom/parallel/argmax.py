"""The distributed argmax with its owner: one greedy pick, the same on every rank and partition.

Greedy selections over distributed points -- the ECM's next point, a Q-DEIM or
D-optimal sample, the farthest point of a covering -- each need, at every iteration,
the point of largest score over all ranks, its global id and the rank that owns it (to
broadcast its data). :func:`argmax_with_owner` is that reduction, shared by
:mod:`ddrom.reduction.ecm`, :mod:`ddrom.reduction.gappy` and
:mod:`ddrom.reduction.coverage`.

Near-ties decide partition independence. Scores that are equal in exact arithmetic
(mirror points of a symmetric part) differ by round-off that can depend on where a row
sits; the largest value alone would then pick a different point at another rank count.
So every score within ``tie_rtol`` (relative) of the maximum is a tie, and the tie goes
to the smallest global id: the choice depends on the scores only through that window.

Communication: one ``Allgather`` of ``[m_r, n_r, (score, gid) x TIES_SENT]`` per call
(each rank's maximum and its own near-ties, the only points that can qualify against
the global maximum: the threshold ``f(x) = x - tie_rtol |x|`` is increasing, so a point
with ``score >= f(M)`` has ``score >= f(m_r)`` since ``M >= m_r``). When a rank has more
near-ties than it sent and none of those qualifies, every rank falls back to two small
reductions (min gid; owner), so the result is always the same as the plain definition.
Global ids travel as float64: exact below 2**53.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ddrom.parallel.comm import as_mpi

__all__ = ["ArgMax", "argmax_with_owner", "TIES_SENT"]

#: Near-tie candidates each rank sends with its maximum.
TIES_SENT = 8


@dataclass(frozen=True)
class ArgMax:
    """The result of :func:`argmax_with_owner` (identical on every rank).

    Attributes
    ----------
    value : the largest score over all ranks (``-inf`` when no rank has a finite score).
    gid : the smallest global id among the scores within the tie window of ``value``
        (-1 when there is none).
    owner : the rank holding ``gid`` (-1 when there is none).
    """

    value: float
    gid: int
    owner: int

    @property
    def found(self) -> bool:
        """A finite maximum was found (``gid`` and ``owner`` are valid)."""
        return self.gid >= 0


def tie_threshold(m: float, tie_rtol: float) -> float:
    """``m - tie_rtol |m|``, written ``m (1 -+ tie_rtol)`` (the ECM's historical rounding)."""
    return m * (1.0 - tie_rtol) if m >= 0 else m * (1.0 + tie_rtol)


def argmax_with_owner(comm: Any, score: np.ndarray | None, gid: np.ndarray, tie_rtol: float = 1e-6,
                      local_max: float | None = None) -> ArgMax:
    """Global maximum of distributed per-point scores, its point and owner (collective).

    Parameters
    ----------
    comm
        Communicator (every rank calls).
    score
        (G_loc,) this rank's scores (``-inf`` excludes a point; None or empty: none).
    gid
        (G_loc,) global ids of these points, unique over the ranks and independent of the
        partition (natural ids).
    tie_rtol
        Scores ``>= M - tie_rtol |M|`` (``M`` the global maximum) are ties, broken by the
        smallest global id.
    local_max
        ``max(score)`` if the caller already has it (saves a pass).

    Returns
    -------
    ArgMax
        ``(value, gid, owner)``, the same on every rank for any partition of the same
        scores.
    """
    from mpi4py import MPI

    c = as_mpi(comm)
    k = TIES_SENT
    sc = None if score is None else np.asarray(score, dtype=float).reshape(-1)
    if sc is not None and sc.size == 0:
        sc = None
    gid = np.asarray(gid).reshape(-1)
    m = -math.inf if sc is None else float(sc.max() if local_max is None else local_max)
    buf = np.full(2 + 2 * k, -math.inf)
    buf[0], buf[1] = m, 0.0
    if sc is not None and math.isfinite(m):
        near = np.flatnonzero(sc >= tie_threshold(m, tie_rtol))
        near = near[np.argsort(gid[near], kind="stable")]
        buf[1] = float(near.size)
        take = near[:k]
        buf[2:2 + 2 * take.size:2] = sc[take]
        buf[3:3 + 2 * take.size:2] = gid[take].astype(np.float64)
    allb = np.empty((c.size, buf.size))
    c.Allgather(buf, allb)
    m_glob = float(allb[:, 0].max())
    if not math.isfinite(m_glob):
        return ArgMax(m_glob, -1, -1)
    thr = tie_threshold(m_glob, tie_rtol)
    big = np.iinfo(np.int64).max
    best, owner, unknown = big, -1, False
    for r in range(c.size):
        n = int(allb[r, 1])
        sco, ids = allb[r, 2:2 + 2 * min(n, k):2], allb[r, 3:3 + 2 * min(n, k):2]
        q = ids[sco >= thr]
        if q.size:
            g = int(q.min())
            if g < best:
                best, owner = g, r
        elif n > k and allb[r, 0] >= thr:
            unknown = True
    if unknown:                                  # rare: many near-ties on one rank
        cand = gid[sc >= thr] if sc is not None else gid[:0]
        gmin = int(cand.min()) if cand.size else big
        best = int(c.allreduce(gmin, op=MPI.MIN))
        owner = int(c.allreduce(c.rank if gmin == best else c.size, op=MPI.MIN))
    return ArgMax(m_glob, int(best), int(owner))
