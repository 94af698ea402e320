"""The p_monitor indicator component (hold-out check of the p reconstruction), at 1 and 3 ranks.

The small plastic bar of tests/test_enrichment.py (trained at A in {0.5, 1.0}, A = 1.8
plastifies more). The component is the error of the Gappy reconstruction of p at monitor
points the fit did not use: ~0 on a training trajectory, large when the reconstruction is
wrong, and -- unlike the Gappy residual -- it sees an error of the p coefficients inside
the span.
"""
from __future__ import annotations

import gc
import math

import numpy as np
import pytest
from mpi4py import MPI

import ddrom  # noqa: F401
from test_enrichment import _build, _case

pytestmark = pytest.mark.slow


def _collective_ok(comm, fn) -> None:
    """Run the assertions ``fn`` on rank 0 and fail on every rank with its message."""
    ok, msg = True, ""
    if comm.rank == 0:
        try:
            fn()
        except AssertionError as exc:
            ok, msg = False, str(exc)
    ok, msg = comm.bcast((ok, msg), root=0)
    assert ok, msg


@pytest.mark.mpi
def test_p_monitor_zero_on_training_and_equal_across_rank_counts(shared_tmp):
    from ddrom.workflow.rom import run_rom

    world = MPI.COMM_WORLD
    path = _case(shared_tmp, world, "mon", enabled=False)
    _build(path, world)
    on = run_rom(path, world, [{"A": 1.0}], write=False).runs[0].result
    off = run_rom(path, world, [{"A": 1.8}], write=False).runs[0].result
    m = on.model
    assert m.monitor is not None and len(m.monitor.point_gids) > 0
    # disjoint from the sample points: a hold-out set
    assert not set(m.monitor.point_gids.tolist()) & set(m.point_gids.tolist())
    # a training trajectory: the reconstruction is exact at the monitor points too (round-off)
    assert np.nanmax(on.indicators["p_monitor"]) < 1e-8, on.indicators["p_monitor"]
    assert np.nanmax(off.indicators["p_monitor"]) > 1e-2, off.indicators["p_monitor"]
    gc.collect()
    ser = _case(shared_tmp, world, "mon_ser", enabled=False)

    def compare() -> None:
        _build(ser, MPI.COMM_SELF)
        r = run_rom(ser, MPI.COMM_SELF, [{"A": 1.8}], write=False).runs[0].result
        gc.collect()
        np.testing.assert_array_equal(r.model.monitor.point_gids, m.monitor.point_gids)
        np.testing.assert_allclose(r.indicators["p_monitor"], off.indicators["p_monitor"], rtol=1e-6, atol=1e-12)

    _collective_ok(world, compare)


@pytest.mark.mpi
def test_p_monitor_sees_an_error_inside_the_span(shared_tmp):
    """p at the sample points off by 5 % along the span (scaled, or plus a mode): the Gappy
    residual cannot change (it is the residual of a projection), the hold-out error is 5 %."""
    from ddrom.io.store import SnapshotStore
    from ddrom.rom.online import ReducedSolver
    from ddrom.rom.operators import values_at_points
    from ddrom.workflow.case import load_case
    from ddrom.workflow.hf import store_path
    from ddrom.workflow.rom import hf_context, rom_path
    from ddrom.parallel import Timers
    from ddrom.rom.model import load_model

    comm = MPI.COMM_WORLD
    path = _case(shared_tmp, comm, "span", enabled=False)
    _build(path, comm)
    case = load_case(path)
    dm, _ = hf_context(case, comm, Timers())
    model = load_model(rom_path(case), comm)
    solver = ReducedSolver(model, {"A": 1.0})
    store = SnapshotStore.open(store_path(case, "training"), comm, mode="r", dmesh=dm)
    name = [s.name for s in store.simulations() if abs(s.params["A"] - 1.0) < 1e-12][0]
    k = store.read_times(name).size - 1
    p = store.read_qp(name, "p", k, dm).reshape(-1)
    store.close()
    p_I = values_at_points(dm, p, model.point_gids)
    p_M = values_at_points(dm, p, model.monitor.point_gids)
    assert np.linalg.norm(p_M) > 0
    base = solver.indicators(p_I, np.zeros((len(p_I), 6)), 0.0, p_M)
    assert base["p"] < 1e-8 and base["p_monitor"] < 1e-8, base
    Phi_I = model.gappy.basis_at_samples
    mode = Phi_I[:, 0] * (0.05 * np.linalg.norm(p_I) / np.linalg.norm(Phi_I[:, 0]))
    for wrong in (1.05 * p_I, p_I + mode):
        got = solver.indicators(wrong, np.zeros((len(p_I), 6)), 0.0, p_M)
        # inside the span: the Gappy residual does not move
        assert got["p"] < 1e-8, got
        # the reconstruction at the monitor points is off by the perturbation's share there
        assert got["p_monitor"] > 1e-2, got
    got = solver.indicators(1.05 * p_I, np.zeros((len(p_I), 6)), 0.0, p_M)
    assert abs(got["p_monitor"] - 0.05) < 1e-6, got


