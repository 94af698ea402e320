"""Import ddrom before anything else: it locates PETSc/SLEPc and selects parallel h5py."""
import os
import sys

import ddrom  # noqa: F401

sys.path.insert(0, os.path.dirname(__file__))   # tests/helpers.py


import pytest  # noqa: E402


@pytest.fixture
def shared_tmp(tmp_path):
    """A temporary folder common to all ranks (rank 0's ``tmp_path``, broadcast)."""
    from pathlib import Path

    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    return Path(comm.bcast(str(tmp_path) if comm.rank == 0 else None, root=0))
