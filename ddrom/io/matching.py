"""Matching the rows of external result files (nodes or cells) to the case mesh, and
routing them to the distributed layout.

Rows and natural ids
--------------------
An external file holds *rows*: its points (nodal values) or its cells (cell values).
Some ranks hold rows (rank 0 for a single file, every rank for the pieces of a parallel
VTU it reads); :func:`match_rows` gives each row the **natural id** of the case node
(or cell) it is, and a :class:`Router` then moves per-step values of the rows to the
ranks that hold that natural id in their natural slice (``NaturalMap.natural_range``,
one ``Alltoallv``) and on to the owned (PETSc) layout (``NaturalMap.from_natural``).

Matching rule (``mode``)
------------------------
``keep``
    The file's rows are the case's items in the case's natural order (the order of the
    mesh file or generator): same count and ``|x_row_i - x_case_i| <= tol`` for every i.
``coordinates``
    Each row is matched to the nearest case item (``scipy.spatial.cKDTree``) and must
    be within ``tol`` of it, with no second case item within ``tol`` (else the tolerance
    is larger than the mesh spacing: ambiguous); every case item must be matched, and,
    for a single file, by exactly one row (one-to-one; pieces of a parallel file may
    repeat their interface nodes).
``auto`` (default)
    ``keep`` when it holds (single file, same count and order), else ``coordinates``.

``tol = coord_rtol * D`` with ``D`` the diagonal of the case mesh's bounding box; the
default ``coord_rtol`` (1e-6) suits files written in double precision or ASCII with
enough digits; single-precision files need ~1e-6 relative to the coordinates' size.
Items compared are node coordinates for nodes and the mean of the cell's node
coordinates for cells (unique for a valid mesh).

Memory: the matching is done once per series on rank 0, which gathers the case's
coordinates (N x 3) and the file's rows (M x 3): the same order of size as the file that
rank 0 reads for a single-file series. Per-step values never pass through rank 0 for
parallel files.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ddrom.parallel import CollectiveError, DdromError, as_mpi, describe_exception, raise_collective

MODES = ("auto", "keep", "coordinates")


def case_node_coordinates(dm: Any) -> np.ndarray:
    """This rank's natural slice of the case's node coordinates (n_nat, 3) (collective)."""
    return dm.natural_nodes.to_natural(dm.coords[: dm.n_owned])


def case_cell_centroids(dm: Any) -> np.ndarray:
    """This rank's natural slice of the case's cell centroids (mean of the node coordinates)."""
    return dm.natural_cells.to_natural(dm.coords[dm.cells].mean(axis=1))


def bbox_diagonal(comm: Any, x_local: np.ndarray) -> float:
    """Diagonal of the bounding box of points distributed over ``comm`` (collective)."""
    from mpi4py import MPI

    c = as_mpi(comm)
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    if len(x_local):
        lo, hi = x_local.min(axis=0), x_local.max(axis=0)
    c.Allreduce(MPI.IN_PLACE, lo, op=MPI.MIN)
    c.Allreduce(MPI.IN_PLACE, hi, op=MPI.MAX)
    return float(np.linalg.norm(hi - lo))


@dataclass
class Match:
    """Result of :func:`match_rows` on this rank.

    natural_ids : (m,) int64, the natural id of each of this rank's rows
    method : "identity" (rows kept in their order) or "coordinates"
    max_distance : max over rows of |x_row - x_case| (same on every rank)
    tolerance : the absolute tolerance used
    """

    natural_ids: np.ndarray
    method: str
    max_distance: float
    tolerance: float


def _fmt(x: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in x) + ")"


def _match_on_root(X_file: np.ndarray, X_case: np.ndarray, mode: str, tol: float, single: bool,
                   what: str, source: str, hint: str) -> tuple[np.ndarray, str, float]:
    """Rank-0 work of :func:`match_rows`; raises DdromError with the reason."""
    M, N = len(X_file), len(X_case)
    if single and M != N:
        raise DdromError(f"{source}: {M} {what}s, the case mesh has {N}; {hint}")
    if not single and M < N:
        raise DdromError(f"{source}: the pieces hold {M} {what}s, fewer than the case mesh's {N}; {hint}")
    if mode in ("keep", "auto") and single:
        d = np.linalg.norm(X_file - X_case, axis=1) if N else np.zeros(0)
        dmax = float(d.max()) if N else 0.0
        if dmax <= tol:
            return np.arange(N, dtype=np.int64), "identity", dmax
        if mode == "keep":
            i = int(d.argmax())
            raise DdromError(
                f"{source}: {what} coordinates differ from the case mesh's by up to {dmax:.3e} "
                f"({what} {i} in natural order; tolerance {tol:.3e}). With --node-order keep the series "
                "must be written on the case mesh's nodes in the same order (the natural order of the "
                "mesh file or generator); --node-order auto or coordinates matches them by coordinates")
    from scipy.spatial import cKDTree

    tree = cKDTree(X_case)
    k = 2 if N > 1 else 1
    d, j = tree.query(X_file, k=k)
    d, j = d.reshape(M, k), j.reshape(M, k)
    far = d[:, 0] > tol
    if far.any():
        i = int(np.argmax(d[:, 0]))
        raise DdromError(
            f"{source}: {int(far.sum())} of its {M} {what}s are farther than the tolerance {tol:.3e} "
            f"from every {what} of the case mesh, e.g. {what} {i} at {_fmt(X_file[i])}: nearest case "
            f"{what} {int(j[i, 0])} at {_fmt(X_case[j[i, 0]])}, distance {d[i, 0]:.3e}. The results are "
            f"not on the case mesh (another mesh, units or position?); {hint}")
    if k == 2:
        amb = d[:, 1] <= tol
        if amb.any():
            i = int(np.flatnonzero(amb)[0])
            raise DdromError(
                f"{source}: the tolerance {tol:.3e} is not below the mesh spacing: {what} {i} at "
                f"{_fmt(X_file[i])} is within it of case {what}s {int(j[i, 0])} and {int(j[i, 1])}; "
                "give a smaller --coord-rtol")
    ids = j[:, 0].astype(np.int64)
    hits = np.bincount(ids, minlength=N)
    if (hits == 0).any():
        n = int(np.flatnonzero(hits == 0)[0])
        raise DdromError(f"{source}: {int((hits == 0).sum())} case {what}s have no counterpart in the "
                         f"results, e.g. case {what} {n} at {_fmt(X_case[n])}; {hint}")
    if single and (hits > 1).any():
        n = int(np.flatnonzero(hits > 1)[0])
        rows = np.flatnonzero(ids == n)[:3].tolist()
        raise DdromError(f"{source}: case {what} {n} at {_fmt(X_case[n])} is matched by several {what}s "
                         f"of the file ({rows}): duplicated {what}s; the node matching must be one-to-one")
    return ids, "coordinates", float(d[:, 0].max()) if M else 0.0


def match_rows(comm: Any, rows: np.ndarray, case_slice: np.ndarray, diagonal: float, *,
               mode: str = "auto", coord_rtol: float = 1e-6, single: bool = True,
               what: str = "node", source: str = "", hint: str = "") -> Match:
    """Natural ids of this rank's rows (collective); see the module doc for the rule.

    Parameters
    ----------
    rows : (m, 3) this rank's row coordinates (empty on ranks that read nothing)
    case_slice : (n_nat, 3) this rank's natural slice of the case coordinates
        (:func:`case_node_coordinates` or :func:`case_cell_centroids`)
    diagonal : bounding-box diagonal of the case mesh; ``tol = coord_rtol * diagonal``
    single : rows come from one file in one order (rank 0); False for pieces
    what, source, hint : for the error messages

    Raises
    ------
    CollectiveError
        On every rank, with rank 0's message: count mismatch, coordinates beyond the
        tolerance, ambiguous tolerance, case items without a row, duplicated rows.
    """
    c = as_mpi(comm)
    if mode not in MODES:
        raise CollectiveError(f"node matching mode {mode!r}: expected one of {MODES}")
    tol = coord_rtol * diagonal
    rows = np.asarray(rows, dtype=float).reshape(-1, 3)
    counts = c.gather(len(rows), root=0)
    X_file = c.gather(rows, root=0)
    X_case = c.gather(np.asarray(case_slice, dtype=float).reshape(-1, 3), root=0)
    msg, out = None, None
    if c.rank == 0:
        try:
            ids, method, dmax = _match_on_root(np.concatenate(X_file), np.concatenate(X_case), mode, tol,
                                               single, what, source, hint)
            out = (np.split(ids, np.cumsum(counts)[:-1]), method, dmax)
        except BaseException as exc:  # noqa: BLE001 - the other ranks wait for rank 0's verdict
            msg = describe_exception(exc, f"{source}: matching {what}s")
        del X_file, X_case
    raise_collective(c, msg)
    method, dmax = c.bcast((out[1], out[2]) if c.rank == 0 else None, root=0)
    ids = c.scatter(out[0] if c.rank == 0 else None, root=0)
    return Match(np.asarray(ids, dtype=np.int64), method, float(dmax), tol)


class Router:
    """Moves per-row values held on some ranks to the owned layout of ``nmap`` (collective).

    Built once from each rank's rows' natural ids; :meth:`route` then costs one
    ``Alltoallv`` (rows to the rank whose natural slice holds them) and one PETSc
    scatter (natural slice -> owned). A natural id held by several rows (interface nodes
    repeated by pieces) takes the value of one of them.
    """

    def __init__(self, comm: Any, nmap: Any, natural_ids: np.ndarray, source: str = "", what: str = "node"):
        from mpi4py import MPI

        c = as_mpi(comm)
        self._c, self.nmap = c, nmap
        ids = np.asarray(natural_ids, dtype=np.int64)
        his = np.array([hi for _, hi in c.allgather(nmap.natural_range)], dtype=np.int64)
        dest = np.searchsorted(his, ids, side="right")
        self._order = np.argsort(dest, kind="stable")
        self._send = np.bincount(dest, minlength=c.size).astype(np.int64)
        self._recv = np.empty(c.size, dtype=np.int64)
        c.Alltoall(self._send, self._recv)
        lo, hi = nmap.natural_range
        got = np.empty(int(self._recv.sum()), dtype=np.int64)
        c.Alltoallv([ids[self._order], (self._send, _displs(self._send)), MPI.INT64_T],
                    [got, (self._recv, _displs(self._recv)), MPI.INT64_T])
        self._idx = got - lo
        covered = np.zeros(hi - lo, dtype=bool)
        covered[self._idx] = True
        missing = int(hi - lo - covered.sum())
        first = int(lo + np.flatnonzero(~covered)[0]) if missing else -1
        total = c.allreduce(missing)
        if total:
            first = min(v for v in c.allgather(first) if v >= 0)
            raise CollectiveError(f"{source}: {total} {what}s of the case mesh get no value (e.g. natural "
                             f"{what} {first})")

    def route(self, values: np.ndarray, ncomp: int) -> np.ndarray:
        """(m, ncomp) values of this rank's rows -> (n_owned, ncomp) owned values."""
        from mpi4py import MPI

        c = self._c
        v = np.ascontiguousarray(np.asarray(values, dtype=float).reshape(-1, ncomp)[self._order])
        got = np.empty((int(self._recv.sum()), ncomp))
        c.Alltoallv([v, (self._send * ncomp, _displs(self._send) * ncomp), MPI.DOUBLE],
                    [got, (self._recv * ncomp, _displs(self._recv) * ncomp), MPI.DOUBLE])
        lo, hi = self.nmap.natural_range
        out = np.zeros((hi - lo, ncomp))
        out[self._idx] = got
        return self.nmap.from_natural(out).reshape(-1, ncomp)


def _displs(counts: np.ndarray) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
