"""Compiled material plugins: an Abaqus-style UMAT in a shared library, loaded with ctypes.

A plugin is a shared library built by the CMake project ``cmake/`` of the repository
(see ``cmake/README.md``): ddrom's batch driver (C ABI, ``cmake/include/ddrom_umat.h``)
linked with one UMAT written in C or Fortran, and the Abaqus utility routines a UMAT may
call (XIT, STDB_ABQERR, ROTSIG, SINV, SPRINC, SPRIND). The case file selects it with::

    [material]
    law = "umat"
    library = "plugins/libddrom_umat_j2_f.so"   # relative to the case file's folder, or absolute
    props = [200e3, 0.3, 250.0, 1000.0]         # PROPS of the UMAT
    nstatv = 7                                  # NSTATV (default 0)
    p_index = 6                                 # optional: STATEV(p_index + 1) is the cumulated plastic strain
    alpha = 1.2e-5                              # optional thermal expansion, handled by ddrom (then T_ref too)
    T_ref = 20.0
    symmetric = true                            # optional: the UMAT's DDSDDE is symmetric (default false)
    cmname = "STEEL"                            # optional: CMNAME passed to the UMAT (default "DDROM")

**A case that names a plugin runs that library's code** (its constructors when it is
loaded, its UMAT at every update), with the rights of the user running ddrom. Building
:class:`Umat` (``from_config``, also when a case file is checked) only validates the keys
and that the file exists; the library is loaded when a run first needs the material
(:meth:`Umat.load`, called by the first :meth:`Umat.update`).

Adapter (ddrom's total-strain interface -> UMAT's incremental one). The internal state
of a point is ``[eps_m (6, Mandel), sigma (6, Mandel), STATEV (nstatv)]``: the mechanical
strain and the stress at the start of the step, then the UMAT's state variables; the
virgin state is zero (stress free at zero mechanical strain). For a step to the total
strain ``eps`` at temperature ``T_new``::

    eps_m_new = eps - alpha(T_new) (T_new - T_ref) I     (secant thermal strain, as the built-in laws)
    STRAN  = V(eps_m_old),  DSTRAN = V(eps_m_new - eps_m_old),  STRESS (in) = V(sigma_old)
    TEMP   = T_old,  DTEMP = T_new - T_old,  DTIME = dt

where ``V`` maps Mandel ``[11, 22, 33, sqrt2 12, sqrt2 23, sqrt2 13]`` to Abaqus' Voigt
order ``[11, 22, 33, 12, 13, 23]`` with engineering shear strains (``2 eps_12``) and
tensor shear stresses. The tangent is ``D_M[a, b] = w_a w_b DDSDDE(P_a, P_b)`` with
``w = (1, 1, 1, sqrt2, sqrt2, sqrt2)`` and ``P = (0, 1, 2, 3, 5, 4)``: the thermal strain
does not depend on ``eps``, so ``d sigma / d eps = d sigma / d eps_m``. Without
``alpha`` the UMAT receives the total strain and may do its own thermal expansion from
TEMP/DTEMP. Temperature-dependent properties are the UMAT's business (it gets TEMP and
DTEMP).

Context (:class:`~ddrom.materials.MaterialContext`, passed by the HF solver and the
replay): ``TIME(1) = TIME(2)`` = its ``time`` (ddrom runs one step), ``COORDS`` its
``coords``, ``NOEL`` = ``element + 1`` (the natural cell id, 1-based: the same for any
number of ranks; the Abaqus element number when the deck numbers its elements 1..M in
order), ``NPT`` = ``point + 1`` (ddrom's quadrature order = C3D8's), ``CELENT`` its
``length``, ``KSTEP``/``KINC`` its ``step``/``increment``, ``PREDEF``/``DPRED`` its
``predef``/``dpred``. Without a context (a bare call): time 0, coordinates 0, ``NOEL`` =
index in the block + 1, ``NPT = KSTEP = KINC = 1``, ``CELENT = 1``.

Every call of :meth:`Umat.update` makes ONE foreign call (``ddrom_umat_batch``) for all
its points; the arrays are contiguous float64 passed by pointer, DDSDDE zeroed. Outcomes:

* a UMAT that sets ``PNEWDT < 1`` at some point: :class:`~ddrom.materials.ReturnMappingError`,
  which the HF solver and the online ROM turn into a cut-back;
* a UMAT that calls ``XIT`` (or ``STDB_ABQERR`` with ``LOP = -3``), or reports errors with
  ``STDB_ABQERR(-2, ...)``: :class:`~ddrom.materials.MaterialError` with its messages and the
  element and point, which the HF solver and the replay raise on every MPI rank;
* information and warnings (``STDB_ABQERR`` with ``LOP = 1, -1``) go to the log
  (``ddrom.materials``).
"""
from __future__ import annotations

