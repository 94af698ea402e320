"""The ECM integrand of the reduced internal forces, and what of it survives an enrichment.

The ECM of :func:`ddrom.rom.offline.hyper_reduce` integrates, at every integration point
``g`` (weight ``w_g``), the ``N Ns`` columns::

    A[g, (k, l)] = eps(phi_k)(x_g) : (Psi L)_l(x_g) = sum_j R[g, k, j] L[j, l],
    R[g, k, j]   = eps(phi_k)(x_g) : psi_j(x_g)

(``phi_k`` the displacement modes, ``psi_j`` the stress modes, ``L L^T = G / lambda_max(G)``
with ``G`` the Gram matrix of the stress snapshots' coefficients,
:func:`ddrom.rom.offline.stress_column_weights`), whose exact integrals are::

    b[(k, l)] = sum_j B[k, j] L[j, l],       B[k, j] = sum_g w_g R[g, k, j].

An enrichment (:mod:`ddrom.rom.enrichment`) appends modes by Gram-Schmidt -- the old columns
of ``Phi`` and ``Psi`` are kept bit for bit -- and adds the new stress snapshot to ``G``,
which changes ``L`` and so every column of ``A``: ``A`` is given to the ECM again as its
per-point factors (:class:`ddrom.reduction.ecm.PointProducts`: one small matrix product
per point, formed block by block, never whole). What does not change is kept by
:class:`IntegrandCache`:

* the modes on the local DOFs (one scatter per new mode instead of one per mode) and
  their strains at every point (one strain evaluation per new mode);
* ``B``: only the new pairs ``(k, j)`` -- the new mode against every stress mode, the old
  modes against the new stress mode -- are summed (``N + Ns`` reproducible column sums
  instead of the ECM's own ``N Ns``, each about a dozen passes over its column), and
  ``b = B L`` is a product of small matrices handed to the ECM.

Exactness. ``b`` is the same quantity as the ECM's own sum of ``A`` (grouped differently:
round-off). Each entry of ``B`` is a reproducible sum
(:func:`ddrom.reduction.exact.reproducible_colsum`: correctly rounded, the same bits for any
partition) and each row of ``A`` is computed from its own point's data only, so the ECM
sees partition-independent data, as when it summed ``A`` itself.

Safety. The cache checks that the bases it is given start with the columns it has seen (every
61st row of them kept and compared exactly, the decision agreed by all ranks with one small
allreduce):
bases that are not an extension of the cached ones are recomputed from scratch, never
mixed.

Memory: the strains (``G x N x 6`` doubles per rank) between enrichments, and the update's
workspaces (:meth:`IntegrandCache.workspace`: ``Psi L``, ``G x 6 x Ns`` doubles, and the ECM's
score copy, ``G x N Ns`` singles, each up to a quarter larger); ``B`` is small.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ddrom.parallel import as_mpi
from ddrom.reduction.ecm import PointProducts
from ddrom.reduction.exact import _reproducible_colsum_chunks
from ddrom.rom.operators import all_mode_strains, mode_values_local


#: Every SAMPLE_STRIDE-th row of a cached basis is kept to recognize its columns.
SAMPLE_STRIDE = 61
#: A reused buffer is made this much larger than asked, so that the next enrichments (one
#: more mode, stress mode, ... each) fit in it.
ROOM = 1.25


def _sample(B: np.ndarray) -> np.ndarray:
    """A fingerprint of this rank's rows of ``B``: a copy of every SAMPLE_STRIDE-th row
    (compared exactly, whatever the memory layout of ``B``; a changed mode changes nearly
    every row, so the sampled ones too)."""
    return np.array(B[::SAMPLE_STRIDE], dtype=float)


class GrowingColumns:
    """A mesh-sized array that grows along its second axis without a copy per growth: an
    enrichment's bases ``(n, k)`` and the modes' strains ``(G, N, 6)``.

    The array is the view ``buf[:, :k]`` of a C-ordered ``(n, cap, ...)`` buffer with spare
    room (:data:`ROOM` of the size when it is (re)allocated): appended columns are written
    into the buffer, where ``np.column_stack`` copied the whole array (the stress basis is
    ``ne nq 6`` rows: ~150 MB per rank at 106k DOFs, and a fresh array's page faults cost
    about 1 s per GB on this project's machine). Views handed out earlier keep their
    columns: only columns beyond every handed-out view are written, and an array that is
    not the latest view is copied into a new buffer.
    """

    def __init__(self) -> None:
        self._buf: np.ndarray | None = None
        self._used = 0

    def adopt(self, a: np.ndarray, extra: int = 0) -> np.ndarray:
        """``a`` (n, k, ...) copied into a new buffer with room for ``extra`` columns and more;
        returns the view."""
        a = np.asarray(a, dtype=float)
        n, k = a.shape[:2]
        self._buf = None                     # the old buffer freed before the new one is made
        self._buf = np.empty((n, max(k + extra + 2, int(math.ceil(ROOM * (k + extra))))) + a.shape[2:])
        self._buf[:, :k] = a
        self._used = k
        return self._buf[:, :k]

    def append(self, B: np.ndarray, Q: np.ndarray) -> np.ndarray:
        """``[B, Q]``: in the buffer when ``B`` is its latest view and room remains."""
        buf, k, kn = self._buf, B.shape[1], Q.shape[1]
        latest = (buf is not None and k == self._used and B.shape[0] == buf.shape[0]
                  and B.shape[2:] == buf.shape[2:] and B.strides == buf.strides and (k == 0 or B.ctypes.data == buf.ctypes.data))
        if not latest or buf.shape[1] < k + kn:
            self.adopt(B, kn)
        self._buf[:, k:k + kn] = Q
        self._used = k + kn
        return self._buf[:, :k + kn]


@dataclass
class IntegrandCache:
    """What :func:`ddrom.rom.offline.hyper_reduce` can reuse when it is called again with
    bases that only grew (the online enrichment). Owned by one caller, on every rank.

    Attributes (this rank's rows, or replicated for ``B``)
    ----------------------------------------------------------
    modes_local : (3 n_local, N) displacement modes on the owned + ghost DOFs.
    strains : (G, N, 6) strains of the modes at every local point.
    raw_integrals : ``B`` (N, Ns), replicated, reproducible sums.
    stats : counters of what was reused (``modes_computed``, ``integrand_columns_computed``,
        ``recomputed_from_scratch``) for tests and logs.
    """

    modes_local: np.ndarray | None = None
    strains: np.ndarray | None = None
    raw_integrals: np.ndarray | None = None
    _sums: dict = field(default_factory=dict)        # name -> sampled rows of the cached columns
    _buffers: dict = field(default_factory=dict)     # name -> flat array reused between calls
    _strains_room: GrowingColumns = field(default_factory=GrowingColumns)   # the strains' buffer
    stats: dict = field(default_factory=lambda: {"modes_computed": 0, "integrand_columns_computed": 0,
                                                 "recomputed_from_scratch": 0})

    def _kept(self, name: str, basis: np.ndarray, comm: Any) -> int:
        """How many leading columns of ``basis`` are the cached ones (0: start over).
        Collective: every rank takes the same decision."""
        old = self._sums.get(name)
        n = 0 if old is None or old.shape[1] > basis.shape[1] else old.shape[1]
        same = bool(n == 0 or np.array_equal(_sample(basis[:, :n]), old))
        same = as_mpi(comm).allreduce(same, op=_land())
        if not same:
            self.stats["recomputed_from_scratch"] += 1
            n = 0
        self._sums[name] = _sample(basis)
        return n

    def workspace(self, name: str, n: int, dtype: Any = float) -> np.ndarray:
        """A flat array of ``n`` entries (contents undefined) kept for the next call.

        The update's mesh-sized temporaries (the ECM's score copy, ``Psi L``) are the same
        arrays every enrichment, a little larger each time; fresh memory of that size costs
        its page faults (about 1 s per GB on this project's machine), memory already
        touched does not. A buffer is made ``ROOM`` times larger than asked so that the next
        enrichments fit in it. Held until the cache is dropped: at most what the update
        itself needs, through the HF steps between updates.
        """
        buf = self._buffers.get(name)
        if buf is None or buf.size < n or buf.dtype != np.dtype(dtype):
            buf = self._buffers[name] = None      # the old one freed before the new one is made
            buf = self._buffers[name] = np.empty(int(ROOM * n) + 1, dtype=dtype)
        return buf[:n]

    def scratch(self, shape: tuple[int, ...], dtype: Any = float) -> np.ndarray:
        """An array of ``shape`` (contents undefined) in the one scratch workspace that the
        stages of an enrichment which never overlap share: the replay's strain rows (before
        the HF step) and the ECM's single-precision score copy (after it). Valid until the
        next call of :meth:`scratch`."""
        dt = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64))
        return self.workspace("scratch", n * dt.itemsize, np.uint8).view(dt).reshape(shape)

    # ---------------------------------------------------------------- modes
    def mode_values(self, solver: Any, Phi: np.ndarray) -> tuple[np.ndarray, int]:
        """The modes on the local DOFs, and how many of them were cached (the strains and
        ``R`` of those are reused too)."""
        n0 = self._kept("displacement", Phi, solver.comm)
        if n0 == 0 or self.modes_local is None:
            n0 = 0
            self.strains = self.raw_integrals = None
            new = mode_values_local(solver, Phi)
        else:
            new = np.column_stack([self.modes_local[:, :n0], mode_values_local(solver, Phi[:, n0:])]) \
                if Phi.shape[1] > n0 else self.modes_local[:, :n0]
        self.stats["modes_computed"] += Phi.shape[1] - n0
        self.modes_local = new
        return new, n0

    def mode_strains(self, solver: Any, modes_local: np.ndarray, n0: int) -> np.ndarray:
        """Strains (G, N, 6) of the modes at every local point, the first ``n0`` from the cache."""
        N = modes_local.shape[1]
        if self.strains is None or n0 == 0:
            new, n0 = all_mode_strains(solver, modes_local), 0
        elif N > n0:
            new = all_mode_strains(solver, modes_local[:, n0:])
        else:
            self.strains = self.strains[:, :n0]
            return self.strains
        # kept in a buffer with room for more modes (a view of its first N): an enrichment
        # writes its new modes' strains there instead of copying all of them into a fresh
        # array (``PointProducts`` gives the same bits for such a view, tested)
        room = self._strains_room
        self.strains = room.append(self.strains[:, :n0], new) if n0 else room.adopt(new)
        return self.strains

    # ------------------------------------------------------------ integrand
    def integrand(self, strains: np.ndarray, Psi3: np.ndarray, L: np.ndarray, w: np.ndarray, n0: int,
                  comm: Any) -> tuple[PointProducts, np.ndarray]:
        """``A`` (G, N Ns; as its per-point factors, :class:`~ddrom.reduction.ecm.PointProducts`)
        and its exact integrals ``b`` (N Ns,) (module docstring); ``B`` grown by the new pairs
        only (``n0`` displacement modes cached; the cached stress modes found by their
        sampled rows). ``A``'s stress factor lives in a workspace: valid until the next call."""
        G, N, _ = strains.shape
        Ns = Psi3.shape[-1]
        s0 = self._kept("stress", Psi3.reshape(G * 6, Ns), comm)
        B_old = self.raw_integrals
        if B_old is None or n0 == 0 or s0 == 0 or B_old.shape[0] < n0 or B_old.shape[1] < s0:
            n0 = s0 = 0
        B = np.empty((N, Ns))
        if n0 and s0:
            B[:n0, :s0] = B_old[:n0, :s0]
        # the new pairs: the old modes against the new stress modes, the new modes against all
        for kk, jj in ((slice(0, n0), slice(s0, Ns)), (slice(n0, N), slice(0, Ns))):
            nk, nj = kk.stop - kk.start, jj.stop - jj.start
            if nk * nj == 0:
                continue                         # (the same on every rank: the sums are collective)
            # summed by blocks of points (the same bits as the whole block: the sum is exact
            # then rounded), so no array of G nk nj doubles is formed
            blk = PointProducts(strains[:, kk], Psi3[:, :, jj])
            B[kk, jj] = _reproducible_colsum_chunks(lambda i0, i1: w[i0:i1, None] * blk[i0:i1], G, nk * nj,
                                                    comm).reshape(nk, nj)
            self.stats["integrand_columns_computed"] += nk * nj
        self.raw_integrals = B
        PsiL = self.workspace("stress_weighted", G * 6 * Ns).reshape(G * 6, Ns)
        np.matmul(Psi3.reshape(G * 6, Ns), L, out=PsiL)       # (row_matmul's product: G 6 >= 2 rows)
        A = PointProducts(strains, PsiL.reshape(G, 6, Ns))
        return A, (B @ L).reshape(-1)


def _land():
    from mpi4py import MPI

    return MPI.LAND
