"""``ddrom import``: another solver's displacement series -> one simulation of the training store.

The series (see :mod:`ddrom.io.importers` for the formats and the node-matching rule)
is read on rank 0 step by step and scattered by natural slices; the stress, the
cumulated plastic strain and the internal variables are recomputed in parallel by
replaying the case's material law (:mod:`ddrom.hf.replay`) at the case's temperature
for the given parameters, and everything is written to ``out/<case>/hf_training.h5``.

Store life cycle (kept simple):

* the first import creates the store (as ``hf_training.h5.partial``); later imports
  open it with mode ``"a"`` (``.partial`` or a finalized file, which goes back to
  ``.partial``) and append one simulation each; a store of another version of the case
  file (other ``hf_hash``) is an error.
* the simulation is named after the training point with the same parameters
  (``train_003``), else ``import_<n>`` (or ``--name``).
* the store is finalized when every training point of the case is present and
  complete, or on ``--finalize`` (then whatever it holds becomes the training set).

Times: those of the file (XDMF, PVD) or, for a list of VTU files, the case's. When the
series does not start at t = 0, a zero-displacement step at t = 0 is prepended (the
store's step 0 is the initial state).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ddrom.cli.build import build_loads, build_mesh, build_solver_options, build_times, load_case_collectively
from ddrom.cli.pipeline import store_path
from ddrom.parallel import CollectiveError, Progress, as_mpi, rank0_print


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


def import_series(case_path: str, comm: Any, series: str, params: dict[str, float],
                  field: str = "displacement", finalize: bool = False, name: str | None = None,
                  coord_rtol: float | None = None, quiet: bool = False, case: Any = None,
                  dm: Any = None) -> dict[str, Any]:
    """Import one displacement series as one training simulation (collective); see the module doc.

    Returns a JSON-able summary: store path, simulation name, steps, max p, whether the
    store was finalized.
    """
    from ddrom.hf.replay import Replayer
    from ddrom.io.importers import DEFAULT_COORD_RTOL, DisplacementSeries
    from ddrom.io.store import SnapshotStore
    from ddrom.materials import from_config

    c = as_mpi(comm)
    case = case or load_case_collectively(case_path, comm)
    names = case.parameter_names
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise CollectiveError(f"--param: unknown parameter(s) {unknown}; the case has {names}")
    full = {k: float(v) for k, v in params.items()}
    missing = [k for k in names if k not in full]
    defaults = {k: case.raw["parameters"][k].get("default") for k in missing}
    if any(v is None for v in defaults.values()):
        raise CollectiveError(f"--param: give a value for {[k for k, v in defaults.items() if v is None]}")
    full.update({k: float(v) for k, v in defaults.items()})
    params = {k: full[k] for k in names}

    if dm is None:
        dm = build_mesh(case, comm)
    material = from_config(case.raw["material"])
    loads = build_loads(case, params, dm)
    case_times = build_times(case)
    src = DisplacementSeries(series, dm, field=field,
                             coord_rtol=DEFAULT_COORD_RTOL if coord_rtol is None else coord_rtol)
    try:
        times, prepend = _series_times(src, case_times)
        if len(times) != len(case_times) or not np.allclose(times, case_times, rtol=1e-9, atol=0.0):
            rank0_print(comm, f"ddrom import: warning: the series' times ({len(times) - 1} steps to "
                              f"t = {times[-1]:.6g}) differ from the case's ({len(case_times) - 1} steps "
                              f"to t = {case_times[-1]:.6g}); the store keeps the series' times")
        sim = name or _match_training(case, params)
        path = store_path(case, "training")
        partial = Path(str(path) + ".partial")
        exists = c.bcast((path.exists() or partial.exists()) if c.rank == 0 else None, root=0)
        if exists:
            store = SnapshotStore.open(path, comm, mode="a", dmesh=dm)
            if store.case_hash != case.hf_hash:
                store.close()
                raise CollectiveError(f"{path}: written for another version of the case file (its HF "
                                      "part changed); remove it or import into a fresh output folder")
        else:
            if c.rank == 0:
                path.parent.mkdir(parents=True, exist_ok=True)
            c.Barrier()
            store = SnapshotStore.create(
                path, dm, state_names=material.state_names, case_hash=case.hf_hash, comm=comm,
                provenance={"case": str(case.path), "case_hash": case.hf_hash, "case_file_sha256": case.hash,
                            "which": "training", "times": case_times.tolist(), "material": material.to_dict(),
                            "origin": "ddrom import (material replay of external displacements)"})
        if sim is None:
            sim = f"import_{len(store.simulations()):03d}"
        writer = store.add_simulation(sim, params, n_steps=len(times) - 1)
        rep = Replayer(dm, material, loads.temperature, bbar=build_solver_options(case).bbar)
        zero = np.zeros((dm.n_owned, 3))
        with Progress(comm, total=len(times), desc=f"import {sim}", quiet=quiet) as bar:
            for k, t in enumerate(times):
                kf = k - 1 if prepend else k
                u = zero if kf < 0 else src.displacement(kf)
                st = rep.step(float(t), u, k)
                state = st.internal.reshape(dm.n_cells, dm.n_qp, -1) if st.internal.shape[1] else None
                writer.write_step(k, float(t), u, st.stress, st.p, state)
                bar.update(1)
        writer.finish()
        rep.close()
        store.set_metadata(sim, "imported_from", src.source)
        store.set_metadata(sim, "field", field)
        pmax = c.allreduce(float(st.p.max()) if st.p.size else 0.0, op=_max())
        wanted = {f"train_{i:03d}" for i in range(len(case.training_parameters()))}
        done = {s.name for s in store.simulations() if s.complete}
        do_finalize = finalize or (bool(wanted) and wanted <= done)
        if do_finalize:
            store.finalize()
        else:
            store.close()
    finally:
        src.close()
    where = str(path) if do_finalize else str(partial)
    rank0_print(comm, f"ddrom import: {src.source} -> {where} as {sim} {params}: {len(times) - 1} steps, "
                      f"max p = {pmax:.3e}" + ("" if do_finalize else
                                               f" ({len(wanted - done)} training point(s) missing; "
                                               "not finalized)"))
    return {"store": where, "simulation": sim, "params": params, "steps": len(times) - 1,
            "times": times.tolist(), "prepended_zero_step": prepend, "max_plastic_strain": pmax,
            "max_coordinate_distance": src.max_coordinate_distance, "finalized": do_finalize,
            "missing_training_points": sorted(wanted - done)}


def _max():
    from mpi4py import MPI

    return MPI.MAX
