"""An independent solver's results through ``ddrom import``: Debian's dolfinx (0.5) solves a
small parametrized linear-elastic problem, writes XDMF with its own ``XDMFFile`` (nodes in
dolfinx's order, the displacement and a DG0 stress as two temporal collections), the set
is imported by file-name pattern, a ROM is built, and its prediction for an unseen
parameter must equal dolfinx's own answer to 1e-6 (the load enters linearly, so the
two-mode ROM is exact up to round-off).

Both discretizations are the standard displacement formulation with trilinear hexahedra
(dolfinx Q1 vector Lagrange; ddrom hex8 with ``element_technology = "full"``, no B-bar) on
the same box, so the fields agree to round-off: 2x2x2 Gauss integrates the Q1 stiffness
of a box exactly, as does dolfinx's estimated quadrature.

The dolfinx data are generated on rank 0 alone (``MPI.COMM_SELF``), so they are the
same for every number of ranks."""
from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest
from mpi4py import MPI

import ddrom  # noqa: F401

from helpers import gather_natural

COMM = MPI.COMM_WORLD

try:
    import dolfinx  # noqa: F401
    import ufl  # noqa: F401
    HAVE_DOLFINX = True
except Exception as _exc:  # noqa: BLE001 - any import failure means "not usable here"
    HAVE_DOLFINX = False
    _WHY = f"dolfinx is not importable ({type(_exc).__name__}: {_exc}); install Debian's python3-dolfinx"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not HAVE_DOLFINX, reason=_WHY if not HAVE_DOLFINX else "")]

L, NX, NY, NZ = (2.0, 1.0, 1.0), 4, 2, 2
E, NU = 200e3, 0.3
TIMES = [1.0 / 3.0, 2.0 / 3.0, 1.0]
TRAIN = [(10.0, 0.0), (0.0, 10.0), (10.0, 10.0)]
TEST = (7.0, -4.0)

CASE = f"""
[case]
name = "dfx"

[mesh]
generator = "box"
args = {{ lx = {L[0]}, ly = {L[1]}, lz = {L[2]}, nx = {NX}, ny = {NY}, nz = {NZ} }}

[material]
law = "elastic"
E = {E}
nu = {NU}

[parameters]
Fx = {{ min = -20.0, max = 20.0 }}
Fy = {{ min = -20.0, max = 20.0 }}

[time]
times = {TIMES!r}

[loads]
dirichlet = [{{ region = "xmin" }}]
traction = [{{ region = "xmax", vector = ["Fx * t", "Fy * t", 0.0] }}]

[solver]
element_technology = "full"

[rom]
pod_tol = 1e-8
ecm_tol = 1e-10

[training]
values = [{", ".join(f"{{ Fx = {a}, Fy = {b} }}" for a, b in TRAIN)}]

[test]
values = [{{ Fx = {TEST[0]}, Fy = {TEST[1]} }}]
"""


