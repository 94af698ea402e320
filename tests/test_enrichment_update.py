"""The incremental update of an enrichment, at 1 and 3 ranks: what an enrichment does not
change is kept (ddrom.rom.integrand), the temperature component keeps its read points, and
the enriched model's ECM still meets its tolerance (checked here from scratch).

A small plastic bar (tests/helpers.py, write_bar_case) trained at A in {0.5, 1.0}; A = 1.8
plastifies much more. Synthetic bases are smooth functions of the coordinates (the same
fields for any partition).
"""
from __future__ import annotations

import gc
import math

import numpy as np
import pytest
from mpi4py import MPI

import ddrom  # noqa: F401
from helpers import PLASTIC_LAW, all_ok, write_bar_case


def _context(tmp, comm, name: str):
    from ddrom.parallel import Timers
    from ddrom.workflow.build import build_problem
    from ddrom.workflow.case import load_case
    from ddrom.workflow.rom import hf_context

    path = write_bar_case(tmp, comm, name, PLASTIC_LAW, sx=90.0, sz=3.0, pod_tol=1e-7, ecm_tol=1e-8,
                          training=(0.5, 1.0), test=(1.8,))
    case = load_case(path)
    dm, solver = hf_context(case, comm, Timers())
    return path, case, build_problem(case), dm, solver


def _bases(dm, solver, N: int, Ns: int):
    """Displacement modes (zero on the prescribed DOFs) and stress modes, smooth in x, and a
    symmetric positive Gram matrix: the same fields on any partition."""
    x = dm.coords[: dm.n_owned]
    Phi = np.stack([np.sin((k + 1) * 0.4 * x[:, 0] + c) * (1.0 + 0.1 * k * x[:, 1])
                    for k in range(N) for c in range(3)], axis=1).reshape(dm.n_owned, N, 3)
    Phi = Phi.transpose(0, 2, 1).reshape(3 * dm.n_owned, N)
    Phi[solver.fixed[: 3 * dm.n_owned]] = 0.0
    xq = solver.xq.reshape(-1, 3)
    Psi3 = np.stack([np.cos(0.3 * (j + 1) * xq[:, 0] + 0.5 * c) + 0.2 * c * xq[:, 2]
                     for j in range(Ns) for c in range(6)], axis=1).reshape(-1, Ns, 6).transpose(0, 2, 1)
    rng = np.random.default_rng(7)
    M = rng.standard_normal((Ns, Ns))
    return Phi, np.ascontiguousarray(Psi3), M @ M.T + Ns * np.eye(Ns)


