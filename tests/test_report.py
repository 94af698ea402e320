"""`ddrom report OUTPUT_DIR`: Markdown + PNG report of a `ddrom run` (subprocesses under mpirun)."""
from __future__ import annotations

import base64
import json
import re

import pytest
from helpers import ddrom_cli as run
from helpers import tiny_case_text, write_case

from ddrom.workflow.report import fmt, markdown_to_html, speedup_numbers

pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_report_of_tiny_run(tmp_path):
    case = write_case(tmp_path, tiny_case_text())
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
    # speedup: plot, break-even number of queries from the HF times kept in the stores
    assert "speedup.png" in pngs and "| break-even number of ROM queries |" in md
    sp = json.loads((tmp_path / "rep.json").read_text())
    assert sp["format"] == "md" and sp["html"] is None and not (md_path.parent / "report.html").exists()
    # HTML: one self-contained page embedding every figure of the Markdown, nothing external
    r = run(2, "report", str(out), "--format", "html", "--json", str(tmp_path / "rep_html.json"))
    assert r.returncode == 0, r.stderr
    html_path = md_path.parent / "report.html"
    assert json.loads((tmp_path / "rep_html.json").read_text())["report"] == str(html_path)
    page = html_path.read_text()
    embedded = re.findall(r'<img alt="[^"]*" data-file="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    assert sorted(f for f, _ in embedded) == sorted(pngs)
    for name, data in embedded:
        assert base64.b64decode(data) == (md_path.parent / name).read_bytes(), name
    assert len(re.findall(r"<img ", page)) == len(pngs) and "src=\"http" not in page
    for section in ("Singular value decay", "Timings and speedup", "ROM vs HF error per test parameter"):
        assert f"<h2>{section}</h2>" in page, section
    assert f"<td>speedup (HF time / ROM time per simulation)</td><td>{fmt(s['speedup'])}</td>" in page
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


def test_speedup_numbers_break_even():
    """Up-front cost = HF training + offline; the ROM pays off after up_front / (t_hf - t_rom) queries."""
    s = {"hf_seconds_per_simulation": 10.0, "rom_seconds_per_simulation": 0.1, "speedup": 100.0,
         "offline_seconds": 5.0}
    sp = speedup_numbers(s, {"train_000": 20.0, "train_001": 30.0})
    assert sp["up_front_seconds"] == 55.0 and sp["training_simulations"] == 2
    assert sp["break_even_queries"] == pytest.approx(55.0 / 9.9, rel=1e-15)
    assert speedup_numbers(dict(s, rom_seconds_per_simulation=20.0), {})["break_even_queries"] is None
    assert speedup_numbers({}, {})["break_even_queries"] is None


def test_markdown_to_html_subset(tmp_path):
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(40))
    (tmp_path / "a.png").write_bytes(png)
    md = "# Title <x>\n\nSome `code & more` text\ncontinued.\n\n| k | v |\n|---|---|\n| a | 1.000e+00 |\n\n![fig a](a.png)\n"
    page = markdown_to_html(md, tmp_path, "t")
    assert "<h1>Title &lt;x&gt;</h1>" in page
    assert "<p>Some <code>code &amp; more</code> text continued.</p>" in page
    assert "<table><tr><th>k</th><th>v</th></tr>\n<tr><td>a</td><td>1.000e+00</td></tr>\n</table>" in page
    data = base64.b64encode(png).decode()
    assert f'<img alt="fig a" data-file="a.png" src="data:image/png;base64,{data}">' in page
    with pytest.raises(FileNotFoundError):
        markdown_to_html("![missing](b.png)", tmp_path, "t")
