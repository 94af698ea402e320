"""ROM stages of the pipeline: ``offline``, ``online``, and ``run`` (everything + comparison)."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

import ddrom
from ddrom.workflow.build import (build_loads, build_mesh, build_solver_options, build_times,
                             load_case_collectively, sanity_check_regions)
from ddrom.workflow.hf import hf_sweep, store_path
from ddrom.parallel import CollectiveError, Timers, as_mpi, rank0_print


def rom_path(case: Any) -> Path:
    return Path(case.output_dir) / "rom.h5"


def _offline_options(case: Any):
    from ddrom.rom.offline import OfflineOptions

    r = case.raw.get("rom", {})
    return OfflineOptions(pod_tol=float(r.get("pod_tol", 1e-4)), ecm_tol=float(r.get("ecm_tol", 1e-4)),
                          stress_tol=float(r.get("stress_tol", 1e-5)), p_tol=float(r.get("dual_pod_tol", 1e-4)),
                          max_modes=r.get("max_modes"), pod_method=r.get("pod_method"))


def _hf_context(case: Any, comm: Any, timers: Timers):
    """Mesh, material and an HF solver set up with the loads of the first training point."""
    from ddrom.hf.solver import HFSolver
    from ddrom.materials import from_config

    with timers("mesh"):
        dm = build_mesh(case, comm)
    sanity_check_regions(case, dm)
    pts = case.training_parameters() or [case.default_parameters()]
    solver = HFSolver(dm, from_config(case.raw["material"]), build_loads(case, pts[0], dm),
                      build_solver_options(case), timers=timers)
    return dm, solver


def offline(case_path: str, comm: Any, quiet: bool = False, case=None, context=None) -> dict[str, Any]:
    """Training store -> ROM file (POD, ECM, Gappy-POD, reduced operators)."""
    from ddrom.io.store import SnapshotStore
    from ddrom.rom.model import save_model
    from ddrom.rom.offline import build_reduced_model

    case = case or load_case_collectively(case_path, comm)
    timers = Timers()
    dm, solver = context or _hf_context(case, comm, timers)
    spath = store_path(case, "training")
    store = SnapshotStore.open(spath, comm, mode="r", dmesh=dm)
    if store.case_hash != case.store_hash("training"):
        store.close()
        raise CollectiveError(f"{spath} was computed from another version of the case file; "
                              f"run `ddrom hf {case.path}` again")
    opts = _offline_options(case)
    t0 = time.perf_counter()
    model, bases = build_reduced_model(case, solver, store, opts, timers)
    local, classifier = [], None
    k = int(case.raw.get("rom", {}).get("n_clusters", 1))
    if k > 1:
        from ddrom.rom.offline import cluster_simulations

        with timers("clustering"):
            classifier = cluster_simulations(solver, store, k)
        classifier["method"] = case.raw["rom"].get("classifier", "nearest_medoid")
        for ic in range(k):
            sims = [n for n, lab in zip(classifier["names"], classifier["labels"]) if lab == ic]
            local.append(build_reduced_model(case, solver, store, opts, timers, sims=sims))
        rank0_print(comm, "  local bases: " + ", ".join(
            f"cluster {ic}: {len(m.info['simulations'])} simulations, {m.n_modes} modes, {m.n_points} points"
            for ic, (m, _) in enumerate(local)))
    store.close()
    path = rom_path(case)
    with timers("write"):
        save_model(path, model, comm, case_hash=case.config_hash,
                   provenance={"case": str(case.path), "ranks": as_mpi(comm).size,
                               "store": str(spath), "options": vars(opts)},
                   bases=bases, local=local, classifier=classifier)
    seconds = as_mpi(comm).allreduce(time.perf_counter() - t0, op=_max())
    summary = {"rom": str(path), "seconds": seconds, **model.info, "timers": timers.summary(comm)}
    _plot_sigma(case, model, comm)
    if not quiet:
        rank0_print(comm, _offline_table(summary))
    return summary


def _offline_table(s: dict) -> str:
    t = s["timers"]
    rows = [("modes (displacement)", s["n_modes"]), ("stress modes (ECM columns)", s["n_stress_modes"]),
            ("reduced points (ECM)", s["n_reduced_points"]), ("extra Gappy points", s["n_gappy_extra_points"]),
            ("plastic-strain modes", s["n_p_modes"]),
            ("tolerances pod/ecm/stress/p", f"{s['pod_tol']:g}/{s['ecm_tol']:g}/{s['stress_tol']:g}/{s['p_tol']:g}")]
    rows += [(f"time {k} (s)", f"{v['seconds']:.2f}") for k, v in t.items()]
    w = max(len(r[0]) for r in rows)
    return "ddrom offline: " + s["rom"] + "\n" + "\n".join(f"  {k:<{w}}  {v}" for k, v in rows)


def _write_png(fig, out: Path) -> None:
    """Lay out, save under a temporary name, rename when complete, release the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(str(out) + ".tmp.png", dpi=120)
    os.replace(str(out) + ".tmp.png", out)
    plt.close(fig)


