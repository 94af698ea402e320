"""The a priori local-vs-global criterion of a case (``ddrom cluster``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ddrom.parallel import Timers, as_mpi
from ddrom.workflow.hf import store_path
from ddrom.workflow.rom import as_case, hf_context


def cluster_report(case: Any, comm: Any, ks: list[int] | None = None, Ns: list[int] | None = None,
                   dissimilarity: str = "grassmann_max", error_target: float | None = None,
                   budget: float | None = None, plots: bool = False) -> dict[str, Any]:
    """The a priori local-vs-global criterion on the training displacement snapshots.

    One distributed Gram matrix (one allreduce) of the snapshots (t = 0 excluded, prescribed
    DOFs zeroed), then everything is replicated and small: clustering of the simulations,
    local PODs from Gram blocks, projection errors for a (k, N) grid, and a recommendation
    (``error_target``, ``budget``). Returns the table (``format_table`` prints it).
    """
    from ddrom.io.store import SnapshotStore
    from ddrom.reduction import Euclidean
    from ddrom.reduction.criterion import efficiency_table, plot_efficiency, recommend

    c = as_mpi(comm)
    case = as_case(case, comm)
    timers = Timers()
    dm, solver = hf_context(case, comm, timers)
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
    if plots:
        from ddrom.io.h5atomic import write_on_root

        path = Path(case.output_dir) / "cluster_criterion.png"
        write_on_root(c, lambda: plot_efficiency(table, str(path), f"{case.name}: local ({dissimilarity}) vs "
                                                                    "global bases"), f"figure {path}", path)
        out["plot"] = str(path)
    return out
