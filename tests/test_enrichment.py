"""Error indicator and adaptive enrichment (ddrom.rom.enrichment), at 1 and 3 ranks.

A small plastic bar trained at A in {0.5, 1.0}; A = 1.8 plastifies much more (new physics
for the ROM). Assertions are collective where a failure on one rank could desynchronize
the following tests.
"""
from __future__ import annotations

import gc
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

import ddrom  # noqa: F401
from ddrom.parallel import CollectiveError

pytestmark = pytest.mark.slow

TOL = 1e-3

CASE = """
[case]
name = "{name}"

[mesh]
generator = "box"
args = {{ lx = 4.0, ly = 1.0, lz = 1.0, nx = 8, ny = 2, nz = 2 }}

[material]
law = "chaboche"
E = 200e3
nu = 0.3
sigma_y = 120.0
H = 2000.0
C = 20e3
gamma = 100.0
K = 80.0
N = 5.0
alpha = 1.2e-5
T_ref = 20.0

[parameters]
A = {{ min = 0.5, max = 1.0, default = 1.0 }}

[time]
t_end = 4.0
n_steps = 8

[loads]
dirichlet = [
  {{ region = "xmin", components = ["x", "y", "z"] }},
]
traction = [
  {{ region = "xmax", vector = ["90 * A * tri(t, 2)", 0.0, "-3 * A * ramp(t, 1)"] }},
]

[temperature]
expression = "20 + 100 * x * ramp(t, 1)"

[solver]
newton_rtol = 1e-11
petsc_options = {{ ksp_rtol = 1e-12 }}
{solver_extra}

[rom]
pod_tol = 1e-7
ecm_tol = 1e-8

[rom.enrichment]
enabled = {enabled}
{tol_line}
max_enrichments = {max_enrichments}

[training]
values = [{{ A = 0.5 }}, {{ A = 1.0 }}]

[test]
values = [{{ A = 1.8 }}]
"""


def _case(tmp: Path, comm, name: str, enabled: bool = True, max_enrichments: int = 10, solver_extra: str = "",
          tol: float | None = TOL) -> str:
    path = tmp / f"{name}.toml"
    if comm.rank == 0:
        path.write_text(CASE.format(name=name, enabled=str(enabled).lower(), max_enrichments=max_enrichments,
                                    solver_extra=solver_extra,
                                    tol_line=f"indicator_tol = {tol}" if tol is not None else ""))
    comm.Barrier()
    return str(path)


def _all(comm, ok: bool) -> bool:
    return comm.allreduce(bool(ok), op=MPI.LAND)


def _build(path: str, comm) -> None:
    from ddrom.workflow.hf import hf_sweep
    from ddrom.workflow.rom import build_rom

    hf_sweep(path, comm, which="all")
    build_rom(path, comm)


def _built_point(tmp: Path, comm, name: str, params: dict):
    """Build the case ``name`` and return (case, path, dm, solver with the point's loads,
    ROM model, distributed bases) for one parameter point."""
    from ddrom.workflow.build import build_loads
    from ddrom.workflow.case import load_case
    from ddrom.workflow.rom import hf_context, rom_path
    from ddrom.parallel import Timers
    from ddrom.rom.model import load_bases, load_model

    path = _case(tmp, comm, name, max_enrichments=1)
    _build(path, comm)
    case = load_case(path)
    dm, solver = hf_context(case, comm, Timers())
    solver.set_loads(build_loads(case, params, dm))
    model = load_model(rom_path(case), comm)
    return case, path, dm, solver, model, load_bases(rom_path(case), dm, ["displacement", "stress", "p"])


@pytest.mark.mpi
def test_indicator_small_on_training_and_large_beyond(shared_tmp):
    from ddrom.workflow.rom import run_rom

    comm = MPI.COMM_WORLD
    path = _case(shared_tmp, comm, "ind", enabled=False)
    _build(path, comm)
    runs = run_rom(path, comm, [{"A": 1.0}]).runs + run_rom(path, comm, [{"A": 1.8}]).runs
    on, off = runs[0].result, runs[1].result
    assert on.n_enrichments == 0 and off.n_enrichments == 0          # enrichment disabled in the case
    assert np.nanmax(on.indicator) < 1e-5, on.indicator             # training parameter: on the manifold
    assert np.nanmax(off.indicator) > 100 * TOL, off.indicator       # new physics: far off it


