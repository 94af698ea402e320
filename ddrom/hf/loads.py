"""Loads of a quasi-static thermo-mechanical problem, as functions of space and time.

Every value is a callable of named arrays (``x, y, z, t``; case parameters already
bound), typically a compiled :class:`ddrom.expressions.Expression`. A plain number is
accepted too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

Field = Callable[..., Any]


def as_field(value: Any) -> Field:
    """A callable of (x, y, z, t) from a callable or a number."""
    if callable(value):
        return value
    v = float(value)
    return lambda **kw: v


def evaluate(f: Field, shape: tuple[int, ...], **names: Any) -> np.ndarray:
    """Evaluate ``f`` and broadcast the result to ``shape`` (constants become arrays)."""
    return np.broadcast_to(np.asarray(as_field(f)(**names), dtype=np.float64), shape)


@dataclass
class Dirichlet:
    """Imposed displacement ``value(x, y, z, t)`` on ``components`` of the nodes of ``region``."""

    region: str
    components: Sequence[int] = (0, 1, 2)
    value: Field = 0.0


@dataclass
class Pressure:
    """Pressure ``value(x, y, z, t)`` on a boundary region: traction = -p n (p > 0 pushes in)."""

    region: str
    value: Field = 0.0


@dataclass
class Traction:
    """Traction vector ``[tx, ty, tz](x, y, z, t)`` on a boundary region (force per area)."""

    region: str
    vector: Sequence[Field] = (0.0, 0.0, 0.0)


@dataclass
class NodalForce:
    """A force ``[fx, fy, fz](x, y, z, t)`` applied at **every node** of ``region`` (force units,
    not per area): Abaqus' and CalculiX's ``*CLOAD`` on a node set. The total force on the
    region is the vector times its number of nodes (for an expression of x, y, z: the sum of
    its values at the nodes). Components at Dirichlet DOFs are taken by the support."""

    region: str
    vector: Sequence[Field] = (0.0, 0.0, 0.0)


@dataclass
class BodyForce:
    """Body force per unit volume ``[bx, by, bz](x, y, z, t)``."""

    vector: Sequence[Field] = (0.0, 0.0, 0.0)


@dataclass
class Centrifugal:
    """Centrifugal body force rho * omega(t)^2 * r, r the position's distance vector from the axis."""

    omega: Field
    density: float
    axis: Sequence[float] = (0.0, 0.0, 1.0)
    center: Sequence[float] = (0.0, 0.0, 0.0)

    def force(self, xq: np.ndarray, t: float) -> np.ndarray:
        a = np.asarray(self.axis, dtype=float)
        a = a / np.linalg.norm(a)
        d = xq - np.asarray(self.center, dtype=float)
        r = d - (d @ a)[..., None] * a
        w = float(np.asarray(as_field(self.omega)(t=t)))
        return self.density * w * w * r


@dataclass
class Loads:
    dirichlet: list[Dirichlet] = field(default_factory=list)
    pressure: list[Pressure] = field(default_factory=list)
    traction: list[Traction] = field(default_factory=list)
    nodal: list[NodalForce] = field(default_factory=list)
    body: list[BodyForce] = field(default_factory=list)
    centrifugal: list[Centrifugal] = field(default_factory=list)
    temperature: Field = 20.0

    def boundary_regions(self) -> set[str]:
        return {p.region for p in self.pressure} | {t.region for t in self.traction}

    def all_regions(self) -> set[str]:
        return self.boundary_regions() | {d.region for d in self.dirichlet} | {n.region for n in self.nodal}
