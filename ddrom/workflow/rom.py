"""ROM stages of a case as library functions: build, run (with enrichment), calibrate, compare, the pipeline.

Every function takes a validated :class:`~ddrom.workflow.case.Case` (or a case file path)
and a communicator, returns objects, and prints nothing: progress goes to the ``ddrom``
logger (rank 0; :func:`ddrom.parallel.log.configure_logging` shows it) and to progress bars
only with ``progress=True``. Files are written where the case says (``case.output``):
``rom.h5``, ``online_<run>.h5|json``, ``summary.json``, figures with ``plots=True``.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

import ddrom
from ddrom.io.h5atomic import write_on_root
from ddrom.parallel import CollectiveError, DdromError, Progress, Timers, as_mpi, get_logger
from ddrom.workflow.build import (build_loads, build_mesh, build_problem, load_case_collectively,
                                  sanity_check_regions)
from ddrom.workflow.hf import hf_sweep, store_path
from ddrom.workflow.options import (classifier_options, enrichment_options, indicator_options, offline_options,
                                    online_newton_options, solver_options)


def rom_path(case: Any) -> Path:
    return Path(case.output_dir) / "rom.h5"


def as_case(case: Any, comm: Any) -> Any:
    """A :class:`~ddrom.workflow.case.Case` from a case object or a file path (validated on every rank)."""
    return load_case_collectively(str(case), comm) if isinstance(case, (str, os.PathLike)) else case


def hf_context(case: Any, comm: Any, timers: Timers | None = None) -> tuple[Any, Any]:
    """The distributed mesh and an HF solver set up with the loads of the first training point."""
    from ddrom.hf.solver import HFSolver
    from ddrom.materials import from_config

    timers = timers or Timers()
    with timers("mesh"):
        dm = build_mesh(case, comm)
    sanity_check_regions(case, dm)
    pts = case.training_parameters() or [case.default_parameters()]
    solver = HFSolver(dm, from_config(case.raw["material"]), build_loads(case, pts[0], dm),
                      solver_options(case), timers=timers)
    return dm, solver


# =================================================================== offline
def build_rom(case: Any, comm: Any, *, context: tuple | None = None, plots: bool = False,
              path: str | os.PathLike | None = None, ignore_resources: bool | None = None) -> dict[str, Any]:
    """Training store -> ROM file (POD, ECM, Gappy-POD, reduced operators; local bases with
    ``[rom] n_clusters > 1`` and the classifier that routes a new input to one of them).
    Returns the offline summary (modes, points, tolerances, classifier, timers).

    The memory of the snapshot blocks and the disk of the ROM file are estimated from the
    store before anything is read, and a request that cannot fit is refused
    (:func:`ddrom.workflow.resources.check_offline`; ``ignore_resources`` overrides).
    """
    from ddrom.io.estimate import MeshSize
    from ddrom.io.store import SnapshotStore
    from ddrom.workflow.resources import check_offline

    case = as_case(case, comm)
    timers = Timers()
    spath = store_path(case, "training")
    store = SnapshotStore.open(spath, comm, mode="r")
    path = Path(path) if path is not None else rom_path(case)
    try:
        if store.case_hash != case.store_hash("training"):
            raise CollectiveError(f"{spath} was computed from another version of the case file; "
                                  f"run `ddrom hf {case.path}` again")
        check_offline(case, comm, MeshSize(store.n_cells, store.n_nodes, store.cell_type),
                      sum(s.n_steps + 1 for s in store.simulations() if s.complete), ignore=ignore_resources)
        t0 = time.perf_counter()     # the stage's seconds include its mesh and solver set-up (timed inside)
        dm, solver = context or hf_context(case, comm, timers)
        store.check_mesh(dm)
        model, _, info = build_rom_file(case, comm, solver, store, path, offline_options(case),
                                        int(case.raw["rom"]["n_clusters"]), classifier_options(case), timers=timers)
    except CollectiveError:
        store.close()           # collective, as the error is (any other one aborts the job)
        raise
    store.close()
    seconds = as_mpi(comm).allreduce(time.perf_counter() - t0, op=_max())
    summary = {"rom": str(path), "seconds": seconds, **model.info, **info, "timers": timers.summary(comm)}
    if plots:
        from ddrom.workflow.plots import plot_singular_values

        png = Path(case.output_dir) / "singular_values.png"
        write_on_root(comm, lambda: plot_singular_values(model, png), f"figure {png}", png)
    return summary


def build_rom_file(case: Any, comm: Any, solver: Any, store: Any, path: Path, opts: Any, n_clusters: int,
                   copts: Any, *, sims: list[str] | None = None, timers: Timers | None = None,
                   global_model: tuple | None = None) -> tuple[Any, dict, dict[str, Any]]:
    """Build the reduced models of the training simulations ``sims`` (default all) of an open
    store and write the ROM file ``path``: the global model, and with ``n_clusters > 1`` one
    model per cluster and their router (:func:`ddrom.rom.classifier.train_router`).

    ``global_model``: an already built ``(model, bases)`` of the same simulations and
    options (reused, not rebuilt). Returns the global model, its bases (as ``global_model``
    takes them) and a summary of the local bases (``clusters``: sizes, modes and points per
    cluster; ``classifier``: method, relevance, cross-validation losses).
    """
    from ddrom.rom.classifier import train_router
    from ddrom.rom.model import save_model
    from ddrom.rom.offline import build_reduced_model, cluster_simulations

    timers = timers or Timers()
    problem = build_problem(case)
    model, bases = global_model or build_reduced_model(problem, solver, store, opts, timers, sims=sims)
    local, classifier, info = [], None, {}
    log = get_logger(comm)
    if n_clusters > 1:
        with timers("clustering"):
            cdata = cluster_simulations(solver, store, n_clusters, sims=sims)
        for ic in range(n_clusters):
            members = [n for n, lab in zip(cdata["names"], cdata["labels"]) if lab == ic]
            local.append(build_reduced_model(problem, solver, store, opts, timers, sims=members))
        with timers("classifier"):
            meta, arrays = train_router(problem, model, cdata["params"], cdata["C"], cdata["groups"], cdata["labels"],
                                        cdata["D"], [m.n_modes for m, _ in local], model.n_modes, copts, comm)
        classifier = {**{k: cdata[k] for k in ("names", "labels", "medoids", "params", "dissimilarity")}, **meta,
                      "arrays": arrays}
        info["clusters"] = [{"simulations": len(m.info["simulations"]), "modes": m.n_modes, "points": m.n_points}
                            for m, _ in local]
        info["classifier"] = {k: meta[k] for k in ("method", "requested", "margin", "cv_loss", "relevance")}
        log.info("  local bases: " + ", ".join(
            f"cluster {ic}: {len(m.info['simulations'])} simulations, {m.n_modes} modes, {m.n_points} points"
            for ic, (m, _) in enumerate(local)))
        log.info(f"  classifier: {meta['method']} (requested {meta['requested']}; leave-one-out losses "
                 + ", ".join(f"{k} {v:.3g}" for k, v in meta["cv_loss"].items()) + "); relevance "
                 + ", ".join(f"{k} {v:.2f}" for k, v in meta["relevance"].get("by_source", {}).items()))
    with timers("write_rom"):
        save_model(path, model, comm, case_hash=case.config_hash,
                   provenance={"case": str(case.path), "ranks": as_mpi(comm).size,
                               "store": str(store.path), "options": vars(opts),
                               **({"simulations": list(sims)} if sims is not None else {})},
                   bases=bases, local=local, classifier=classifier)
    return model, bases, info


# ==================================================================== online
@dataclass
class RomRun:
    """One online run: its name, parameter point, inputs and :class:`~ddrom.rom.online.OnlineResult`."""

    name: str
    params: dict
    result: Any
    inputs: Any = None
    saved_rom: str | None = None

    def __iter__(self):                  # (name, params, result), as the pipeline has always unpacked runs
        return iter((self.name, self.params, self.result))


@dataclass
class OnlineRuns:
    runs: list[RomRun]
    model: Any
    enrichment: Any = None
    rom_file: str = ""


def point_name(params: Mapping[str, Any]) -> str:
    """A run named by its parameter values (job arrays of points never collide); a file
    parameter contributes its file's stem."""
    parts = []
    for k, v in sorted(params.items()):
        parts.append(f"{k}_{Path(v).stem if isinstance(v, str) else format(float(v), 'g')}")
    return "param_" + "_".join(parts)


