"""Verification of the parallel HF solver (run at 1 and 3 ranks)."""
from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from ddrom.hf.loads import Dirichlet, Loads, NodalForce, Pressure, Traction, BodyForce, Centrifugal
from ddrom.hf.solver import HFSolver, SolverOptions
from ddrom.materials import from_config
from ddrom.mesh.generators import box, hex_to_tet
from ddrom.parallel import DdromError
from helpers import distributed, distort, gather_natural

ELASTIC = {"law": "elastic", "E": 200e3, "nu": 0.3}
TIGHT = SolverOptions(rtol=1e-11, atol=1e-14, petsc_options={"ksp_rtol": 1e-13})


def _with_boundary(mesh):
    mesh.node_sets["boundary"] = np.unique(np.concatenate([mesh.nodes_of(n) for n in mesh.facet_sets]))
    return mesh


@pytest.mark.mpi
@pytest.mark.parametrize("cell_type,bbar", [("hexahedron", False), ("hexahedron", True), ("tetra", False)])
def test_patch_test_linear_field_is_exact(cell_type, bbar):
    """Impose u = G x + c on the boundary of a distorted mesh: the interior reproduces it."""
    G = np.array([[1e-3, 2e-4, -3e-4], [5e-4, -2e-3, 1e-4], [-1e-4, 3e-4, 1.5e-3]])
    c0 = np.array([1e-3, -2e-3, 5e-4])

    def make():
        m = box(1.0, 1.2, 0.8, 4, 3, 5)
        m = distort(m, 0.06, seed=3)
        if cell_type == "tetra":
            m = hex_to_tet(m)
        return _with_boundary(m)

    dm = distributed(make)
    comps = [Dirichlet("boundary", (i,), (lambda i: lambda x, y, z, t, **k: t * (G[i, 0] * x + G[i, 1] * y
                                                                                   + G[i, 2] * z + c0[i]))(i))
             for i in range(3)]
    s = HFSolver(dm, from_config(ELASTIC), Loads(dirichlet=comps),
                 SolverOptions(rtol=1e-12, atol=1e-14, bbar=bbar, petsc_options={"ksp_rtol": 1e-14}))
    st, info = s.step(s.initial_state(), 1.0)
    X = dm.coords[: dm.n_owned]
    exact = X @ G.T + c0
    err = MPI.COMM_WORLD.allreduce(np.abs(st.owned_displacement(dm.n_owned) - exact).max(), op=MPI.MAX)
    assert err < 1e-11
    # constant stress = C : G_sym everywhere
    eps = 0.5 * (G + G.T)
    E, nu = 200e3, 0.3
    lam, mu = E * nu / ((1 + nu) * (1 - 2 * nu)), E / (2 * (1 + nu))
    sig = lam * np.trace(eps) * np.eye(3) + 2 * mu * eps
    s2 = np.sqrt(2)
    mandel = np.array([sig[0, 0], sig[1, 1], sig[2, 2], s2 * sig[0, 1], s2 * sig[1, 2], s2 * sig[0, 2]])
    serr = MPI.COMM_WORLD.allreduce(np.abs(st.stress - mandel).max(), op=MPI.MAX)
    assert serr < 1e-7 * np.abs(mandel).max()


def _tip_deflection(nx, ny, P=1.0, cell_type="hexahedron"):
    L, h, E = 10.0, 1.0, 1000.0

    def make():
        m = box(L, h, h, nx, ny, ny)
        return hex_to_tet(m) if cell_type == "tetra" else m

    dm = distributed(make)
    loads = Loads(dirichlet=[Dirichlet("xmin")], traction=[Traction("xmax", (0.0, 0.0, -P / h**2))])
    s = HFSolver(dm, from_config({"law": "elastic", "E": E, "nu": 0.0}), loads, TIGHT)
    st, _ = s.step(s.initial_state(), 1.0)
    u = st.owned_displacement(dm.n_owned)
    tip = np.isclose(dm.coords[: dm.n_owned, 0], L)
    comm = MPI.COMM_WORLD
    return comm.allreduce(u[tip, 2].sum()) / comm.allreduce(int(tip.sum()))


@pytest.mark.mpi
def test_cantilever_converges_to_beam_theory():
    # Timoshenko: P L^3 / (3 E I) + P L / (k G A), nu = 0, k = 5/6
    L, h, E, P = 10.0, 1.0, 1000.0, 1.0
    ref = -(P * L**3 / (3 * E * h**4 / 12) + P * L / (5 / 6 * E / 2 * h * h))
    errs = [abs(_tip_deflection(nx, ny) / ref - 1) for nx, ny in [(10, 1), (20, 2), (40, 4)]]
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.02
    # The order of convergence of the trilinear hexahedron in bending is at least 1.
    assert errs[1] / errs[2] > 2.0


def _plastic_case(comm, partitioner="ptscotch"):
    mat = {"law": "chaboche", "E": 200e3, "nu": 0.3, "sigma_y": 200.0, "H": 2000.0, "C": 20e3,
           "gamma": 100.0, "K": 50.0, "N": 5.0, "alpha": 1.2e-5, "T_ref": 20.0}
    dm = distributed(lambda: box(2.0, 1.0, 0.5, 8, 5, 3), comm, partitioner)
    loads = Loads(
        dirichlet=[Dirichlet("xmin", (0,)), Dirichlet("ymin", (1,)), Dirichlet("zmin", (2,)),
                   Dirichlet("xmax", (0,), lambda x, y, z, t, **k: 4e-3 * np.sin(np.pi * t / 2) * (1 + 0.2 * y))],
        temperature=lambda x, y, z, t, **k: 20 + 300 * x * t)
    s = HFSolver(dm, from_config(mat), loads, TIGHT)
    st = s.initial_state()
    for k, t in enumerate([0.5, 1.0, 1.5, 2.0, 2.5]):
        st, _ = s.step(st, t, k)
    u = gather_natural(dm.natural_nodes, st.owned_displacement(dm.n_owned), comm)
    p = s.material.cumulated_plastic_strain(st.internal).reshape(dm.n_cells, -1)
    pn = gather_natural(dm.natural_cells, p, comm)
    return u, pn