@pytest.mark.mpi
def test_one_enrichment_step(shared_tmp):
    """One HF step: the basis holds its displacement, the ECM still meets its tolerance, the
    ROM error at that step and over the run drops; the replay matches the ROM at its points."""
    from ddrom.io.store import SnapshotStore
    from ddrom.workflow.hf import store_path
    from ddrom.reduction.inner import allreduce_sum
    from ddrom.rom.enrichment import EnrichmentOptions, Enricher
    from ddrom.workflow.build import build_problem
    from ddrom.rom.online import ReducedSolver
    from ddrom.rom.operators import values_at_points

    comm = MPI.COMM_WORLD
    params = {"A": 1.8}
    case, path, dm, solver, model, bases = _built_point(shared_tmp, comm, "one", params)
    plain = ReducedSolver(model, params).run()
    enr = Enricher(build_problem(case), solver, model, bases, EnrichmentOptions(tolerance=TOL, max_enrichments=1, basis_tol=1e-6))
    # record the replayed state the HF step starts from, to compare with the ROM's own state
    seen = {}
    orig = enr._state_before

    def spy(k, times, q_hist, v_hist, sub_hist=None):
        st, n = orig(k, times, q_hist, v_hist, sub_hist)
        seen["p"] = values_at_points(dm, solver.material.cumulated_plastic_strain(st.internal), model.point_gids)
        return st, n

    enr._state_before = spy
    res = ReducedSolver(model, params).run(enricher=enr)
    assert res.n_enrichments == 1
    ev = res.enrichments[0]
    k = ev["step"]
    assert ev["indicator_before"] > TOL and ev["indicator_after"] < 1e-10, ev
    # the replayed internal variables at the ROM's points are the ROM's (same strains, same law)
    np.testing.assert_allclose(seen["p"], plain.p_samples[k - 1], rtol=1e-9, atol=1e-14)
    # the HF step's displacement (minus lifting) lies in the enriched basis
    new = enr._start[1]
    nown = 3 * dm.n_owned
    w = new.u[:nown] - enr.chi @ res.dirichlet[k]
    r = w - enr.Phi @ allreduce_sum(enr.Phi.T @ w, comm)
    rel = np.sqrt(allreduce_sum(np.array([r @ r, w @ w]), comm))
    assert ev["modes_added"] == 1 and rel[0] <= 1e-10 * rel[1]
    gram = allreduce_sum(enr.Phi.T @ enr.Phi, comm)
    assert np.abs(gram - np.eye(gram.shape[0])).max() < 1e-12
    # the Gram matrix weighing the ECM columns gained the HF stress snapshot's coefficients
    c = allreduce_sum(enr.Psi.T @ (np.repeat(enr.w_qp, 6) * new.stress.reshape(-1)), comm)
    G0, n0 = model.stress_gram, model.stress_gram.shape[0]
    G_exp = np.pad(G0, ((0, len(c) - n0), (0, len(c) - n0))) + np.outer(c, c)
    np.testing.assert_allclose(res.model.stress_gram, G_exp, rtol=1e-10, atol=1e-12 * np.abs(G_exp).max())
    # the warm-started ECM meets its tolerance, keeping most of the previous points
    info = res.model.info
    assert info["ecm_converged"] and info["ecm_relative_residual"] <= 1e-8
    assert ev["points_added"] >= 1
    # errors against the HF reference: at the enriched step and over the run
    store = SnapshotStore.open(store_path(case, "test"), comm, mode="r", dmesh=dm)
    u_hf = store.read_displacement("test_000", k, dm).reshape(-1)

    def err(result, Phi):
        u = Phi[:, :result.q.shape[1]] @ result.q[k] + enr.chi @ result.dirichlet[k]
        e = allreduce_sum(np.array([np.sum((u - u_hf) ** 2), np.sum(u_hf ** 2)]), comm)
        return np.sqrt(e[0] / e[1])

    e_plain, e_enr = err(plain, bases["displacement"]), err(res, enr.Phi)
    store.close()
    assert e_enr < 0.1 * e_plain, (e_plain, e_enr)


