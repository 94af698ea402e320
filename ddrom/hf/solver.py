"""Parallel high-fidelity solver: quasi-static Newton-Raphson with the consistent tangent.

One time step solves r(u) = f_int(sigma(u)) - f_ext(t) = 0 on the free DOFs, the
Dirichlet DOFs being set to their values at the end of the step beforehand (so the
Newton corrections vanish there). Each linear system is solved by a PETSc KSP (CG or
GMRES with GAMG and the rigid-body near-null space by default; every knob from the
options database). A backtracking line search guards each Newton update; a step that
does not converge is cut into halves, up to ``max_cutbacks`` times, before the solver
gives up with a message naming the step, the iteration and the residual.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ddrom.hf.assembly import Assembler
from ddrom.hf.loads import Loads, evaluate
from ddrom.hf.stepping import CutbacksExhausted, LineSearch, NewtonOptions, NotConverged, advance
from ddrom.materials import Material, ReturnMappingError, update_in_chunks
from ddrom.mesh.distributed import DistributedMesh
from ddrom.parallel import (CollectiveError, DdromError, Timers, as_mpi, as_petsc, describe_exception,
                            raise_collective)
from ddrom.parallel.memory import release_free_heap, release_hypre, release_krylov_vectors, release_product_data


@dataclass
class SolverOptions(NewtonOptions):
    """HF options. Convergence: ||r_free|| <= rtol * max(||f_ext||, ||f_int||) + atol."""

    bbar: bool = True
    petsc_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class State:
    """The converged state at time ``t`` on this rank."""

    t: float
    u: np.ndarray          # (3 * n_local_nodes,) owned then ghost DOFs
    stress: np.ndarray     # (ne, nq, 6)
    internal: np.ndarray   # (ne * nq, n_state)
    T: np.ndarray          # (ne, nq) temperature
    increment: int = 0     # increments converged since the start (KINC of the next one - 1)

    def owned_displacement(self, n_owned: int) -> np.ndarray:
        return self.u[: 3 * n_owned].reshape(-1, 3)


@dataclass
class StepInfo:
    newton_iterations: int = 0
    ksp_iterations: int = 0
    cutbacks: int = 0
    line_search_steps: int = 0     # Newton updates shortened by the line search
    residual: float = 0.0
    pc_reused: int = 0             # linear solves with the step's earlier preconditioner (inexact)


# Defaults written into the options database unless the user (command line or case) set them.
_DEFAULT_PETSC = {
    "pc_type": "gamg",
    "pc_gamg_reuse_interpolation": "true",
    "ksp_rtol": "1e-10",
    "ksp_max_it": "2000",
    # ddrom's own: keep what GAMG's coarse operators hold to recompute P^T A P numerically
    # only (faster set-ups, ~1.3 KB more per DOF of a rank in parallel) and GMRES's basis
    # across set-ups; see ddrom.parallel.memory.release_product_data, release_krylov_vectors
    "ddrom_gamg_keep_products": "false",
    # ddrom's own: an inexact Newton (a step with its own tolerance: an enrichment's HF step)
    # keeps the preconditioner of the step's first iteration for its later ones (HFSolver.
    # _inexact_solve); "false": a set-up per iteration, as an HF run does
    "ddrom_inexact_reuse_pc": "true",
}
# Not a default, read when set (command line or a case's petsc_options):
# ``ddrom_hypre_inplace`` (default true): with ``pc_type = hypre`` the operator is converted in
# place into hypre's format for each set-up and solve instead of being copied by hypre (the
# memory-lean configuration: benchmarks/README.md, "hypre instead of GAMG").


class _PCLag:
    """The preconditioner of one inexact Newton step: whether its later solves may reuse it
    (:meth:`HFSolver._inexact_solve`). The decisions use Krylov iteration counts, the same on
    every rank."""

    #: A lagged solve taking more than this many times the iterations of the solve that set
    #: the preconditioner up makes the next solve set it up again.
    GROWTH = 1.5

    def __init__(self) -> None:
        self.ready = False
        self.base = 0

    def set_up(self, its: int) -> None:
        self.ready, self.base = True, max(int(its), 1)

    def solved(self, its: int) -> None:
        if its > self.GROWTH * self.base:
            self.ready = False


class HFSolver:
    """Quasi-static small-strain solver on a :class:`DistributedMesh`.

    Objects (matrix with its exact pattern, KSP, vectors, geometry) are created once
    and reused for every step and every simulation of a sweep.
    """

    def __init__(self, dmesh: DistributedMesh, material: Material, loads: Loads,
                 options: SolverOptions | None = None, timers: Timers | None = None):
        from petsc4py import PETSc

        self.dm = dmesh
        self.comm = dmesh.comm
        self.material = material
        self.options = options or SolverOptions()
        self.timers = timers or Timers()
        self.asm = Assembler(dmesh, bbar=self.options.bbar)
        self.xq = self.asm.qp_coordinates              # shared with the material contexts
        self.A = self.asm.create_matrix()
        self.x = self.A.createVecRight()
        self.b = self.A.createVecLeft()
        self.gvec = dmesh.create_vector(3)
        self._setup_ksp(PETSc)
        self.set_loads(loads)

    # ----------------------------------------------------------------- set-up
    def _setup_ksp(self, PETSc) -> None:
        opts = PETSc.Options()
        defaults = dict(_DEFAULT_PETSC)
        defaults["ksp_type"] = "cg" if self.material.symmetric_tangent else "gmres"
        for k, v in {**defaults, **{k.lstrip("-"): v for k, v in self.options.petsc_options.items()}}.items():
            user_set = opts.hasName(k) and k not in self._case_set
            if not user_set:
                opts.setValue(k, str(v).lower() if isinstance(v, bool) else str(v))
                self._case_set.add(k)
        coords = PETSc.Vec().createMPI((3 * self.dm.n_owned, 3 * self.dm.n_nodes_global), bsize=3,
                                       comm=as_petsc(self.comm))
        coords.array[:] = self.dm.coords[: self.dm.n_owned].ravel()
        self.nullspace = PETSc.NullSpace().createRigidBody(coords)
        self.A.setNearNullSpace(self.nullspace)
        self.ksp = PETSc.KSP().create(comm=as_petsc(self.comm))
        self.ksp.setOperators(self.A)
        self.ksp.setFromOptions()
        self._release_products = not opts.getBool("ddrom_gamg_keep_products", False)
        self._hypre_inplace = opts.getBool("ddrom_hypre_inplace", True)
        self._inexact_reuse_pc = opts.getBool("ddrom_inexact_reuse_pc", True)
        # GMRES's basis is freed after each solve (release_krylov_vectors) when nothing but
        # its restart was configured (the rest would be lost by re-creating the method)
        gmres_opts = {k for k in opts.getAll() if k.startswith("ksp_gmres_")} - {"ksp_gmres_restart"}
        self._gmres_restart = (opts.getInt("ksp_gmres_restart", 30)
                               if self._release_products and not gmres_opts else None)

    _case_set: set[str] = set()

    def set_loads(self, loads: Loads) -> None:
        """Use new loads (a new parameter of a sweep): only the load data change."""
        dm = self.dm
        # Region names are known to every rank (empty sets included): a collective decision.
        unknown = sorted(r for r in loads.all_regions() if r not in dm.region_names())
        if unknown:
            raise CollectiveError(f"loads refer to unknown regions {unknown}; the mesh has {dm.region_names()}")
        self.loads = loads
        fixed = np.zeros(3 * dm.n_local_nodes, dtype=bool)
        self._dirichlet = []
        for d in loads.dirichlet:
            nodes = dm.region_nodes(d.region)
            for c in d.components:
                dofs = 3 * nodes + int(c)
                fixed[dofs] = True
                self._dirichlet.append((dofs, nodes, d.value))
        self.fixed = fixed
        nfixed = as_mpi(self.comm).allreduce(int(fixed[: 3 * dm.n_owned].sum()))
        if nfixed == 0:
            raise CollectiveError("no Dirichlet condition: the problem has rigid-body motions")
        self._facets = {name: dm.facet_geometry(name) for name in loads.boundary_regions()}
        # nodal forces act on the owned nodes only: a ghost's force is its owner's (the local
        # contributions are summed over ranks, so adding it on both would count it twice)
        self._nodal = []
        for nf in loads.nodal:
            nodes = dm.region_nodes(nf.region)
            self._nodal.append((nodes[nodes < dm.n_owned], nf.vector))

    # ------------------------------------------------------------- evaluators
    def temperature(self, t: float) -> np.ndarray:
        x = self.xq
        return evaluate(self.loads.temperature, x.shape[:2], x=x[..., 0], y=x[..., 1], z=x[..., 2], t=t)

    def dirichlet_values(self, u: np.ndarray, t: float) -> None:
        """Set the Dirichlet DOFs of the local vector ``u`` to their values at time t."""
        X = self.dm.coords
        for dofs, nodes, value in self._dirichlet:
            x = X[nodes]
            u[dofs] = evaluate(value, (len(nodes),), x=x[:, 0], y=x[:, 1], z=x[:, 2], t=t)

    def external_force(self, t: float) -> np.ndarray:
        """Local (owned+ghost) contributions of f_ext(t)."""
        f = np.zeros(self.asm.n_local_dofs)
        L = self.loads
        for p in L.pressure:
            nodes, N, xq, nw = self._facets[p.region]
            val = evaluate(p.value, xq.shape[:2], x=xq[..., 0], y=xq[..., 1], z=xq[..., 2], t=t)
            f += self.asm.surface_load(nodes, N, -val[..., None] * nw)
        for tr in L.traction:
            nodes, N, xq, nw = self._facets[tr.region]
            dA = np.linalg.norm(nw, axis=-1)
            vec = np.stack([evaluate(c, xq.shape[:2], x=xq[..., 0], y=xq[..., 1], z=xq[..., 2], t=t)
                            for c in tr.vector], axis=-1)
            f += self.asm.surface_load(nodes, N, vec * dA[..., None])
        X = self.dm.coords
        for nodes, vector in self._nodal:
            x = X[nodes]
            for j, c in enumerate(vector):
                f[3 * nodes + j] += evaluate(c, (len(nodes),), x=x[:, 0], y=x[:, 1], z=x[:, 2], t=t)
        x = self.xq
        body = np.zeros(x.shape)
        for b in L.body:
            body += np.stack([evaluate(c, x.shape[:2], x=x[..., 0], y=x[..., 1], z=x[..., 2], t=t)
                              for c in b.vector], axis=-1)
        for cf in L.centrifugal:
            body += cf.force(x, t)
        if L.body or L.centrifugal:
            f += self.asm.volume_load(body)
        return f

    # ------------------------------------------------------------ parallel ops
    def sum_to_owned(self, local: np.ndarray) -> np.ndarray:
        """Sum local contributions over ranks; returns the owned entries (and updates ghosts)."""
        from petsc4py import PETSc

        g = self.gvec
        with g.localForm() as lf:
            lf.array[:] = local
        g.ghostUpdate(PETSc.InsertMode.ADD_VALUES, PETSc.ScatterMode.REVERSE)
        return g.array.copy()

    def owned_to_local(self, owned: np.ndarray) -> np.ndarray:
        from petsc4py import PETSc

        g = self.gvec
        g.array[:] = owned
        g.ghostUpdate(PETSc.InsertMode.INSERT_VALUES, PETSc.ScatterMode.FORWARD)
        with g.localForm() as lf:
            return lf.array.copy()

    def _norm(self, owned: np.ndarray) -> float:
        return math.sqrt(as_mpi(self.comm).allreduce(float(owned @ owned)))

    # ------------------------------------------------------------------- state
    def initial_state(self, t0: float = 0.0) -> State:
        """Zero displacement and internal variables, stresses of the thermal state at t0
        (computed, not assumed zero, so that a non-reference initial temperature is consistent)."""
        ne, nq = self.dm.n_cells, self.dm.n_qp
        u = np.zeros(self.asm.n_local_dofs)
        T = np.array(self.temperature(t0), dtype=float)
        resp, msg = None, None
        where = f"material update of the initial state (t = {t0:.6g})"
        try:        # a zero increment at t0 (KINC = 0 for a UMAT); a plugin may fail on one rank only
            internal = self.material.initial_state(ne * nq)
            resp = update_in_chunks(self.material, np.zeros((ne * nq, 6)), internal, T.ravel(), T.ravel(), 0.0,
                                    tangent=False, context=self.asm.material_context(t0, 0))
        except DdromError as exc:
            msg = f"{where} failed: {exc}"
        except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt, ... on this rank only
            msg = describe_exception(exc, where)
        raise_collective(self.comm, msg)
        return State(t0, u, resp.stress.reshape(ne, nq, 6), resp.state, T)

    def _evaluate(self, u: np.ndarray, old: State, T: np.ndarray, dt: float, tangent: bool):
        """Material update at all points; collective verdict so all ranks agree.

        With ``tangent``, each block of points' tangent is assembled into ``self.A`` as soon
        as the material returns it, and the response carries no tangent: the tangent of a
        whole subdomain (~770 B per DOF on hexahedra) never exists. ``self.A`` is then the
        matrix of ``u`` (the last state evaluated with a tangent).

        A :class:`ReturnMappingError` (or a non-finite stress) on any rank is a
        :class:`NotConverged` on every rank (the step is cut); any other material error
        (a UMAT's XIT, ...) is a :class:`CollectiveError` with that rank's message on every
        rank (a smaller step would not help).
        """
        ne, nq = self.dm.n_cells, self.dm.n_qp
        eps = self.asm.strains(u).reshape(ne * nq, 6)
        resp, msg, fatal = None, None, None
        ctx = self.asm.material_context(old.t, old.increment + 1)
        acc = self.asm.matrix_assembly(self.A, self.fixed) if tangent else None
        matrix_seconds = 0.0

        def assemble(points: slice, tan: np.ndarray) -> None:
            nonlocal matrix_seconds
            t0 = time.perf_counter()
            acc.add(slice(points.start // nq, points.stop // nq), tan.reshape(-1, nq, 6, 6))
            matrix_seconds += time.perf_counter() - t0
        try:
            with self.timers("constitutive"):
                resp = update_in_chunks(self.material, eps, old.internal, old.T.ravel(), T.ravel(), dt,
                                        tangent=tangent, context=ctx, chunk=self.asm.chunk * nq,
                                        on_tangent=assemble if tangent else None)
            if not np.all(np.isfinite(resp.stress)):
                msg = "non-finite stress"
        except ReturnMappingError as exc:
            msg = str(exc)
        except DdromError as exc:       # MaterialError (a UMAT's XIT, ...): not cured by a smaller step
            fatal = str(exc)
        except BaseException as exc:  # noqa: BLE001 - a plugin, numpy, an interrupt on this rank only
            fatal = describe_exception(exc, "constitutive update")
        # the matrix blocks were formed inside the material update's timer: count them apart
        self.timers.seconds["constitutive"] -= matrix_seconds
        self.timers.add("matrix", matrix_seconds, calls=0)
        # one reduction decides for every rank: 1 = cut the step back, 2 = stop everywhere
        c = as_mpi(self.comm)
        bad = c.allreduce(2 if fatal else (1 if msg else 0), op=_max_op())
        if bad and acc is not None:
            acc.abandon()
        if bad == 2:
            raise_collective(c, fatal)
        if bad:
            raise NotConverged(msg or "constitutive update failed on another rank")
        if acc is not None:
            with self.timers("matrix"):
                acc.finish()
        return resp

    def force_residual(self, stress: np.ndarray, fext_owned: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
        """Equilibrium residual of a stress field (collective).

        Parameters
        ----------
        stress : (ne, nq, 6) Mandel stress at this rank's integration points
        fext_owned : (3 n_owned,) external forces at the owned DOFs (summed over ranks,
            e.g. ``sum_to_owned(external_force(t))``)

        Returns
        -------
        r : (3 n_owned,) ``f_int - f_ext`` with the Dirichlet DOFs set to 0
        ref : float
            ``max(||f_int||, ||f_ext||)`` over all DOFs (``f_int`` includes the reactions at
            the Dirichlet DOFs): the scale of the convergence test ``||r|| <= rtol ref + atol``
        fint : (3 n_owned,) internal forces at the owned DOFs
        """
        with self.timers("assembly"):
            fint = self.sum_to_owned(self.asm.internal_force(stress))
        r = fint - fext_owned
        ref = max(self._norm(fint), self._norm(fext_owned))
        r[self.fixed[: 3 * self.dm.n_owned]] = 0.0
        return r, ref, fint

    def _residual(self, u, old, T, dt, fext_owned, tangent=True):
        resp = self._evaluate(u, old, T, dt, tangent)
        ne, nq = self.dm.n_cells, self.dm.n_qp
        r, ref, _ = self.force_residual(resp.stress.reshape(ne, nq, 6), fext_owned)
        return resp, r, ref

    # ------------------------------------------------------------------ Newton
    def _newton(self, old: State, t: float, info: StepInfo, guess: np.ndarray | None = None,
                rtol: float | None = None) -> State:
        opt = self.options
        # a step-specific tolerance (an enrichment) also solves inexactly: each linear solve
        # stops at the residual this Newton iteration needs, not at ksp_rtol
        inexact, rtol = rtol is not None, opt.rtol if rtol is None else rtol
        dt = t - old.t
        ne, nq = self.dm.n_cells, self.dm.n_qp
        u = (old.u if guess is None else guess).copy()
        self.dirichlet_values(u, t)
        T = np.array(self.temperature(t), dtype=float)
        fext = self.sum_to_owned(self.external_force(t))
        # The matrix is assembled inside every material update with a tangent (no per-point
        # tangent kept). For a linear law that update is cheap and the converged state's
        # matrix would be wasted (a linear step converges after one solve): residuals then
        # go without a tangent and the matrix comes from a second update when a solve needs it.
        with_tangent = not getattr(self.material, "linear", False)
        resp, r, ref = self._residual(u, old, T, dt, fext, tangent=with_tangent)
        norm = self._norm(r)
        search = LineSearch(opt.line_search)
        lag = _PCLag() if inexact and self._inexact_reuse_pc else None
        for it in range(opt.max_iterations + 1):
            info.residual = norm / max(ref, 1e-300)
            if not math.isfinite(norm):
                raise NotConverged(f"residual is not finite at iteration {it}")
            if norm <= rtol * ref + opt.atol:
                info.newton_iterations += it
                return State(t, u, resp.stress.reshape(ne, nq, 6), resp.state, T, old.increment + 1)
            if it == opt.max_iterations:
                break
            if not with_tangent:
                self._evaluate(u, old, T, dt, tangent=True)
            # self.A is this iterate's matrix (assembled by its material update). From here
            # on only u, r and the norms of this iterate are used: its stresses and state
            # (~0.5 KB per DOF for Chaboche) would otherwise stay alive next to the trial's
            # while the line search evaluates it.
            resp = None
            release_free_heap()     # the assembly's and the dropped iterate's blocks
            self.b.array[:] = -r
            if inexact:
                self._inexact_solve(it, info, (rtol * ref + opt.atol) / norm, lag)
            else:
                self._linear_solve(it, info)
            du = self.owned_to_local(self.x.array)
            # the prescribed values stay exact: a solve stopped early (inexact, or at ksp_rtol)
            # leaves small components on the identity rows of the Dirichlet DOFs
            du[self.fixed] = 0.0
            release_free_heap()     # the multigrid set-up's temporaries, before the trial's state
            alpha = 1.0
            while True:
                u_try = u + alpha * du
                resp_t = None       # a rejected trial's stresses and state, not kept beside the next one's
                try:
                    resp_t, r_t, ref_t = self._residual(u_try, old, T, dt, fext, tangent=with_tangent)
                    norm_t = self._norm(r_t)
                except NotConverged:
                    norm_t = math.inf
                if not search.backtrack(norm_t, norm, alpha):
                    break
                alpha *= 0.5
            if not math.isfinite(norm_t):
                raise NotConverged(f"update at iteration {it} gives a non-finite residual")
            search.accepted(norm_t, norm)
            info.line_search_steps += alpha < 1.0
            u, resp, r, ref, norm = u_try, resp_t, r_t, ref_t, norm_t
            # resp is dropped once the next matrix is assembled (above): no second reference
            # may keep it alive through the set-up and solve (the accepted trial's stresses
            # and state, ~0.4 KB per DOF of a rank for Chaboche: with hypre at 1.07M DOFs on
            # 2 ranks the peak went from 2,306 to 2,002 MB on rank 0)
            resp_t = None
        raise NotConverged(f"no convergence in {opt.max_iterations} iterations "
                           f"(relative residual {norm / max(ref, 1e-300):.3e})")

    def _inexact_solve(self, it: int, info: StepInfo, needed: float, lag: "_PCLag | None" = None) -> None:
        """:meth:`_linear_solve` stopped at the relative residual ``0.1 needed`` (within
        [ksp_rtol, 0.1]; ``needed``: the Newton target over the current residual): the
        linearization error then dominates the solve's, and the Newton iterations are those
        of exact solves (the forcing term of inexact Newton methods, Eisenstat and Walker).

        ``lag`` (the step's :class:`_PCLag`, option ``ddrom_inexact_reuse_pc``): the later
        iterations of the step solve with the preconditioner set up at its first one (the
        operator is the current tangent; only the preconditioner lags, as PETSc's
        ``-snes_lag_preconditioner``): within one step from the ROM's guess the tangent
        changes at few points, and a GAMG set-up is about 0.4 of a solve's time. A new set-up
        when a lagged solve fails (retried at once) or takes more than ``_PCLag.GROWTH`` times
        the iterations of the solve that set it up. Not with hypre, whose preconditioner is
        freed after each solve."""
        rtol0, atol0, dtol0, maxit0 = self.ksp.getTolerances()
        self.ksp.setTolerances(rtol=min(0.1, max(rtol0, 0.1 * needed)), atol=atol0, divtol=dtol0, max_it=maxit0)
        pc = self.ksp.getPC()
        reuse = lag is not None and lag.ready and pc.getType() != "hypre"
        try:
            its0 = info.ksp_iterations
            if reuse:
                pc.setReusePreconditioner(True)
                try:
                    self._linear_solve(it, info)
                    info.pc_reused += 1
                    lag.solved(info.ksp_iterations - its0)
                    return
                except NotConverged:
                    lag.ready = False           # a lagged preconditioner failed: set it up again
                finally:
                    pc.setReusePreconditioner(False)
                its0 = info.ksp_iterations
            self._linear_solve(it, info)
            if lag is not None:
                lag.set_up(info.ksp_iterations - its0)
        finally:
            self.ksp.setTolerances(rtol=rtol0, atol=atol0, divtol=dtol0, max_it=maxit0)

    def _linear_solve(self, it: int, info: StepInfo) -> None:
        """Solve ``self.A x = self.b`` into ``self.x`` (collective); :class:`NotConverged`
        when the KSP fails.

        Then what only a solve needs is freed before the line search's material updates and
        the next assembly: GMRES's basis, a hypre preconditioner (rebuilt at every set-up
        anyway). With hypre and ``-ddrom_hypre_inplace`` (default) the operator is moreover
        converted in place into hypre's format for the set-up and the solve, so that hypre
        does not copy it (~0.9 KB per DOF of a rank), and a new AIJ matrix with the exact
        pattern is made for the next assembly.
        """
        inplace = self._hypre_inplace and self.ksp.getPC().getType() == "hypre"
        try:
            with self.timers("linear_solve"):
                if inplace:
                    bs = self.A.getBlockSize()
                    self.A.convert("hypre")          # in place: the AIJ storage is freed
                    self.A.setBlockSize(bs)          # lost by the conversion; BoomerAMG's unknowns
                    self.A.setNearNullSpace(self.nullspace)
                    # the AIJ's storage, freed by the conversion, would stay in glibc's heap,
                    # resident, through hypre's set-up, which mostly does not reuse it (1.07M
                    # DOFs, 2 ranks: 375 MB returned here on rank 0; benchmarks/README.md,
                    # "The hypre step below 4 KB/DOF")
                    release_free_heap()
                self.ksp.setOperators(self.A)
                self.ksp.setUp()
                if self._release_products:
                    release_product_data(self.ksp)
                release_free_heap()         # the set-up's temporaries, before the Krylov basis
                self.ksp.solve(self.b, self.x)
            reason = self.ksp.getConvergedReason()
            info.ksp_iterations += self.ksp.getIterationNumber()
            if reason < 0 and self.ksp.getType() == "cg":
                # CG breaks down when the preconditioned tangent is not positive definite
                # (GAMG's estimates on a plastic tangent): retry this solve with GMRES rather
                # than cut the step, which would change the HF load path.
                self.ksp.setType("gmres")
                with self.timers("linear_solve"):
                    self.ksp.solve(self.b, self.x)
                reason = self.ksp.getConvergedReason()
                info.ksp_iterations += self.ksp.getIterationNumber()
                self.ksp.setType("cg")
            if reason < 0:
                raise NotConverged(f"linear solver failed ({_ksp_reason(reason)}) at iteration {it}")
        finally:
            if self._gmres_restart is not None:
                release_krylov_vectors(self.ksp, self._gmres_restart)
            release_hypre(self.ksp)
            if inplace:
                with self.timers("matrix"):
                    self.ksp.reset()                 # the PC's references to the hypre operator
                    self.A.destroy()
                    # hypre's matrix, freed, would stay resident in the heap while the new
                    # AIJ takes fresh pages (1.07M DOFs, 2 ranks: +466 MB on rank 0 here,
                    # the peak of the step)
                    release_free_heap()
                    self.A = self.asm.create_matrix()
                    self.A.setNearNullSpace(self.nullspace)
                    self.ksp.setOperators(self.A)

    def step(self, old: State, t: float, step_index: int | None = None,
             guess: np.ndarray | None = None, rtol: float | None = None) -> tuple[State, StepInfo]:
        """Advance from ``old`` to time ``t``, cutting the increment on failure.

        ``guess``: local displacement (owned + ghost) to start Newton from at ``t`` (e.g. a
        ROM's prediction; its Dirichlet DOFs are overwritten); only the full increment
        uses it, sub-steps of a cut-back start from their previous state. ``rtol``: this
        step's relative residual tolerance instead of the options' (a ROM's enrichment);
        its linear solves are then inexact (:meth:`_inexact_solve`).
        """
        info = StepInfo()

        def attempt(s: State, tn: float) -> State:
            return self._newton(s, tn, info, guess if tn == t and s is old else None, rtol)

        try:
            st, info.cutbacks = advance(old, lambda s: s.t, t, attempt, self.options.max_cutbacks)
        except CutbacksExhausted as exc:
            where = f"step {step_index} " if step_index is not None else ""
            raise CollectiveError(
                f"HF Newton diverged at {where}(to t = {t:.6g}; failing increment "
                f"{exc.t_from:.6g} -> {exc.t_to:.6g} after {exc.cutbacks} cut-backs): {exc}") from None
        return st, info


def _ksp_reason(reason: int) -> str:
    from petsc4py import PETSc

    names = {v: k for k, v in vars(PETSc.KSP.ConvergedReason).items() if isinstance(v, int)}
    return names.get(reason, str(reason))


def _max_op():
    from mpi4py import MPI

    return MPI.MAX