@pytest.mark.mpi
def test_partition_invariance_plastic():
    world = MPI.COMM_WORLD
    u_all, p_all = _plastic_case(world)
    assert p_all.max() > 1e-3, "the case must be plastic"
    u_one, p_one = _plastic_case(MPI.COMM_SELF)
    assert np.abs(u_all - u_one).max() <= 1e-8 * np.abs(u_one).max()
    assert np.abs(p_all - p_one).max() <= 1e-8 * np.abs(p_one).max()
    if world.size >= 3:
        sub = world.Split(0 if world.rank < 2 else 1, world.rank)
        u_two, p_two = _plastic_case(sub, partitioner="rcb")
        assert np.abs(u_two - u_one).max() <= 1e-8 * np.abs(u_one).max()
        assert np.abs(p_two - p_one).max() <= 1e-8 * np.abs(p_one).max()
        sub.Free()


@pytest.mark.mpi
def test_pressure_and_body_loads_balance_reactions():
    """Total applied force equals the integral of the loads (pressure, traction, gravity, centrifugal)."""
    dm = distributed(lambda: box(1.0, 2.0, 0.5, 3, 4, 2))
    rho, g, w = 7.8e-9, 9810.0, 100.0
    loads = Loads(dirichlet=[Dirichlet("xmin")],
                  pressure=[Pressure("xmax", 5.0)],
                  traction=[Traction("ymax", (0.0, 0.0, 2.0))],
                  body=[BodyForce((0.0, 0.0, -rho * g))],
                  centrifugal=[Centrifugal(omega=w, density=rho, axis=(0, 0, 1), center=(0, 0, 0))])
    s = HFSolver(dm, from_config(ELASTIC), loads, TIGHT)
    f = s.sum_to_owned(s.external_force(1.0)).reshape(-1, 3)
    total = MPI.COMM_WORLD.allreduce(f.sum(axis=0))
    # pressure on x = 1 (area 1), outward normal +x: -5; traction on y=2 face (area 0.5): +1 in z;
    # gravity -rho g V (V = 1); centrifugal x-resultant rho w^2 * int x dV = rho w^2 * 0.5 * V
    np.testing.assert_allclose(total, [-5.0 + rho * w * w * 0.5, rho * w * w * 1.0, 1.0 - rho * g],
                               rtol=1e-12, atol=1e-12)


@pytest.mark.mpi
def test_nodal_forces_act_once_at_every_node_of_the_region():
    """A nodal force (*CLOAD) is the given vector at every node of the region, counted once
    whatever rank owns or ghosts the node; it may depend on x, y, z, t; the reactions balance it."""
    comm = MPI.COMM_WORLD
    dm = distributed(lambda: box(1.0, 2.0, 0.5, 3, 4, 2))
    loads = Loads(dirichlet=[Dirichlet("xmin")],
                  nodal=[NodalForce("xmax", (2.0, 0.0, lambda x, y, z, t: y * t))])
    s = HFSolver(dm, from_config(ELASTIC), loads, TIGHT)
    total = comm.allreduce(s.sum_to_owned(s.external_force(2.0)).reshape(-1, 3).sum(axis=0))
    # 5 x 3 nodes on x = 1; y = 0, 0.5, ..., 2 on 3 nodes each: sum y = 15
    np.testing.assert_allclose(total, [30.0, 0.0, 30.0], rtol=1e-13)
    st, _ = s.step(s.initial_state(), 2.0, 1)
    _, _, fint = s.force_residual(st.stress, np.zeros(3 * dm.n_owned))
    fixed = s.fixed[: 3 * dm.n_owned].reshape(-1, 3).any(axis=1)
    # the internal forces sum to zero: at the support they carry minus the load
    support = comm.allreduce(fint.reshape(-1, 3)[fixed].sum(axis=0))
    np.testing.assert_allclose(support, -total, rtol=1e-8, atol=1e-8)


@pytest.mark.mpi
def test_divergence_is_reported_on_every_rank():
    """Perfect plasticity pulled beyond the limit load: the Newton cannot converge."""
    dm = distributed(lambda: box(1.0, 1.0, 1.0, 2, 2, 2))
    mat = from_config({"law": "j2", "E": 200e3, "nu": 0.3, "sigma_y": 100.0, "H": 0.0, "C": 0.0})
    loads = Loads(dirichlet=[Dirichlet("xmin", (0,)), Dirichlet("ymin", (1,)), Dirichlet("zmin", (2,))],
                  traction=[Traction("xmax", (lambda t, **k: 300.0 * t, 0.0, 0.0))])
    s = HFSolver(dm, mat, loads, SolverOptions(max_iterations=8, max_cutbacks=2))
    with pytest.raises(DdromError, match=r"diverged at step 0 \(to t = 1; failing increment .* cut-backs\)"):
        s.step(s.initial_state(), 1.0, 0)


