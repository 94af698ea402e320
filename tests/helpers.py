"""Shared helpers for tests: identical data for every number of ranks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from mpi4py import MPI

import ddrom  # noqa: F401  (environment for petsc4py/h5py)
from ddrom.mesh.scatter import distribute


def load_benchmark(name: str):
    """The module of ``benchmarks/<name>.py`` (benchmarks are scripts, not a package; their
    folder goes on ``sys.path`` for the helpers they import, e.g. ``_rom_case``)."""
    import importlib.util
    import sys

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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


def flip_byte(path: str, dataset: str, coord: tuple[int, ...], at: int = 16) -> None:
    """Flip one byte inside the chunk of ``dataset`` that holds element ``coord`` (serial)."""
    import h5py

    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info_by_coord(coord)
    assert info.size > at + 4
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + at)
        b = fh.read(1)
        fh.seek(info.byte_offset + at)
        fh.write(bytes([b[0] ^ 0x5A]))


def flip_attribute_byte(path: str, text: str) -> None:
    """Flip one byte of an attribute's text stored in the file (its first occurrence; serial)."""
    data = open(path, "rb").read()
    at = data.index(text.encode())
    with open(path, "r+b") as fh:
        fh.seek(at)
        fh.write(bytes([data[at] ^ 0x01]))


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


# ---------------------------------------------------------------- shared case files
#: A small thermo-viscoplastic box whose training is imported from files (test_import*).
IMPORT_CASE = """
[case]
name = "{name}"

[mesh]
generator = "box"
args = {{ lx = 1.0, ly = 1.0, lz = 1.0, nx = 3, ny = 2, nz = 2 }}

[material]
law = "chaboche"
E = {{ T = [20.0, 800.0], value = [200e3, 150e3] }}
nu = 0.3
alpha = 1.2e-5
T_ref = 20.0
sigma_y = {{ T = [20.0, 800.0], value = [200.0, 120.0] }}
H = 1000.0
C = 20e3
gamma = 100.0
K = 150.0
N = 5.0

[parameters]
u_max = {{ min = 0.001, max = 0.01, default = 0.005 }}
T_max = {{ min = 20.0, max = 600.0, default = 300.0 }}

[time]
t_end = 3.0
n_steps = 6

[loads]
dirichlet = [
  {{ region = "xmin", components = ["x"] }},
  {{ region = "ymin", components = ["y"] }},
  {{ region = "zmin", components = ["z"] }},
  {{ region = "xmax", components = ["x"], value = "u_max * (ramp(t, 1) - ramp(t - 2, 1))" }},
]

[temperature]
expression = "20 + (T_max - 20) * ramp(t, 1) * (0.8 + 0.2 * x)"
T_ref = 20.0

# the import tests compare the replayed internal variables with the HF run's
[output]
store_state = true

[training]
values = [{{ u_max = 0.004, T_max = 100.0 }}, {{ u_max = 0.008, T_max = 500.0 }}]
"""
IMPORT_BOX = dict(lx=1.0, ly=1.0, lz=1.0, nx=3, ny=2, nz=2)


def write_import_case(d: str, name: str, comm=MPI.COMM_WORLD) -> str:
    """IMPORT_CASE named ``name`` in folder ``d`` (rank 0 writes; every rank gets the path)."""
    import os

    path = os.path.join(d, f"{name}.toml")
    if comm.rank == 0:
        with open(path, "w") as f:
            f.write(IMPORT_CASE.format(name=name))
    comm.Barrier()
    return path


def import_box_mesh(**kw):
    """The serial mesh of IMPORT_CASE (keyword arguments override the box's)."""
    from ddrom.mesh.generators import generate

    return generate("box", **{**IMPORT_BOX, **kw})


def all_ok(ok: bool, msg: str, comm=MPI.COMM_WORLD) -> None:
    """Collective assertion: fails on every rank with the first failing rank's message."""
    bad = [m for m in comm.allgather(None if ok else msg) if m]
    assert not bad, bad[0]


def tiny_case_text() -> str:
    """cases/tiny.toml."""
    from pathlib import Path

    return (Path(__file__).resolve().parents[1] / "cases" / "tiny.toml").read_text()


