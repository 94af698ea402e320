"""Compiled material plugins (cmake/ + ddrom.materials.plugin): the example UMATs in C and
Fortran agree with the built-in laws, a whole HF case with a plugin equals the built-in
one (1 and 3 ranks), and bad libraries give clear errors.

The plugins are built once per session by cmake into a temporary folder (rank 0 builds,
the path is broadcast); the tests are skipped, with the reason, only when cmake or a C
compiler is missing (CI has them: scripts/install.sh installs gfortran).
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from ddrom.materials import ReturnMappingError, from_config
from ddrom.materials.plugin import (ABI_VERSION, build_plugins, ddsdde_to_mandel, mandel_to_voigt_strain,
                                    mandel_to_voigt_stress, voigt_to_mandel_strain, voigt_to_mandel_stress)
from ddrom.materials.tensors import to_mandel
from ddrom.parallel import DdromError

E, NU, SY, H = 200e3, 0.3, 250.0, 1500.0
ALPHA, T_REF = 1.2e-5, 20.0
FORTRAN = shutil.which("gfortran") is not None


def _missing_tools() -> str | None:
    if shutil.which("cmake") is None:
        return "cmake is not installed"
    if not any(shutil.which(c) for c in ("cc", "gcc", "clang")):
        return "no C compiler (cc/gcc/clang)"
    return None


@pytest.fixture(scope="session")
def plugin_dir():
    """The built example plugins (same folder on every rank: rank 0 builds, then broadcast)."""
    comm = MPI.COMM_WORLD
    why = _missing_tools()
    if why:
        pytest.skip(f"UMAT plugins cannot be built: {why}")
    out, err = None, None
    if comm.rank == 0:
        try:
            out = str(build_plugins(Path(tempfile.mkdtemp(prefix="ddrom-plugins-")) / "build"))
        except DdromError as exc:
            err = str(exc)
    out, err = comm.bcast((out, err), root=0)
    if err:
        pytest.fail(err)
    yield Path(out)
    comm.barrier()
    if comm.rank == 0:
        shutil.rmtree(Path(out).parent, ignore_errors=True)


def lib(plugin_dir: Path, law: str, lang: str) -> str:
    if lang in ("f", "abaqus") and not FORTRAN:
        pytest.skip("gfortran is not installed: Fortran plugins not built (scripts/install.sh installs it)")
    return str(plugin_dir / f"libddrom_umat_{law}_{lang}.so")


def umat_cfg(path: str, law: str, thermal: bool) -> dict:
    cfg = ({"law": "umat", "library": path, "props": [E, NU]} if law == "elastic" else
           {"law": "umat", "library": path, "props": [E, NU, SY, H], "nstatv": 7, "p_index": 6,
            "symmetric": True})
    if thermal:
        cfg.update(alpha=ALPHA, T_ref=T_REF)
    return cfg


def builtin_cfg(law: str, thermal: bool) -> dict:
    cfg = ({"law": "elastic", "E": E, "nu": NU} if law == "elastic" else
           {"law": "j2", "E": E, "nu": NU, "sigma_y": SY, "H": H, "C": 0.0, "gamma": 0.0})
    if thermal:
        cfg.update(alpha=ALPHA, T_ref=T_REF)
    return cfg


# ------------------------------------------------------------------------------------------
# conversions
# ------------------------------------------------------------------------------------------
def test_voigt_mandel_conversions_are_the_abaqus_conventions():
    rng = np.random.default_rng(1)
    t = rng.normal(size=(4, 3, 3))
    t = t + t.transpose(0, 2, 1)
    m = to_mandel(t)
    # Abaqus: 11, 22, 33, 12, 13, 23; engineering shear strains, tensor shear stresses
    eng = np.stack([t[:, 0, 0], t[:, 1, 1], t[:, 2, 2], 2 * t[:, 0, 1], 2 * t[:, 0, 2], 2 * t[:, 1, 2]], 1)
    ten = np.stack([t[:, 0, 0], t[:, 1, 1], t[:, 2, 2], t[:, 0, 1], t[:, 0, 2], t[:, 1, 2]], 1)
    np.testing.assert_allclose(mandel_to_voigt_strain(m), eng, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(mandel_to_voigt_stress(m), ten, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(voigt_to_mandel_stress(ten), m, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(voigt_to_mandel_strain(eng), m, rtol=1e-15, atol=1e-15)
    # a DDSDDE written column-major (Fortran) maps sigma_V = D_V gamma_V to sigma_M = D_M eps_M
    DV = rng.normal(size=(4, 6, 6))
    raw = np.ascontiguousarray(DV.transpose(0, 2, 1))     # memory of DDSDDE(i, j) at i + 6 j
    DM = ddsdde_to_mandel(raw)
    sig_v = np.einsum("nij,nj->ni", DV, eng)
    np.testing.assert_allclose(np.einsum("nij,nj->ni", DM, m), voigt_to_mandel_stress(sig_v), rtol=1e-13,
                               atol=1e-13)


# ------------------------------------------------------------------------------------------
# each compiled law vs the built-in law, on random strain and temperature paths
# ------------------------------------------------------------------------------------------
def random_path(n: int, steps: int, seed: int):
    """Strains (steps, n, 6) that load into plasticity, then partly unload and reload; temperatures (steps, n)."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(n, 6))
    direction /= np.linalg.norm(direction, axis=1)[:, None]
    # yield near |dev eps| = 1.3e-3: load, unload elastically (2 steps), reverse yield, reload
    amp = np.array([0.5, 1.5, 3.0, 2.2, 1.0, -1.0, 0.5, 3.5])[:steps] * 1e-3
    eps = amp[:, None, None] * direction[None] + 5e-5 * rng.normal(size=(steps, n, 6))
    T = T_REF + 200.0 * rng.uniform(size=(steps, n))
    return eps, T


