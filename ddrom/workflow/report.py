"""``ddrom report OUTPUT_DIR``: a Markdown + PNG (and HTML) report of a run, readable without the code.

Reads what ``ddrom run`` (and optionally ``ddrom cluster``) left in a case's output folder:
``summary.json``, ``rom.h5``, the snapshot stores (for the mesh node cloud),
``online_<name>.h5`` and ``cluster_criterion.png``. Writes ``OUTPUT_DIR/report/report.md``
with its PNGs next to it, and with ``--format html`` also ``report.html``: the same content as
one self-contained page (every PNG embedded as a base64 ``data:`` URI, so the file can be
mailed or archived alone). Every file is written under a temporary name and renamed, so an
interrupted report never leaves a half-written file behind a valid name.

Serial (rank 0 only): everything read here is small (reduced quantities, per-step error
lists, the node coordinates for one scatter plot).

Number format: every float in the tables is written ``f"{v:.3e}"`` (``n/a`` when missing),
so a number from ``summary.json`` can be found verbatim in the Markdown.
"""
from __future__ import annotations

import base64
import html
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ddrom.io.atomic import atomic_path, write_text_atomic
from ddrom.parallel import CollectiveError
from ddrom.workflow.plots import figure, plot_calibration, positive, save
from ddrom.workflow.rom import read_online_times


def fmt(v: Any) -> str:
    """Format a table value: floats as ``%.3e``, ``None``/NaN as ``n/a``, the rest with ``str``."""
    if v is None:
        return "n/a"
    if isinstance(v, (float, np.floating)):
        return "n/a" if not math.isfinite(float(v)) else f"{float(v):.3e}"
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _max_finite(values) -> float | None:
    v = [x for x in (values or []) if x is not None and np.isfinite(x)]
    return float(max(v)) if v else None


def _copy_figure(src: Path, rdir: Path) -> bool:
    """Copy a figure a stage wrote into the report folder (temporary name, then rename)."""
    if not src.is_file():
        return False
    with atomic_path(rdir / src.name) as tmp:
        shutil.copyfile(src, tmp)
    return True


def check_output_dir(output_dir: str | Path) -> Path:
    """Raise :class:`CollectiveError` unless ``output_dir`` is a ddrom output folder.

    A ddrom output folder holds ``summary.json`` (from ``ddrom run``) or ``rom.h5``
    (from ``ddrom offline``). Call it on every rank: it only reads the file system.
    """
    d = Path(output_dir)
    if not d.is_dir():
        raise CollectiveError(f"{d}: no such directory (expected a ddrom output folder such as out/<case>)")
    if not (d / "summary.json").is_file() and not (d / "rom.h5").is_file():
        raise CollectiveError(f"{d}: not a ddrom output folder (no summary.json or rom.h5 in it); "
                              "run `ddrom run CASE` first and pass its output folder, e.g. out/<case name>")
    return d


def _read_rom(path: Path) -> dict[str, Any]:
    """What the report shows of a ROM file, read through :mod:`ddrom.rom.model` (rank 0)."""
    from mpi4py import MPI

    from ddrom.parallel import DdromError
    from ddrom.rom.model import load_classifier, load_model

    out: dict[str, Any] = {}
    if not path.is_file():
        return out
    try:
        m = load_model(path, MPI.COMM_SELF)
    except DdromError:
        return out
    out.update(sigma_u=m.sigma_u, weights=m.weights, xyz=m.xyz, info=m.info)
    if m.gappy is not None:
        out["gappy_sigma"] = m.gappy.sigma
    cl = load_classifier(path, MPI.COMM_SELF)
    out["n_local"] = len(set(cl["labels"])) if cl else 0
    out["local"] = []
    for ic in range(out["n_local"]):
        lm = load_model(path, MPI.COMM_SELF, local=ic)
        out["local"].append({"xyz": lm.xyz, "info": lm.info})
    return out


def _stores(d: Path) -> list[Path]:
    return [d / name for name in ("hf_training.h5", "hf_test.h5") if (d / name).is_file()]


def _read_mesh_points(d: Path) -> np.ndarray | None:
    """The mesh nodes (natural order) of the run's first readable snapshot store (rank 0)."""
    from mpi4py import MPI

    from ddrom.io.store import SnapshotStore
    from ddrom.parallel import DdromError

    for p in _stores(d):
        try:
            with SnapshotStore.open(p, MPI.COMM_SELF, mode="r") as store:
                return store.mesh_points()
        except DdromError:
            continue
    return None


