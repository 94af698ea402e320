"""Streaming POD: incremental SVD (Brand) and a hierarchical approximate POD (HAPOD).

Snapshots arrive one time step (or one block) at a time, from the HF solver or from
the store; only a rank-``N`` factorization ``U diag(s)`` is kept (``U`` row-distributed
like the snapshots, ``M``-orthonormal), so memory is ``O(n (N + b))`` for blocks of
``b`` snapshots whatever the total number ``m`` of snapshots.

Update with a block ``B`` (Brand 2002/2006, in the ``M`` inner product):

1. project and orthogonalize the residual twice: ``B = U C + Q R`` by classical
   Gram-Schmidt applied twice per column (:func:`ddrom.reduction.pod.cgs2`);
   residual columns below ``eps ||b_j||_M`` (already in the span) are dropped;
2. SVD of the small bordered matrix ``K = [[diag(s), C], [0, R]] = U_K S_K V_K^T``;
3. ``U <- [U, Q] U_K[:, :N]``, ``s <- diag(S_K)[:N]`` with ``N`` from
   :func:`ddrom.reduction.pod.truncate`.

Error bound. Each truncation discards ``d_t^2 = sum_{i>N} S_K,ii^2``. The discarded
pieces have mutually orthogonal row spaces (in snapshot space), hence for the final
basis ``||S - U U^T M S||_F^2 <= sum_t d_t^2 =: discarded``. The truncation of each
update is given the remaining budget ``tol^2 - discarded`` where ``tol`` is
``max(l2_err, eps ||S_seen||_F)`` (``||S_seen||_F`` of the snapshots seen so far,
exact, from their norms). Hence at the end ``||S - U U^T M S||_F <= max(l2_err,
eps ||S||_F)``, and by Weyl's inequality the singular values differ from the batch
POD's by at most ``sqrt(discarded)``. (``rtol``/``atol``/``max_modes`` may cut more;
what they cut is also counted in ``discarded`` and reported, not bounded.)

Persistence (:func:`save_state`, :func:`load_state`): the state of an
:class:`IncrementalPOD` (modes in the natural order of the mesh items, singular values,
counters, tolerances) and caller metadata in one HDF5 file written collectively to
``path.tmp`` then renamed, so that a reader sees the previous state or the new one,
never a half-written file. Loading it on another number of ranks redistributes the
modes; continuing the updates from it is then the same algorithm up to round-off.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ddrom.parallel import DdromError, as_mpi, check_all, describe_exception, raise_collective
from ddrom.reduction.inner import Euclidean, InnerProduct
from ddrom.reduction.pod import (
    EPS, PODResult, cgs2, pod, reorthonormalize, truncate, validate_snapshots,
)

__all__ = ["IncrementalPOD", "hapod", "save_state", "load_state", "STATE_SCHEMA"]

#: ``schema`` attribute of a streaming-state file (and its version).
STATE_SCHEMA = "ddrom-streaming-pod"
STATE_VERSION = 1


class IncrementalPOD:
    """Incremental (streaming) POD of row-distributed snapshots.

    Parameters
    ----------
    comm
        Communicator.
    inner
        Inner product (default Euclidean).
    eps
        Relative tolerance: final ``||S - U U^T M S||_F <= eps ||S||_F`` (the papers' ε).
    l2_err
        Absolute tolerance on the same quantity (the larger of the two is used).
    rtol, atol
        Singular values below ``max(rtol s_1, atol)`` are dropped at every update.
    max_modes
        Cap on the number of modes kept (then the tolerance may not be met; see
        ``info["error_bound"]``).
    reorth_every
        Re-orthonormalize ``U`` (Cholesky-QR, :func:`reorthonormalize`) every that
        many updates: products of orthogonal factors drift by ``~eps`` per update.
    name
        Name of the snapshot set in error messages.

    Examples
    --------
    >>> ipod = IncrementalPOD(comm, Euclidean(), eps=1e-6)     # doctest: +SKIP
    >>> for u_loc in time_steps: ipod.update(u_loc)           # doctest: +SKIP
    >>> res = ipod.result()                                    # doctest: +SKIP
    """

    def __init__(self, comm: Any = None, inner: InnerProduct | None = None, eps: float = 0.0,
                 l2_err: float = 0.0, rtol: float = 0.0, atol: float = 0.0,
                 max_modes: int | None = None, reorth_every: int = 50, name: str = "snapshots"):
        self.comm = as_mpi(comm)
        self.inner = inner if inner is not None else Euclidean()
        self.eps, self.l2_err, self.rtol, self.atol = float(eps), float(l2_err), rtol, atol
        self.max_modes = max_modes
        self.reorth_every = reorth_every
        self.name = name
        self.U: np.ndarray | None = None
        self.s = np.zeros(0)
        self.discarded2 = 0.0
        self.energy2 = 0.0
        self.m = 0
        self.n_updates = 0
        self._since_reorth = 0

    @property
    def n_modes(self) -> int:
        return int(self.s.size)

    def tolerance(self) -> float:
        """Current absolute tolerance ``max(l2_err, eps ||S_seen||_F)``."""
        return max(self.l2_err, self.eps * np.sqrt(self.energy2))

    def update(self, block_loc: Any) -> "IncrementalPOD":
        """Add one snapshot (1-D, this rank's rows) or a block ``(n_local, b)``."""
        B = np.asarray(block_loc, dtype=np.float64) if block_loc is not None else None
        if B is not None and B.ndim == 1:
            B = B[:, None]
        B, n, b = validate_snapshots(B, self.comm, self.inner, self.name)
        if self.U is not None:
            check_all(self.comm, B.shape[0] == self.U.shape[0],
                      f"streaming POD of {self.name!r}: block has {B.shape[0]} local rows on some"
                      f" rank, the previous ones had {self.U.shape[0]}")
        self.energy2 += float(np.sum(self.inner.norms(B, self.comm) ** 2))
        self.m += b
        k = self.s.size
        Qn, C, R = cgs2(B, self.inner, self.comm, Q_loc=self.U, drop_rtol=EPS)
        r = Qn.shape[1]
        K = np.zeros((k + r, k + b))
        K[:k, :k] = np.diag(self.s)
        K[:k, k:] = C
        K[k:, k:] = R
        Uk, sk, _ = np.linalg.svd(K, full_matrices=False)
        budget2 = max(self.tolerance() ** 2 - self.discarded2, 0.0)
        N = truncate(sk, self.rtol, self.atol, np.sqrt(budget2), self.max_modes)
        self.discarded2 += float(np.sum(sk[N:] ** 2))
        if self.U is None:
            self.U = Qn @ Uk[:r, :N]
        else:
            self.U = self.U @ Uk[:k, :N] + Qn @ Uk[k:, :N]
        self.s = sk[:N].copy()
        self.n_updates += 1
        self._since_reorth += 1
        if self._since_reorth >= self.reorth_every:
            self._reorth()
        return self

    # ------------------------------------------------------------ persistence
    #: what, besides U and s, makes the continuation of the updates the same algorithm
    _STATE_KEYS = ("eps", "l2_err", "rtol", "atol", "max_modes", "reorth_every", "discarded2",
                   "energy2", "m", "n_updates", "_since_reorth")

    def state(self) -> dict:
        """Counters and tolerances (JSON-able, replicated); with ``U`` and ``s`` the whole state."""
        out = {k: getattr(self, k) for k in self._STATE_KEYS}
        out["max_modes"] = None if self.max_modes is None else int(self.max_modes)
        return {k: (v if v is None or isinstance(v, (int, float)) else float(v))
                for k, v in out.items()}

    def restore(self, U_loc: np.ndarray | None, s: np.ndarray, state: dict) -> "IncrementalPOD":
        """Set the state saved by :meth:`state` (``U_loc``: this rank's rows of the modes)."""
        for k in self._STATE_KEYS:
            setattr(self, k, state[k])
        self.s = np.asarray(s, dtype=float).copy()
        self.U = None if U_loc is None else np.ascontiguousarray(U_loc, dtype=float)
        return self

    def _reorth(self) -> float:
        self._since_reorth = 0
        if self.U is None or self.U.shape[1] == 0:
            return 0.0
        self.U, err, _ = reorthonormalize(self.U, self.inner, self.comm, orth_tol=1e-13)
        return err

    def result(self) -> PODResult:
        """The current basis as a :class:`PODResult` (method ``"incremental"``).

        ``info["error_bound"] = sqrt(discarded)`` bounds ``||S - U U^T M S||_F``;
        ``vh`` is not tracked (it would cost ``O(m N)``) and is ``None``.
        """
        if self.U is None:
            raise DdromError(f"streaming POD of {self.name!r}: no snapshot was given")
        err = self._reorth()
        info = dict(error_bound=float(np.sqrt(self.discarded2)), tolerance=self.tolerance(),
                    discarded_energy=self.discarded2, energy=self.energy2, n_snapshots=self.m,
                    n_updates=self.n_updates, orth_err=err)
        return PODResult(modes_loc=self.U.copy(), sigma=self.s.copy(), sigma_all=self.s.copy(),
                         method="incremental", vh=None, info=info)


def hapod(blocks: Iterable[Any], n_blocks: int, comm: Any = None,
          inner: InnerProduct | None = None, l2_err: float = 0.0, max_modes: int | None = None,
          name: str = "snapshots") -> PODResult:
    """Hierarchical approximate POD over a binary tree of blocks (Himpe, Leibner, Rave 2018).

    Leaves are the PODs of the blocks; an inner node is the POD of its two children's
    scaled modes ``[U_a diag(s_a), U_b diag(s_b)]`` (method ``"tsqr"``). With ``T`` the
    set of nodes and ``e_a`` the ``l2`` error discarded at node ``a``,
    ``||S - U U^T M S||_F^2 <= sum_{a in T} e_a^2``; the tree of ``L = n_blocks``
    leaves has at most ``2L - 1`` nodes, so each node gets ``l2_err / sqrt(2L - 1)``
    and the final bound ``||S - U U^T M S||_F <= l2_err`` holds. Memory: ``O(log2 L)``
    bases at a time (a binary counter of pending subtrees). For the relative
    tolerance, ``l2_err = eps ||S||_F`` needs ``||S||_F`` beforehand (e.g. from the
    store's norms); use :class:`IncrementalPOD` when it is not known.
    """
    c = as_mpi(comm)
    inner = inner if inner is not None else Euclidean()
    check_all(c, n_blocks >= 1, f"HAPOD of {name!r}: n_blocks must be >= 1")
    node_err = l2_err / np.sqrt(2 * n_blocks - 1)
    stack: list[tuple[int, np.ndarray]] = []   # (level, U diag(s))
    discarded2 = 0.0
    count = 0

    def node(X: np.ndarray) -> np.ndarray:
        nonlocal discarded2
        r = pod(X, c, inner, method="tsqr", rtol=0.0, l2_err=node_err, modes=None, name=name)
        discarded2 += r.info["l2_err"] ** 2
        return r.modes_loc * r.sigma

    for blk in blocks:
        count += 1
        check_all(c, count <= n_blocks, f"HAPOD of {name!r}: more than n_blocks={n_blocks} blocks")
        B = np.asarray(blk, dtype=np.float64)
        if B.ndim == 1:
            B = B[:, None]
        Y, level = node(B), 0
        while stack and stack[-1][0] == level:
            _, Z = stack.pop()
            Y, level = node(np.hstack([Z, Y])), level + 1
        stack.append((level, Y))
    check_all(c, count > 0, f"HAPOD of {name!r}: no block was given")
    # Merge what is left (fewer than 2L - 1 nodes in total: the split stays valid).
    Y = stack.pop()[1]
    while stack:
        Y = node(np.hstack([stack.pop()[1], Y]))
    final = pod(Y, c, inner, method="tsqr", rtol=0.0, modes=max_modes, name=name)
    discarded2 += final.info["l2_err"] ** 2
    final.method = "hapod"
    final.vh = None
    final.info.update(error_bound=float(np.sqrt(discarded2)), n_blocks=count, node_l2_err=node_err)
    return final


# ------------------------------------------------------------------------ persistence
def save_state(path: str | os.PathLike, ipod: IncrementalPOD, nmap: Any,
               meta: dict | None = None) -> None:
    """Write the state of ``ipod`` to ``path`` (collective), atomically.

    ``nmap`` is the :class:`~ddrom.mesh.distributed.NaturalMap` of the items the rows
    belong to (e.g. ``dm.natural_nodes`` with 3 rows per node): the modes are stored as
    ``modes`` (n_items, rows per item, N) in natural order, so that another partition
    can read them back. ``sigma`` (N,), and the attributes ``schema``, ``version``,
    ``state`` (JSON of :meth:`IncrementalPOD.state`) and ``meta`` (JSON of ``meta``,
    the caller's consistency data). Written to ``path + ".tmp"``, renamed once
    closed on every rank (:class:`ddrom.io.h5atomic.ParallelH5`). Raises
    :class:`~ddrom.parallel.CollectiveError` on every rank if anything fails; the
    previous state file is then untouched.
    """
    from ddrom.io.h5atomic import ParallelH5
    from ddrom.io.jsonio import dumps

    c = ipod.comm
    path = str(path)
    check_all(c, ipod.U is not None, f"streaming POD state {path}: no snapshot was given yet")
    n_owned = int(nmap.n_owned)
    bs = ipod.U.shape[0] // n_owned if n_owned else 0
    bs = c.allreduce(bs, op=_max())
    N = ipod.n_modes
    # the kernel shared with the snapshot store: <path>.partial renamed once complete,
    # space reserved first, checksummed datasets, any failure removes the file and is
    # raised on every rank naming the file and the cause
    with ParallelH5.create(path, c, "streaming POD state", suffix=".tmp") as h5:
        h5.reserve(8 * (nmap.n_global * bs * N + len(ipod.s)))
        h5.set_attrs({"schema": STATE_SCHEMA, "version": STATE_VERSION,
                      # strict JSON (non-finite numbers as null); the same text on every rank
                      "state": dumps(ipod.state())[0], "meta": dumps(meta or {}, default=str)[0]})
        sig = h5.create_dataset(h5.f, "sigma", (len(ipod.s),))
        h5.write(sig, (0,), np.asarray(ipod.s) if c.rank == 0 else np.zeros(0))    # replicated: rank 0's
        ds = h5.create_dataset(h5.f, "modes", (nmap.n_global, bs, N))
        lo, hi = nmap.natural_range
        nat = nmap.to_natural(ipod.U.reshape(n_owned, bs, N)) if N else np.zeros((hi - lo, bs, 0))
        h5.write(ds, (lo, 0, 0), nat)


def load_state(path: str | os.PathLike, nmap: Any, comm: Any = None,
               inner: InnerProduct | None = None, name: str = "snapshots"
               ) -> tuple[IncrementalPOD | None, dict, str]:
    """Read a state written by :func:`save_state` into the current partition (collective).

    Returns ``(ipod, meta, reason)``: ``ipod`` is None (and ``reason`` says why) when the
    file does not exist, is not a streaming-state file of this version, is unreadable
    or has another number of items than ``nmap``; the caller then starts over. The
    inner product is not stored: pass the one the state was built with.
    """
    import h5py

    c = as_mpi(comm if comm is not None else nmap.comm)
    path = str(path)
    if not c.bcast(Path(path).exists() if c.rank == 0 else None, root=0):
        return None, {}, f"{path} does not exist"
    reason, out, fatal = None, None, None
    try:
        with h5py.File(path, "r", driver="mpio", comm=c) as f:
            if f.attrs.get("schema") != STATE_SCHEMA:
                raise ValueError("not a streaming POD state file")
            if int(f.attrs.get("version", -1)) != STATE_VERSION:
                raise ValueError(f"version {f.attrs.get('version')} (this ddrom reads {STATE_VERSION})")
            ds = f["modes"]
            if ds.shape[0] != nmap.n_global:
                raise ValueError(f"{ds.shape[0]} items, the mesh has {nmap.n_global}")
            lo, hi = nmap.natural_range
            if ds.shape[2]:
                with ds.collective:
                    nat = ds[lo:hi]
                U = nmap.from_natural(nat).reshape(-1, ds.shape[2])
            else:
                U = np.zeros((nmap.n_owned * ds.shape[1], 0))
            out = (U, f["sigma"][...], json.loads(f.attrs["state"]), json.loads(f.attrs["meta"]))
    except Exception as exc:  # noqa: BLE001 - any problem means: do not use it
        reason = f"{path}: {type(exc).__name__}: {exc}"
    except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt: stop, on every rank
        fatal = describe_exception(exc, f"streaming POD state {path}")
    # a rank interrupted while reading must stop the others, not leave them waiting below
    raise_collective(c, fatal)
    bad = c.allreduce(reason is not None, op=_lor())
    if bad:
        reason = c.allgather(reason)
        return None, {}, next(r for r in reason if r)
    U, s, state, meta = out
    ipod = IncrementalPOD(c, inner, name=name).restore(U, s, state)
    return ipod, meta, ""


def _max():
    from mpi4py import MPI

    return MPI.MAX


def _lor():
    from mpi4py import MPI

    return MPI.LOR