def _plot_sigma(case, model, comm) -> None:
    if as_mpi(comm).rank != 0:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    s = model.sigma_u[model.sigma_u > 0]
    ax.semilogy(np.arange(1, len(s) + 1), s / s[0], ".-", label="displacement")
    if model.gappy is not None:
        sp = model.gappy.sigma
        ax.semilogy(np.arange(1, len(sp) + 1), sp / sp[0], ".-", label="cumulated plastic strain (kept)")
    ax.axvline(model.n_modes, color="gray", ls=":", label=f"N = {model.n_modes}")
    ax.set_xlabel("index i")
    ax.set_ylabel(r"$\sigma_i / \sigma_1$")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    _write_png(fig, Path(case.output_dir) / "singular_values.png")


def online(case_path: str, comm: Any, params_list: list[dict] | None = None, quiet: bool = False,
           case=None, fields: bool = False, enrich: bool | None = None, indicator_tol: float | None = None,
           max_enrichments: int | None = None, save_rom: str | bool | None = None, context=None,
           formats: tuple = ("xdmf",), rom: str | None = None) -> dict[str, Any]:
    """Run the ROM on the test parameters (or the given ones); results in online_<name>.h5 + .json.

    ``rom``: the ROM file to run (default: the case's ``rom.h5``), e.g. an enriched ROM
    saved by an earlier run, so that what was learnt online is reused.

    With ``fields``, the full fields (displacement, cumulated plastic strain, stress) are
    reconstructed in parallel afterwards and written as ``rom_fields.h5`` + XDMF.

    Enrichment (``enrich``, default ``[rom.enrichment] enabled``): a step whose indicator
    exceeds the tolerance is recomputed by the HF solver on all ranks and the ROM is
    enriched (:mod:`ddrom.rom.enrichment`); an enriched ROM is saved as
    ``rom_enriched_<name>.h5`` (or ``save_rom`` for a single parameter point; ``save_rom=False``
    or ``[rom.enrichment] save = false``: not saved, e.g. for job arrays of many points, each
    file holding full-size bases).
    """
    from ddrom.rom.model import load_model
    from ddrom.rom.online import ReducedSolver

    case = case or load_case_collectively(case_path, comm)
    rpath = Path(rom) if rom else rom_path(case)
    model = load_model(rpath, comm)
    if json.dumps(model.material, sort_keys=True) != json.dumps(case.raw["material"], sort_keys=True):
        raise CollectiveError(f"{rpath}: the ROM was built with another material than the one of "
                              f"{case.path.name} (rebuild it with `ddrom offline`)")
    pick = _local_basis_picker(rpath, comm)
    if params_list is None:
        points = [(f"test_{i:03d}", p) for i, p in enumerate(case.test_parameters())]
    else:
        # named by their values, so that runs of different points (job arrays) never collide
        points = [("param_" + "_".join(f"{k}_{v:g}" for k, v in sorted(p.items())), p) for p in params_list]
    _warn_out_of_range(model, points, comm)
    eopts = _enrichment_options(case, comm, enrich, indicator_tol, max_enrichments, rpath)
    # save_rom: a path (one point), False (never), None (the case's [rom.enrichment] save)
    target = save_rom if isinstance(save_rom, (str, os.PathLike)) else None
    save = save_rom is not False and (target is not None or case.raw.get("rom", {}).get("enrichment", {})
                                      .get("save", True))
    if target is not None and len(points) != 1:
        raise CollectiveError(f"--save-rom names one file but there are {len(points)} parameter points")
    timers = Timers()
    if eopts is not None:
        dm, solver = context or _hf_context(case, comm, timers)
    runs = []
    from ddrom.parallel import Progress

    # a bar over the parameter points (ETA for job arrays of many points), rank 0, stderr
    bar = Progress(comm, total=len(points), desc="ROM runs", quiet=quiet or len(points) < 2, unit="run")
    for name, params in points:
        cl = pick(params) if pick else None
        m = model if cl is None else load_model(rpath, comm, local=cl)
        enricher = None
        if eopts is not None:
            from ddrom.rom.enrichment import Enricher
            from ddrom.rom.model import load_bases

            solver.set_loads(build_loads(case, params, dm))
            bases = load_bases(rpath, dm, ["displacement", "stress"] + (["p"] if m.gappy else []),
                               "bases" if cl is None else f"local/{cl:03d}/bases")
            enricher = Enricher(case, solver, m, bases, eopts, timers=timers)
        res = ReducedSolver(m, params).run(enricher=enricher)
        res.cluster = cl
        res.rom_file = str(rpath)
        if enricher is not None and res.n_enrichments:
            res.bases = enricher.bases_owned()
        if enricher is not None and res.n_enrichments and save:
            _save_enriched(case, comm, res, enricher, Path(target) if target is not None else
                           Path(case.output_dir) / f"rom_enriched_{name}.h5", params, rpath)
        runs.append((name, params, res))
        bar.update(1, enrichments=sum(r.n_enrichments for _, _, r in runs))
        extra = (f", {res.n_enrichments} enrichments ({res.enrichment_seconds:.2f} s, {res.model.n_modes} modes)"
                 if enricher is not None else "")
        rank0_print(comm, f"  ROM {name} {params}: {res.seconds * 1e3:.1f} ms, {len(res.times) - 1} steps, "
                          f"{res.newton_iterations} Newton iterations, max indicator "
                          f"{_fmt_max(res.indicator)}{extra}")
        for ev in res.enrichments if not quiet else []:
            rank0_print(comm, f"    enrichment at step {ev['step']} (t = {ev['t']:g}): indicator "
                              f"{ev['indicator_before']:.2e} -> {ev['indicator_after']:.2e}, +{ev['modes_added']} "
                              f"mode(s), +{ev['points_added']}/-{ev['points_removed']} points, "
                              f"{ev['replayed_steps']} steps replayed, {ev['seconds']:.2f} s")
        if as_mpi(comm).rank == 0:
            write_online_result(Path(case.output_dir) / f"online_{name}", name, params, res)
    bar.close()
    if fields:
        write_fields(case, comm, runs, model, formats=formats)
    return {"runs": runs, "model": model, "enrichment": eopts}