# --------------------------------------------------------------------- plots
def _plot_singular_values(rom: dict, n_modes: int | None, path: Path) -> str:
    fig = figure()
    ax = fig.add_subplot(111)
    s = np.asarray(rom["sigma_u"], dtype=float)
    ax.semilogy(np.arange(1, len(s) + 1), np.maximum(s / s[0], 1e-17), "o-", ms=3, label="displacement POD")
    if "gappy_sigma" in rom and len(rom["gappy_sigma"]):
        g = np.asarray(rom["gappy_sigma"], dtype=float)
        ax.semilogy(np.arange(1, len(g) + 1), np.maximum(g / g[0], 1e-17), "s-", ms=3,
                    label="plastic strain p (Gappy-POD)")
    if n_modes:
        ax.axvline(n_modes, color="k", ls="--", lw=1, label=f"modes kept: {n_modes}")
    ax.set_xlabel("index i")
    ax.set_ylabel(r"$\sigma_i / \sigma_1$")
    ax.set_title("Singular value decay")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def _bbox_edges(ax, lo, hi) -> None:
    import itertools

    corners = np.array(list(itertools.product(*zip(lo, hi))))
    for i, j in itertools.combinations(range(8), 2):
        if np.count_nonzero(corners[i] != corners[j]) == 1:
            ax.plot(*corners[[i, j]].T, color="0.6", lw=0.8)


def _plot_reduced_points(rom: dict, mesh_points: np.ndarray | None, path: Path) -> str:
    fig = figure((6.5, 5.5))
    ax = fig.add_subplot(111, projection="3d")
    xyz = np.asarray(rom["xyz"], dtype=float)
    if mesh_points is not None:
        pts = mesh_points
        if len(pts) > 20000:                      # a readable cloud, not a black blob
            pts = pts[np.random.default_rng(0).choice(len(pts), 20000, replace=False)]
        ax.scatter(*pts.T, s=2, c="0.45", alpha=0.35, depthshade=False, label=f"mesh nodes ({len(mesh_points)})")
        lo, hi = mesh_points.min(axis=0), mesh_points.max(axis=0)
    else:
        lo, hi = xyz.min(axis=0), xyz.max(axis=0)
    _bbox_edges(ax, lo, hi)
    ext = np.maximum(hi - lo, 1e-12)
    ax.set_box_aspect(np.maximum(ext, 0.2 * ext.max()))   # true proportions, thin directions kept visible
    w = np.asarray(rom.get("weights", np.ones(len(xyz))), dtype=float)
    n_ecm = int(np.count_nonzero(w > 0))
    size = 8 + 40 * (np.abs(w) / np.abs(w).max() if np.abs(w).max() > 0 else 0 * w)
    ecm = w > 0
    ax.scatter(*xyz[ecm].T, s=size[ecm], c="tab:red", depthshade=False, label=f"ECM points ({n_ecm})")
    if np.any(~ecm):
        ax.scatter(*xyz[~ecm].T, s=12, c="tab:blue", marker="^", depthshade=False,
                   label=f"extra Gappy samples ({int(np.count_nonzero(~ecm))})")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_zlabel("z")
    ax.set_title("Reduced integration points on the mesh\n(marker size ~ ECM weight)")
    ax.legend(fontsize=7, loc="upper left")
    return save(fig, path)