@pytest.mark.mpi
def test_unknown_region_and_no_dirichlet_are_errors():
    dm = distributed(lambda: box(1.0, 1.0, 1.0, 2, 2, 2))
    with pytest.raises(DdromError, match="unknown regions"):
        HFSolver(dm, from_config(ELASTIC), Loads(dirichlet=[Dirichlet("left")]))
    with pytest.raises(DdromError, match="rigid-body"):
        HFSolver(dm, from_config(ELASTIC), Loads(traction=[Traction("xmax", (1.0, 0, 0))]))


@pytest.mark.mpi
def test_newton_line_search_only_as_a_fallback_on_a_j2_cantilever():
    """A J2 cantilever loaded into plasticity over 5 steps: the default line search
    ("fallback") takes the plain Newton path -- the same iterations and answer as plain
    Newton -- where backtracking at every iteration ("always") needs many more."""
    J2 = {"law": "j2", "E": 200e3, "nu": 0.3, "sigma_y": 250.0, "H": 1000.0}
    dm = distributed(lambda: box(10.0, 1.0, 1.0, 20, 2, 2))
    loads = Loads(dirichlet=[Dirichlet("xmin", (0, 1, 2))],
                  traction=[Traction("xmax", (0.0, lambda t, **k: -8.0 * t, 0.0))])
    counts, tips = {}, {}
    for policy in ("never", "fallback", "always"):
        opts = SolverOptions(rtol=1e-10, atol=1e-14, line_search=policy, petsc_options={"ksp_rtol": 1e-12})
        s = HFSolver(dm, from_config(J2), loads, opts)
        st, n = s.initial_state(), 0
        for k in range(1, 6):
            st, info = s.step(st, k / 5)
            n += info.newton_iterations
        counts[policy] = n
        tips[policy] = MPI.COMM_WORLD.allreduce(float(np.abs(st.owned_displacement(dm.n_owned)).max()),
                                                op=MPI.MAX)
        p = s.material.cumulated_plastic_strain(st.internal)
        assert MPI.COMM_WORLD.allreduce(float(p.max()) if p.size else 0.0, op=MPI.MAX) > 1e-2  # plastic
    assert counts["fallback"] == counts["never"], counts        # measured: 16 and 16
    assert counts["always"] > 2 * counts["never"], counts       # measured: 94 (with cut-backs)
    assert tips["fallback"] == tips["never"], tips
    # a thermally loaded J2 box whose plain Newton 2-cycles (relative residual ~0.9 for 25
    # iterations, 5 cut-backs): the fallback backtracks there and needs no cut-back
    from helpers import thermal_j2_box

    thermal = {**J2, "alpha": 1.2e-5, "T_ref": 20.0, "H": 1500.0}
    cuts = {policy: thermal_j2_box(thermal, policy)[3] for policy in ("never", "fallback")}
    assert cuts["never"] > 0 and cuts["fallback"] == 0, cuts      # measured: 5 and 0
    with pytest.raises(DdromError, match="line_search 'sometimes'"):
        SolverOptions(line_search="sometimes")


@pytest.mark.mpi
@pytest.mark.parametrize("bbar", [False, True])
def test_chunked_kernels_equal_one_block(bbar):
    """Strains, internal forces and the matrix computed in blocks of a few cells (the
    default bounds the kernels' temporaries on large meshes; the test meshes fit in one
    block) equal one block over all cells to round-off, on every rank."""
    from petsc4py import PETSc

    from ddrom.hf.assembly import Assembler

    dm = distributed(lambda: distort(box(1.0, 0.6, 0.4, 6, 4, 3), 0.02), MPI.COMM_WORLD)
    rng = np.random.default_rng(7)
    ne, nq = dm.n_cells, dm.n_qp
    one, small = Assembler(dm, bbar=bbar, chunk=10 ** 9), Assembler(dm, bbar=bbar, chunk=5)
    u = rng.standard_normal(one.n_local_dofs)
    tangent = rng.standard_normal((ne, nq, 6, 6))
    eps = one.strains(u)
    assert np.allclose(small.strains(u), eps, rtol=0, atol=1e-13 * np.abs(eps).max())
    f = one.internal_force(eps)
    assert np.allclose(small.internal_force(eps), f, rtol=0, atol=1e-13 * np.abs(f).max())
    fixed = np.zeros(one.n_local_dofs, dtype=bool)
    fixed[::7] = True
    A1, A2 = one.create_matrix(), small.create_matrix()
    one.assemble_matrix(A1, tangent, fixed)
    small.assemble_matrix(A2, tangent, fixed)
    A2.axpy(-1.0, A1)
    assert A2.norm(PETSc.NormType.FROBENIUS) <= 1e-13 * A1.norm(PETSc.NormType.FROBENIUS)