def write_case(tmp, text: str, name: str = "case.toml"):
    """Write a case file's text into folder ``tmp``; returns its path."""
    from pathlib import Path

    p = Path(tmp) / name
    p.write_text(text)
    return p


# ---------------------------------------------------------------- clustering data
def weighted_gram(S: np.ndarray, w: np.ndarray) -> np.ndarray:
    return S.T @ (w[:, None] * S)


def regimes_data(seed: int = 0, n: int = 80, n_regimes: int = 3, sims_per_regime: int = 4,
                 steps: int = 6, eps: float = 0.1):
    """Snapshots that are scaled copies of a few directions: the distinct-regimes case.

    Regime r lives in span{d_r, P_r} (3-D, mutually orthogonal across regimes): each
    snapshot is ``A_sim * t/T * (d_r + eps P_r xi_t)``; the simulation amplitudes
    A_sim span four orders of magnitude (1e-2 .. 1e2). Returns S (n, m), the
    simulation of each column, the regime of each column, the regime of each sim.
    """
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, 3 * n_regimes)))
    amps = 10.0 ** rng.uniform(-2, 2, n_regimes * sims_per_regime)
    cols, sims, reg = [], [], []
    s = 0
    for r in range(n_regimes):
        d, P = Q[:, 3 * r], Q[:, 3 * r + 1:3 * r + 3]
        for _ in range(sims_per_regime):
            for t in range(1, steps + 1):
                cols.append(amps[s] * (t / steps) * (d + eps * P @ rng.standard_normal(2)))
                sims.append(s)
                reg.append(r)
            s += 1
    reg = np.array(reg)
    sims = np.array(sims)
    return np.array(cols).T, sims, reg, reg[np.unique(sims, return_index=True)[1]]


def hot_spot_data(n: int = 300, s: int = 12, steps: int = 4, width: float = 0.08):
    """Simulations of a mechanical load then a moving hot spot: a continuum of regimes.

    Simulation a: ``10**logS_a min(t, 2)/2 u_mech + max(t - 2, 0)/2 50 f(phi_a)`` with
    ``f(phi)`` a Gaussian of width ``width`` centred at ``0.5 + 0.3 cos(phi)`` (on [0, 1]),
    ``phi_a = 2 pi a / s`` and amplitudes ``logS_a`` scrambled over the positions (two
    decades). The subspace depends on phi only, through cos(phi). Returns S (n, s steps),
    the simulation of each column, phi and logS per simulation.
    """
    x = np.linspace(0.0, 1.0, n)
    phis = np.arange(s) * 2.0 * np.pi / s
    logS = 2.0 * ((5 * np.arange(s)) % s) / (s - 1)
    umech = np.sin(np.pi * x)
    cols, sims = [], []
    for a in range(s):
        spot = np.exp(-((x - 0.5 - 0.3 * np.cos(phis[a])) / width) ** 2)
        for t in range(1, steps + 1):
            cols.append(10 ** logS[a] * min(t, 2) / 2 * umech + max(t - 2, 0) / 2 * 50.0 * spot)
            sims.append(a)
    return np.array(cols).T, np.array(sims), phis, logS


