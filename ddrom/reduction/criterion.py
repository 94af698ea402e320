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

Held-out errors (:func:`heldout_table`, what ``ddrom cluster`` recommends from). The
training projection error above is in-sample: a cluster of a few simulations is fitted
exactly once N reaches its rank, whatever lies between them, so it cannot say whether a
local basis helps a *new* point. The held-out table answers that from C too: folds of
simulations are held out; for each fold the clustering, the feature relevance, the
classifier and the bases are built from the other simulations only, and each held-out
simulation is routed as an online run would be (the global basis when the classifier is
unsure) and projected onto the basis it reaches (:func:`basis_errors`). It ignores what a
ROM adds to a projection (Galerkin, hyper-reduction, the march), which the a posteriori
check of :mod:`ddrom.workflow.cluster` measures. :func:`recommend_heldout` takes local bases
only where they beat the global basis of the same N by :data:`GAIN_MIN`.
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
           "format_table", "plot_efficiency", "basis_errors", "routed_errors", "heldout_table",
           "merge_heldout", "recommend_heldout", "leave_one_out_errors", "choose_classifier", "GAIN_MIN"]

#: Local bases "pay off" when their mean held-out error is below the global basis' at the same
#: N divided by this: a 10 % margin, so that a difference within the scatter of a few held-out
#: simulations does not buy k ROMs.
GAIN_MIN = 1.1


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
    """Plain-text rendering of :func:`efficiency_table` (what ``ddrom cluster`` prints), with the
    held-out columns of :func:`merge_heldout` when present."""
    held = any("heldout_mean_local" in r for r in table)
    head = (f"{'k':>3} {'N':>4} {'mean local':>11} {'mean global':>11} {'gain':>7} "
            f"{'max local':>10} {'max global':>10} {'cost x':>7}")
    if held:
        head += f" | {'held local':>10} {'held global':>11} {'gain':>6} {'fallback':>8}"
    head += "  sizes"
    lines = [head, "-" * len(head)]
    for r in table:
        line = (f"{r['k']:>3} {r['N']:>4} {r['mean_local']:>11.3e} {r['mean_global']:>11.3e} "
                f"{r['gain_mean']:>7.3g} {r['max_local']:>10.3e} {r['max_global']:>10.3e} "
                f"{r['offline_ratio']:>7.2f}")
        if held:
            line += (f" | {r.get('heldout_mean_local', float('nan')):>10.3e} "
                     f"{r.get('heldout_mean_global', float('nan')):>11.3e} {r.get('heldout_gain', float('nan')):>6.3g} "
                     f"{r.get('heldout_fallback', float('nan')):>8.2f}")
        lines.append(line + f"  {r['cluster_sizes']}")
    return "\n".join(lines)