@pytest.mark.mpi
def test_replay_follows_the_cut_back_increments_of_the_march(shared_tmp):
    """When the reduced march cuts steps back, the replay before an enrichment takes the same
    increments: the replayed internal variables at the ROM's points are the ROM's own (the
    law is rate dependent: one increment per output step would differ)."""
    from ddrom.rom.enrichment import EnrichmentOptions, Enricher
    from ddrom.workflow.build import build_problem
    from ddrom.rom.online import OnlineOptions, ReducedSolver
    from ddrom.rom.operators import values_at_points

    comm = MPI.COMM_WORLD
    params = {"A": 1.8}
    case, path, dm, solver, model, bases = _built_point(shared_tmp, comm, "cuts", params)
    opts = OnlineOptions(max_iterations=4)        # some plastic steps need more: cut back
    plain = ReducedSolver(model, params, opts).run()
    assert plain.cutbacks > 0
    # enrich at the last step, after every cut-back of the march
    k_last = len(plain.times) - 1
    enr = Enricher(build_problem(case), solver, model, bases, EnrichmentOptions(tolerance=1e30, max_enrichments=1))
    seen, calls = {}, {"n": 0}
    orig = enr._state_before

    def spy(k, times, q_hist, v_hist, sub_hist=None):
        seen["subs"] = sum(len(x) for x in sub_hist[:k])
        st, n = orig(k, times, q_hist, v_hist, sub_hist)
        seen["p"] = values_at_points(dm, solver.material.cumulated_plastic_strain(st.internal), model.point_gids)
        return st, n

    def wants(ind):                                # called once per converged step, in order
        calls["n"] += 1
        return calls["n"] == k_last

    enr._state_before, enr.wants = spy, wants
    res = ReducedSolver(model, params, opts).run(enricher=enr)
    assert res.n_enrichments == 1 and res.enrichments[0]["step"] == k_last
    assert seen["subs"] > 0                        # cut-back increments were replayed
    np.testing.assert_allclose(seen["p"], plain.p_samples[k_last - 1], rtol=1e-9, atol=1e-14)


@pytest.mark.mpi
def test_replay_from_the_modes_strains_equals_the_replay_of_displacements(shared_tmp):
    """A second enrichment replays from the first one's HF state with the strains combined
    from the modes' cached strains (no strain evaluation per step): the same state as the
    replay of the reconstructed displacements, to round-off."""
    from ddrom.rom.enrichment import EnrichmentOptions, Enricher
    from ddrom.workflow.build import build_problem
    from ddrom.rom.online import ReducedSolver

    comm = MPI.COMM_WORLD
    params = {"A": 1.8}
    case, path, dm, solver, model, bases = _built_point(shared_tmp, comm, "mode_strains", params)
    enr = Enricher(build_problem(case), solver, model, bases, EnrichmentOptions(tolerance=1e30, max_enrichments=2))
    n_steps = len(ReducedSolver(model, params).run().times) - 1
    at = {2, n_steps}
    calls, seen = {"n": 0}, {}
    orig = enr._state_before

    def spy(k, times, q_hist, v_hist, sub_hist=None):
        st, n = orig(k, times, q_hist, v_hist, sub_hist)
        if k == n_steps:
            E = enr._cache.strains
            seen["cached"] = E is not None and E.shape[1] >= len(q_hist[k - 1])
            enr._cache.strains = None                 # the reference: replay of the displacements
            ref, n_ref = orig(k, times, q_hist, v_hist, sub_hist)
            enr._cache.strains = E
            seen.update(n=n, n_ref=n_ref, got=st.internal.copy(), ref=ref.internal.copy(),
                        s=st.stress.copy(), s_ref=ref.stress.copy())
            st, n = orig(k, times, q_hist, v_hist, sub_hist)
        return st, n

    def wants(ind):                                  # called once per converged step, in order
        calls["n"] += 1
        return calls["n"] in at

    enr._state_before, enr.wants = spy, wants
    res = ReducedSolver(model, params).run(enricher=enr)
    assert [ev["step"] for ev in res.enrichments] == sorted(at)
    assert seen["cached"] and seen["n"] == seen["n_ref"] == n_steps - 3
    # the second replay is one window (Replayer.step_window; the bar yields nearly everywhere:
    # no point is integrated once here, tests/test_replay_window.py has both paths)
    assert 0.0 <= res.enrichments[1]["replay_elastic_fraction"] < 1.0
    scale = max(np.abs(seen["ref"]).max(), 1e-300)
    assert np.abs(seen["got"] - seen["ref"]).max() <= 1e-10 * scale
    np.testing.assert_allclose(seen["s"], seen["s_ref"], rtol=1e-9, atol=1e-9 * np.abs(seen["s_ref"]).max())