def run_rom(case: Any, comm: Any, points: list[Mapping[str, Any]] | None = None, *,
            rom: str | os.PathLike | None = None, enrich: bool | None = None,
            indicator_tol: float | None = None, indicator_tols: Mapping[str, float] | None = None,
            max_enrichments: int | None = None, save_rom: str | os.PathLike | bool | None = None,
            allow_defaults: bool = True, context: tuple | None = None, write: bool = True,
            progress: bool = False) -> OnlineRuns:
    """Run the ROM on the case's test points (or ``points``) with the case's inputs.

    What is computed -- time grid, loads, temperature, parameter values -- is the case's
    (:func:`ddrom.rom.inputs.online_inputs` classifies every difference with the ROM file
    and refuses what the ROM cannot represent, naming it). Unknown parameter names are
    errors; a missing one takes its declared default if ``allow_defaults`` (recorded).

    ``rom``: the ROM file (default the case's ``rom.h5``; e.g. an enriched ROM saved by an
    earlier run). Enrichment (``enrich``, default ``[rom.enrichment] enabled``): a step whose
    indicator exceeds its tolerance is recomputed by the HF solver on all ranks and the ROM
    is enriched; the enriched ROM is saved as ``rom_enriched_<run>.h5`` (or ``save_rom`` for
    one point; ``save_rom=False`` or ``[rom.enrichment] save = false``: not saved). With
    ``write``, rank 0 writes ``online_<run>.h5`` and ``.json`` next to the ROM's outputs.
    """
    from ddrom.rom.classifier import load_router
    from ddrom.rom.inputs import online_inputs
    from ddrom.rom.model import load_model, read_calibration

    case = as_case(case, comm)
    log = get_logger(comm)
    rpath = Path(rom) if rom else rom_path(case)
    model = load_model(rpath, comm)
    problem = build_problem(case)
    router = load_router(rpath, comm)
    if router is not None:
        # the case's margin at online time (the ROM file keeps the one its classifier was chosen with)
        router.threshold = classifier_options(case).margin
    if points is None:
        named = [(f"test_{i:03d}", p) for i, p in enumerate(case.test_parameters())]
        if not named:
            raise CollectiveError(f"{case.path.name}: no [test] points and no parameter point given")
    else:
        named = [(point_name(p), dict(p)) for p in points]
    calibration = read_calibration(rpath, comm)
    eopts = enrichment_options(case, enabled=enrich, tolerance=indicator_tol, tolerances=indicator_tols,
                               max_enrichments=max_enrichments, calibration=calibration)
    # the local ROM's safety net without enrichment: the tolerances given or calibrated
    check_tols = eopts.all_tolerances(calibrated_only=True)
    if not eopts.enabled:
        eopts = None
    elif not eopts.all_tolerances(calibrated_only=True):
        raise CollectiveError(f"{case.path.name}: enrichment needs an indicator tolerance: set "
                              "[rom.enrichment] indicator_tol (or [rom] indicator_tol), or run `ddrom run` / "
                              "`ddrom calibrate` once to calibrate it")
    target = save_rom if isinstance(save_rom, (str, os.PathLike)) else None
    save = save_rom is not False and (target is not None or (eopts.save if eopts else False))
    if target is not None and len(named) != 1:
        raise CollectiveError(f"--save-rom names one file but there are {len(named)} parameter points")
    timers = Timers()
    dm = solver = None
    if eopts is not None:
        dm, solver = context or hf_context(case, comm, timers)
    out = OnlineRuns([], model, eopts, str(rpath))
    bar = Progress(comm, total=len(named), desc="ROM runs", quiet=not progress or len(named) < 2, unit="run")
    locals_: dict[int, Any] = {}
    for name, params in named:
        inputs = online_inputs(model, problem, params, comm=comm, allow_defaults=allow_defaults,
                               rom=str(rpath), case=case.path.name)
        for note in inputs.notes:
            log.info(f"  {name}: {note}")
        for note in _extrapolation_notes(inputs):
            log.warning(f"  warning: {name}: {note}")
        enricher_for = None
        field_check = None
        if eopts is not None:
            run_opts, field_check = _run_tolerances(model, inputs, calibration, eopts)
            if field_check is not None:
                _log_tolerance_check(log, name, field_check)

            def enricher_for(m, cl, inputs=inputs, run_opts=run_opts):
                return _enricher(case, problem, solver, dm, m, rpath, cl, inputs, run_opts, timers)
        res, enricher = run_routed(model, rpath, router, inputs, comm, online_newton_options(case), tolerances=check_tols,
                                   enricher_for=enricher_for, local_models=locals_)
        if res.routing:
            r = res.routing
            log.info(f"  {name}: " + (f"local basis {r['cluster']} ({r['classifier']}, margin {r['margin']:.3g})"
                                      if r["cluster"] is not None else f"global basis: {r['reason']}"))
        res.field_check = field_check
        run = RomRun(name, inputs.params, res, inputs)
        if enricher is not None and res.n_enrichments:
            # in the natural layout: the partition of a later mesh (compare, reconstruction) may differ
            res.bases = {name: nmap.to_natural(owned) for name, (nmap, owned) in enricher.bases().items()}
            if save:
                run.saved_rom = str(_save_enriched(case, comm, res, enricher, Path(target) if target is not None
                                                   else Path(case.output_dir) / f"rom_enriched_{name}.h5",
                                                   inputs.params, rpath))
        out.runs.append(run)
        bar.update(1, enrichments=sum(r.result.n_enrichments for r in out.runs))
        log.info(f"  ROM {name} {_fmt_params(inputs.params)}: {res.seconds * 1e3:.1f} ms, {len(res.times) - 1} steps, "
                 f"{res.newton_iterations} Newton iterations, max indicator {_fmt_max(res.indicator)}"
                 + (f", {res.n_enrichments} enrichments ({res.enrichment_seconds:.2f} s, {res.model.n_modes} modes)"
                    if enricher is not None else ""))
        for ev in res.enrichments:
            log.info(f"    enrichment at step {ev['step']} (t = {ev['t']:g}): {ev['reason']}; +{ev['modes_added']} "
                     f"mode(s), +{ev['points_added']}/-{ev['points_removed']} points, {ev['replayed_steps']} steps "
                     f"replayed ({100 * ev.get('replay_elastic_fraction', 0.0):.0f} % of the points proven "
                     f"elastic), {ev['seconds']:.2f} s")
        if write:
            stem = Path(case.output_dir) / f"online_{name}"
            write_on_root(comm, lambda: write_online_result(stem, run), f"online result {stem}", stem)
    bar.close()
    return out


