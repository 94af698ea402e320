"""`ddrom report OUTPUT_DIR`: Markdown + PNG report of a `ddrom run` (subprocesses under mpirun)."""
from __future__ import annotations

import json
import re

from test_cli import TINY, run, write_case

from ddrom.cli.report import fmt

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_report_of_tiny_run(tmp_path):
    case = write_case(tmp_path, TINY)
    r = run(2, "run", str(case), "--quiet")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out" / "tiny"
    r = run(2, "report", str(out), "--json", str(tmp_path / "rep.json"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("ddrom report: wrote") == 1          # rank 0 only
    md_path = out / "report" / "report.md"
    assert json.loads((tmp_path / "rep.json").read_text())["report"] == str(md_path)
    md = md_path.read_text()
    s = json.loads((out / "summary.json").read_text())
    # the headline numbers of summary.json, verbatim in the documented format
    for key in ("speedup", "rel_error_displacement", "rel_error_plastic_strain", "rel_error_stress",
                "hf_seconds_per_simulation", "rom_seconds_per_simulation", "offline_seconds"):
        assert s[key] is not None and fmt(s[key]) in md, key
    assert f"| displacement modes | {s['n_modes']} |" in md
    assert f"| reduced integration points (ECM) | {s['n_reduced_points']} |" in md
    for e in s["per_test_parameter"]:
        assert f"| {e['name']} | {json.dumps(e['params'])} | {fmt(e['displacement'])} | " \
               f"{fmt(e['plastic_strain'])} | {fmt(e['stress'])} |" in md
    for section in ("Singular value decay", "Reduced points on the mesh", "ROM vs HF error per test parameter",
                    "Indicator vs true error", "Timings and speedup", "Clusters"):
        assert f"## {section}" in md, section
    # every referenced image exists next to report.md and is a PNG
    pngs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {"singular_values.png", "reduced_points.png", "error_test_000.png"} <= set(pngs)
    for name in pngs:
        data = (md_path.parent / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000, name
    assert not list(md_path.parent.glob("*.tmp*"))             # temporary files renamed away
    assert "cluster_criterion.png" not in pngs                   # `ddrom cluster` has not run
    # after `ddrom cluster`, the criterion plot joins the report
    r = run(1, "cluster", str(case), "--quiet")
    assert r.returncode == 0, r.stderr
    r = run(1, "report", str(out), "--quiet")
    assert r.returncode == 0 and r.stdout == "", r.stderr + r.stdout
    md = md_path.read_text()
    assert "![cluster criterion](cluster_criterion.png)" in md
    assert (md_path.parent / "cluster_criterion.png").read_bytes()[:8] == PNG_MAGIC


def test_report_bad_folder(tmp_path):
    (tmp_path / "junk.txt").write_text("x")
    for folder, pattern in ((tmp_path, r"not a ddrom output folder"),
                            (tmp_path / "nowhere", r"no such directory")):
        r = run(2, "report", str(folder))
        assert r.returncode != 0
        headers = [ln for ln in r.stderr.splitlines() if ln.startswith("ddrom report: error")]
        assert len(headers) == 1 and re.search(pattern, headers[0]), r.stderr
        assert "Traceback" not in r.stderr and "MPI_ABORT" not in r.stderr
    assert not (tmp_path / "report").exists()