@pytest.mark.mpi
@pytest.mark.parametrize("cell_type", ["hexahedron", "tetra"])
def test_gradients_computed_per_chunk_equal_stored_ones(cell_type):
    """The kernels compute the inverse Jacobians (from which they get the shape-function
    gradients) chunk by chunk, none kept for the subdomain: a cell gets the same bits in
    any selection of cells, hence the same strains, forces, matrices and B at selected
    points as with the inverse Jacobians kept (``store_gradients``); and the explicit 3x3
    inverse agrees with ``np.linalg.inv`` to round-off."""
    from petsc4py import PETSc

    from ddrom.hf.assembly import Assembler

    def make():
        m = distort(box(1.0, 0.6, 0.4, 6, 4, 3), 0.05, seed=2)
        return hex_to_tet(m) if cell_type == "tetra" else m

    dm = distributed(make, MPI.COMM_WORLD)
    ne, nq = dm.n_cells, dm.n_qp
    Ji, dN = dm.inverse_jacobians(), dm.gradients()
    assert Ji.shape == (3, 3, nq, ne) and dN.shape == (ne, nq, dm.cells.shape[1], 3)
    idx = np.array([ne - 1, 0, 2, 2])
    for sel in (slice(0, 5), slice(3, ne), slice(ne - 1, ne), idx):
        assert np.array_equal(dm.inverse_jacobians(sel), Ji[..., sel])
        assert np.array_equal(dm.gradients(sel), dN[sel])
    # against the general inverse
    dNr = dm.ref.dshape(dm.ref.qp)
    J = np.einsum("qka,ekb->eqba", dNr, dm.coords[dm.cells])
    inv = np.linalg.inv(J)                                              # (ne, nq, a, d)
    assert np.allclose(Ji, inv.transpose(2, 3, 1, 0), rtol=0, atol=1e-13 * np.abs(inv).max())
    ref = np.einsum("qka,eqab->eqkb", dNr, inv)
    assert np.allclose(dN, ref, rtol=0, atol=1e-13 * np.abs(ref).max())
    assert np.allclose(dm.weights, np.linalg.det(J) * dm.ref.qw, rtol=1e-13, atol=0)
    rng = np.random.default_rng(3)
    u = rng.standard_normal(3 * dm.n_local_nodes)
    tangent = rng.standard_normal((ne, nq, 6, 6))
    fixed = np.zeros(3 * dm.n_local_nodes, dtype=bool)
    fixed[::5] = True
    mats = []
    for store in (False, True):
        asm = Assembler(dm, chunk=4, store_gradients=store)
        eps = asm.strains(u)
        f = asm.internal_force(eps)
        qps = np.minimum([0, nq - 1, 1, 1], nq - 1)
        B = asm.b_at(idx, qps)
        assert (asm._jinv is not None) == store
        # B at selected points: the same bits as the chunks' B
        assert np.array_equal(B, np.concatenate([asm.b_matrices(sl) for sl in asm._chunks()])[idx, qps])
        A = asm.create_matrix()
        asm.assemble_matrix(A, tangent, fixed)
        mats.append((eps, f, B, A))
    (e1, f1, B1, A1), (e2, f2, B2, A2) = mats
    assert np.array_equal(e1, e2) and np.array_equal(f1, f2) and np.array_equal(B1, B2)
    A2.axpy(-1.0, A1)
    assert A2.norm(PETSc.NormType.INFINITY) == 0.0


@pytest.mark.mpi
def test_two_runs_in_one_process_are_bitwise_equal():
    """Repeatable run to run, also inside one process: the same mesh gets the same parts
    (Scotch's generator restarted per partition) and the matrix sums other ranks'
    contributions in rank order (PETSc's stash adds them in arrival order). Both differed
    in the last bits at 3 ranks before."""
    from petsc4py import PETSc

    from ddrom.hf.assembly import Assembler
    from helpers import thermal_j2_box

    comm = MPI.COMM_WORLD
    meshes = [distributed(lambda: box(1.0, 1.0, 1.0, 6, 6, 6), comm) for _ in range(2)]
    assert np.array_equal(meshes[0].cell_natural, meshes[1].cell_natural)
    asm = Assembler(meshes[0])
    tangent = np.random.default_rng(comm.rank).standard_normal((meshes[0].n_cells, meshes[0].n_qp, 6, 6))
    mats = [asm.create_matrix() for _ in range(4)]
    for A in mats:
        asm.assemble_matrix(A, tangent)
    for A in mats[1:]:
        A.axpy(-1.0, mats[0])
        assert A.norm(PETSc.NormType.INFINITY) == 0.0
    j2 = {"law": "j2", "E": 200e3, "nu": 0.3, "sigma_y": 200.0, "H": 2000.0}
    (u1, p1, s1, _), (u2, p2, s2, _) = thermal_j2_box(j2), thermal_j2_box(j2)
    assert np.array_equal(u1, u2) and np.array_equal(p1, p2) and np.array_equal(s1, s2)


@pytest.mark.mpi
@pytest.mark.parametrize("cell_type,bbar", [("hexahedron", False), ("hexahedron", True), ("tetra", False)])
def test_strains_and_forces_without_b_equal_the_b_matrix_formulas(cell_type, bbar):
    """Strains and internal forces are computed from the inverse Jacobians and the
    reference gradients dN/dxi, without forming B or dN/dx (several times faster); they
    equal B u and sum_q w B^T sigma with the B (or B-bar) matrices that the element
    stiffness uses, to round-off, for one field and for several at once."""
    from ddrom.hf.assembly import Assembler

    def make():
        m = distort(box(1.0, 0.6, 0.4, 6, 4, 3), 0.02)
        return hex_to_tet(m) if cell_type == "tetra" else m

    dm = distributed(make, MPI.COMM_WORLD)
    a = Assembler(dm, bbar=bbar, chunk=7)
    rng = np.random.default_rng(11)
    u = rng.standard_normal(a.n_local_dofs)
    U = rng.standard_normal((a.n_local_dofs, 3))
    B = np.concatenate([a.b_matrices(sl) for sl in a._chunks()])
    for field, spec in ((u, "eqij,ej->eqi"), (U, "eqij,ejm->eqim")):
        ref = np.einsum(spec, B, field[a.edofs])
        assert np.abs(a.strains(field) - ref).max() <= 1e-13 * np.abs(ref).max()
    sig = rng.standard_normal((dm.n_cells, dm.n_qp, 6))
    fe = np.einsum("eqij,eqi,eq->ej", B, sig, a.wdet)
    ref = np.bincount(a.edofs.ravel(), fe.ravel(), minlength=a.n_local_dofs)
    assert np.abs(a.internal_force(sig) - ref).max() <= 1e-13 * np.abs(ref).max()


