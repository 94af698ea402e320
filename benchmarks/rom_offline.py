"""Offline stage of the hyper-reduced ROM broken down (POD, ECM, Gappy, operators) at the launched rank count.

A case of the benchmark family (``benchmarks/_rom_case.py``, mesh index ``--m``, default
14: 54,936 DOFs; 3 training points, 6 steps) gets its HF training store (computed once,
then reused by later runs at any number of ranks: the store is partition-independent),
then ``ddrom.workflow.rom.offline`` runs ``--repeat`` times; the table gives, per
stage, the minimum over the repeats of the offline timers (each the maximum over ranks):

* ``pod_displacement``  read the displacement snapshots + distributed POD;
* ``pod_stress``        read the stress snapshots + POD in the quadrature inner product;
* ``ecm``               strains of all modes at all points, the integrand, the greedy ECM;
* ``gappy``             read p + its POD + Q-DEIM sample points;
* ``operators``         strain operators at the sample points, lifting, projected loads;
* ``write``             the ROM file (replicated part + distributed bases);

and, inside the POD and Gappy stages, the time of the snapshot reads (``SnapshotStore.read_block``
wrapped from outside, maximum over ranks).

Run once per rank count, then compare::

    mpirun -n 2 .venv/bin/python benchmarks/rom_offline.py --json rom_offline_np2.json   # computes the store
    mpirun -n 1 .venv/bin/python benchmarks/rom_offline.py --json rom_offline_np1.json
    .venv/bin/python benchmarks/rom_offline.py --compare rom_offline_np1.json rom_offline_np2.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

STAGES = ("pod_displacement", "pod_stress", "ecm", "gappy", "operators", "write")
READS = {"pod_displacement": "displacement", "pod_stress": "stress", "gappy": "p"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--m", type=int, default=14, help="mesh index (14 -> 54936 DOFs)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--training", default="S_max=100;S_max=120;S_max=140")
    ap.add_argument("--pod-tol", type=float, default=1e-6)
    ap.add_argument("--ecm-tol", type=float, default=1e-6)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default="benchmarks/results/rom_offline")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--compare", nargs="+", metavar="JSON", help="no run: print earlier --json files side by side")
    args = ap.parse_args()
    if args.compare:
        print(compare([json.load(open(p)) for p in args.compare]))
        return

    import ddrom
    from mpi4py import MPI

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _rom_case import parse_points, write_case
    from ddrom.workflow.hf import hf_sweep
    from ddrom.workflow.rom import build_rom

    comm = MPI.COMM_WORLD
    name = f"rom_offline_m{args.m}_s{args.steps}"
    path = str(write_case(args.workdir, name, args.m, args.steps, parse_points(args.training), [{"S_max": 130.0}],
                          pod_tol=args.pod_tol, ecm_tol=args.ecm_tol)) if comm.rank == 0 else None
    path = comm.bcast(path, root=0)
    t0 = time.perf_counter()
    hf = hf_sweep(path, comm, which="training")
    t_hf = time.perf_counter() - t0
    # the snapshot reads inside the POD/Gappy stages, timed by wrapping the store from outside
    from ddrom.io.store import SnapshotStore

    reads: dict[str, float] = {}
    read_block = SnapshotStore.read_block

    def timed_read(self, field, *a, **kw):
        t = time.perf_counter()
        out = read_block(self, field, *a, **kw)
        reads[field] = reads.get(field, 0.0) + time.perf_counter() - t
        return out

    SnapshotStore.read_block = timed_read
    runs = []
    for _ in range(args.repeat):
        comm.Barrier()
        reads.clear()
        off = build_rom(path, comm)
        rd = {f: comm.allreduce(v, op=MPI.MAX) for f, v in sorted(reads.items())}
        runs.append({"seconds": off["seconds"], "timers": {k: v["seconds"] for k, v in off["timers"].items()},
                     "reads": rd})
    best = {k: min(r["timers"].get(k, np.nan) for r in runs) for k in STAGES}
    best_reads = {f: min(r["reads"].get(f, np.nan) for r in runs) for f in runs[0]["reads"]}
    row = {"ranks": comm.size, "dofs": hf["mesh"]["dofs"], "cells": hf["mesh"]["cells"],
           "snapshots": len(parse_points(args.training)) * (args.steps + 1),   # t = 0 included
           "hf_training_seconds": t_hf, "hf_computed": hf["sets"]["training"].get("computed"),
           "total_min": min(r["seconds"] for r in runs), "stages_min": best, "reads_min": best_reads, "runs": runs,
           **{k: off[k] for k in ("n_modes", "n_reduced_points", "n_stress_modes", "n_gappy_extra_points",
                                  "n_p_modes", "ecm_iterations")}}
    if comm.rank == 0:
        doc = {"benchmark": "rom_offline", "row": row,
               "meta": {"ddrom_version": ddrom.__version__, "python": platform.python_version(),
                        "numpy": np.__version__, "load_average": os.getloadavg(), "case": path}}
        print(compare([doc]))
        if args.json:
            from ddrom.io.jsonio import write_json  # strict JSON (NaN -> null), atomic

            write_json(args.json, doc, indent=1)


def compare(docs: list[dict]) -> str:
    r0 = docs[0]["row"]
    head = f"offline, {r0['dofs']:,} DOFs, {r0['snapshots']} snapshots, N = {r0['n_modes']}, " \
           f"{r0['n_stress_modes']} stress modes, ECM {r0['n_reduced_points']} points " \
           f"({r0['ecm_iterations']} iterations), Gappy {r0['n_p_modes']} modes + {r0['n_gappy_extra_points']} points"
    cols = ["stage"] + [f"{d['row']['ranks']} rank(s) (s)" for d in docs]
    if len(docs) > 1:
        cols += [f"speed-up 1st/{d['row']['ranks']}" for d in docs[1:]]
    lines = [head, "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for k in list(STAGES) + ["total"]:
        vals = [d["row"]["total_min"] if k == "total" else d["row"]["stages_min"][k] for d in docs]
        cells = [f"{v:.2f}" for v in vals] + [f"{vals[0] / v:.2f}" for v in vals[1:]]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
        field = READS.get(k)
        if field and all(field in d["row"].get("reads_min", {}) for d in docs):
            vals = [d["row"]["reads_min"][field] for d in docs]
            cells = [f"{v:.2f}" for v in vals] + [f"{vals[0] / v:.2f}" for v in vals[1:]]
            lines.append(f"| ... of which read {field} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