@pytest.mark.mpi
def test_integrand_cache_equals_from_scratch(shared_tmp):
    """Bases grown by one displacement and one stress mode (and a new Gram matrix): the
    cached update gives the ECM columns and integrals of a computation from scratch to
    round-off, computing only the new pairs; a basis that is not an extension of the cached
    one is recomputed, never mixed; the integrals agree with one rank's."""
    from ddrom.reduction.exact import reproducible_colsum
    from ddrom.rom.integrand import IntegrandCache
    from ddrom.rom.offline import _ecm_integrand

    comm = MPI.COMM_WORLD
    _, _, _, dm, solver = _context(shared_tmp, comm, "cache")
    N, Ns = 5, 4
    Phi, Psi3, G = _bases(dm, solver, N, Ns)
    w = solver.asm.wdet.ravel()
    cache = IntegrandCache()
    _ecm_integrand(solver, Phi[:, :N - 1], np.ascontiguousarray(Psi3[..., :Ns - 1]), G[:-1, :-1], cache)
    _, A1, b1 = _ecm_integrand(solver, Phi, Psi3, G, cache)
    _, A0, none = _ecm_integrand(solver, Phi, Psi3, G, None)
    assert none is None
    A1, A0 = np.asarray(A1), np.asarray(A0)          # (per-point factors: formed here to compare)
    b0 = reproducible_colsum(w[:, None] * A0, comm)
    scale = comm.allreduce(float(np.abs(A0).max()) if A0.size else 0.0, op=MPI.MAX)
    all_ok(bool(np.allclose(A1, A0, rtol=1e-12, atol=1e-13 * scale)), "A differs from scratch")
    np.testing.assert_allclose(b1, b0, rtol=1e-12, atol=1e-13 * np.abs(b0).max())
    st = cache.stats
    # first call: every pair; then the new mode against 4 stress modes, the 4 old modes against the new one
    assert st["modes_computed"] == N and st["recomputed_from_scratch"] == 0, st
    assert st["integrand_columns_computed"] == (N - 1) * (Ns - 1) + Ns + (N - 1), st
    # not an extension (an old column changed): recomputed from scratch, equal to scratch
    Phi2 = Phi.copy()
    Phi2[:, 0] *= 2.0
    _, A2, b2 = _ecm_integrand(solver, Phi2, Psi3, G, cache)
    _, A3, _ = _ecm_integrand(solver, Phi2, Psi3, G, None)
    A2, A3 = np.asarray(A2), np.asarray(A3)
    assert cache.stats["recomputed_from_scratch"] == 1
    all_ok(bool(np.allclose(A2, A3, rtol=1e-12, atol=1e-13 * scale)), "A after a reset differs")
    np.testing.assert_allclose(b2, reproducible_colsum(w[:, None] * A3, comm), rtol=1e-12,
                               atol=1e-13 * np.abs(b2).max())
    # the same integrals on one rank (rank 0 rebuilds the bar on COMM_SELF)
    ok, msg = True, ""
    if comm.rank == 0:
        _, _, _, dm1, solver1 = _context(shared_tmp, MPI.COMM_SELF, "cache")
        Phi1, Psi31, _ = _bases(dm1, solver1, N, Ns)
        c1 = IntegrandCache()
        _ecm_integrand(solver1, Phi1[:, :N - 1], np.ascontiguousarray(Psi31[..., :Ns - 1]), G[:-1, :-1], c1)
        _, _, b_self = _ecm_integrand(solver1, Phi1, Psi31, G, c1)
        ok = bool(np.allclose(b_self, b1, rtol=1e-12, atol=1e-13 * np.abs(b1).max()))
        msg = f"integrals at 1 rank differ by {np.abs(b_self - b1).max():.3e}"
        del dm1, solver1
        gc.collect()
    ok, msg = comm.bcast((ok, msg), root=0)
    assert ok, msg


@pytest.mark.mpi
def test_temperature_reads_kept_across_an_update(shared_tmp):
    """The sensors of an enriched model are the previous ones plus the sample points that
    left: every point the temperature component read is still read, none twice, and the
    covering radius (the same as one rank's) does not grow."""
    from ddrom.reduction.coverage import covering_radius
    from ddrom.rom.offline import _temperature_data
    from ddrom.rom.operators import natural_point_ids, point_coordinates

    comm = MPI.COMM_WORLD
    _, _, problem, dm, solver = _context(shared_tmp, comm, "reads")
    G = comm.allreduce(len(natural_point_ids(dm)))
    old = np.arange(0, G, 9, dtype=np.int64)[:20]
    td0 = _temperature_data(problem, solver, old, point_coordinates(solver, old), None, None, 12)
    assert len(td0.sensor_gids) == 12
    # the update drops 5 sample points, adds 6 (one of them an old sensor)
    new = np.sort(np.unique(np.concatenate([old[5:], np.arange(4, G, 31)[:5], td0.sensor_gids[:1]])))
    td1 = _temperature_data(problem, solver, new, point_coordinates(solver, new), None, None, 12,
                            previous_reads=(old, td0.sensor_gids))
    reads0 = set(old.tolist()) | set(td0.sensor_gids.tolist())
    reads1 = set(new.tolist()) | set(td1.sensor_gids.tolist())
    assert reads0 <= reads1
    assert not set(td1.sensor_gids.tolist()) & set(new.tolist())
    want = len(np.setdiff1d(td0.sensor_gids, new)) + len(np.setdiff1d(old, new))
    assert len(set(td1.sensor_gids.tolist())) == len(td1.sensor_gids) == want and want >= 10 + 5
    assert td1.sensor_nodes.shape[0] == td1.sensor_xyz.shape[0] == len(td1.sensor_gids)
    assert td1.covering_radius <= td0.covering_radius
    # the radius is that of all points (gathered here) against the read points, as on one rank
    xq = np.concatenate(comm.allgather(solver.xq.reshape(-1, 3)))
    pts = point_coordinates(solver, np.concatenate([new, td1.sensor_gids]))
    assert td1.covering_radius == covering_radius(xq, pts, MPI.COMM_SELF)


