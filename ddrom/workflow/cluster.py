"""The local-vs-global criterion of a case (``ddrom cluster``): a priori, then checked a posteriori.

Three answers to "do local bases pay off on this case, with how many clusters and modes?",
from the cheapest to the most faithful:

1. **Training projection error** (:func:`ddrom.reduction.criterion.efficiency_table`): each
   training simulation projected onto its own cluster's basis. Optimistic: a cluster of a
   few simulations fits them exactly once N reaches its rank.
2. **Held-out projection error** (:func:`ddrom.reduction.criterion.heldout_table`), the
   criterion's recommendation: folds of the training simulations are held out; the
   clusters, the feature relevance, the classifier and the bases are built from the others,
   and each held-out simulation is routed as an online run would be (the global basis when
   the classifier is unsure) and projected onto the basis it reaches. Everything from the
   replicated Gram matrix of the snapshots: no ROM is built.
3. **Held-out online errors** (:func:`heldout_online`, ``check``): the ROMs themselves. With
   ``check="folds"`` the same folds: the ROM files (global and local models, router) are
   built from the fold's training simulations, the held-out simulations are run online and
   compared with their HF snapshots in the training store. With ``check="test"``: ROMs
   built from every training simulation, run on the case's test points and compared with
   the HF test store (which must exist and be up to date).
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ddrom.parallel import CollectiveError, Timers, as_mpi, get_logger, raise_collective
from ddrom.reduction.criterion import GAIN_MIN, format_table
from ddrom.reduction.routing import DEFAULT_FOLDS
from ddrom.workflow.hf import store_path
from ddrom.workflow.options import classifier_options, offline_options, online_newton_options
from ddrom.workflow.rom import as_case, build_rom_file, hf_context, run_routed


#: POD tolerance of the ROMs of the a posteriori check: their size is the configuration's N
#: (``max_modes``), not the case's ``pod_tol``, so that they are the table's configurations.
CHECK_POD_TOL = 1e-10

CHECK_MODES = ("folds", "test")


def _gram_and_features(case: Any, comm: Any, dm: Any, solver: Any, store: Any, timers: Timers) -> dict:
    """The replicated Gram matrix of the training displacement snapshots (t = 0 excluded,
    prescribed DOFs zeroed) and the raw classifier inputs of each simulation."""
    from ddrom.reduction import Euclidean
    from ddrom.reduction.clustering import agree
    from ddrom.rom.classifier import temperature_probe, training_temperature_vectors
    from ddrom.workflow.build import build_problem

    sims_info = [s for s in store.simulations() if s.complete]
    steps = range(1, sims_info[0].n_steps + 1)
    names = [s.name for s in sims_info]
    with timers("gram"):
        U = store.read_block("displacement", dm, sims=names, steps=steps)
        U[solver.fixed[: 3 * dm.n_owned]] = 0.0
        C = agree(Euclidean().gram(U, comm=comm), comm)
        del U
    labels = [lab[0] for lab in store.snapshot_labels(sims=names, steps=steps)]
    problem = build_problem(case)
    # the simulations in the criterion's order (sorted labels, as simulation_groups)
    order = np.argsort(np.asarray(names), kind="stable")
    params = [dict(sims_info[i].params) for i in order]
    with timers("classifier_inputs"):
        times = [float(t) for t in problem.times[1:]]
        probe = temperature_probe(solver, int(case.raw["rom"]["temperature_sensors"]))
        V = training_temperature_vectors(problem, params, probe, times, comm)
    return {"C": C, "labels": labels, "names": [names[i] for i in order], "params": params, "problem": problem,
            "temperatures": V, "times": times}


def cluster_report(case: Any, comm: Any, ks: list[int] | None = None, Ns: list[int] | None = None,
                   dissimilarity: str = "grassmann_max", error_target: float | None = None,
                   budget: float | None = None, plots: bool = False, *, folds: int | None = DEFAULT_FOLDS,
                   check: str | None = "folds", check_configs: Sequence[tuple[int, int]] | None = None,
                   keep_roms: bool = False, online_modes: int | None = None) -> dict[str, Any]:
    """The local-vs-global criterion of a case: a priori tables, recommendation, a posteriori check.

    Parameters
    ----------
    case, comm : the case (or its path) and the communicator
    ks, Ns : numbers of clusters (default 1..4) and basis sizes (default 1, 2, 4, ... 32)
    dissimilarity : of the simulations' subspaces (clusters, feature relevance)
    error_target, budget : the recommendation's mean held-out error target (None: the most
        accurate configuration) and offline cost budget relative to the global basis
    folds : number of folds of the held-out criterion (None: leave-one-out)
    check : ``"folds"`` (held-out online errors on the same folds), ``"test"`` (the case's
        test points against their HF store) or None (no ROM is built)
    check_configs : the (k, N) checked a posteriori (default: every k of ``ks`` at the
        recommended N, the global basis included: the verdict chooses among them)
    keep_roms : keep the check's ROM files (``OUTPUT/cluster_check/``)
    online_modes : the online budget, modes per basis (one of ``Ns``): the recommendation
        chooses local or global bases at this N (None: by ``error_target``, or the most
        accurate N)

    Returns
    -------
    dict
        ``table`` (one row per (k, N): training projection errors and the held-out ones,
        :func:`ddrom.reduction.criterion.merge_heldout`), ``recommendation``
        (:func:`~ddrom.reduction.criterion.recommend_heldout`), ``recommendation_training``
        (the training-error recommendation of earlier versions, with ``error_target``),
        ``heldout`` (protocol), ``check`` (:func:`heldout_online`), ``verdict``
        (:func:`verdict`: the final recommendation, the configuration the check supports), timers.
    """
    from ddrom.io.store import SnapshotStore
    from ddrom.reduction.criterion import (efficiency_table, heldout_table, merge_heldout, plot_efficiency,
                                           recommend, recommend_heldout)
    from ddrom.reduction.routing import folds_of
    from ddrom.rom.classifier import InputFeatures

    if folds is not None and (isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2):
        raise CollectiveError(f"cluster: folds must be an integer >= 2 (or None: leave-one-out), got {folds!r}")
    if check is not None and check not in CHECK_MODES:
        raise CollectiveError(f"cluster: check must be one of {', '.join(CHECK_MODES)} or None, got {check!r}")
    c = as_mpi(comm)
    case = as_case(case, comm)
    timers = Timers()
    dm, solver = hf_context(case, comm, timers)
    store = SnapshotStore.open(store_path(case, "training"), comm, mode="r", dmesh=dm)
    try:
        g = _gram_and_features(case, comm, dm, solver, store, timers)
    finally:
        store.close()
    C, labels = g["C"], g["labels"]
    nsim = len(g["names"])
    ks = ks or [k for k in (1, 2, 3, 4) if k <= nsim]
    m = C.shape[0]
    Ns = Ns or sorted({n for n in (1, 2, 4, 8, 12, 16, 24, 32) if n <= m})
    if online_modes is not None and (error_target is not None or online_modes not in Ns):
        raise CollectiveError(f"cluster: online modes N={online_modes} " + (
            "and an error target exclude each other (the target chooses N)" if error_target is not None else
            f"is not among the basis sizes of the table ({', '.join(str(n) for n in Ns)})"))
    copts = classifier_options(case)
    with timers("criterion"):
        table = efficiency_table(C, labels, ks, Ns, dissimilarity=dissimilarity, n_rows=3 * dm.n_nodes_global)
    out: dict[str, Any] = {"case": str(case.path), "simulations": nsim, "snapshots": m,
                           "dissimilarity": dissimilarity}
    if nsim >= 2:
        fl = folds_of(nsim, folds)
        spec = g["problem"].describe()["parameters"]
        V, params = g["temperatures"], g["params"]

        def features(train: np.ndarray) -> tuple[np.ndarray, list]:
            f = InputFeatures.fit(spec, V[train], g["times"], float(g["problem"].temperature.T_ref))
            X = np.array([f.vector(p, V[i]) for i, p in enumerate(params)]).reshape(nsim, f.n_features)
            return X, f.groups

        held, msg = None, None
        if c.rank == 0:       # the neural network's fits: on one rank, broadcast
            try:
                with timers("criterion_heldout"):
                    held = heldout_table(C, labels, ks, Ns, features=features, folds=fl, dissimilarity=dissimilarity,
                                         classifier=copts.method, margin=copts.margin, seed=copts.seed)
            except Exception as exc:  # noqa: BLE001 - one message on every rank, no hang
                msg = f"held-out criterion: {type(exc).__name__}: {exc}"
        raise_collective(c, msg)
        held = c.bcast(held, root=0)
        table = merge_heldout(table, held)
        out["heldout"] = {"folds": [f.tolist() for f in fl], "n_folds": len(fl),
                          "protocol": _protocol(nsim, len(fl)), "classifier": copts.method,
                          "margin": copts.margin, "simulations": g["names"]}
        out["recommendation"] = recommend_heldout(table, error_target, budget, online_modes=online_modes)
    out["table"] = table
    if error_target is not None:
        out["recommendation_training"] = recommend(table, error_target, budget)
    if check is not None and "recommendation" in out and out["recommendation"]["choice"] is not None:
        configs = list(check_configs) if check_configs else _default_configs(ks, out["recommendation"])
        out["check"] = heldout_online(case, comm, configs, mode=check, folds=folds, context=(dm, solver),
                                      keep_roms=keep_roms)
        out["verdict"] = verdict(out["recommendation"], out["check"])
    out["timers"] = timers.summary(comm)
    if plots:
        from ddrom.io.h5atomic import write_on_root

        path = Path(case.output_dir) / "cluster_criterion.png"
        write_on_root(c, lambda: plot_efficiency(table, str(path), f"{case.name}: local ({dissimilarity}) vs "
                                                                    "global bases"), f"figure {path}", path)
        out["plot"] = str(path)
    return out


def _protocol(nsim: int, n_folds: int) -> str:
    if n_folds == nsim:
        return f"leave-one-out over the {nsim} training simulations"
    return (f"{n_folds} folds of the {nsim} training simulations (simulation i, in name order, held out in "
            f"fold i mod {n_folds})")


def _default_configs(ks: Sequence[int], rec: dict) -> list[tuple[int, int]]:
    """Every k at the recommended N (the global basis first): the check decides among them."""
    N = rec["choice"]["N"]
    return [(1, N)] + [(k, N) for k in sorted(set(ks)) if k > 1]


def heldout_online(case: Any, comm: Any, configs: Sequence[tuple[int, int]], *, mode: str = "folds",
                   folds: int | None = DEFAULT_FOLDS, context: tuple | None = None, keep_roms: bool = False
                   ) -> dict[str, Any]:
    """Online errors of ROM configurations (k clusters, N modes) on simulations none was built from.

    ``mode="folds"``: for each fold of the training simulations (as the held-out criterion),
    one ROM file per configuration is built from the other simulations (``max_modes = N``,
    ``pod_tol`` :data:`CHECK_POD_TOL`, the case's other ``[rom]`` options; k = 1: the global
    model alone; the global model of a fold and N is shared by its configurations), each
    held-out simulation is run online (routed by the fold's classifier, the global basis when
    it is unsure) and compared with its HF snapshots in the training store.
    ``mode="test"``: one ROM per configuration from every training simulation, run on the
    case's test points, compared with the HF test store.

    Returns
    -------
    dict
        ``mode``, ``protocol``, and ``configs``: per (k, N) the mean and max relative
        space-time errors (``displacement``, ``plastic_strain``, ``stress``), the mean online
        seconds per run (a local run discarded by the indicator fallback included), the mean
        modes and points of the models run, the number of runs that fell back to the global
        basis, and ``runs`` (one dict per run).
    """
    from ddrom.io.store import SnapshotStore
    from ddrom.reduction.routing import folds_of
    from ddrom.rom.classifier import load_router
    from ddrom.rom.evaluation import compare, run_bases
    from ddrom.rom.inputs import online_inputs
    from ddrom.workflow.build import build_problem

    if mode not in CHECK_MODES:
        raise CollectiveError(f"heldout_online: mode must be one of {', '.join(CHECK_MODES)}, got {mode!r}")
    c = as_mpi(comm)
    case = as_case(case, comm)
    log = get_logger(comm)
    dm, solver = context or hf_context(case, comm, Timers())
    problem = build_problem(case)
    newton = online_newton_options(case)
    copts = classifier_options(case)
    configs = [(int(k), int(N)) for k, N in configs]
    train_store = SnapshotStore.open(store_path(case, "training"), comm, mode="r", dmesh=dm)
    ref_store = None
    try:
        infos = sorted((s for s in train_store.simulations() if s.complete), key=lambda s: s.name)
        names = [s.name for s in infos]
        if mode == "folds":
            if len(names) < 2:
                raise CollectiveError(f"{case.path.name}: the held-out check needs at least 2 training simulations")
            fl = folds_of(len(names), folds)
            plan = [([names[i] for i in range(len(names)) if i not in set(h.tolist())],
                     [(names[i], dict(infos[i].params)) for i in h]) for h in fl]
            protocol = _protocol(len(names), len(fl))
            ref_store = train_store
        else:
            tpath = store_path(case, "test")
            if not case.test_parameters() or not Path(tpath).exists():
                raise CollectiveError(f"{case.path.name}: check 'test' needs [test] points and their HF store "
                                      f"{tpath} (run `ddrom hf {case.path} --which test`)")
            ref_store = SnapshotStore.open(tpath, comm, mode="r", dmesh=dm)
            if ref_store.case_hash != case.store_hash("test"):
                raise CollectiveError(f"{tpath} was computed from another version of the case file; "
                                      f"run `ddrom hf {case.path} --which test` again")
            tests = sorted((s for s in ref_store.simulations() if s.complete), key=lambda s: s.name)
            plan = [(None, [(s.name, dict(s.params)) for s in tests])]
            protocol = (f"the case's {len(tests)} test points against their HF store, ROMs from every training "
                        "simulation")
        folder = Path(case.output_dir) / "cluster_check"
        if c.rank == 0:
            folder.mkdir(parents=True, exist_ok=True)
        c.Barrier()
        results: dict[tuple[int, int], list[dict]] = {cfg: [] for cfg in configs}
        unbuildable: dict[tuple[int, int], list[dict]] = {cfg: [] for cfg in configs}
        opts0 = offline_options(case)
        for f, (train, held) in enumerate(plan):
            for N in sorted({N for _, N in configs}):
                opts = dataclasses.replace(opts0, pod_tol=CHECK_POD_TOL, max_modes=N)
                glob = None
                for k, _ in [cfg for cfg in configs if cfg[1] == N]:
                    if train is not None and k > len(train):
                        log.warning(f"  check fold {f}: k={k} clusters of {len(train)} training simulations: skipped")
                        continue
                    path = folder / f"fold{f}_k{k}_N{N}.h5"
                    t0 = time.perf_counter()
                    try:
                        model, gbases, _ = build_rom_file(case, comm, solver, train_store, path, opts, k, copts,
                                                          sims=train, global_model=glob)
                    except CollectiveError as exc:
                        # e.g. a small cluster's plastic-strain basis singular at the integration
                        # points: this configuration cannot be built from these simulations, which
                        # is a result of the check (the worst one), not the end of the report
                        log.warning(f"  check fold {f} k={k} N={N}: cannot be built: {exc}")
                        unbuildable[(k, N)].append({"fold": f, "reason": str(exc)})
                        continue
                    glob = (model, gbases)
                    build_s = time.perf_counter() - t0
                    router = load_router(path, comm)
                    locals_: dict = {}
                    for name, params in held:
                        inputs = online_inputs(model, problem, params, comm=comm, rom=str(path), case=case.path.name)
                        res, _ = run_routed(model, path, router, inputs, comm, newton, local_models=locals_)
                        m, bases = run_bases(path, dm, model, res)
                        solver.set_loads(problem.bind(inputs.params, dm))
                        e = compare(dm, solver, m, bases, ref_store, name, res)
                        r = res.routing or {}
                        results[(k, N)].append({
                            "name": name, "fold": f, "params": inputs.params, "displacement": e["displacement"],
                            "plastic_strain": e["plastic_strain"], "stress": e["stress"],
                            "seconds": res.seconds + r.get("indicator", {}).get("local_seconds", 0.0),
                            "modes": m.n_modes, "points": m.n_points, "cluster": res.cluster,
                            "routing": res.routing, "build_seconds": build_s})
                    log.info(f"  check fold {f} k={k} N={N}: " + ", ".join(
                        f"{x['name']} u {x['displacement']:.2e}" for x in results[(k, N)] if x["fold"] == f))
                    if not keep_roms and c.rank == 0:
                        path.unlink(missing_ok=True)
        rows = []
        for (k, N), runs in results.items():
            if unbuildable[(k, N)]:
                # not comparable over fewer simulations: ranked as the worst configuration
                rows.append({"k": k, "N": N, "runs": runs, "n_runs": len(runs), "unbuildable": unbuildable[(k, N)],
                             **{key: math.inf for key in ("mean_displacement", "max_displacement",
                                                          "mean_plastic_strain", "mean_stress")},
                             "seconds_mean": math.nan, "modes_mean": math.nan, "points_mean": math.nan,
                             "fallbacks": 0, "routed_local": 0})
                continue
            if not runs:
                continue
            u = np.array([x["displacement"] for x in runs])
            rows.append({"k": k, "N": N, "runs": runs, "n_runs": len(runs),
                         "mean_displacement": float(u.mean()), "max_displacement": float(u.max()),
                         "mean_plastic_strain": float(np.mean([x["plastic_strain"] for x in runs])),
                         "mean_stress": float(np.mean([x["stress"] for x in runs])),
                         "seconds_mean": float(np.mean([x["seconds"] for x in runs])),
                         "modes_mean": float(np.mean([x["modes"] for x in runs])),
                         "points_mean": float(np.mean([x["points"] for x in runs])),
                         "fallbacks": int(sum(1 for x in runs if (x["routing"] or {}).get("fallback"))),
                         "routed_local": int(sum(1 for x in runs if x["cluster"] is not None))})
    finally:
        if ref_store is not None and ref_store is not train_store:
            ref_store.close()
        train_store.close()
    return {"mode": mode, "protocol": protocol, "configs": rows}


def verdict(recommendation: dict, check: dict, gain_min: float = GAIN_MIN) -> dict:
    """The final recommendation: the a priori choice's N, and among the configurations the a
    posteriori check ran at that N the one its held-out online errors support.

    The a priori criterion proposes N and whether local bases pay off there; the check (a
    cross-validation of the ROMs themselves on simulations they were not built from) picks the
    local configuration with the smallest mean online displacement error at that N among
    those built in every fold at no higher online cost than the global ROM (mean modes and
    reduced points per run), and decides:

    * a priori local: that configuration when its online error is not above the global
      basis' (both pieces of evidence agree that local bases help; the check chooses k),
      else the global basis;
    * a priori global: that configuration only when its online error times ``gain_min`` is
      below the global basis' (the margin :func:`~ddrom.reduction.criterion.recommend_heldout`
      asks of projection errors: the check must overturn the criterion clearly), else the
      global basis.

    At small N the online error is dominated by the hyper-reduction and the reduced Newton,
    which a projection error does not see: that is where the check overturns the criterion.
    ``agrees`` says whether the final k is the a priori one; the message names any
    disagreement (a local choice overruled or replaced by another k, a local gain the
    criterion missed, a gain at a higher online cost).

    Returns
    -------
    dict
        ``k``, ``N`` (the final configuration), ``a_priori`` ([k, N] of the criterion),
        ``agrees``, ``online_error`` and ``online_error_global`` (mean held-out displacement
        errors, NaN when not checked), ``message``.
    """
    ch = recommendation["choice"]
    k0, N = ch["k"], ch["N"]
    rows = {(r["k"], r["N"]): r for r in check["configs"]}
    glob = rows.get((1, N))
    out = {"N": N, "a_priori": [k0, N]}
    if glob is None or not math.isfinite(glob["mean_displacement"]):
        return {**out, "k": k0, "agrees": None, "online_error": math.nan, "online_error_global": math.nan,
                "message": f"k={k0}, N={N} (a priori); the check has no global ROM of N={N} to compare with"}
    g_err = glob["mean_displacement"]
    loc = [r for (kk, nn), r in rows.items() if kk > 1 and nn == N]
    built = [r for r in loc if not r.get("unbuildable") and math.isfinite(r["mean_displacement"])]
    dearer = [r for r in built if r["modes_mean"] > glob["modes_mean"] or r["points_mean"] > glob["points_mean"]]
    built = [r for r in built if r not in dearer]
    best = min(built, key=lambda r: (r["mean_displacement"], r["k"])) if built else None
    # a local a priori choice needs the check not to contradict it; a global one, a clear gain
    needed = g_err if k0 > 1 else g_err / gain_min
    take = best is not None and (best["mean_displacement"] <= needed if k0 > 1 else
                                    best["mean_displacement"] < needed)
    notes = []
    if k0 > 1:
        mine = rows.get((k0, N))
        if mine is None:
            notes.append(f"the recommended k={k0} was not checked")
        elif mine.get("unbuildable"):
            why = mine["unbuildable"][0]
            notes.append(f"the recommended k={k0} could not be built in fold {why['fold']} ({why['reason']})")
        elif not (take and best["k"] == k0):
            notes.append(f"online, the recommended k={k0} gave {mine['mean_displacement']:.3g} against "
                         f"{g_err:.3g} for the global basis")
    for r in dearer:
        if r["mean_displacement"] < needed:
            notes.append(f"k={r['k']} gave {r['mean_displacement']:.3g} against {g_err:.3g} but at a higher online "
                         f"cost ({r['modes_mean']:.1f} modes, {r['points_mean']:.1f} points against "
                         f"{glob['modes_mean']:.1f}, {glob['points_mean']:.1f})")
    if k0 == 1 and not take and best is not None and best["mean_displacement"] < g_err:
        notes.append(f"k={best['k']} gave {best['mean_displacement']:.3g}, a gain below x{gain_min:g}")
    if take:
        k, e = best["k"], best["mean_displacement"]
        head = (f"k={k}, N={N}: held-out online displacement error {e:.3g} against {g_err:.3g} for the global basis "
                f"(x{g_err / e if e > 0 else math.inf:.2f}) at {best['points_mean']:.1f} against "
                f"{glob['points_mean']:.1f} reduced points")
        if k0 == 1:
            notes.append("the a priori criterion chose the global basis: a local gain it missed, found by the check")
    else:
        k, e = 1, g_err
        head = f"the global basis, N={N}: held-out online displacement error {g_err:.3g}"
        if k0 == 1 and not notes:
            head += "; no checked local configuration beats it online"
    return {**out, "k": k, "agrees": k == k0, "online_error": e, "online_error_global": g_err,
            "message": head + ("; " + "; ".join(notes) if notes else "")}


def format_check(check: dict) -> str:
    """Plain-text rendering of :func:`heldout_online` (what ``ddrom cluster`` prints)."""
    head = (f"{'k':>3} {'N':>4} {'mean u':>10} {'max u':>10} {'mean p':>10} {'mean stress':>11} {'s/run':>9} "
            f"{'modes':>6} {'points':>7} {'local':>6} {'fallback':>8}")
    lines = [f"held-out online errors ({check['protocol']}):", head, "-" * len(head)]
    for r in check["configs"]:
        lines.append(f"{r['k']:>3} {r['N']:>4} {r['mean_displacement']:>10.3e} {r['max_displacement']:>10.3e} "
                     f"{r['mean_plastic_strain']:>10.3e} {r['mean_stress']:>11.3e} {r['seconds_mean']:>9.2e} "
                     f"{r['modes_mean']:>6.1f} {r['points_mean']:>7.1f} {r['routed_local']:>3}/{r['n_runs']:<2} "
                     f"{r['fallbacks']:>8}")
    return "\n".join(lines)


__all__ = ["cluster_report", "heldout_online", "verdict", "format_check", "format_table", "DEFAULT_FOLDS",
           "CHECK_POD_TOL"]