@pytest.mark.mpi
@pytest.mark.parametrize("cell_type,bbar", [("hexahedron", False), ("hexahedron", True), ("tetra", False)])
def test_element_blocks_without_b_equal_b_transpose_d_b(cell_type, bbar):
    """The element stiffness is computed from dN/dx and the fourth-order tangent, straight
    in 3x3 node blocks, without forming B: it equals sum_q w B^T D B with the B (or B-bar)
    matrices to round-off, for a random non-symmetric tangent, block (a, b) column-major;
    and a chunk computed a few cells at a time (``kernel_block``) gives the same bits."""
    from ddrom.hf.assembly import Assembler

    def make():
        m = distort(box(1.0, 0.6, 0.4, 5, 4, 3), 0.05, seed=2)
        return hex_to_tet(m) if cell_type == "tetra" else m

    dm = distributed(make, MPI.COMM_WORLD)
    a = Assembler(dm, bbar=bbar, chunk=7)
    D = np.random.default_rng(5 + MPI.COMM_WORLD.rank).standard_normal((dm.n_cells, dm.n_qp, 6, 6))
    k = a.k
    for sl in a._chunks():
        B = a.b_matrices(sl)
        Ke = np.einsum("eqmi,eqmn,eqnj,eq->eij", B, D[sl], B, a.wdet[sl])
        ref = Ke.reshape(-1, k, 3, k, 3).transpose(0, 1, 3, 4, 2)       # [c, a, b, j, i]
        K = a.element_blocks(D[sl], sl)
        assert K.shape == ref.shape
        assert np.abs(K - ref).max() <= 1e-14 * np.abs(ref).max()
        a.kernel_block = 3                  # blocks of 3, 3 and the chunk's last cell
        assert np.array_equal(a.element_blocks(D[sl], sl), K)
        del a.kernel_block


@pytest.mark.mpi
@pytest.mark.parametrize("cell_type", ["hexahedron", "tetra"])
def test_blocks_written_into_petsc_arrays_equal_mat_set_values(cell_type):
    """The summed blocks are added straight into PETSc's local value arrays (diagonal and
    off-diagonal parts of an MPIAIJ) at positions computed from the pattern: the matrix is
    the one ``MatSetValuesBlocked`` builds, to the last bit, with Dirichlet rows, on every
    rank; and the direct path is the one taken."""
    from petsc4py import PETSc

    from ddrom.hf.assembly import Assembler, _local_values

    def make():
        m = distort(box(1.0, 0.6, 0.4, 6, 4, 3), 0.05, seed=2)
        return hex_to_tet(m) if cell_type == "tetra" else m

    dm = distributed(make, MPI.COMM_WORLD)
    a = Assembler(dm, chunk=7)
    D = np.random.default_rng(3 + MPI.COMM_WORLD.rank).standard_normal((dm.n_cells, dm.n_qp, 6, 6))
    fixed = np.zeros(a.n_local_dofs, dtype=bool)
    fixed[::5] = True
    A1, A2 = a.create_matrix(), a.create_matrix()
    with _local_values(A1, (int(a._nnz[0].sum()), int(a._nnz[1].sum()))) as values:
        assert values is not None
    a.assemble_matrix(A1, D, fixed)
    a.write_values_directly = False
    a.assemble_matrix(A2, D, fixed)
    assert A1.norm(PETSc.NormType.FROBENIUS) > 0
    A2.axpy(-1.0, A1)
    assert A2.norm(PETSc.NormType.INFINITY) == 0.0


@pytest.mark.mpi
@pytest.mark.parametrize("bbar", [False, True])
def test_matrix_times_u_is_the_internal_force_of_the_linearized_stress(bbar):
    """The assembled matrix against a computation that shares none of its scatter: with a
    random (non-symmetric) tangent D at every point, ``A u`` equals the summed internal
    force of ``D eps(u)`` on the free DOFs, and ``u`` on the Dirichlet ones, on every rank
    and whatever the partition (interface blocks summed by their owner)."""
    loads = Loads(dirichlet=[Dirichlet("xmin", (0, 1, 2)), Dirichlet("xmax", (1,))])
    dm = distributed(lambda: distort(box(1.0, 0.6, 0.4, 7, 5, 3), 0.02), MPI.COMM_WORLD)
    s = HFSolver(dm, from_config(ELASTIC), loads, SolverOptions(bbar=bbar))
    rng = np.random.default_rng(11 + MPI.COMM_WORLD.rank)
    tangent = rng.standard_normal((dm.n_cells, dm.n_qp, 6, 6))
    A = s.asm.create_matrix()
    s.asm.assemble_matrix(A, tangent, s.fixed)
    u_owned = rng.standard_normal(s.asm.n_owned_dofs)
    u = s.owned_to_local(u_owned)
    free = ~s.fixed
    stress = np.einsum("eqij,eqj->eqi", tangent, s.asm.strains(u * free))
    expected = s.sum_to_owned(s.asm.internal_force(stress))
    fixed_owned = s.fixed[: s.asm.n_owned_dofs]
    expected[fixed_owned] = u_owned[fixed_owned]
    x, y = A.createVecs()
    x.array[:] = u_owned
    A.mult(x, y)
    scale = MPI.COMM_WORLD.allreduce(float(np.abs(expected).max()), op=MPI.MAX)
    err = MPI.COMM_WORLD.allreduce(float(np.abs(y.array - expected).max()), op=MPI.MAX)
    assert MPI.COMM_WORLD.allreduce(int(fixed_owned.sum())) > 0
    assert err <= 1e-12 * scale


