"""Calibration of the error indicator's components against true errors on test points.

Each component ``c`` of the indicator (:data:`ddrom.rom.online.INDICATOR_COMPONENTS`) is
paired, step by step over the test runs, with the true per-step relative error it is
meant to watch (:data:`COMPONENT_ERRORS`: the plastic-strain components -- the Gappy
residual ``p`` and the monitor points' hold-out error ``p_monitor`` -- with the error of
``p``, the stress and temperature components with the error of ``u``), and
:func:`calibrate_component` fits ``log(error) = a + b log(indicator)`` over the pairs.
The tolerance of the component is where the one-sided upper prediction bound of that fit
meets the error target of its quantity; a step is enriched when any component exceeds its
tolerance.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np

#: The true error each indicator component is calibrated against (keys of ddrom.rom.evaluation.compare).
COMPONENT_ERRORS = {"p": "p_error_per_step", "stress": "u_error_per_step", "temperature": "u_error_per_step",
                    "p_monitor": "p_error_per_step"}

#: Tolerances of components whose calibration data cannot give one (e.g. every test
#: temperature field lies in the span of the training's, so the temperature component is
#: at round-off throughout): the temperature component then flags a field with more than
#: 0.1 % (relative L2 at the points and sensors) outside the training's span.
UNCALIBRATED_TOLERANCES = {"temperature": 1e-3}

#: Indicator values below this are round-off (a field exactly in the span): no information.
NOISE_FLOOR = 1e-12


def calibrate_component(pairs: Iterable[tuple[float, float]], target: float, confidence: float = 0.95) -> dict:
    """Fit ``log(true error) = a + b log(indicator)`` over (indicator, error) pairs.

    Returns the Pearson correlation of the logs, the fit, the residual standard deviation
    ``s`` (log units, ``n - 2`` degrees of freedom) and two tolerances for the error target
    ``T``:

    * ``indicator_tolerance_fit = exp((log T - a) / b)``: where the MEAN fit meets the target
      (half of the steps at that indicator have a larger error);
    * ``indicator_tolerance = exp(x0)``, the first ``x0`` at which the one-sided upper
      prediction bound ``a + b x + t s sqrt(1 + 1/n + (x - xbar)^2 / Sxx)`` reaches ``log T``
      (``t`` the ``confidence`` quantile of Student's t, n - 2 dof): a step whose indicator is
      below it has an error below ``T`` with probability ``confidence`` under the fit's
      model. The fit is validated over the calibrated indicators only: when the target is
      reached beyond them (the calibrated errors are all below it) or before them (all
      above it), the error is taken to vary at least in proportion to the indicator from
      the bound at the nearest edge (slope ``max(b, 1)`` in log-log; ``extrapolated`` says
      ``"above"`` or ``"below"``), instead of a fitted slope trusted over decades.
      The enrichment uses this one: the mean fit missed the target 3x on a finer mesh
      (benchmarks/README.md).

    Pairs where the indicator (below :data:`NOISE_FLOOR`) or the error vanish or are not
    finite carry no information and are left out.
    """
    from scipy import stats

    x, y = [], []
    for ind, err in pairs:
        if ind is not None and err is not None and np.isfinite(ind) and np.isfinite(err) and ind > NOISE_FLOOR \
                and err > 0:
            x.append(math.log(ind))
            y.append(math.log(err))
    out: dict[str, Any] = {"pairs": len(x), "error_target": float(target), "confidence": float(confidence)}
    if len(x) < 3 or np.ptp(x) == 0:
        out["message"] = "too few informative (indicator, error) pairs to calibrate"
        return out
    x, y = np.array(x), np.array(y)
    n = len(x)
    b, a = np.polyfit(x, y, 1)
    s = float(np.sqrt(np.sum((y - (a + b * x)) ** 2) / max(n - 2, 1)))
    tq = float(stats.t.ppf(confidence, max(n - 2, 1)))
    margin = tq * s * math.sqrt(1.0 + 1.0 / n)
    out.update(pearson_log=float(np.corrcoef(x, y)[0, 1]), slope=float(b), intercept=float(a),
               residual_std_log=s, prediction_margin_log=margin,
               indicator_range=[float(math.exp(x.min())), float(math.exp(x.max()))])
    out["indicator_tolerance_fit"] = float(math.exp((math.log(target) - a) / b)) if b > 0 else None
    xbar, sxx, lt = float(x.mean()), float(np.sum((x - x.mean()) ** 2)), math.log(target)

    def bound(v: float) -> float:
        """Upper prediction bound of log(error) at log(indicator) v (leverage term included)."""
        return a + b * v + tq * s * math.sqrt(1.0 + 1.0 / n + (v - xbar) ** 2 / max(sxx, 1e-300))

    lo, hi = float(x.min()), float(x.max())
    if bound(lo) >= lt:
        # every calibrated step has an error bound above the target: the tolerance lies below the
        # smallest calibrated indicator, the error taken to fall at least in proportion to it
        out["indicator_tolerance"] = float(math.exp(lo + (lt - bound(lo)) / max(b, 1.0)))
        out["extrapolated"] = "below"
    elif bound(hi) < lt:
        # beyond the largest calibrated indicator the fit is not validated: the error is taken to
        # grow at least in proportion to the indicator from the bound there (slope max(b, 1) in
        # log-log), not along a shallower fitted slope trusted over decades
        out["indicator_tolerance"] = float(math.exp(hi + (lt - bound(hi)) / max(b, 1.0)))
        out["extrapolated"] = "above"
    else:
        # inside the calibrated range: the first indicator where the bound reaches the target
        grid = np.linspace(lo, hi, 257)
        k = int(np.argmax([bound(v) >= lt for v in grid]))
        a_, b_ = float(grid[k - 1]), float(grid[k])
        for _ in range(60):
            mid = 0.5 * (a_ + b_)
            a_, b_ = (mid, b_) if bound(mid) < lt else (a_, mid)
        out["indicator_tolerance"] = float(math.exp(a_))
    return out


def component_pairs(errors: list[dict], component: str) -> list[tuple[float, float]]:
    """(indicator, true error) per step of every compared run (:func:`ddrom.rom.evaluation.compare`)."""
    key = COMPONENT_ERRORS[component]
    pairs = []
    for e in errors:
        ind = (e.get("indicators_per_step") or {}).get(component)
        if ind is None and component == "p":
            ind = e.get("indicator_per_step")
        if ind is None or key not in e:
            continue
        pairs += list(zip(ind, e[key]))
    return pairs


def calibrate_indicator(errors: list[dict], target: float, confidence: float = 0.95,
                        targets: Mapping[str, float] | None = None,
                        components: Iterable[str] = ("p",)) -> dict:
    """Calibrate the indicator components on compared test runs.

    ``target`` is the error target of ``p`` (the p component's calibration is returned at
    the top level, as the ROM file and the report have always read it); ``targets`` may give
    the target of ``u`` (``{"u": 1e-3}``) for the stress and temperature components, whose
    calibrations are under ``components[name]``, with ``tolerances[name]`` the tolerance of
    every component that could be calibrated.
    """
    targets = {"p": float(target), **dict(targets or {})}
    out = calibrate_component(component_pairs(errors, "p"), targets["p"], confidence)
    comps: dict[str, dict] = {}
    for name in components:
        quantity = "p" if COMPONENT_ERRORS[name] == "p_error_per_step" else "u"
        if quantity not in targets:
            continue
        comps[name] = (out if name == "p" else
                       calibrate_component(component_pairs(errors, name), targets[quantity], confidence))
        comps[name] = {**comps[name], "quantity": quantity}
    for name, cc in comps.items():
        if not cc.get("indicator_tolerance") and name in UNCALIBRATED_TOLERANCES:
            cc.update(indicator_tolerance=UNCALIBRATED_TOLERANCES[name], fallback=True)
    if len(comps) > (1 if "p" in comps else 0):
        out["components"] = {k: {kk: vv for kk, vv in v.items() if kk != "components"} for k, v in comps.items()}
        out["tolerances"] = {k: v["indicator_tolerance"] for k, v in comps.items()
                             if v.get("indicator_tolerance")}
    return out


def detection(errors: list[dict], tolerances: Mapping[str, float], targets: Mapping[str, float]) -> dict:
    """Misses and false alarms of a set of tolerances over compared runs.

    A step *needs* an enrichment when its true error of ``u`` or ``p`` exceeds its target,
    and *is flagged* when any component exceeds its tolerance. Returns the counts of steps,
    needed, flagged, missed (needed and not flagged) and false alarms (flagged, not needed),
    with the missed steps listed as ``(run, step)``.
    """
    counts = {"steps": 0, "needed": 0, "flagged": 0, "missed": 0, "false_alarms": 0, "missed_steps": []}
    for e in errors:
        ind = e.get("indicators_per_step") or {"p": e.get("indicator_per_step", [])}
        n = len(e.get("u_error_per_step", e.get("p_error_per_step", [])))
        for k in range(1, n):
            need = any(np.isfinite(v) and v > targets.get(q, math.inf)
                       for q, v in (("u", _at(e.get("u_error_per_step"), k)),
                                    ("p", _at(e.get("p_error_per_step"), k))))
            flag = any(np.isfinite(_at(ind.get(c), k)) and _at(ind.get(c), k) > tol
                       for c, tol in tolerances.items() if tol)
            counts["steps"] += 1
            counts["needed"] += need
            counts["flagged"] += flag
            if need and not flag:
                counts["missed"] += 1
                counts["missed_steps"].append((e.get("name"), k))
            counts["false_alarms"] += flag and not need
    return counts


def _at(values: Any, k: int) -> float:
    if values is None or k >= len(values) or values[k] is None:
        return math.nan
    return float(values[k])