def _run_tolerances(model: Any, inputs: Any, calibration: Mapping[str, Any], eopts: Any) -> tuple[Any, dict | None]:
    """The enrichment options of one run: the tolerances of a field unlike every calibration
    field are the calibration's new-field ones (:func:`ddrom.rom.calibration.tolerances_for_field`),
    those of a run beyond the calibrated time span its beyond-span ones
    (:func:`ddrom.rom.calibration.tolerances_for_time`); the smaller where both apply.
    Returns (options, report or None when the calibration recorded neither fields nor its span)."""
    from dataclasses import replace

    from ddrom.rom.calibration import field_distance, tolerances_for_field, tolerances_for_time
    from ddrom.rom.online import temperature_coordinates

    given = eopts.all_tolerances()
    tols, report = dict(given), None
    if calibration.get("fields"):
        coords = temperature_coordinates(model, inputs)
        d = field_distance(coords, calibration["fields"]) if coords is not None else float("inf")
        tols, report = tolerances_for_field(calibration, d, given)
        report["calibration_fields"] = len(calibration["fields"])
    if calibration.get("calibrated_t_end") is not None:
        t_tols, t_report = tolerances_for_time(calibration, float(inputs.times[-1]), given)
        tols = {k: min(v, t_tols.get(k, v)) for k, v in tols.items()}
        report = {**(report or {"new_field": False, "replaced": {}, "not_validated": []}), "time": t_report}
    if report is None:
        return eopts, None
    if tols == given:
        return eopts, report
    p_tol = tols.get("p") if eopts.tolerance is not None else None
    others = {k: v for k, v in tols.items() if k != "p" and k in eopts.tolerances}
    return replace(eopts, tolerance=p_tol, tolerances=others), report


