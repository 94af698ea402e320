"""Time the serial mesh pipeline of rank 0 at about 1e6 DOFs: generators, boundary, checks, file I/O.

Usage: python benchmarks/mesh_generators.py [--n 70] [--json PATH]

Prints one row per operation (seconds, and the ratio to generating the hexahedral box),
so that the cost of each step before distribution can be compared in one run.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ddrom.mesh.boundary import boundary_facets, check_orientation
from ddrom.mesh.generators import box, plate_with_hole
from ddrom.mesh.io import read_mesh, write_mesh


def timed(fn, repeat=2):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=70, help="box of n^3 hexahedra (70: 1.07e6 DOFs)")
    ap.add_argument("--json", type=Path, help="write the results to this JSON file")
    args = ap.parse_args()
    n = args.n
    rows = []
    t, hexbox = timed(lambda: box(1, 1, 1, n, n, n))
    rows.append(("box hexahedron", hexbox.n_cells, 3 * hexbox.n_nodes, t))
    t, tetbox = timed(lambda: box(1, 1, 1, n, n, n, cell_type="tetra"))
    rows.append(("box tetra", tetbox.n_cells, 3 * tetbox.n_nodes, t))
    na = 8 * max(1, round(n / 16)) * 4
    t, plate = timed(lambda: plate_with_hole(2, 2, 0.2, 0.25, na, n, max(1, n // 4)))
    rows.append(("plate_with_hole hexahedron", plate.n_cells, 3 * plate.n_nodes, t))
    t, _ = timed(lambda: plate_with_hole(2, 2, 0.2, 0.25, na, n, max(1, n // 4), cell_type="tetra"))
    rows.append(("plate_with_hole tetra", 6 * plate.n_cells, 3 * plate.n_nodes, t))
    t, _ = timed(lambda: boundary_facets(hexbox))
    rows.append(("boundary_facets (hex box)", hexbox.n_cells, 3 * hexbox.n_nodes, t))
    t, _ = timed(lambda: check_orientation(hexbox))
    rows.append(("check_orientation (hex box)", hexbox.n_cells, 3 * hexbox.n_nodes, t))
    with tempfile.TemporaryDirectory() as d:
        for ext in ("vtu", "xdmf", "msh"):
            path = Path(d) / f"box.{ext}"
            t, _ = timed(lambda: write_mesh(hexbox, path), 1)
            rows.append((f"write {ext} (hex box)", hexbox.n_cells, 3 * hexbox.n_nodes, t))
            t, _ = timed(lambda: read_mesh(path), 1)
            rows.append((f"read {ext} (hex box, with checks)", hexbox.n_cells, 3 * hexbox.n_nodes, t))
    ref = rows[0][3]
    print(f"{'operation':38s} {'cells':>9s} {'DOFs':>9s} {'seconds':>8s} {'ratio':>7s}")
    for name, nc, nd, t in rows:
        print(f"{name:38s} {nc:9d} {nd:9d} {t:8.3f} {t / ref:7.1f}")
    if args.json:
        from ddrom.io.jsonio import write_json  # strict JSON (NaN -> null), atomic

        write_json(args.json, [dict(operation=a, cells=b, dofs=c, seconds=d, ratio_to_box=d / ref)
                               for a, b, c, d in rows], indent=1)


if __name__ == "__main__":
    main()
