"""``ddrom import``: other solvers' displacement series -> simulations of the training store.

Each series (see :mod:`ddrom.io.importers` for the formats and :mod:`ddrom.io.matching`
for the node matching) is read step by step and routed to the ranks by natural ids; the
stress, the cumulated plastic strain and the internal variables are recomputed in
parallel by replaying the case's material law (:mod:`ddrom.hf.replay`) at the case's
temperature for the simulation's parameters, and everything is written to
``out/<case>/hf_training.h5``.

Several simulations in one call (:func:`import_many`): from a table (CSV with a header
row, or TOML ``[[simulation]]`` entries) with a ``series`` column, one column per
parameter and an optional ``name``; or from a file-name pattern such as
``runs/run_E{E}_F{F}.xdmf`` whose ``{NAME}`` fields are parameter values (a pattern may
also hold glob characters: ``runs/E{E}/u_*.vtu`` is one VTU series per value of E).
Parameters absent from the table/pattern take the ``--param`` values, else their defaults.

All-or-nothing: every series is opened, node-matched and checked (times, stress field)
before the store is touched; if reading fails later, the simulations written by this call
are removed again (and a store created by this call is deleted), so a failed import
leaves the store as it was.

Store life cycle:

* the first import creates the store (as ``hf_training.h5.partial``); later imports
  open it with mode ``"a"`` (``.partial`` or a finalized file, which goes back to
  ``.partial``) and append; a store of another version of the case file (other
  ``hf_hash``) is an error.
* a simulation is named after the training point with the same parameters
  (``train_003``), else ``import_<n>`` (or the given name).
* the store is finalized when every training point of the case is present and
  complete, or on ``--finalize`` (then whatever it holds becomes the training set).

Times: those of the file (XDMF, PVD) or, for a list of VTU files, the case's. When the
series does not start at t = 0, a zero-displacement step at t = 0 is prepended (the
store's step 0 is the initial state).

Stress comparison (``stress_field``): the file's stress per cell (a cell field, or the
mean of a point field's values at the cell's nodes) is compared at every file step with
the *cell average* of the replayed integration-point stress,
``sum_q w_q det J_q sigma_q / sum_q w_q det J_q``; the summary gives
``max_c |s_file - s_replay| / max_c |s_replay|`` and
``sqrt(sum_c |s_file - s_replay|^2 / sum_c |s_replay|^2)`` over all cells and steps
(norms of the Mandel 6-vectors, i.e. Frobenius norms of the tensors).
"""
from __future__ import annotations

import csv
import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddrom.workflow.build import build_loads, build_mesh, build_times, load_case_collectively
from ddrom.io.h5atomic import write_on_root
from ddrom.workflow.options import solver_options
from ddrom.workflow.resources import check_import, mesh_size_of
from ddrom.workflow.hf import store_path
from ddrom.parallel import CollectiveError, DdromError, Progress, as_mpi, collective, get_logger, root_only


@dataclass
class ImportJob:
    """One simulation to import: its series spec, parameter values and optional name."""

    series: str
    params: dict
    name: str | None = None


def _match_training(case: Any, params: dict) -> str | None:
    for i, p in enumerate(case.training_parameters()):
        if set(p) == set(params) and all(np.isclose(p[k], params[k], rtol=1e-12, atol=0.0) for k in p):
            return f"train_{i:03d}"
    return None


def _series_times(series: Any, case_times: np.ndarray) -> tuple[np.ndarray, bool]:
    """Store times (t_0 = 0 first) and whether a zero step is prepended."""
    t = series.times
    if t is None:
        if series.n_steps == len(case_times):
            return case_times.copy(), False
        if series.n_steps == len(case_times) - 1:
            return case_times.copy(), True
        raise CollectiveError(f"{series.source}: {series.n_steps} files and no times; the case has "
                              f"{len(case_times) - 1} steps (give {len(case_times) - 1} or "
                              f"{len(case_times)} files, or a .pvd/.xdmf with times)")
    if np.any(np.diff(t) <= 0):
        raise CollectiveError(f"{series.source}: times are not increasing: {t.tolist()}")
    if t[0] < 0:
        raise CollectiveError(f"{series.source}: negative first time {t[0]}")
    if t[0] == 0.0:
        return t.copy(), False
    return np.concatenate([[0.0], t]), True


def _full_params(case: Any, params: dict, where: str) -> dict[str, float]:
    names = case.parameter_names
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise CollectiveError(f"{where}: unknown parameter(s) {unknown}; the case has {names}")
    full = {}
    for k, v in params.items():
        try:
            full[k] = float(v)
        except (TypeError, ValueError):
            raise CollectiveError(f"{where}: parameter {k} = {v!r} is not a number") from None
    missing = [k for k in names if k not in full]
    defaults = {k: case.raw["parameters"][k].get("default") for k in missing}
    if any(v is None for v in defaults.values()):
        raise CollectiveError(f"{where}: give a value for {[k for k, v in defaults.items() if v is None]}")
    full.update({k: float(v) for k, v in defaults.items()})
    return {k: full[k] for k in names}


