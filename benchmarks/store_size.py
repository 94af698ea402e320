"""Snapshot-store size and write/read time per layout, on a case's physics (default the demo).

    mpirun -n 1 .venv/bin/python benchmarks/store_size.py --json store_size_1.json
    mpirun -n 3 .venv/bin/python benchmarks/store_size.py --json store_size_3.json

The HF steps of ``--points`` training points of the case (spread over its training set:
the first, the last, ...) are computed once and kept in memory (``--from STORE`` takes
them from a store that holds the internal variables instead, e.g. a version-1
``hf_training.h5``). Then the same steps are written through
:class:`ddrom.io.store.SnapshotStore` with each layout, in ``--repeat`` rounds whose order
rotates (the layouts are timed side by side in one run, on a shared machine), and read
back as the offline stage reads them (``read_block`` of displacement, stress and p).

Reported per layout, from the file (h5py's storage size of each dataset, summed over the
simulations): bytes per DOF and stored step (DOF = 3 x nodes, steps = n_steps + 1 per
simulation) of each dataset and of the whole file; the write time (every ``write_step``
of every simulation, slowest rank, median over the rounds) and the offline read time, as
ratios to the version-1 layout (``v1``: internal variables stored, no compression) and to
the default layout without compression; the write time per step against the HF solve time
per step. Every layout is checked to read back bitwise equal to the data written.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's ddrom, as the other benchmarks
import ddrom  # noqa: E402  (PETSc / parallel h5py environment first)
from mpi4py import MPI  # noqa: E402

#: name -> (store_state, compression); "v1" is the layout before StoreOptions
LAYOUTS = {
    "v1": (True, "none"),
    "none": (False, "none"),
    "gzip-1": (False, "gzip-1"),
    "gzip-2": (False, "gzip-2"),
    "gzip-4": (False, "gzip-4"),
    "lzf": (False, "lzf"),
    "state+gzip-1": (True, "gzip-1"),
}
DATASETS = ("displacement", "stress", "p", "state", "p_cell", "von_mises_cell", "time")


def _pick(n: int, k: int) -> list[int]:
    """k indices spread over range(n), ends included."""
    return sorted({int(round(i * (n - 1) / max(1, k - 1))) for i in range(k)}) if k > 1 else [n - 1]


def hf_steps(case, comm, n_points: int):
    """Run the HF of n_points training points; returns dm, state names, [(name, params, steps)]
    with steps = [(t, u_owned, stress, p, state)], and the HF seconds per step."""
    from ddrom.hf.solver import HFSolver
    from ddrom.materials import from_config
    from ddrom.workflow.build import build_loads, build_mesh, build_times
    from ddrom.workflow.options import solver_options

    dm = build_mesh(case, comm)
    material = from_config(case.raw["material"])
    pts = case.training_parameters()
    times = build_times(case)
    ne, nq = dm.n_cells, dm.n_qp
    solver, sims, solve = None, [], 0.0
    for i in _pick(len(pts), n_points):
        loads = build_loads(case, pts[i], dm)
        if solver is None:
            solver = HFSolver(dm, material, loads, solver_options(case))
        else:
            solver.set_loads(loads)

        def record(st):
            p = solver.material.cumulated_plastic_strain(st.internal).reshape(ne, nq).copy()
            return (float(st.t), st.owned_displacement(dm.n_owned).copy(), np.array(st.stress, copy=True), p,
                    st.internal.reshape(ne, nq, -1).copy())

        st = solver.initial_state(times[0])
        steps = [record(st)]
        for k in range(1, len(times)):
            t0 = time.perf_counter()
            st, _ = solver.step(st, float(times[k]), k)
            solve += comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
            steps.append(record(st))
        sims.append((f"train_{i:03d}", pts[i], steps))
        if comm.rank == 0:
            print(f"  HF {sims[-1][0]} {pts[i]}: {len(steps) - 1} steps", flush=True)
    n_solved = sum(len(s[2]) - 1 for s in sims)
    return dm, list(material.state_names), sims, solve / max(1, n_solved)


def store_steps(path: str, comm, case, n_points: int):
    """The steps of n_points simulations of an existing store that holds the internal variables."""
    from ddrom.io.store import SnapshotStore
    from ddrom.workflow.build import build_mesh

    dm = build_mesh(case, comm)
    with SnapshotStore.open(path, comm, dmesh=dm) as st:
        if not st.state_stored:
            raise SystemExit(f"{path} does not hold the internal variables: run without --from")
        infos = [s for s in st.simulations() if s.complete]
        sims = []
        for i in _pick(len(infos), n_points):
            s = infos[i]
            tt = st.read_times(s.name)
            steps = [(float(tt[k]), st.read_displacement(s.name, k, dm), st.read_qp(s.name, "stress", k, dm),
                      st.read_qp(s.name, "p", k, dm), st.read_qp(s.name, "state", k, dm))
                     for k in range(s.n_steps + 1)]
            sims.append((s.name, s.params, steps))
        names = st.state_names
    return dm, names, sims, float("nan")


def write_layout(path: str, comm, dm, state_names, sims, store_state: bool, compression: str) -> float:
    """Write every step of every simulation; returns the seconds spent in write_step (slowest rank)."""
    from ddrom.io.store import SnapshotStore, StoreOptions

    st = SnapshotStore.create(path, dm, state_names=state_names, comm=comm,
                              options=StoreOptions(store_state=store_state, compression=compression))
    spent = 0.0
    for name, params, steps in sims:
        w = st.add_simulation(name, params, len(steps) - 1)
        comm.Barrier()
        t0 = time.perf_counter()
        for k, (t, u, s, p, q) in enumerate(steps):
            w.write_step(k, t, u, s, p, q)
        spent += comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
        w.finish()
    st.finalize()
    return spent


def read_layout(path: str, comm, dm, sims, store_state: bool) -> tuple[float, bool]:
    """Read displacement, stress and p as the offline stage does (read_block); returns the
    seconds (slowest rank) and whether every value equals what was written."""
    from ddrom.io.store import SnapshotStore

    with SnapshotStore.open(path, comm, dmesh=dm) as st:
        comm.Barrier()
        t0 = time.perf_counter()
        blocks = {f: st.read_block(f, dm) for f in ("displacement", "stress", "p")}
        spent = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
        j, ok = 0, True
        for _, _, steps in sims:
            for (t, u, s, p, q) in steps:
                ok &= np.array_equal(blocks["displacement"][:, j], u.ravel())
                ok &= np.array_equal(blocks["stress"][:, j], s.ravel()) and np.array_equal(blocks["p"][:, j], p.ravel())
                j += 1
        if store_state:
            B = st.read_block("state", dm)
            ok &= np.array_equal(B, np.column_stack([q.ravel() for _, _, steps in sims for *_, q in steps]))
    return spent, bool(comm.allreduce(ok, op=MPI.LAND))


def sizes(path: str) -> dict:
    """Bytes of each dataset (summed over the simulations) and of the file (rank 0)."""
    import h5py

    out = {d: 0 for d in DATASETS}
    with h5py.File(path, "r") as f:
        for g in f["simulations"].values():
            for d in g:
                out[d] += g[d].id.get_storage_size()
        out["mesh"] = sum(f["mesh"][n].id.get_storage_size() for n in ("points", "cells"))
    out["file"] = os.path.getsize(path)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", default=str(Path(__file__).resolve().parents[1] / "cases" / "demo.toml"))
    ap.add_argument("--points", type=int, default=2, help="training points computed (spread over the set)")
    ap.add_argument("--from", dest="source", help="take the steps from this store (with internal variables)")
    ap.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    ap.add_argument("--repeat", type=int, default=3, help="rounds of writes (median time)")
    ap.add_argument("--folder", help="where the stores are written (default: a temporary folder)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    from ddrom.workflow.build import load_case_collectively

    case = load_case_collectively(args.case, comm)
    if comm.rank == 0:
        print(f"case {args.case}, {comm.size} rank(s)", flush=True)
    if args.source:
        dm, names, sims, hf_step = store_steps(args.source, comm, case, args.points)
    else:
        dm, names, sims, hf_step = hf_steps(case, comm, args.points)
    folder = comm.bcast(args.folder or (tempfile.mkdtemp(prefix="store_size_") if comm.rank == 0 else None), root=0)
    dofs = 3 * dm.n_nodes_global
    nsteps = sum(len(s[2]) for s in sims)
    writes = {name: [] for name in args.layouts}
    reads = {name: [] for name in args.layouts}
    size = {}
    for r in range(args.repeat):
        order = args.layouts[r % len(args.layouts):] + args.layouts[: r % len(args.layouts)]
        for name in order:
            state, comp = LAYOUTS[name]
            path = os.path.join(folder, f"{name}.h5")
            writes[name].append(write_layout(path, comm, dm, names, sims, state, comp))
            t, ok = read_layout(path, comm, dm, sims, state)
            if not ok:
                raise SystemExit(f"layout {name}: the data read back differ from the data written")
            reads[name].append(t)
            if r == 0:
                size[name] = comm.bcast(sizes(path) if comm.rank == 0 else None, root=0)
            comm.Barrier()
    if comm.rank == 0 and not args.folder:
        shutil.rmtree(folder, ignore_errors=True)
    w = {n: float(np.median(v)) for n, v in writes.items()}
    rd = {n: float(np.median(v)) for n, v in reads.items()}
    rows = []
    for name in args.layouts:
        b = {d: size[name][d] / (dofs * nsteps) for d in DATASETS + ("file",)}
        rows.append({"layout": name, "store_state": LAYOUTS[name][0], "compression": LAYOUTS[name][1],
                     "bytes_per_dof_step": b, "file_bytes": size[name]["file"],
                     "write_seconds": w[name], "read_seconds": rd[name],
                     "write_vs_v1": w[name] / w["v1"] if "v1" in w else None,
                     "write_vs_none": w[name] / w["none"] if "none" in w else None,
                     "read_vs_none": rd[name] / rd["none"] if "none" in rd else None,
                     "write_ms_per_step": 1e3 * w[name] / nsteps})
    if comm.rank == 0:
        print(f"\n{dm.n_nodes_global} nodes ({dofs} DOFs), {dm.n_cells_global} cells x {dm.n_qp} points, "
              f"{len(names)} internal variables; {len(sims)} simulations, {nsteps} stored steps; "
              f"HF solve {hf_step:.3f} s per step; {comm.size} rank(s); median of {args.repeat} rounds")
        head = f"{'layout':14s}" + "".join(f"{d[:8]:>9s}" for d in DATASETS[:6]) + f"{'file':>8s}" \
            + f"{'write/v1':>10s}{'write/none':>11s}{'read/none':>10s}{'ms/step':>9s}"
        print("B per DOF and step (from the file):")
        print(head)
        for r in rows:
            b = r["bytes_per_dof_step"]
            ratio = lambda x: "-" if x is None else f"{x:.2f}"   # noqa: E731
            print(f"{r['layout']:14s}" + "".join(f"{b[d]:9.2f}" for d in DATASETS[:6]) + f"{b['file']:8.1f}"
                  + f"{ratio(r['write_vs_v1']):>10s}{ratio(r['write_vs_none']):>11s}{ratio(r['read_vs_none']):>10s}"
                  + f"{r['write_ms_per_step']:9.2f}")
        if args.json:
            out = {"case": args.case, "ranks": comm.size, "nodes": dm.n_nodes_global, "dofs": dofs,
                   "cells": dm.n_cells_global, "n_qp": dm.n_qp, "n_state": len(names),
                   "simulations": [s[0] for s in sims],
                   "stored_steps": nsteps, "hf_seconds_per_step": hf_step, "repeat": args.repeat,
                   "source": args.source, "host": platform.node(), "ddrom": ddrom.__version__, "layouts": rows,
                   "raw_write_seconds": writes, "raw_read_seconds": reads}
            Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
