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
    if lang == "f" and not FORTRAN:
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
def _hf_case(material_cfg: dict, comm=MPI.COMM_WORLD):
    from ddrom.hf.loads import Dirichlet, Loads
    from ddrom.hf.solver import HFSolver, SolverOptions
    from ddrom.mesh.generators import box
    from helpers import distributed, gather_natural

    dm = distributed(lambda: box(2.0, 1.0, 0.5, 5, 3, 2), comm)
    loads = Loads(
        dirichlet=[Dirichlet("xmin", (0,)), Dirichlet("ymin", (1,)), Dirichlet("zmin", (2,)),
                   Dirichlet("xmax", (0,), lambda x, y, z, t, **k: 4e-3 * np.sin(np.pi * t / 2) * (1 + 0.3 * y))],
        temperature=lambda x, y, z, t, **k: T_REF + 150 * x * t)
    # Jacobi, not the default GAMG: GAMG's random eigenvalue estimates made CG stop on an
    # "indefinite PC" in some runs, and a cut-back changes a plastic result (path dependence)
    opts = SolverOptions(rtol=1e-11, atol=1e-14, petsc_options={"ksp_rtol": 1e-13, "pc_type": "jacobi",
                                                                 "ksp_max_it": 5000})
    s = HFSolver(dm, from_config(material_cfg), loads, opts)
    st = s.initial_state()
    cutbacks = 0
    for k, t in enumerate([0.5, 1.0, 1.5, 2.0, 2.5]):      # load, then unload past the peak at t = 1
        st, info = s.step(st, t, k)
        cutbacks += info.cutbacks
    u = gather_natural(dm.natural_nodes, st.owned_displacement(dm.n_owned), comm)
    p = gather_natural(dm.natural_cells, s.material.cumulated_plastic_strain(st.internal).reshape(dm.n_cells, -1),
                       comm)
    sig = gather_natural(dm.natural_cells, st.stress.reshape(dm.n_cells, -1), comm)
    return u, p, sig, cutbacks


@pytest.mark.mpi
@pytest.mark.parametrize("lang", ["c", "f"])
def test_hf_case_with_plugin_equals_builtin(plugin_dir, lang):
    u_p, p_p, s_p, c_p = _hf_case(umat_cfg(lib(plugin_dir, "j2", lang), "j2", True))
    u_b, p_b, s_b, c_b = _hf_case(builtin_cfg("j2", True))
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
    with pytest.raises(ReturnMappingError, match=r"PNEWDT < 1\) at 1 point"):
        mat.update(eps, r.state, 0.0, 0.0, 1.0)


def _cc(tmp_path: Path, name: str, code: str) -> Path:
    src = tmp_path / f"{name}.c"
    src.write_text(textwrap.dedent(code))
    out = tmp_path / f"lib{name}.so"
    cc = next(c for c in ("cc", "gcc", "clang") if shutil.which(c))
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    return out


def test_bad_libraries_give_clear_errors(tmp_path):
    why = _missing_tools()
    if why:
        pytest.skip(f"cannot build test libraries: {why}")
    cfg = {"law": "umat", "props": [1.0]}
    missing = tmp_path / "nope" / "libmissing.so"
    with pytest.raises(DdromError, match=r"parameter 'library': no such file .*libmissing\.so"):
        from_config({**cfg, "library": str(missing)})
    not_elf = tmp_path / "libtext.so"
    not_elf.write_text("not a library")
    with pytest.raises(DdromError, match=r"cannot load .*libtext\.so"):
        from_config({**cfg, "library": str(not_elf)})
    nosym = _cc(tmp_path, "nosym", "int something(void) { return 1; }\n")
    with pytest.raises(DdromError, match=r"libnosym\.so' has no symbol 'ddrom_umat_abi_version': not a ddrom"):
        from_config({**cfg, "library": str(nosym)})
    wrong = _cc(tmp_path, "wrongabi", """
        int ddrom_umat_abi_version(void) { return 999; }
        int ddrom_umat_batch(void) { return 0; }
    """)
    with pytest.raises(DdromError, match=rf"libwrongabi\.so' has plugin ABI version 999, this ddrom expects"
                                         rf" {ABI_VERSION}: rebuild"):
        from_config({**cfg, "library": str(wrong)})


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