@pytest.mark.parametrize("lang", ["c", "f"])
@pytest.mark.parametrize("law", ["elastic", "j2"])
@pytest.mark.parametrize("thermal", [False, True])
def test_compiled_law_equals_builtin(plugin_dir, law, lang, thermal):
    plug = from_config(umat_cfg(lib(plugin_dir, law, lang), law, thermal))
    ref = from_config(builtin_cfg(law, thermal))
    n, steps = 200, 8
    eps, T = random_path(n, steps, seed=4 + (law == "j2"))
    sp, sr = plug.initial_state(n), ref.initial_state(n)
    T_old = np.full(n, T_REF)
    plastic, unloading = 0, 0
    for k in range(steps):
        rp = plug.update(eps[k], sp, T_old, T[k], 0.1)
        rr = ref.update(eps[k], sr, T_old, T[k], 0.1)
        scale = np.abs(rr.stress).max()
        assert np.abs(rp.stress - rr.stress).max() <= 1e-10 * scale, k
        assert np.abs(rp.tangent - rr.tangent).max() <= 1e-10 * np.abs(rr.tangent).max(), k
        pp, pr = plug.cumulated_plastic_strain(rp.state), ref.cumulated_plastic_strain(rr.state)
        assert np.abs(pp - pr).max() <= 1e-10 * max(pr.max(), 1e-3), k
        if law == "j2":
            # the UMAT's eps_p (STATEV 1-6, engineering shears) is the built-in eps_p
            epsp = voigt_to_mandel_strain(rp.state[:, 12:18])
            assert np.abs(epsp - rr.state[:, :6]).max() <= 1e-10 * max(np.abs(rr.state[:, :6]).max(), 1e-3)
            dp = pr - ref.cumulated_plastic_strain(sr)
            plastic += int((dp > 0).sum())
            unloading += int((dp == 0).sum() * (k > 0))
        # tangent=False gives the same stress and state
        rq = plug.update(eps[k], sp, T_old, T[k], 0.1, tangent=False)
        assert rq.tangent is None and np.array_equal(rq.stress, rp.stress) and np.array_equal(rq.state, rp.state)
        sp, sr, T_old = rp.state, rr.state, T[k]
    if law == "j2":
        assert plastic > n * steps // 3 and unloading > n, (plastic, unloading)
    else:
        assert plug.cumulated_plastic_strain(sp).max() == 0.0


def test_tangent_is_the_derivative_of_the_plugin_stress(plugin_dir):
    """Finite differences of the adapted stress (Mandel) reproduce the Mandel tangent."""
    plug = from_config(umat_cfg(lib(plugin_dir, "j2", "c"), "j2", True))
    n = 20
    eps, T = random_path(n, 3, seed=9)
    st = plug.initial_state(n)
    st = plug.update(eps[0], st, T_REF, T[0], 0.1).state
    r = plug.update(eps[1], st, T[0], T[1], 0.1)
    h = 1e-8
    for j in range(6):
        e = eps[1].copy()
        e[:, j] += h
        ep = plug.update(e, st, T[0], T[1], 0.1, tangent=False).stress
        e[:, j] -= 2 * h
        em = plug.update(e, st, T[0], T[1], 0.1, tangent=False).stress
        fd = (ep - em) / (2 * h)
        assert np.abs(fd - r.tangent[:, :, j]).max() <= 1e-5 * E


# ------------------------------------------------------------------------------------------
# a whole HF case
# ------------------------------------------------------------------------------------------
@pytest.mark.mpi
@pytest.mark.parametrize("lang", ["c", "f"])
def test_hf_case_with_plugin_equals_builtin(plugin_dir, lang):
    from helpers import thermal_j2_box

    u_p, p_p, s_p, c_p = thermal_j2_box(umat_cfg(lib(plugin_dir, "j2", lang), "j2", True))
    u_b, p_b, s_b, c_b = thermal_j2_box(builtin_cfg("j2", True))
    assert p_b.max() > 1e-3, "the case must be plastic"
    assert c_p == c_b == 0
    assert np.abs(u_p - u_b).max() <= 1e-10 * np.abs(u_b).max()
    assert np.abs(p_p - p_b).max() <= 1e-10 * p_b.max()
    assert np.abs(s_p - s_b).max() <= 1e-10 * np.abs(s_b).max()


