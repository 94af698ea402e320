"""Peak memory per rank and time of the mesh distribution: rank-0 path vs parallel (sliced) path.

Usage: python benchmarks/mesh_distribution.py [--n 70] [--ranks 2 3] [--paths old new xdmf-old xdmf
       dmplex] [--json PATH]

Each (path, rank count) runs in its own ``mpirun`` (peak RSS, ``ru_maxrss``, only grows
within a process), and prints one row: the wall time of building the distributed mesh
(max over ranks), the peak RSS of rank 0 and of the other ranks, the same minus the RSS
after the imports (what the mesh cost), and the ratio of rank 0's peak to the largest
other rank's peak (the issue's target: <= 1.5).

Paths:

* ``old``: :func:`ddrom.mesh.generators.box` and
  :func:`ddrom.mesh.boundary.check_orientation` on rank 0, then
  :func:`ddrom.mesh.scatter.distribute` (the former ``build_mesh``);
* ``new``: :func:`ddrom.mesh.generators.box_slice` on every rank, then
  :func:`ddrom.mesh.slices.distribute_slices` (what ``build_mesh`` does now);
* ``xdmf-old`` / ``xdmf``: the same box read from an XDMF/HDF5 file, by
  :func:`ddrom.mesh.io.read_mesh` on rank 0 / by hyperslabs (:func:`ddrom.mesh.xdmf.read_distributed`);
* ``dmplex``: PETSc's DMPlex from the same cells (``createFromCellList`` on rank 0, the
  only way petsc4py 3.18 offers) then ``DMPlex.distribute`` -- the comparison the issue
  asks for; ``dmplex-interp`` with faces and edges (``interpolate=True``), which facet
  labels (our facet sets) need.

Timings on a shared machine are noisy: compare the rows of one run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # KiB on Linux


def worker(path: str, n: int, file: str | None) -> None:
    import importlib

    import numpy as np
    from mpi4py import MPI
    from petsc4py import PETSc

    from ddrom.mesh.boundary import check_orientation
    from ddrom.mesh.generators import box, box_slice

    for mod in ("ddrom.mesh.slices", "ddrom.mesh.scatter", "ddrom.mesh.xdmf", "h5py", "meshio"):
        importlib.import_module(mod)            # imports are counted in the baseline, not in the mesh

    c = MPI.COMM_WORLD
    base = _rss_mb()
    c.Barrier()
    t0 = time.perf_counter()
    n_cells = None
    if path == "old":
        from ddrom.mesh.scatter import distribute

        mesh = None
        if c.rank == 0:                   # what build_mesh did: generate, check, distribute
            mesh = box(1, 1, 1, n, n, n)
            check_orientation(mesh)
        dm = distribute(mesh, c)
        n_cells = dm.n_cells
    elif path == "new":
        from ddrom.mesh.slices import distribute_slices

        dm = distribute_slices(box_slice(c.rank, c.size, 1, 1, 1, n, n, n), c)
        n_cells = dm.n_cells
    elif path == "xdmf-old":
        from ddrom.mesh.io import read_mesh
        from ddrom.mesh.scatter import distribute

        dm = distribute(read_mesh(file) if c.rank == 0 else None, c)   # read_mesh checks the orientation
        n_cells = dm.n_cells
    elif path == "xdmf":
        from ddrom.mesh.xdmf import read_distributed

        dm = read_distributed(file, c)
        n_cells = dm.n_cells
    elif path in ("dmplex", "dmplex-interp"):
        if c.rank == 0:
            m = box(1, 1, 1, n, n, n)
            cells, coords = m.cells.astype(PETSc.IntType), m.points
            del m
        else:
            cells, coords = np.zeros((0, 8), PETSc.IntType), np.zeros((0, 3))
        plex = PETSc.DMPlex().createFromCellList(3, cells, coords, interpolate=path == "dmplex-interp",
                                                 comm=PETSc.COMM_WORLD)
        del cells, coords
        plex.distribute()
        s, e = plex.getHeightStratum(0)
        n_cells = e - s
    else:
        raise SystemExit(f"unknown path {path}")
    c.Barrier()
    t = time.perf_counter() - t0
    rows = c.gather((_rss_mb(), base, n_cells), root=0)
    if c.rank == 0:
        print("RESULT " + json.dumps({"path": path, "ranks": c.size, "seconds": t,
                                      "peak_mb": [r[0] for r in rows], "base_mb": [r[1] for r in rows],
                                      "cells": [r[2] for r in rows]}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=70, help="box of n^3 hexahedra (70: 1.07e6 DOFs)")
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--paths", nargs="+", default=["old", "new", "xdmf-old", "xdmf", "dmplex"])
    ap.add_argument("--json", type=Path, help="write the results to this JSON file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.n, args.file)
        return
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    results = []
    with tempfile.TemporaryDirectory() as d:
        file = Path(d) / "box.xdmf"
        if any(p.startswith("xdmf") for p in args.paths):
            from ddrom.mesh.generators import box
            from ddrom.mesh.io import write_mesh

            write_mesh(box(1, 1, 1, args.n, args.n, args.n), file)
        for p in args.ranks:
            for path in args.paths:
                cmd = ["mpirun", "--oversubscribe", "-n", str(p), sys.executable, __file__, "--worker", path,
                       "--n", str(args.n), "--file", str(file)]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True)
                line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
                if out.returncode or not line:
                    print(f"{path} at {p} ranks failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
                    continue
                results.append(json.loads(line[0][7:]))
    dofs = 3 * (args.n + 1) ** 3
    print(f"box {args.n}^3 hexahedra, {dofs} DOFs; peak RSS (MB) of rank 0 / max of the others; "
          "'+' = minus the RSS after imports")
    print(f"{'path':13s} {'ranks':>5s} {'seconds':>8s} {'rank0':>8s} {'others':>8s} {'rank0+':>8s} "
          f"{'others+':>8s} {'ratio':>6s}")
    for r in results:
        pk, bs = r["peak_mb"], r["base_mb"]
        inc = [a - b for a, b in zip(pk, bs)]
        others, others_inc = max(pk[1:], default=float("nan")), max(inc[1:], default=float("nan"))
        r["ratio_rank0_to_others"] = pk[0] / others if len(pk) > 1 else None
        print(f"{r['path']:13s} {r['ranks']:5d} {r['seconds']:8.2f} {pk[0]:8.0f} {others:8.0f} "
              f"{inc[0]:8.0f} {others_inc:8.0f} {pk[0] / others:6.2f}")
    if args.json:
        from ddrom.io.jsonio import write_json  # strict JSON, atomic

        write_json(args.json, {"n": args.n, "dofs": dofs, "runs": results}, indent=1)


if __name__ == "__main__":
    main()