# ================================================================ several simulations
def _on_root(comm: Any, fn) -> Any:
    """``fn()`` on rank 0, its result broadcast; any exception there (SystemExit of a library
    included) raised on every rank (:func:`ddrom.parallel.root_only`)."""
    return root_only(comm, fn, "ddrom import")


def _read_table(path: str) -> list[ImportJob]:
    if not os.path.exists(path):
        raise DdromError(f"{path}: table not found")
    folder = os.path.dirname(os.path.abspath(path))
    rows: list[dict] = []
    if path.lower().endswith(".toml"):
        import tomllib

        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (tomllib.TOMLDecodeError, OSError) as exc:
            raise DdromError(f"{path}: not a readable TOML file ({exc})") from None
        rows = data.get("simulation")
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DdromError(f"{path}: expected [[simulation]] tables with 'series' and parameter values")
    else:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "series" not in [h.strip() for h in reader.fieldnames]:
                raise DdromError(f"{path}: the header row must have a 'series' column and one column per "
                                 f"parameter (got {reader.fieldnames})")
            rows = [{k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in r.items() if k}
                    for r in reader]
    jobs = []
    for i, r in enumerate(rows):
        where = f"{path} (row {i + 1})"
        s = r.get("series")
        if not s:
            raise DdromError(f"{where}: no 'series'")
        s = str(s)
        name = r.get("name") or None
        params = {k: v for k, v in r.items() if k not in ("series", "name")}
        for k, v in params.items():
            try:
                params[k] = float(v)
            except (TypeError, ValueError):
                raise DdromError(f"{where}: {k} = {v!r} is not a number") from None
        jobs.append(ImportJob(s if os.path.isabs(s) else os.path.join(folder, s), params,
                              None if name is None else str(name)))
    if not jobs:
        raise DdromError(f"{path}: no simulation listed")
    return jobs


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def _pattern_jobs(pattern: str) -> list[ImportJob]:
    names = re.findall(r"\{(\w+)\}", pattern)
    if not names:
        raise DdromError(f"--pattern {pattern!r}: no {{NAME}} field (e.g. 'run_E{{E}}.xdmf')")
    if len(set(names)) != len(names):
        raise DdromError(f"--pattern {pattern!r}: a field appears twice")
    regex, pos = "", 0
    for m in re.finditer(r"\{(\w+)\}", pattern):
        fixed = re.escape(pattern[pos:m.start()]).replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        regex += fixed + f"(?P<{m.group(1)}>{_NUMBER})"
        pos = m.end()
    regex += re.escape(pattern[pos:]).replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
    rx = re.compile(regex)
    from ddrom.io.importers import natural_key

    found: dict[str, dict] = {}
    for path in glob.glob(re.sub(r"\{\w+\}", "*", pattern)):
        m = rx.fullmatch(path)
        if m is None:
            continue
        raw = m.groupdict()
        spec = pattern
        for k, v in raw.items():
            spec = spec.replace("{" + k + "}", v)
        found[spec] = {k: float(v) for k, v in raw.items()}
    if not found:
        raise DdromError(f"--pattern {pattern!r}: no file matches (numbers expected in the {{NAME}} fields)")
    return [ImportJob(s, found[s]) for s in sorted(found, key=natural_key)]


def jobs_from_table(path: str, comm: Any) -> list[ImportJob]:
    """The simulations listed in a CSV/TOML table (rank 0 reads; collective); see the module doc."""
    return _on_root(comm, lambda: _read_table(path))


def jobs_from_pattern(pattern: str, comm: Any) -> list[ImportJob]:
    """The simulations whose files match ``pattern`` (``{NAME}`` = a parameter value; collective)."""
    return _on_root(comm, lambda: _pattern_jobs(pattern))


# ======================================================================= the import
def _rollback(store: Any, created: bool, was_final: bool, added: list[str]) -> None:
    """Undo this call's writes after a failure (collective; the error is re-raised by the caller).

    A store this call created, or the copy of a finalized store it was extending, is
    removed: the finalized file was never touched (:meth:`SnapshotStore.open` extends a
    copy). An interrupted ``.partial`` it was adding to loses this call's simulations.
    """
    if created or was_final or not store.is_open:
        store.abort()
        return
    try:
        with collective(store.comm, f"ddrom import: rolling back {store.file}"):
            f = store._file()
            for name in added:
                if name in f["simulations"]:
                    del f["simulations"][name]
    finally:
        store.close()


