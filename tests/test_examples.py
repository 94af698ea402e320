"""The Python API end to end: examples/api_pipeline.py on 2 ranks, and the API and the CLI
building the same ROM file from the same case."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import clean_mpi_env, ddrom_cli

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _demo_copy(tmp_path: Path) -> Path:
    """cases/demo.toml with its output in tmp_path (an absolute path)."""
    text = (ROOT / "cases" / "demo.toml").read_text()
    text = text.replace('# output = "out/demo"', f'output = "{tmp_path / "out"}"')
    assert f'output = "{tmp_path / "out"}"' in text
    p = tmp_path / "demo.toml"
    p.write_text(text)
    return p


def test_api_pipeline_example_on_two_ranks(tmp_path):
    case = _demo_copy(tmp_path)
    r = subprocess.run(["mpirun", "-n", "2", "--oversubscribe", sys.executable, str(ROOT / "examples" / "api_pipeline.py"),
                        str(case)], env=clean_mpi_env(), capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    # the example's own lines (the ddrom logger, which it shows, also writes "  test_000 ..." lines)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("  test_") and " enrichments, errors u " in ln]
    assert len(lines) == 2, r.stdout
    for ln in lines:                       # the demo's test points: inside the range, no enrichment
        assert "0 enrichments" in ln, ln
        err_p = float(ln.split(" p ")[1].split()[0])
        assert err_p < 1e-2, ln
    assert (tmp_path / "out" / "rom.h5").is_file() and (tmp_path / "out" / "hf_test.h5").is_file()


def _datasets(path: Path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[...]) if isinstance(obj, h5py.Dataset) else None)
        out["attrs"] = {k: v for k, v in f.attrs.items() if k != "ddrom_version"}
        out["online_attrs"] = dict(f["online"].attrs)
    return out


def test_api_and_cli_build_the_same_rom_file(tmp_path):
    """Same case, same store, same ranks: ``ddrom.build_rom`` and ``ddrom offline`` write the same
    datasets and attributes (bitwise) -- the options come from one place."""
    import ddrom
    from mpi4py import MPI

    case_file = _demo_copy(tmp_path)
    comm = MPI.COMM_SELF
    case = ddrom.load_case(case_file)
    ddrom.run_hf(case, comm)
    ddrom.build_rom(case, comm)
    api = tmp_path / "out" / "rom_api.h5"
    (tmp_path / "out" / "rom.h5").rename(api)
    r = ddrom_cli(1, "offline", str(case_file), "--quiet", timeout=900)
    assert r.returncode == 0, r.stderr
    a, b = _datasets(api), _datasets(tmp_path / "out" / "rom.h5")
    assert sorted(a) == sorted(b)
    for k in a:
        if k.endswith("attrs"):
            assert a[k] == b[k], k
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_hot_spots_case_and_its_thermal_code_stand_in(tmp_path):
    """examples/write_hot_spots.py writes the fields cases/hot_spots.toml names: the case
    (copied next to them) validates, with one file per training and test point."""
    import shutil

    import ddrom

    r = subprocess.run([sys.executable, str(ROOT / "examples" / "write_hot_spots.py"), str(tmp_path / "fields")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    shutil.copy(ROOT / "cases" / "hot_spots.toml", tmp_path / "hot_spots.toml")
    case = ddrom.load_case(tmp_path / "hot_spots.toml")
    files = {p["field"] for p in case.training_parameters() + case.test_parameters()}
    assert len(files) == 10 and all((tmp_path / f).is_file() for f in files)
