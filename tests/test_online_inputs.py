"""Online inputs from the case (issue #12), at 1 and 3 ranks.

A thermo-elastic bar heated by nodal temperature fields read from files (one file per
training/test point through a parameter of kind "file"): the ROM answers a field in the
span of the training's exactly, a field with a hot spot elsewhere is flagged by the
temperature component of the indicator and repaired by enrichment; time series of fields;
and every kind of difference between a case and a ROM file runs or is refused by name.
Cases are built with the library API (``Case.from_dict`` / ``Case.replace``).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

import ddrom
from ddrom.parallel import CollectiveError, DdromError

COMM = MPI.COMM_WORLD
BOX = {"lx": 4.0, "ly": 1.0, "lz": 1.0, "nx": 8, "ny": 2, "nz": 2}
ELASTIC = {"law": "elastic", "E": 200e3, "nu": 0.3, "alpha": 1.2e-5, "T_ref": 20.0}


def hot_spot(points: np.ndarray, xc: float, amp: float) -> np.ndarray:
    return 20.0 + amp * np.exp(-((points[:, 0] - xc) / 0.8) ** 2)


def write_xdmf_series(path: Path, points, cells, frames) -> None:
    """An XDMF temporal collection ``frames = [(t, {name: values})]`` (meshio's writer puts its
    .h5 in the current folder: written from the file's folder)."""
    import contextlib

    import meshio

    with contextlib.chdir(path.parent), meshio.xdmf.TimeSeriesWriter(path.name) as w:
        w.write_points_cells(points, cells)
        for t, data in frames:
            w.write_data(t, point_data=data)


def write_fields_serial(folder: Path, specs: dict[str, tuple[float, float]]) -> None:
    """Hot-spot fields on the box's nodes (natural order): XDMF time series of one step, and VTU."""
    import meshio

    from ddrom.mesh.generators import generate

    m = generate("box", **BOX)
    for name, (xc, amp) in specs.items():
        T = hot_spot(m.points, xc, amp)
        write_xdmf_series(folder / f"{name}.xdmf", m.points, [(m.cell_type, m.cells)], [(0.0, {"T": T})])
        meshio.write(str(folder / f"{name}.vtu"), meshio.Mesh(m.points, [(m.cell_type, m.cells)],
                                                                point_data={"T": T}))


def write_fields(folder: Path, specs: dict[str, tuple[float, float]]) -> None:
    """:func:`write_fields_serial` on rank 0, every rank waits."""
    if COMM.rank == 0:
        write_fields_serial(folder, specs)
    COMM.Barrier()


def base_data(train: list[str], test: list[str], ext: str = "xdmf") -> dict:
    return {
        "case": {"name": "thermal"},
        "mesh": {"generator": "box", "args": dict(BOX)},
        "material": dict(ELASTIC),
        "parameters": {"field": {"kind": "file", "description": "temperature of a thermal analysis"},
                       "A": {"min": 0.5, "max": 2.0, "default": 1.0}},
        "time": {"t_end": 2.0, "n_steps": 4},
        "loads": {"dirichlet": [{"region": "xmin"}],
                  "traction": [{"region": "xmax", "vector": ["40 * A * tri(t, 2)", 0.0, 0.0]}]},
        "temperature": {"file": "{field}", "field": "T", "scale": "ramp(t, 1)", "T_ref": 20.0},
        "solver": {"newton_rtol": 1e-11, "petsc_options": {"ksp_rtol": 1e-13}},
        "rom": {"pod_tol": 1e-9, "ecm_tol": 1e-9, "temperature_sensors": 24},
        "training": {"values": [{"field": f"{f}.{ext}", "A": 1.0} for f in train] +
                               [{"field": f"{train[0]}.{ext}", "A": 2.0}]},
        "test": {"values": [{"field": f"{f}.{ext}", "A": 1.5} for f in test]},
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Fields f1, f2 (training), f12 = f1 + f2 - 20 (in their span) and g (a hot spot elsewhere);
    the case trained on f1, f2; HF training and test stores and the ROM built."""
    folder = Path(COMM.bcast(str(tmp_path_factory.mktemp("thermal")) if COMM.rank == 0 else None, root=0))
    write_fields(folder, {"f1": (0.8, 300.0), "f2": (2.0, 200.0), "g": (3.4, 400.0)})
    if COMM.rank == 0:          # f12: the sum of the two hot spots, a combination of the training fields
        import meshio

        a, b = (meshio.read(str(folder / f"{n}.vtu")) for n in ("f1", "f2"))
        T = a.point_data["T"] + b.point_data["T"] - 20.0
        write_xdmf_series(folder / "f12.xdmf", a.points, a.cells, [(0.0, {"T": T})])
    COMM.Barrier()
    case = ddrom.Case.from_dict(base_data(["f1", "f2"], ["f12", "g"]), folder)
    ddrom.run_hf(case, COMM, which="all")
    ddrom.build_rom(case, COMM)
    return case


@pytest.mark.mpi
def test_temperature_fields_in_span_exact_and_new_hot_spot_flagged(built):
    case = built
    runs = ddrom.run_rom(case, COMM, enrich=False)
    errs = ddrom.compare_runs(case, COMM, runs.runs, runs.model)
    in_span, new = errs
    assert in_span["displacement"] < 1e-7 and in_span["stress"] < 1e-6, in_span
    assert new["displacement"] > 1e-2, new                   # the plain ROM misses the new hot spot
    r_in, r_new = runs.runs[0].result, runs.runs[1].result
    assert np.nanmax(r_in.indicators["temperature"]) < 1e-8
    assert np.nanmax(r_new.indicators["temperature"]) > 1e-1
    # the XDMF fields are in the mesh's natural order: only the ROM's nodes were read
    assert runs.runs[0].inputs.temperature.access == "rows"
    # enrichment repairs it; the temperature component triggers it (no tolerance given: the fallback)
    enr = ddrom.run_rom(case, COMM, [{"field": str(case.folder / "g.xdmf"), "A": 1.5}], enrich=True,
                        indicator_tol=1e9, write=False)
    res = enr.runs[0].result
    assert res.n_enrichments >= 1 and "temperature indicator" in res.enrichments[0]["reason"], res.enrichments
    test_g = type(enr.runs[0])("test_001", enr.runs[0].params, res, enr.runs[0].inputs)
    e = ddrom.compare_runs(case, COMM, [test_g], enr.model)[0]
    assert e["displacement"] < 1e-6 and e["stress"] < 1e-5, e


@pytest.mark.mpi
def test_vtu_fields_read_whole_give_the_same_rom(built):
    """The same fields as VTU: meshio reads a VTU whole (nodes matched by coordinates); the
    online temperature and the ROM answer are the same as with the XDMF rows."""
    case = built.replace({"test": {"values": [{"field": "f12.vtu" if False else "g.vtu", "A": 1.5}]}})
    a = ddrom.run_rom(built, COMM, [{"field": str(built.folder / "g.xdmf"), "A": 1.5}], write=False).runs[0]
    b = ddrom.run_rom(case, COMM, [{"field": str(built.folder / "g.vtu"), "A": 1.5}], write=False).runs[0]
    assert b.inputs.temperature.access == "whole" and a.inputs.temperature.access == "rows"
    np.testing.assert_allclose(b.result.q, a.result.q, rtol=1e-10, atol=1e-14)


@pytest.mark.mpi
def test_temperature_series_interpolated_in_time(tmp_path_factory):
    """A series of fields (XDMF temporal collection): the HF and the ROM interpolate in time;
    trained on the series, the ROM reproduces it; a time beyond the series is refused by name."""
    from ddrom.mesh.generators import generate

    folder = Path(COMM.bcast(str(tmp_path_factory.mktemp("series")) if COMM.rank == 0 else None, root=0))
    if COMM.rank == 0:
        m = generate("box", **BOX)
        write_xdmf_series(folder / "s.xdmf", m.points, [(m.cell_type, m.cells)],
                          [(t, {"T": hot_spot(m.points, xc, amp)})
                           for t, (xc, amp) in zip((0.0, 1.0, 2.0), ((1.0, 0.0), (1.0, 300.0), (3.0, 300.0)))])
    COMM.Barrier()
    data = base_data(["s"], ["s"])
    data["temperature"] = {"file": "s.xdmf", "field": "T", "series": True, "T_ref": 20.0}
    data["parameters"] = {"A": {"min": 0.5, "max": 2.0}}
    data["training"] = {"values": [{"A": 1.0}, {"A": 2.0}]}
    data["test"] = {"values": [{"A": 1.5}]}
    case = ddrom.Case.from_dict(data, folder)
    ddrom.run_hf(case, COMM, which="all")
    ddrom.build_rom(case, COMM)
    runs = ddrom.run_rom(case, COMM)
    e = ddrom.compare_runs(case, COMM, runs.runs, runs.model)[0]
    assert e["displacement"] < 1e-7, e
    assert runs.runs[0].inputs.temperature.access == "rows"
    # beyond the series' span: one message naming the file and the span
    longer = case.with_t_end(3.0)
    with pytest.raises(CollectiveError, match=r"s\.xdmf: time 2\.5 is outside the series' time span \[0, 2\]"):
        ddrom.run_rom(longer, COMM, write=False)


# ------------------------------------------------------------------ differences
def _expect_refused(case, what: str):
    with pytest.raises(CollectiveError, match=what):
        ddrom.run_rom(case, COMM, write=False)


@pytest.mark.mpi
@pytest.mark.parametrize("change, what", [
    ({"mesh": {"args": {"nx": 10}}}, r"mesh: the ROM was built on generator box"),
    ({"material": {"E": 210e3}}, r"material: differs in \['E'\]"),
    ({"loads": {"dirichlet": [{"region": "xmax"}],
                "traction": [{"region": "xmin", "vector": ["40 * A * tri(t, 2)", 0.0, 0.0]}]}},
     r"Dirichlet conditions \(region, components\)"),
    ({"loads": {"pressure": [{"region": "ymax", "value": "A"}]}}, r"loads \(name, kind, region\)"),
    ({"loads": {"traction": [{"region": "xmax", "vector": ["40 * A * tri(t, 2) * (1 + y)", 0.0, 0.0]}]}},
     r"depends on x, y, z; the ROM was built with an expression constant in space"),
    ({"solver": {"element_technology": "full"}}, r"element technology: ROM 'bbar', case 'full'"),
    ({"parameters": {"B": {"min": 0.0, "max": 1.0, "default": 0.5}}}, r"parameters: the ROM takes field \(file\), A"),
])
def test_refused_differences_name_what_differs(built, change, what):
    _expect_refused(built.replace(change), what)


@pytest.mark.mpi
def test_differences_that_run(built):
    """Longer time span (time extrapolation, flagged), other load amplitudes on the same regions,
    a new temperature field, a parameter outside the range (flagged): they run, and say so."""
    case = built.replace({"loads": {"traction": [{"region": "xmax", "vector": ["60 * A * tri(t, 2)", 0.0, 0.0]}]},
                          "time": {"t_end": 4.0, "n_steps": 8}})
    run = ddrom.run_rom(case, COMM, [{"field": str(built.folder / "f1.xdmf"), "A": 2.5}], write=False).runs[0]
    assert len(run.result.times) == 9 and run.result.times[-1] == 4.0
    assert run.inputs.extrapolation["time"]["factor"] == 2.0
    assert run.inputs.extrapolation["parameters"] == [{"name": "A", "value": 2.5, "min": 0.5, "max": 2.0}]
    assert any("load expressions differ" in n for n in run.inputs.notes), run.inputs.notes
    # the traction scales linearly (elastic): 60 * 2.5 = 150 vs 40 * 1.5 * 2.5 ... the ROM follows the
    # case's expression, not the stored one: u at t = 1 is that of an HF run of the new expression
    ref = ddrom.run_rom(built, COMM, [{"field": str(built.folder / "f1.xdmf"), "A": 2.5 * 1.5}],
                        write=False).runs[0]
    np.testing.assert_allclose(run.result.q[:5], ref.result.q[:5], rtol=1e-8, atol=1e-12)


@pytest.mark.mpi
def test_parameter_names_checked(built):
    f = str(built.folder / "f1.xdmf")
    with pytest.raises(CollectiveError, match=r"unknown parameter\(s\) \['B'\]"):
        ddrom.run_rom(built, COMM, [{"field": f, "A": 1.0, "B": 2.0}], write=False)
    with pytest.raises(CollectiveError, match=r"no value for parameter 'field'"):
        ddrom.run_rom(built, COMM, [{"A": 1.0}], write=False)
    # A has a declared default: taken and recorded; refused when defaults are not allowed
    run = ddrom.run_rom(built, COMM, [{"field": f}], write=False).runs[0]
    assert run.inputs.defaulted == ["A"] and run.params["A"] == 1.0
    assert any("took the declared default" in n for n in run.inputs.notes)
    with pytest.raises(CollectiveError, match=r"no value for parameter 'A' \(it has a default"):
        ddrom.run_rom(built, COMM, [{"field": f}], write=False, allow_defaults=False)


def test_case_refuses_missing_temperature_files(tmp_path):
    data = base_data(["f1", "nope"], ["f1"])
    (tmp_path / "f1.xdmf").write_text("")
    with pytest.raises(DdromError, match=r"temperature\.file: file 'nope\.xdmf' not found .* for the point"):
        ddrom.Case.from_dict(data, tmp_path)
    data = base_data(["f1"], ["f1"])
    data["temperature"]["file"] = "{fieldd}"
    with pytest.raises(DdromError, match=r"placeholder \{fieldd\} is not a parameter \(did you mean 'field'\?\)"):
        ddrom.Case.from_dict(data, tmp_path)


def test_calibration_bound_with_leverage_and_extrapolation():
    """Inside the calibrated indicators the tolerance is where the prediction bound meets the
    target; beyond them the error is taken to grow at least in proportion to the indicator
    (not along a shallower fitted slope); a component without informative pairs takes the
    fallback tolerance."""
    from ddrom.rom.calibration import UNCALIBRATED_TOLERANCES, calibrate_component, calibrate_indicator

    rng = np.random.default_rng(0)
    x = np.exp(rng.uniform(np.log(1e-4), np.log(5e-3), 42))
    y = np.exp(-1.8 + 0.6 * np.log(x) + rng.normal(0, 0.077, 42))
    r = calibrate_component(zip(x, y), 1e-2)               # the target lies beyond the calibrated errors
    assert r["extrapolated"] and x.max() < r["indicator_tolerance"] < r["indicator_tolerance_fit"]
    r = calibrate_component(zip(x, y), 1e-3)               # ... and here inside them
    assert not r.get("extrapolated") and x.min() < r["indicator_tolerance"] < x.max()
    flat = np.exp(-14 + rng.normal(0, 0.3, 42))            # errors 1e-6, no trend, target 1e-3
    r = calibrate_component(zip(x, flat), 1e-3)
    assert r["extrapolated"] == "above" and r["indicator_tolerance"] > 100 * x.max()
    r = calibrate_component(zip(x, 1e4 * flat), 1e-3)      # every calibrated error above the target
    assert r["extrapolated"] == "below" and r["indicator_tolerance"] < x.min() / 10
    errors = [{"name": "a", "indicator_per_step": list(x), "p_error_per_step": list(y),
               "indicators_per_step": {"p": list(x), "temperature": [1e-15] * 42, "stress": list(x)},
               "u_error_per_step": list(flat)}]
    cal = calibrate_indicator(errors, 1e-2, targets={"u": 1e-3}, components=("p", "stress", "temperature"))
    assert cal["tolerances"]["temperature"] == UNCALIBRATED_TOLERANCES["temperature"]
    assert cal["components"]["temperature"]["fallback"] and cal["tolerances"]["stress"] > 100 * x.max()


THERMAL_TOML = """
[case]
name = "thermal"
[mesh]
generator = "box"
args = { lx = 4.0, ly = 1.0, lz = 1.0, nx = 8, ny = 2, nz = 2 }
[material]
law = "elastic"
E = 200e3
nu = 0.3
alpha = 1.2e-5
T_ref = 20.0
[parameters]
field = { kind = "file", description = "temperature of a thermal analysis" }
A = { min = 0.5, max = 2.0, default = 1.0 }
[time]
t_end = 2.0
n_steps = 4
[loads]
dirichlet = [{ region = "xmin" }]
traction = [{ region = "xmax", vector = ["40 * A * tri(t, 2)", 0.0, 0.0] }]
[temperature]
file = "{field}"
field = "T"
scale = "ramp(t, 1)"
T_ref = 20.0
[solver]
newton_rtol = 1e-11
petsc_options = { ksp_rtol = 1e-13 }
[rom]
pod_tol = 1e-9
ecm_tol = 1e-9
temperature_sensors = 24
[training]
values = [{ field = "f1.xdmf", A = 1.0 }, { field = "f2.xdmf", A = 1.0 }, { field = "f1.xdmf", A = 2.0 }]
[test]
values = [{ field = "f12.xdmf", A = 1.5 }, { field = "g.xdmf", A = 1.5 }]
"""


def test_cli_online_time_override_and_flags(built):
    """``ddrom online --t-end`` runs past the training span and the JSON says so; a file
    parameter's path is relative to where the user types it; an unknown --param exits 2 with
    one message; --fields writes where it is told."""
    from helpers import ddrom_cli

    folder = built.folder                # (not an MPI test: it launches its own 3-rank job)
    (folder / "thermal.toml").write_text(THERMAL_TOML)
    base = ["online", "thermal.toml", "--param", "field=g.xdmf", "--param", "A=1.5"]
    r = ddrom_cli(3, *base, "--t-end", "4", "--quiet", "--json", "-", "--fields", str(folder / "mine.h5"),
                  cwd=folder, timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    run = out["runs"][0]
    assert run["steps"] == 8 and run["t_end"] == 4.0 and run["extrapolation"]["time"]["factor"] == 2.0
    assert run["temperature_file"] == str(folder / "g.xdmf") and run["temperature_read"] == "rows"
    assert out["fields"] == str(folder / "mine.h5") and (folder / "mine.h5").is_file()
    r = ddrom_cli(3, *base, "--param", "B=1", "--quiet", cwd=folder, timeout=600)
    assert r.returncode == 2 and r.stderr.count("unknown parameter(s) ['B']") == 1, r.stderr


# ============================================================== nodal concentrated loads
NODAL = [{"region": "xmax", "force_per_node": ["A * t", 0.0, 0.0]},
         {"region": "ymax", "force_per_node": [0.0, 0.0, "B * t * (1 + x)"]}]


@pytest.fixture(scope="module")
def nodal_built(tmp_path_factory):
    """An elastic bar under two nodal forces (*CLOAD): a constant one on the nodes of x = 4 and
    one that depends on x on the nodes of y = 1; trained on each alone."""
    folder = Path(COMM.bcast(str(tmp_path_factory.mktemp("nodal")) if COMM.rank == 0 else None, root=0))
    case = ddrom.Case.from_dict({
        "case": {"name": "nodal"}, "mesh": {"generator": "box", "args": dict(BOX)},
        "material": {"law": "elastic", "E": 200e3, "nu": 0.3},
        "parameters": {"A": {"min": 0.0, "max": 2.0}, "B": {"min": 0.0, "max": 2.0}},
        "time": {"t_end": 1.0, "n_steps": 2},
        "loads": {"dirichlet": [{"region": "xmin"}], "nodal": NODAL},
        "solver": {"newton_rtol": 1e-11, "petsc_options": {"ksp_rtol": 1e-13}},
        "rom": {"pod_tol": 1e-9, "ecm_tol": 1e-9},
        "training": {"values": [{"A": 1.0, "B": 0.0}, {"A": 0.0, "B": 1.0}]},
        "test": {"values": [{"A": 0.5, "B": 1.7}]},
    }, folder)
    ddrom.run_hf(case, COMM, which="all")
    ddrom.build_rom(case, COMM)
    return case


@pytest.mark.mpi
def test_nodal_loads_through_the_rom(nodal_built):
    """The reduced load terms of a nodal force are the modes' values at the region's nodes (summed
    for a force constant in space, one row per node, in coordinate order, otherwise), whatever
    the number of ranks; the ROM reproduces the HF at an unseen point (elastic: exactly)."""
    import h5py

    from ddrom.mesh.generators import generate
    from ddrom.rom.model import load_model
    from ddrom.workflow.rom import rom_path

    case = nodal_built
    runs = ddrom.run_rom(case, COMM, write=False)
    err = ddrom.compare_runs(case, COMM, runs.runs, runs.model)[0]
    assert err["displacement"] < 1e-8 and err["stress"] < 1e-8, err
    # the load terms against the ROM file's basis (natural order) read whole (tests only)
    model = load_model(rom_path(case), COMM)
    with h5py.File(rom_path(case), "r") as f:
        phi = f["bases"]["displacement"][...]                           # (nodes, 3, N)
    mesh = generate("box", **BOX)
    terms = {L.source: L for L in model.loads}
    assert sorted(terms) == [f"loads.nodal[{i}].force_per_node[{j}]" for i in range(2) for j in range(3)]
    xmax = mesh.nodes_of("xmax")
    for j in range(3):
        t = terms[f"loads.nodal[0].force_per_node[{j}]"]
        assert t.kind == "nodal" and t.xyz is None
        np.testing.assert_allclose(t.coeff[0], phi[xmax, j].sum(axis=0), rtol=1e-12, atol=1e-14)
    ymax = mesh.nodes_of("ymax")
    ymax = ymax[np.lexsort(mesh.points[ymax].T[::-1])]                 # by x, then y, then z
    t = terms["loads.nodal[1].force_per_node[2]"]
    np.testing.assert_array_equal(t.xyz, mesh.points[ymax])
    np.testing.assert_allclose(t.coeff, phi[ymax, 2], rtol=1e-12, atol=1e-14)


@pytest.mark.mpi
@pytest.mark.parametrize("nodal, what", [
    ([dict(NODAL[0], region="zmax"), NODAL[1]], r"loads \(name, kind, region\)"),
    ([dict(NODAL[0], force_per_node=["A * t * y", 0.0, 0.0]), NODAL[1]],
     r"loads.nodal\[0\].force_per_node\[0\] = 'A \* t \* y' depends on x, y, z"),
])
def test_nodal_load_differences_refused_by_name(nodal_built, nodal, what):
    _expect_refused(nodal_built.replace({"loads": {"nodal": nodal}}), what)


@pytest.mark.mpi
def test_nodal_load_amplitudes_run(nodal_built):
    """Other amplitudes on the same nodes run: twice A is the run at 2 A."""
    case = nodal_built.replace({"loads": {"nodal": [dict(NODAL[0], force_per_node=["2 * A * t", 0.0, 0.0]),
                                                    NODAL[1]]}})
    run = ddrom.run_rom(case, COMM, [{"A": 0.5, "B": 0.3}], write=False).runs[0]
    assert any("load expressions differ" in n for n in run.inputs.notes), run.inputs.notes
    ref = ddrom.run_rom(nodal_built, COMM, [{"A": 1.0, "B": 0.3}], write=False).runs[0]
    np.testing.assert_allclose(run.result.q, ref.result.q, rtol=1e-10, atol=1e-14)


def test_api_exports():
    for name in ("load_case", "Case", "run_hf", "build_rom", "run_rom", "calibrate", "cluster", "import_series",
                 "compare_runs", "reconstruct_fields", "run_pipeline", "make_report"):
        assert callable(getattr(ddrom, name)), name
    code = "import sys, ddrom; print(sorted(m for m in ('mpi4py', 'petsc4py', 'h5py') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"          # import ddrom stays light
    assert json.loads(json.dumps(sorted(ddrom.__all__)))


def test_store_hash_follows_the_content_of_temperature_files(tmp_path):
    """A temperature field edited in place (same file name) changes the store hash: the HF
    stores of the old field are not taken for up to date."""
    import shutil

    d = Path(COMM.bcast(str(tmp_path) if COMM.rank == 0 else None, root=0))
    if COMM.rank == 0:
        write_fields_serial(d, {"f1": (0.8, 300.0), "f2": (2.0, 200.0)})
    data = base_data(["f1", "f2"], ["f1"])
    before = ddrom.Case.from_dict(data, d).store_hash("training")
    assert ddrom.Case.from_dict(data, d).store_hash("training") == before
    shutil.copy(d / "f1.h5", d / "f2.h5")           # f2's heavy data replaced, its XDMF unchanged
    assert ddrom.Case.from_dict(data, d).store_hash("training") != before
