"""Mandel-notation helpers for symmetric second-order tensors, vectorized over points.

A symmetric tensor ``a`` is stored as the 6-vector
``[a11, a22, a33, sqrt2*a12, sqrt2*a23, sqrt2*a13]`` (strain and stress alike), so
that the double contraction ``a : b`` is the plain dot product and fourth-order
tensors with minor symmetries are 6x6 matrices acting in the same basis.
Arrays of tensors have shape ``(n, 6)``; arrays of fourth-order tensors ``(n, 6, 6)``.
"""
from __future__ import annotations

import numpy as np

SQRT2 = np.sqrt(2.0)

#: Second-order identity in Mandel notation.
IDENTITY = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])

#: Fourth-order identity on symmetric tensors (6x6 identity in the Mandel basis).
I4 = np.eye(6)

#: Spherical projector ``(1/3) I (x) I``.
P_SPH = np.outer(IDENTITY, IDENTITY) / 3.0

#: Deviatoric projector ``P_dev = I4 - (1/3) I (x) I``; ``P_dev a = dev(a)``.
P_DEV = I4 - P_SPH


def trace(a: np.ndarray) -> np.ndarray:
    """Trace ``a11 + a22 + a33`` of tensors of shape ``(..., 6)``; returns shape ``(...)``."""
    return a[..., 0] + a[..., 1] + a[..., 2]


def dev(a: np.ndarray) -> np.ndarray:
    """Deviatoric part ``a - tr(a)/3 I`` of tensors of shape ``(..., 6)``."""
    out = np.array(a, dtype=float, copy=True)
    m = trace(a) / 3.0
    out[..., :3] -= m[..., None]
    return out


def von_mises(a: np.ndarray) -> np.ndarray:
    """Von Mises norm ``J(a) = sqrt(3/2 dev(a):dev(a))`` of tensors ``(..., 6)``.

    For a uniaxial tensor ``diag(s, 0, 0)``, ``J = |s|``.
    """
    d = dev(a)
    return np.sqrt(1.5 * np.einsum("...i,...i->...", d, d))


#: Short alias used in formulas (``J(sigma - X)``).
J = von_mises


def von_mises_deviator(d: np.ndarray) -> np.ndarray:
    """``sqrt(3/2 d:d)`` for tensors already deviatoric (skips the projection of :func:`von_mises`)."""
    return np.sqrt(1.5 * np.einsum("...i,...i->...", d, d))


_ONES_BLOCK = np.outer(IDENTITY, IDENTITY)


def add_isotropic(D: np.ndarray, bulk: np.ndarray, shear2: np.ndarray) -> np.ndarray:
    """In place ``D += 3 bulk P_sph + shear2 P_dev`` for ``D`` of shape ``(n, 6, 6)``; returns ``D``.

    Uses ``3K P_sph + 2G P_dev = (K - 2G/3) I (x) I + 2G I4`` entry-wise (normal 3x3
    block, then a strided view of the diagonal): broadcasting against ``P_sph``/``P_dev``
    would allocate ``(n, 6, 6)`` temporaries, which dominates the cost for large ``n``.
    """
    D[:, :3, :3] += (bulk - shear2 / 3.0)[:, None, None]
    diag = D.reshape(D.shape[0], 36)[:, ::7]
    diag += shear2[:, None]
    return D


def isotropic_stiffness(bulk: np.ndarray, shear: np.ndarray) -> np.ndarray:
    """Isotropic elastic stiffness ``3K P_sph + 2G P_dev`` for arrays of moduli ``(n,)``, shape ``(n, 6, 6)``."""
    bulk = np.atleast_1d(np.asarray(bulk, dtype=float))
    shear2 = 2.0 * np.atleast_1d(np.asarray(shear, dtype=float))
    D = np.empty((bulk.size, 6, 6))
    # one contiguous pass for (K - 2G/3) I (x) I, then the diagonal (a strided view)
    np.multiply((bulk - shear2 / 3.0)[:, None, None], _ONES_BLOCK, out=D)
    diag = D.reshape(bulk.size, 36)[:, ::7]
    diag += shear2[:, None]
    return D


def to_mandel(t: np.ndarray) -> np.ndarray:
    """Convert symmetric 3x3 tensors ``(..., 3, 3)`` to Mandel vectors ``(..., 6)``."""
    t = np.asarray(t, dtype=float)
    return np.stack([t[..., 0, 0], t[..., 1, 1], t[..., 2, 2],
                     SQRT2 * t[..., 0, 1], SQRT2 * t[..., 1, 2], SQRT2 * t[..., 0, 2]], axis=-1)


def from_mandel(a: np.ndarray) -> np.ndarray:
    """Convert Mandel vectors ``(..., 6)`` to symmetric 3x3 tensors ``(..., 3, 3)``."""
    a = np.asarray(a, dtype=float)
    t = np.empty(a.shape[:-1] + (3, 3))
    t[..., 0, 0], t[..., 1, 1], t[..., 2, 2] = a[..., 0], a[..., 1], a[..., 2]
    t[..., 0, 1] = t[..., 1, 0] = a[..., 3] / SQRT2
    t[..., 1, 2] = t[..., 2, 1] = a[..., 4] / SQRT2
    t[..., 0, 2] = t[..., 2, 0] = a[..., 5] / SQRT2
    return t