def dolfinx_solve(path: str | None, Fx: float, Fy: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """Solve with dolfinx on COMM_SELF; write u and the DG0 stress to ``path`` (XDMF) if given.

    Returns dolfinx's geometry (its node order) and the displacement at each time.
    """
    import ufl
    from dolfinx import fem, io, mesh
    from petsc4py import PETSc

    comm = MPI.COMM_SELF
    msh = mesh.create_box(comm, [np.zeros(3), np.array(L)], [NX, NY, NZ], cell_type=mesh.CellType.hexahedron)
    V = fem.VectorFunctionSpace(msh, ("Lagrange", 1))
    W = fem.TensorFunctionSpace(msh, ("DG", 0))
    mu, lmbda = E / (2 * (1 + NU)), E * NU / ((1 + NU) * (1 - 2 * NU))

    def eps(v):
        return ufl.sym(ufl.grad(v))

    def sigma(v):
        return 2 * mu * eps(v) + lmbda * ufl.tr(eps(v)) * ufl.Identity(3)

    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    left = mesh.locate_entities_boundary(msh, 2, lambda x: np.isclose(x[0], 0.0))
    right = mesh.locate_entities_boundary(msh, 2, lambda x: np.isclose(x[0], L[0]))
    tags = mesh.meshtags(msh, 2, right, np.ones(len(right), dtype=np.int32))
    ds = ufl.Measure("ds", domain=msh, subdomain_data=tags)
    T = fem.Constant(msh, PETSc.ScalarType((0.0, 0.0, 0.0)))
    bc = fem.dirichletbc(np.zeros(3, dtype=PETSc.ScalarType), fem.locate_dofs_topological(V, 2, left), V)
    problem = fem.petsc.LinearProblem(ufl.inner(sigma(u), eps(v)) * ufl.dx, ufl.dot(T, v) * ds(1), bcs=[bc],
                                      petsc_options={"ksp_type": "preonly", "pc_type": "lu"})
    sig = fem.Function(W)
    sig.name = "sigma"
    out = []
    f = io.XDMFFile(comm, path, "w") if path else None
    if f:
        f.write_mesh(msh)
    for t in TIMES:
        T.value[:] = (Fx * t, Fy * t, 0.0)
        uh = problem.solve()
        uh.name = "u"
        out.append(uh.x.array.reshape(-1, 3).copy())
        if f:
            # DG0 at the cell midpoint = the cell average: the Q1 stress on a box cell is multilinear
            sig.interpolate(fem.Expression(sigma(uh), W.element.interpolation_points()))
            f.write_function(uh, t)
            f.write_function(sig, t)
    if f:
        f.close()
    # P1 dofs and geometry nodes coincide for a degree-1 mesh; map dof -> coordinates
    x = V.tabulate_dof_coordinates()
    return x, out


@pytest.fixture
def shared_dir():
    d = COMM.bcast(tempfile.mkdtemp(prefix="ddrom_dfx_") if COMM.rank == 0 else None, root=0)
    yield d
    COMM.Barrier()
    if COMM.rank == 0:
        shutil.rmtree(d, ignore_errors=True)


def _natural(x: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """dolfinx values at coordinates x -> the box generator's natural node order."""
    from scipy.spatial import cKDTree

    from ddrom.mesh.generators import generate

    pts = generate("box", lx=L[0], ly=L[1], lz=L[2], nx=NX, ny=NY, nz=NZ).points
    d, j = cKDTree(x).query(pts)
    assert d.max() < 1e-12 and len(np.unique(j)) == len(pts)
    return vals[j]


@pytest.mark.mpi
def test_dolfinx_set_imported_rom_predicts_unseen_parameter(shared_dir):
    from ddrom.workflow.build import build_mesh, load_case_collectively
    from ddrom.cli.main import main
    from ddrom.workflow.hf import store_path
    from ddrom.workflow.rom import build_rom, reconstruct_fields, run_rom
    from ddrom.io.store import SnapshotStore

    ext = os.path.join(shared_dir, "dolfinx")
    case_path = os.path.join(shared_dir, "dfx.toml")
    ref = None
    if COMM.rank == 0:
        os.makedirs(ext)
        with open(case_path, "w") as f:
            f.write(CASE)
        for fx, fy in TRAIN:
            dolfinx_solve(os.path.join(ext, f"run_Fx{fx:g}_Fy{fy:g}.xdmf"), fx, fy)
        x, us = dolfinx_solve(None, *TEST)
        ref = [_natural(x, u) for u in us]
        # the files really are in another node order than ddrom's natural one
        assert not np.allclose(_natural(x, x), x)
    ref = COMM.bcast(ref, root=0)
    COMM.Barrier()

    json_out = os.path.join(shared_dir, "import.json")
    code = main(["import", case_path, "--pattern", os.path.join(ext, "run_Fx{Fx}_Fy{Fy}.xdmf"),
                 "--field", "u", "--stress-field", "sigma", "--quiet", "--json", json_out])
    assert code == 0
    import json

    summary = COMM.bcast(json.load(open(json_out)) if COMM.rank == 0 else None, root=0)
    assert summary["finalized"] and len(summary["simulations"]) == 3
    names = sorted(s["simulation"] for s in summary["simulations"])
    assert names == ["train_000", "train_001", "train_002"]
    for s in summary["simulations"]:
        assert s["node_match"] == "coordinates" and s["prepended_zero_step"]
        cmp = s["stress_comparison"]
        assert cmp["center"] == "cell"
        # dolfinx's DG0 stress = the cell average of the replayed stress (same element, exact quadrature)
        assert cmp["max_relative"] < 1e-10 and cmp["rms_relative"] < 1e-10, cmp
    if COMM.rank == 0:
        print("dolfinx stress vs replay:", [s["stress_comparison"]["max_relative"]
                                           for s in summary["simulations"]])

    case = load_case_collectively(case_path, COMM)
    dm = build_mesh(case, COMM)
    # the imported training displacements are dolfinx's, in ddrom's natural order
    st = SnapshotStore.open(store_path(case, "training"), COMM, mode="r", dmesh=dm)
    if COMM.rank == 0:
        xs, us = dolfinx_solve(None, *TRAIN[2])
        tr2 = [_natural(xs, u) for u in us]
    tr2 = COMM.bcast(tr2 if COMM.rank == 0 else None, root=0)
    for k in range(1, len(TIMES) + 1):
        u = gather_natural(dm.natural_nodes, st.read_displacement("train_002", k, dm), COMM)
        # (two dolfinx solves of the same problem differ at round-off: 1e-22 vs 0 at clamped nodes)
        assert np.abs(u - tr2[k - 1]).max() <= 1e-12 * np.abs(tr2[k - 1]).max()
    st.close()

    build_rom(case_path, COMM)
    res = run_rom(case_path, COMM, [{"Fx": TEST[0], "Fy": TEST[1]}])
    reconstruct_fields(case, COMM, res.runs, res.model)
    name = res.runs[0].name
    rf = SnapshotStore.open(os.path.join(str(case.output_dir), "rom_fields.h5"), COMM, mode="r", dmesh=dm)
    errs = []
    for k in range(1, len(TIMES) + 1):
        u = gather_natural(dm.natural_nodes, rf.read_displacement(name, k, dm), COMM)
        errs.append(float(np.abs(u - ref[k - 1]).max() / np.abs(ref[k - 1]).max()))
    rf.close()
    # the same reconstruction exported as VTU + PVD (reconstruct_fields formats), read back with meshio
    reconstruct_fields(case, COMM, res.runs, res.model, formats=("xdmf", "vtu"))
    if COMM.rank == 0:
        import xml.etree.ElementTree as ET

        import meshio

        folder = os.path.join(str(case.output_dir), "rom_fields_vtu")
        ds = list(ET.parse(os.path.join(folder, f"{name}.pvd")).getroot().iter("DataSet"))
        assert [float(d.get("timestep")) for d in ds] == [0.0] + TIMES
        for k in range(1, len(TIMES) + 1):
            u = meshio.read(os.path.join(folder, ds[k].get("file"))).point_data["displacement"]
            assert np.abs(u - ref[k - 1]).max() <= 1e-6 * np.abs(ref[k - 1]).max()
    if COMM.rank == 0:
        print(f"ROM vs dolfinx at Fx={TEST[0]}, Fy={TEST[1]}: max relative error per step {errs}")
    assert max(errs) <= 1e-6, errs


@pytest.mark.mpi
def test_dolfinx_vtkfile_series_is_read(shared_dir):
    """dolfinx's own VTKFile output (VTU version 2.2, degree-1 Lagrange hexahedra, a .pvd of
    .pvtu files listing each piece twice, ghost cells flagged in parallel), written by
    dolfinx on all ranks (one piece per rank), is read by the importers: the displacement
    is the interpolated linear field at every case node (exact: P1 holds it), and the cell
    mean of the nodal tensor field is its value at the cell centroid, for any rank count."""
    from dolfinx import fem, io, mesh

    from ddrom.io.importers import DisplacementSeries
    from ddrom.mesh.generators import generate
    from helpers import distributed

    A = np.array([[1e-3, 2e-4, -3e-4], [5e-4, -1e-3, 4e-4], [-2e-4, 3e-4, 6e-4]])

    def field(x, t):                     # a linear field, x as (3, n) the dolfinx way
        return t * (A @ x)

    msh = mesh.create_box(COMM, [np.zeros(3), np.array(L)], [NX, NY, NZ], cell_type=mesh.CellType.hexahedron)
    V = fem.VectorFunctionSpace(msh, ("Lagrange", 1))
    W = fem.TensorFunctionSpace(msh, ("Lagrange", 1))
    u, s = fem.Function(V, name="u"), fem.Function(W, name="sigma")
    path = os.path.join(shared_dir, "vtk", "u.pvd")
    times = [0.5, 1.0]
    with io.VTKFile(COMM, path, "w") as f:
        for t in times:
            u.interpolate(lambda x: field(x, t))
            # sigma_ij = t (x_i + 2 x_j) (not symmetric: the reader symmetrizes 9 components)
            s.interpolate(lambda x: t * np.stack([x[i] + 2 * x[j] for i in range(3) for j in range(3)]))
            f.write_function([u, s], t)
    COMM.Barrier()
    if COMM.rank == 0:
        head = open(os.path.join(shared_dir, "vtk", "u_p0_000000.vtu")).read(300)
        assert 'version="2.2"' in head      # what meshio refuses
    dm = distributed(lambda: generate("box", lx=L[0], ly=L[1], lz=L[2], nx=NX, ny=NY, nz=NZ), COMM)
    src = DisplacementSeries(path, dm, field="u", stress_field="sigma")
    try:
        assert src.kind == "pieces" and src.n_pieces == COMM.size and src.stress_center == "point"
        np.testing.assert_array_equal(src.times, times)
        x = dm.coords[: dm.n_owned]
        cc = dm.coords[dm.cells].mean(axis=1)
        for k, t in enumerate(times):
            np.testing.assert_allclose(src.displacement(k), field(x.T, t).T, rtol=0, atol=1e-15)
            want = t * np.stack([cc[:, i] + 2 * cc[:, j] for i in range(3) for j in range(3)], axis=1)
            from ddrom.io.importers import to_mandel

            np.testing.assert_allclose(src.stress_cells(k), to_mandel(want), rtol=1e-14, atol=1e-14)
    finally:
        src.close()