# ------------------------------------------------------------------------------------------
# user sources (UMAT_SOURCE), cut-back request, bad libraries
# ------------------------------------------------------------------------------------------
CUTBACK_UMAT = """
      SUBROUTINE UMAT(STRESS,STATEV,DDSDDE,SSE,SPD,SCD,
     1 RPL,DDSDDT,DRPLDE,DRPLDT,
     2 STRAN,DSTRAN,TIME,DTIME,TEMP,DTEMP,PREDEF,DPRED,CMNAME,
     3 NDI,NSHR,NTENS,NSTATV,PROPS,NPROPS,COORDS,DROT,PNEWDT,
     4 CELENT,DFGRD0,DFGRD1,NOEL,NPT,LAYER,KSPT,KSTEP,KINC)
      INCLUDE 'ABA_PARAM.INC'
      CHARACTER*80 CMNAME
      DIMENSION STRESS(NTENS),STATEV(NSTATV),DDSDDE(NTENS,NTENS),
     1 DSTRAN(NTENS),PROPS(NPROPS)
C     linear spring on every component; asks for a cut-back when |DSTRAN(1)| > PROPS(2);
C     counts its calls in STATEV(1) and stores CMNAME's length in STATEV(2)
      DO I = 1, NTENS
        DO J = 1, NTENS
          DDSDDE(I,J) = 0.0D0
        END DO
        DDSDDE(I,I) = PROPS(1)
        STRESS(I) = STRESS(I) + PROPS(1) * DSTRAN(I)
      END DO
      STATEV(1) = STATEV(1) + 1.0D0
      STATEV(2) = LEN_TRIM(CMNAME)
      IF (ABS(DSTRAN(1)) .GT. PROPS(2)) PNEWDT = 0.5D0
      RETURN
      END
"""


def test_user_umat_source_builds_and_cutback_is_a_return_mapping_error(tmp_path):
    why = _missing_tools()
    if why or not FORTRAN:
        pytest.skip(f"cannot build a Fortran UMAT: {why or 'gfortran is not installed'}")
    src = tmp_path / "spring.f"
    src.write_text(CUTBACK_UMAT)
    build = build_plugins(tmp_path / "build", umat_source=src, umat_name="spring", examples=False)
    path = build / "libspring.so"
    assert path.is_file() and not list(build.glob("libddrom_umat_*.so"))
    mat = from_config({"law": "umat", "library": str(path), "props": [7.0, 1e-2], "nstatv": 2,
                       "cmname": "STEEL-1"})
    n = 5
    eps = np.linspace(-1, 1, n * 6).reshape(n, 6) * 1e-3
    r = mat.update(eps, mat.initial_state(n), 0.0, 0.0, 1.0)
    # DDSDDE = 7 I in Abaqus' basis (engineering shear strains): 14 on the Mandel shear diagonal
    w = np.array([1.0, 1, 1, 2, 2, 2])
    np.testing.assert_allclose(r.stress, 7.0 * w * eps, rtol=1e-14)
    np.testing.assert_allclose(r.tangent, np.broadcast_to(7.0 * np.diag(w), (n, 6, 6)), rtol=1e-14)
    np.testing.assert_array_equal(r.state[:, 12:], [[1.0, 7.0]] * n)
    np.testing.assert_array_equal(mat.cumulated_plastic_strain(r.state), np.zeros(n))
    eps[3, 0] = 0.5
    with pytest.raises(ReturnMappingError, match=r"\(PNEWDT = 0\.5 < 1\) at 1 point\(s\) \(t = 0, increment 1\)"):
        mat.update(eps, r.state, 0.0, 0.0, 1.0)


def _cc(tmp_path: Path, name: str, code: str) -> Path:
    src = tmp_path / f"{name}.c"
    src.write_text(textwrap.dedent(code))
    out = tmp_path / f"lib{name}.so"
    cc = next(c for c in ("cc", "gcc", "clang") if shutil.which(c))
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    return out


def test_bad_libraries_give_clear_errors(tmp_path):
    """The file must exist when the case is read; the library is loaded (and checked) when a
    run first needs it (Umat.load, called by the first update)."""
    why = _missing_tools()
    if why:
        pytest.skip(f"cannot build test libraries: {why}")
    cfg = {"law": "umat", "props": [1.0]}
    missing = tmp_path / "nope" / "libmissing.so"
    with pytest.raises(DdromError, match=r"parameter 'library': no such file .*libmissing\.so"):
        from_config({**cfg, "library": str(missing)})
    not_elf = tmp_path / "libtext.so"
    not_elf.write_text("not a library")
    m = from_config({**cfg, "library": str(not_elf)})
    assert not m.loaded
    with pytest.raises(DdromError, match=r"cannot load .*libtext\.so"):
        m.load()
    with pytest.raises(DdromError, match=r"cannot load .*libtext\.so"):
        m.update(np.zeros((1, 6)), m.initial_state(1), 0.0, 0.0, 1.0)
    nosym = _cc(tmp_path, "nosym", "int something(void) { return 1; }\n")
    with pytest.raises(DdromError, match=r"libnosym\.so' has no symbol 'ddrom_umat_abi_version': not a ddrom"):
        from_config({**cfg, "library": str(nosym)}).load()
    wrong = _cc(tmp_path, "wrongabi", """
        int ddrom_umat_abi_version(void) { return 999; }
        int ddrom_umat_batch(void) { return 0; }
    """)
    with pytest.raises(DdromError, match=rf"libwrongabi\.so' has plugin ABI version 999, this ddrom expects"
                                         rf" {ABI_VERSION}: rebuild"):
        from_config({**cfg, "library": str(wrong)}).load()
    old = _cc(tmp_path, "oldabi", """
        int ddrom_umat_abi_version(void) { return 1; }
        int ddrom_umat_batch(void) { return 0; }
    """)
    with pytest.raises(DdromError, match=r"liboldabi\.so' has plugin ABI version 1, this ddrom expects 2: rebuild"):
        from_config({**cfg, "library": str(old)}).load()


