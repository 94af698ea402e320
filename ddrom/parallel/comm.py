"""Conversions between mpi4py and PETSc communicators.

Every function of ddrom that communicates takes a communicator argument (docs/ARCHITECTURE.md,
Parallel model); these helpers accept either kind so that callers never care.
"""
from __future__ import annotations

from typing import Any

from mpi4py import MPI


def as_mpi(comm: Any = None) -> MPI.Comm:
    """Return the mpi4py communicator for ``comm`` (mpi4py, PETSc, or None for COMM_WORLD)."""
    if comm is None:
        return MPI.COMM_WORLD
    if isinstance(comm, MPI.Comm):
        return comm
    tompi4py = getattr(comm, "tompi4py", None)
    if tompi4py is not None:
        return tompi4py()
    raise TypeError(f"not a communicator: {comm!r}")


def as_petsc(comm: Any = None):
    """Return the PETSc communicator wrapping ``comm``."""
    from petsc4py import PETSc

    if comm is None:
        return PETSc.COMM_WORLD
    if isinstance(comm, PETSc.Comm):
        return comm
    return PETSc.Comm(as_mpi(comm))


def world() -> MPI.Comm:
    """COMM_WORLD, for entry points only (the CLI); library code takes a communicator."""
    return MPI.COMM_WORLD
