"""Calibration of the error indicator's components against true errors on test points.

Each component ``c`` of the indicator (:data:`ddrom.rom.online.INDICATOR_COMPONENTS`) is
paired, step by step over the test runs, with the true per-step relative error it is
meant to watch (:data:`COMPONENT_ERRORS`: the plastic-strain component with the error of
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
COMPONENT_ERRORS = {"p": "p_error_per_step", "stress": "u_error_per_step", "temperature": "u_error_per_step"}

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
    * ``indicator_tolerance = exp(x0)``, the largest ``x0`` below which the one-sided upper
      prediction bound ``a + b x + t s sqrt(1 + 1/n + (x - xbar)^2 / Sxx)`` stays under
      ``log T`` (``t`` the ``confidence`` quantile of Student's t, n - 2 dof): a step whose
      indicator is below it has an error below ``T`` with probability ``confidence`` under
      the fit's model. The leverage term makes the bound widen away from the calibrated
      indicators, so a target far beyond the calibrated errors gives a tolerance only if
      the data's slope is significant, and no tolerance (None, with a message) otherwise;
      and it never exceeds the largest calibrated indicator (beyond it the fit is not
      validated; ``capped_at_calibrated_range`` records it).
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
    if b > 0:
        out["indicator_tolerance_fit"] = float(math.exp((math.log(target) - a) / b))
        x0 = _bound_crossing(a, b, tq * s, n, float(x.mean()), float(np.sum((x - x.mean()) ** 2)),
                             math.log(target))
        if x0 is not None and x0 > x.max():
            # beyond the largest calibrated indicator the fit is not validated: a more permissive
            # tolerance would trust an extrapolation, so the tolerance stops there
            out["indicator_tolerance_uncapped"] = float(math.exp(x0))
            out["capped_at_calibrated_range"] = True
            x0 = float(x.max())
        out["indicator_tolerance"] = None if x0 is None else float(math.exp(x0))
        if x0 is None:
            out["message"] = (f"the {confidence:.0%} prediction bound never meets the target {target:g}: the "
                              "calibration data do not reach it with a significant slope")
    else:
        out["indicator_tolerance_fit"] = out["indicator_tolerance"] = None
        out["message"] = "the error does not grow with the indicator in the calibration data"
    return out


def _bound_crossing(a: float, b: float, ts: float, n: int, xbar: float, sxx: float, y: float) -> float | None:
    """Largest x with ``a + b x + ts sqrt(1 + 1/n + (x - xbar)^2 / sxx) <= y`` on the branch where the
    bound increases (it is convex in x); None if the bound is above ``y`` everywhere."""
    sxx = max(sxx, 1e-300)

    def f(x: float) -> float:
        return a + b * x + ts * math.sqrt(1.0 + 1.0 / n + (x - xbar) ** 2 / sxx) - y

    # minimizer of the convex f: b + ts (x - xbar) / (sxx sqrt(...)) = 0 has a solution iff b < ts / sqrt(sxx)
    c = ts / math.sqrt(sxx)
    if b >= c:
        lo = -1e6                                   # f decreases without bound to the left
        if f(lo) > 0:
            return None
    else:
        r = math.sqrt(1.0 + 1.0 / n)
        lo = xbar - (b / c) * r * math.sqrt(sxx) / math.sqrt(1.0 - (b / c) ** 2)
        if f(lo) > 0:
            return None
    hi = max(lo, xbar) + 1.0
    while f(hi) <= 0:
        hi = xbar + 2.0 * (hi - xbar)
        if hi > 1e6:
            return None
    for _ in range(200):                             # bisection: f(lo) <= 0 < f(hi)
        mid = 0.5 * (lo + hi)
        if f(mid) <= 0:
            lo = mid
        else:
            hi = mid
    return lo


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