@pytest.mark.mpi
def test_an_enrichment_that_adds_nothing_keeps_the_model(shared_tmp):
    """An HF step inside every basis' span (here: basis_tol 0.999, and a second enrichment
    right after a first that took the run's temperature field into its basis) appends
    nothing: the model is not hyper-reduced again (same modes, points and weights) and the
    march resumes from the HF state at that step."""
    from ddrom.rom.enrichment import EnrichmentOptions, Enricher
    from ddrom.workflow.build import build_problem
    from ddrom.rom.online import ReducedSolver

    comm = MPI.COMM_WORLD
    params = {"A": 1.8}
    case, path, dm, solver, model, bases = _built_point(shared_tmp, comm, "nothing", params)
    enr = Enricher(build_problem(case), solver, model, bases,
                   EnrichmentOptions(tolerance=1e30, max_enrichments=2, basis_tol=0.999))
    calls, models = {"n": 0}, []
    orig = enr.enrich

    def spy(*a, **kw):
        models.append(enr.model)
        return orig(*a, **kw)

    def wants(ind):                                  # called once per converged step, in order
        calls["n"] += 1
        return calls["n"] in (4, 5)

    enr.wants, enr.enrich = wants, spy
    res = ReducedSolver(model, params).run(enricher=enr)
    first, second = res.enrichments
    assert (first["step"], second["step"]) == (4, 5)
    assert not second["hyper_reduced"]
    assert second["modes_added"] == second["stress_modes_added"] == second["p_modes_added"] == 0
    assert second["temperature_modes_added"] == 0
    assert second["points_added"] == second["points_removed"] == 0
    before, after = models[1], res.model
    assert after.n_modes == before.n_modes and after.info["n_enrichments"] == 2
    np.testing.assert_array_equal(after.point_gids, before.point_gids)
    np.testing.assert_array_equal(after.weights, before.weights)
    np.testing.assert_array_equal(after.E, before.E)


@pytest.mark.mpi
def test_enriched_run_improves_errors_and_saved_rom_is_reused(shared_tmp):
    from ddrom.workflow.rom import run
    from ddrom.rom.model import load_model
    from ddrom.rom.online import ReducedSolver

    comm = MPI.COMM_WORLD
    path = _case(shared_tmp, comm, "full")
    s = run(path, comm)
    e = s["enrichment"]
    assert s["n_enrichments"] == e["n_enrichments"] >= 1 and s["enrichment_seconds"] > 0
    # every stage's time goes to summary.json, the enrichment stages included
    assert {"solve", "ecm", "enrichment_hf_step", "enrichment_replay"} <= set(s["timers"]), sorted(s["timers"])
    assert s["rel_error_plastic_strain"] > 0.1                       # plain ROM: off its training
    assert e["rel_error_plastic_strain"] < 1e-2 * s["rel_error_plastic_strain"]
    assert e["rel_error_displacement"] < 1e-3
    events = e["per_test_parameter"][0]["events"]
    assert all(ev["indicator_before"] > TOL for ev in events)
    out = Path(path).parent / "out" / "full"
    assert (out / "enrichment.png").is_file()
    from ddrom.workflow.report import report

    rep = report(str(out), comm)
    if comm.rank == 0:
        text = (out / "report" / "report.md").read_text()
        assert "## Adaptive enrichment" in text and "enrichment.png" in text, rep
        assert "largest per-step error p (enriched)" in text
    # the enriched ROM file keeps what was learnt: rerun without enrichment, stays on the manifold
    m = load_model(out / "rom_enriched_test_000.h5", comm)
    assert m.n_modes == events[-1]["n_modes"] and m.info["n_enrichments"] == len(events)
    again = ReducedSolver(m, {"A": 1.8}).run()
    first = load_model(out / "rom.h5", comm)
    before = ReducedSolver(first, {"A": 1.8}).run()
    assert np.nanmax(again.indicator) < 0.1 * np.nanmax(before.indicator)