import ctypes
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ddrom.materials.base import (Material, MaterialContext, MaterialError, Response, ReturnMappingError,
                                  register_law)
from ddrom.materials.elastic import check_thermal_keys
from ddrom.materials.parameters import Spec, parse_parameter
from ddrom.parallel.errors import DdromError

#: The plugin ABI this ddrom speaks (``DDROM_UMAT_ABI_VERSION`` of ``cmake/include/ddrom_umat.h``).
ABI_VERSION = 2
#: ``ddrom_umat_batch`` status codes (``ddrom_umat.h``).
_OK, _EBADARG, _EXIT, _ERROR = 0, -1, -2, -3
#: Messages (information, warnings) logged per update at most; the rest are counted.
_MAX_LOGGED = 5

_log = logging.getLogger("ddrom.materials")

#: The CMake project that builds plugins (present in a source checkout / editable install).
CMAKE_PROJECT = Path(__file__).resolve().parents[2] / "cmake"

_KEYS = ("law", "library", "props", "nstatv", "p_index", "alpha", "T_ref", "symmetric", "cmname")

_SQRT2 = np.sqrt(2.0)
#: Voigt index of each Mandel component and back (the map swaps 13 and 23: its own inverse).
_PERM = np.array([0, 1, 2, 3, 5, 4])
_W = np.array([1.0, 1.0, 1.0, _SQRT2, _SQRT2, _SQRT2])
_WW = np.outer(_W, _W)
#: Flat index in a point's 36 DDSDDE doubles of Mandel entry (a, b): DDSDDE(P_a, P_b) at P_a + 6 P_b.
_TAKE = (_PERM[:, None] + 6 * _PERM[None, :]).ravel()
_WW_FLAT = _WW.ravel()


def mandel_to_voigt_strain(e: np.ndarray) -> np.ndarray:
    """Mandel strains ``(n, 6)`` -> Abaqus order with engineering shears (``2 eps_12 = sqrt2 * e_M``)."""
    return np.ascontiguousarray(e[:, _PERM] * _W)


def mandel_to_voigt_stress(s: np.ndarray) -> np.ndarray:
    """Mandel stresses ``(n, 6)`` -> Abaqus order with tensor shear components."""
    return np.ascontiguousarray(s[:, _PERM] / _W)


def voigt_to_mandel_stress(s: np.ndarray) -> np.ndarray:
    """Abaqus-order stresses ``(n, 6)`` -> Mandel."""
    return s[:, _PERM] * _W


def voigt_to_mandel_strain(e: np.ndarray) -> np.ndarray:
    """Abaqus-order strains with engineering shears ``(n, 6)`` -> Mandel."""
    return e[:, _PERM] / _W


def ddsdde_to_mandel(raw: np.ndarray) -> np.ndarray:
    """Per-point DDSDDE as returned in memory, ``(n, 6, 6)`` C view of column-major
    ``DDSDDE(i, j)`` (so ``raw[:, j, i]``), -> Mandel tangent ``D[a, b] = w_a w_b DDSDDE(P_a, P_b)``."""
    n = raw.shape[0]
    # one gather along a flat axis (np.take) is ~3x faster than 2-D fancy indexing
    out = np.take(raw.reshape(n, 36), _TAKE, axis=1)
    out *= _WW_FLAT
    return out.reshape(n, 6, 6)


def _err(key: str, msg: str) -> DdromError:
    # "parameter 'key'" lets the case validator attach the error to material.key
    return DdromError(f"material 'umat': parameter '{key}'{msg}")