def plot_efficiency(table: list[dict], path: str, title: str | None = None) -> str:
    """Write a PNG: mean and max relative error versus N, one line per k, global dashed (and,
    dotted, the held-out errors of :func:`merge_heldout` when the table has them).

    Uses the Agg canvas directly (no pyplot state, works without a display).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2))
    FigureCanvasAgg(fig)
    ks = sorted({r["k"] for r in table})
    for ax, metric in zip(fig.subplots(1, 2), ("mean", "max")):
        for i, k in enumerate(ks):
            rows = sorted((r for r in table if r["k"] == k), key=lambda r: r["N"])
            if k == 1:
                continue
            ax.semilogy([r["N"] for r in rows], [max(r[f"{metric}_local"], 1e-17) for r in rows],
                        "o-", color=f"C{i}", label=f"{k} clusters")
        rows = sorted({r["N"]: r for r in table}.values(), key=lambda r: r["N"])
        ax.semilogy([r["N"] for r in rows], [max(r[f"{metric}_global"], 1e-17) for r in rows],
                    "k--", label="global basis")
        if any(f"heldout_{metric}_local" in r for r in table):
            # what the recommendation uses: simulations held out of the bases they are projected on
            for i, k in enumerate(ks):
                hr = sorted((r for r in table if r["k"] == k and f"heldout_{metric}_local" in r),
                            key=lambda r: r["N"])
                ax.semilogy([r["N"] for r in hr], [max(r[f"heldout_{metric}_local"], 1e-17) for r in hr],
                            ":", color="k" if k == 1 else f"C{i}", marker=None if k == 1 else "x",
                            label="global, held out" if k == 1 else f"{k} clusters, held out")
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


# =========================================================== held-out (a priori) criterion
def basis_errors(C: np.ndarray, groups: Sequence[np.ndarray], train: Sequence[int], held: Sequence[int],
                 labels: Sequence[int] | None, Ns: Sequence[int], n_clusters: int | None = None,
                 sv_rtol: float = SV_RTOL) -> np.ndarray:
    """Relative errors of held-out simulations onto bases built from training simulations only.

    Simulation ``a`` has the snapshot columns ``groups[a]``. The bases are the POD (method
    of snapshots, from the Gram blocks of ``C``) of the training simulations of each
    cluster ``c`` (``labels[i]`` is the cluster of ``train[i]``; clusters 0..n_clusters-1),
    then of all training simulations (the global basis, last). For each basis and N the
    error of held-out simulation a is ``sqrt(sum_{j in a} e_j^2 / sum_{j in a} C_jj)``
    (:func:`cumulative_errors_sq`; N beyond a basis' rank uses all of it).

    Returns
    -------
    (len(held), n_clusters + 1, len(Ns)) array; NaN for a cluster without training simulation.
    """
    train = np.asarray(train, dtype=int)
    held = np.asarray(held, dtype=int)
    Ns = np.asarray(Ns, dtype=int)
    k = 0 if labels is None else (int(n_clusters) if n_clusters is not None else int(np.max(labels)) + 1)
    sets = [train[np.asarray(labels) == c] for c in range(k)] if labels is not None else []
    sets.append(train)
    cols_h = np.concatenate([groups[a] for a in held]) if held.size else np.zeros(0, dtype=int)
    owner = np.concatenate([np.full(len(groups[a]), i) for i, a in enumerate(held)]) if held.size \
        else np.zeros(0, dtype=int)
    den = np.bincount(owner, weights=C[cols_h, cols_h], minlength=held.size)
    out = np.full((held.size, len(sets), Ns.size), np.nan)
    for b, sims_b in enumerate(sets):
        if sims_b.size == 0 or held.size == 0:
            continue
        cols = np.concatenate([groups[a] for a in sims_b])
        W, _ = orthonormal_coefficients(C[np.ix_(cols, cols)], sv_rtol, n_max=int(Ns.max()))
        err = cumulative_errors_sq(C, cols, W, cols_h, Ns)               # (nN, n cols_h)
        num = np.stack([np.bincount(owner, weights=e, minlength=held.size) for e in err], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, b, :] = np.sqrt(np.where(den[:, None] > 0, num / den[:, None], 0.0))
    return out


def routed_errors(E: np.ndarray, labels: np.ndarray, margins: np.ndarray, margin: float) -> np.ndarray:
    """Errors of routed simulations: ``E[i, labels[i]]`` when ``margins[i] >= margin``, else the
    global basis' ``E[i, -1]`` (the online fallback); also the global one when the routed
    cluster has no basis (NaN). ``E``: (n, k + 1, ...) from :func:`basis_errors`."""
    E = np.asarray(E)
    idx = np.arange(E.shape[0])
    lab = np.asarray(labels, dtype=int)
    ok = (np.asarray(margins) >= margin) & (lab >= 0) & (lab < E.shape[1] - 1)
    local = E[idx, np.where(ok, lab, E.shape[1] - 1)]
    local = np.where(np.isnan(local), E[idx, -1], local)
    return np.where(ok.reshape((-1,) + (1,) * (local.ndim - 1)), local, E[idx, -1])


def leave_one_out_errors(C: np.ndarray, groups: Sequence[np.ndarray], train: np.ndarray, labels: np.ndarray,
                Ns: Sequence[int], k: int, sv_rtol: float) -> np.ndarray:
    """For each training simulation a: errors onto the cluster bases and the global basis built
    without a, (len(train), k + 1, len(Ns)) (the loss of a classifier's leave-one-out routing)."""
    out = np.empty((train.size, k + 1, len(Ns)))
    for i, a in enumerate(train):
        keep = np.arange(train.size) != i
        out[i] = basis_errors(C, groups, train[keep], [a], labels[keep], Ns, k, sv_rtol)[0]
    return out


def choose_classifier(X: np.ndarray, labels: np.ndarray, E_loo: np.ndarray, margin: float, *,
                      D: np.ndarray | None, method: str = "auto", seed: int = 0) -> tuple[Any, dict]:
    """The classifier of the local bases: ``method``, or with ``"auto"`` the candidate of
    :data:`~ddrom.reduction.routing.CLASSIFIERS` whose leave-one-out routing (margin fallback
    included) has the smallest mean error ``E_loo`` (:func:`leave_one_out_errors`: (n, k + 1) for one
    basis size, a name; (n, k + 1, nN): one name per N)."""
    from ddrom.reduction.routing import CLASSIFIERS, select_classifier

    cands = tuple(CLASSIFIERS) if method == "auto" else (method,)
    if np.asarray(X).shape[1] == 0:
        # no feature tells the simulations apart: every point is unsure (margin 0), the global basis runs
        cands = ("nearest_medoid",)
    return select_classifier(X, labels, lambda lab, mar: np.mean(routed_errors(E_loo, lab, mar, margin), axis=0),
                             D=D, candidates=cands, seed=seed)


def heldout_table(C: np.ndarray, sims: Any, ks: Sequence[int], Ns: Sequence[int], *,
                  features: Any, folds: Sequence[np.ndarray], dissimilarity: str = "grassmann_max",
                  classifier: str = "auto", margin: float = 0.2, seed: int = 0, sv_rtol: float = SV_RTOL,
                  dissimilarity_options: dict | None = None) -> list[dict]:
    """The a priori criterion on held-out simulations: each (k, N) as an online run would see it.

    For each fold (``folds``: indices of the held-out simulations, in the sorted order of the
    distinct labels of ``sims``), with the other simulations only: the features and their
    relevance (``features(train) -> (X, groups)``: the features of every simulation,
    fitted on the training ones; :func:`~ddrom.reduction.routing.fit_relevance` on the
    training pairs of the simulation dissimilarity), the k-medoids clusters (PAM on the
    dissimilarity), a classifier (``classifier``, or with ``"auto"`` the one whose
    leave-one-out routing within the training simulations errs least, per N), the local and
    global PODs; each held-out simulation is then routed (the global basis when the
    classifier's margin is below ``margin``) and projected onto the basis it reaches
    (:func:`basis_errors`). Every simulation is held out once.

    This predicts the online error of a configuration better than the training projection
    error of :func:`efficiency_table`, which a cluster of few simulations fits exactly
    (N >= its rank) whatever happens between them; it ignores what the ROM adds to a
    projection (the Galerkin and hyper-reduction errors), which the a posteriori check
    (:func:`ddrom.workflow.cluster.cluster_report`) measures.

    Returns
    -------
    list of dict
        One row per (k, N): ``heldout_mean``, ``heldout_max`` (of the routed errors; k = 1:
        the global basis), ``heldout_mean_global``, ``heldout_max_global`` (the global
        basis at the same N), ``heldout_fallback`` (fraction of the held-out simulations the
        margin sent to the global basis), ``classifiers`` (fold -> chosen classifier),
        ``errors`` (per simulation).
    """
    from ddrom.reduction.kmedoids import pam
    from ddrom.reduction.routing import fit_relevance, make_classifier

    C = check_gram(C)
    sims = _as_sims(sims, C.shape[0])
    from ddrom.reduction.clustering import simulation_groups

    _, groups = simulation_groups(sims)
    s = len(groups)
    Ns = [int(N) for N in Ns]
    D = _dissimilarity(C, dissimilarity, sims=sims, **dict(dissimilarity_options or {}))
    errs = {(k, N): np.full(s, np.nan) for k in ks for N in Ns}
    fallback = {(k, N): np.zeros(s, dtype=bool) for k in ks for N in Ns}
    chosen: dict[tuple[int, int], dict[int, str]] = {(k, N): {} for k in ks for N in Ns}
    glob = {N: np.full(s, np.nan) for N in Ns}
    for f, held in enumerate(folds):
        held = np.asarray(held, dtype=int)
        train = np.setdiff1d(np.arange(s), held)
        if train.size == 0 or held.size == 0:
            continue
        X, fgroups = features(train)
        DT = D[np.ix_(train, train)]
        Xw = fit_relevance(np.asarray(X)[train], fgroups, DT).transform(X) if len(fgroups) else \
            np.zeros((s, 0))
        Eg = basis_errors(C, groups, train, held, None, Ns, sv_rtol=sv_rtol)
        for i, N in enumerate(Ns):
            glob[N][held] = Eg[:, 0, i]
        for k in ks:
            if k == 1:
                for i, N in enumerate(Ns):
                    errs[(1, N)][held] = Eg[:, 0, i]
                continue
            if k > train.size:
                continue
            lab_T = np.asarray(pam(DT, k).labels)
            E = basis_errors(C, groups, train, held, lab_T, Ns, k, sv_rtol)
            names = [classifier] * len(Ns)
            if classifier == "auto":
                E_loo = leave_one_out_errors(C, groups, train, lab_T, Ns, k, sv_rtol)
                names, _ = choose_classifier(Xw[train], lab_T, E_loo, margin, D=DT, seed=seed)
            fits: dict[str, Any] = {}
            for i, N in enumerate(Ns):
                name = str(names[i])
                if name not in fits:
                    fits[name] = make_classifier(name, seed).fit(Xw[train], lab_T, DT).predict_margin(Xw[held])
                lab_h, mar_h = fits[name]
                errs[(k, N)][held] = routed_errors(E[:, :, i], lab_h, mar_h, margin)
                fallback[(k, N)][held] = mar_h < margin
                chosen[(k, N)][f] = name
    rows = []
    for k in ks:
        for N in Ns:
            e, g = errs[(k, N)], glob[N]
            ok = ~np.isnan(e)
            rows.append({"k": int(k), "N": int(N),
                         "heldout_mean": float(np.mean(e[ok])) if ok.any() else float("nan"),
                         "heldout_max": float(np.max(e[ok])) if ok.any() else float("nan"),
                         "heldout_mean_global": float(np.nanmean(g)) if np.isfinite(g).any() else float("nan"),
                         "heldout_max_global": float(np.nanmax(g)) if np.isfinite(g).any() else float("nan"),
                         "heldout_fallback": float(np.mean(fallback[(k, N)][ok])) if ok.any() and k > 1 else 0.0,
                         "classifiers": {str(f): n for f, n in chosen[(k, N)].items()},
                         "errors": e.tolist()})
    return rows


def merge_heldout(table: list[dict], heldout: list[dict]) -> list[dict]:
    """The rows of :func:`efficiency_table` with the held-out columns of :func:`heldout_table`
    (same (k, N)): ``heldout_mean_local``, ``heldout_max_local``, ``heldout_mean_global``,
    ``heldout_max_global``, ``heldout_gain`` (global / local), ``heldout_fallback``,
    ``classifiers``, ``heldout_errors`` (per simulation)."""
    by = {(r["k"], r["N"]): r for r in heldout}
    out = []
    for r in table:
        h = by.get((r["k"], r["N"]))
        r = dict(r)
        if h is not None:
            ml, mg = h["heldout_mean"], h["heldout_mean_global"]
            r.update(heldout_mean_local=ml, heldout_max_local=h["heldout_max"], heldout_mean_global=mg,
                     heldout_max_global=h["heldout_max_global"],
                     heldout_gain=(float("nan") if not np.isfinite(ml) else mg / ml if ml > 0
                                   else (1.0 if mg == 0 else float("inf"))),
                     heldout_fallback=h["heldout_fallback"], classifiers=h["classifiers"],
                     heldout_errors=h["errors"])
        out.append(r)
    return out


def recommend_heldout(table: list[dict], error_target: float | None = None, budget: float | None = None, *,
                      metric: str = "mean", gain_min: float = GAIN_MIN, noise: float = 1e-6,
                      online_modes: int | None = None) -> dict:
    """Choose (k, N) from the held-out columns (:func:`merge_heldout`); the global basis unless
    local bases are clearly better on simulations they were not built from.

    At each N, local bases "pay off" when the best k > 1 (within ``offline_ratio <= budget``)
    has ``heldout_<metric>_local * gain_min < heldout_<metric>_global`` (same N, hence about
    the same online cost) and the global error exceeds ``noise`` (an error from a Gram matrix
    is resolved to ~1e-8 only, ~2e-8 is measured for an exact span, and HF snapshots carry
    their solver's tolerance); the candidate at that N is then that k, else the global basis.
    With ``error_target``: the smallest N whose candidate reaches it (``heldout_<metric>``
    <= target); with ``online_modes`` (the online cost a user affords: modes per basis, one
    of the table's N): the candidate of that N; with neither: the N whose candidate has the
    smallest held-out error (the smallest such N within a relative 1e-9).

    Returns
    -------
    dict
        ``choice`` (the row, or None), ``local_pays_off``, ``global_N`` (smallest N at which
        the global basis reaches the target, or None), ``per_N`` (the candidate of each N:
        ``N, k, local, heldout_local, heldout_global``), ``message``, ``basis`` ("held-out").
    """
    if metric not in ("mean", "max"):
        raise DdromError(f"recommend: metric must be 'mean' or 'max', got {metric!r}")
    if error_target is not None and online_modes is not None:
        raise DdromError("recommend: give an error target or the online modes, not both (the target chooses N)")
    key_l, key_g = f"heldout_{metric}_local", f"heldout_{metric}_global"
    rows = [r for r in table if key_l in r and np.isfinite(r[key_l])]
    if not rows:
        raise DdromError("recommend_heldout: the table has no held-out errors (merge_heldout)")
    cands = {}
    for N in sorted({r["N"] for r in rows}):
        at = [r for r in rows if r["N"] == N]
        glob = next((r for r in at if r["k"] == 1), None)
        loc = [r for r in at if r["k"] > 1 and (budget is None or r["offline_ratio"] <= budget)]
        best = min(loc, key=lambda r: (r[key_l], r["k"])) if loc else None
        g_err = glob[key_l] if glob is not None else at[0][key_g]
        if best is not None and best[key_l] * gain_min < g_err and g_err > noise:
            cands[N] = (best, True)
        elif glob is not None:
            cands[N] = (glob, False)
    if not cands:
        return {"choice": None, "local_pays_off": False, "global_N": None, "basis": "held-out", "per_N": [],
                "message": "no configuration with held-out errors"}
    per_N = [{"N": N, "k": r["k"], "local": pays, "heldout_local": r[key_l], "heldout_global": r[key_g]}
             for N, (r, pays) in sorted(cands.items())]
    where = [p for p in per_N if p["local"]]
    also = ("; local bases pay off at " + ", ".join(f"N={p['N']} (k={p['k']}: {p['heldout_local']:.3g} vs "
                                                     f"{p['heldout_global']:.3g})" for p in where)) if where else \
        "; local bases pay off at no tabulated N"
    gl = [N for N, (r, _) in cands.items() if r[key_g] <= (error_target if error_target is not None else -1)]
    global_N = min(gl) if gl else None
    if error_target is not None:
        ok = [N for N, (r, _) in cands.items() if r[key_l] <= error_target]
        if not ok:
            best_N = min(cands, key=lambda N: cands[N][0][key_l])
            r, pays = cands[best_N]
            return {"choice": r, "local_pays_off": pays, "global_N": None, "basis": "held-out", "per_N": per_N,
                    "message": f"no (k, N) reaches held-out {metric} error {error_target:g}; the best is "
                               f"k={r['k']}, N={r['N']} ({r[key_l]:.3g}): enlarge N" + also}
        N = min(ok)
    elif online_modes is not None:
        if online_modes not in cands:
            raise DdromError(f"recommend: online modes N={online_modes} is not among the table's basis sizes with "
                             f"held-out errors ({', '.join(str(n) for n in sorted(cands))})")
        N = online_modes
    else:
        best = min(r[key_l] for r, _ in cands.values())
        N = min(n for n, (r, _) in cands.items() if r[key_l] <= best * (1 + 1e-9))
    r, pays = cands[N]
    if pays:
        msg = (f"local bases pay off: k={r['k']}, N={N} reach held-out {metric} error {r[key_l]:.3g} against "
               f"{r[key_g]:.3g} for the global basis of the same size"
               + (f" (x{r[key_g] / r[key_l]:.2f})" if r[key_l] > 0 else ""))
    else:
        msg = (f"the global basis: N={N}, held-out {metric} error {r[key_l]:.3g}; no local configuration at "
               f"this N is below it by x{gain_min:g}")
    if not pays:
        msg += also
    return {"choice": r, "local_pays_off": pays, "global_N": global_N, "basis": "held-out", "per_N": per_N,
            "message": msg}
