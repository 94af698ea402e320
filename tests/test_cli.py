"""End-to-end tests of the ddrom command under mpirun at 1 and 3 ranks (subprocesses)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ddrom_cli, tiny_case_text, write_case

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DDROM = str(Path(sys.executable).parent / "ddrom")
TINY = tiny_case_text()
run = ddrom_cli


def test_version_and_info():
    r = run(1, "--version")
    assert r.returncode == 0 and re.match(r"ddrom \d+\.\d+\.\d+", r.stdout)
    r = run(3, "info", "--json", "-")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)   # printed once, by rank 0
    assert info["ranks"] == 3 and info["h5py_parallel"] is True
    assert info["petsc"].startswith("3.") and info["slepc"]
    assert info["petsc_external_packages"]["ptscotch"] is True
    r = run(1, "info", "--quiet")                 # every command takes --quiet, even the quick ones
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr


def _read_u(path: Path) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        return np.stack([f[f"simulations/{n}/displacement"][...] for n in sorted(f["simulations"])])


def test_hf_stream_pod_flag(tmp_path):
    """`ddrom hf --stream-pod` feeds the streaming POD during the sweep (the case key is off)."""
    case = write_case(tmp_path, TINY)
    r = run(1, "hf", str(case), "--stream-pod", "--quiet")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "tiny" / "hf_training.pod_stream.h5").is_file()


@pytest.mark.parametrize("np_", [1, 3])
def test_hf_sweep_tiny_and_resume(tmp_path, np_):
    case = write_case(tmp_path, TINY)
    r = run(np_, "hf", str(case), "--quiet", "--max-simulations", "1", "--json", str(tmp_path / "a.json"))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out" / "tiny"
    assert not (out / "hf_training.h5").exists(), "an incomplete sweep must not look complete"
    assert (out / "hf_training.h5.partial").exists()
    r = run(np_, "hf", str(case), "--quiet", "--json", str(tmp_path / "b.json"))
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "b.json").read_text())["sets"]["training"]
    assert s["computed"] == 1 and s["resumed_skipped"] == 1 and s["complete"]
    assert (out / "hf_training.h5").exists() and not (out / "hf_training.h5.partial").exists()
    assert (out / "hf_training.xdmf").exists()
    u = _read_u(out / "hf_training.h5")
    # u_x at x = 1 equals the imposed u_max * t on the last step of each simulation
    assert np.isclose(u[:, -1, :, 0].max(), 0.008) and np.isclose(u[0, -1, :, 0].max(), 0.002)
    # a third run finds everything up to date
    r = run(np_, "hf", str(case), "--quiet", "--json", str(tmp_path / "c.json"))
    assert json.loads((tmp_path / "c.json").read_text())["sets"]["training"]["computed"] == 0


def test_hf_results_equal_across_rank_counts(tmp_path):
    plastic = TINY.replace('law = "elastic"', 'law = "chaboche"\nsigma_y = 150.0\nH = 1000.0\nC = 1e4\n'
                                              'gamma = 50.0\nK = 100.0\nN = 4.0') \
                  .replace("nx = 2, ny = 2, nz = 2", "nx = 4, ny = 3, nz = 3")
    res = []
    for np_ in (1, 3):
        d = tmp_path / f"np{np_}"
        d.mkdir()
        case = write_case(d, plastic)
        r = run(np_, "hf", str(case), "--quiet")
        assert r.returncode == 0, r.stderr
        res.append(_read_u(d / "out" / "tiny" / "hf_training.h5"))
    assert np.abs(res[0] - res[1]).max() <= 1e-8 * np.abs(res[0]).max()


BAD_CASES = {
    "unknown_key": (TINY.replace("[time]", "[time]\nn_stepz = 3"), r"time\.n_stepz.*n_steps"),
    "missing_mesh_file": (re.sub(r'generator = "box"\nargs = .*\n', 'file = "nowhere.msh"\n', TINY),
                          r"mesh\.file.*nowhere\.msh"),
    "wrong_type": (TINY.replace("E = 200e3", 'E = "hard"'), r"material.*E"),
    "diverging": (TINY.replace('law = "elastic"', 'law = "j2"\nsigma_y = 100.0\nH = 0.0\nC = 0.0')
                  .replace('value = "u_max * ramp(t, 1)" }', 'value = 0.0 }')
                  .replace('{ region = "xmax", components = ["x"], value = 0.0 },', '')
                  + '\n[[loads.traction]]\nregion = "xmax"\nvector = ["300 * t", 0, 0]\n'
                  + '\n[solver]\nmax_iterations = 6\nmax_cutbacks = 1\n', r"diverged at step 1"),
}


@pytest.mark.parametrize("np_", [1, 3])
@pytest.mark.parametrize("kind", sorted(BAD_CASES))
def test_bad_input_one_message_nonzero_exit(tmp_path, np_, kind):
    text, pattern = BAD_CASES[kind]
    case = write_case(tmp_path, text)
    r = run(np_, "hf", str(case), "--quiet")
    assert r.returncode != 0
    headers = [ln for ln in r.stderr.splitlines() if ln.startswith("ddrom hf: error")]
    assert len(headers) == 1, r.stderr          # one message, not one per rank
    assert re.search(pattern, r.stderr), r.stderr
    assert "Traceback" not in r.stderr and "MPI_ABORT" not in r.stderr
    assert not (tmp_path / "out" / "tiny" / "hf_training.h5").exists()


@pytest.mark.parametrize("np_", [1, 3])
def test_inverted_mesh_file_is_reported(tmp_path, np_):
    import meshio

    from ddrom.mesh.generators import box

    m = box(1, 1, 1, 2, 2, 2)
    cells = m.cells.copy()
    cells[3] = cells[3][[4, 5, 6, 7, 0, 1, 2, 3]]      # mirror one hexahedron: negative Jacobian
    meshio.write(tmp_path / "bad.vtu", meshio.Mesh(m.points, [("hexahedron", cells)]))
    text = re.sub(r'generator = "box"\nargs = .*\n', 'file = "bad.vtu"\nregions = { xmin = { x = 0.0 }, '
                  'xmax = { x = 1.0 }, ymin = { y = 0.0 }, zmin = { z = 0.0 } }\n', TINY)
    r = run(np_, "hf", str(write_case(tmp_path, text)), "--quiet")
    assert r.returncode != 0
    headers = [ln for ln in r.stderr.splitlines() if ln.startswith("ddrom hf: error")]
    assert len(headers) == 1 and re.search(r"inverted", r.stderr), r.stderr


@pytest.mark.parametrize("np_", [1, 3])
def test_run_pipeline_and_cluster(tmp_path, np_):
    """`ddrom run` (HF, offline, online, HF reference, comparison) then `ddrom cluster`."""
    case = write_case(tmp_path, TINY.replace("values = [{ u_max = 0.002 }, { u_max = 0.008 }]",
                                             "values = [{ u_max = 0.002 }, { u_max = 0.004 }, { u_max = 0.008 }]"))
    r = run(np_, "run", str(case), "--quiet")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "out" / "tiny" / "summary.json").read_text())
    for key in ("hf_seconds_per_simulation", "rom_seconds_per_simulation", "speedup", "rel_error_displacement",
                "rel_error_plastic_strain", "rel_error_stress", "n_modes", "n_reduced_points", "ranks",
                "ddrom_version"):
        assert key in s, key
    assert s["ranks"] == np_ and s["rel_error_displacement"] < 1e-8 and s["n_modes"] == 1
    assert (tmp_path / "out" / "tiny" / "rom.h5").exists()
    assert (tmp_path / "out" / "tiny" / "singular_values.png").exists()
    r = run(np_, "online", str(case), "--param", "u_max=0.006", "--fields", "--json", str(tmp_path / "on.json"))
    assert r.returncode == 0, r.stderr
    on = json.loads((tmp_path / "on.json").read_text())
    assert on["runs"][0]["params"] == {"u_max": 0.006}
    # reconstructed fields: u_x = u_max * x at the last step (linear elastic, exact)
    import h5py

    with h5py.File(tmp_path / "out" / "tiny" / "rom_fields.h5", "r") as f:
        X = f["mesh/points"][...]
        u = f["simulations/param_u_max_0.006/displacement"][-1]
    np.testing.assert_allclose(u[:, 0], 0.006 * X[:, 0], atol=1e-10)
    assert (tmp_path / "out" / "tiny" / "rom_fields.xdmf").exists()
    # a parameter outside the declared range: a warning (the indicator machinery decides), not an error
    r = run(np_, "online", str(case), "--param", "u_max=0.02", "--quiet")
    assert r.returncode == 0, r.stderr
    assert (r.stdout + r.stderr).count("u_max = 0.02 is outside the training range [0.001, 0.01]") == 1
    # a case whose material differs from the ROM's
    other = write_case(tmp_path, TINY.replace("E = 200e3", "E = 210e3"), name="case.toml")
    r = run(np_, "online", str(other), "--quiet")
    assert r.returncode == 2 and r.stderr.count("material: differs in ['E']") == 1 and "Traceback" not in r.stderr
    r = run(np_, "cluster", str(case), "--quiet", "--json", str(tmp_path / "cl.json"))
    assert r.returncode == 0, r.stderr
    cl = json.loads((tmp_path / "cl.json").read_text())
    assert cl["simulations"] == 3 and {row["k"] for row in cl["table"]} == {1, 2, 3}
    # held-out criterion and its a posteriori check: one linear pattern, the global basis is exact
    assert cl["heldout"]["protocol"] == "leave-one-out over the 3 training simulations"
    assert cl["recommendation"]["choice"]["k"] == 1 and not cl["recommendation"]["local_pays_off"]
    assert cl["check"]["mode"] == "folds" and all(c["mean_displacement"] < 1e-8 for c in cl["check"]["configs"])


@pytest.mark.parametrize("np_", [1, 3])
def test_temperature_from_file(tmp_path, np_):
    """A nodal temperature field read from a VTU (scaled in time) gives the same HF answer as
    the equivalent expression."""
    import meshio

    from ddrom.mesh.generators import box

    m = box(1.0, 1.0, 1.0, 2, 2, 2)
    T = 20.0 + 300.0 * m.points[:, 0]                     # linear in x: exact at the qps
    meshio.write(tmp_path / "temp.vtu", meshio.Mesh(m.points, [("hexahedron", m.cells)], point_data={"T": T}))
    thermo = TINY.replace("nu = 0.3", "nu = 0.3\nalpha = 1.2e-5\nT_ref = 20.0")
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "temp.vtu").write_bytes((tmp_path / "temp.vtu").read_bytes())
    write_case(a, thermo + '\n[temperature]\nfile = "temp.vtu"\nfield = "T"\nscale = "ramp(t, 1)"\n')
    write_case(b, thermo + '\n[temperature]\nexpression = "20 + 300 * x * ramp(t, 1)"\n')
    for d in (a, b):
        r = run(np_, "hf", str(d / "case.toml"), "--quiet")
        assert r.returncode == 0, r.stderr
    ua, ub = _read_u(a / "out" / "tiny" / "hf_training.h5"), _read_u(b / "out" / "tiny" / "hf_training.h5")
    assert np.abs(ub).max() > 1e-4
    np.testing.assert_allclose(ua, ub, rtol=0, atol=1e-10 * np.abs(ub).max())
    # a field name that is not in the file: one clear message
    write_case(a, thermo + '\n[temperature]\nfile = "temp.vtu"\nfield = "Temp"\n', name="bad.toml")
    r = run(np_, "hf", str(a / "bad.toml"), "--quiet")
    assert r.returncode != 0 and "no point field 'Temp'" in r.stderr and "Traceback" not in r.stderr


def _json_stdout(r: subprocess.CompletedProcess) -> dict:
    """The JSON a command printed with ``--quiet --json -``: stdout holds nothing else."""
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("np_", [1, 3])
def test_json_progress_and_summaries_of_every_command(tmp_path, np_):
    """hf, offline, online, run, cluster, report: ``--quiet --json -`` prints only the JSON (with
    timers per stage and the wall time, max over ranks); without ``--quiet`` rank 0 alone prints
    the stage lines (stderr) and the final summary table (stdout)."""
    case = str(write_case(tmp_path, TINY))
    out = tmp_path / "out" / "tiny"
    # ---- hf
    hf = _json_stdout(run(np_, "hf", case, "--which", "all", "--quiet", "--json", "-"))
    assert hf["ranks"] == np_ and hf["mesh"]["dofs"] == 81
    assert hf["sets"]["training"]["computed"] == 2 and hf["sets"]["test"]["computed"] == 1
    assert [r["params"]["u_max"] for r in hf["sets"]["training"]["runs"]] == [0.002, 0.008]
    assert all(r["newton_iterations"] >= 2 and r["seconds"] > 0 for r in hf["sets"]["training"]["runs"])
    assert hf["timers"]["solve"]["calls"] == 6 and hf["timers"]["setup"]["calls"] == 2     # 3 sims x 2 steps
    assert 0 < hf["timers"]["solve"]["seconds"] <= hf["wall_seconds"]
    r = run(np_, "hf", case, "--which", "all")            # resumed: nothing computed, the table says so
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("ddrom hf summary") == 1 and "training: simulations  2 (0 computed, 2 kept)" in r.stdout
    # ---- offline: stage lines on stderr (rank 0 only), summary table on stdout
    r = run(np_, "offline", case, "--json", str(tmp_path / "off.json"))
    assert r.returncode == 0, r.stderr
    for stage in ("mesh", "pod_displacement", "ecm", "operators", "write_rom"):
        assert r.stderr.count(f"[offline] {stage} ...") == 1, (stage, r.stderr)
        assert len(re.findall(rf"\[offline\] {stage} done in \d+\.\d\d s", r.stderr)) == 1, stage
    assert "[offline] constitutive" not in r.stderr and "[offline] assembly" not in r.stderr
    off = json.loads((tmp_path / "off.json").read_text())
    assert off["rom"] == str(out / "rom.h5") and off["n_modes"] == 1
    for stage in ("mesh", "pod_displacement", "ecm", "operators", "write_rom"):
        assert off["timers"][stage]["calls"] == 1 and 0 <= off["timers"][stage]["seconds"] <= off["seconds"]
    off_q = _json_stdout(run(np_, "offline", case, "--quiet", "--json", "-"))
    assert off_q["n_modes"] == 1 and set(off_q["timers"]) == set(off["timers"])
    # ---- online
    on = _json_stdout(run(np_, "online", case, "--quiet", "--json", "-"))
    assert [(x["name"], x["params"], x["steps"]) for x in on["runs"]] == [("test_000", {"u_max": 0.005}, 2)]
    assert on["runs"][0]["newton_iterations"] >= 2 and on["runs"][0]["seconds"] > 0 and on["n_modes"] == 1
    assert on["timers"]["rom_runs"] == {"seconds": on["runs"][0]["seconds"], "calls": 1}
    assert on["wall_seconds"] >= on["runs"][0]["seconds"] and on["fields"] is None
    r = run(np_, "online", case, "--param", "u_max=0.003")
    assert r.returncode == 0 and r.stdout.count("ddrom online summary (1 run(s), 1 modes)") == 1, r.stderr
    assert "param_u_max_0.003" in r.stdout
    # ---- run: pipeline summary + every stage timer seen while it ran
    s = _json_stdout(run(np_, "run", case, "--quiet", "--json", "-"))
    assert s["ranks"] == np_ and s["rel_error_displacement"] < 1e-8 and s["speedup"] > 0
    assert {"pod_displacement", "ecm", "operators", "mesh"} <= set(s["timers"])
    assert s["timers"]["pod_displacement"]["seconds"] <= s["wall_seconds"]
    assert s == {**json.loads((out / "summary.json").read_text()), "timers": s["timers"],
                 "wall_seconds": s["wall_seconds"]}
    # ---- cluster
    cl = _json_stdout(run(np_, "cluster", case, "--quiet", "--json", "-"))
    assert cl["simulations"] == 2 and cl["snapshots"] == 4 and {"gram", "criterion"} <= set(cl["timers"])
    # ---- report
    rep = _json_stdout(run(np_, "report", str(out), "--format", "html", "--quiet", "--json", "-"))
    assert rep["format"] == "html" and rep["report"] == rep["html"] == str(out / "report" / "report.html")
    assert rep["markdown"] == str(out / "report" / "report.md") and Path(rep["html"]).is_file()
    assert str(out / "report" / "speedup.png") in rep["pngs"] and rep["wall_seconds"] > 0


@pytest.mark.mpi
def test_stage_printer_rank0_lines_and_max_over_ranks():
    """StagePrinter: rank 0 alone prints the chosen stages; the recorded times reduce to the max
    over ranks (uneven per rank); the listener is removed even when the body raises."""
    import io

    from mpi4py import MPI

    from ddrom.parallel import StagePrinter, Timers

    comm = MPI.COMM_WORLD
    out = io.StringIO()
    t = Timers()
    with StagePrinter(comm, "test", stages=["shown"], stream=out) as sp:
        with t("shown"):
            pass
        with t("hidden"):
            pass
        sp.stage_end("uneven", 1.0 + comm.rank)     # as if this rank had spent rank+1 seconds
    lines = out.getvalue().splitlines()
    if comm.rank == 0:
        assert lines[0] == "[test] shown ..." and re.fullmatch(r"\[test\] shown done in \d+\.\d\d s "
                                                                r"\(elapsed \d+\.\d s\)", lines[1])
        assert len(lines) == 2
    else:
        assert lines == []
    summary = sp.timers.summary(comm)
    assert set(summary) == {"shown", "hidden", "uneven"}
    assert summary["uneven"] == {"seconds": float(comm.size), "calls": 1}
    assert Timers.listeners == []
    with pytest.raises(ZeroDivisionError):
        with StagePrinter(comm, "test", quiet=True):
            with t("x"):
                1 / 0
    assert Timers.listeners == []


@pytest.mark.parametrize("np_", [1, 3])
def test_import_json(tmp_path, np_):
    """`ddrom import --quiet --json -`: only the JSON on stdout, naming the stored simulation, its
    steps and what is still missing from the training set."""
    import meshio

    from ddrom.mesh.generators import box

    case = str(write_case(tmp_path, TINY))
    m = box(1.0, 1.0, 1.0, 2, 2, 2)
    times = [0.0, 0.5, 1.0]
    entries = []
    for k, t in enumerate(times):          # uniaxial stretch of the tiny case at u_max = 0.002
        u = 0.002 * t * m.points * np.array([1.0, -0.3, -0.3])
        meshio.write(tmp_path / f"u_{k}.vtu", meshio.Mesh(m.points, [("hexahedron", m.cells)],
                                                         point_data={"displacement": u}))
        entries.append(f'<DataSet timestep="{t!r}" part="0" file="u_{k}.vtu"/>')
    (tmp_path / "u.pvd").write_text('<?xml version="1.0"?>\n<VTKFile type="Collection" version="0.1">\n'
                                    "<Collection>\n" + "\n".join(entries) + "\n</Collection>\n</VTKFile>\n")
    r = run(np_, "import", case, "--series", str(tmp_path / "u.pvd"), "--param", "u_max=0.002",
            "--quiet", "--json", "-")
    assert r.returncode == 0, r.stderr
    out = _json_stdout(r)            # --quiet --json -: nothing but the JSON on stdout
    assert "timers" in out and out["wall_seconds"] > 0
    assert out["finalized"] is False and out["store"].endswith("hf_training.h5.partial")
    assert [s["simulation"] for s in out["simulations"]] == ["train_000"]
    sim = out["simulations"][0]
    assert sim["params"] == {"u_max": 0.002} and sim["steps"] == 2 and sim["times"] == times
    assert sim["node_match"] == "identity" and sim["max_coordinate_distance"] == 0.0
    assert out["missing_training_points"] == ["train_001"]