@pytest.mark.mpi
def test_p_monitor_calibrated_detected_and_triggers_enrichment(shared_tmp):
    from ddrom.rom.calibration import calibrate_indicator, detection
    from ddrom.rom.online import INDICATOR_COMPONENTS
    from ddrom.workflow.rom import compare_runs, run_rom

    comm = MPI.COMM_WORLD
    path = _case(shared_tmp, comm, "cal", enabled=False, max_enrichments=1, tol=None)
    _build(path, comm)
    from ddrom.workflow.hf import hf_sweep

    hf_sweep(path, comm, which="test")
    runs = run_rom(path, comm, write=False)                 # the test point, A = 1.8
    errors = compare_runs(path, comm, runs.runs, runs.model)
    assert "p_monitor" in errors[0]["indicators_per_step"]
    cal = calibrate_indicator(errors, 1e-2, 0.95, targets={"u": 1e-3}, components=INDICATOR_COMPONENTS)
    assert "p_monitor" in cal["components"]
    assert cal["components"]["p_monitor"]["quantity"] == "p"
    # detection counts a step flagged by the p_monitor component alone
    det = detection(errors, {"p_monitor": 1e-6}, {"p": 1e-2, "u": 1e-3})
    assert det["flagged"] == sum(1 for v in errors[0]["indicators_per_step"]["p_monitor"][1:] if v > 1e-6)
    # the enrichment triggers on it alone
    res = run_rom(path, comm, enrich=True, indicator_tols={"p_monitor": 1e-3}, write=False,
                  save_rom=False).runs[0].result
    assert res.n_enrichments == 1
    ev = res.enrichments[0]
    assert "p_monitor indicator" in ev["reason"], ev["reason"]
    # the march resumes from the HF state at the monitor points as well: the hold-out error
    # there is the enriched reconstruction's, far below the one that triggered
    assert ev["indicators_after"]["p_monitor"] < 0.1 * ev["indicators_before"]["p_monitor"], ev


@pytest.mark.mpi
def test_rom_file_without_monitor_points_loads_and_runs(shared_tmp):
    """A schema-5 file (no /online/monitor): loads, runs, the component is absent (nan) and
    calibrates to no tolerance."""
    import h5py

    from ddrom.io.integrity import stamp_attrs
    from ddrom.rom.calibration import calibrate_indicator
    from ddrom.rom.model import load_model
    from ddrom.rom.online import INDICATOR_COMPONENTS
    from ddrom.workflow.case import load_case
    from ddrom.workflow.hf import hf_sweep
    from ddrom.workflow.rom import compare_runs, rom_path, run_rom

    comm = MPI.COMM_WORLD
    path = _case(shared_tmp, comm, "old", enabled=False)
    _build(path, comm)
    hf_sweep(path, comm, which="test")
    rom = rom_path(load_case(path))
    if comm.rank == 0:
        with h5py.File(rom, "a") as f:
            del f["online/monitor"]
            f.attrs["schema_version"] = 5
            stamp_attrs(f)
    comm.Barrier()
    assert load_model(rom, comm).monitor is None
    runs = run_rom(path, comm, write=False)
    res = runs.runs[0].result
    assert all(math.isnan(v) for v in res.indicators["p_monitor"])
    assert np.nanmax(res.indicators["p"]) > 0
    errors = compare_runs(path, comm, runs.runs, runs.model)
    cal = calibrate_indicator(errors, 1e-2, 0.95, targets={"u": 1e-3}, components=INDICATOR_COMPONENTS)
    assert "p_monitor" not in cal.get("tolerances", {})
    assert "too few" in cal["components"]["p_monitor"]["message"]