def load_library(path: str | os.PathLike) -> ctypes.CDLL:
    """Open a plugin, check its ABI version and declare the batch entry point.

    Raises
    ------
    DdromError
        Naming the path: file missing, not loadable (not a shared library, unresolved
        symbols...), symbol ``ddrom_umat_abi_version`` or ``ddrom_umat_batch`` missing,
        or an ABI version other than :data:`ABI_VERSION`.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise _err("library", f": no such file {path!r}")
    try:
        lib = ctypes.CDLL(os.path.abspath(path))
    except OSError as exc:
        raise _err("library", f": cannot load {path!r}: {exc}") from None
    for sym in ("ddrom_umat_abi_version", "ddrom_umat_batch"):
        if not hasattr(lib, sym):
            raise _err("library", f": {path!r} has no symbol '{sym}': not a ddrom UMAT plugin"
                                  " (build it with the CMake project cmake/, see cmake/README.md)")
    lib.ddrom_umat_abi_version.restype = ctypes.c_int
    lib.ddrom_umat_abi_version.argtypes = []
    version = int(lib.ddrom_umat_abi_version())
    if version != ABI_VERSION:
        raise _err("library", f": {path!r} has plugin ABI version {version}, this ddrom expects"
                              f" {ABI_VERSION}: rebuild it with this ddrom's cmake/ project")
    if not hasattr(lib, "ddrom_umat_messages"):
        raise _err("library", f": {path!r} has no symbol 'ddrom_umat_messages': rebuild it with this ddrom's "
                              "cmake/ project")
    vp, ci, cd = ctypes.c_void_p, ctypes.c_int, ctypes.c_double
    lib.ddrom_umat_batch.restype = ci
    # n, stran, dstran, stress, statev, nstatv, ddsdde, props, nprops, temp, dtemp, predef, dpred, npredf,
    # time, dtime, coords, noel, npt, celent, kstep, kinc, cmname, pnewdt, info
    lib.ddrom_umat_batch.argtypes = [ci, vp, vp, vp, vp, ci, vp, vp, ci, vp, vp, vp, vp, ci, vp, cd, vp, vp, vp,
                                     vp, ci, ci, ctypes.c_char_p, ctypes.POINTER(cd), ctypes.POINTER(ci)]
    lib.ddrom_umat_messages.restype = ci
    lib.ddrom_umat_messages.argtypes = [ctypes.c_char_p, ci]
    return lib


def _messages(lib: ctypes.CDLL) -> str:
    n = lib.ddrom_umat_messages(None, 0)
    if n <= 0:
        return ""
    buf = ctypes.create_string_buffer(n + 1)
    lib.ddrom_umat_messages(buf, n + 1)
    return buf.value.decode(errors="replace").rstrip("\n")


class Umat(Material):
    """A UMAT plugin behind the vectorized :class:`~ddrom.materials.Material` interface.

    See the module docstring for the case-file keys, the adapter's formulas and the
    state layout (``n_state = 12 + nstatv``).
    """

    name = "umat"

    def __init__(self, cfg: Mapping[str, Any]):
        unknown = sorted(set(cfg) - set(_KEYS))
        if unknown:
            raise DdromError(f"material 'umat': unknown parameter(s) {unknown}; allowed: {sorted(_KEYS[1:])}")
        check_thermal_keys(self.name, cfg)
        lib = cfg.get("library")
        if not isinstance(lib, (str, os.PathLike)) or not str(lib):
            raise _err("library", f" must be the path of a plugin library (a string), got {lib!r}")
        props = cfg.get("props", [])
        if not isinstance(props, (list, tuple, np.ndarray)) or not all(
                isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)
                and np.isfinite(x) for x in props):
            raise _err("props", f" must be a list of finite numbers, got {props!r}")
        nstatv = cfg.get("nstatv", 0)
        if isinstance(nstatv, bool) or not isinstance(nstatv, (int, np.integer)) or nstatv < 0:
            raise _err("nstatv", f" must be an integer >= 0, got {nstatv!r}")
        p_index = cfg.get("p_index")
        if p_index is not None and (isinstance(p_index, bool) or not isinstance(p_index, (int, np.integer))
                                    or not 0 <= p_index < nstatv):
            raise _err("p_index", f" must be an integer in [0, nstatv = {nstatv}) (0-based index in STATEV),"
                                  f" got {p_index!r}")
        sym = cfg.get("symmetric", False)
        if not isinstance(sym, bool):
            raise _err("symmetric", f" must be true or false, got {sym!r}")
        cmname = cfg.get("cmname", "DDROM")
        if not isinstance(cmname, str) or len(cmname) > 80 or not cmname.isascii():
            raise _err("cmname", f" must be an ASCII string of at most 80 characters, got {cmname!r}")
        if not os.path.isfile(str(lib)):
            raise _err("library", f": no such file {str(lib)!r}")
        self.library = str(lib)
        self.props = np.ascontiguousarray(props, dtype=float).reshape(-1)
        self.nstatv = int(nstatv)
        self.p_index = None if p_index is None else int(p_index)
        self.symmetric_tangent = sym
        self.cmname = cmname
        self.alpha = parse_parameter(self.name, "alpha", cfg["alpha"], Spec(0.0)) if "alpha" in cfg else None
        self.T_ref = (float(parse_parameter(self.name, "T_ref", cfg["T_ref"], Spec(0.0, table=False)).value)
                      if "T_ref" in cfg else None)
        self._cfg = {k: cfg[k] for k in _KEYS if k in cfg}
        # Not loaded here: a case file is checked without running the library's code.
        self._lib: ctypes.CDLL | None = None
        self.n_state = 12 + self.nstatv
        comp = ["11", "22", "33", "12", "23", "13"]
        self.state_names = ([f"eps_m_{c}" for c in comp] + [f"sigma_{c}" for c in comp]
                            + [f"statev_{i}" for i in range(self.nstatv)])

    def load(self) -> "Umat":
        """Load the library (once) and check its ABI; :meth:`update` calls it when needed.

        Raises
        ------
        DdromError
            See :func:`load_library`.
        """
        if self._lib is None:
            self._lib = load_library(self.library)
        return self

    @property
    def loaded(self) -> bool:
        return self._lib is not None

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in self._cfg.items()}

    def cumulated_plastic_strain(self, state: np.ndarray) -> np.ndarray:
        state = np.asarray(state)
        if self.p_index is None:
            return np.zeros(state.shape[0])
        return state[:, 12 + self.p_index].copy()

    def _thermal(self, T: np.ndarray) -> np.ndarray:
        """Secant thermal strain ``alpha(T) (T - T_ref)`` per point (the trace is 3 times it)."""
        return self.alpha(T) * (T - self.T_ref)

    def update(self, eps, state_old, T_old, T_new, dt, tangent=True,
               context: MaterialContext | None = None) -> Response:
        self.load()
        eps, state_old, T = self._check_inputs(eps, state_old, T_new)
        n = eps.shape[0]
        T0 = np.asarray(T_old, dtype=float)
        T0 = np.full(n, float(T0.reshape(()))) if T0.size == 1 else T0.reshape(n)
        eps_m = eps.copy()
        if self.alpha is not None:
            eps_m[:, :3] -= self._thermal(T)[:, None]
        epsm_old = state_old[:, :6]
        stran = mandel_to_voigt_strain(epsm_old)
        dstran = mandel_to_voigt_strain(eps_m - epsm_old)
        stress = mandel_to_voigt_stress(state_old[:, 6:12])
        statev = np.ascontiguousarray(state_old[:, 12:])
        # zeroed (the driver zeroes each point again before calling the UMAT): UMATs written
        # to the Abaqus manual's conventions set only the non-zero entries
        ddsdde = np.zeros((n, 6, 6))
        temp = np.ascontiguousarray(T0)
        dtemp = np.ascontiguousarray(T - T0)
        ctx = _Context(context, n, self.name)
        info, pnewdt = ctypes.c_int(0), ctypes.c_double(1.0)
        status = self._lib.ddrom_umat_batch(
            n, stran.ctypes.data, dstran.ctypes.data, stress.ctypes.data, statev.ctypes.data, self.nstatv,
            ddsdde.ctypes.data, self.props.ctypes.data, self.props.size, temp.ctypes.data, dtemp.ctypes.data,
            ctx.ptr("predef"), ctx.ptr("dpred"), ctx.npredf, ctx.time.ctypes.data, float(dt), ctx.ptr("coords"),
            ctx.ptr("noel"), ctx.ptr("npt"), ctx.ptr("celent"), ctx.kstep, ctx.kinc,
            self.cmname.encode("ascii"), ctypes.byref(pnewdt), ctypes.byref(info))
        msgs = _messages(self._lib) if status != _EBADARG else ""
        where = f"material 'umat': the UMAT of {self.library!r}"
        when = f"t = {ctx.time[1]:.6g}, increment {ctx.kinc}"
        if status == _EXIT:
            k = info.value
            el, pt = ctx.element_point(k)
            raise MaterialError(f"{where} stopped the run (XIT) at element {el}, point {pt} ({when})"
                                + (f":\n{msgs}" if msgs else ""))
        if status == _ERROR:
            raise MaterialError(f"{where} reported errors ({when}):\n{msgs}")
        if status != _OK:
            raise DdromError(f"{where}: ddrom_umat_batch returned error {status}")
        if msgs:
            lines = msgs.splitlines()
            for ln in lines[:_MAX_LOGGED]:
                _log.warning("%s (%s): %s", where, when, ln)
            if len(lines) > _MAX_LOGGED:
                _log.warning("%s (%s): ... %d more message(s)", where, when, len(lines) - _MAX_LOGGED)
        if info.value:
            raise ReturnMappingError(f"{where} asked for a smaller time increment (PNEWDT = {pnewdt.value:.3g} < 1)"
                                     f" at {info.value} point(s) ({when})")
        state = np.empty((n, self.n_state))
        state[:, :6] = eps_m
        state[:, 6:12] = voigt_to_mandel_stress(stress)
        state[:, 12:] = statev
        return Response(state[:, 6:12].copy(), state, ddsdde_to_mandel(ddsdde) if tangent else None)


class _Context:
    """The arrays of a :class:`MaterialContext` as the driver wants them (contiguous, typed),
    with the defaults of a bare call (see the module doc)."""

    def __init__(self, c: MaterialContext | None, n: int, law: str):
        c = c if c is not None else MaterialContext()
        t = float(c.time)
        self.time = np.array([t, t])
        self.kstep, self.kinc = int(c.step), int(c.increment)
        self._arrays: dict[str, np.ndarray] = {}
        self.noel_given = c.element is not None
        self.npt_given = c.point is not None

        def per_point(name, value, dtype, shape):
            if value is None:
                return
            a = np.ascontiguousarray(np.broadcast_to(np.asarray(value, dtype=dtype), shape))
            self._arrays[name] = a

        try:
            per_point("coords", c.coords, np.float64, (n, 3))
            per_point("noel", None if c.element is None else np.asarray(c.element).reshape(-1) + 1, np.int32, (n,))
            per_point("npt", None if c.point is None else np.asarray(c.point).reshape(-1) + 1, np.int32, (n,))
            per_point("celent", c.length, np.float64, (n,))
            self.npredf = 0
            if c.predef is not None or c.dpred is not None:
                pre = np.asarray(c.predef if c.predef is not None else np.zeros_like(c.dpred), dtype=float)
                pre = pre.reshape(n, -1)
                self.npredf = pre.shape[1]
                per_point("predef", pre, np.float64, (n, self.npredf))
                per_point("dpred", np.zeros_like(pre) if c.dpred is None else c.dpred, np.float64, (n, self.npredf))
        except ValueError as exc:
            raise DdromError(f"material '{law}': the material context does not fit {n} points ({exc})") from None

    def ptr(self, name: str) -> int | None:
        a = self._arrays.get(name)
        return None if a is None else a.ctypes.data

    def element_point(self, k: int) -> tuple[int, int]:
        """NOEL and NPT of point k of the block."""
        el = int(self._arrays["noel"][k]) if "noel" in self._arrays else k + 1
        pt = int(self._arrays["npt"][k]) if "npt" in self._arrays else 1
        return el, pt


register_law("umat")(Umat)


def resolve_paths(cfg: Mapping[str, Any], folder: str | os.PathLike) -> dict:
    """A copy of a ``[material]`` table whose relative ``library`` path (law ``"umat"``)
    is made absolute against ``folder`` (the case file's folder); other tables unchanged."""
    out = dict(cfg)
    lib = out.get("library")
    if out.get("law") == "umat" and isinstance(lib, str) and lib and not os.path.isabs(lib):
        out["library"] = os.path.abspath(os.path.join(os.fspath(folder), lib))
    return out


def build_plugins(build_dir: str | os.PathLike, umat_source: str | os.PathLike | None = None,
                  umat_name: str | None = None, examples: bool = True, jobs: int = 2) -> Path:
    """Configure and build the CMake project ``cmake/`` into ``build_dir`` (serial helper, not collective).

    Builds the example plugins (``libddrom_umat_{elastic,j2}_{c,f}.so``; the Fortran ones
    only when a Fortran compiler is found) and, with ``umat_source``, ``lib<umat_name>.so``
    from the user's UMAT. Returns ``build_dir`` (where the libraries are).

    Raises
    ------
    DdromError
        cmake is missing, or the configuration or the build failed (with its output).
    """
    cmake = shutil.which("cmake")
    if cmake is None:
        raise DdromError("building UMAT plugins needs cmake (Debian: apt-get install cmake)")
    if not (CMAKE_PROJECT / "CMakeLists.txt").is_file():
        raise DdromError(f"the plugin CMake project is not at {CMAKE_PROJECT} (a source checkout of ddrom has it)")
    build = Path(build_dir)
    args = [cmake, "-S", str(CMAKE_PROJECT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
            f"-DDDROM_UMAT_EXAMPLES={'ON' if examples else 'OFF'}"]
    if umat_source is not None:
        args.append(f"-DUMAT_SOURCE={os.path.abspath(umat_source)}")
        if umat_name:
            args.append(f"-DUMAT_NAME={umat_name}")
    for cmd in (args, [cmake, "--build", str(build), "-j", str(jobs)]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise DdromError(f"plugin build failed: {' '.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return build


__all__ = ["Umat", "ABI_VERSION", "load_library", "resolve_paths", "build_plugins", "mandel_to_voigt_strain",
           "mandel_to_voigt_stress", "voigt_to_mandel_stress", "voigt_to_mandel_strain", "ddsdde_to_mandel"]