def write_online_result(stem: Path, name: str, params: dict, res: Any) -> None:
    """One online run as ``stem.h5`` (trajectories) and ``stem.json`` (summary, events); rank 0.

    HDF5 datasets: ``times`` (nt,), ``q`` (nt, N) reduced coordinates, ``p_coeff`` (nt, Np)
    and ``stress_coeff`` (nt, Ns) coefficients in the run's final bases, ``dirichlet``
    (nt, D) lifting values, ``indicator`` (nt,); attributes ``params`` and ``enrichments``
    (JSON). Both files are written to temporary names and renamed when complete.
    """
    import h5py

    finite = res.indicator[np.isfinite(res.indicator)]
    summary = {"name": name, "params": params, "steps": int(len(res.times) - 1), "seconds": res.seconds,
               "newton_iterations": res.newton_iterations, "cutbacks": res.cutbacks, "cluster": res.cluster,
               "n_modes": int(res.q.shape[1]), "max_indicator": float(finite.max()) if finite.size else None,
               "n_enrichments": res.n_enrichments, "enrichment_seconds": res.enrichment_seconds,
               "enrichments": res.enrichments}
    h5 = Path(str(stem) + ".h5")
    with h5py.File(str(h5) + ".tmp", "w") as f:
        for key in ("times", "q", "p_coeff", "stress_coeff", "dirichlet", "indicator"):
            f.create_dataset(key, data=np.asarray(getattr(res, key), dtype=float))
        f.attrs["params"] = json.dumps(params)
        f.attrs["enrichments"] = json.dumps(res.enrichments, default=_json_default)
    os.replace(str(h5) + ".tmp", h5)
    js = Path(str(stem) + ".json")
    with open(str(js) + ".tmp", "w") as f:
        json.dump(summary, f, indent=2, default=_json_default)
    os.replace(str(js) + ".tmp", js)


def _enrichment_options(case: Any, comm: Any, enrich: bool | None, indicator_tol: float | None,
                        max_enrichments: int | None, path: Path | None = None):
    """EnrichmentOptions from the command line, ``[rom.enrichment]`` and the ROM file (None: off).

    The tolerance is, in order: ``indicator_tol`` given here, ``[rom.enrichment]
    indicator_tol``, ``[rom] indicator_tol``, the calibrated tolerance stored in the ROM
    file by ``ddrom run`` (for ``[rom] indicator_target``).
    """
    from ddrom.rom.enrichment import EnrichmentOptions

    rom = case.raw.get("rom", {})
    cfg = rom.get("enrichment", {})
    on = cfg.get("enabled", False) if enrich is None else enrich
    if not on:
        return None
    tol = indicator_tol or cfg.get("indicator_tol") or rom.get("indicator_tol")
    if tol is None:
        tol = _stored_tolerance(path or rom_path(case), comm)
    if tol is None:
        raise CollectiveError(f"{case.path.name}: enrichment needs an indicator tolerance: set "
                              "[rom.enrichment] indicator_tol (or [rom] indicator_tol), or run `ddrom run` "
                              "once to calibrate it")
    return EnrichmentOptions(tolerance=float(tol),
                             max_enrichments=int(max_enrichments if max_enrichments is not None
                                                 else cfg.get("max_enrichments", 10)),
                             basis_tol=float(cfg.get("basis_tol", 1e-6)),
                             ecm_tol=float(cfg["ecm_tol"]) if "ecm_tol" in cfg else None)


def _stored_tolerance(path, comm) -> float | None:
    import h5py

    tol = None
    if as_mpi(comm).rank == 0:
        with h5py.File(path, "r") as f:
            cal = json.loads(f.attrs.get("indicator_calibration", "{}"))
        tol = cal.get("indicator_tolerance")
    return as_mpi(comm).bcast(tol, root=0)