def _log_tolerance_check(log: Any, name: str, r: dict) -> None:
    """One line on a run whose field is unlike the calibration fields, one on a run beyond the
    calibrated time span (nothing otherwise)."""
    t = r.get("time")
    if t and t["beyond_span"]:
        text = (f"{name}: t_end = {t['t_end']:g} beyond the calibrated span {t['calibrated_t_end']:g} "
                f"(x{t['t_end'] / t['calibrated_t_end']:.3g})")
        if t["replaced"]:
            text += "; beyond-span tolerances " + ", ".join(f"{k} {a:.3g} -> {b:.3g}"
                                                            for k, (a, b) in t["replaced"].items())
        if t["not_validated"]:
            log.warning(f"  warning: {text}; not validated beyond the calibrated span: " + ", ".join(t["not_validated"]))
        else:
            log.info(f"  {text}")
    if not r["new_field"]:
        return
    text = (f"{name}: temperature field unlike the {r['calibration_fields']} calibration field(s) (relative "
            f"distance {r['distance']:.2g})")
    if r["replaced"]:
        text += "; new-field tolerances " + ", ".join(f"{k} {a:.3g} -> {b:.3g}" for k, (a, b) in r["replaced"].items())
    if r["not_validated"]:
        text += ("; not validated for a new field (fewer than 2 calibration fields): "
                 + ", ".join(r["not_validated"]))
    if r["not_validated"]:
        log.warning(f"  warning: {text}")
    else:
        log.info(f"  {text}")


def run_routed(model: Any, rpath: Path, router: Any, inputs: Any, comm: Any, newton: Any, *,
               tolerances: Mapping[str, float] | None = None, enricher_for: Any = None,
               local_models: dict | None = None) -> tuple[Any, Any]:
    """One online run on the basis its router picks, with the safety net of local bases.

    ``router`` (:func:`ddrom.rom.classifier.load_router`; None: the global model runs) picks a
    local model, or the global one when the classifier is unsure (margin below its
    threshold) or the features cannot be computed. Without enrichment (``enricher_for``
    None), a local run whose indicator exceeds a tolerance of ``tolerances`` (component ->
    tolerance, the given or calibrated ones) at some step is run again on the global model
    (fallback ``"indicator"``; the discarded local run's seconds are in
    ``routing["indicator"]["local_seconds"]``); with enrichment the local model is enriched
    instead; a local run whose reduced Newton diverges is run again on the global model too
    (fallback ``"divergence"``). ``enricher_for(model, cluster)`` gives the run's enricher.

    Returns the :class:`~ddrom.rom.online.OnlineResult` (``cluster``, ``rom_file`` and
    ``routing`` set: :meth:`~ddrom.rom.classifier.RoutingDecision.to_dict`, or None without
    local bases) and the enricher (or None).
    """
    from ddrom.rom.model import load_model
    from ddrom.rom.online import OnlineDivergence, ReducedSolver

    decision = router.route(inputs, model) if router is not None else None
    cl = decision.cluster if decision is not None else None
    if cl is None:
        m = model
    else:
        cache = local_models if local_models is not None else {}
        if cl not in cache:
            cache[cl] = load_model(rpath, comm, local=cl)
        m = cache[cl]
    enricher = enricher_for(m, cl) if enricher_for is not None else None
    try:
        res = ReducedSolver(m, options=newton, inputs=inputs).run(enricher=enricher)
    except OnlineDivergence as exc:
        if cl is None or enricher is not None:
            raise
        # the march is replicated: every rank diverged at the same step, every rank falls back
        decision.fallback, decision.cluster = "divergence", None
        decision.reason = f"the local ROM of cluster {cl} diverged ({exc}); the global basis ran"
        res = ReducedSolver(model, options=newton, inputs=inputs).run()
        cl = None
    if cl is not None and enricher is None and tolerances:
        over = indicator_exceeded(res, tolerances)
        if over is not None:
            decision.fallback, decision.cluster = "indicator", None
            decision.reason = (f"the local ROM of cluster {cl} exceeded the {over['component']} indicator "
                               f"tolerance ({over['value']:.3g} > {over['tolerance']:.3g} at step {over['step']}); "
                               "the global basis ran")
            decision.indicator = {**over, "local_seconds": res.seconds}
            res = ReducedSolver(model, options=newton, inputs=inputs).run()
            cl = None
    res.cluster, res.rom_file = cl, str(rpath)
    res.routing = decision.to_dict() if decision is not None else None
    return res, enricher


