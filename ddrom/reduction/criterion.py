"""A priori efficiency criterion for local bases, from the Gram matrix C only.

Question answered before paying for local ROMs: on the training data, does projecting
each simulation onto its own cluster's basis of size N beat projecting it onto the
global basis of the same size, for which (number of clusters k, N), and at what
offline cost?

Projection errors from C. For a basis ``Psi = S[:, b] W`` (M-orthonormal,
``W^T C_bb W = I``) and a snapshot column ``j``::

    a_j = Psi^T M s_j = W^T C[b, j]          (coefficients of the projection)
    e_j^2 = ||s_j - Psi a_j||_M^2 = C_jj - ||a_j||^2

and, with the columns of ``W`` in decreasing singular value order, the errors for all
basis sizes 1..N come at once from a cumulative sum of ``a_j^2``. The relative error
of a simulation ``a`` (Frobenius over its snapshots, M norm) is
``sqrt(sum_{j in a} e_j^2 / sum_{j in a} C_jj)``. Absolute accuracy of ``e_j^2`` is
about ``1e-16 C_jj`` (the round-off of C), so relative errors below ~1e-8 are not
resolved.

Offline cost model (flops, stated so it can be changed): for clusters of sizes
``m_c`` with ``N_c = min(N, rank_c)`` modes, on ``n`` rows::

    cost(k, N) = sum_c [ m_c^3 + 2 n m_c N_c + beta n N_c^2 ]

(eigensolution of the cluster's Gram block; forming the distributed modes
``S_c W_c``; building the reduced operators / hyper-reduction of one ROM, taken
linear in n and quadratic in N with weight ``beta``). The Gram matrix C and the HF
training runs are shared by every choice and not counted. ``k = 1`` is the global
basis, so ``offline_ratio = cost(k, N) / cost(1, N)`` is the price of local bases at
equal N: the eigensolutions get cheaper (sum m_c^3 < m^3), forming the modes costs the
same (sum m_c = m), and the ROM term is paid k times; with n >> m >> N the ratio is
close to 1, which is why the decisive comparison is at equal *error* (the global
basis needs a larger N, see :func:`recommend`). ``modes_total`` (storage n sum N_c)
is reported as well.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from ddrom.parallel import DdromError
from ddrom.reduction.clustering import (
    SV_RTOL, Clustering, _as_sims, check_gram, cluster, dissimilarity as _dissimilarity,
    orthonormal_coefficients,
)

__all__ = ["projection_errors_sq", "cumulative_errors_sq", "relative_errors_by_simulation",
           "clustering_errors", "offline_cost", "efficiency_table", "recommend",
           "format_table", "plot_efficiency"]


def projection_errors_sq(C: np.ndarray, basis_cols: Sequence[int], W: np.ndarray,
                         cols: Sequence[int]) -> np.ndarray:
    """Squared M-norm projection errors of columns ``cols`` onto span(S[:, basis_cols] W).

    ``e_j^2 = max(C_jj - ||W^T C[basis_cols, j]||^2, 0)``; ``W`` must give an
    M-orthonormal basis (as returned by
    :func:`~ddrom.reduction.clustering.local_pod_coefficients`).
    """
    cols = np.asarray(cols, dtype=int)
    A = W.T @ C[np.ix_(np.asarray(basis_cols, dtype=int), cols)]
    return np.maximum(C[cols, cols] - (A * A).sum(axis=0), 0.0)


def cumulative_errors_sq(C: np.ndarray, basis_cols: np.ndarray, W: np.ndarray,
                         cols: np.ndarray, Ns: Sequence[int]) -> np.ndarray:
    """Squared errors of ``cols`` onto the first ``N`` columns of the basis, for each N.

    Returns an array (len(Ns), len(cols)); ``N`` larger than the basis uses all of it.
    """
    A = W.T @ C[np.ix_(basis_cols, cols)]
    cum = np.vstack([np.zeros((1, cols.size)), np.cumsum(A * A, axis=0)])
    idx = np.minimum(np.asarray(Ns, dtype=int), W.shape[1])
    return np.maximum(C[cols, cols][None, :] - cum[idx], 0.0)


def relative_errors_by_simulation(C: np.ndarray, err_sq: np.ndarray, sims: np.ndarray
                                  ) -> np.ndarray:
    """Per-simulation relative errors ``sqrt(sum_j e_j^2 / sum_j C_jj)``.

    ``err_sq``: (..., m) squared errors of every column. Returns (..., s), simulations
    in sorted label order. A simulation of zero norm has relative error 0.
    """
    _, inv = np.unique(sims, return_inverse=True)
    s = int(inv.max()) + 1
    flat = err_sq.reshape(-1, err_sq.shape[-1])
    num = np.stack([np.bincount(inv, weights=e, minlength=s) for e in flat])
    num = num.reshape(err_sq.shape[:-1] + (s,))
    den = np.bincount(inv, weights=np.diag(C), minlength=s)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.sqrt(np.where(den > 0, num / den, 0.0))
    return rel


def clustering_errors(C: np.ndarray, clustering: Clustering | None, Ns: Sequence[int],
                      sims: Any = None, sv_rtol: float = SV_RTOL
                      ) -> tuple[np.ndarray, list[list[int]]]:
    """Relative error of each simulation onto its cluster's basis, for each N.

    Every column is projected onto the basis of its own cluster (``clustering`` None:
    the global basis). Returns ``(rel, ranks)``: ``rel`` of shape (len(Ns), s) and,
    per cluster, the numerical rank of its basis (caps the effective N).
    """
    C = check_gram(C)
    m = C.shape[0]
    sims = np.arange(m) if sims is None else _as_sims(sims, m)
    Ns = np.asarray(Ns, dtype=int)
    err = np.zeros((Ns.size, m))
    col_labels = np.zeros(m, dtype=int) if clustering is None else clustering.column_labels
    ranks = []
    for c in range(int(col_labels.max()) + 1):
        cols = np.flatnonzero(col_labels == c)
        W, _ = orthonormal_coefficients(C[np.ix_(cols, cols)], sv_rtol, n_max=int(Ns.max()))
        ranks.append(W.shape[1])
        err[:, cols] = cumulative_errors_sq(C, cols, W, cols, Ns)
    return relative_errors_by_simulation(C, err, sims), ranks


def offline_cost(cluster_sizes: Iterable[int], ranks: Iterable[int], N: int, n_rows: int,
                 beta: float = 1.0) -> float:
    """Offline flops of k local bases + ROMs: ``sum_c m_c^3 + 2 n m_c N_c + beta n N_c^2``.

    ``N_c = min(N, rank_c)``. See the module docstring for what is and is not counted.
    """
    total = 0.0
    for m_c, r_c in zip(cluster_sizes, ranks):
        Nc = min(int(N), int(r_c))
        total += float(m_c) ** 3 + 2.0 * n_rows * m_c * Nc + beta * n_rows * Nc ** 2
    return total


def efficiency_table(C: np.ndarray, sims: Any, ks: Sequence[int], Ns: Sequence[int], *,
                     dissimilarity: str = "grassmann_max", method: str = "pam",
                     n_rows: int, seed: int = 0, beta: float = 1.0,
                     sv_rtol: float = SV_RTOL, dissimilarity_options: dict | None = None
                     ) -> list[dict]:
    """The a priori criterion: local versus global projection errors over a (k, N) grid.

    For each ``k`` the training data are clustered once (``cluster(C, k, ...)``, the
    dissimilarity matrix computed once for all k), each cluster's POD is computed
    once from its Gram block, and the errors of all N come from cumulative sums.

    Parameters
    ----------
    C : (m, m) array
        Replicated Gram matrix of the training snapshots.
    sims : (m,) array
        Simulation of each column (the error is reported per simulation).
    ks, Ns : sequences of int
        Numbers of clusters and basis sizes. ``k = 1`` is the global basis.
    dissimilarity, method, seed :
        As in :func:`~ddrom.reduction.clustering.cluster`.
    n_rows : int
        Global number of rows n of the snapshots (DOFs), for the cost model.
    beta : float
        Weight of the per-ROM term of :func:`offline_cost`.
    sv_rtol : float
        Cut-off of the local and global bases (``sigma_i > sv_rtol sigma_1``).
    dissimilarity_options : dict, optional
        Passed to the dissimilarity (e.g. ``{"sv_rtol": 1e-3}`` for a Grassmann one).

    Returns
    -------
    list of dict
        One row per (k, N), keys: ``k, N, mean_local, max_local, mean_global,
        max_global, gain_mean`` (= mean_global / mean_local), ``offline_flops,
        offline_ratio`` (versus the global basis of size N), ``modes_total``
        (sum of the N_c: storage is n times it), ``cluster_sizes``.
    """
    C = check_gram(C)
    m = C.shape[0]
    sims = _as_sims(sims, m)
    Ns = [int(N) for N in Ns]
    ks = [int(k) for k in ks]
    if not Ns or min(Ns) < 1:
        raise DdromError(f"efficiency table: basis sizes must be positive integers, got {Ns}")
    if not ks:
        raise DdromError("efficiency table: no number of clusters given")
    n_rows = int(n_rows)
    g_rel, g_ranks = clustering_errors(C, None, Ns, sims, sv_rtol)
    g_cost = {N: offline_cost([m], g_ranks, N, n_rows, beta) for N in Ns}
    options = dict(dissimilarity_options or {})
    D = None
    if method != "kmeans" and any(k > 1 for k in ks):
        D = _dissimilarity(C, dissimilarity, sims=sims, **options)
    rows = []
    for k in ks:
        if k == 1:
            cl = None
            sizes, ranks, rel = [m], g_ranks, g_rel
        else:
            cl = cluster(C, k, dissimilarity=dissimilarity, method=method, sims=sims,
                         seed=seed, D=D, **options)
            rel, ranks = clustering_errors(C, cl, Ns, sims, sv_rtol)
            sizes = [int(np.count_nonzero(cl.column_labels == c)) for c in range(cl.n_clusters)]
        for i, N in enumerate(Ns):
            cost = offline_cost(sizes, ranks, N, n_rows, beta)
            ml, mg = float(rel[i].mean()), float(g_rel[i].mean())
            rows.append({
                "k": k, "N": N,
                "mean_local": ml, "max_local": float(rel[i].max()),
                "mean_global": mg, "max_global": float(g_rel[i].max()),
                "gain_mean": mg / ml if ml > 0 else (1.0 if mg == 0 else float("inf")),
                "offline_flops": cost, "offline_ratio": cost / g_cost[N],
                "modes_total": int(sum(min(N, r) for r in ranks)),
                "cluster_sizes": sizes,
                "dissimilarity": dissimilarity if k > 1 else "global",
            })
    return rows


def recommend(table: list[dict], error_target: float, budget: float | None = None, *,
              metric: str = "max", budget_key: str = "offline_ratio") -> dict:
    """Choose (k, N) under an error target and an offline budget.

    Among rows with ``<metric>_local <= error_target`` and ``row[budget_key] <= budget``
    (no budget: all), take the smallest N (the online cost grows with N), then the
    lowest offline cost, then the smallest k. Compared with the smallest global N
    meeting the target (``<metric>_global``), local bases "pay off" if they reach
    the target with a smaller N.

    Returns
    -------
    dict
        ``choice`` (the row or None), ``global_N`` (or None), ``local_pays_off``,
        ``message``.
    """
    if metric not in ("mean", "max"):
        raise DdromError(f"recommend: metric must be 'mean' or 'max', got {metric!r}")
    ok = [r for r in table if r[f"{metric}_local"] <= error_target
          and (budget is None or r[budget_key] <= budget)]
    ok.sort(key=lambda r: (r["N"], r["offline_flops"], r["k"]))
    choice = ok[0] if ok else None
    gl = sorted({r["N"] for r in table if r[f"{metric}_global"] <= error_target})
    global_N = gl[0] if gl else None
    pays = choice is not None and choice["k"] > 1 and (global_N is None or choice["N"] < global_N)
    if choice is None:
        msg = (f"no (k, N) in the table reaches {metric} error {error_target:g}"
               + (f" within {budget_key} <= {budget:g}" if budget is not None else "")
               + ": enlarge N or the budget")
    elif pays:
        msg = (f"local bases pay off: k={choice['k']}, N={choice['N']} reach {metric} error "
               f"{choice[f'{metric}_local']:.3g} <= {error_target:g}; the global basis needs "
               + (f"N={global_N}" if global_N else "more modes than tabulated")
               + f" (offline cost x{choice['offline_ratio']:.2f})")
    else:
        msg = (f"the global basis suffices: N={global_N} reaches {metric} error "
               f"<= {error_target:g}; local bases do not reduce N")
        choice = next(r for r in table if r["k"] == 1 and r["N"] == global_N) if any(
            r["k"] == 1 and r["N"] == global_N for r in table) else choice
    return {"choice": choice, "global_N": global_N, "local_pays_off": pays, "message": msg}


def format_table(table: list[dict]) -> str:
    """Plain-text rendering of :func:`efficiency_table` (what ``ddrom cluster`` prints)."""
    head = (f"{'k':>3} {'N':>4} {'mean local':>11} {'mean global':>11} {'gain':>7} "
            f"{'max local':>10} {'max global':>10} {'cost x':>7}  sizes")
    lines = [head, "-" * len(head)]
    for r in table:
        lines.append(f"{r['k']:>3} {r['N']:>4} {r['mean_local']:>11.3e} {r['mean_global']:>11.3e} "
                     f"{r['gain_mean']:>7.3g} {r['max_local']:>10.3e} {r['max_global']:>10.3e} "
                     f"{r['offline_ratio']:>7.2f}  {r['cluster_sizes']}")
    return "\n".join(lines)


def plot_efficiency(table: list[dict], path: str, title: str | None = None) -> str:
    """Write a PNG: mean and max relative error versus N, one line per k, global dashed.

    Uses the Agg canvas directly (no pyplot state, works without a display).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2))
    FigureCanvasAgg(fig)
    ks = sorted({r["k"] for r in table})
    for ax, metric in zip(fig.subplots(1, 2), ("mean", "max")):
        for k in ks:
            rows = sorted((r for r in table if r["k"] == k), key=lambda r: r["N"])
            if k == 1:
                continue
            ax.semilogy([r["N"] for r in rows], [max(r[f"{metric}_local"], 1e-17) for r in rows],
                        "o-", label=f"{k} clusters")
        rows = sorted({r["N"]: r for r in table}.values(), key=lambda r: r["N"])
        ax.semilogy([r["N"] for r in rows], [max(r[f"{metric}_global"], 1e-17) for r in rows],
                    "k--", label="global basis")
        ax.set_xlabel("basis size N")
        ax.set_ylabel(f"{metric} relative projection error")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    from ddrom.io.atomic import atomic_path

    with atomic_path(path) as tmp:            # never half a PNG at the final path
        fig.savefig(tmp, dpi=110, format="png")
    return path
