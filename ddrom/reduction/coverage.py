"""Points spread over a distributed domain: greedy farthest-point sampling.

Sensors that must see a change anywhere (a temperature hot spot at a place no training
field had) cannot be chosen from the training data alone: :func:`farthest_points` picks
``n`` points, each the farthest (Euclidean) from those already chosen (the ``start``
points first), so that every point of the domain lies within the covering radius
``max_g min_s |x_g - x_s|`` of a chosen one. That radius is returned: a feature smaller
than it can fall between the points.

Distributed: each rank keeps the distance of its own points to the chosen set; one pick
is a global argmax carrying (value, global id, owner) -- ties, within a relative 1e-6,
go to the smallest global id (:func:`ddrom.parallel.argmax.argmax_with_owner`), so the
result does not depend on the partition -- then the owner's coordinates are broadcast.
Cost per point: O(G/P) and one small allgather; the start points' distances by a k-d
tree, O((G/P) log S); the covering radius by one reduction at the end (it is only
returned: the picks never needed it).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ddrom.parallel import as_mpi

#: Distances within this (relative) of the largest are ties, broken by the smallest global
#: id (:func:`ddrom.parallel.argmax.argmax_with_owner`). The value Gappy-POD's sampling has
#: always used here (the module borrowed its argmax); its docstring said 1e-12.
TIE_RTOL = 1e-6


def farthest_points(xyz_loc: np.ndarray, gid_loc: np.ndarray, n: int, comm: Any = None,
                    start: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """``n`` global ids chosen by farthest-point sampling, and the final covering radius.

    Parameters
    ----------
    xyz_loc : (G_loc, 3) coordinates of this rank's points
    gid_loc : (G_loc,) their global ids (unique over the ranks)
    n : number of points to choose (fewer if the domain has fewer distinct points)
    start : (S, 3) coordinates of points already chosen (e.g. the ROM's sample points); with
        none, the first point is the one farthest from the centroid of all points
    """
    from ddrom.parallel.argmax import argmax_with_owner

    c = as_mpi(comm)
    x = np.asarray(xyz_loc, dtype=float).reshape(-1, 3)
    gid = np.asarray(gid_loc, dtype=np.int64)
    d = np.full(len(x), np.inf)
    if start is not None and len(start):
        # the distance of each point to its nearest start point: a k-d tree instead of one
        # pass over the points per start point (the enrichment starts from ~100-300 points;
        # each point's value depends only on it and the start set: partition-independent)
        from scipy.spatial import cKDTree

        if len(x):
            d = cKDTree(np.asarray(start, dtype=float).reshape(-1, 3)).query(x)[0]
    else:
        tot = c.allreduce(np.concatenate([x.sum(axis=0), [len(x)]]))
        centroid = tot[:3] / max(tot[3], 1.0)
        d = np.linalg.norm(x - centroid, axis=1)
    chosen: list[int] = []
    first = start is None or not len(start)
    while len(chosen) < n:
        best = argmax_with_owner(c, d, gid, TIE_RTOL)
        g, owner = best.gid, best.owner
        if not best.found or best.value <= 0.0:
            break                          # every point is already chosen
        p = c.bcast(x[np.flatnonzero(gid == g)[0]] if c.rank == owner else None, root=owner)
        chosen.append(g)
        if first:
            d = np.full(len(x), np.inf)
            first = False
        np.minimum(d, np.linalg.norm(x - p, axis=1), out=d)
    radius = float(c.allreduce(float(d.max()) if len(d) else 0.0, op=_max()))
    return np.asarray(chosen, dtype=np.int64), radius


def _max():
    from mpi4py import MPI

    return MPI.MAX


def covering_radius(xyz_loc: np.ndarray, points: np.ndarray, comm: Any = None) -> float:
    """``max_g min_s |x_g - x_s|`` over the points of all ranks (``xyz_loc`` this rank's) and
    the replicated ``points`` (S, 3): a k-d tree on ``points``, one MAX reduction (exact:
    the same value for any partition)."""
    from scipy.spatial import cKDTree

    c = as_mpi(comm)
    x = np.asarray(xyz_loc, dtype=float).reshape(-1, 3)
    pts = np.asarray(points, dtype=float).reshape(-1, 3)
    d = cKDTree(pts).query(x)[0] if len(x) and len(pts) else np.full(len(x), np.inf)
    return float(c.allreduce(float(d.max()) if len(d) else 0.0, op=_max()))