def indicator_exceeded(res: Any, tolerances: Mapping[str, float]) -> dict | None:
    """The first (step, component) of a run whose indicator exceeds its tolerance, or None."""
    first = None
    for comp, tol in tolerances.items():
        v = np.asarray((res.indicators or {}).get(comp, []), dtype=float)
        bad = np.flatnonzero(np.isfinite(v) & (v > tol))
        if bad.size and (first is None or bad[0] < first["step"]):
            first = {"step": int(bad[0]), "component": comp, "value": float(v[bad[0]]), "tolerance": float(tol)}
    return first


def _enricher(case, problem, solver, dm, model, rpath, cl, inputs, eopts, timers):
    from ddrom.rom.enrichment import Enricher
    from ddrom.rom.model import load_bases

    solver.set_loads(problem.bind(inputs.params, dm))
    names = ["displacement", "stress"] + (["p"] if model.gappy else []) + \
        (["temperature"] if model.temperature_data is not None and model.temperature_data.basis.shape[1] else [])
    bases = load_bases(rpath, dm, names, "bases" if cl is None else f"local/{cl:03d}/bases")
    return Enricher(problem, solver, model, bases, eopts, timers=timers)


def _extrapolation_notes(inputs: Any) -> list[str]:
    notes = []
    ex = inputs.extrapolation
    for p in ex.get("parameters", []):
        notes.append(f"extrapolation: {p['name']} = {p['value']:g} is outside the training range "
                     f"[{p['min']:g}, {p['max']:g}]")
    if "time" in ex:
        t = ex["time"]
        notes.append(f"time extrapolation: t_end = {t['t_end']:g} is {t['factor']:.3g} x the training's "
                     f"{t['training_t_end']:g}")
    return notes


def _fmt_params(p: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {Path(v).name if isinstance(v, str) else format(v, 'g')}"
                           for k, v in p.items()) + "}"


def run_summary(run: RomRun) -> dict[str, Any]:
    """The JSON-able summary of one online run (``online_<run>.json``, the command's output)."""
    res, inputs = run.result, run.inputs
    summary: dict[str, Any] = {
        "name": run.name, "params": run.params, "steps": int(len(res.times) - 1),
        "t_end": float(res.times[-1]), "seconds": res.seconds, "newton_iterations": res.newton_iterations,
        "cutbacks": res.cutbacks, "cluster": res.cluster, "n_modes": int(res.q.shape[1]),
        "max_indicator": _finite_max(res.indicator),
        "max_indicators": {k: _finite_max(v) for k, v in (res.indicators or {}).items()},
        "n_enrichments": res.n_enrichments, "enrichment_seconds": res.enrichment_seconds,
        "enrichments": res.enrichments, "rom_file": getattr(res, "rom_file", None), "saved_rom": run.saved_rom,
        "routing": getattr(res, "routing", None)}
    if inputs is not None:
        summary.update(defaulted_parameters=inputs.defaulted, differences_from_training=inputs.notes,
                       extrapolation=inputs.extrapolation, temperature_file=inputs.temperature.source,
                       temperature_read=inputs.temperature.access or None)
    return summary


def write_online_result(stem: Path, run: RomRun) -> None:
    """One online run as ``stem.h5`` (trajectories) and ``stem.json`` (:func:`run_summary`); rank 0.

    HDF5 datasets: ``times`` (nt,), ``q`` (nt, N) reduced coordinates, ``p_coeff`` (nt, Np)
    and ``stress_coeff`` (nt, Ns) coefficients in the run's final bases, ``dirichlet``
    (nt, D) lifting values, ``indicator`` (nt,) (p component) and ``indicators/<component>``,
    with checksums; attributes ``params`` and ``enrichments`` (JSON). Both files are
    written to private temporary names and renamed when complete
    (:func:`ddrom.io.h5atomic.write_small_h5`, :func:`write_json`): a failure (a full
    disk) removes the temporary and leaves a previous result intact; two runs of one
    point never share a temporary.
    """
    from ddrom.io.h5atomic import io_error_message, write_small_h5
    from ddrom.io.integrity import dataset_options, stamp_attrs

    res = run.result

    def fill(f: Any) -> None:
        for key, v in [(k, getattr(res, k)) for k in ("times", "q", "p_coeff", "stress_coeff", "dirichlet",
                                                       "indicator")] + \
                [(f"indicators/{k}", v) for k, v in (res.indicators or {}).items()]:
            a = np.asarray(v, dtype=float)
            f.create_dataset(key, data=a, **dataset_options(a.shape))
        f.attrs["params"] = json.dumps(run.params)
        f.attrs["enrichments"] = json.dumps(res.enrichments, default=json_default)
        stamp_attrs(f)

    for path, write in ((Path(str(stem) + ".h5"), lambda p: write_small_h5(p, fill)),
                        (Path(str(stem) + ".json"), lambda p: write_json(p, run_summary(run)))):
        try:
            write(path)
        except OSError as exc:                   # named by the file, not by its temporary
            raise DdromError(io_error_message(exc, f"online result {path}", path)) from None