def _plot_test_parameter(e: dict, times: np.ndarray | None, path: Path) -> str:
    ind = positive(e.get("indicator_per_step", []))
    err = positive(e.get("p_error_per_step", []))
    n = max(len(ind), len(err))
    t = times if times is not None and len(times) == n else np.arange(n, dtype=float)
    fig = figure((6.0, 3.8))
    ax = fig.add_subplot(111)
    drawn = False
    if len(err) and np.any(np.isfinite(err)):
        ax.semilogy(t[: len(err)], err, "o-", ms=3, label="true relative error of p (vs HF)")
        drawn = True
    if len(ind) and np.any(np.isfinite(ind)):
        ax.semilogy(t[: len(ind)], ind, "s--", ms=3, label="indicator (Gappy residual of p)")
        drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no plastic strain: indicator and p error undefined",
                ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("time" if times is not None and len(times) == n else "step")
    ax.set_ylabel("relative error / indicator")
    ax.set_title(f"{e['name']} {e.get('params', '')}")
    ax.grid(True, which="both", alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    return save(fig, path)


def _hf_seconds(path: Path) -> dict[str, float]:
    """HF wall seconds per simulation kept in a snapshot store, by name (rank 0)."""
    from mpi4py import MPI

    from ddrom.io.store import SnapshotStore
    from ddrom.parallel import DdromError

    out: dict[str, float] = {}
    if not path.is_file():
        return out
    try:
        with SnapshotStore.open(path, MPI.COMM_SELF, mode="r") as store:
            for sim in store.simulations():
                v = store.metadata(sim.name, "hf_seconds")
                if v is not None:
                    out[sim.name] = float(v)
    except DdromError:
        pass
    return out



def speedup_numbers(summary: dict, hf_train: dict[str, float]) -> dict[str, Any]:
    """Cost model of the run: per-query times, up-front cost and the break-even number of queries.

    ``up_front = sum(HF training seconds) + offline seconds``; a ROM query costs ``t_rom``
    instead of ``t_hf``, so the ROM pays off after ``n* = up_front / (t_hf - t_rom)``
    queries (None when a number is missing or the ROM is not faster).
    """
    t_hf, t_rom = summary.get("hf_seconds_per_simulation"), summary.get("rom_seconds_per_simulation")
    off = summary.get("offline_seconds")
    train = float(sum(hf_train.values())) if hf_train else None
    up = (train or 0.0) + (off or 0.0) if (train is not None or off is not None) else None
    be = None
    if t_hf and t_rom is not None and up is not None and t_hf > t_rom:
        be = up / (t_hf - t_rom)
    return {"hf_seconds_per_simulation": t_hf, "rom_seconds_per_simulation": t_rom,
            "speedup": summary.get("speedup"), "hf_training_seconds": train,
            "training_simulations": len(hf_train), "offline_seconds": off, "up_front_seconds": up,
            "break_even_queries": be}


def _plot_speedup(sp: dict, hf_test: dict[str, float], rom_mean: float | None, path: Path) -> str | None:
    t_hf, t_rom = sp["hf_seconds_per_simulation"], sp["rom_seconds_per_simulation"]
    if not t_hf or not t_rom:
        return None
    fig = figure((9.0, 3.8))
    ax = fig.add_subplot(121)
    names = sorted(hf_test) or ["mean"]
    hf = [hf_test[n] for n in sorted(hf_test)] or [t_hf]
    x = np.arange(len(names))
    ax.bar(x - 0.2, hf, 0.4, label="HF", color="tab:blue")
    ax.bar(x + 0.2, [rom_mean if rom_mean is not None else t_rom] * len(names), 0.4,
           label="ROM (mean per run)", color="tab:red")
    ax.set_yscale("log")
    ax.set_ylim(0.3 * min(min(hf), rom_mean if rom_mean is not None else t_rom), 3.0 * max(hf))
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("wall seconds per simulation")
    ax.set_title(f"speedup {t_hf / t_rom:.3g}x per simulation")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax = fig.add_subplot(122)
    up = sp["up_front_seconds"] or 0.0
    nmax = max(10.0, 2.0 * (sp["break_even_queries"] or 5.0))
    n = np.linspace(0.0, nmax, 200)
    ax.plot(n, n * t_hf, label="HF for every query", color="tab:blue")
    ax.plot(n, up + n * t_rom, label="training + offline + ROM queries", color="tab:red")
    if sp["break_even_queries"]:
        ax.axvline(sp["break_even_queries"], color="k", ls="--", lw=0.8,
                   label=f"break-even: {sp['break_even_queries']:.1f} queries")
    ax.set_xlabel("number of parameter queries")
    ax.set_ylabel("cumulated wall seconds")
    ax.set_title("when the ROM pays off")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, path)


# ---------------------------------------------------------------------- HTML
_CSS = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.25em .6em;"
        "text-align:left}th{background:#eee}img{max-width:100%}code{background:#f4f4f4;padding:0 .2em}")


def _inline(text: str) -> str:
    """Escape HTML and turn the Markdown inline code spans (`x`) of the report into <code>."""
    parts = text.split("`")
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))