def test_checking_a_case_does_not_run_the_plugin(tmp_path):
    """A library's constructors run when it is loaded: not while the case file is read and
    checked (from_config, load_case), only when a run needs the material."""
    why = _missing_tools()
    if why:
        pytest.skip(f"cannot build test libraries: {why}")
    from ddrom.workflow.case import load_case

    mark = tmp_path / "constructor_ran"
    lib_ = _cc(tmp_path, "ctor", f"""
        #include <stdio.h>
        __attribute__((constructor)) static void ran(void) {{ FILE *f = fopen("{mark}", "w"); if (f) fclose(f); }}
        int ddrom_umat_abi_version(void) {{ return 999; }}
        int ddrom_umat_batch(void) {{ return 0; }}
    """)
    (tmp_path / "case.toml").write_text(textwrap.dedent(f"""
        [case]
        name = "ctor"
        [mesh]
        generator = "box"
        args = {{ nx = 2, ny = 2, nz = 2 }}
        [material]
        law = "umat"
        library = "{lib_}"
        props = [1.0]
        [time]
        t_end = 1.0
        n_steps = 1
        [loads]
        dirichlet = [{{ region = "xmin" }}]
    """))
    case = load_case(tmp_path / "case.toml")
    m = from_config(case.raw["material"])
    assert not mark.exists() and not m.loaded
    with pytest.raises(DdromError, match="ABI version 999"):
        m.load()
    assert mark.exists()


def test_invalid_keys_are_named(plugin_dir):
    path = lib(plugin_dir, "j2", "c")
    base = umat_cfg(path, "j2", False)
    for bad, match in [({"nstatv": -1}, "parameter 'nstatv'"), ({"p_index": 7}, "parameter 'p_index'"),
                       ({"props": [1.0, "x"]}, "parameter 'props'"), ({"library": 3}, "parameter 'library'"),
                       ({"symmetric": 1}, "parameter 'symmetric'"), ({"alpha": 1e-5}, "'T_ref' is missing"),
                       ({"E": 1.0}, r"unknown parameter\(s\) \['E'\]")]:
        with pytest.raises(DdromError, match=match):
            from_config({**base, **bad})
    m = from_config(base)
    assert from_config(m.to_dict()).to_dict() == m.to_dict() == base
    assert m.n_state == 19 and m.state_names[12] == "statev_0" and m.symmetric_tangent


def test_case_file_library_is_relative_to_the_case_folder(plugin_dir, tmp_path):
    from ddrom.workflow.case import load_case

    folder = tmp_path / "case"
    (folder / "plugins").mkdir(parents=True)
    shutil.copy(lib(plugin_dir, "elastic", "c"), folder / "plugins" / "libel.so")
    text = textwrap.dedent("""
        [case]
        name = "plug"
        [mesh]
        generator = "box"
        args = { nx = 2, ny = 2, nz = 2 }
        [material]
        law = "umat"
        library = "plugins/libel.so"
        props = [200e3, 0.3]
        [time]
        t_end = 1.0
        n_steps = 1
        [loads]
        dirichlet = [{ region = "xmin" }, { region = "xmax", components = ["x"], value = "1e-3 * t" }]
    """)
    (folder / "case.toml").write_text(text)
    case = load_case(folder / "case.toml")
    assert case.raw["material"]["library"] == str(folder / "plugins" / "libel.so")
    m = from_config(case.raw["material"])
    r = m.update(np.array([[1e-3, 0, 0, 0, 0, 0]]), m.initial_state(1), 0.0, 0.0, 1.0)
    lam, mu = E * NU / ((1 + NU) * (1 - 2 * NU)), E / (2 * (1 + NU))
    np.testing.assert_allclose(r.stress[0], [(lam + 2 * mu) * 1e-3, lam * 1e-3, lam * 1e-3, 0, 0, 0], rtol=1e-14)
    (folder / "case.toml").write_text(text.replace("plugins/libel.so", "plugins/nothere.so"))
    with pytest.raises(DdromError, match=r"material\.library: .*no such file .*plugins/nothere\.so"):
        load_case(folder / "case.toml")