# ----------------------------------------------------------- a case with two regimes
#: A bar heated by a hot spot at position P along it and pulled by a traction A: the thermal
#: displacement's shape depends on P (two groups of training positions, near each end), not
#: on A. Elastic, 3 steps: the HF sweep takes seconds.
REGIMES_CASE = """
[case]
name = "{name}"

[mesh]
generator = "box"
args = {{ lx = 4.0, ly = 1.0, lz = 1.0, nx = 12, ny = 2, nz = 2 }}

[material]
law = "elastic"
E = 200e3
nu = 0.3
alpha = 1.2e-5
T_ref = 20.0

[parameters]
P = {{ min = 0.0, max = 4.0, default = 2.0, description = "position of the hot spot" }}
A = {{ min = 1.0, max = 100.0, default = 10.0, scale = "log" }}

[time]
times = [1.0, 2.0, 3.0]

[loads]
dirichlet = [{{ region = "xmin" }}]
traction = [{{ region = "xmax", vector = ["A * ramp(t, 1)", 0.0, 0.0] }}]

[temperature]
expression = "20 + 300 * clip(t - 1, 0, 1) * exp(-((x - P) / 0.4)**2)"

[solver]
newton_rtol = 1e-10
petsc_options = {{ ksp_rtol = 1e-12 }}

[rom]
pod_tol = 1e-8
ecm_tol = 1e-8
n_clusters = 2
{extra_rom}

[training]
values = [
  {{ P = 0.4, A = 3.0 }}, {{ P = 0.7, A = 50.0 }}, {{ P = 1.0, A = 10.0 }},
  {{ P = 3.0, A = 80.0 }}, {{ P = 3.3, A = 2.0 }}, {{ P = 3.6, A = 20.0 }},
]

[test]
values = [{{ P = 0.7, A = 30.0 }}, {{ P = 2.0, A = 10.0 }}, {{ P = 1.1, A = 10.0 }}]
"""


def write_regimes_case(folder, name: str = "regimes", extra_rom: str = "", comm=MPI.COMM_WORLD) -> str:
    """REGIMES_CASE in ``folder`` (rank 0 writes; every rank gets the path)."""
    from pathlib import Path

    path = Path(folder) / f"{name}.toml"
    if comm.rank == 0:
        path.write_text(REGIMES_CASE.format(name=name, extra_rom=extra_rom))
    comm.Barrier()
    return str(path)


#: A small plate with a hole (mirror-symmetric: near-ties for the ECM and Gappy points), Chaboche
#: law, 4 training and 1 test point of 6 steps: the fault drills (test_faults) and the
#: reproducibility of `ddrom offline` across rank counts (test_reproducible).
PLATE_CASE = """
[case]
name = "faults"

[mesh]
generator = "plate_with_hole"
args = { width = 40.0, height = 20.0, thickness = 2.0, radius = 2.5, n_around = 32, n_radial = 4, n_thick = 1 }

[mesh.regions]
left_mid = "near(x, -20) and near(y, 0)"

[material]
law = "chaboche"
E = { T = [20.0, 800.0], value = [200e3, 150e3] }
nu = 0.3
alpha = 1.4e-5
T_ref = 20.0
sigma_y = { T = [20.0, 800.0], value = [300.0, 200.0] }
H = 1000.0
C = 50e3
gamma = 300.0
K = 150.0
N = 7.0

[parameters]
T_max = { min = 500.0, max = 800.0, default = 650.0 }
S_max = { min = 100.0, max = 140.0, default = 120.0 }

[time]
t_end = 20.0
n_steps = 6

[loads]
dirichlet = [
  { region = "left", components = ["x"] },
  { region = "left_mid", components = ["y"] },
  { region = "back", components = ["z"] },
]
traction = [{ region = "right", vector = ["S_max * tri(t, 20)", 0.0, 0.0] }]

[temperature]
expression = "20 + (T_max - 20) * ramp(t, 5) * (0.9 + 0.1 * exp(-(x / 8)**2))"

[rom]
pod_tol = 1e-6
ecm_tol = 1e-6

[training]
grid = { T_max = [500.0, 800.0], S_max = [100.0, 140.0] }

[test]
values = [{ T_max = 725.0, S_max = 130.0 }]
"""


