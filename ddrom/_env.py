"""Locate the system PETSc/SLEPc, select parallel HDF5 and set numpy's and BLAS's runtime
settings before anything imports them.

petsc4py and slepc4py as packaged by Debian only import when PETSC_DIR/SLEPC_DIR name
one of the installed builds; Debian's h5py only picks its MPI build when it sees an MPI
launcher. Doing both here, once, spares every user and script from exporting them.
Values already set in the environment always win (modules, Spack, a site build).
"""
from __future__ import annotations

import glob
import os
import sys

_DEBIAN_PETSC = "/usr/lib/petscdir/petsc*/x86_64-linux-gnu-real"
_DEBIAN_SLEPC = "/usr/lib/slepcdir/slepc*/x86_64-linux-gnu-real"


def _newest(pattern: str) -> str | None:
    found = sorted(glob.glob(pattern))
    return found[-1] if found else None


def configure_environment() -> None:
    if "PETSC_DIR" not in os.environ:
        d = _newest(_DEBIAN_PETSC)
        if d:
            os.environ["PETSC_DIR"] = d
    if "SLEPC_DIR" not in os.environ:
        d = _newest(_DEBIAN_SLEPC)
        if d:
            os.environ["SLEPC_DIR"] = d
    # Debian's petsc4py/slepc4py are found through .pth files evaluated at interpreter
    # start-up, from PETSC_DIR or the /usr/lib/petsc alternative (which only the -dev
    # packages create): add their folders here too, so the runtime packages suffice.
    for var in ("PETSC_DIR", "SLEPC_DIR"):
        if os.environ.get(var):
            site = os.path.join(os.environ[var], "lib", "python3", "dist-packages")
            if os.path.isdir(site) and site not in sys.path:
                sys.path.append(site)
    # Debian's h5py chooses its MPI build only under a launcher; a singleton run
    # (plain `ddrom ...`) must write the same collective files.
    os.environ.setdefault("H5PY_ALWAYS_USE_MPI", "1")
    # One BLAS thread per rank unless the user asks otherwise: ranks are the parallelism.
    blas_vars = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    user_threads = any(var in os.environ for var in blas_vars)
    for var in blas_vars:
        os.environ.setdefault(var, "1")
    # A BLAS loaded before (``import numpy`` ahead of ``import ddrom``, as most scripts do)
    # read the variables already and runs one thread per core: set it at run time. Without
    # this every rank's large products (the kernels' per-chunk matrix products) ran on
    # 2 threads on a 2-core machine: the idle core of a 1-rank run, twice the threads of the
    # cores at 2 ranks (measured: threadpoolctl reported 2 OpenBLAS threads in
    # benchmarks/hf_vs_dolfinx.py).
    if not user_threads and "numpy" in sys.modules:
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(1, user_api="blas")
        except Exception:  # noqa: BLE001 - threadpoolctl absent or a library it cannot drive
            pass
    # One Scotch thread too: PT-Scotch's multi-threaded algorithms are not deterministic.
    # With its default thread count the partition of one mesh on one number of ranks
    # changed from run to run (measured on the demo mesh: 3 partitions in 4 runs at 2
    # ranks), and with it every partition-dependent round-off down to the ECM points;
    # with one thread every run gave the same partition (parallel PT-Scotch included).
    os.environ.setdefault("SCOTCH_PTHREAD_NUMBER", "1")
    # No transparent huge pages for numpy's arrays unless the user asks for them. numpy
    # madvises every large array for huge pages; on a node whose memory is fragmented the
    # kernel then compacts memory inside the page faults of each fresh array. The
    # enrichment's updates allocate arrays of the mesh's size every time (measured: a
    # fresh 0.6 GB product 2.0 s with huge pages, 0.54 s without, 0.14 s reusing memory;
    # the 106k temperature-field run's updates 26.4 -> 18.2 s, its HF steps and the HF
    # solver's Newton iteration unchanged). numpy reads the variable when it is imported;
    # if it already was, its setter does the same.
    if "NUMPY_MADVISE_HUGEPAGE" not in os.environ:
        os.environ["NUMPY_MADVISE_HUGEPAGE"] = "0"
        np_mod = sys.modules.get("numpy")
        if np_mod is not None:
            setter = getattr(getattr(getattr(np_mod, "core", None), "multiarray", None),
                             "_set_madvise_hugepage", None)
            if setter is not None:
                setter(False)
