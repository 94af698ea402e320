"""Giving freed heap memory back to the operating system.

A Newton iteration frees hundreds of MB of medium-sized numpy temporaries (chunks of
element kernels and material updates) between allocations that stay alive (PETSc's
multigrid hierarchy, the next iterate's state). glibc keeps such freed blocks inside its
heap, and its adaptive mmap threshold moves blocks of up to 32 MB into that heap after the
first large free, so the resident size grows from iteration to iteration although the live
memory does not (measured on a 206k-DOF Chaboche step, 2 ranks: 880 MB peak without,
827 MB with a trim per iteration; the trimmed RSS follows the live memory).
"""
from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache


@lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):     # not glibc (musl, macOS): nothing to do
        return None
    if fn is not None:
        fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def release_free_heap() -> bool:
    """Return the heap's free pages to the OS (glibc ``malloc_trim(0)``; ~ms per call).

    Returns False where the C library has no such call (then it does nothing).
    """
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True


@lru_cache(maxsize=1)
def loaded_libpetsc() -> ctypes.CDLL | None:
    """The libpetsc this process loaded (through petsc4py), for the calls petsc4py 3.18 does
    not wrap; None where it cannot be found."""
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f
                            if "/libpetsc" in line and ".so" in line.split()[-1]})
    except OSError:
        return None
    for path in paths:
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


@lru_cache(maxsize=1)
def _mat_product_clear():
    """PETSc's ``MatProductClear`` (petsc4py 3.18 does not wrap it), or None where it cannot
    be found (then nothing is released)."""
    lib = loaded_libpetsc()
    fn = getattr(lib, "MatProductClear", None) if lib is not None else None
    if fn is not None:
        fn.argtypes, fn.restype = [ctypes.c_void_p], ctypes.c_int
    return fn


def release_product_data(ksp) -> bool:
    """Free what a set-up GAMG preconditioner keeps to recompute its coarse operators
    ``P^T A P`` numerically only (collective; call after ``ksp.setUp()``).

    In parallel (MPIAIJ) each coarse operator keeps, for the next set-up with the same
    interpolation, the local rows of ``A P``, a merged copy of ``P``'s local rows, the
    transposes of ``P``'s two blocks and the rows of ``P`` other ranks own: measured ~1.3 KB
    per DOF of a rank on the finest level (206k DOFs, 2 ranks; 105 B per DOF in serial),
    more than half of GAMG's memory and all of what it takes more per DOF at 2 ranks than at
    1. Cleared, the next set-up (GAMG with ``-pc_gamg_reuse_interpolation``) finds no product
    data and forms each coarse operator again, symbolic phase included: same operators,
    hence the same Krylov iterations, at the price of the symbolic product (about as long
    as the numeric one). Returns False when nothing was done (not GAMG, no ``MatProductClear``).
    """
    pc = ksp.getPC()
    if pc.getType() != "gamg":
        return False
    clear = _mat_product_clear()
    if clear is None:
        return False
    levels = pc.getMGLevels()
    for lev in range(levels):
        A, P = pc.getMGSmoother(lev).getOperators()
        mats = [A] if A.handle == P.handle else [A, P]
        if lev > 0:
            mats.append(pc.getMGInterpolation(lev))
        for M in mats:
            err = clear(M.handle)
            if err:
                raise RuntimeError(f"MatProductClear failed with PETSc error {err}")
    return True


def release_krylov_vectors(ksp, gmres_restart: int = 30) -> bool:
    """Free the Krylov basis a solved GMRES keeps (``gmres_restart + 1`` vectors: ~250 B
    per DOF of a rank at 30), so that it does not coexist with the line search's material
    updates and the preconditioner's next set-up (collective; the HF solver calls it right
    after each solve).

    The type is set to ``preonly`` and back to ``gmres``, which destroys GMRES's data and
    nothing else (the PC, tolerances and initial-guess flag are the KSP's); the restart
    (``gmres_restart``: the caller's value, read when it configured the KSP) and the norm
    type are set again; the next solve allocates the basis again. Only for GMRES with no
    ``ksp_gmres_*`` option other than the restart (the caller's business to check).
    Measured at 206,763 DOFs on 2 ranks: PETSc's peak in a GAMG re-set-up 3,851 -> 3,634
    B/DOF; GAMG only re-formed its coarse operators; same iterations. Returns False when
    nothing was done (not GMRES).
    """
    if ksp.getType() != "gmres":
        return False
    norm = ksp.getNormType()
    ksp.setType("preonly")
    ksp.setType("gmres")
    ksp.setGMRESRestart(gmres_restart)
    ksp.setNormType(norm)
    return True


def release_hypre(ksp) -> bool:
    """Free a set-up hypre preconditioner (BoomerAMG's hierarchy and hypre's copy of the
    operator, ~1.2 KB per DOF of a rank) once its solve is done, so that it does not coexist
    with the material updates of the line search and the next matrix assembly (collective;
    after ``ksp.solve``).

    hypre re-builds its whole hierarchy at every set-up anyway (nothing is reused from one
    operator to the next), so freeing it costs only the re-creation of an empty solver.
    The PC is re-created with the same type (``none`` and back, which destroys the hypre
    solver; ``PCReset`` keeps it and part of its hierarchy) and its options read again from
    the options database. Returns False when nothing was done (not hypre).
    """
    pc = ksp.getPC()
    if pc.getType() != "hypre":
        return False
    kind = pc.getHYPREType()
    pc.setType("none")
    pc.setType("hypre")
    pc.setHYPREType(kind)
    pc.setFromOptions()
    return True