@pytest.mark.mpi
def test_enriched_run_identical_at_any_rank_count(shared_tmp):
    from ddrom.workflow.rom import run_rom

    world = MPI.COMM_WORLD
    par = _case(shared_tmp, world, "epar")
    ser = _case(shared_tmp, world, "eser")
    _build(par, world)
    r_par = run_rom(par, world).runs[0].result
    gc.collect()           # PETSc objects on the world communicator: destroyed collectively
    ok, msg = True, ""
    if world.rank == 0:
        _build(ser, MPI.COMM_SELF)
        r_ser = run_rom(ser, MPI.COMM_SELF).runs[0].result
        gc.collect()
        try:
            assert r_par.n_enrichments == r_ser.n_enrichments >= 1
            assert [e["step"] for e in r_par.enrichments] == [e["step"] for e in r_ser.enrichments]
            assert [e["n_points"] for e in r_par.enrichments] == [e["n_points"] for e in r_ser.enrichments]
            np.testing.assert_allclose(r_par.q, r_ser.q, rtol=1e-6, atol=1e-10 * np.abs(r_ser.q).max())
            np.testing.assert_allclose(r_par.indicator, r_ser.indicator, rtol=1e-5, atol=1e-12)
            np.testing.assert_allclose(r_par.p_coeff, r_ser.p_coeff, rtol=1e-6, atol=1e-10)
        except AssertionError as exc:
            ok, msg = False, str(exc)
    ok = world.bcast(ok, root=0)
    msg = world.bcast(msg, root=0)
    assert ok, msg


@pytest.mark.mpi
def test_failing_hf_step_leaves_rom_file_untouched(shared_tmp):
    from ddrom.workflow.rom import run_rom

    comm = MPI.COMM_WORLD
    path = _case(shared_tmp, comm, "fail")
    _build(path, comm)
    rom = Path(path).parent / "out" / "fail" / "rom.h5"
    digest = comm.bcast(hashlib.sha256(rom.read_bytes()).hexdigest() if comm.rank == 0 else None)
    # the same case whose HF Newton may take one iteration and no cut-back: the HF step fails
    bad = _case(shared_tmp, comm, "fail", solver_extra="max_iterations = 1\nmax_cutbacks = 0")
    with pytest.raises(CollectiveError, match=r"enrichment at step \d+ .*the HF step failed"):
        run_rom(bad, comm)
    comm.Barrier()
    ok = hashlib.sha256(rom.read_bytes()).hexdigest() == digest
    left = sorted(p.name for p in rom.parent.glob("rom_enriched*"))
    assert _all(comm, ok and not left), left


@pytest.mark.mpi
def test_enrichment_of_a_local_basis(shared_tmp):
    """With local bases (n_clusters = 2) the point's cluster model is enriched from that
    cluster's bases; the enriched ROM repairs the run like the global one. (The test point
    extrapolates, A = 1.8: the classifier is unsure there and would run the global basis;
    classifier_margin = 0 keeps its choice.)"""
    comm = MPI.COMM_WORLD
    path = _case(shared_tmp, comm, "local")
    if comm.rank == 0:
        text = Path(path).read_text().replace("ecm_tol = 1e-8", "ecm_tol = 1e-8\nn_clusters = 2\n"
                                              "classifier_margin = 0").replace(
            "values = [{ A = 0.5 }, { A = 1.0 }]", "values = [{ A = 0.5 }, { A = 0.6 }, { A = 0.9 }, { A = 1.0 }]")
        Path(path).write_text(text)
    comm.Barrier()
    from ddrom.workflow.rom import run

    s = run(path, comm)
    e = s["enrichment"]
    plain, enriched = s["per_test_parameter"][0], e["per_test_parameter"][0]
    # without enrichment the local run exceeds the indicator tolerance: the global basis ran instead
    assert plain["routing"]["fallback"] == "indicator" and plain["cluster"] is None, plain["routing"]
    # with enrichment the local model is enriched instead
    assert enriched["cluster"] == plain["routing"]["predicted"] is not None
    assert e["n_enrichments"] >= 1
    assert e["rel_error_plastic_strain"] < 1e-2 * s["rel_error_plastic_strain"], (s, e)