# ------------------------------------------------------------------------------------------
# a UMAT written to the Abaqus manual's conventions, the driver's utility routines
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("thermal", [False, True])
def test_abaqus_style_umat_runs_unmodified_and_equals_builtin_j2(plugin_dir, thermal):
    """cmake/examples/j2_abaqus.f sets only the non-zero DDSDDE entries, rotates its strains
    with ROTSIG, takes the Mises stress from SINV, and matches the built-in J2 law."""
    path = lib(plugin_dir, "j2", "abaqus")
    cfg = {"law": "umat", "library": path, "props": [E, NU, SY, H], "nstatv": 13, "p_index": 12, "symmetric": True}
    if thermal:
        cfg.update(alpha=ALPHA, T_ref=T_REF)
    plug, ref = from_config(cfg), from_config(builtin_cfg("j2", thermal))
    n, steps = 200, 8
    eps, T = random_path(n, steps, seed=11)
    sp, sr, T_old = plug.initial_state(n), ref.initial_state(n), np.full(n, T_REF)
    for k in range(steps):
        rp = plug.update(eps[k], sp, T_old, T[k], 0.1)
        rr = ref.update(eps[k], sr, T_old, T[k], 0.1)
        assert np.abs(rp.stress - rr.stress).max() <= 1e-10 * np.abs(rr.stress).max(), k
        assert np.abs(rp.tangent - rr.tangent).max() <= 1e-10 * np.abs(rr.tangent).max(), k
        np.testing.assert_allclose(plug.cumulated_plastic_strain(rp.state), ref.cumulated_plastic_strain(rr.state),
                                   rtol=1e-10, atol=1e-13)
        # EPLAS (STATEV 7-12, engineering shears) is the built-in plastic strain
        epsp = voigt_to_mandel_strain(rp.state[:, 18:24])
        assert np.abs(epsp - rr.state[:, :6]).max() <= 1e-10 * max(np.abs(rr.state[:, :6]).max(), 1e-3)
        sp, sr, T_old = rp.state, rr.state, T[k]
    assert ref.cumulated_plastic_strain(sr).max() > 1e-3


def _batch(path: str, n: int, props, nstatv: int, dstran, ddsdde_fill=np.nan):
    """One raw ddrom_umat_batch call (ctypes) with DDSDDE pre-filled with ``ddsdde_fill``."""
    import ctypes

    from ddrom.materials.plugin import load_library

    lib_ = load_library(path)
    stran = np.zeros((n, 6))
    dstran = np.ascontiguousarray(dstran, dtype=float)
    stress = np.zeros((n, 6))
    statev = np.zeros((n, max(nstatv, 1)))
    D = np.full((n, 6, 6), ddsdde_fill)
    props = np.asarray(props, dtype=float)
    temp, dtemp, time = np.zeros(n), np.zeros(n), np.zeros(2)
    info, pnew = ctypes.c_int(0), ctypes.c_double(0.0)
    st = lib_.ddrom_umat_batch(n, stran.ctypes.data, dstran.ctypes.data, stress.ctypes.data, statev.ctypes.data,
                               nstatv, D.ctypes.data, props.ctypes.data, props.size, temp.ctypes.data,
                               dtemp.ctypes.data, None, None, 0, time.ctypes.data, 1.0, None, None, None, None, 1, 1,
                               b"M", ctypes.byref(pnew), ctypes.byref(info))
    return st, stress, D, info.value, pnew.value


def test_driver_zeroes_ddsdde_before_each_call(plugin_dir):
    """Garbage in DDSDDE (NaN here) never reaches a UMAT that sets only the non-zero entries."""
    n = 4
    dstran = np.tile([1e-4, -2e-4, 0.5e-4, 1e-4, 0.0, 2e-4], (n, 1))
    st, stress, D, info, pnew = _batch(lib(plugin_dir, "j2", "abaqus"), n, [E, NU, SY, H], 13, dstran)
    assert st == 0 and info == 0 and pnew >= 1.0 and np.all(np.isfinite(D))
    G, lam = E / (2 * (1 + NU)), E * NU / ((1 + NU) * (1 - 2 * NU))
    want = np.zeros((6, 6))
    want[:3, :3] = lam
    want[np.arange(3), np.arange(3)] += 2 * G
    want[np.arange(3, 6), np.arange(3, 6)] = G
    np.testing.assert_allclose(D, np.broadcast_to(want, (n, 6, 6)), rtol=1e-14)


def test_abaqus_utility_routines(plugin_dir):
    """ROTSIG, SINV, SPRINC, SPRIND with gfortran's linkage names, against numpy."""
    import ctypes

    lib_ = ctypes.CDLL(lib(plugin_dir, "elastic", "c"))
    P = ctypes.POINTER(ctypes.c_double)
    i3 = ctypes.c_int(3)

    def ptr(a):
        return a.ctypes.data_as(P)

    rng = np.random.default_rng(3)
    t = rng.normal(size=(3, 3))
    t = t + t.T
    sv = np.array([t[0, 0], t[1, 1], t[2, 2], t[0, 1], t[0, 2], t[1, 2]])          # stress (tensor shears)
    ev = sv * np.array([1, 1, 1, 2, 2, 2])                                          # strain (engineering)
    Q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    R = np.asfortranarray(Q)
    out = np.zeros(6)
    for vec, lstr in ((sv, 1), (ev, 2)):
        lib_.rotsig_(ptr(vec), ptr(R), ptr(out), ctypes.byref(ctypes.c_int(lstr)), ctypes.byref(i3),
                     ctypes.byref(i3))
        r = Q @ t @ Q.T
        w = 1 if lstr == 1 else 2
        np.testing.assert_allclose(out, [r[0, 0], r[1, 1], r[2, 2], w * r[0, 1], w * r[0, 2], w * r[1, 2]],
                                   rtol=1e-13, atol=1e-13)
    s1, s2 = ctypes.c_double(), ctypes.c_double()
    lib_.sinv_(ptr(sv), ctypes.byref(s1), ctypes.byref(s2), ctypes.byref(i3), ctypes.byref(i3))
    d = t - np.trace(t) / 3 * np.eye(3)
    assert abs(s1.value - np.trace(t) / 3) < 1e-14 and abs(s2.value - np.sqrt(1.5 * np.sum(d * d))) < 1e-13
    w, V = np.linalg.eigh(t)
    ps, an = np.zeros(3), np.zeros((3, 3), order="F")
    lib_.sprinc_(ptr(ev), ptr(ps), ctypes.byref(ctypes.c_int(2)), ctypes.byref(i3), ctypes.byref(i3))
    np.testing.assert_allclose(ps, w, rtol=1e-12, atol=1e-13)
    lib_.sprind_(ptr(sv), ptr(ps), an.ctypes.data_as(P), ctypes.byref(ctypes.c_int(1)), ctypes.byref(i3),
                 ctypes.byref(i3))
    np.testing.assert_allclose(ps, w, rtol=1e-12, atol=1e-13)
    for k in range(3):          # AN(K, :) is the unit direction of PS(K)
        np.testing.assert_allclose(t @ an[k], ps[k] * an[k], atol=1e-12)
        assert abs(np.linalg.norm(an[k]) - 1) < 1e-13