@pytest.mark.mpi
def test_a_material_failure_in_the_middle_of_a_matrix_assembly_cuts_the_step_back():
    """The matrix is assembled chunk by chunk inside the material update: a return-mapping
    failure on one rank after some chunks were added leaves the matrix reusable (the step
    is cut back on every rank and ends at the answer of an undisturbed run)."""
    from ddrom.hf.assembly import Assembler
    from ddrom.materials import ReturnMappingError

    comm = MPI.COMM_WORLD
    loads = Loads(dirichlet=[Dirichlet("xmin", (0, 1, 2)),
                             Dirichlet("xmax", (0,), lambda x, y, z, t, **k: 1e-3 * t * (1 + y))])

    class Flaky:
        def __init__(self, law):
            self.law, self.calls = law, 0

        def __getattr__(self, name):
            return getattr(self.law, name)

        def update(self, eps, *args, tangent=True, **kw):
            self.calls += tangent
            if tangent and self.calls == 3 and comm.rank == 0:     # mid-way through the first
                raise ReturnMappingError("test: no return mapping here")
            return self.law.update(eps, *args, tangent=tangent, **kw)

    def run(material):
        dm = distributed(lambda: box(1.0, 0.6, 0.4, 6, 4, 3), comm)
        s = HFSolver(dm, material, loads, TIGHT)
        s.asm = Assembler(dm, bbar=True, chunk=7)       # several chunks per update
        s.A = s.asm.create_matrix()
        s.A.setNearNullSpace(s.nullspace)
        st, info = s.step(s.initial_state(), 1.0, 1)
        return gather_natural(dm.natural_nodes, st.owned_displacement(dm.n_owned), comm), info

    flaky = Flaky(from_config(ELASTIC))
    u_ref, info_ref = run(from_config(ELASTIC))
    u, info = run(flaky)
    assert flaky.calls > 3 and info_ref.cutbacks == 0 and info.cutbacks >= 1
    assert np.allclose(u, u_ref, rtol=0, atol=1e-9 * np.abs(u_ref).max())


@pytest.mark.mpi
def test_one_matrix_per_solve_for_a_linear_law():
    """A linear law's residuals go without a tangent and its matrix comes from a second
    update only when a solve needs one: one assembly per Newton iteration (a linear step:
    one), not one per evaluation (the converged state's would be wasted)."""
    comm = MPI.COMM_WORLD
    loads = Loads(dirichlet=[Dirichlet("xmin", (0, 1, 2)),
                             Dirichlet("xmax", (0,), lambda x, y, z, t, **k: 1e-3 * t * (1 + y))])
    dm = distributed(lambda: box(1.0, 0.6, 0.4, 6, 4, 3), comm)
    s = HFSolver(dm, from_config(ELASTIC), loads, TIGHT)
    st = s.initial_state()
    for k in (1, 2):
        st, info = s.step(st, float(k), k)
        assert info.newton_iterations == 1
    assert s.timers.calls["matrix"] == 2


def _gamg_chaboche(comm, petsc_options):
    """hf_newton's problem on a small box (Chaboche, GMRES + GAMG), two plastic steps."""
    mat = {"law": "chaboche", "E": 200e3, "nu": 0.3, "sigma_y": 200.0, "H": 1000.0, "C": 40000.0, "gamma": 150.0}
    dm = distributed(lambda: box(1.0, 1.0, 1.0, 7, 7, 7), comm)
    loads = Loads(dirichlet=[Dirichlet("xmin", (0,)), Dirichlet("ymin", (1,)), Dirichlet("zmin", (2,)),
                             Dirichlet("xmax", (0,), lambda x, y, z, t, **k: t * 1.5e-3 * (1 + 0.3 * y))])
    s = HFSolver(dm, from_config(mat), loads,
                 SolverOptions(rtol=1e-10, atol=1e-14, petsc_options={"ksp_rtol": 1e-12, **petsc_options}))
    st, its = s.initial_state(), []
    for k in (1, 2):
        st, info = s.step(st, float(k), k)
        its.append((info.newton_iterations, info.ksp_iterations))
    u = gather_natural(dm.natural_nodes, st.owned_displacement(dm.n_owned), comm)
    return s, u, its


@pytest.mark.mpi
def test_gamg_product_data_released_after_each_set_up_changes_nothing_but_memory():
    """The solver frees what GAMG's coarse operators keep for a numeric-only P^T A P
    (``release_product_data``; ~1.3 KB per DOF of a rank in parallel): the next set-up forms
    them again, and the solution and the iteration counts are those of the kept data
    (``-ddrom_gamg_keep_products``)."""
    from ddrom.parallel.memory import release_product_data

    comm = MPI.COMM_WORLD
    s, u_rel, its_rel = _gamg_chaboche(comm, {})
    assert s._release_products and s.ksp.getPC().getType() == "gamg"
    assert release_product_data(s.ksp)       # found MatProductClear: the release is not a no-op
    s2, u_keep, its_keep = _gamg_chaboche(comm, {"ddrom_gamg_keep_products": True})
    assert not s2._release_products
    assert its_rel == its_keep
    assert np.abs(u_rel - u_keep).max() <= 1e-9 * np.abs(u_keep).max()
    # the default comes back for the next solver (the option is in the solver's defaults)
    s3 = HFSolver(s.dm, s.material, s.loads, SolverOptions())
    assert s3._release_products and s3._gmres_restart == 30


