"""Reference elements: node layout, faces, Gauss quadrature, shape functions.

Node orders follow VTK/meshio. Faces are listed so that, for a positively oriented
cell, their node order is counter-clockwise seen from outside (outward normal by the
right-hand rule).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_G = 1.0 / np.sqrt(3.0)


@dataclass(frozen=True)
class ReferenceElement:
    name: str
    n_nodes: int
    nodes: np.ndarray          # (k, dim) reference coordinates
    qp: np.ndarray             # (nq, dim) quadrature points
    qw: np.ndarray             # (nq,) quadrature weights
    face_type: str | None = None

    def shape(self, xi: np.ndarray) -> np.ndarray:
        """Shape functions N (nq, k) at points xi (nq, dim)."""
        return _SHAPE[self.name](np.atleast_2d(xi))[0]

    def dshape(self, xi: np.ndarray) -> np.ndarray:
        """Reference derivatives dN/dxi (nq, k, dim) at points xi (nq, dim)."""
        return _SHAPE[self.name](np.atleast_2d(xi))[1]


def _hex8(xi):
    s = np.array([[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1],
                  [-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], dtype=float)
    a = 1 + xi[:, None, :] * s[None]                    # (nq, 8, 3)
    N = a.prod(axis=2) / 8.0
    dN = np.empty(a.shape)
    for d in range(3):
        others = [e for e in range(3) if e != d]
        dN[:, :, d] = s[None, :, d] * a[:, :, others[0]] * a[:, :, others[1]] / 8.0
    return N, dN


def _tet4(xi):
    nq = xi.shape[0]
    N = np.column_stack([1 - xi.sum(axis=1), xi[:, 0], xi[:, 1], xi[:, 2]])
    dN = np.broadcast_to(np.array([[-1, -1, -1], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float),
                         (nq, 4, 3)).copy()
    return N, dN


def _quad4(xi):
    s = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float)
    a = 1 + xi[:, None, :] * s[None]
    N = a.prod(axis=2) / 4.0
    dN = np.empty(a.shape)
    dN[:, :, 0] = s[None, :, 0] * a[:, :, 1] / 4.0
    dN[:, :, 1] = s[None, :, 1] * a[:, :, 0] / 4.0
    return N, dN


def _tri3(xi):
    nq = xi.shape[0]
    N = np.column_stack([1 - xi.sum(axis=1), xi[:, 0], xi[:, 1]])
    dN = np.broadcast_to(np.array([[-1, -1], [1, 0], [0, 1]], float), (nq, 3, 2)).copy()
    return N, dN


_SHAPE = {"hexahedron": _hex8, "tetra": _tet4, "quad": _quad4, "triangle": _tri3}

_g2 = np.array([-_G, _G])
_HEX_QP = np.array([[x, y, z] for z in _g2 for y in _g2 for x in _g2])
_QUAD_QP = np.array([[x, y] for y in _g2 for x in _g2])
_TRI_QP = np.array([[1 / 6, 1 / 6], [2 / 3, 1 / 6], [1 / 6, 2 / 3]])

CELL_TYPES: dict[str, ReferenceElement] = {
    "hexahedron": ReferenceElement(
        "hexahedron", 8,
        np.array([[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1],
                  [-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], float),
        _HEX_QP, np.ones(8), "quad"),
    # One point integrates the constant strain of a linear tetrahedron exactly.
    "tetra": ReferenceElement(
        "tetra", 4, np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float),
        np.array([[0.25, 0.25, 0.25]]), np.array([1.0 / 6.0]), "triangle"),
}

FACE_TYPES: dict[str, ReferenceElement] = {
    "quad": ReferenceElement("quad", 4, np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float),
                             _QUAD_QP, np.ones(4)),
    "triangle": ReferenceElement("triangle", 3, np.array([[0, 0], [1, 0], [0, 1]], float),
                                 _TRI_QP, np.full(3, 1.0 / 6.0)),
}

FACES: dict[str, list[list[int]]] = {
    "hexahedron": [[0, 3, 2, 1], [4, 5, 6, 7], [0, 1, 5, 4], [2, 3, 7, 6], [0, 4, 7, 3], [1, 2, 6, 5]],
    "tetra": [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]],
}