def test_new_field_tolerance_from_the_between_run_scatter():
    """Two calibration fields whose error/indicator ratios differ by e^0.5: the pooled bound
    hides it, the new-field bound (Student t with 1 dof on the run offsets) is far lower;
    one field cannot give a new-field tolerance."""
    from ddrom.rom.calibration import calibrate_component

    rng = np.random.default_rng(0)
    pairs, groups = [], []
    for run, offset in enumerate((0.0, 0.5)):
        x = np.exp(rng.uniform(math.log(1e-4), math.log(1e-1), 20))
        pairs += list(zip(x, x * np.exp(offset + 0.05 * rng.standard_normal(20))))
        groups += [run] * 20
    two = calibrate_component(pairs, 1e-2, 0.95, groups)
    assert two["runs"] == 2
    assert two["between_run_std_log"] > 5 * two["within_run_std_log"]
    assert two["indicator_tolerance_new_field"] < 0.2 * two["indicator_tolerance"]
    # the new field of ratio e^1.5 (worse than both) is still caught at the new-field tolerance
    assert math.exp(1.5) * two["indicator_tolerance_new_field"] < 1e-2
    one = calibrate_component(pairs[:20], 1e-2, 0.95, groups[:20])
    assert one["runs"] == 1 and one["indicator_tolerance_new_field"] is None
    # without groups nothing changes
    assert "indicator_tolerance_new_field" not in calibrate_component(pairs, 1e-2, 0.95)


def test_tolerances_for_a_field_unlike_the_calibration_fields():
    from ddrom.rom.calibration import FIELD_DISTANCE_TOL, field_distance, tolerances_for_field

    fields = [[[1.0, 0.0], [2.0, 0.0]], [[0.0, 1.0]]]
    assert field_distance(np.array([[2.0, 0.0], [0.0, 1.0]]), fields) == 0.0
    assert field_distance(np.array([[1.0, 1.0]]), fields) == pytest.approx(1.0 / math.sqrt(2.0))
    assert field_distance(np.array([[1.0, 1.0]]), []) == math.inf
    cal = {"indicator_tolerance": 4e-3, "tolerances": {"p": 4e-3, "p_monitor": 2e-3, "stress": 0.2},
           "tolerances_new_field": {"p": 1e-3, "p_monitor": None}}
    tols = {"p": 4e-3, "p_monitor": 2e-3, "stress": 0.2}
    same, rep = tolerances_for_field(cal, 0.5 * FIELD_DISTANCE_TOL, tols)
    assert same == tols and not rep["new_field"]
    new, rep = tolerances_for_field(cal, 0.3, tols)
    assert new == {"p": 1e-3, "p_monitor": 2e-3, "stress": 0.2}
    assert rep["replaced"] == {"p": [4e-3, 1e-3]} and rep["not_validated"] == ["p_monitor"]
    # a tolerance the user gave is not the calibration's to change
    given, rep = tolerances_for_field(cal, 0.3, {**tols, "p": 5e-3})
    assert given["p"] == 5e-3 and not rep["replaced"]


