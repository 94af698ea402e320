"""Case files: full validation with paths, all errors at once, defaults, deterministic sampling."""
from pathlib import Path

import numpy as np
import pytest

from ddrom.workflow.case import SCHEMA, load_case, validate
from ddrom.parallel import DdromError

CASES = Path(__file__).resolve().parent.parent / "cases"

BASE = """
[case]
name = "t1"

[mesh]
generator = "box"
args = { nx = 2, ny = 2, nz = 2 }

[material]
law = "elastic"
E = 200e3
nu = 0.3

[parameters]
A = { min = 1.0, max = 2.0, default = 1.5 }
B = { min = -1.0, max = 1.0 }

[time]
t_end = 1.0
n_steps = 2

[loads]
dirichlet = [{ region = "xmin" }, { region = "xmax", components = ["x"], value = "A * t" }]

[training]
grid = { A = [1.0, 2.0], B = [-1.0, 0.0, 1.0] }
"""


def loads(extra: str):
    """An edit adding lines to the [loads] section of BASE."""
    return lambda s: s.replace("\n[training]", extra + "\n\n[training]")


def write(tmp_path: Path, text: str, name: str = "case.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def errors_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(DdromError) as exc:
        load_case(write(tmp_path, text))
    return str(exc.value)


def test_base_case_defaults_and_helpers(tmp_path):
    case = load_case(write(tmp_path, BASE))
    raw = case.raw
    assert case.folder == tmp_path and case.path == tmp_path / "case.toml"
    assert case.output_dir == tmp_path / "out" / "t1"
    assert raw["mesh"]["partitioner"] == "ptscotch" and raw["mesh"]["regions"] == {}
    assert raw["loads"]["dirichlet"][0] == {"region": "xmin", "components": [0, 1, 2], "value": 0.0}
    assert raw["loads"]["dirichlet"][1]["components"] == [0]
    assert raw["loads"]["pressure"] == [] and raw["loads"]["traction"] == []
    assert raw["temperature"] == {"T_ref": 20.0, "expression": 20.0, "scale": 1.0}
    assert raw["solver"] == {"newton_rtol": 1e-8, "newton_atol": 1e-12, "max_iterations": 25, "line_search": "fallback",
                             "max_cutbacks": 6, "petsc_options": {}, "element_technology": "bbar"}
    assert raw["rom"]["pod_tol"] == 1e-4 and "max_modes" not in raw["rom"]
    assert case.parameter_names == ["A", "B"] and case.default_parameters() == {"A": 1.5}
    assert case.test_parameters() == [] and case.warnings == []
    # grid: cartesian product, first parameter slowest
    assert case.training_parameters() == [{"A": a, "B": b} for a in (1.0, 2.0) for b in (-1.0, 0.0, 1.0)]
    case.training_parameters()[0]["A"] = 99.0          # a copy: the case is not modified
    assert case.training_parameters()[0]["A"] == 1.0
    e = case.expression("loads.dirichlet[1].value")
    assert e(t=0.5, A=2.0) == 1.0 and e.used == {"A", "t"}
    assert case.expression("temperature.expression").constant == 20.0
    np.testing.assert_allclose(case.times(), [0.5, 1.0])
    with pytest.raises(KeyError, match="no expression at"):
        case.expression("loads.pressure[0].value")


def test_hashes(tmp_path):
    a = load_case(write(tmp_path, BASE, "a.toml"))
    # comments, spacing and explicit defaults change the file hash, not the config hash
    b = load_case(write(tmp_path, "# comment\n" + BASE.replace("[solver]", "") + "\n[solver]\nmax_iterations = 25\n",
                        "b.toml"))
    c = load_case(write(tmp_path, BASE.replace("n_steps = 2", "n_steps = 3"), "c.toml"))
    assert len(a.hash) == 64 and a.hash != b.hash
    assert a.config_hash == b.config_hash != c.config_hash
    import hashlib
    assert a.hash == hashlib.sha256((tmp_path / "a.toml").read_bytes()).hexdigest()


def test_demo_and_tiny_cases_validate():
    demo = load_case(CASES / "demo.toml")
    assert demo.warnings == []
    assert demo.raw["mesh"]["generator"] == "plate_with_hole"
    assert demo.parameter_names == ["T_max", "S_max"]
    tr, te = demo.training_parameters(), demo.test_parameters()
    assert 4 <= len(tr) <= 12 and len(te) == 2
    p = demo.raw["parameters"]
    for pt in tr + te:
        assert all(p[n]["min"] <= v <= p[n]["max"] for n, v in pt.items())
    # 3 cycles of 8 steps, the load peaks (t = 10, 30, 50) are step ends
    t = demo.times()
    assert t.size == 24 and {10.0, 30.0, 50.0} <= set(t.tolist())
    trac = demo.expression("loads.traction[0].vector[0]")
    np.testing.assert_allclose(trac(t=np.array([0.0, 5.0, 10.0, 20.0, 30.0]), S_max=100.0), [0, 50, 100, 0, 100])
    T = demo.expression("temperature.expression")
    np.testing.assert_allclose(T(x=0.0, y=0.0, z=0.0, t=20.0, T_max=800.0), 800.0)
    np.testing.assert_allclose(T(x=0.0, y=0.0, z=0.0, t=0.0, T_max=800.0), 20.0)
    # a small mesh (`make demo` runs in minutes on 2 ranks) whose load regions exist
    from ddrom.mesh.boundary import add_regions
    from ddrom.mesh.generators import generate
    mesh = add_regions(generate(demo.raw["mesh"]["generator"], **demo.raw["mesh"]["args"]),
                       demo.raw["mesh"]["regions"])
    assert 1000 <= mesh.n_nodes <= 6000
    used = {d["region"] for d in demo.raw["loads"]["dirichlet"] + demo.raw["loads"]["traction"]}
    assert used <= set(mesh.region_names())
    tiny = load_case(CASES / "tiny.toml")
    assert tiny.raw["material"]["law"] == "elastic" and tiny.times().size == 2


@pytest.mark.parametrize("edit,expected", [
    # unknown keys and sections, with a suggestion
    (lambda s: s.replace('generator = "box"', 'generator = "box"\npartitionner = "rcb"'),
     "mesh.partitionner: unknown key (did you mean 'partitioner'?)"),
    (lambda s: s + '\n[solvr]\nmax_iterations = 3\n', "solvr: unknown key (did you mean 'solver'?)"),
    (lambda s: s.replace("nx = 2", "nxx = 2"), "mesh.args.nxx: unknown argument of generator 'box' (did you mean 'nx'?)"),
    # wrong types
    (lambda s: s.replace("n_steps = 2", "n_steps = 2.5"), "time.n_steps: expected an integer, got float 2.5"),
    (lambda s: s.replace("nx = 2", 'nx = "2"'), "mesh.args.nx: expected an integer, got string '2'"),
    (lambda s: s.replace("E = 200e3", "E = -1.0"), "material.E: material 'elastic': parameter 'E' must be > 0"),
    (lambda s: s.replace('law = "elastic"', 'law = "elastc"'), "material: [material]: unknown law 'elastc'"),
    (lambda s: s + '\n[solver]\nline_search = "yes"\n', "solver.line_search: expected one of fallback, always, never (or true/false), got 'yes'"),
    # missing required keys
    (lambda s: s.replace('name = "t1"', ''), "case.name: missing required key"),
    (lambda s: s.replace("t_end = 1.0\n", ""), "time: give t_end with n_steps or dt"),
    (lambda s: s.replace('{ region = "xmin" }', '{ components = ["x"] }'), "loads.dirichlet[0].region: missing required key"),
    # bad values
    (lambda s: s + '\n[solver]\nnewton_rtol = -1e-3\n', "solver.newton_rtol: must be > 0, got -0.001"),
    (lambda s: s.replace('generator = "box"', 'generator = "box"\npartitioner = "metis"'),
     "mesh.partitioner: 'metis' is not one of block, ptscotch, rcb"),
    (lambda s: s.replace('generator = "box"', 'generator = "boxx"'), "mesh.generator: 'boxx' is not one of box, plate_with_hole (did you mean 'box'?)"),
    (lambda s: s.replace('name = "t1"', 'name = "a/b"'), "case.name: 'a/b': use letters, digits"),
    (lambda s: s.replace('components = ["x"]', 'components = ["w"]'), "loads.dirichlet[1].components[0]: expected a component"),
    (lambda s: s.replace("n_steps = 2", "n_steps = 2\ndt = 0.5"), "time: give exactly one of n_steps and dt"),
    (lambda s: s.replace("t_end = 1.0\nn_steps = 2", "times = [0.5, 0.25]"), "time.times: times must be positive and strictly increasing"),
    (lambda s: s.replace('generator = "box"', 'generator = "box"\nfile = "m.vtu"'), "mesh: give exactly one of generator, file (got generator and file)"),
    (lambda s: s + '\n[solver]\npetsc_options = { "-ksp_type" = "cg" }\n', "solver.petsc_options.-ksp_type: write PETSc option names without the leading dash ('ksp_type')"),
    (lambda s: s + '\n[mesh.regions]\nr1 = "x >"\n', "mesh.regions.r1: selector 'x >': syntax error"),
    (lambda s: s + '\n[mesh.regions]\nr2 = { plane = 1 }\n', "mesh.regions.r2: unknown selector key"),
    # missing files, relative to the case folder
    (lambda s: s.replace('generator = "box"\nargs = { nx = 2, ny = 2, nz = 2 }', 'file = "meshes/nope.msh"'),
     "mesh.file: file 'meshes/nope.msh' not found (looked for "),
    (lambda s: s + '\n[temperature]\nfile = "T.h5"\nfield = "T"\n', "temperature.file: file 'T.h5' not found"),
    (lambda s: s + '\n[temperature]\nexpression = "20 + x"\nfield = "T"\n', "temperature.field: requires temperature.file"),
    # expressions: unknown names, and the right name sets per key
    (loads('pressure = [{ region = "a", value = 1.0 }, { region = "b", value = "p * t" }]'),
     "loads.pressure[1].value 'p * t': unknown name 'p'"),
    (lambda s: s.replace('value = "A * t"', 'value = "A * x"'), "loads.dirichlet[1].value 'A * x': unknown name 'x'"),
    (loads('traction = [{ region = "a", vector = ["A", 0] }]'), "loads.traction[0].vector: expected an array of 3 values, got 2"),
    (loads('centrifugal = { omega = "100 * ramp(t, 1)" }'), "loads.centrifugal.density: missing required key"),
    (loads('body_force = { vector = [0, 0, "__import__(1)"] }'), "loads.body_force.vector[2] '__import__(1)': unknown name"),
    # parameters
    (lambda s: s.replace("min = 1.0, max = 2.0", "min = 3.0, max = 2.0"), "parameters.A: min = 3 is greater than max = 2"),
    (lambda s: s.replace("default = 1.5", "default = 2.5"), "parameters.A.default: 2.5 is outside [min, max] = [1, 2]"),
    (lambda s: s.replace("B = { min", "t = { min"), "parameters.t: parameter name 't' is reserved"),
    (lambda s: s.replace("B = { min", "exp = { min"), "parameters.exp: parameter name 'exp' is reserved"),
    # sampling
    (lambda s: s.replace("B = [-1.0, 0.0, 1.0]", "Bb = [0.0]"), "training.grid.Bb: unknown parameter 'Bb' (did you mean 'B'?)"),
    (lambda s: s.replace("B = [-1.0, 0.0, 1.0]", "B = [-1.0, 0.0, 1.5]"), "training.grid.B[2]: B = 1.5 is outside [min, max] = [-1, 1]"),
    (lambda s: s.replace("grid = { A = [1.0, 2.0], B = [-1.0, 0.0, 1.0] }", "grid = { A = [1.0] }"),
     "training.grid: no values for parameter(s) ['B'] (and no default)"),
    (lambda s: s.replace("grid = { A = [1.0, 2.0], B = [-1.0, 0.0, 1.0] }", "values = [{ B = 0.5 }, { A = 1.2 }]"),
     "training.values[1]: no value for parameter 'B' (and it has no default)"),
    (lambda s: s.replace("grid = { A = [1.0, 2.0], B = [-1.0, 0.0, 1.0] }", "random = { n = 3 }\ngrid = { A = [1.0] }"),
     "training: give exactly one of grid, random, values, table (got grid and random)"),
    (lambda s: s.replace("[training]\ngrid = { A = [1.0, 2.0], B = [-1.0, 0.0, 1.0] }", ""),
     "training: missing section [training] (required: parameter(s) ['B'] have no default)"),
])
def test_each_error_kind_is_reported_with_its_path(tmp_path, edit, expected):
    msg = errors_of(tmp_path, edit(BASE))
    assert msg.startswith("case.toml: ")
    assert f"  - {expected}" in msg, msg


def test_all_errors_are_reported_together(tmp_path):
    text = (BASE.replace('name = "t1"', 'nme = "t1"')
            .replace("n_steps = 2", "n_steps = 0")
            .replace("nu = 0.3", "nu = 0.7")
            .replace('value = "A * t"', 'value = "C * t"')
            .replace("B = [-1.0, 0.0, 1.0]", "B = [-1.0, 0.0, 3.0]")
            + '\n[temperature]\nfile = "missing.h5"\nfield = "T"\n')
    msg = errors_of(tmp_path, text)
    expected = ["case.nme: unknown key (did you mean 'name'?)", "case.name: missing required key",
                "time.n_steps: must be >= 1, got 0", "material.nu: material 'elastic': parameter 'nu' must be in (-1, 0.5)",
                "loads.dirichlet[1].value 'C * t': unknown name 'C'", "training.grid.B[2]: B = 3 is outside",
                "temperature.file: file 'missing.h5' not found"]
    assert msg.startswith(f"case.toml: {len(expected)} error(s) in the case file:\n")
    lines = msg.splitlines()[1:]
    assert len(lines) == len(expected)
    for e in expected:
        assert sum(line.startswith(f"  - {e}") for line in lines) == 1, (e, msg)


def test_warnings_test_points_outside_and_unknown_rom_keys(tmp_path):
    text = BASE + '\n[test]\nvalues = [{ A = 2.5, B = 0.0 }, { A = 1.5, B = 0.5 }]\n\n[rom]\npod_tol = 1e-3\nmystery = 3\n'
    case = load_case(write(tmp_path, text))
    assert case.test_parameters() == [{"A": 2.5, "B": 0.0}, {"A": 1.5, "B": 0.5}]
    assert len(case.warnings) == 2
    assert case.warnings[0].startswith("rom.mystery: unknown key, kept as is")
    assert case.warnings[1].startswith("test.values[0].A: A = 2.5 is outside [min, max] = [1, 2]")
    assert case.raw["rom"]["mystery"] == 3 and case.raw["rom"]["pod_tol"] == 1e-3


def test_random_sampling_is_deterministic(tmp_path):
    text = BASE.replace("grid = { A = [1.0, 2.0], B = [-1.0, 0.0, 1.0] }", "random = { n = 5, seed = 7 }")
    p1 = load_case(write(tmp_path, text, "a.toml")).training_parameters()
    p2 = load_case(write(tmp_path, text, "b.toml")).training_parameters()
    p3 = load_case(write(tmp_path, text.replace("seed = 7", "seed = 8"), "c.toml")).training_parameters()
    assert p1 == p2 and p1 != p3 and len(p1) == 5
    u = np.random.default_rng(7).uniform(size=(5, 2))       # documented rule: min + (max - min) U
    np.testing.assert_array_equal([[p["A"], p["B"]] for p in p1], np.column_stack([1 + u[:, 0], -1 + 2 * u[:, 1]]))
    # seed defaults to 0
    p0 = load_case(write(tmp_path, text.replace(", seed = 7", ""), "d.toml")).training_parameters()
    np.testing.assert_array_equal(p0[0]["A"], 1 + np.random.default_rng(0).uniform(size=(5, 2))[0, 0])


def test_values_sampling_and_times_with_dt(tmp_path):
    text = (BASE.replace("grid = { A = [1.0, 2.0], B = [-1.0, 0.0, 1.0] }", "values = [{ B = 0.5 }, { A = 1.2, B = 0 }]")
            .replace("n_steps = 2", "dt = 0.3"))
    case = load_case(write(tmp_path, text))
    assert case.training_parameters() == [{"A": 1.5, "B": 0.5}, {"A": 1.2, "B": 0.0}]
    np.testing.assert_allclose(case.times(), [0.3, 0.6, 0.9, 1.0])
    case2 = load_case(write(tmp_path, text.replace("dt = 0.3", "dt = 0.25"), "b.toml"))
    np.testing.assert_allclose(case2.times(), [0.25, 0.5, 0.75, 1.0], rtol=0, atol=0)
    case3 = load_case(write(tmp_path, text.replace("t_end = 1.0\ndt = 0.3", "times = [0.1, 0.5, 2.0]"), "c.toml"))
    np.testing.assert_array_equal(case3.times(), [0.1, 0.5, 2.0])


def test_files_are_relative_to_the_case_folder(tmp_path):
    from ddrom.mesh.generators import box
    from ddrom.mesh.io import write_mesh
    (tmp_path / "sub").mkdir()
    write_mesh(box(1, 1, 1, 1, 1, 1), tmp_path / "sub" / "m.vtu")
    (tmp_path / "sub" / "T.h5").write_bytes(b"")
    text = (BASE.replace('generator = "box"\nargs = { nx = 2, ny = 2, nz = 2 }', 'file = "sub/m.vtu"\npartitioner = "rcb"')
            + '\n[temperature]\nfile = "sub/T.h5"\nfield = "T"\nT_ref = 25.0\n')
    case = load_case(write(tmp_path, text))
    assert case.mesh_file == tmp_path / "sub" / "m.vtu" and case.temperature_file == tmp_path / "sub" / "T.h5"
    assert "expression" not in case.raw["temperature"] and case.raw["temperature"]["T_ref"] == 25.0
    # the same case from another working directory (absolute path given)
    assert load_case(str(tmp_path / "case.toml")).mesh_file.is_file()


def test_unreadable_files(tmp_path):
    with pytest.raises(DdromError, match="cannot read case file"):
        load_case(tmp_path / "nope.toml")
    with pytest.raises(DdromError, match=r"bad\.toml: invalid TOML: .*line 2"):
        load_case(write(tmp_path, "[case]\nname = \n", "bad.toml"))
    # a top-level scalar where a table is expected (top-level keys precede tables in TOML)
    text = "material = 3\n" + BASE.replace('[material]\nlaw = "elastic"\nE = 200e3\nnu = 0.3\n', "")
    with pytest.raises(DdromError, match="material: expected a table, got integer 3"):
        load_case(write(tmp_path, text, "m.toml"))


def test_validate_without_file_and_schema_is_declarative():
    raw, errors, warnings, exprs, points = validate({"case": {"name": "x"}})
    assert "mesh: missing required key" in errors and "material: missing required key" in errors
    assert "time: missing required key" in errors
    # every section of the documentation is in the schema table
    assert list(SCHEMA.keys) == ["parameters", "case", "mesh", "material", "time", "loads", "temperature",
                                 "solver", "rom", "import", "output", "training", "test"]


def test_every_load_kind_and_option_validates(tmp_path):
    extra = '''pressure = [{ region = "zmax", value = "1e2 * A * cycle(t, 1) * (1 + x)" }]
traction = [{ region = "ymax", vector = [0, "B * trapezoid(t, 1, 0.2, 0.3)", "interp(t, [0, 1], [0, A])"] }]
body_force = { vector = [0, 0, -9.81e-6] }
nodal = [{ region = "corner", force_per_node = ["A * ramp(t, 1)", 0, "x + z"] }]
centrifugal = { omega = "1000 * ramp(t, 0.5)", density = 8.2e-9, axis = [0, 1, 0] }'''
    text = (loads(extra)(BASE)
            .replace('args = { nx = 2, ny = 2, nz = 2 }',
                     'args = { nx = 2, ny = 2, nz = 2, origin = [0, 0, 0], cell_type = "tetra" }\n'
                     'regions = { corner = "near(x, 0) and near(y, 0) and near(z, 0)", top = { z = 1.0 } }')
            + '\n[solver]\npetsc_options = { ksp_type = "gmres", ksp_rtol = 1e-10, ksp_monitor = true }\n'
              'element_technology = "full"\n\n[rom]\nmax_modes = 20\n')
    case = load_case(write(tmp_path, text))
    lo = case.raw["loads"]
    assert lo["centrifugal"]["center"] == [0.0, 0.0, 0.0] and lo["centrifugal"]["axis"] == [0, 1, 0]
    assert case.raw["solver"]["petsc_options"]["ksp_monitor"] is True and case.raw["rom"]["max_modes"] == 20
    np.testing.assert_allclose(case.expression("loads.pressure[0].value")(x=1.0, y=0, z=0, t=0.5, A=2.0, B=0), 400.0)
    np.testing.assert_allclose(case.expression("loads.traction[0].vector[2]")(t=0.5, A=2.0), 1.0)
    assert case.expression("loads.body_force.vector[2]").constant == -9.81e-6
    assert case.expression("loads.centrifugal.omega")(t=0.25) == 500.0
    assert case.expression("loads.nodal[0].force_per_node[0]")(t=0.5, A=2.0) == 1.0
    # a nodal force needs its region and 3 components (a force at every node of the region)
    bad = errors_of(tmp_path, loads('nodal = [{ force_per_node = [1, 0] }]')(BASE))
    assert "loads.nodal[0].region: missing required key" in bad
    assert "loads.nodal[0].force_per_node: expected an array of 3 values, got 2" in bad
    # the import checks ([import]) and the noise margin ([rom]) default from their option objects
    from ddrom.rom.offline import OfflineOptions
    from ddrom.workflow.options import ImportOptions, import_options

    assert import_options(case).equilibrium_tol == ImportOptions.equilibrium_tol == 2e-2
    assert case.raw["rom"]["noise_margin"] == OfflineOptions.noise_margin and "import" not in case.raw
    given = load_case(write(tmp_path, text + "\n[import]\nequilibrium_tol = 0.05\n", "imp.toml"))
    assert import_options(given).equilibrium_tol == 0.05
    # the import's checks change no snapshot store
    assert given.hf_hash == case.hf_hash and given.store_hash("training") == case.store_hash("training")
    assert "import.equilibrium_tol: must be > 0" in errors_of(tmp_path, BASE + "\n[import]\nequilibrium_tol = 0\n")
    # the file/field pair of a temperature file
    msg = errors_of(tmp_path, BASE + '\n[temperature]\nfile = "case.toml"\n')
    assert "  - temperature.file: requires temperature.field" in msg