def test_xit_stops_with_the_plugins_message(plugin_dir):
    """Invalid properties: the Abaqus-style UMAT writes a message (STDB_ABQERR) and calls XIT;
    the update fails with that message, the element and the point (no process exit)."""
    from ddrom.materials import MaterialContext, MaterialError

    m = from_config({"law": "umat", "library": lib(plugin_dir, "j2", "abaqus"), "props": [E, 0.7, SY, H],
                     "nstatv": 13})
    n = 6
    ctx = MaterialContext(time=2.5, element=np.array([40, 40, 41, 41, 42, 42]), point=np.array([0, 1] * 3),
                          increment=3)
    with pytest.raises(MaterialError, match=r"stopped the run \(XIT\) at element 41, point 1 \(t = 2\.5, increment "
                                            r"3\):\nwarning: \(element 41, point 1\) UMAT J2: invalid properties "
                                            r"E = 200000, NU = 0\.7 at element 41, point 1\nerror: \(element 41, "
                                            r"point 1\) the UMAT called XIT") as exc:
        m.update(np.zeros((n, 6)), m.initial_state(n), 20.0, 20.0, 1.0, context=ctx)
    assert "ddrom_umat_batch" not in str(exc.value)
    # the plugin still works afterwards (XIT left the batch, not the process)
    ok = from_config({"law": "umat", "library": lib(plugin_dir, "j2", "abaqus"), "props": [E, NU, SY, H],
                      "nstatv": 13})
    r = ok.update(np.full((2, 6), 1e-4), ok.initial_state(2), 20.0, 20.0, 1.0)
    assert np.all(np.isfinite(r.stress))


# ------------------------------------------------------------------------------------------
# the context a UMAT receives in the HF solver and the replay; XIT and PNEWDT in a run
# ------------------------------------------------------------------------------------------
CONTEXT_UMAT = """
      SUBROUTINE UMAT(STRESS,STATEV,DDSDDE,SSE,SPD,SCD,
     1 RPL,DDSDDT,DRPLDE,DRPLDT,
     2 STRAN,DSTRAN,TIME,DTIME,TEMP,DTEMP,PREDEF,DPRED,CMNAME,
     3 NDI,NSHR,NTENS,NSTATV,PROPS,NPROPS,COORDS,DROT,PNEWDT,
     4 CELENT,DFGRD0,DFGRD1,NOEL,NPT,LAYER,KSPT,KSTEP,KINC)
      INCLUDE 'ABA_PARAM.INC'
      CHARACTER*80 CMNAME
      DIMENSION STRESS(NTENS),STATEV(NSTATV),DDSDDE(NTENS,NTENS),
     1 DSTRAN(NTENS),PROPS(NPROPS),TIME(2),COORDS(3),PREDEF(1),DPRED(1)
      DIMENSION INTV(2),REALV(1)
      CHARACTER*8 CHARV(1)
C     isotropic elasticity (PROPS(1) = E, PROPS(2) = NU), non-zero DDSDDE entries only;
C     records its context in STATEV(1..14); XIT past x = PROPS(3) from increment PROPS(4)
C     on; STDB_ABQERR error (LOP = -2) at element PROPS(5); cut-back request (PNEWDT)
C     where |DSTRAN(1)| > PROPS(6)
      G = PROPS(1)/(2.D0*(1.D0+PROPS(2)))
      ALAM = PROPS(1)*PROPS(2)/((1.D0+PROPS(2))*(1.D0-2.D0*PROPS(2)))
      DO I=1,NDI
        DO J=1,NDI
          DDSDDE(I,J)=ALAM
        END DO
        DDSDDE(I,I)=ALAM+2.D0*G
      END DO
      DO I=NDI+1,NTENS
        DDSDDE(I,I)=G
      END DO
      DO I=1,NTENS
        DO J=1,NTENS
          STRESS(I)=STRESS(I)+DDSDDE(I,J)*DSTRAN(J)
        END DO
      END DO
      STATEV(1)=TIME(1)
      STATEV(2)=TIME(2)
      STATEV(3)=DTIME
      STATEV(4)=COORDS(1)
      STATEV(5)=COORDS(2)
      STATEV(6)=COORDS(3)
      STATEV(7)=NOEL
      STATEV(8)=NPT
      STATEV(9)=KSTEP
      STATEV(10)=KINC
      STATEV(11)=TEMP
      STATEV(12)=DTEMP
      STATEV(13)=CELENT
      STATEV(14)=PREDEF(1)
      IF (COORDS(1).GT.PROPS(3) .AND. KINC.GE.INT(PROPS(4))) THEN
        INTV(1)=NOEL
        INTV(2)=KINC
        CALL STDB_ABQERR(-1,'context UMAT: stop at element %I in '//
     1   'increment %I',INTV,REALV,CHARV)
        CALL XIT
      END IF
      IF (NOEL.EQ.INT(PROPS(5)) .AND. NPT.EQ.1) THEN
        INTV(1)=NOEL
        CHARV(1)='SPECIAL '
        CALL STDB_ABQERR(-2,'context UMAT: element %I is %S',INTV,
     1   REALV,CHARV)
      END IF
      IF (NOEL.EQ.1 .AND. NPT.EQ.1) THEN
        CALL STDB_ABQERR(1,'context UMAT: hello from %S',INTV,REALV,
     1   CMNAME)
      END IF
      IF (ABS(DSTRAN(1)).GT.PROPS(6)) PNEWDT=0.5D0
      RETURN
      END
"""
NEVER = 1e30