def read_online_times(stem: Path) -> np.ndarray | None:
    """The times of an online result written by :func:`write_online_result` (None if absent)."""
    import h5py

    h5 = Path(str(stem) + ".h5")
    if not h5.is_file():
        return None
    with h5py.File(h5, "r") as f:
        return f["times"][...] if "times" in f else None


def write_json(path: Path, payload: Any) -> None:
    """Strict JSON (NaN and infinities as null, listed under ``nonfinite_as_null``), atomically."""
    from ddrom.io.jsonio import write_json as _write

    _write(path, payload, default=json_default)


def json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _save_enriched(case, comm, res, enricher, path: Path, params, source: Path) -> Path:
    """The enriched ROM as a new file; it keeps the source's indicator calibration so that
    ``ddrom online --rom`` of it can enrich further with the calibrated tolerance."""
    from ddrom.rom.model import read_attrs, save_model

    cal = read_attrs(source, comm, ("indicator_calibration",)).get("indicator_calibration")
    save_model(path, res.model, comm, case_hash=case.config_hash,
               provenance={"case": str(case.path), "ranks": as_mpi(comm).size, "enriched_from": str(source),
                           "parameters": params, "enrichments": res.enrichments},
               bases=enricher.bases(), attrs={"indicator_calibration": json.dumps(cal)} if cal else None,
               private=True)      # online runs share the folder: never one temporary for two writers
    get_logger(comm).info(f"  enriched ROM: {path}")
    return path


def reconstruct_fields(case: Any, comm: Any, runs: list, model: Any, path: str | os.PathLike | None = None,
                       formats: tuple = ("xdmf",), context: tuple | None = None) -> Path:
    """Reconstruct the full fields of ROM runs in parallel; write them as a snapshot store (+ XDMF)
    at ``path`` (default ``OUTPUT/rom_fields.h5``), and with ``"vtu"`` in ``formats`` also as VTU
    per step + PVD in ``<path stem>_vtu/`` (:mod:`ddrom.io.export`). An existing file at ``path``
    is replaced only once the new one is complete."""
    from ddrom.io.store import SnapshotStore, StoreOptions
    from ddrom.rom.evaluation import Reconstruction, run_bases
    from ddrom.workflow.options import store_options

    case = as_case(case, comm)
    dm, solver = context or hf_context(case, comm, Timers())
    problem = build_problem(case)
    path = Path(path) if path is not None else Path(case.output_dir) / "rom_fields.h5"
    # private temporary: ROM runs of one case (job arrays) may reconstruct at the same time
    store = SnapshotStore.create(path, dm, state_names=[], case_hash=case.hf_hash,
                                 provenance={"case": str(case.path), "kind": "ROM reconstruction"}, comm=comm,
                                 private=True,
                                 # the case's compression; no internal variables (a ROM does not keep them)
                                 options=StoreOptions(compression=store_options(case).compression))
    ne, nq = dm.n_cells, dm.n_qp
    try:
        for name, params, res in runs:
            m, bases = run_bases(getattr(res, "rom_file", None) or rom_path(case), dm, model, res)
            solver.set_loads(problem.bind(params, dm))
            rec = Reconstruction(dm, solver, m, bases)
            writer = store.add_simulation(name, params, n_steps=len(res.times) - 1)
            for k, t in enumerate(res.times):
                u = rec.displacement(res, k).reshape(-1, 3)
                p = rec.plastic_strain(res, k).reshape(ne, nq)
                sig = rec.stress(res, k).reshape(ne, nq, 6)
                writer.write_step(k, float(t), u, sig, p, None)
            writer.finish()
    except CollectiveError:
        store.abort()           # no temporary left; a previous file at `path` stays (collective error)
        raise
    store.finalize()
    get_logger(comm).info(f"  reconstructed fields: {path} (+ .xdmf for ParaView)")
    if "vtu" in formats:
        from ddrom.io.export import export_store_vtu

        pvds = export_store_vtu(path, comm, dm, path.with_name(path.stem + "_vtu"))
        get_logger(comm).info(f"  reconstructed fields as VTU: {', '.join(pvds)}")
    return path