def test_cli_online_enrich_and_bad_options(tmp_path):
    """`ddrom online --enrich --param ... --save-rom`; clear errors for missing tolerance."""
    env_py = str(Path(sys.executable).parent / "ddrom")
    path = _case(tmp_path, MPI.COMM_SELF, "cli", enabled=False, tol=None)
    comm = MPI.COMM_SELF
    _build(path, comm)
    gc.collect()
    saved = tmp_path / "enriched.h5"
    r = subprocess.run([env_py, "online", path, "--param", "A=1.8", "--enrich", "--indicator-tol", "1e-3",
                        "--max-enrichments", "2", "--save-rom", str(saved), "--fields", "--format", "vtu",
                        "--json", "-"],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    assert saved.is_file() and not Path(str(saved) + ".partial").exists()
    assert '"n_enrichments": 2' in r.stdout
    # the fields of the enriched run, reconstructed with the enriched bases, as XDMF and VTU
    out = tmp_path / "out" / "cli"
    assert (out / "rom_fields.xdmf").is_file() and list((out / "rom_fields_vtu").glob("*.pvd"))
    # no tolerance anywhere (not in the case, not calibrated): one clear message, exit 2
    r = subprocess.run([env_py, "online", path, "--param", "A=1.8", "--enrich"],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 2 and "indicator tolerance" in r.stderr, (r.returncode, r.stderr)
    # `ddrom calibrate` stores the tolerance in the ROM file; enrichment then finds it there
    r = subprocess.run([env_py, "calibrate", path, "--quiet", "--json", "-"], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    import json

    cal = json.loads(r.stdout)["calibration"]
    assert cal["pairs"] >= 3 and cal["pearson_log"] > 0.9 and cal["indicator_tolerance"] > 0
    r = subprocess.run([env_py, "online", path, "--param", "A=1.8", "--enrich", "--quiet", "--json", "-"],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["runs"][0]["n_enrichments"] >= 1
    # `--rom` runs the enriched ROM saved by that run: it keeps what it learnt (smaller
    # indicator without enrichment) and the calibration (enrichment needs no --indicator-tol)
    enriched = out / "rom_enriched_param_A_1.8.h5"
    import h5py

    with h5py.File(enriched, "r") as f:
        assert json.loads(f.attrs["indicator_calibration"])["indicator_tolerance"] == cal["indicator_tolerance"]

    def max_indicator(*extra):
        r = subprocess.run([env_py, "online", path, "--param", "A=1.8", "--quiet", "--json", "-", *extra],
                           capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["runs"][0]["max_indicator"]

    assert max_indicator("--no-enrich", "--rom", str(enriched)) < 0.1 * max_indicator("--no-enrich")
    assert max_indicator("--enrich", "--rom", str(enriched)) is not None
    r = subprocess.run([env_py, "online", path, "--rom", str(tmp_path / "nope.h5")], capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 2 and "nope.h5" in r.stderr and "does not exist" in r.stderr, r.stderr
    # --no-save-rom: enriched, nothing written
    r = subprocess.run([env_py, "online", path, "--param", "A=1.7", "--enrich", "--no-save-rom", "--quiet",
                        "--json", "-"], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["runs"][0]["n_enrichments"] >= 1
    assert not list(out.glob("rom_enriched_param_A_1.7*")), list(out.iterdir())


def test_calibration_upper_prediction_bound():
    """The calibrated tolerance is where the upper prediction bound meets the target: on
    synthetic pairs log e = 1 + 1.2 log i + N(0, 0.3), about 95 % of the steps whose
    indicator is at that tolerance have an error below the target; 0.5 is the mean fit."""
    from ddrom.rom.calibration import calibrate_indicator

    rng = np.random.default_rng(0)
    ind = np.exp(rng.uniform(np.log(1e-5), np.log(1e-1), 4000))
    err = np.exp(1.0 + 1.2 * np.log(ind) + rng.normal(0.0, 0.3, ind.size))
    errors = [{"indicator_per_step": list(ind) + [0.0, None], "p_error_per_step": list(err) + [1e-3, 1e-3]}]
    cal = calibrate_indicator(errors, 1e-2, 0.95)
    assert cal["pairs"] == ind.size                      # the vanishing/missing ones left out
    assert cal["slope"] == pytest.approx(1.2, rel=0.02) and cal["residual_std_log"] == pytest.approx(0.3, rel=0.05)
    assert cal["indicator_tolerance"] < cal["indicator_tolerance_fit"]
    # at the tolerance, the predicted error distribution exceeds the target 5 % of the time
    at_tol = np.exp(1.0 + 1.2 * np.log(cal["indicator_tolerance"]) + rng.normal(0.0, 0.3, 100000))
    assert np.mean(at_tol > 1e-2) == pytest.approx(0.05, abs=0.01)
    mean = calibrate_indicator(errors, 1e-2, 0.5)
    assert mean["indicator_tolerance"] == pytest.approx(mean["indicator_tolerance_fit"], rel=1e-12)
    assert mean["indicator_tolerance_fit"] == pytest.approx(cal["indicator_tolerance_fit"], rel=1e-12)
