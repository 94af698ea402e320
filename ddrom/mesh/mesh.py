"""The serial mesh container: what a generator builds or a reader reads, before distribution.

Only rank 0 ever holds a :class:`Mesh` of the whole part, and only on the serial path
(:mod:`ddrom.mesh.scatter`) or while reading a format that cannot be read in slices;
the case workflow builds :class:`~ddrom.mesh.slices.MeshSlice` pieces instead
(:mod:`ddrom.mesh.slices`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ddrom.mesh.reference import CELL_TYPES, FACES


@dataclass
class Mesh:
    """A volume mesh of one cell type with named boundary regions.

    Attributes
    ----------
    points : (N, 3) float64
        Node coordinates.
    cells : (M, k) int64
        Connectivity in VTK/meshio node order (k = 8 for ``hexahedron``, 4 for ``tetra``).
    cell_type : str
        ``"hexahedron"`` or ``"tetra"``.
    facet_sets : dict[str, (F, 2) int64]
        Boundary regions as pairs ``(cell id, local face id)``; local faces are numbered
        as in :data:`ddrom.mesh.reference.FACES`. Pressure and traction act on these.
    node_sets : dict[str, (P,) int64]
        Node regions (Dirichlet conditions act on these). Every facet set also defines
        the node set of the same name (see :meth:`nodes_of`).
    cell_sets : dict[str, (C,) int64]
        Named sets of cells (e.g. the ``*ELSET`` of an Abaqus/CalculiX input), sorted cell
        ids. A namespace of its own: loads do not refer to them (they are not in
        :meth:`region_names`); they select cells, e.g. for comparisons of results.
    """

    points: np.ndarray
    cells: np.ndarray
    cell_type: str
    facet_sets: dict[str, np.ndarray] = field(default_factory=dict)
    node_sets: dict[str, np.ndarray] = field(default_factory=dict)
    cell_sets: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.points = np.ascontiguousarray(self.points, dtype=np.float64)
        self.cells = np.ascontiguousarray(self.cells, dtype=np.int64)
        if self.cell_type not in CELL_TYPES:
            raise ValueError(f"unsupported cell type {self.cell_type!r} (supported: {sorted(CELL_TYPES)})")
        if self.points.ndim != 2 or self.points.shape[1] != 3:
            raise ValueError(f"points must have shape (N, 3), got {self.points.shape}")
        k = CELL_TYPES[self.cell_type].n_nodes
        if self.cells.ndim != 2 or self.cells.shape[1] != k:
            raise ValueError(f"{self.cell_type} cells must have {k} nodes, got shape {self.cells.shape}")
        self.facet_sets = {k_: np.asarray(v, dtype=np.int64).reshape(-1, 2) for k_, v in self.facet_sets.items()}
        self.node_sets = {k_: np.unique(np.asarray(v, dtype=np.int64)) for k_, v in self.node_sets.items()}
        self.cell_sets = {k_: np.unique(np.asarray(v, dtype=np.int64)) for k_, v in self.cell_sets.items()}

    @property
    def n_nodes(self) -> int:
        return self.points.shape[0]

    @property
    def n_cells(self) -> int:
        return self.cells.shape[0]

    def facet_nodes(self, name: str) -> np.ndarray:
        """(F, nf) node ids of the facets of region ``name``."""
        fs = self.facet_sets[name]
        faces = np.asarray(FACES[self.cell_type])
        return self.cells[fs[:, 0][:, None], faces[fs[:, 1]]]

    def nodes_of(self, name: str) -> np.ndarray:
        """Sorted node ids of a region, from its node set or its facet set."""
        parts = []
        if name in self.node_sets:
            parts.append(self.node_sets[name])
        if name in self.facet_sets:
            parts.append(self.facet_nodes(name).ravel())
        if not parts:
            raise KeyError(name)
        return np.unique(np.concatenate(parts))

    def region_names(self) -> list[str]:
        return sorted(set(self.facet_sets) | set(self.node_sets))