def markdown_to_html(md: str, image_dir: Path, title: str) -> str:
    """The report's Markdown as one self-contained HTML page.

    Handles the subset :func:`write_report` writes: ``#``/``##``/``###`` headings, pipe
    tables (first row = header, second = separator), images on their own line
    ``![alt](file.png)`` (embedded as base64 ``data:image/png`` URIs read from
    ``image_dir``) and paragraphs with inline code.
    """
    out = [f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
           f"<style>{_CSS}</style></head><body>"]
    lines = md.splitlines()
    i = 0
    para: list[str] = []

    def flush() -> None:
        if para:
            out.append("<p>" + " ".join(_inline(p) for p in para) + "</p>")
            para.clear()

    img = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)$")
    while i < len(lines):
        ln = lines[i].rstrip()
        m = img.match(ln)
        if not ln:
            flush()
        elif ln.startswith("#"):
            flush()
            level = len(ln) - len(ln.lstrip("#"))
            out.append(f"<h{level}>{_inline(ln[level:].strip())}</h{level}>")
        elif m:
            flush()
            data = base64.b64encode((image_dir / m.group(2)).read_bytes()).decode("ascii")
            out.append(f"<figure><img alt=\"{html.escape(m.group(1))}\" data-file=\"{html.escape(m.group(2))}\" "
                       f"src=\"data:image/png;base64,{data}\"></figure>")
        elif ln.startswith("|"):
            flush()
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            head, body = rows[0], rows[2:]
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body]
            out.append("</table>")
            continue
        else:
            para.append(ln)
        i += 1
    flush()
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------- report
def write_report(output_dir: str | Path, output_format: str = "md") -> Path:
    """Write ``output_dir/report/report.md`` and its PNGs; return the path of the report.

    ``output_format="html"`` also writes ``report.html`` (self-contained, :func:`markdown_to_html`)
    and returns its path. Serial: call on one rank. Sections without data (no
    summary.json, no plastic strain, no ``ddrom cluster`` run) say so instead of failing.
    """
    if output_format not in REPORT_FORMATS:
        raise CollectiveError(f"unknown report format {output_format!r}; choose one of {REPORT_FORMATS}")
    d = check_output_dir(output_dir)
    rdir = d / "report"
    rdir.mkdir(exist_ok=True)
    summary: dict[str, Any] = {}
    if (d / "summary.json").is_file():
        try:
            summary = json.loads((d / "summary.json").read_text())
        except ValueError as exc:
            raise CollectiveError(f"{d / 'summary.json'}: not valid JSON ({exc})") from None
    rom = _read_rom(d / "rom.h5")
    errors = summary.get("per_test_parameter", [])
    n_modes = summary.get("n_modes", rom.get("info", {}).get("n_modes"))
    md: list[str] = [f"# ddrom report: {d.resolve().name}", ""]
    if summary:
        md += [f"Case file `{summary.get('case')}`, {summary.get('ranks')} MPI rank(s), "
               f"ddrom {summary.get('ddrom_version')}. Output folder `{d.resolve()}`.", ""]
    else:
        md += ["No `summary.json` in this folder (`ddrom run` did not complete): ROM-only report.", ""]

    # ---- summary
    md += ["## Summary", ""]
    rows = [["speedup (HF time / ROM time per simulation)", summary.get("speedup")],
            ["max relative error, displacement", summary.get("rel_error_displacement")],
            ["max relative error, plastic strain p", summary.get("rel_error_plastic_strain")],
            ["max relative error, stress", summary.get("rel_error_stress")],
            ["displacement modes", n_modes],
            ["reduced integration points (ECM)", summary.get("n_reduced_points", rom.get("info", {}).get(
                "n_reduced_points"))],
            ["sample points (ECM + Gappy)", summary.get("n_sample_points")]]
    md += [_table(["quantity", "value"], rows), "",
           "Errors are relative space-time L2 errors of the ROM against the HF reference, the "
           "maximum over the test parameters.", ""]
    mesh = summary.get("mesh")
    if mesh:
        md += ["Mesh: " + ", ".join(f"{k} {fmt(mesh[k])}" for k in ("cell_type", "cells", "nodes", "dofs", "ranks")
                                    if k in mesh), ""]

    # ---- timings
    md += ["## Timings and speedup", ""]
    trows = [["HF seconds per simulation", summary.get("hf_seconds_per_simulation")],
             ["ROM seconds per simulation", summary.get("rom_seconds_per_simulation")],
             ["speedup", summary.get("speedup")],
             ["offline seconds (POD, ECM, Gappy, operators)", summary.get("offline_seconds")]]
    for name, v in sorted((summary.get("timers") or {}).items()):
        trows.append([f"timer: {name}", v.get("max", v.get("seconds")) if isinstance(v, dict) else v])
    hf_train, hf_test = _hf_seconds(d / "hf_training.h5"), _hf_seconds(d / "hf_test.h5")
    sp = speedup_numbers(summary, hf_train)
    trows += [[f"HF training seconds ({sp['training_simulations']} simulations)", sp["hf_training_seconds"]],
              ["up-front cost: HF training + offline (s)", sp["up_front_seconds"]],
              ["break-even number of ROM queries", sp["break_even_queries"]]]
    md += [_table(["stage", "value"], trows), ""]
    png = _plot_speedup(sp, hf_test, summary.get("rom_seconds_per_simulation"), rdir / "speedup.png")
    if png:
        md += [f"![speedup]({png})", "",
               "Left: HF wall time of each test simulation next to the mean ROM time per run (log scale). "
               "Right: cumulated cost of answering n parameter queries with the HF solver alone or with "
               "the ROM after its training sweep and offline stage; the ROM pays off beyond the "
               "break-even number of queries.", ""]
        if hf_test:
            md += [_table(["test", "HF seconds", "speedup vs mean ROM run"],
                          [[n, v, v / summary["rom_seconds_per_simulation"]] for n, v in sorted(hf_test.items())]),
                   ""]
    else:
        md += ["No HF and ROM times in `summary.json`: no speedup plot.", ""]

    # ---- singular values
    md += ["## Singular value decay", ""]
    if "sigma_u" in rom and len(rom["sigma_u"]):
        png = _plot_singular_values(rom, n_modes, rdir / "singular_values.png")
        s = np.asarray(rom["sigma_u"], dtype=float)
        tail = s[n_modes] / s[0] if n_modes and n_modes < len(s) else None
        md += [f"![singular values]({png})", "",
               f"{len(s)} displacement singular values, {n_modes} modes kept; first discarded "
               f"sigma_i/sigma_1 = {fmt(tail)}.", ""]
    else:
        md += ["No `rom.h5` with singular values in this folder.", ""]

    # ---- reduced points
    md += ["## Reduced points on the mesh", ""]
    if "xyz" in rom and len(rom["xyz"]):
        png = _plot_reduced_points(rom, _read_mesh_points(d), rdir / "reduced_points.png")
        md += [f"![reduced points]({png})", "",
               f"{len(rom['xyz'])} sample points: the ECM integration points (red, size ~ weight) where "
               "the constitutive law is evaluated online, and extra Gappy-POD samples (blue), if any.", ""]
    else:
        md += ["No reduced points (`/online/xyz`) in `rom.h5`.", ""]

    # ---- errors per test parameter
    md += ["## ROM vs HF error per test parameter", ""]
    if errors:
        rows = [[e["name"], json.dumps(e.get("params", {})), e.get("displacement"), e.get("plastic_strain"),
                 e.get("stress"), e.get("n_modes"), e.get("cluster")] for e in errors]
        md += [_table(["test", "parameters", "error u", "error p", "error stress", "modes", "cluster"], rows), ""]
        md += ["Per step: the true relative error of p (ROM vs HF) and the a posteriori indicator "
               "(residual of the Gappy-POD fit of p at the sample points), against time.", ""]
        for e in errors:
            times = read_online_times(d / f"online_{e['name']}")
            png = _plot_test_parameter(e, times, rdir / f"error_{e['name']}.png")
            md += [f"### {e['name']}", "", f"![error over time for {e['name']}]({png})", ""]
    else:
        md += ["No test-parameter comparison (run `ddrom run`).", ""]

    # ---- calibration
    md += ["## Indicator vs true error (calibration)", ""]
    cal = summary.get("indicator_calibration") or {}
    png = plot_calibration(errors, cal, rdir / "indicator_calibration.png") if errors else None
    if png:
        md += [f"![indicator calibration]({png})", ""]
    if cal:
        md += [_table(["quantity", "value"], [
            ["(indicator, error) pairs", cal.get("pairs")],
            ["Pearson correlation of the logs", cal.get("pearson_log")],
            ["slope b in log e = a + b log i", cal.get("slope")],
            ["intercept a", cal.get("intercept")],
            ["residual standard deviation of the fit (log)", cal.get("residual_std_log")],
            ["error target", cal.get("error_target")],
            ["indicator tolerance for the target (mean fit)", cal.get("indicator_tolerance_fit")],
            [f"indicator tolerance for the target ({cal.get('confidence', 0.5):.0%} upper prediction bound, used)",
             cal.get("indicator_tolerance")]]), ""]
        if cal.get("message"):
            md += [f"Note: {cal['message']}.", ""]
    else:
        md += ["No calibration in `summary.json`.", ""]

    # ---- adaptive enrichment
    enr = summary.get("enrichment")
    if enr:
        md += ["## Adaptive enrichment", "",
               f"The test points were run again with enrichment (indicator tolerance "
               f"{enr.get('indicator_tolerance'):.3g}, at most {enr.get('max_enrichments')} HF steps per run): "
               f"{enr.get('n_enrichments')} HF steps in all, {enr.get('enrichment_seconds', 0.0):.2f} s.", ""]
        plain = {e["name"]: e for e in errors}
        rows = []
        for e in enr.get("per_test_parameter", []):
            p0 = plain.get(e["name"], {})
            rows.append([e["name"], json.dumps(e.get("params", {})), p0.get("plastic_strain"), e.get("plastic_strain"),
                         _max_finite(e.get("p_error_per_step")), p0.get("displacement"), e.get("displacement"),
                         e.get("n_enrichments"), ", ".join(str(ev["step"]) for ev in e.get("events", [])),
                         e.get("cost_ratio_to_hf")])
        md += [_table(["test", "parameters", "error p (ROM)", "error p (enriched)",
                       "largest per-step error p (enriched)", "error u (ROM)", "error u (enriched)", "HF steps",
                       "at steps", "cost / HF run"], rows), "",
               "Errors are space-time relative L2 errors; the per-step error is the quantity the indicator "
               "is calibrated on (one value per step, relative to that step's HF field).", ""]
        if _copy_figure(d / "enrichment.png", rdir):
            md += ["![indicator and true error, plain and enriched ROM](enrichment.png)", "",
                   "Indicator (dashed) and true relative error of p (solid) per step, plain ROM (blue) and "
                   "enriched ROM (orange, vertical lines at the HF steps).", ""]

    # ---- clusters
    md += ["## Clusters and the a priori criterion", ""]
    crit = d / "cluster_criterion.png"
    if rom.get("n_local"):
        crows = [[ic, c["info"].get("n_modes"), c["info"].get("n_reduced_points", len(c["xyz"])),
                  ", ".join(c["info"].get("simulations", []))] for ic, c in enumerate(rom["local"])]
        md += [f"The ROM uses {rom['n_local']} local bases (one per cluster of training simulations):", "",
               _table(["cluster", "modes", "reduced points", "training simulations"], crows), ""]
    else:
        md += ["The ROM uses one global basis.", ""]
    if _copy_figure(crit, rdir):
        md += ["![cluster criterion](cluster_criterion.png)", "",
               "From `ddrom cluster`: relative projection error of the training snapshots with local "
               "(clustered) bases versus one global basis, against the basis size N (solid); dotted: "
               "simulations held out of the bases they are routed to and projected on, what the "
               "recommendation uses.", ""]
    else:
        md += ["`ddrom cluster` has not been run on this case (no `cluster_criterion.png`).", ""]

    out = rdir / "report.md"
    text = "\n".join(md)
    write_text_atomic(out, text)
    if output_format == "html":
        out = rdir / "report.html"
        write_text_atomic(out, markdown_to_html(text, rdir, f"ddrom report: {d.resolve().name}"))
    return out


#: Output formats of :func:`write_report`: Markdown + PNG, or also a self-contained HTML page.
REPORT_FORMATS = ("md", "html")


def report(output_dir: str, comm: Any, output_format: str = "md") -> dict[str, Any]:
    """Collective entry point: rank 0 writes the report, the other ranks wait.

    Returns ``{"report": path of report.md (or report.html with output_format="html"),
    "markdown": path of report.md, "html": path or None, "format": output_format, "pngs": [...]}``.

    Raises :class:`CollectiveError` on every rank if ``output_dir`` is not a ddrom output
    folder or the report cannot be written.
    """
    from ddrom.io.h5atomic import write_on_root

    path = str(write_on_root(comm, lambda: write_report(output_dir, output_format),
                             f"ddrom report {Path(output_dir) / 'report'}", Path(output_dir) / "report"))
    rdir = Path(path).parent
    return {"report": path, "format": output_format, "markdown": str(rdir / "report.md"),
            "html": str(rdir / "report.html") if output_format == "html" else None,
            "pngs": sorted(str(p) for p in rdir.glob("*.png"))}
