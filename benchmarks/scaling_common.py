"""Shared driver of the scaling benchmarks (``scaling_hf.py``, ``scaling_pod.py``).

The driver runs serially (no MPI) and launches ``mpirun -n P`` itself for each rank
count, the worker writes its rows as JSON into a temporary file, the driver collects them
and prints one table. On this kind of machine (2 cores, other jobs running) every number
is a ratio taken in one sitting, with the load average (``/proc/loadavg``) recorded
before and after each launch; rank counts above the number of cores are oversubscribed
(``--oversubscribe``) and flagged in the table, their "efficiency" measures time sharing,
not the algorithm.

Efficiencies, from times ``T(P)`` (max over ranks):

* strong scaling (fixed global size): ``S(P) = T(1) / T(P)``, ``E(P) = S(P) / P``;
* weak scaling (fixed size per rank): ``E(P) = T(1) / T(P)``.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def cores() -> int:
    """Cores this process may run on (affinity mask), the oversubscription threshold."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages (what ``uptime`` prints)."""
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:  # pragma: no cover
        return [float("nan")] * 3


def launch(script: str, ranks: int, worker_args: Sequence[str], timeout: float = 900.0) -> dict:
    """Run ``mpirun -n ranks python script --worker OUT worker_args``; return the worker's JSON.

    Adds ``--oversubscribe`` beyond :func:`cores`; one OpenBLAS/OpenMP thread per rank so
    that ranks do not fight over the cores with hidden threads.
    """
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    fd, out = tempfile.mkstemp(suffix=".json", prefix="ddrom_scaling_")
    os.close(fd)
    cmd = ["mpirun", "-n", str(ranks)]
    if ranks > cores():
        cmd.append("--oversubscribe")
    cmd += [sys.executable, script, "--worker", out, *map(str, worker_args)]
    load0 = loadavg()
    t0 = time.perf_counter()
    try:
        subprocess.run(cmd, check=True, env=env, timeout=timeout, cwd=ROOT)
        with open(out) as f:
            res = json.load(f)
    finally:
        os.unlink(out)
    res["launch"] = {"ranks": ranks, "oversubscribed": ranks > cores(), "load_before": load0,
                     "load_after": loadavg(), "wall_seconds": time.perf_counter() - t0,
                     "command": " ".join(cmd)}
    return res


def meta() -> dict[str, Any]:
    import numpy as np

    return {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
            "cores": cores(), "node": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "load_start": loadavg()}


def tag(ranks: int) -> str:
    """Rank count as printed in the tables: ``3*`` when oversubscribed."""
    return f"{ranks}*" if ranks > cores() else str(ranks)


def fmt_load(launch_info: dict) -> str:
    a, b = launch_info["load_before"][0], launch_info["load_after"][0]
    return f"{a:.1f}->{b:.1f}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (also readable as plain text)."""
    def cell(x: Any) -> str:
        if isinstance(x, float):
            return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.3e}"
        return str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def write_json(path: str | None, payload: dict) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        from ddrom.io.jsonio import write_json as write_strict  # NaN -> null, atomic

        write_strict(path, payload, indent=1)


def run_sweeps(label: str, script: str, sweeps: int, ranks: Sequence[int],
               plan: Callable[[int], tuple[list[int], list[Any]]], results: dict,
               json_path: str | None, report: Callable[[dict], str]) -> None:
    """Launch ``script`` at every rank count, ``sweeps`` times over, then print the table.

    Whole sweeps are repeated (not each launch back to back): a change of the machine's
    load then hits every rank count, and the fastest launch per (P, n) is kept by
    ``report``. ``plan(p)`` gives (sizes, worker arguments) for ``p`` ranks. The JSON is
    rewritten after every launch, so partial results survive an interrupted sweep.
    """
    for sweep in range(sweeps):
        for p in ranks:
            sizes, worker_args = plan(p)
            print(f"[{label}] sweep {sweep + 1}/{sweeps}: {p} rank(s), n = {sizes} ...",
                  file=sys.stderr, flush=True)
            run = launch(script, p, worker_args)
            run["launch"]["sweep"] = sweep
            results["runs"].append(run)
            write_json(json_path, results)
    results["meta"]["load_end"] = loadavg()
    text = report(results)
    results["table"] = text
    print(text)
    write_json(json_path, results)