# ================================================================ comparison
def compare_runs(case: Any, comm: Any, runs: list, model: Any, which: str = "test",
                 context: tuple | None = None) -> list[dict]:
    """Relative errors of ROM runs against the HF store of ``which`` (runs named as its
    simulations); one dict per run (:func:`ddrom.rom.evaluation.compare`)."""
    from ddrom.io.store import SnapshotStore
    from ddrom.rom.evaluation import compare, run_bases
    from ddrom.rom.online import temperature_coordinates

    case = as_case(case, comm)
    dm, solver = context or hf_context(case, comm, Timers())
    problem = build_problem(case)
    store = SnapshotStore.open(store_path(case, which), comm, mode="r", dmesh=dm)
    out = []
    try:
        for run in runs:
            name, params, res = run
            m, bases = run_bases(getattr(res, "rom_file", None) or rom_path(case), dm, model, res)
            solver.set_loads(problem.bind(params, dm))
            e = compare(dm, solver, m, bases, store, name, res)
            e.update(params=params, cluster=res.cluster, n_modes=m.n_modes, routing=getattr(res, "routing", None))
            inputs = getattr(run, "inputs", None)
            coords = temperature_coordinates(model, inputs) if inputs is not None else None
            if coords is not None:
                # the run's field in the ROM file's temperature-POD coordinates: a calibration
                # records it, so that a later field unlike all of them is recognized
                e["temperature_coeff_per_step"] = coords.tolist()
            get_logger(comm).info(f"  {name}: relative errors u {e['displacement']:.2e}, "
                                  f"p {e['plastic_strain']:.2e}, stress {e['stress']:.2e}")
            out.append(e)
    finally:
        store.close()
    return out


# =============================================================== calibration
def calibrate(case: Any, comm: Any, *, context: tuple | None = None, hf: bool = True, plots: bool = False,
              progress: bool = False, ignore_resources: bool | None = None) -> dict[str, Any]:
    """Calibrate the error indicator on the test points (HF reference computed if missing).

    Runs the plain ROM on the test points, compares it step by step with the HF test
    store, fits each indicator component against its true error
    (:func:`ddrom.rom.calibration.calibrate_indicator`) and stores the result (with the
    tolerances for the error targets ``[rom] indicator_target`` (p) and
    ``indicator_target_u`` (u)) in the ROM file, where ``run_rom(enrich=True)`` finds it.
    ``ignore_resources``: see :func:`ddrom.workflow.hf.hf_sweep` (the test sweep).
    """
    from ddrom.rom.calibration import calibrate_indicator
    from ddrom.rom.model import store_calibration
    from ddrom.rom.online import INDICATOR_COMPONENTS

    c = as_mpi(comm)
    case = as_case(case, comm)
    context = context or hf_context(case, comm, Timers())
    if hf and not case.test_parameters():
        raise CollectiveError(f"{case.path.name}: calibration needs test points ([test]) with an HF reference")
    if hf:
        hf_sweep(case, comm, which="test", progress=progress, dm=context[0], ignore_resources=ignore_resources)
    on = run_rom(case, comm, enrich=False, context=context, progress=progress)
    errors = compare_runs(case, comm, on.runs, on.model, "test", context)
    io = indicator_options(case)
    calibration = calibrate_indicator(errors, io.target, io.confidence, targets={"u": io.target_u},
                                      components=INDICATOR_COMPONENTS)
    if calibration.get("pairs", 0) > 0:
        store_calibration(rom_path(case), calibration, comm)
        if plots:
            from ddrom.workflow.plots import plot_calibration

            png = Path(case.output_dir) / "indicator_calibration.png"
            write_on_root(c, lambda: plot_calibration(errors, calibration, png), f"figure {png}", png)
    if "pearson_log" in calibration:
        get_logger(comm).info(
            f"  indicator calibration: Pearson r(log) = {calibration['pearson_log']:.3f} over "
            f"{calibration['pairs']} (step, point) pairs; indicator tolerance {calibration['indicator_tolerance']} "
            f"for an error target of {calibration['error_target']:g} at {calibration['confidence']:.0%} confidence "
            f"(mean fit: {calibration['indicator_tolerance_fit']})")
    return {"online": on, "errors": errors, "calibration": calibration}


# ================================================================== pipeline
def run(case: Any, comm: Any, *, progress: bool = False, plots: bool = True,
        ignore_resources: bool | None = None) -> dict[str, Any]:
    """HF training sweep, offline, online on the test parameters, HF reference, comparison.

    The indicator is calibrated on the plain ROM runs; with ``[rom.enrichment] enabled``
    the test parameters are then run again with enrichment and compared too. Writes
    ``summary.json`` (rank 0) and returns it. The whole run's memory and disk are
    estimated before the mesh is built, and refused if they cannot fit
    (:func:`ddrom.workflow.resources.check_run`; ``ignore_resources`` overrides).
    """
    from ddrom.parallel.stages import StagePrinter
    from ddrom.workflow.resources import check_run

    case = as_case(case, comm)
    check_run(case, comm, ignore=ignore_resources)
    # every stage timed anywhere below (HF, offline, online, enrichment), for summary.json
    with StagePrinter(comm, "run", quiet=True) as stages:
        return _run(case, comm, progress, plots, stages, ignore_resources)