@pytest.mark.mpi
def test_gmres_basis_released_after_each_solve_keeps_the_restart():
    """GMRES's basis is freed after each solve by re-creating the method
    (``release_krylov_vectors``): its restart comes back (a restart of 5 changes the
    iterations, so equal counts with the basis kept show it), other GMRES options turn
    the release off."""
    from petsc4py import PETSc

    comm = MPI.COMM_WORLD
    _, _, its_30 = _gamg_chaboche(comm, {})
    try:
        s, u_rel, its_rel = _gamg_chaboche(comm, {"ksp_gmres_restart": 5})
        assert s._gmres_restart == 5
        _, u_keep, its_keep = _gamg_chaboche(comm, {"ksp_gmres_restart": 5, "ddrom_gamg_keep_products": True})
        assert its_rel == its_keep and its_rel != its_30
        assert np.abs(u_rel - u_keep).max() <= 1e-9 * np.abs(u_keep).max()
        s2, _, _ = _gamg_chaboche(comm, {"ksp_gmres_modifiedgramschmidt": True})
        assert s2._gmres_restart is None
    finally:        # not among the solver's defaults: they would stay for the next tests
        for k in ("ksp_gmres_restart", "ksp_gmres_modifiedgramschmidt"):
            PETSc.Options().delValue(k)


HYPRE = {"pc_type": "hypre", "pc_hypre_boomeramg_coarsen_type": "HMIS", "pc_hypre_boomeramg_interp_type": "ext+i",
         "pc_hypre_boomeramg_P_max": 4, "pc_hypre_boomeramg_agg_nl": 1, "pc_hypre_boomeramg_strong_threshold": 0.5}


@pytest.mark.mpi
def test_hypre_operator_converted_in_place_changes_nothing_but_memory():
    """With hypre the solver converts the operator in place for the set-up and the solve
    (hypre's copy is not made next to PETSc's) and makes a new AIJ for the next assembly,
    and frees the preconditioner after each solve: the same iterations and the same
    solution to round-off as with hypre's own copy (``-ddrom_hypre_inplace 0``; the
    operator's products are hypre's, not PETSc's), GAMG's solution to the
    solver's tolerance, and an AIJ matrix of the same pattern after each step."""
    from petsc4py import PETSc

    comm = MPI.COMM_WORLD
    try:
        s, u_ip, its_ip = _gamg_chaboche(comm, HYPRE)
        assert s._hypre_inplace and s.ksp.getPC().getType() == "hypre"
        assert s.A.getType() in ("seqaij", "mpiaij") and s.A.getBlockSize() == 3
        s2, u_copy, its_copy = _gamg_chaboche(comm, {**HYPRE, "ddrom_hypre_inplace": False})
        assert not s2._hypre_inplace
        assert its_ip == its_copy
        # the Krylov products are hypre's instead of PETSc's: the last bits differ
        assert np.abs(u_ip - u_copy).max() <= 1e-9 * np.abs(u_copy).max()
        assert s.A.getInfo()["nz_allocated"] == s2.A.getInfo()["nz_allocated"]
    finally:        # not among the solver's defaults: they would stay for the next tests
        for k in list(HYPRE) + ["ddrom_hypre_inplace"]:
            PETSc.Options().delValue(k)
    _, u_gamg, its_gamg = _gamg_chaboche(comm, {})
    assert [n for n, _ in its_ip] == [n for n, _ in its_gamg]
    assert np.abs(u_ip - u_gamg).max() <= 1e-8 * np.abs(u_gamg).max()


@pytest.mark.mpi
def test_integration_point_coordinates_are_kept_once():
    """The solver's load evaluations and the material contexts share one array of
    integration-point coordinates (two copies were kept: 119 B per DOF each)."""
    dm = distributed(lambda: box(1.0, 0.6, 0.4, 4, 3, 2), MPI.COMM_WORLD)
    s = HFSolver(dm, from_config(ELASTIC), Loads(dirichlet=[Dirichlet("xmin")]), SolverOptions())
    ctx = s.asm.material_context(0.0, 1)
    assert np.shares_memory(ctx.coords, s.xq) and ctx.coords.flags.c_contiguous
    assert np.array_equal(ctx.coords, dm.qp_coordinates().reshape(-1, 3))


def _viscoplastic_block(comm):
    """(material, mesh, loads) of a Chaboche block pulled at x = 2 with a y-dependent
    displacement: a step from t = 0.5 to 1 takes several Newton iterations."""
    mat = {"law": "chaboche", "E": 200e3, "nu": 0.3, "sigma_y": 200.0, "H": 2000.0, "C": 20e3,
           "gamma": 100.0, "K": 50.0, "N": 5.0}
    dm = distributed(lambda: box(2.0, 1.0, 0.5, 8, 5, 3), comm)
    loads = Loads(dirichlet=[Dirichlet("xmin", (0,)), Dirichlet("ymin", (1,)), Dirichlet("zmin", (2,)),
                             Dirichlet("xmax", (0,), lambda x, y, z, t, **k: 3e-3 * t * (1 + 0.2 * y))])
    return mat, dm, loads


@pytest.mark.mpi
def test_a_step_takes_its_own_residual_tolerance():
    """``step(..., rtol=)`` (an enrichment's HF step): Newton stops at that relative residual
    -- fewer iterations than the options' tolerance from the same start, the same answer to
    about that tolerance -- and the options' tolerance is untouched."""
    comm = MPI.COMM_WORLD
    mat, dm, loads = _viscoplastic_block(comm)
    s = HFSolver(dm, from_config(mat), loads, TIGHT)
    st0, _ = s.step(s.initial_state(), 0.5, 0)
    tight, i_tight = s.step(st0, 1.0, 1)
    loose, i_loose = s.step(st0, 1.0, 1, rtol=1e-4)
    assert s.options.rtol == TIGHT.rtol
    assert i_loose.residual <= 1e-4 and i_tight.residual <= TIGHT.rtol + 1e-12
    assert i_loose.newton_iterations < i_tight.newton_iterations
    assert i_loose.ksp_iterations < i_tight.ksp_iterations        # and its linear solves are inexact
    du = comm.allreduce(float(np.abs(loose.u - tight.u).max()), op=MPI.MAX)
    umax = comm.allreduce(float(np.abs(tight.u).max()), op=MPI.MAX)
    assert 0.0 < du <= 1e-2 * umax


