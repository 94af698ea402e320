"""Early refusal of the stages: what a case asks for, against what the machine has.

Before a stage allocates anything of the size of the problem it estimates the memory
per rank (and rank 0's serial mesh) and the disk it will write
(:mod:`ddrom.io.estimate`), compares them with each node's available memory and the
output folder's free disk, and refuses what cannot fit in one collective error that
gives the estimate and what is available. The mesh is counted from the generator's
arguments without building it (a 400^3 box is refused before rank 0 builds anything);
a mesh read from a file is counted once read (before the solver, the store or the
snapshot blocks are allocated).

Override: ``ignore_resources=True`` (the command line's ``--ignore-resources``) or the
environment variable ``DDROM_IGNORE_RESOURCES=1`` (:data:`ddrom.io.estimate.OVERRIDE_ENV`,
the default when ``ignore_resources`` is None): the refusal is then logged as a warning
and the stage runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ddrom.io.estimate import (Estimate, MeshSize, ResourceReport, check_resources, estimate_hf, estimate_offline,
                               generator_mesh_size)
from ddrom.parallel import as_mpi, get_logger, root_only

__all__ = ["case_mesh_size", "mesh_size_of", "check_hf", "check_import", "check_offline", "check_run"]


def case_mesh_size(case: Any) -> MeshSize | None:
    """The case's mesh size counted from its generator's arguments (None for a mesh file)."""
    cfg = case.raw["mesh"]
    if not cfg.get("generator"):
        return None
    return generator_mesh_size(cfg["generator"], dict(cfg.get("args", {})))


def mesh_size_of(dm: Any) -> MeshSize:
    """The size of a distributed mesh already built."""
    return MeshSize(cells=int(dm.n_cells_global), nodes=int(dm.n_nodes_global), cell_type=dm.cell_type)


def _n_state(case: Any) -> int:
    from ddrom.materials import from_config

    return len(from_config(case.raw["material"]).state_names)     # (a UMAT library is not loaded)


def _stored_state(case: Any) -> int:
    """Internal variables per integration point the case's stores keep (``[output] store_state``)."""
    from ddrom.workflow.options import store_options

    return _n_state(case) if store_options(case).store_state else 0


def _points(case: Any, which: str) -> int:
    return len(case.training_parameters() if which == "training" else case.test_parameters())


def _existing_bytes(comm: Any, paths: Sequence[Path]) -> int:
    """Bytes already on disk in these files (a resumed store needs only the rest)."""
    return int(root_only(comm, lambda: sum(p.stat().st_size for p in paths if p.is_file()), "free disk") or 0)


def _check(estimate: Estimate, case: Any, comm: Any, what: str, ignore: bool | None) -> ResourceReport:
    folder = Path(case.output_dir)
    report = check_resources(estimate, comm, folder, force=ignore, what=what)
    if not report.ok:                          # forced: say what would have been refused
        get_logger(comm).warning(f"warning: {report.message} -- running anyway (resources check overridden)")
    return report


def check_hf(case: Any, comm: Any, sets: Sequence[str], *, mesh: MeshSize | None = None, resume: bool = True,
             ignore: bool | None = None, what: str = "HF sweep") -> ResourceReport | None:
    """Refuse an HF sweep of ``sets`` ("training", "test") that cannot fit (collective).

    ``mesh``: its size (default: counted from the generator; None for a mesh file: no
    check, call again once the mesh is read). The disk needed is that of the stores,
    minus what an interrupted store being resumed already holds; with ``resume``, a set whose store is
    complete and up to date needs nothing.
    """
    mesh = mesh or case_mesh_size(case)
    if mesh is None:
        return None
    n_steps = len(case.times())
    if resume:
        from ddrom.workflow.hf import store_up_to_date, store_path

        # a complete, up-to-date store is kept as it is (`ddrom calibrate` on a full disk
        # with its test store already computed must not be refused for it)
        sets = [s for s in sets if not store_up_to_date(store_path(case, s), case, comm, s)]
    sims = sum(_points(case, s) for s in sets)
    est = estimate_hf(mesh, as_mpi(comm).size, n_steps, sims, _n_state(case), _stored_state(case))
    if not sims:
        est.disk = 0
        est.breakdown["store"] = 0
    elif resume:
        held = _existing_bytes(comm, [Path(str(store_path(case, s)) + ".partial") for s in sets])
        est.disk = max(0, est.disk - held)
        est.breakdown["store"] = est.disk
    return _check(est, case, comm, what, ignore)


def check_import(case: Any, comm: Any, n_series: int, *, mesh: MeshSize | None = None,
                 ignore: bool | None = None) -> ResourceReport | None:
    """Refuse an import of ``n_series`` displacement series that cannot fit (collective): a
    material replay and a store of as many simulations, sized like an HF sweep (an upper
    bound). None when the mesh is a file not read yet (call again with ``mesh``)."""
    mesh = mesh or case_mesh_size(case)
    if mesh is None:
        return None
    est = estimate_hf(mesh, as_mpi(comm).size, len(case.times()), int(n_series), _n_state(case),
                      _stored_state(case))
    est.what = f"{int(n_series)} series on {est.what}"
    return _check(est, case, comm, "import", ignore)


def check_offline(case: Any, comm: Any, mesh: MeshSize, n_snapshots: int, *, ignore: bool | None = None,
                  what: str = "offline stage") -> ResourceReport:
    """Refuse an offline stage on ``n_snapshots`` snapshots of ``mesh`` that cannot fit (collective)."""
    est = estimate_offline(mesh, as_mpi(comm).size, n_snapshots, _n_state(case))
    return _check(est, case, comm, what, ignore)


def check_run(case: Any, comm: Any, *, ignore: bool | None = None) -> ResourceReport | None:
    """``ddrom run``: the largest stage's memory (HF sweep or offline) and the disk of the
    training and test stores plus the ROM file, before anything starts (collective)."""
    mesh = case_mesh_size(case)
    if mesh is None:
        return None
    ranks = as_mpi(comm).size
    n_steps = len(case.times())
    n_state = _n_state(case)
    n_train, n_test = _points(case, "training"), _points(case, "test")
    hf = estimate_hf(mesh, ranks, n_steps, n_train + n_test, n_state, _stored_state(case))
    off = estimate_offline(mesh, ranks, n_train * (n_steps + 1), n_state)
    est = Estimate(what=f"a run of {mesh.cells} {mesh.cell_type} cells, {n_steps} steps x "
                        f"{n_train} training + {n_test} test simulation(s) on {ranks} rank(s)",
                   memory_per_rank=max(hf.memory_per_rank, off.memory_per_rank),
                   memory_rank0_extra=hf.memory_rank0_extra, disk=hf.disk + off.disk,
                   breakdown={"hf": hf.breakdown, "offline": off.breakdown})
    return _check(est, case, comm, "pipeline", ignore)