def _ecm_residual(solver, dm, model, Phi, Psi, gram) -> float:
    """``||J^T omega - b|| / ||b||`` of the model's rule on the integrand of its bases, formed
    from scratch (constant column included, scaled as the ECM does)."""
    from ddrom.reduction.exact import reproducible_colsum
    from ddrom.rom.offline import _ecm_integrand
    from ddrom.rom.operators import values_at_points

    comm = solver.comm
    w = solver.asm.wdet.ravel()
    _, A, _ = _ecm_integrand(solver, Phi, Psi.reshape(dm.n_cells * dm.n_qp, 6, -1), gram, None)
    A = np.asarray(A)
    b = reproducible_colsum(w[:, None] * A, comm)
    V = float(reproducible_colsum(w[:, None], comm)[0])
    norms2 = comm.allreduce(np.einsum("ij,ij,i->j", A, A, w))
    s = 2.0 ** round(math.log2(math.sqrt(float(np.mean(norms2)) / V)))
    J = values_at_points(dm, A, model.point_gids)
    om = model.weights
    r = np.append(J.T @ om - b, s * (om.sum() - V))
    return float(np.linalg.norm(r) / np.linalg.norm(np.append(b, s * V)))


@pytest.mark.mpi
def test_enriched_model_meets_ecm_tolerance_and_keeps_reads(shared_tmp):
    """Two enrichments with the incremental update: each enriched model's rule meets the ECM
    tolerance on its bases' integrand formed from scratch, the temperature component reads
    where the previous model read, and the run is the same on one rank."""
    from ddrom.rom.enrichment import EnrichmentOptions, Enricher
    from ddrom.rom.model import load_bases, load_model
    from ddrom.rom.online import ReducedSolver
    from ddrom.workflow.build import build_loads
    from ddrom.workflow.hf import hf_sweep
    from ddrom.workflow.rom import build_rom, rom_path

    def run(comm):
        path, case, problem, dm, solver = _context(shared_tmp, comm, "e2e" if comm.size > 1 else "e2e_self")
        hf_sweep(path, comm, which="training")
        build_rom(path, comm)
        params = {"A": 1.8}
        solver.set_loads(build_loads(case, params, dm))
        model = load_model(rom_path(case), comm)
        td = model.temperature_data
        bases = load_bases(rom_path(case), dm, ["displacement", "stress"] + (["p"] if model.gappy else [])
                           + (["temperature"] if td is not None and td.basis.shape[1] else []))
        enr = Enricher(problem, solver, model, bases, EnrichmentOptions(tolerance=1e-3, max_enrichments=2))
        models = [model]
        orig = enr.enrich

        def spy(*a, **k):
            out = orig(*a, **k)
            models.append(out[0])
            # the rule of the new model, on its bases' integrand from scratch
            out[-1]["ecm_check"] = _ecm_residual(solver, dm, out[0], enr.Phi, enr.Psi, enr.stress_gram)
            return out

        enr.enrich = spy
        res = ReducedSolver(model, params).run(enricher=enr)
        return res, models

    comm = MPI.COMM_WORLD
    res, models = run(comm)
    assert res.n_enrichments == 2, [e["reason"] for e in res.enrichments]
    tol = float(models[0].info["ecm_tol"])
    for ev, m in zip(res.enrichments, models[1:]):
        assert m.info["ecm_converged"] and m.info["ecm_relative_residual"] <= tol
        assert ev["ecm_check"] <= tol * (1 + 1e-6), (ev["ecm_check"], tol)
    for a, b in zip(models[:-1], models[1:]):
        if a.temperature_data is not None:
            ra = set(a.point_gids.tolist()) | set(a.temperature_data.sensor_gids.tolist())
            rb = set(b.point_gids.tolist()) | set(b.temperature_data.sensor_gids.tolist())
            assert ra <= rb
            assert b.temperature_data.covering_radius <= a.temperature_data.covering_radius
    gc.collect()
    ok, msg = True, ""
    if comm.rank == 0:
        try:
            r1, m1 = run(MPI.COMM_SELF)
            assert [e["step"] for e in r1.enrichments] == [e["step"] for e in res.enrichments]
            assert [len(m.point_gids) for m in m1] == [len(m.point_gids) for m in models]
            np.testing.assert_allclose(r1.q, res.q, rtol=1e-6, atol=1e-10 * np.abs(res.q).max())
        except AssertionError as exc:
            ok, msg = False, str(exc)
        gc.collect()
    ok, msg = comm.bcast((ok, msg), root=0)
    assert ok, msg