def test_no_material_response_is_alive_during_a_linear_solve():
    """Newton drops an iterate's stresses and state once its matrix is assembled: no
    reference (the line search's accepted trial included) keeps a material response alive
    through the set-up and solve, the peak of a Newton iteration at 1M DOFs. Checked with
    weak references to every response the material updates return."""
    import gc
    import weakref

    comm = MPI.COMM_WORLD
    mat = {"law": "chaboche", "E": 200e3, "nu": 0.3, "sigma_y": 200.0, "H": 1000.0, "C": 40000.0, "gamma": 150.0}
    dm = distributed(lambda: box(1.0, 1.0, 1.0, 4, 4, 4), comm)
    loads = Loads(dirichlet=[Dirichlet("xmin", (0,)), Dirichlet("ymin", (1,)), Dirichlet("zmin", (2,)),
                             Dirichlet("xmax", (0,), lambda x, y, z, t, **k: t * 1.5e-3 * (1 + 0.3 * y))])
    s = HFSolver(dm, from_config(mat), loads, SolverOptions(rtol=1e-10, atol=1e-14))
    responses, alive = [], []
    evaluate, solve = s._evaluate, s._linear_solve

    def recording(*a, **kw):
        resp = evaluate(*a, **kw)
        responses.append(weakref.ref(resp))
        return resp

    def checking(*a, **kw):
        gc.collect()
        alive.append(sum(r() is not None for r in responses))
        return solve(*a, **kw)
    s._evaluate, s._linear_solve = recording, checking
    st = s.initial_state()
    st, info = s.step(st, 1.0, 1)
    assert info.newton_iterations >= 3 and len(alive) == info.newton_iterations
    assert alive == [0] * len(alive)


@pytest.mark.mpi
def test_element_dof_map_and_material_ids_are_int32():
    """The element DOF map and the material contexts' cell and point ids are int32 (half of
    int64's memory, ~60 B per DOF of a rank); the strains and forces gathered and summed
    through them are those of the int64 map to the last bit."""
    dm = distributed(lambda: box(1.0, 0.6, 0.4, 4, 3, 2), MPI.COMM_WORLD)
    s = HFSolver(dm, from_config(ELASTIC), Loads(dirichlet=[Dirichlet("xmin")]), SolverOptions())
    asm = s.asm
    ctx = asm.material_context(0.0, 1)
    assert asm.edofs.dtype == np.int32 and ctx.element.dtype == np.int32 and ctx.point.dtype == np.int32
    assert np.array_equal(ctx.element, np.repeat(dm.cell_natural, dm.n_qp))
    u = np.random.default_rng(MPI.COMM_WORLD.rank).standard_normal(asm.n_local_dofs)
    eps, f = asm.strains(u), asm.internal_force(np.random.default_rng(1).standard_normal((dm.n_cells, dm.n_qp, 6)))
    asm.edofs = asm.edofs.astype(np.int64)
    assert np.array_equal(eps, asm.strains(u))
    assert np.array_equal(f, asm.internal_force(np.random.default_rng(1).standard_normal((dm.n_cells, dm.n_qp, 6))))


@pytest.mark.mpi
def test_an_inexact_step_reuses_its_preconditioner():
    """``step(..., rtol=)`` (an enrichment's HF step): the later Newton iterations reuse the
    preconditioner of the first (``ddrom_inexact_reuse_pc``, default on), and the step
    converges to its tolerance with the same Newton iterations and the same answer to that
    tolerance as with a set-up per iteration (the option off)."""
    from dataclasses import replace

    comm = MPI.COMM_WORLD
    mat, dm, loads = _viscoplastic_block(comm)
    s = HFSolver(dm, from_config(mat), loads, TIGHT)
    assert s._inexact_reuse_pc
    st0, _ = s.step(s.initial_state(), 0.5, 0)
    lagged, i_lag = s.step(st0, 1.0, 1, rtol=1e-8)
    exact, i_exact = s.step(st0, 1.0, 1)                  # an HF run's step: never reused
    assert i_exact.pc_reused == 0
    assert i_lag.newton_iterations >= 2 and i_lag.pc_reused == i_lag.newton_iterations - 1
    off = replace(TIGHT, petsc_options={**TIGHT.petsc_options, "ddrom_inexact_reuse_pc": False})
    s2 = HFSolver(dm, from_config(mat), loads, off)
    assert not s2._inexact_reuse_pc
    assert HFSolver(dm, from_config(mat), loads, TIGHT)._inexact_reuse_pc      # the default again
    st0b, _ = s2.step(s2.initial_state(), 0.5, 0)
    fresh, i_fresh = s2.step(st0b, 1.0, 1, rtol=1e-8)
    assert i_fresh.pc_reused == 0 and i_fresh.newton_iterations == i_lag.newton_iterations
    assert i_lag.residual <= 1e-8 and i_fresh.residual <= 1e-8
    umax = comm.allreduce(float(np.abs(exact.u).max()), op=MPI.MAX)
    for other in (fresh, exact):
        du = comm.allreduce(float(np.abs(lagged.u - other.u).max()), op=MPI.MAX)
        assert du <= 1e-6 * umax