def test_beyond_span_tolerance_from_the_between_block_scatter():
    """One calibration run whose error/indicator ratio grows over its history (offsets 0,
    0.15, 0.3 in log over its three thirds): the pooled bound hides the trend, the
    beyond-span bound (Student t, 2 dof, on the block offsets) is lower and still catches a
    later step whose ratio went on growing (e^0.45); within the span nothing changes."""
    from ddrom.rom.calibration import TIME_BLOCKS, calibrate_indicator, component_pairs, tolerances_for_time

    rng = np.random.default_rng(1)
    n = 30
    t = np.linspace(0.0, 60.0, n + 1)
    x = np.exp(rng.uniform(math.log(1e-4), math.log(1e-1), n + 1))
    offset = np.array([0.0, 0.15, 0.3])[np.minimum((TIME_BLOCKS * t / t[-1]).astype(int), TIME_BLOCKS - 1)]
    err = x * np.exp(offset + 0.03 * rng.standard_normal(n + 1))
    run = {"name": "r", "times": t.tolist(), "p_error_per_step": err.tolist(), "u_error_per_step": [0.0] * (n + 1),
           "indicators_per_step": {"p": x.tolist()}}
    _, _, blocks = component_pairs([run], "p", with_blocks=True)
    assert blocks[0] == 0 and blocks[-1] == TIME_BLOCKS - 1 and sorted(set(blocks)) == [0, 1, 2]
    cal = calibrate_indicator([run], 1e-2, 0.95, components=("p",))
    tol, beyond = cal["indicator_tolerance"], cal["tolerances_beyond_span"]["p"]
    assert cal["calibrated_t_end"] == 60.0
    assert beyond < 0.8 * tol
    # the later step the trend predicts: missed at the pooled tolerance, caught beyond the span
    assert math.exp(0.45) * tol > 1e-2 and math.exp(0.45) * beyond < 1e-2
    tols = {"p": tol, "stress": 0.3}
    same, rep = tolerances_for_time(cal, 60.0, tols)
    assert same == tols and not rep["beyond_span"]
    later, rep = tolerances_for_time(cal, 1000.0, tols)
    assert rep["beyond_span"] and later == {"p": beyond, "stress": 0.3}
    assert rep["replaced"] == {"p": [tol, beyond]}
    # a tolerance the user gave is not the calibration's to change
    given, rep = tolerances_for_time(cal, 1000.0, {"p": 5e-3})
    assert given == {"p": 5e-3} and not rep["replaced"]
    # a calibration without blocks to compare (no bound): kept, reported as not validated
    none, rep = tolerances_for_time({**cal, "tolerances_beyond_span": {"p": None}}, 1000.0, tols)
    assert none == tols and rep["not_validated"] == ["p"]


@pytest.mark.mpi
def test_run_beyond_the_calibrated_span_takes_the_beyond_span_tolerances(shared_tmp):
    """The bar calibrated on its test history, then run twice as long with enrichment: the run
    reports the span and takes the calibration's beyond-span tolerances (same on every rank)."""
    from ddrom.rom.calibration import calibrate_indicator
    from ddrom.rom.model import store_calibration
    from ddrom.rom.online import INDICATOR_COMPONENTS
    from ddrom.workflow.case import load_case
    from ddrom.workflow.hf import hf_sweep
    from ddrom.workflow.rom import compare_runs, rom_path, run_rom

    comm = MPI.COMM_WORLD
    path = _case(shared_tmp, comm, "span_t", enabled=False, max_enrichments=1, tol=None)
    _build(path, comm)
    hf_sweep(path, comm, which="test")
    runs = run_rom(path, comm, write=False)
    errors = compare_runs(path, comm, runs.runs, runs.model)
    cal = calibrate_indicator(errors, 1e-2, 0.95, targets={"u": 1e-3}, components=INDICATOR_COMPONENTS)
    case = load_case(path)
    t_end = float(errors[0]["times"][-1])
    assert cal["calibrated_t_end"] == t_end
    beyond = cal["tolerances_beyond_span"]
    # every calibrated component (the temperature one here is the uncalibrated fallback)
    assert "p" in beyond and set(beyond) == {k for k, c in cal["components"].items()
                                             if c.get("indicator_tolerance") and not c.get("fallback")}
    store_calibration(rom_path(case), cal, comm)
    # within the span: the calibrated tolerances, no replacement
    res = run_rom(case, comm, enrich=True, write=False, save_rom=False).runs[0].result
    assert not res.field_check["time"]["beyond_span"]
    longer = case.with_t_end(2 * t_end)
    res = run_rom(longer, comm, enrich=True, write=False, save_rom=False).runs[0].result
    rep = res.field_check["time"]
    assert rep["beyond_span"] and rep["t_end"] == pytest.approx(2 * t_end)
    lowered = {k: v for k, v in beyond.items() if v is not None and v < cal["tolerances"][k]}
    assert lowered, beyond
    assert rep["replaced"] == {k: [cal["tolerances"][k], v] for k, v in lowered.items()}
    assert comm.allgather(sorted(rep["replaced"].items())) == [sorted(rep["replaced"].items())] * comm.size