@pytest.fixture(scope="session")
def context_plugin():
    """The context-recording UMAT, built once (rank 0) for every rank."""
    comm = MPI.COMM_WORLD
    why = _missing_tools() or (None if FORTRAN else "gfortran is not installed")
    if why:
        pytest.skip(f"cannot build a Fortran UMAT: {why}")
    out, err = None, None
    if comm.rank == 0:
        d = Path(tempfile.mkdtemp(prefix="ddrom-ctx-umat-"))
        try:
            (d / "ctx.f").write_text(CONTEXT_UMAT)
            out = str(build_plugins(d / "build", umat_source=d / "ctx.f", umat_name="ctx", examples=False)
                      / "libctx.so")
        except DdromError as exc:
            err = str(exc)
    out, err = comm.bcast((out, err), root=0)
    if err:
        pytest.fail(err)
    yield out
    comm.barrier()
    if comm.rank == 0:
        shutil.rmtree(Path(out).parents[1], ignore_errors=True)


def ctx_cfg(path: str, xit_x: float = NEVER, xit_inc: int = 0, err_el: int = -1, cut: float = NEVER) -> dict:
    return {"law": "umat", "library": path, "props": [E, NU, xit_x, xit_inc, err_el, cut], "nstatv": 14,
            "symmetric": True, "cmname": "STEEL"}


def _ctx_solver(material_cfg: dict, comm=MPI.COMM_WORLD, amplitude: float = 4e-3):
    from ddrom.hf.loads import Dirichlet, Loads
    from ddrom.hf.solver import HFSolver, SolverOptions
    from ddrom.mesh.generators import box
    from helpers import distributed

    dm = distributed(lambda: box(2.0, 1.0, 0.5, 5, 3, 2), comm)
    loads = Loads(
        dirichlet=[Dirichlet("xmin", (0,)), Dirichlet("ymin", (1,)), Dirichlet("zmin", (2,)),
                   Dirichlet("xmax", (0,), lambda x, y, z, t, **k: amplitude * t * (1 + 0.3 * y))],
        temperature=lambda x, y, z, t, **k: T_REF + 150 * x * t)
    opts = SolverOptions(rtol=1e-11, atol=1e-14, petsc_options={"ksp_rtol": 1e-13, "pc_type": "jacobi",
                                                                 "ksp_max_it": 5000})
    return dm, HFSolver(dm, from_config(material_cfg), loads, opts)


@pytest.mark.mpi
def test_hf_and_replay_give_the_umat_its_context(context_plugin, caplog):
    """TIME, DTIME, COORDS, NOEL, NPT, KSTEP, KINC, TEMP, DTEMP, CELENT as the UMAT sees them in
    the HF solver and in the replay of the HF displacements (1 and 3 ranks: NOEL is the
    natural cell id + 1 whatever the partition)."""
    import logging

    from ddrom.hf.replay import Replayer

    dm, s = _ctx_solver(ctx_cfg(context_plugin))
    ne, nq = dm.n_cells, dm.n_qp
    xq = dm.qp_coordinates().reshape(-1, 3)
    vol = dm.weights.sum(axis=1)
    noel = np.repeat(dm.cell_natural, nq) + 1
    npt = np.tile(np.arange(nq), ne) + 1
    st = s.initial_state()
    rep = Replayer(dm, s.material, s.loads.temperature, assembler=s.asm)
    rep.step(0.0, np.zeros((dm.n_owned, 3)))
    times = [0.5, 1.0]
    with caplog.at_level(logging.WARNING, logger="ddrom.materials"):
        for k, t in enumerate(times):
            T_old = st.T.ravel()
            st, info = s.step(st, t, k)
            rs = rep.step(t, st.owned_displacement(dm.n_owned), k)
            t_old = 0.0 if k == 0 else times[k - 1]
            for sv in (st.internal[:, 12:], rs.internal[:, 12:]):
                np.testing.assert_array_equal(sv[:, 0], t_old)
                np.testing.assert_array_equal(sv[:, 1], t_old)
                np.testing.assert_allclose(sv[:, 2], t - t_old, rtol=1e-15)
                np.testing.assert_allclose(sv[:, 3:6], xq, rtol=1e-14, atol=1e-15)
                np.testing.assert_array_equal(sv[:, 6], noel)
                np.testing.assert_array_equal(sv[:, 7], npt)
                np.testing.assert_array_equal(sv[:, 8], 1)
                np.testing.assert_array_equal(sv[:, 9], k + 1)
                np.testing.assert_allclose(sv[:, 10], T_old, rtol=1e-14)
                np.testing.assert_allclose(sv[:, 11], st.T.ravel() - T_old, rtol=1e-12, atol=1e-12)
                np.testing.assert_allclose(sv[:, 12], np.repeat(np.cbrt(vol), nq), rtol=1e-14)
                np.testing.assert_array_equal(sv[:, 13], 0.0)        # no predefined fields
            assert info.cutbacks == 0
    rep.close()
    # informational messages (STDB_ABQERR, LOP = 1) are logged, on the rank that has element 1
    has_1 = bool(np.any(dm.cell_natural == 0))
    assert any("info: (element 1, point 1) context UMAT: hello from STEEL" in r.message for r in caplog.records) \
        == has_1


