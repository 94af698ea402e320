"""Figures of the workflow (PNG, written under a temporary name then renamed): singular values,
indicator calibration, enrichment runs. Matplotlib's Agg canvas directly: no pyplot state."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def figure(figsize=(6.0, 4.0)):
    # The Agg canvas directly: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save(fig, path: Path) -> str:
    """Write a figure as PNG atomically (a private temporary renamed into place, removed on
    any failure: a full disk leaves the previous figure, not half a PNG)."""
    from ddrom.io.atomic import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path.name


def positive(a) -> np.ndarray:
    """Float array with NaN where the value is missing, non-finite or <= 0 (not drawable in log scale)."""
    x = np.array([np.nan if v is None else float(v) for v in a], dtype=float)
    x[~np.isfinite(x) | (x <= 0)] = np.nan
    return x


def plot_calibration(errors: list[dict], cal: dict, path: Path) -> str | None:
    """Indicator (p component) against the true per-step error of p, with the fit, its upper
    prediction bound and the tolerance; None when there is nothing to draw."""
    fig = figure((5.5, 4.5))
    ax = fig.add_subplot(111)
    xs_all = []
    for e in errors:
        x, y = positive(e.get("indicator_per_step", [])), positive(e.get("p_error_per_step", []))
        n = min(len(x), len(y))
        ok = np.isfinite(x[:n]) & np.isfinite(y[:n])
        if ok.any():
            ax.loglog(x[:n][ok], y[:n][ok], "o", ms=4, label=e["name"])
            xs_all.append(x[:n][ok])
    if not xs_all:
        return None
    if "slope" in cal:
        xs = np.concatenate(xs_all)
        g = np.logspace(np.log10(xs.min()), np.log10(xs.max()), 50)
        ax.loglog(g, np.exp(cal["intercept"]) * g ** cal["slope"], "k--",
                  label=f"fit log e = {cal['intercept']:.2f} + {cal['slope']:.2f} log i, r = {cal['pearson_log']:.3f}")
        if "prediction_margin_log" in cal:
            ax.loglog(g, np.exp(cal["intercept"] + cal["prediction_margin_log"]) * g ** cal["slope"], "k:",
                      label=f"{cal.get('confidence', 0.95):.0%} upper prediction bound")
        if cal.get("indicator_tolerance"):
            ax.axhline(cal["error_target"], color="tab:gray", lw=0.8)
            ax.axvline(cal["indicator_tolerance"], color="tab:gray", lw=0.8,
                       label=f"target {cal['error_target']:.0e} -> tolerance {cal['indicator_tolerance']:.2e}")
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())       # labelled minor ticks overlap on < 2 decades
    ax.set_xlabel("indicator (Gappy residual of p)")
    ax.set_ylabel("true relative error of p")
    ax.set_title("Indicator vs true error (one point per step)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, path)




def plot_singular_values(model: Any, path: Path) -> str:
    """Normalized singular values of the displacement (and plastic-strain) snapshots, with N."""
    fig = figure((5, 3.5))
    ax = fig.add_subplot(111)
    s = model.sigma_u[model.sigma_u > 0]
    ax.semilogy(np.arange(1, len(s) + 1), s / s[0], ".-", label="displacement")
    if model.gappy is not None and len(model.gappy.sigma):
        sp = model.gappy.sigma
        ax.semilogy(np.arange(1, len(sp) + 1), sp / sp[0], ".-", label="cumulated plastic strain (kept)")
    ax.axvline(model.n_modes, color="gray", ls=":", label=f"N = {model.n_modes}")
    ax.set_xlabel("index i")
    ax.set_ylabel(r"$\sigma_i / \sigma_1$")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    return save(fig, path)


def plot_enrichment(plain: list[dict], enriched: list[dict], summary: dict, path: Path) -> str:
    """Indicator and true error of p against the step, without and with enrichment."""
    n = len(plain)
    ncols = min(n, 3)
    nrows = -(-n // ncols)
    fig = figure((5 * ncols, 3.8 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    for ax, e0, e1 in zip(axes.ravel(), plain, enriched):
        k = np.arange(len(e0["indicator_per_step"]))
        ax.semilogy(k, positive(e0["indicator_per_step"]), "C0--", label="indicator, ROM")
        ax.semilogy(k, positive(e0["p_error_per_step"]), "C0-", label="true error of p, ROM")
        ax.semilogy(k, positive(e1["indicator_per_step"]), "C1--", label="indicator, enriched ROM")
        ax.semilogy(k, positive(e1["p_error_per_step"]), "C1-", label="true error of p, enriched ROM")
        for ev in e1.get("events", []):
            ax.axvline(ev["step"], color="C1", alpha=0.3)
        if summary.get("indicator_tolerance"):
            ax.axhline(summary["indicator_tolerance"], color="gray", ls=":", label="indicator tolerance")
        # right after an enrichment the indicator is at round-off (~1e-16): not worth 10 decades
        ax.set_ylim(bottom=max(ax.get_ylim()[0], 1e-7))
        ax.set_title(f"{e0['name']} {e0.get('params', '')}", fontsize=8)
        ax.set_xlabel("time step")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return save(fig, path)
