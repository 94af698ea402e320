"""Shared helpers for tests: identical data for every number of ranks."""
from __future__ import annotations

import numpy as np
from mpi4py import MPI

import ddrom  # noqa: F401  (environment for petsc4py/h5py)
from ddrom.mesh.distribute import distribute


def distributed(make_mesh, comm=MPI.COMM_WORLD, partitioner="ptscotch"):
    """Build the serial mesh on rank 0 only and distribute it."""
    mesh = make_mesh() if comm.rank == 0 else None
    return distribute(mesh, comm, partitioner=partitioner)


def gather_natural(nmap, owned: np.ndarray, comm) -> np.ndarray:
    """TESTS ONLY: the whole field in natural order on every rank."""
    part = nmap.to_natural(owned)
    return np.concatenate(comm.allgather(part))


def distort(mesh, amount: float, seed: int = 0):
    """Move interior nodes randomly (deterministic, on the serial mesh)."""
    from ddrom.mesh.boundary import boundary_facets
    from ddrom.mesh.reference import FACES

    fs = boundary_facets(mesh)
    faces = np.asarray(FACES[mesh.cell_type])
    bnodes = np.unique(mesh.cells[fs[:, 0][:, None], faces[fs[:, 1]]])
    rng = np.random.default_rng(seed)
    d = rng.uniform(-amount, amount, mesh.points.shape)
    d[bnodes] = 0.0
    mesh.points = mesh.points + d
    return mesh


def cuts(n: int, size: int) -> np.ndarray:
    """Uneven row partition: shares 1, 3, 2, 5, 4, ... (rank 0 gets the fewest rows)."""
    shares = np.array([1, 3, 2, 5, 4, 6, 7, 8][:size], dtype=float) if size <= 8 else np.ones(size)
    c = np.concatenate(([0], np.round(np.cumsum(shares) / shares.sum() * n))).astype(int)
    c[-1] = n
    return c


def local(A: np.ndarray, comm) -> np.ndarray:
    """This rank's rows of a matrix known on every rank (uneven partition)."""
    c = cuts(A.shape[0], comm.size)
    return A[c[comm.rank]:c[comm.rank + 1]]


def gather(A_loc: np.ndarray, comm) -> np.ndarray:
    """TESTS ONLY: the whole row-distributed matrix on every rank."""
    return np.vstack(comm.allgather(A_loc))


def ddrom_cli(np_: int, *args: str, cwd=None, timeout: float = 240):
    """Run ``mpirun -n np_ ddrom ARGS`` in a clean MPI environment (this test process may itself
    be an MPI singleton or a rank of a job); returns the CompletedProcess."""
    import subprocess
    import sys
    from pathlib import Path

    cmd = ["mpirun", "-n", str(np_), "--oversubscribe", str(Path(sys.executable).parent / "ddrom"), *args]
    return subprocess.run(cmd, cwd=cwd, env=clean_mpi_env(), capture_output=True, text=True, timeout=timeout)


def clean_mpi_env() -> dict:
    """The environment for an ``mpirun`` launched by a test (which may itself be an MPI singleton)."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_COMM", "PMIX_", "OMPI_MCA_ess",
                                                                      "OMPI_MCA_orte", "OMPI_FILE"))}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env