def _save_enriched(case, comm, res, enricher, path: Path, params, source: Path) -> None:
    """The enriched ROM as a new file; it keeps the source's indicator calibration so that
    ``ddrom online --rom`` of it can enrich further with the calibrated tolerance."""
    import h5py

    from ddrom.rom.model import save_model

    cal = None
    if as_mpi(comm).rank == 0:
        with h5py.File(source, "r") as f:
            cal = f.attrs.get("indicator_calibration")
    save_model(path, res.model, comm, case_hash=case.config_hash,
               provenance={"case": str(case.path), "ranks": as_mpi(comm).size, "enriched_from": str(source),
                           "parameters": params, "enrichments": res.enrichments},
               bases=enricher.bases(), attrs={"indicator_calibration": cal} if cal is not None else None)
    rank0_print(comm, f"  enriched ROM: {path}")


def _run_bases(case, dm, model, res):
    """(model, owned bases) a run ended with: the enriched ones in memory, else the ROM file's."""
    from ddrom.rom.model import load_bases, load_model

    if getattr(res, "bases", None) is not None:
        return res.model, res.bases
    cl = res.cluster
    path = getattr(res, "rom_file", None) or rom_path(case)
    m = model if cl is None else load_model(path, dm.comm, local=cl)
    names = ["displacement", "stress"] + (["p"] if m.gappy is not None else [])
    return m, load_bases(path, dm, names, "bases" if cl is None else f"local/{cl:03d}/bases")


class _Reconstruction:
    """Full fields of a ROM run on this rank: u = Phi q + sum_d v_d chi_d, p = Phi_p a and
    stress = Psi b with the coefficients the online march recorded (bases of the final model)."""

    def __init__(self, dm, solver, model, bases):
        from ddrom.rom.operators import lifting_fields

        nown = 3 * dm.n_owned
        ne, nq = dm.n_cells, dm.n_qp
        self.model, self.bases, self.shape = model, bases, (ne, nq)
        self.chi = (np.column_stack(lifting_fields(solver))[:nown] if model.E_lift.shape[1]
                    else np.zeros((nown, 0)))
        self.Psi = bases["stress"].reshape(ne * nq * 6, -1)

    def displacement(self, res, k) -> np.ndarray:
        """Owned DOFs (3 n_owned,)."""
        return self.bases["displacement"] @ res.q[k] + self.chi @ res.dirichlet[k]

    def plastic_strain(self, res, k) -> np.ndarray:
        """(ne * nq,); zero when the training had no plastic strain (no Gappy data)."""
        if "p" not in self.bases or res.p_coeff.shape[1] == 0:
            return np.zeros(self.shape[0] * self.shape[1])
        return self.bases["p"] @ res.p_coeff[k]

    def stress(self, res, k) -> np.ndarray:
        """(ne * nq, 6)."""
        return (self.Psi @ res.stress_coeff[k]).reshape(-1, 6)


def write_fields(case: Any, comm: Any, runs: list, model: Any, formats: tuple = ("xdmf",)) -> Path:
    """Reconstruct the full fields of ROM runs in parallel; write them as a snapshot store + XDMF,
    and with ``"vtu"`` in ``formats`` also as VTU per step + PVD in ``rom_fields_vtu/`` (ddrom.io.export)."""
    from ddrom.io.store import SnapshotStore

    timers = Timers()
    dm, solver = _hf_context(case, comm, timers)
    path = Path(case.output_dir) / "rom_fields.h5"
    store = SnapshotStore.create(path, dm, state_names=[], case_hash=case.hf_hash,
                                 provenance={"case": str(case.path), "kind": "ROM reconstruction"}, comm=comm)
    ne, nq = dm.n_cells, dm.n_qp
    for name, params, res in runs:
        m, bases = _run_bases(case, dm, model, res)
        solver.set_loads(build_loads(case, params, dm))
        rec = _Reconstruction(dm, solver, m, bases)
        writer = store.add_simulation(name, params, n_steps=len(res.times) - 1)
        for k, t in enumerate(res.times):
            u = rec.displacement(res, k).reshape(-1, 3)
            p = rec.plastic_strain(res, k).reshape(ne, nq)
            sig = rec.stress(res, k).reshape(ne, nq, 6)
            writer.write_step(k, float(t), u, sig, p, None)
        writer.finish()
    store.finalize()
    rank0_print(comm, f"  reconstructed fields: {path} (+ .xdmf for ParaView)")
    if "vtu" in formats:
        from ddrom.io.export import export_store_vtu

        pvds = export_store_vtu(path, comm, dm, Path(case.output_dir) / "rom_fields_vtu")
        rank0_print(comm, f"  reconstructed fields as VTU: {', '.join(pvds)}")
    return path