@pytest.mark.mpi
def test_deferred_replay_failure_stops_every_rank_at_the_verdict(context_plugin):
    """Deferred replay steps (the enrichment's long replays): an XIT past x = 1.5 in the second
    increment (on some ranks only) raises nothing while replaying; the verdict raises the
    same CollectiveError with the plugin's message on every rank, none hangs; the failed
    rank's later steps do nothing; a replay without failure passes its verdict."""
    from ddrom.hf.replay import Replayer
    from ddrom.parallel import CollectiveError

    dm, s = _ctx_solver(ctx_cfg(context_plugin))
    st = s.initial_state()
    hist = []
    for k, t in enumerate((0.5, 1.0, 1.5)):
        st, _ = s.step(st, t, k)
        hist.append((t, st.owned_displacement(dm.n_owned)))
    _, bad = _ctx_solver(ctx_cfg(context_plugin, xit_x=1.5, xit_inc=2))
    for material, fails in ((s.material, False), (bad.material, True)):
        rep = Replayer(dm, material, s.loads.temperature, assembler=s.asm)
        rep.step(0.0, np.zeros((dm.n_owned, 3)))
        for k, (t, u) in enumerate(hist):
            eps = rep.asm.strains(rep._local(u)).reshape(dm.n_cells * dm.n_qp, 6)
            rep.step_strains(t, eps, k, defer=True)
        if fails:
            with pytest.raises(CollectiveError, match=r"material replay failed at step 1 \(t = 1\): .*XIT"):
                rep.verdict()
        else:
            rep.verdict()
            assert rep.state.increment == 3
        rep.close()


@pytest.mark.mpi
def test_xit_in_one_subdomain_stops_every_rank(context_plugin):
    """XIT at the points past x = 1.5 in the second increment (on some ranks only): every rank
    raises the same CollectiveError with the plugin's message, none hangs; an STDB_ABQERR
    error (LOP = -2) does the same after the batch."""
    from ddrom.parallel import CollectiveError

    dm, s = _ctx_solver(ctx_cfg(context_plugin, xit_x=1.5, xit_inc=2))
    st = s.initial_state()
    st, _ = s.step(st, 0.5, 0)
    with pytest.raises(CollectiveError, match=r"(?s)stopped the run \(XIT\) at element (\d+), point (\d) \(t = 0\.5, "
                                              r"increment 2\):\n.*warning: \(element \1, point \2\) context UMAT: "
                                              r"stop at element \1 in increment 2\nerror: .* the UMAT called XIT"):
        s.step(st, 1.0, 1)
    dm, s = _ctx_solver(ctx_cfg(context_plugin, err_el=17))
    # (already in the evaluation of the initial state, a zero increment: KINC = 0)
    with pytest.raises(CollectiveError, match=r"(?s)initial state \(t = 0\) failed: .* reported errors \(t = 0, "
                                              r"increment 0\):\n.*error: \(element 17, point 1\) context UMAT: "
                                              r"element 17 is SPECIAL"):
        s.initial_state()


@pytest.mark.mpi
def test_pnewdt_below_one_cuts_the_hf_step(context_plugin):
    """A UMAT asking for PNEWDT < 1 where the strain increment is large makes the HF solver
    cut the step until it is small enough; the (linear) result is the same."""
    amp = 4e-3
    dm, s = _ctx_solver(ctx_cfg(context_plugin, cut=2e-4), amplitude=amp)
    st, info = s.step(s.initial_state(), 1.0, 0)
    dm2, s2 = _ctx_solver(ctx_cfg(context_plugin), amplitude=amp)
    st2, info2 = s2.step(s2.initial_state(), 1.0, 0)
    assert info.cutbacks >= 2 and info2.cutbacks == 0, (info.cutbacks, info2.cutbacks)
    assert st.increment > st2.increment == 1
    from helpers import gather_natural

    comm = MPI.COMM_WORLD
    u = gather_natural(dm.natural_nodes, st.owned_displacement(dm.n_owned), comm)
    u2 = gather_natural(dm2.natural_nodes, st2.owned_displacement(dm2.n_owned), comm)
    np.testing.assert_allclose(u, u2, rtol=1e-9, atol=1e-12 * np.abs(u2).max())
