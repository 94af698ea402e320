"""The HF stage: a case's parameter sweeps computed into their snapshot stores.

:func:`hf_sweep` does collective work on the communicator it is given and returns a
JSON-able summary; progress goes to the ``ddrom`` logger (rank 0) and, with
``progress=True``, to progress bars.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any


import ddrom
from ddrom.parallel import Progress, Timers, as_mpi, get_logger
from ddrom.workflow.build import build_loads, build_mesh, build_times, load_case_collectively, sanity_check_regions
from ddrom.io.h5atomic import write_on_root
from ddrom.workflow.options import solver_options, store_options
from ddrom.workflow.resources import check_hf, mesh_size_of


def store_path(case: Any, which: str) -> Path:
    return Path(case.output_dir) / f"hf_{which}.h5"


def _points(case: Any, which: str) -> list[tuple[str, dict]]:
    pts = case.training_parameters() if which == "training" else case.test_parameters()
    prefix = "train" if which == "training" else "test"
    return [(f"{prefix}_{i:03d}", dict(p)) for i, p in enumerate(pts)]


def hf_sweep(case: Any, comm: Any, which: str = "training", resume: bool = True,
             progress: bool = False, max_simulations: int | None = None,
             dm: Any = None, stream_pod: bool | None = None,
             ignore_resources: bool | None = None) -> dict[str, Any]:
    """Compute every HF simulation of a parameter set into its snapshot store.

    With ``resume``, simulations already complete in an interrupted store are kept and
    only the others are (re)computed; the store appears at its final path only once
    every simulation is complete. ``max_simulations`` stops after computing that many
    (a sweep split over several batch jobs); the store then stays ``.partial``.

    ``stream_pod`` (default: the case's ``rom.stream_during_hf``): the training sweep
    also feeds the displacement streaming POD with every converged step (prescribed
    DOFs zeroed, tolerances ``rom.pod_tol``, ``rom.max_modes``) and saves its state next
    to the store after each simulation (:class:`ddrom.rom.offline.DisplacementStream`);
    the offline stage with ``rom.pod_method = "streaming"`` then starts from it instead
    of reading the store again. A store that is already complete and up to date is not
    streamed (the offline stage streams it from the store).

    Before anything of the size of the problem is allocated, the memory and disk of the
    sweep are estimated and a request that cannot fit is refused with the estimate and
    what is available (:mod:`ddrom.workflow.resources`; ``ignore_resources=True`` or
    ``DDROM_IGNORE_RESOURCES=1`` runs it anyway).
    """
    c = as_mpi(comm)
    if isinstance(case, (str, Path)):
        case = load_case_collectively(str(case), comm)
    quiet = not progress
    sets = ["training", "test"] if which == "all" else [which]
    timers = Timers()
    # early refusal: a generated mesh is counted before it is built, a mesh file once read
    checked = dm is None and check_hf(case, comm, sets, resume=resume, ignore=ignore_resources) is not None
    if dm is None:
        with timers("mesh"):
            dm = build_mesh(case, comm)
        sanity_check_regions(case, dm)
    if not checked:
        check_hf(case, comm, sets, mesh=mesh_size_of(dm), resume=resume, ignore=ignore_resources)
    summary: dict[str, Any] = {"case": str(case.path), "ranks": c.size, "ddrom_version": ddrom.__version__,
                               "mesh": dm.summary(), "sets": {}}
    get_logger(comm).info(f"ddrom hf: {case.path.name}: {dm.n_cells_global} {dm.cell_type} cells, "
                      f"{3 * dm.n_nodes_global} DOFs on {c.size} rank(s)")
    if stream_pod is None:
        stream_pod = bool(case.raw["rom"]["stream_during_hf"])
    for s in sets:
        summary["sets"][s] = _sweep_set(case, dm, s, resume, quiet, timers, comm, max_simulations,
                                        stream_pod=stream_pod and s == "training")
    summary["timers"] = timers.summary(comm)
    return summary


def lacks_state(store: Any, case: Any) -> bool:
    """The case asks for the internal variables (``[output] store_state``) and the store,
    written without them, cannot give them."""
    return store_options(case).store_state and bool(store.state_names) and not store.state_stored


def store_up_to_date(path: Path, case: Any, comm: Any, which: str) -> bool:
    """A complete store of this very case file exists at the final path (collective), with
    the internal variables if the case asks for them."""
    from ddrom.io.store import SnapshotStore
    from ddrom.parallel import DdromError

    c = as_mpi(comm)
    if not c.bcast(path.exists() if c.rank == 0 else None, root=0):
        return False
    try:
        store = SnapshotStore.open(path, comm, mode="r")
    except DdromError:
        return False   # unreadable or of another schema: recompute it
    ok = store.case_hash == case.store_hash(which) and not lacks_state(store, case)
    store.close()
    return ok


def _sweep_set(case, dm, which, resume, quiet, timers, comm, max_simulations=None,
               stream_pod=False) -> dict[str, Any]:
    from ddrom.hf.solver import HFSolver
    from ddrom.io.store import SnapshotStore
    from ddrom.materials import from_config

    c = as_mpi(comm)
    points = _points(case, which)
    if not points:
        return {"simulations": 0}
    path = store_path(case, which)
    times = build_times(case)
    material = from_config(case.raw["material"])
    options = solver_options(case)
    provenance = {"case": str(case.path), "case_hash": case.store_hash(which), "case_file_sha256": case.hash,
                  "which": which, "times": times.tolist(), "material": material.to_dict()}
    if resume and store_up_to_date(path, case, comm, which):
        get_logger(comm).info(f"  {path.name}: complete and up to date (use --restart to recompute)")
        store = SnapshotStore.open(path, comm, mode="r")
        runs = [{"name": name, "params": params, "skipped": True, "seconds": store.metadata(name, "hf_seconds")}
                for name, params in points]
        store.close()
        return {"store": str(path), "simulations": len(points), "computed": 0,
                "resumed_skipped": len(points), "complete": True, "runs": runs}
    partial = Path(str(path) + ".partial")
    exists = c.bcast(partial.exists() if c.rank == 0 else None, root=0)
    store = None
    if resume and exists:
        store = SnapshotStore.open(path, comm, mode="a", dmesh=dm)
        if store.case_hash != case.store_hash(which):
            store.close()
            store = None
            get_logger(comm).info(f"  {partial.name}: written by another version of the case file; starting over")
        elif lacks_state(store, case):
            store.close()
            store = None
            get_logger(comm).info(f"  {partial.name}: written without the internal variables the case asks for "
                                  "([output] store_state = true); starting over")
    fresh = store is None
    if store is None:
        write_on_root(c, lambda: path.parent.mkdir(parents=True, exist_ok=True), f"output folder {path.parent}")
        store = SnapshotStore.create(path, dm, state_names=material.state_names, case_hash=case.store_hash(which),
                                     provenance=provenance, comm=comm, options=store_options(case))
    done = {s.name for s in store.simulations() if s.complete}
    solver = None
    stream = None
    if stream_pod:
        from ddrom.rom.offline import DisplacementStream

        # the prescribed DOFs come from the solver (the same for every parameter point)
        with timers("setup"):
            solver = HFSolver(dm, material, build_loads(case, points[0][1], dm), options, timers=timers)
        rom = case.raw["rom"]
        stream = DisplacementStream(solver, store, float(rom["pod_tol"]), rom.get("max_modes"))
        with timers("stream_pod"):
            if fresh:
                stream.discard()      # a state of an earlier store must not pass for this one
            how = stream.resume()
        if how:
            get_logger(comm).info(f"  streaming POD: {how}")
    results = []
    computed = 0
    for isim, (name, params) in enumerate(points):
        if name in done:
            results.append({"name": name, "params": params, "skipped": True,
                            "seconds": store.metadata(name, "hf_seconds")})
            continue
        if max_simulations is not None and computed >= max_simulations:
            break
        computed += 1
        loads = build_loads(case, params, dm)
        if solver is None:
            with timers("setup"):
                solver = HFSolver(dm, material, loads, options, timers=timers)
        else:
            solver.set_loads(loads)
        writer = store.add_simulation(name, params, n_steps=len(times) - 1)
        t0 = time.perf_counter()
        st = solver.initial_state(times[0])
        _write(writer, 0, st, solver, dm)
        if stream is not None:
            with timers("stream_pod"):
                stream.add(st.owned_displacement(dm.n_owned))
        newton = ksp = cuts = 0
        desc = f"{which} {isim + 1}/{len(points)} {name}"
        with Progress(comm, total=len(times) - 1, desc=desc, quiet=quiet) as bar:
            for k in range(1, len(times)):
                with timers("solve"):
                    st, info = solver.step(st, float(times[k]), k)
                newton += info.newton_iterations
                ksp += info.ksp_iterations
                cuts += info.cutbacks
                with timers("write"):
                    _write(writer, k, st, solver, dm)
                if stream is not None:
                    with timers("stream_pod"):
                        stream.add(st.owned_displacement(dm.n_owned))
                bar.update(1, newton=info.newton_iterations, ksp=info.ksp_iterations)
        writer.finish()
        sec = c.allreduce(time.perf_counter() - t0, op=_max())
        store.set_metadata(name, "hf_seconds", sec)
        if stream is not None:
            # saved once the simulation is complete in the store: a crash before this line
            # is caught up from the store on resume, one after it finds the state saved
            with timers("stream_pod"):
                stream.finish_simulation(name, len(times) - 1)
        p = solver.material.cumulated_plastic_strain(st.internal)
        pmax = c.allreduce(float(p.max()) if p.size else 0.0, op=_max())
        results.append({"name": name, "params": params, "seconds": sec, "newton_iterations": newton,
                        "ksp_iterations": ksp, "cutbacks": cuts, "max_plastic_strain": pmax})
        get_logger(comm).info(f"  {name} {params}: {sec:.1f} s, {newton} Newton iterations, "
                              f"{ksp} KSP iterations, {cuts} cut-backs, max p = {pmax:.3e}")
    complete = len(results) == len(points)
    if complete:
        store.finalize()
    else:
        store.close()
        get_logger(comm).info(f"  stopped after {computed} simulation(s); {len(points) - len(results)} left "
                              f"(run the same command again to resume)")
    out_stream = {}
    if stream is not None:
        out_stream = {"stream_pod": {"state": str(stream.path), "n_modes": stream.ipod.n_modes,
                                     "simulations": len(stream.simulations)}}
    return {"store": str(path) if complete else str(path) + ".partial", "simulations": len(points),
            **out_stream, "complete": complete,
            "computed": sum(1 for r in results if not r.get("skipped")),
            "resumed_skipped": sum(1 for r in results if r.get("skipped")), "runs": results}


def _write(writer, k, st, solver, dm) -> None:
    ne, nq = dm.n_cells, dm.n_qp
    p = solver.material.cumulated_plastic_strain(st.internal).reshape(ne, nq)
    state = st.internal.reshape(ne, nq, -1) if st.internal.shape[1] else None
    writer.write_step(k, st.t, st.owned_displacement(dm.n_owned), st.stress, p, state)


def _max():
    from mpi4py import MPI

    return MPI.MAX