def _local_basis_picker(path, comm):
    """A function params -> local model index, from the ROM file's classifier (None if no local bases)."""
    from ddrom.rom.model import load_classifier

    data = load_classifier(path, comm)
    if not data:
        return None
    from ddrom.reduction.clustering import KNNClassifier, NearestMedoidClassifier

    names = sorted(data["params"][0])
    P = np.array([[p[n] for n in names] for p in data["params"]], dtype=float)
    labels = np.asarray(data["labels"])
    if data.get("method") == "knn":
        clf = KNNClassifier(n_neighbors=min(3, len(P))).fit(P, labels)
    else:
        clf = NearestMedoidClassifier().fit(P, data["medoids"], labels)
    return lambda params: int(clf.predict(np.array([[float(params[n]) for n in names]]))[0])


def _warn_out_of_range(model, points, comm) -> None:
    for name, params in points:
        for k, v in params.items():
            rng = model.parameters.get(k, {})
            if "min" in rng and not (rng["min"] <= v <= rng["max"]):
                rank0_print(comm, f"  warning: {name}: {k} = {v} is outside the training range "
                                  f"[{rng['min']}, {rng['max']}]")


def run(case_path: str, comm: Any, quiet: bool = False) -> dict[str, Any]:
    """HF training sweep, offline, online on the test parameters, HF reference, comparison.

    The indicator is calibrated on the plain ROM runs; with ``[rom.enrichment] enabled``
    the test parameters are then run again with enrichment and compared too.
    """
    from ddrom.parallel.stages import StagePrinter

    case = load_case_collectively(case_path, comm)
    # every stage timed anywhere below (HF, offline, online, enrichment), for summary.json
    with StagePrinter(comm, "run", quiet=True) as stages:
        return _run(case_path, comm, quiet, case, stages)


def _run(case_path: str, comm: Any, quiet: bool, case: Any, stages: Any) -> dict[str, Any]:
    from ddrom.io.store import SnapshotStore

    c = as_mpi(comm)
    timers = Timers()
    context = _hf_context(case, comm, timers)
    dm, solver = context
    hf_train = hf_sweep(case_path, comm, which="training", quiet=quiet, case=case, dm=dm)
    off = offline(case_path, comm, quiet=quiet, case=case, context=context)
    hf_test = hf_sweep(case_path, comm, which="test", quiet=quiet, case=case, dm=dm)
    cal = calibrate(case_path, comm, quiet=quiet, case=case, context=context, hf=False)
    on, errors, calibration, model = cal["online"], cal["errors"], cal["calibration"], cal["online"]["model"]
    hf_test_secs = {r["name"]: r["seconds"] for r in _runs(hf_test, "test") if r.get("seconds")}
    enrichment = None
    if case.raw.get("rom", {}).get("enrichment", {}).get("enabled", False):
        on_e = online(case_path, comm, quiet=quiet, case=case, enrich=True, context=context)
        store = SnapshotStore.open(store_path(case, "test"), comm, mode="r", dmesh=dm)
        err_e = [_compare_run(case, dm, solver, model, store, name, params, res)
                 for name, params, res in on_e["runs"]]
        store.close()
        for e, (name, _, res) in zip(err_e, on_e["runs"]):
            e.update(n_enrichments=res.n_enrichments, enrichment_seconds=res.enrichment_seconds,
                     rom_seconds=res.seconds, events=res.enrichments, hf_seconds=hf_test_secs.get(name))
            e["cost_ratio_to_hf"] = (res.seconds / hf_test_secs[name]) if hf_test_secs.get(name) else None
        enrichment = {
            "indicator_tolerance": on_e["enrichment"].tolerance,
            "max_enrichments": on_e["enrichment"].max_enrichments,
            "n_enrichments": int(sum(e["n_enrichments"] for e in err_e)),
            "enrichment_seconds": float(sum(e["enrichment_seconds"] for e in err_e)),
            "rel_error_displacement": max((e["displacement"] for e in err_e), default=None),
            "rel_error_plastic_strain": max((e["plastic_strain"] for e in err_e), default=None),
            "rel_error_stress": max((e["stress"] for e in err_e), default=None),
            "per_test_parameter": err_e,
        }
        if c.rank == 0 and err_e:
            _plot_enrichment(case, errors, err_e, enrichment)
    hf_secs = list(hf_test_secs.values()) or \
        [r["seconds"] for r in _runs(hf_train, "training") if r.get("seconds")]
    rom_secs = [res.seconds for _, _, res in on["runs"]]
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
        "mesh": dm.summary(),
        "timers": stages.timers.summary(comm),
    }
    if c.rank == 0:
        out = Path(case.output_dir) / "summary.json"
        tmp = str(out) + ".tmp"
        with open(tmp, "w") as f:
            json.dump(summary, f, indent=2, default=_json_default)
        os.replace(tmp, out)
    rank0_print(comm, _run_table(summary))
    return summary