def test_cache_workspace_is_reused_and_grows():
    """The update's workspaces: the same memory while the size fits, a new larger one
    (with room for the next enrichments) when it does not; a changed dtype is a new one."""
    from ddrom.rom.integrand import IntegrandCache

    cache = IntegrandCache()
    a = cache.workspace("x", 100)
    assert a.size == 100 and a.dtype == np.float64
    b = cache.workspace("x", 110)                 # fits in the quarter of room
    assert b.size == 110 and np.shares_memory(a, b)
    c = cache.workspace("x", 200)
    assert c.size == 200 and not np.shares_memory(b, c)
    d = cache.workspace("x", 150, np.float32)
    assert d.dtype == np.float32 and d.size == 150
    e = cache.workspace("y", 10)
    assert not np.shares_memory(e, d)
    # the scratch workspace: one memory for the replay's float64 rows and the ECM's float32
    # score copy, whichever shape and dtype, while it fits
    s1 = cache.scratch((40, 6, 5))
    assert s1.shape == (40, 6, 5) and s1.dtype == np.float64
    s2 = cache.scratch((2000,), np.float32)
    assert s2.shape == (2000,) and s2.dtype == np.float32 and np.shares_memory(s1, s2)
    s3 = cache.scratch((4000,), np.float32)        # larger than the room: a new one
    assert s3.size == 4000 and not np.shares_memory(s2, s3)


def test_growing_columns_append_in_place_keeps_earlier_views():
    """GrowingColumns: [B, Q] equal to np.column_stack, written into the buffer while room
    remains (no copy of the basis), earlier views untouched, and a basis that is not the
    latest view (a branch) copied rather than overwriting the latest one's columns."""
    from ddrom.rom.integrand import GrowingColumns

    rng = np.random.default_rng(3)
    B0 = rng.standard_normal((50, 4))
    room = GrowingColumns()
    B = room.adopt(B0)
    assert B.shape == (50, 4) and np.array_equal(B, B0) and not np.shares_memory(B, B0)
    views, cols = [B], [B0]
    for i in range(9):
        Q = rng.standard_normal((50, 1 + i % 2))
        new = room.append(views[-1], Q)
        cols.append(Q)
        assert np.array_equal(new, np.column_stack(cols))
        views.append(new)
    # every earlier view still holds its columns
    for v in views:
        assert np.array_equal(v, np.column_stack(cols)[:, :v.shape[1]])
    # in place while room remained: the last two views share one buffer
    assert np.shares_memory(views[-1], views[-2])
    # appending to an older view (a branch) must not overwrite the latest view's columns
    latest = views[-1].copy()
    branch = room.append(views[2], np.ones((50, 1)))
    assert np.array_equal(branch[:, -1], np.ones(50)) and np.array_equal(views[-1], latest)
    assert not np.shares_memory(branch, views[-1])
    # with trailing axes (the modes' strains, (G, N, 6)): the same along the second axis
    strains = GrowingColumns()
    E0 = rng.standard_normal((20, 3, 6))
    E = strains.adopt(E0)
    E1 = strains.append(E, rng.standard_normal((20, 1, 6)))
    assert E1.shape == (20, 4, 6) and np.array_equal(E1[:, :3], E0) and np.shares_memory(E, E1)