def _run(case: Any, comm: Any, progress: bool, plots: bool, stages: Any, ignore: bool | None) -> dict[str, Any]:
    c = as_mpi(comm)
    context = hf_context(case, comm, Timers())
    dm, solver = context
    hf_train = hf_sweep(case, comm, which="training", progress=progress, dm=dm, ignore_resources=ignore)
    off = build_rom(case, comm, context=context, plots=plots, ignore_resources=ignore)
    hf_test = hf_sweep(case, comm, which="test", progress=progress, dm=dm, ignore_resources=ignore)
    cal = calibrate(case, comm, context=context, hf=False, plots=plots, progress=progress)
    on, errors, calibration, model = cal["online"], cal["errors"], cal["calibration"], cal["online"].model
    hf_test_secs = {r["name"]: r["seconds"] for r in _runs(hf_test, "test") if r.get("seconds")}
    enrichment = None
    if case.raw["rom"]["enrichment"]["enabled"]:
        on_e = run_rom(case, comm, enrich=True, context=context, progress=progress)
        err_e = compare_runs(case, comm, on_e.runs, model, "test", context)
        for e, (name, _, res) in zip(err_e, on_e.runs):
            e.update(n_enrichments=res.n_enrichments, enrichment_seconds=res.enrichment_seconds,
                     rom_seconds=res.seconds, events=res.enrichments, hf_seconds=hf_test_secs.get(name),
                     field_check=res.field_check)
            e["cost_ratio_to_hf"] = (res.seconds / hf_test_secs[name]) if hf_test_secs.get(name) else None
        enrichment = {
            "indicator_tolerance": on_e.enrichment.tolerance,
            "indicator_tolerances": on_e.enrichment.all_tolerances(),
            "max_enrichments": on_e.enrichment.max_enrichments,
            "n_enrichments": int(sum(e["n_enrichments"] for e in err_e)),
            "enrichment_seconds": float(sum(e["enrichment_seconds"] for e in err_e)),
            "rel_error_displacement": max((e["displacement"] for e in err_e), default=None),
            "rel_error_plastic_strain": max((e["plastic_strain"] for e in err_e), default=None),
            "rel_error_stress": max((e["stress"] for e in err_e), default=None),
            "per_test_parameter": err_e,
        }
        if plots and err_e:
            from ddrom.workflow.plots import plot_enrichment

            png = Path(case.output_dir) / "enrichment.png"
            write_on_root(c, lambda: plot_enrichment(errors, err_e, enrichment, png), f"figure {png}", png)
    hf_secs = list(hf_test_secs.values()) or \
        [r["seconds"] for r in _runs(hf_train, "training") if r.get("seconds")]
    rom_secs = [res.seconds for _, _, res in on.runs]
    summary = {
        "case": str(case.path), "ranks": c.size, "ddrom_version": ddrom.__version__,
        "hf_seconds_per_simulation": float(np.mean(hf_secs)) if hf_secs else None,
        "rom_seconds_per_simulation": float(np.mean(rom_secs)) if rom_secs else None,
        "speedup": (float(np.mean(hf_secs)) / float(np.mean(rom_secs))) if hf_secs and rom_secs else None,
        "rel_error_displacement": max((e["displacement"] for e in errors), default=None),
        "rel_error_plastic_strain": max((e["plastic_strain"] for e in errors), default=None),
        "rel_error_stress": max((e["stress"] for e in errors), default=None),
        "n_modes": model.n_modes, "n_reduced_points": model.n_points,
        "n_sample_points": int(len(model.weights)),
        "per_test_parameter": errors, "offline_seconds": off["seconds"],
        "indicator_calibration": calibration,
        "n_enrichments": enrichment["n_enrichments"] if enrichment else 0,
        "enrichment_seconds": enrichment["enrichment_seconds"] if enrichment else 0.0,
        "enrichment": enrichment,
        "extrapolation": {r.name: r.inputs.extrapolation for r in on.runs if r.inputs.extrapolation},
        "mesh": dm.summary(),
        "timers": stages.timers.summary(comm),
    }
    out = Path(case.output_dir) / "summary.json"
    write_on_root(c, lambda: write_json(out, summary), f"summary {out}", out)
    return summary


def _runs(sweep: dict, which: str) -> list[dict]:
    return sweep.get("sets", {}).get(which, {}).get("runs", [])


def _finite_max(values: Any) -> float | None:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return float(v.max()) if v.size else None


def _fmt_max(values: np.ndarray) -> str:
    v = _finite_max(values)
    return f"{v:.2e}" if v is not None else "n/a (no plastic strain in training)"


def _max():
    from mpi4py import MPI

    return MPI.MAX


__all__ = ["rom_path", "as_case", "hf_context", "build_rom", "build_rom_file", "run_rom", "run_routed",
           "indicator_exceeded", "RomRun", "OnlineRuns", "point_name",
           "run_summary", "write_online_result", "reconstruct_fields", "compare_runs", "calibrate", "run"]