def calibrate(case_path: str, comm: Any, quiet: bool = False, case=None, context=None,
              hf: bool = True) -> dict[str, Any]:
    """Calibrate the error indicator on the test points (HF reference computed if missing).

    Runs the plain ROM on the test points, compares it step by step with the HF test
    store, fits log error against log indicator (:func:`calibrate_indicator`), writes
    ``indicator_calibration.png`` and stores the result (with the indicator tolerance for
    ``[rom] indicator_target``) in the ROM file, where ``ddrom online --enrich`` finds it.
    """
    from ddrom.io.store import SnapshotStore

    c = as_mpi(comm)
    case = case or load_case_collectively(case_path, comm)
    context = context or _hf_context(case, comm, Timers())
    dm, solver = context
    if hf and not case.test_parameters():
        raise CollectiveError(f"{case.path.name}: calibration needs test points ([test]) with an HF reference")
    if hf:
        hf_sweep(case_path, comm, which="test", quiet=quiet, case=case, dm=dm)
    on = online(case_path, comm, quiet=quiet, case=case, enrich=False)
    store = SnapshotStore.open(store_path(case, "test"), comm, mode="r", dmesh=dm)
    errors = [_compare_run(case, dm, solver, on["model"], store, name, params, res)
              for name, params, res in on["runs"]]
    store.close()
    rom = case.raw.get("rom", {})
    calibration = calibrate_indicator(errors, rom.get("indicator_target", 1e-2),
                                      rom.get("indicator_confidence", 0.95))
    if c.rank == 0 and calibration.get("pairs", 0) > 0:
        _plot_calibration(case, errors, calibration)
        _store_calibration(rom_path(case), calibration)
    c.Barrier()
    if not quiet and "pearson_log" in calibration:
        rank0_print(comm, f"  indicator calibration: Pearson r(log) = {calibration['pearson_log']:.3f} over "
                          f"{calibration['pairs']} (step, point) pairs; indicator tolerance "
                          f"{calibration['indicator_tolerance']} for an error target of {calibration['error_target']:g} "
                          f"at {calibration['confidence']:.0%} confidence (mean fit: "
                          f"{calibration['indicator_tolerance_fit']})")
    return {"online": on, "errors": errors, "calibration": calibration}


def _compare_run(case, dm, solver, model, store, name, params, res) -> dict:
    m, bases = _run_bases(case, dm, model, res)
    out = _compare(case, dm, solver, m, bases, store, name, params, res)
    out["cluster"] = res.cluster
    out["n_modes"] = m.n_modes
    return out


