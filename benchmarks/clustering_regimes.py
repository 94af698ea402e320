"""Physics-informed (angle / Grassmann) vs Euclidean clustering into local bases, on HF data.

Reproduces the claim of the physics-informed clustering paper (issue 3): on a case with
physically distinct regimes, local POD bases built on clusters of an *angle-based*
dissimilarity project the training simulations better than local bases built on
*Euclidean* k-means clusters, at equal numbers of clusters k and modes N.

Pipeline, all through ddrom's own code:

1. the HF training sweep of the case (``ddrom.workflow.hf.hf_sweep``; an up-to-date
   store is reused, not recomputed);
2. the displacement snapshots of every simulation, steps 1..n (the initial state u = 0
   has no direction), read row-distributed from the store, and their Gram matrix
   ``C = S^T S`` (Euclidean inner product on the DOFs) by one all-reduce, then made
   bitwise identical on all ranks (``clustering.agree``); everything after that is
   replicated and needs no communication;
3. for each k, the clusterings compared (all from C only):

   * simulation level (whole simulations grouped, what a local ROM needs):
     ``grassmann_max``, ``grassmann_rss`` and ``grassmann_chordal`` + PAM k-medoids
     (physics-informed: principal angles between the simulations' snapshot subspaces,
     scale invariant; ``grassmann_chordal`` also counts the |r_a - r_b| dimensions one
     span has beyond the other as angles of pi/2), against
     ``euclidean_trajectory`` + kernel k-means (the Euclidean baseline: distance between
     the concatenated time series) and, to separate the effect of the distance from that
     of the algorithm, ``euclidean_trajectory`` + PAM;
   * snapshot level, for completeness: ``angle`` + PAM against ``euclidean`` + kernel
     k-means (columns of one simulation may then fall in different clusters);

4. for each clustering and N: every snapshot projected onto the POD basis (N modes) of
   its own cluster (``criterion.clustering_errors``); the relative error of a
   simulation is ``sqrt(sum_j e_j^2 / sum_j ||u_j||^2)`` over its snapshots; the table
   gives the mean (and max) over the simulations, and the global basis of size N
   (k = 1) as reference.

A relative error below 1e-5 is at the level of the HF solutions' own error (Newton and
KSP tolerances; measured: 1.2e-6 for the smallest-amplitude simulation of the
load-direction case in a cluster whose basis is exactly its direction) and of the
resolution of C (1e-8): the comparison counts two such errors as a tie.

Usage (from the repository root; everything from C is replicated, so any rank count)::

    mpirun -n 2 .venv/bin/python benchmarks/clustering_regimes.py cases/regimes_load_direction.toml \
        [--ks 2 3 4] [--Ns 1 2 3 4 6] [--sv-rtol 1e-4] [--json PATH]
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from typing import Any, Sequence

import numpy as np

import ddrom  # noqa: F401  (PETSc / parallel h5py environment first)
from ddrom.reduction import clustering as cl
from ddrom.reduction.criterion import clustering_errors

#: Relative projection errors below this are HF solver / round-off noise: a tie.
NOISE = 1e-5

#: (key, dissimilarity, method, level, physics-informed?)
METHODS = (
    ("grassmann_max", "grassmann_max", "pam", "simulation", True),
    ("grassmann_rss", "grassmann_rss", "pam", "simulation", True),
    ("grassmann_chordal", "grassmann_chordal", "pam", "simulation", True),
    ("euclid_kmeans", "euclidean_trajectory", "kmeans", "simulation", False),
    ("euclid_pam", "euclidean_trajectory", "pam", "simulation", False),
    ("snap_angle", "angle", "pam", "snapshot", True),
    ("snap_euclid_kmeans", "euclidean", "kmeans", "snapshot", False),
)


def load_gram(case_path: str, comm: Any, quiet: bool = True) -> dict:
    """HF sweep (or reuse), displacement snapshots steps >= 1, replicated Gram matrix.

    Returns a dict with ``C`` (m x m, identical on every rank), ``sims`` (simulation
    name of each column), ``steps``, ``names`` and ``params`` (per simulation, in
    store order), ``n_rows`` (global number of DOFs) and timings. Collective.
    """
    from ddrom.workflow.build import build_mesh, load_case_collectively, sanity_check_regions
    from ddrom.workflow.hf import hf_sweep, store_path
    from ddrom.io.store import SnapshotStore
    from ddrom.parallel import DdromError, as_mpi
    from ddrom.reduction.inner import Euclidean

    c = as_mpi(comm)
    t0 = time.perf_counter()
    case = load_case_collectively(case_path, comm)
    dm = build_mesh(case, comm)
    sanity_check_regions(case, dm)
    sweep = hf_sweep(case, comm, progress=not quiet, dm=dm)
    t_hf = time.perf_counter() - t0
    t0 = time.perf_counter()
    store = SnapshotStore.open(store_path(case, "training"), comm, dmesh=dm)
    try:
        infos = [s for s in sorted(store.simulations(), key=lambda s: s.index) if s.complete]
        n_steps = {s.n_steps for s in infos}
        if len(n_steps) != 1:
            raise DdromError(f"{case_path}: simulations with different numbers of steps "
                             f"{sorted(n_steps)}; the trajectory baseline compares step by step")
        steps = list(range(1, n_steps.pop() + 1))      # step 0 is the zero initial state
        names = [s.name for s in infos]
        S = store.read_block("displacement", dm, sims=names, steps=steps)
        labels = store.snapshot_labels(sims=names, steps=steps)
    finally:
        store.close()
    C = cl.agree(Euclidean().gram(S, comm=comm), comm)
    n_rows = c.allreduce(S.shape[0])
    return {"C": C, "sims": np.array([s for s, _ in labels]), "steps": steps, "names": names,
            "params": [dict(s.params) for s in infos], "n_rows": int(n_rows),
            "hf_sweep": sweep, "seconds_hf": t_hf, "seconds_read_gram": time.perf_counter() - t0}


def compare(C: np.ndarray, sims: Sequence, ks: Sequence[int], Ns: Sequence[int], *,
            sv_rtol: float = 1e-4, seed: int = 0, methods: Sequence[tuple] = METHODS) -> dict:
    """Mean / max relative projection error per (k, N) for each clustering method.

    Parameters
    ----------
    C : (m, m) array
        Replicated Gram matrix of the snapshots (no zero column).
    sims : (m,) array
        Simulation of each column.
    ks, Ns : sequences of int
        Numbers of clusters (>= 2) and of modes per local basis.
    sv_rtol : float
        Each simulation's subspace, for the Grassmann dissimilarities, is its POD truncated
        at ``sigma_i > sv_rtol sigma_1`` (drops the solver noise directions, which are
        nearly orthogonal between simulations).
    seed : int
        Seed of k-means (10 restarts); PAM is deterministic.

    Returns
    -------
    dict
        ``global``: {"mean": [..per N], "max": [..]}; ``rows``: one dict per (k, N) with,
        per method key, ``mean``/``max``; ``labels``: per k and method, the cluster of
        each simulation (simulation level) or of each column (snapshot level).
    """
    names = np.unique(sims)
    g_rel, _ = clustering_errors(C, None, Ns, sims)
    out = {"global": {"mean": g_rel.mean(axis=1).tolist(), "max": g_rel.max(axis=1).tolist()},
           "rows": [], "labels": {}}
    D = {}
    for key, dis, meth, level, _ in methods:
        if meth != "kmeans" and dis not in D:
            opts = {"sv_rtol": sv_rtol} if dis.startswith("grassmann") else {}
            D[dis] = cl.dissimilarity(C, dis, sims=sims, **opts)
    for k in ks:
        res, out["labels"][k] = {}, {}
        for key, dis, meth, level, _ in methods:
            n_items = names.size if level == "simulation" else C.shape[0]
            if k > n_items:
                continue
            c_ = cl.cluster(C, k, dissimilarity=dis, method=meth, sims=sims, seed=seed,
                            D=D.get(dis))
            rel, _ = clustering_errors(C, c_, Ns, sims)
            res[key] = rel
            out["labels"][k][key] = c_.labels.tolist()
        for i, N in enumerate(Ns):
            row = {"k": int(k), "N": int(N), "global_mean": out["global"]["mean"][i],
                   "global_max": out["global"]["max"][i]}
            for key, rel in res.items():
                row[key] = {"mean": float(rel[i].mean()), "max": float(rel[i].max())}
            out["rows"].append(row)
    return out


def verdict(a: float, b: float, noise: float = NOISE) -> str:
    """'<' if a is lower than b by more than the noise, '>' if higher, '=' otherwise."""
    if max(a, b) <= noise:
        return "="
    return "<" if a < b else (">" if a > b else "=")


def summarize(res: dict, key_a: str = "grassmann_max", key_b: str = "euclid_kmeans") -> dict:
    """Count the (k, N) where ``key_a`` has a lower / higher / equal mean error than ``key_b``."""
    v = [verdict(r[key_a]["mean"], r[key_b]["mean"]) for r in res["rows"]
         if key_a in r and key_b in r]
    return {"a": key_a, "b": key_b, "lower": v.count("<"), "higher": v.count(">"),
            "tie": v.count("="), "total": len(v)}


SIM_KEYS = ("grassmann_max", "grassmann_rss", "grassmann_chordal", "euclid_kmeans", "euclid_pam")


def format_tables(res: dict) -> str:
    """The mean and max tables (simulation level, then snapshot level)."""
    lines = []
    snap_keys = ["snap_angle", "snap_euclid_kmeans"]
    for stat in ("mean", "max"):
        lines.append(f"\n{stat} relative projection error of the training simulations "
                     f"(simulation-level clusters; ratio = euclid_kmeans / grassmann_*, > 1: "
                     f"Grassmann better)")
        head = (f"{'k':>2} {'N':>3} {'global':>9} | {'grass_max':>9} {'grass_rss':>9} "
                f"{'grass_chord':>11} | {'eucl_kmeans':>11} {'eucl_pam':>9} | "
                f"{'ratio max':>9}   {'ratio chord':>11}  ")
        lines += [head, "-" * len(head)]
        for r in res["rows"]:
            if not all(k in r for k in SIM_KEYS):
                continue
            a, c, b = (r["grassmann_max"][stat], r["grassmann_chordal"][stat],
                       r["euclid_kmeans"][stat])
            ra = b / a if a > NOISE else float("nan")
            rc = b / c if c > NOISE else float("nan")
            lines.append(f"{r['k']:>2} {r['N']:>3} {r[f'global_{stat}']:>9.2e} | "
                         f"{a:>9.2e} {r['grassmann_rss'][stat]:>9.2e} {c:>11.2e} | {b:>11.2e} "
                         f"{r['euclid_pam'][stat]:>9.2e} | {ra:>9.3g} {verdict(a, b)} "
                         f"{rc:>11.3g} {verdict(c, b)}")
    lines.append("\nsnapshot-level clusters (columns of one simulation may be split): "
                 "mean (max) relative error")
    head = f"{'k':>2} {'N':>3} {'global':>9} | {'angle PAM':>21} | {'euclid kmeans':>21}"
    lines += [head, "-" * len(head)]
    for r in res["rows"]:
        if not all(k in r for k in snap_keys):
            continue
        a, b = r["snap_angle"], r["snap_euclid_kmeans"]
        lines.append(f"{r['k']:>2} {r['N']:>3} {r['global_mean']:>9.2e} | "
                     f"{a['mean']:>9.2e} ({a['max']:>9.2e}) | {b['mean']:>9.2e} "
                     f"({b['max']:>9.2e})  {verdict(a['mean'], b['mean'])}")
    return "\n".join(lines)


def format_clusters(res: dict, params: list[dict]) -> str:
    """Which simulations each simulation-level method puts together, per k."""
    pnames = list(params[0]) if params else []
    lines = ["\nsimulations (store order): " + "; ".join(
        f"#{i} " + ", ".join(f"{p}={q[p]:.3g}" for p in pnames) for i, q in enumerate(params))]
    for k, by in res["labels"].items():
        for key in SIM_KEYS:
            if key in by:
                lab = np.asarray(by[key])
                groups = [np.flatnonzero(lab == c).tolist() for c in range(lab.max() + 1)]
                lines.append(f"k={k} {key:>14}: " + " ".join(
                    "{" + ",".join(map(str, g)) + "}" for g in groups))
    return "\n".join(lines)


def main(argv=None) -> int:
    from mpi4py import MPI

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("case", help="case file (TOML) with a training set")
    p.add_argument("--ks", type=int, nargs="+", default=[2, 3, 4], help="numbers of clusters")
    p.add_argument("--Ns", type=int, nargs="+", default=[1, 2, 3, 4, 6], help="modes per basis")
    p.add_argument("--sv-rtol", type=float, default=1e-4,
                   help="truncation of each simulation's span for the Grassmann distances")
    p.add_argument("--seed", type=int, default=0, help="seed of k-means")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    a = p.parse_args(argv)
    comm = MPI.COMM_WORLD
    data = load_gram(a.case, comm)
    t0 = time.perf_counter()
    res = compare(data["C"], data["sims"], a.ks, a.Ns, sv_rtol=a.sv_rtol, seed=a.seed)
    t_cl = time.perf_counter() - t0
    s_sim = summarize(res)
    s_chord = summarize(res, "grassmann_chordal", "euclid_kmeans")
    s_snap = summarize(res, "snap_angle", "snap_euclid_kmeans")
    if comm.rank == 0:
        m = data["C"].shape[0]
        runs = data["hf_sweep"]["sets"]["training"].get("runs", [])
        # max p is known for the simulations computed in this run only (not for reused ones)
        ps = [r["max_plastic_strain"] for r in runs if "max_plastic_strain" in r]
        pmax = max(ps) if ps else None
        print(f"{a.case}: {len(data['names'])} simulations x {len(data['steps'])} steps = {m} "
              f"snapshots of {data['n_rows']} DOFs on {comm.size} rank(s); HF sweep "
              f"{data['seconds_hf']:.1f} s ({data['hf_sweep']['sets']['training'].get('computed', 0)} "
              f"computed" + (f", max p = {pmax:.2e}" if pmax is not None else "") + f"), read + Gram "
              f"{data['seconds_read_gram']:.2f} s, all clusterings + errors {t_cl:.2f} s; "
              f"Grassmann spans cut at sigma_i > {a.sv_rtol:g} sigma_1")
        print(format_tables(res))
        print(format_clusters(res, data["params"]))
        print(f"\nsimulation level: grassmann_max mean error lower than euclidean k-means at "
              f"{s_sim['lower']}/{s_sim['total']} (k, N), higher at {s_sim['higher']}, tie "
              f"(both < {NOISE:g}) at {s_sim['tie']}")
        print(f"simulation level: grassmann_chordal mean error lower than euclidean k-means at "
              f"{s_chord['lower']}/{s_chord['total']} (k, N), higher at {s_chord['higher']}, "
              f"tie at {s_chord['tie']}")
        print(f"snapshot level: angle PAM lower than euclidean k-means at {s_snap['lower']}/"
              f"{s_snap['total']}, higher at {s_snap['higher']}, tie at {s_snap['tie']}")
        if a.json:
            from ddrom.io.jsonio import write_json  # strict JSON (NaN -> null), atomic

            write_json(a.json, {"benchmark": "clustering_regimes", "case": a.case, "ranks": comm.size,
                           "python": sys.version.split()[0], "numpy": np.__version__,
                           "machine": platform.machine(), "args": vars(a),
                           "n_rows": data["n_rows"], "n_snapshots": int(data["C"].shape[0]),
                           "simulations": data["names"], "params": data["params"],
                           "seconds": {"hf": data["seconds_hf"],
                                       "read_gram": data["seconds_read_gram"], "clustering": t_cl},
                           "results": res, "summary": {"simulation": s_sim, "simulation_chordal": s_chord,
                                       "snapshot": s_snap}}, indent=2)
            print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
