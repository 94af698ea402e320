"""Online cost per time step of the hyper-reduced ROM against the mesh size (should be flat).

For each mesh of the benchmark family (``benchmarks/_rom_case.py``, mesh index ``--m``,
default 6, 13, 20: 5.3e3, 3.9e4, 1.5e5 DOFs) with the SAME tolerances (``--pod-tol``,
``--ecm-tol``), the HF training sweep (``--training`` points, ``--steps`` steps; a
complete store of the same case is reused) and the offline stage build a ROM; then the
ROMs are marched on the test point ``--repeat`` times, round-robin over the sizes (so a
change of the machine's load hits every size alike), and the table reports per size:
modes N, ECM points, sample points K (ECM + Gappy, where the constitutive law is
evaluated), reduced Newton iterations per step, and the median over the repeats of

* the time per step (mean of ``OnlineResult.step_seconds`` over the steps; the
  median per step index is in the JSON: elastic steps are ~20x cheaper than plastic ones),
* the time per reduced Newton iteration (step time / its iterations),
* the time per step divided by K N (the size of the contractions ``E[g,k,c]``),

with the ratio largest mesh / smallest mesh of each. The target (issue 4) is a ratio
<= 1.5 at similar N and K; when N or K differ across sizes the normalized column is the
one to read.

Run (the HF sweeps at 2 ranks; the online march is replicated, rank 0 reports)::

    mpirun -n 2 .venv/bin/python benchmarks/rom_online_scaling.py --json rom_online_scaling.json
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import ddrom  # noqa: E402
from mpi4py import MPI  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _rom_case import dofs_of, parse_points, write_case  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--m", type=int, nargs="+", default=[6, 13, 20],
                    help="mesh indices (DOFs: 6 -> 5292, 13 -> 38610, 20 -> 146880)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--training", default="S_max=100;S_max=140")
    ap.add_argument("--test", default="S_max=125")
    ap.add_argument("--pod-tol", type=float, default=1e-6)
    ap.add_argument("--ecm-tol", type=float, default=1e-6)
    ap.add_argument("--repeat", type=int, default=30, help="online runs per size")
    ap.add_argument("--workdir", default="benchmarks/results/rom_online_scaling")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()

    from ddrom.workflow.hf import hf_sweep
    from ddrom.workflow.rom import build_rom, rom_path
    from ddrom.workflow.build import load_case_collectively
    from ddrom.rom.model import load_model
    from ddrom.rom.online import ReducedSolver

    comm = MPI.COMM_WORLD
    training, test = parse_points(args.training), parse_points(args.test)
    models, rows = [], []
    for m in args.m:
        name = f"rom_scaling_m{m}_s{args.steps}"
        path = str(write_case(args.workdir, name, m, args.steps, training, test, pod_tol=args.pod_tol,
                              ecm_tol=args.ecm_tol)) if comm.rank == 0 else None
        path = comm.bcast(path, root=0)
        t0 = time.perf_counter()
        hf = hf_sweep(path, comm, which="training")
        t_hf = time.perf_counter() - t0
        off = build_rom(path, comm)
        case = load_case_collectively(path, comm)
        model = load_model(rom_path(case), comm)
        models.append(model)
        rows.append({"m": m, "dofs": hf["mesh"]["dofs"], "cells": hf["mesh"]["cells"], "n_modes": model.n_modes,
                     "n_reduced_points": model.n_points, "n_sample_points": int(len(model.weights)),
                     "hf_training_seconds": t_hf, "offline_seconds": off["seconds"],
                     "step_seconds": [], "newton_per_step": [], "run_seconds": []})
        assert rows[-1]["dofs"] == dofs_of(m)
    params = test[0]
    for _ in range(args.repeat):
        for model, row in zip(models, rows):
            res = ReducedSolver(model, params).run()
            row["step_seconds"].append(res.step_seconds)
            row["run_seconds"].append(res.seconds)
            row["newton_iterations"] = res.newton_iterations
            row["cutbacks"] = res.cutbacks
    for row in rows:
        st = np.asarray(row["step_seconds"])                       # (repeat, steps)
        nsteps = st.shape[1]
        row["newton_per_step"] = row["newton_iterations"] / nsteps
        # elastic steps cost ~0.3 ms, plastic ones ~20x more: the time per step is the
        # median over the repeats of the mean over the steps (a median over all steps
        # would report an elastic step)
        row["step_median"] = float(np.median(st.mean(axis=1)))
        row["step_index_median"] = np.median(st, axis=0).tolist()
        row["run_median"] = float(np.median(row["run_seconds"]))
        # the reduced Newton iterations are the same in every repeat (deterministic)
        row["iteration_median"] = float(np.median(st.sum(axis=1))) / max(1, row["newton_iterations"])
        row["step_per_KN"] = row["step_median"] / (row["n_sample_points"] * row["n_modes"])
        row["step_seconds"] = st.tolist()
    lo, hi = rows[0], rows[-1]
    ratios = {k: hi[k] / lo[k] for k in ("step_median", "iteration_median", "step_per_KN", "run_median")}
    if comm.rank == 0:
        print(table(rows, ratios))
        if args.json:
            meta = {"ddrom_version": ddrom.__version__, "python": platform.python_version(),
                    "numpy": np.__version__, "ranks": comm.size, "load_average": os.getloadavg(),
                    "steps": args.steps, "training": training, "test": test, "pod_tol": args.pod_tol,
                    "ecm_tol": args.ecm_tol, "repeat": args.repeat}
            from ddrom.io.jsonio import write_json  # strict JSON (NaN -> null), atomic

            write_json(args.json, {"benchmark": "rom_online_scaling", "meta": meta, "rows": rows, "ratios_largest_smallest": ratios}, indent=1)


def table(rows: list[dict], ratios: dict) -> str:
    head = ("DOFs", "N", "ECM pts", "K", "Newton/step", "ms/step", "ms/Newton it", "us/step/(K N)", "ms/run")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {r['dofs']:,} | {r['n_modes']} | {r['n_reduced_points']} | {r['n_sample_points']} | "
                     f"{r['newton_per_step']:.2f} | {r['step_median'] * 1e3:.2f} | {r['iteration_median'] * 1e3:.2f} | "
                     f"{r['step_per_KN'] * 1e6:.2f} | {r['run_median'] * 1e3:.1f} |")
    lines.append(f"| largest/smallest | | | | | {ratios['step_median']:.2f} | {ratios['iteration_median']:.2f} | "
                 f"{ratios['step_per_KN']:.2f} | {ratios['run_median']:.2f} |")
    return "rom_online_scaling (medians)\n" + "\n".join(lines)


if __name__ == "__main__":
    main()