def import_many(case_path: str, comm: Any, jobs: list[ImportJob], field: str = "displacement",
                finalize: bool = False, coord_rtol: float | None = None, node_order: str = "auto",
                stress_field: str | None = None, progress: bool = False, case: Any = None,
                dm: Any = None, ignore_resources: bool | None = None) -> dict[str, Any]:
    """Import displacement series as training simulations, all or nothing (collective).

    The memory and disk of the import (a replay per simulation into the store) are
    estimated before the mesh is built (or once it is read, for a mesh file) and a request
    that cannot fit is refused (:mod:`ddrom.workflow.resources`; ``ignore_resources``
    overrides).

    Returns a JSON-able summary: ``store``, ``finalized``, ``missing_training_points`` and
    ``simulations`` (one dict per job: name, params, steps, times, max plastic strain,
    node matching, and the stress comparison when ``stress_field`` is given).
    """
    from ddrom.hf.replay import Replayer
    from ddrom.io.importers import DEFAULT_COORD_RTOL, DisplacementSeries
    from ddrom.io.store import SnapshotStore
    from ddrom.materials import from_config

    c = as_mpi(comm)
    case = case or load_case_collectively(case_path, comm)
    if not jobs:
        raise CollectiveError("ddrom import: no simulation to import")
    rtol = DEFAULT_COORD_RTOL if coord_rtol is None else coord_rtol
    params = [_full_params(case, j.params, j.series) for j in jobs]
    names = [j.name or _match_training(case, p) for j, p in zip(jobs, params)]
    given = [n for n in names if n]
    dup = sorted({n for n in given if given.count(n) > 1})
    if dup:
        raise CollectiveError(f"ddrom import: several series would be stored as {dup} (same parameters "
                              "or names)")
    checked = dm is None and check_import(case, comm, len(jobs), ignore=ignore_resources) is not None
    if dm is None:
        dm = build_mesh(case, comm)
    if not checked:
        check_import(case, comm, len(jobs), mesh=mesh_size_of(dm), ignore=ignore_resources)
    material = from_config(case.raw["material"])
    case_times = build_times(case)
    opts = dict(field=field, coord_rtol=rtol, node_order=node_order, stress_field=stress_field)

    # ---- check everything before touching the store
    plans = []
    for j in jobs:
        src = DisplacementSeries(j.series, dm, **opts)
        try:
            times, prepend = _series_times(src, case_times)
        finally:
            src.close()
        plans.append((times, prepend, src.source, src.node_match, src.max_coordinate_distance,
                      src.stress_center))
        if len(times) != len(case_times) or not np.allclose(times, case_times, rtol=1e-9, atol=0.0):
            get_logger(comm).warning(f"ddrom import: warning: {src.source}: the series' times ({len(times) - 1} "
                                     f"steps to t = {times[-1]:.6g}) differ from the case's ({len(case_times) - 1} "
                                     f"steps to t = {case_times[-1]:.6g}); the store keeps the series' times")

    path = store_path(case, "training")
    partial = Path(str(path) + ".partial")
    exists, was_final = c.bcast((path.exists() or partial.exists(), path.exists() and not partial.exists())
                                if c.rank == 0 else None, root=0)
    if exists:
        store = SnapshotStore.open(path, comm, mode="a", dmesh=dm)
        if store.case_hash != case.store_hash("training"):
            store.abort() if was_final else store.close()
            raise CollectiveError(f"{path}: written for another version of the case file (its HF "
                                  "part changed); remove it or import into a fresh output folder")
    else:
        write_on_root(c, lambda: path.parent.mkdir(parents=True, exist_ok=True), f"output folder {path.parent}")
        store = SnapshotStore.create(
            path, dm, state_names=material.state_names, case_hash=case.store_hash("training"), comm=comm,
            provenance={"case": str(case.path), "case_hash": case.store_hash("training"), "case_file_sha256": case.hash,
                        "which": "training", "times": case_times.tolist(), "material": material.to_dict(),
                        "origin": "ddrom import (material replay of external displacements)"})
    complete = {s.name for s in store.simulations() if s.complete}
    clash = sorted(set(n for n in names if n) & complete)
    if clash:
        store.abort() if was_final else store.close()
        raise CollectiveError(f"{path}: simulation(s) {clash} are already complete in the store; import "
                              "under another --name / 'name' column, or into a fresh output folder")
    added: list[str] = []
    summaries = []
    try:
        wdet = dm.geometry[1]                                  # (ne, nq) w * det J
        vol = wdet.sum(axis=1)
        for j, p, name, (times, prepend, source, how, dmax, center) in zip(jobs, params, names, plans):
            src = DisplacementSeries(j.series, dm, **opts)
            try:
                sim = name or f"import_{len(store.simulations()):03d}"
                writer = store.add_simulation(sim, p, n_steps=len(times) - 1)
                added.append(sim)
                loads = build_loads(case, p, dm)
                rep = Replayer(dm, material, loads.temperature, bbar=solver_options(case).bbar)
                zero = np.zeros((dm.n_owned, 3))
                acc = np.zeros(4)                              # max diff, max ref, sum diff^2, sum ref^2
                with Progress(comm, total=len(times), desc=f"import {sim}", quiet=not progress) as bar:
                    for k, t in enumerate(times):
                        kf = k - 1 if prepend else k
                        u = zero if kf < 0 else src.displacement(kf)
                        st = rep.step(float(t), u, k)
                        state = st.internal.reshape(dm.n_cells, dm.n_qp, -1) if st.internal.shape[1] else None
                        writer.write_step(k, float(t), u, st.stress, st.p, state)
                        if stress_field and kf >= 0:
                            s_file = src.stress_cells(kf)
                            s_rep = np.einsum("eq,eqi->ei", wdet, st.stress) / vol[:, None]
                            dn = np.linalg.norm(s_file - s_rep, axis=1)
                            rn = np.linalg.norm(s_rep, axis=1)
                            if dn.size:
                                acc[0], acc[1] = max(acc[0], dn.max()), max(acc[1], rn.max())
                            acc[2] += float(dn @ dn)
                            acc[3] += float(rn @ rn)
                        bar.update(1)
                writer.finish()
                rep.close()
            finally:
                src.close()
            store.set_metadata(sim, "imported_from", source)
            store.set_metadata(sim, "field", field)
            pmax = c.allreduce(float(st.p.max()) if st.p.size else 0.0, op=_op("MAX"))
            s = {"simulation": sim, "series": source, "params": p, "steps": len(times) - 1,
                 "times": times.tolist(), "prepended_zero_step": prepend, "max_plastic_strain": pmax,
                 "node_match": how, "max_coordinate_distance": dmax}
            line = (f"ddrom import: {source} -> {sim} {p}: {len(times) - 1} steps, max p = {pmax:.3e}, "
                    f"nodes {'kept in order' if how == 'identity' else 'matched by coordinates'}")
            if stress_field:
                mx = np.array([acc[0], acc[1]])
                c.Allreduce(_in_place(), mx, op=_op("MAX"))
                sm = np.array([acc[2], acc[3]])
                c.Allreduce(_in_place(), sm, op=_op("SUM"))
                cmp = {"field": stress_field, "center": center,
                       "compared": "file stress per cell (cell field, or mean of the cell's node values) vs "
                                   "the cell average of the replayed integration-point stress",
                       "max_relative": float(mx[0] / mx[1]) if mx[1] > 0 else float(mx[0]),
                       "rms_relative": float(np.sqrt(sm[0] / sm[1])) if sm[1] > 0 else float(np.sqrt(sm[0])),
                       "max_replay_norm": float(mx[1])}
                s["stress_comparison"] = cmp
                line += (f"; stress {stress_field!r} ({center}) vs replay, cell averages: max relative "
                         f"{cmp['max_relative']:.3e}, RMS relative {cmp['rms_relative']:.3e}")
            get_logger(comm).info(line)
            summaries.append(s)
        wanted = {f"train_{i:03d}" for i in range(len(case.training_parameters()))}
        done = {s.name for s in store.simulations() if s.complete}
        do_finalize = finalize or (bool(wanted) and wanted <= done)
    except BaseException:
        _rollback(store, not exists, was_final, added)
        raise
    if do_finalize:
        store.finalize()
    else:
        store.close()
    where = str(path) if do_finalize else str(partial)
    get_logger(comm).info(f"ddrom import: {len(summaries)} simulation(s) -> {where}" +
                          ("" if do_finalize else f" ({len(wanted - done)} training point(s) missing; not finalized)"))
    return {"store": where, "finalized": do_finalize, "missing_training_points": sorted(wanted - done),
            "simulations": summaries}


def import_series(case_path: str, comm: Any, series: str, params: dict[str, float],
                  field: str = "displacement", finalize: bool = False, name: str | None = None,
                  coord_rtol: float | None = None, progress: bool = False, case: Any = None,
                  dm: Any = None, node_order: str = "auto", stress_field: str | None = None) -> dict[str, Any]:
    """Import one displacement series as one training simulation (collective); see the module doc.

    Returns the simulation's summary (see :func:`import_many`) with the store's keys.
    """
    out = import_many(case_path, comm, [ImportJob(series, params, name)], field=field, finalize=finalize,
                      coord_rtol=coord_rtol, node_order=node_order, stress_field=stress_field, progress=progress,
                      case=case, dm=dm)
    return {**out["simulations"][0], "store": out["store"], "finalized": out["finalized"],
            "missing_training_points": out["missing_training_points"]}


def _op(name: str):
    from mpi4py import MPI

    return getattr(MPI, name)


def _in_place():
    from mpi4py import MPI

    return MPI.IN_PLACE