def thermal_j2_box(material, line_search: str = "fallback", comm=MPI.COMM_WORLD):
    """A box loaded into plasticity by a prescribed stretch and a heating that grows with x,
    loaded then unloaded past its peak at t = 1 over 5 steps; ``material`` is a law config
    or a Material. Returns (u, p, stress) in natural order on every rank and the cut-backs.

    Jacobi, not the default GAMG: GAMG's random eigenvalue estimates made CG stop on an
    "indefinite PC" in some runs, and a cut-back changes a plastic result (path dependence).
    """
    from ddrom.hf.loads import Dirichlet, Loads
    from ddrom.hf.solver import HFSolver, SolverOptions
    from ddrom.materials import from_config
    from ddrom.mesh.generators import box

    dm = distributed(lambda: box(2.0, 1.0, 0.5, 5, 3, 2), comm)
    loads = Loads(
        dirichlet=[Dirichlet("xmin", (0,)), Dirichlet("ymin", (1,)), Dirichlet("zmin", (2,)),
                   Dirichlet("xmax", (0,), lambda x, y, z, t, **k: 4e-3 * np.sin(np.pi * t / 2) * (1 + 0.3 * y))],
        temperature=lambda x, y, z, t, **k: 20.0 + 150 * x * t)
    opts = SolverOptions(rtol=1e-11, atol=1e-14, line_search=line_search,
                         petsc_options={"ksp_rtol": 1e-13, "pc_type": "jacobi", "ksp_max_it": 5000})
    s = HFSolver(dm, from_config(material) if isinstance(material, dict) else material, loads, opts)
    st = s.initial_state()
    cutbacks = 0
    for k, t in enumerate([0.5, 1.0, 1.5, 2.0, 2.5]):
        st, info = s.step(st, t, k)
        cutbacks += info.cutbacks
    u = gather_natural(dm.natural_nodes, st.owned_displacement(dm.n_owned), comm)
    p = gather_natural(dm.natural_cells, s.material.cumulated_plastic_strain(st.internal).reshape(dm.n_cells, -1),
                       comm)
    sig = gather_natural(dm.natural_cells, st.stress.reshape(dm.n_cells, -1), comm)
    return u, p, sig, cutbacks


# ----------------------------------------------------------- a bar under traction and heating
#: A bar clamped at x = 0, pulled and bent by a traction A on x = 4 while heated along x; the
#: material is one of :data:`ELASTIC_LAW`, :data:`PLASTIC_LAW` (test_rom, test_store_pipeline).
BAR_CASE = """
[case]
name = "{name}"

[mesh]
generator = "box"
args = {{ lx = 4.0, ly = 1.0, lz = 1.0, nx = 8, ny = 2, nz = 2 }}

[material]
{material}

[parameters]
A = {{ min = 0.5, max = 2.0, default = 1.0 }}

[time]
t_end = 2.0
n_steps = 4

[loads]
dirichlet = [
  {{ region = "xmin", components = ["x", "y", "z"] }},
]
traction = [
  {{ region = "xmax", vector = ["{sx} * A * tri(t, 2)", 0.0, "-{sz} * A * ramp(t, 1)"] }},
]

[temperature]
expression = "20 + 100 * x * ramp(t, 1)"

[solver]
newton_rtol = 1e-11
petsc_options = {{ ksp_rtol = 1e-12 }}

[rom]
pod_tol = {pod_tol}
ecm_tol = {ecm_tol}
{extra_rom}

[training]
values = [{training}]
{test}"""
ELASTIC_LAW = 'law = "elastic"\nE = 200e3\nnu = 0.3\nalpha = 1.2e-5\nT_ref = 20.0'
PLASTIC_LAW = ('law = "chaboche"\nE = 200e3\nnu = 0.3\nsigma_y = 120.0\nH = 2000.0\nC = 20e3\ngamma = 100.0\n'
               'K = 80.0\nN = 5.0\nalpha = 1.2e-5\nT_ref = 20.0')


def write_bar_case(tmp, comm, name: str, material: str, sx=40.0, sz=2.0, pod_tol=1e-10, ecm_tol=1e-10,
                   training=(0.5, 2.0), test=(1.3,), extra_rom="") -> str:
    """:data:`BAR_CASE` written as ``tmp/<name>.toml`` on rank 0; no ``[test]`` section when
    ``test`` is empty."""
    path = Path(tmp) / f"{name}.toml"
    if comm.rank == 0:
        tr = ", ".join(f"{{ A = {a} }}" for a in training)
        te = ("\n[test]\nvalues = [" + ", ".join(f"{{ A = {a} }}" for a in test) + "]\n") if test else ""
        path.write_text(BAR_CASE.format(name=name, material=material, sx=sx, sz=sz, pod_tol=pod_tol,
                                        ecm_tol=ecm_tol, training=tr, test=te, extra_rom=extra_rom))
    comm.Barrier()
    return str(path)
