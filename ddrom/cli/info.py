"""``ddrom info``: what ddrom runs on (versions, parallel capabilities)."""
from __future__ import annotations

import platform
from typing import Any

import ddrom

#: PETSc external packages worth knowing about for ddrom's solvers and partitioners.
EXTERNAL_PACKAGES = ["hypre", "mumps", "scalapack", "superlu_dist", "ptscotch", "parmetis", "metis",
                     "hdf5", "hpddm", "suitesparse"]


def collect(comm: Any) -> dict[str, Any]:
    import h5py
    import mpi4py
    import numpy
    import scipy
    from mpi4py import MPI
    from petsc4py import PETSc

    info: dict[str, Any] = {
        "ddrom": ddrom.__version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "mpi4py": mpi4py.__version__,
        "mpi_library": MPI.Get_library_version().strip().splitlines()[0],
        "mpi_standard": "%d.%d" % MPI.Get_version(),
        "ranks": comm.size,
        "petsc": "%d.%d.%d" % PETSc.Sys.getVersion(),
        "petsc_scalar": PETSc.ScalarType.__name__,
        "petsc_int_bytes": PETSc.IntType(0).itemsize,
        "petsc_external_packages": {p: bool(PETSc.Sys.hasExternalPackage(p)) for p in EXTERNAL_PACKAGES},
        "h5py": h5py.version.version,
        "hdf5": h5py.version.hdf5_version,
        "h5py_parallel": bool(h5py.get_config().mpi),
    }
    try:
        from slepc4py import SLEPc

        info["slepc"] = "%d.%d.%d" % SLEPc.Sys.getVersion()
    except ImportError:
        info["slepc"] = None
    return info


def format_info(info: dict[str, Any]) -> str:
    lines = []
    for k, v in info.items():
        if isinstance(v, dict):
            v = ", ".join(f"{name}{'' if ok else ' (no)'}" for name, ok in v.items() if ok) or "none"
        lines.append(f"{k:24s} {v}")
    return "\n".join(lines)
