"""Speedup and accuracy of the hyper-reduced ROM over the HF solver on a large mesh.

Generates a case of the benchmark family (``benchmarks/_rom_case.py``: the demo's plate
with a hole, Chaboche elasto-viscoplastic, hot band, cyclic traction, plasticity
localized at the hole) at ``--dofs`` DOFs (default 300,000) with ``--steps`` steps of 5 s
(default 6: load, unload, reload), into ``--workdir``, and runs
``ddrom.workflow.rom.run`` on the launching communicator: HF training sweep,
offline, online on the test point, HF reference on the test point, comparison.

Reported (one table, and ``--json PATH``):

* mesh (DOFs, cells), ranks, modes N, reduced (ECM) points, sample points K (ECM +
  Gappy), Newton iterations of the HF and of the ROM on the test point;
* HF seconds per simulation as ``run`` reports it (the test simulation: solve + initial
  state + snapshot writes) and the HF solver alone on the same steps (the sweep's
  ``solve`` timer); ROM seconds per simulation (``ReducedSolver.run``: the whole march
  on the same steps, model already loaded), as ``run`` measured it and as the median of
  ``--repeat`` further online runs; the speedups HF / ROM of both;
* relative space-time L2 errors (displacement, cumulated plastic strain, stress) of the
  ROM against the HF reference on the test point;
* offline time broken down (its timers: POD of u, POD of the stress, ECM, Gappy, operators,
  write), HF training time, peak RSS per rank.

The HF run is the expensive part: at 3e5 DOFs on 2 ranks of a shared 2-core machine, a
few minutes per simulation. Run::

    mpirun -n 2 .venv/bin/python benchmarks/rom_speedup.py --json rom_speedup.json
    mpirun -n 2 .venv/bin/python benchmarks/rom_speedup.py --dofs 20000      # quick check
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # one BLAS thread per rank (the ranks use the cores)

import numpy as np  # noqa: E402

import ddrom  # noqa: E402  (sets PETSC_DIR before petsc4py)
from mpi4py import MPI  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _rom_case import m_for_dofs, mesh_args, parse_points, write_case  # noqa: E402


def _capture(module, name: str, store: list):
    """Wrap ``module.name`` so that its return values are kept (the library is unchanged)."""
    fn = getattr(module, name)

    def wrapper(*a, **kw):
        out = fn(*a, **kw)
        store.append(out)
        return out

    setattr(module, name, wrapper)
    return fn


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark (``argv``: its command-line arguments, ``sys.argv`` when None);
    returns the row of the table (every rank)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dofs", type=int, default=300_000, help="minimum number of DOFs (default 300000)")
    ap.add_argument("--steps", type=int, default=6, help="time steps of 5 s (default 6)")
    ap.add_argument("--training", default="S_max=100;S_max=120;S_max=140",
                    help="training points (T_max at its default 650 unless given)")
    ap.add_argument("--test", default="S_max=130", help="test point(s), midway between two training points")
    ap.add_argument("--pod-tol", type=float, default=1e-6)
    ap.add_argument("--ecm-tol", type=float, default=1e-6)
    ap.add_argument("--repeat", type=int, default=5, help="extra online runs for the median")
    ap.add_argument("--workdir", default="benchmarks/results/rom_speedup")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = ap.parse_args(argv)

    comm = MPI.COMM_WORLD
    m = m_for_dofs(args.dofs)
    name = f"rom_speedup_m{m}_s{args.steps}"
    path = None
    if comm.rank == 0:
        path = str(write_case(args.workdir, name, m, args.steps, parse_points(args.training),
                              parse_points(args.test), pod_tol=args.pod_tol, ecm_tol=args.ecm_tol))
        out = Path(args.workdir) / "out" / name
        if out.exists():       # a fresh run: ``run`` would otherwise reuse complete HF stores
            import shutil

            shutil.rmtree(out)
    path = comm.bcast(path, root=0)

    from ddrom.workflow import rom as rom_pipeline
    from ddrom.rom.model import load_model
    from ddrom.rom.online import ReducedSolver

    sweeps: list = []
    offlines: list = []
    contexts: list = []
    _capture(rom_pipeline, "hf_context", contexts)
    _capture(rom_pipeline, "hf_sweep", sweeps)
    _capture(rom_pipeline, "build_rom", offlines)
    comm.Barrier()
    t0 = time.perf_counter()
    s = rom_pipeline.run(path, comm)
    total = time.perf_counter() - t0
    hf_train, hf_test = sweeps
    off = offlines[0]

    # the online stage again, to take a median (the model loaded once, as ``online`` does)
    out_dir = Path(path).parent / "out" / name
    t1 = time.perf_counter()
    model = load_model(out_dir / "rom.h5", comm)
    load_s = time.perf_counter() - t1
    test_params = [p["params"] for p in s["per_test_parameter"]]
    secs, step_means, newton = [], [], []
    for _ in range(args.repeat):
        for p in test_params:
            res = ReducedSolver(model, p).run()
            secs.append(res.seconds)
            step_means.append(float(np.mean(res.step_seconds)))   # plastic steps cost ~20x elastic ones
            newton.append(res.newton_iterations)
    rom_med = float(np.median(secs))
    best = best_approximation(path, out_dir, contexts[0], comm)

    test_runs = hf_test["sets"]["test"]["runs"]
    hf_solve = hf_test["timers"].get("solve", {}).get("seconds", float("nan")) / max(1, len(test_runs))
    hf_write = hf_test["timers"].get("write", {}).get("seconds", 0.0) / max(1, len(test_runs))
    rss = comm.gather(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, root=0)
    row = {
        "dofs": s["mesh"]["dofs"], "cells": s["mesh"]["cells"], "mesh_index_m": m, "mesh_args": mesh_args(m),
        "ranks": s["ranks"], "steps": args.steps, "training": parse_points(args.training),
        "test": test_params, "n_modes": s["n_modes"], "n_reduced_points": s["n_reduced_points"],
        "n_sample_points": s["n_sample_points"], "pod_tol": args.pod_tol, "ecm_tol": args.ecm_tol,
        "hf_seconds_per_simulation": s["hf_seconds_per_simulation"],
        "hf_solve_seconds_per_simulation": hf_solve, "hf_write_seconds_per_simulation": hf_write,
        "hf_newton_iterations_test": [r["newton_iterations"] for r in test_runs],
        "hf_ksp_iterations_test": [r["ksp_iterations"] for r in test_runs],
        "hf_cutbacks_test": [r["cutbacks"] for r in test_runs],
        "hf_max_plastic_strain_test": [r["max_plastic_strain"] for r in test_runs],
        "hf_training_runs": hf_train["sets"]["training"]["runs"],
        "rom_seconds_per_simulation": s["rom_seconds_per_simulation"],
        "rom_seconds_median": rom_med, "rom_seconds_all": secs,
        "rom_step_seconds_median": float(np.median(step_means)),
        "rom_newton_iterations": newton[0] if newton else None,
        "rom_model_load_seconds": load_s,
        "speedup_run": s["speedup"],
        "speedup_median": s["hf_seconds_per_simulation"] / rom_med,
        "speedup_solver_only": hf_solve / rom_med,
        "rel_error_displacement": s["rel_error_displacement"],
        "rel_error_plastic_strain": s["rel_error_plastic_strain"],
        "rel_error_stress": s["rel_error_stress"],
        "best_approximation_error": best,
        "offline_seconds": off["seconds"], "offline_timers": {k: v["seconds"] for k, v in off["timers"].items()},
        "offline_info": {k: off[k] for k in ("n_stress_modes", "n_gappy_extra_points", "n_p_modes",
                                              "ecm_iterations", "ecm_relative_residual", "ecm_converged")},
        "total_seconds": total, "peak_rss_gb_per_rank": rss,
    }
    if comm.rank == 0:
        print(table(row))
        if args.json:
            meta = {"ddrom_version": ddrom.__version__, "python": platform.python_version(),
                    "numpy": np.__version__, "host": platform.node(), "load_average": os.getloadavg(),
                    "case": path}
            from ddrom.io.jsonio import write_json  # strict JSON (NaN -> null), atomic

            write_json(args.json, {"benchmark": "rom_speedup", "meta": meta, "row": row}, indent=1,
                          default=lambda o: o.item() if hasattr(o, "item") else str(o))
    return row


def best_approximation(path: str, out_dir: Path, context, comm) -> dict[str, float]:
    """Relative space-time L2 error of the best approximation of the HF test solution in the
    ROM's bases (displacement modes, Gappy basis of p, stress basis), in the norms of the
    comparison: what the reduced spaces allow, whatever the reduced solver does.

    Distributed: Gram matrix and right-hand sides by one allreduce each (the bases are small).
    """
    from ddrom.workflow.build import load_case_collectively
    from ddrom.workflow.hf import store_path
    from ddrom.io.store import SnapshotStore
    from ddrom.rom.model import load_bases

    dm, solver = context
    case = load_case_collectively(path, comm)
    b = load_bases(out_dir / "rom.h5", dm, ["displacement", "p", "stress"])
    w = solver.asm.wdet.ravel()
    store = SnapshotStore.open(store_path(case, "test"), comm, mode="r", dmesh=dm)
    U = store.read_block("displacement", dm)
    U[solver.fixed[: 3 * dm.n_owned]] = 0.0          # the modes vanish there; the lifting is exact
    X = {"displacement": (b["displacement"], U, np.ones(U.shape[0])),
         "p": (b["p"], store.read_block("p", dm), w),
         "stress": (b["stress"], store.read_block("stress", dm), np.repeat(w, 6))}
    store.close()
    out = {}
    for key, (B, S, W) in X.items():
        G = comm.allreduce(B.T @ (W[:, None] * B))
        c = comm.allreduce(B.T @ (W[:, None] * S))
        R = S - B @ np.linalg.solve(G, c)
        num, den = comm.allreduce(float(np.sum(W[:, None] * R * R))), comm.allreduce(float(np.sum(W[:, None] * S * S)))
        out[key] = float(np.sqrt(num / den)) if den > 0 else 0.0
    return out


def table(r: dict) -> str:
    t = r["offline_timers"]
    off = ", ".join(f"{k} {t[k]:.1f}" for k in ("pod_displacement", "pod_stress", "ecm", "gappy", "operators", "write")
                    if k in t)
    rows = [
        ("DOFs (cells)", f"{r['dofs']:,} ({r['cells']:,})"),
        ("ranks", r["ranks"]),
        ("time steps", r["steps"]),
        ("modes N", r["n_modes"]),
        ("reduced points (ECM) / sample points K", f"{r['n_reduced_points']} / {r['n_sample_points']}"),
        ("HF Newton its (test) / max p", f"{r['hf_newton_iterations_test']} / "
                                          f"{', '.join(f'{p:.2e}' for p in r['hf_max_plastic_strain_test'])}"),
        ("ROM Newton its (test)", r["rom_newton_iterations"]),
        ("HF s/simulation (run: solve+write)", f"{r['hf_seconds_per_simulation']:.2f}"),
        ("HF solver s/simulation (no write)", f"{r['hf_solve_seconds_per_simulation']:.2f}"),
        ("ROM s/simulation (run)", f"{r['rom_seconds_per_simulation']:.4f}"),
        ("ROM s/simulation (median of repeats)", f"{r['rom_seconds_median']:.4f}"),
        ("ROM s/step (median of the mean)", f"{r['rom_step_seconds_median']:.5f}"),
        ("speedup (run)", f"{r['speedup_run']:.0f}"),
        ("speedup (HF run / ROM median)", f"{r['speedup_median']:.0f}"),
        ("speedup (HF solver / ROM median)", f"{r['speedup_solver_only']:.0f}"),
        ("rel. error u / p / stress", f"{r['rel_error_displacement']:.2e} / {r['rel_error_plastic_strain']:.2e}"
                                      f" / {r['rel_error_stress']:.2e}"),
        ("best approx. in the bases u / p / stress", " / ".join(f"{r['best_approximation_error'][k]:.2e}"
                                                             for k in ("displacement", "p", "stress"))),
        ("offline s (total)", f"{r['offline_seconds']:.1f}"),
        ("offline breakdown s", off),
        ("HF training s (per simulation)", ", ".join(f"{x['seconds']:.1f}" for x in r["hf_training_runs"]
                                                      if "seconds" in x)),
        ("ROM model load s", f"{r['rom_model_load_seconds']:.3f}"),
        ("peak RSS GB per rank", ", ".join(f"{x:.2f}" for x in r["peak_rss_gb_per_rank"])),
        ("total wall s", f"{r['total_seconds']:.0f}"),
    ]
    w = max(len(k) for k, _ in rows)
    return "rom_speedup\n" + "\n".join(f"  {k:<{w}}  {v}" for k, v in rows)


if __name__ == "__main__":
    main()