def _plot_enrichment(case, plain: list[dict], enriched: list[dict], summary: dict) -> None:
    """Indicator and true error of p against the step, without and with enrichment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(plain)
    ncols = min(n, 3)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.8 * nrows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    for ax, e0, e1 in zip(axes.ravel(), plain, enriched):
        k = np.arange(len(e0["indicator_per_step"]))
        ax.semilogy(k, e0["indicator_per_step"], "C0--", label="indicator, ROM")
        ax.semilogy(k, e0["p_error_per_step"], "C0-", label="true error of p, ROM")
        ax.semilogy(k, e1["indicator_per_step"], "C1--", label="indicator, enriched ROM")
        ax.semilogy(k, e1["p_error_per_step"], "C1-", label="true error of p, enriched ROM")
        for ev in e1.get("events", []):
            ax.axvline(ev["step"], color="C1", alpha=0.3)
        ax.axhline(summary["indicator_tolerance"], color="gray", ls=":", label="indicator tolerance")
        # right after an enrichment the indicator is at round-off (~1e-16): not worth 10 decades
        ax.set_ylim(bottom=max(ax.get_ylim()[0], 1e-7))
        ax.set_title(f"{e0['name']} {e0['params']}", fontsize=8)
        ax.set_xlabel("time step")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    _write_png(fig, Path(case.output_dir) / "enrichment.png")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _runs(sweep: dict, which: str) -> list[dict]:
    return sweep.get("sets", {}).get(which, {}).get("runs", [])


def _run_table(s: dict) -> str:
    f = lambda v: "n/a" if v is None else (f"{v:.3e}" if isinstance(v, float) else str(v))  # noqa: E731
    rows = [("ranks", s["ranks"]), ("modes", s["n_modes"]), ("reduced points", s["n_reduced_points"]),
            ("HF s/simulation", f(s["hf_seconds_per_simulation"])),
            ("ROM s/simulation", f(s["rom_seconds_per_simulation"])), ("speedup", f(s["speedup"])),
            ("rel. error displacement", f(s["rel_error_displacement"])),
            ("rel. error plastic strain", f(s["rel_error_plastic_strain"])),
            ("rel. error stress", f(s["rel_error_stress"]))]
    if s.get("enrichment"):
        e = s["enrichment"]
        rows += [("enrichments", e["n_enrichments"]), ("enrichment s", f(e["enrichment_seconds"])),
                 ("enriched error displacement", f(e["rel_error_displacement"])),
                 ("enriched error plastic strain", f(e["rel_error_plastic_strain"])),
                 ("enriched error stress", f(e["rel_error_stress"]))]
    return "ddrom run summary\n" + "\n".join(f"  {k:<30} {v}" for k, v in rows)


def _compare(case, dm, solver, model, bases, store, name, params, res) -> dict:
    """Relative space-time L2 errors of the ROM against the HF reference (distributed)."""
    from ddrom.workflow.build import build_loads
    from ddrom.rom.online import INDICATOR_FLOOR

    c = as_mpi(dm.comm)
    solver.set_loads(build_loads(case, params, dm))
    rec = _Reconstruction(dm, solver, model, bases)
    ne, nq = dm.n_cells, dm.n_qp
    w = solver.asm.wdet.ravel()
    num = {"displacement": 0.0, "plastic_strain": 0.0, "stress": 0.0}
    den = dict.fromkeys(num, 0.0)
    step_err = []            # per step (error^2, norm^2) of p on this rank, for the indicator calibration
    for k in range(len(res.times)):
        u_hf = store.read_displacement(name, k, dm).reshape(-1)
        u_rom = rec.displacement(res, k)
        num["displacement"] += float(np.sum((u_rom - u_hf) ** 2))
        den["displacement"] += float(np.sum(u_hf ** 2))
        p_hf = store.read_qp(name, "p", k, dm).reshape(-1)
        p_rom = rec.plastic_strain(res, k)
        e2, n2 = float(np.sum(w * (p_rom - p_hf) ** 2)), float(np.sum(w * p_hf ** 2))
        num["plastic_strain"] += e2
        den["plastic_strain"] += n2
        step_err.append((e2, n2))
        s_hf = store.read_qp(name, "stress", k, dm).reshape(ne * nq, 6)
        s_rom = rec.stress(res, k)
        num["stress"] += float(np.sum(w[:, None] * (s_rom - s_hf) ** 2))
        den["stress"] += float(np.sum(w[:, None] * s_hf ** 2))
    out = {"name": name, "params": params}
    # per-step relative error of p (true error) next to the indicator of that step
    se = np.array(c.allreduce(np.array(step_err)))
    # steps whose p is below INDICATOR_FLOOR of the run's largest carry no information (the
    # onset of plasticity at round-off level): nan, left out of the calibration
    floor = (INDICATOR_FLOOR ** 2) * se[:, 1].max(initial=0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["p_error_per_step"] = np.where((se[:, 1] > 0) & (se[:, 1] >= floor),
                                           np.sqrt(se[:, 0] / se[:, 1]), np.nan).tolist()
    out["indicator_per_step"] = [float(v) for v in res.indicator]
    for key in num:
        n, d = c.allreduce(num[key]), c.allreduce(den[key])
        out[key] = math.sqrt(n / d) if d > 0 else (0.0 if n == 0 else math.inf)
    rank0_print(dm.comm, f"  {name}: relative errors u {out['displacement']:.2e}, "
                         f"p {out['plastic_strain']:.2e}, stress {out['stress']:.2e}")
    return out


def _max():
    from mpi4py import MPI

    return MPI.MAX


def _fmt_max(values: np.ndarray) -> str:
    finite = values[np.isfinite(values)]
    return f"{finite.max():.2e}" if finite.size else "n/a (no plastic strain in training)"


def cluster_report(case_path: str, comm: Any, ks: list[int] | None = None, Ns: list[int] | None = None,
                   dissimilarity: str = "grassmann_max", error_target: float | None = None,
                   budget: float | None = None, quiet: bool = False) -> dict[str, Any]:
    """The a priori local-vs-global criterion on the training displacement snapshots.

    One distributed Gram matrix (one allreduce) of the snapshots (t = 0 excluded, prescribed
    DOFs zeroed), then everything is replicated and small: clustering of the simulations,
    local PODs from Gram blocks, projection errors for a (k, N) grid, a table, a plot and
    a recommendation.
    """
    from ddrom.io.store import SnapshotStore
    from ddrom.reduction import Euclidean
    from ddrom.reduction.criterion import efficiency_table, format_table, plot_efficiency, recommend

    c = as_mpi(comm)
    case = load_case_collectively(case_path, comm)
    timers = Timers()
    dm, solver = _hf_context(case, comm, timers)
    store = SnapshotStore.open(store_path(case, "training"), comm, mode="r", dmesh=dm)
    sims_info = [s for s in store.simulations() if s.complete]
    steps = range(1, sims_info[0].n_steps + 1)
    names = [s.name for s in sims_info]
    with timers("gram"):
        U = store.read_block("displacement", dm, sims=names, steps=steps)
        U[solver.fixed[: 3 * dm.n_owned]] = 0.0
        C = Euclidean().gram(U, comm=comm)
        del U
    labels = [lab[0] for lab in store.snapshot_labels(sims=names, steps=steps)]
    store.close()
    nsim = len(names)
    ks = ks or [k for k in (1, 2, 3, 4) if k <= nsim]
    m = C.shape[0]
    Ns = Ns or sorted({n for n in (1, 2, 4, 8, 12, 16, 24, 32) if n <= m})
    with timers("criterion"):
        table = efficiency_table(C, labels, ks, Ns, dissimilarity=dissimilarity, n_rows=3 * dm.n_nodes_global)
    out: dict[str, Any] = {"case": str(case.path), "simulations": nsim, "snapshots": m,
                           "dissimilarity": dissimilarity, "table": table, "timers": timers.summary(comm)}
    if error_target is not None:
        out["recommendation"] = recommend(table, error_target, budget)
    if c.rank == 0:
        path = Path(case.output_dir) / "cluster_criterion.png"
        plot_efficiency(table, str(path), f"{case.name}: local ({dissimilarity}) vs global bases")
        out["plot"] = str(path)
    rank0_print(comm, f"ddrom cluster: {nsim} simulations, {m} snapshots, dissimilarity {dissimilarity}\n"
                      + format_table(table))
    if "recommendation" in out:
        rank0_print(comm, "  " + out["recommendation"]["message"])
    return out


def calibrate_indicator(errors: list[dict], target: float, confidence: float = 0.95) -> dict:
    """Fit ``log(true p error) = a + b log(indicator)`` over the (step, test point) pairs.

    Returns the Pearson correlation of the logs, the fit, the residual standard deviation
    ``s`` (log units, ``n - 2`` degrees of freedom) and two tolerances for the error target
    ``T``:

    * ``indicator_tolerance_fit = exp((log T - a) / b)``: where the MEAN fit meets the target
      (half of the steps at that indicator have a larger error);
    * ``indicator_tolerance = exp((log T - a - t s sqrt(1 + 1/n)) / b)`` with ``t`` the
      ``confidence`` quantile of Student's t (n - 2 dof): where the one-sided upper
      prediction bound of the fit meets the target, i.e. a step whose indicator is below it
      has an error below ``T`` with probability ``confidence`` under the fit's model (the
      leverage term of the bound is neglected: the tolerance lies inside the calibrated
      range). ``confidence = 0.5`` gives the mean fit. The enrichment uses this one: the
      mean fit missed the target 3x on a finer mesh (benchmarks/README.md).

    Steps where the HF plastic strain or the indicator vanish carry no information and
    are left out.
    """
    from scipy import stats

    x, y = [], []
    for e in errors:
        for ind, err in zip(e["indicator_per_step"], e["p_error_per_step"]):
            if ind is not None and err is not None and np.isfinite(ind) and np.isfinite(err) \
                    and ind > 0 and err > 0:
                x.append(math.log(ind))
                y.append(math.log(err))
    out: dict[str, Any] = {"pairs": len(x), "error_target": float(target), "confidence": float(confidence)}
    if len(x) < 3 or np.ptp(x) == 0:
        out["message"] = "too few informative (indicator, error) pairs to calibrate"
        return out
    x, y = np.array(x), np.array(y)
    n = len(x)
    b, a = np.polyfit(x, y, 1)
    s = float(np.sqrt(np.sum((y - (a + b * x)) ** 2) / max(n - 2, 1)))
    margin = float(stats.t.ppf(confidence, max(n - 2, 1))) * s * math.sqrt(1.0 + 1.0 / n)
    out.update(pearson_log=float(np.corrcoef(x, y)[0, 1]), slope=float(b), intercept=float(a),
               residual_std_log=s, prediction_margin_log=margin)
    if b > 0:
        out["indicator_tolerance_fit"] = float(math.exp((math.log(target) - a) / b))
        out["indicator_tolerance"] = float(math.exp((math.log(target) - a - margin) / b))
    else:
        out["indicator_tolerance_fit"] = out["indicator_tolerance"] = None
    return out


def _plot_calibration(case, errors, cal) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for e in errors:
        ax.loglog(e["indicator_per_step"], e["p_error_per_step"], "o", ms=4, label=e["name"])
    if "slope" in cal:
        xs = np.logspace(np.log10(max(min(v for e in errors for v in e["indicator_per_step"] if v and v > 0), 1e-16)),
                         np.log10(max(v for e in errors for v in e["indicator_per_step"] if v)), 50)
        ax.loglog(xs, np.exp(cal["intercept"]) * xs ** cal["slope"], "k--",
                  label=f"fit, r = {cal['pearson_log']:.3f}")
        ax.loglog(xs, np.exp(cal["intercept"] + cal["prediction_margin_log"]) * xs ** cal["slope"], "k:",
                  label=f"{cal['confidence']:.0%} upper prediction bound")
        if cal.get("indicator_tolerance"):
            ax.axvline(cal["indicator_tolerance"], color="gray", lw=0.8)
            ax.axhline(cal["error_target"], color="gray", lw=0.8)
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())       # labelled minor ticks overlap on < 2 decades
    ax.set_xlabel("indicator (Gappy residual of p)")
    ax.set_ylabel("true relative error of p")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    _write_png(fig, Path(case.output_dir) / "indicator_calibration.png")


def _store_calibration(path, cal) -> None:
    """Record the calibration in the ROM file (rank 0; a small attribute)."""
    import h5py

    with h5py.File(path, "a") as f:
        f.attrs["indicator_calibration"] = json.dumps(cal)
