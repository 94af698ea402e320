"""A stand-in for a thermal code: nodal temperature fields with hot spots on the demo plate.

    python examples/write_hot_spots.py [FOLDER]        # default: cases/fields

Writes, for cases/hot_spots.toml, one XDMF file (+ HDF5) per field on the plate's nodes in
the mesh's natural order -- what a thermal analysis run on the same mesh writes -- with a
base temperature and Gaussian hot spots (radius 4 mm): the training family heats points of
the mid-line y = 0; ``new_spot`` heats a place no training field heated.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np

#: name -> [(x, y, peak over the base, base)]
FIELDS = {
    "spot_m10": [(-10.0, 0.0, 80.0, 580.0)], "spot_m5": [(-5.0, 0.0, 120.0, 560.0)],
    "spot_0": [(0.0, 0.0, 100.0, 600.0)], "spot_5": [(5.0, 0.0, 60.0, 570.0)],
    "spot_10": [(10.0, 0.0, 110.0, 590.0)], "spot_m2": [(-2.5, 0.0, 90.0, 550.0)],
    "spot_2": [(2.5, 0.0, 70.0, 600.0)], "spot_m7": [(-7.5, 0.0, 100.0, 575.0)],
    "spot_7": [(7.5, 0.0, 90.0, 585.0)],                                  # test: in the family
    "new_spot": [(-3.0, -6.0, 110.0, 590.0)],                             # test: a new place
}
PLATE = dict(width=40.0, height=20.0, thickness=2.0, radius=2.5, n_around=48, n_radial=8, n_thick=2)
RADIUS = 4.0


def hot_spot_field(points: np.ndarray, spots: list[tuple[float, float, float, float]], radius: float = RADIUS
                   ) -> np.ndarray:
    """Base temperature plus Gaussian hot spots at the points' (x, y)."""
    T = np.full(len(points), spots[0][3])
    for xc, yc, peak, _ in spots:
        T += peak * np.exp(-((points[:, 0] - xc) ** 2 + (points[:, 1] - yc) ** 2) / radius ** 2)
    return T


def write_xdmf(path: Path, points: np.ndarray, cells: list, values: np.ndarray, name: str = "T") -> None:
    """One field as an XDMF time series of one step (meshio writes its .h5 in the current folder)."""
    import meshio

    with contextlib.chdir(path.parent), meshio.xdmf.TimeSeriesWriter(path.name) as w:
        w.write_points_cells(points, cells)
        w.write_data(0.0, point_data={name: values})


def main(folder: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ddrom.mesh.generators import generate

    folder.mkdir(parents=True, exist_ok=True)
    m = generate("plate_with_hole", **PLATE)
    for name, spots in FIELDS.items():
        write_xdmf(folder / f"{name}.xdmf", m.points, [(m.cell_type, m.cells)], hot_spot_field(m.points, spots))
    print(f"{len(FIELDS)} temperature fields in {folder}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "cases" / "fields")
