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

#: Relative distance (temperature-POD coordinates, :func:`field_distance`) beyond which an
#: online temperature field counts as unlike every calibration field: its p tolerances are
#: then the new-field ones (:func:`tolerances_for_field`). The same 0.1 % as the temperature
#: component's uncalibrated tolerance: below it the field is one of the calibration's up to
#: the precision of the fields themselves.
FIELD_DISTANCE_TOL = 1e-3

#: Consecutive blocks of equal duration each calibration run's history is cut into: the
#: scatter of the error/indicator ratio between them is how much it may move beyond the
#: calibrated span (:func:`tolerances_for_time`). Three: the fewest that give a scatter with
#: two degrees of freedom (Student's t 2.92 at 95 %) without blocks of one or two steps.
TIME_BLOCKS = 3


def _tolerance_from_bound(bound: Any, lo: float, hi: float, lt: float, b: float) -> tuple[float, str | None]:
    """The indicator tolerance of an upper bound ``bound(log indicator)`` of log(error) for the
    log target ``lt`` over the calibrated range ``[lo, hi]`` (see :func:`calibrate_component`)."""
    if bound(lo) >= lt:
        # every calibrated step has an error bound above the target: the tolerance lies below the
        # smallest calibrated indicator, the error taken to fall at least in proportion to it
        return float(math.exp(lo + (lt - bound(lo)) / max(b, 1.0))), "below"
    if bound(hi) < lt:
        # beyond the largest calibrated indicator the fit is not validated: the error is taken to
        # grow at least in proportion to the indicator from the bound there (slope max(b, 1) in
        # log-log), not along a shallower fitted slope trusted over decades
        return float(math.exp(hi + (lt - bound(hi)) / max(b, 1.0))), "above"
    # inside the calibrated range: the first indicator where the bound reaches the target
    grid = np.linspace(lo, hi, 257)
    k = int(np.argmax([bound(v) >= lt for v in grid]))
    a_, b_ = float(grid[k - 1]), float(grid[k])
    for _ in range(60):
        mid = 0.5 * (a_ + b_)
        a_, b_ = (mid, b_) if bound(mid) < lt else (a_, mid)
    return float(math.exp(a_)), None


def calibrate_component(pairs: Iterable[tuple[float, float]], target: float, confidence: float = 0.95,
                        groups: Iterable[int] | None = None) -> dict:
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

    ``groups`` (one label per pair: the calibration run, i.e. the temperature field, it
    comes from) adds the tolerance for a field unlike every calibration field. The steps of
    one run share that run's error/indicator ratio, so the scatter of the pooled fit ``s``
    says how well a calibrated field is predicted, not a new one. With the run offsets
    ``d_i`` (mean fit residual of run ``i``, ``m`` runs), the within-run scatter ``s_w`` and
    the between-run one ``s_b = std(d_i)`` (``m - 1`` dof), the new-field bound is
    ``a + b x + t_{m-1} sqrt(s_w^2 (1 + 1/n + (x - xbar)^2 / Sxx) + s_b^2 (1 + 1/m))``
    (``t_{m-1}`` Student's quantile at ``confidence`` with ``m - 1`` dof: 6.3 for two
    runs) and ``indicator_tolerance_new_field`` is where it meets the target. Fewer than two
    informative runs cannot say how a field's ratio varies: ``indicator_tolerance_new_field``
    is then None (no tolerance is claimed for a new field). ``runs`` is ``m``.
    """
    from scipy import stats

    x, y, g = [], [], []
    pairs = list(pairs)
    labels = list(groups) if groups is not None else [0] * len(pairs)
    for (ind, err), lab in zip(pairs, labels):
        if ind is not None and err is not None and np.isfinite(ind) and np.isfinite(err) and ind > NOISE_FLOOR \
                and err > 0:
            x.append(math.log(ind))
            y.append(math.log(err))
            g.append(lab)
    out: dict[str, Any] = {"pairs": len(x), "error_target": float(target), "confidence": float(confidence)}
    if groups is not None:
        out["runs"] = len(set(g))
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
    out["indicator_tolerance"], ext = _tolerance_from_bound(bound, lo, hi, lt, b)
    if ext:
        out["extrapolated"] = ext
    if groups is not None:
        out["indicator_tolerance_new_field"] = None
        runs = sorted(set(g))
        if len(runs) >= 2:
            res = y - (a + b * x)
            gi = np.array([runs.index(v) for v in g])
            d = np.array([res[gi == i].mean() for i in range(len(runs))])
            sw = float(np.sqrt(np.sum((res - d[gi]) ** 2) / max(n - len(runs) - 1, 1)))
            sb = float(np.std(d, ddof=1))
            m = len(runs)
            tm = float(stats.t.ppf(confidence, m - 1))

            def bound_new(v: float) -> float:
                """Upper prediction bound of log(error) for a new field (between-run scatter)."""
                lev = 1.0 + 1.0 / n + (v - xbar) ** 2 / max(sxx, 1e-300)
                return a + b * v + tm * math.sqrt(sw * sw * lev + sb * sb * (1.0 + 1.0 / m))

            tol_new, _ = _tolerance_from_bound(bound_new, lo, hi, lt, b)
            out.update(indicator_tolerance_new_field=min(tol_new, out["indicator_tolerance"]),
                       within_run_std_log=sw, between_run_std_log=sb)
    return out


def component_pairs(errors: list[dict], component: str, with_runs: bool = False,
                    with_blocks: bool = False) -> Any:
    """(indicator, true error) per step of every compared run (:func:`ddrom.rom.evaluation.compare`);
    ``with_runs``: also the index of the run of every pair; ``with_blocks``: also a label per
    pair for its (run, time block): :data:`TIME_BLOCKS` blocks of equal duration per run (by
    the run's ``times`` when recorded, else by step index)."""
    key = COMPONENT_ERRORS[component]
    pairs, runs, blocks = [], [], []
    for i, e in enumerate(errors):
        ind = (e.get("indicators_per_step") or {}).get(component)
        if ind is None and component == "p":
            ind = e.get("indicator_per_step")
        if ind is None or key not in e:
            continue
        new = list(zip(ind, e[key]))
        pairs += new
        runs += [i] * len(new)
        t = np.asarray(e["times"], dtype=float) if e.get("times") is not None and len(e["times"]) == len(new) \
            else np.arange(len(new), dtype=float)
        span = max(float(t[-1] - t[0]), 1e-300) if len(t) else 1.0
        b = np.minimum((TIME_BLOCKS * (t - t[0]) / span).astype(int), TIME_BLOCKS - 1) if len(t) else []
        blocks += [i * TIME_BLOCKS + int(v) for v in b]
    if with_blocks:
        return pairs, runs, blocks
    return (pairs, runs) if with_runs else pairs


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
    pairs, runs = component_pairs(errors, "p", True)
    out = calibrate_component(pairs, targets["p"], confidence, runs)
    comps: dict[str, dict] = {}
    beyond: dict[str, float | None] = {}
    for name in components:
        quantity = "p" if COMPONENT_ERRORS[name] == "p_error_per_step" else "u"
        if quantity not in targets:
            continue
        pairs, runs, blocks = component_pairs(errors, name, with_blocks=True)
        comps[name] = out if name == "p" else calibrate_component(pairs, targets[quantity], confidence, runs)
        comps[name] = {**comps[name], "quantity": quantity}
        if comps[name].get("indicator_tolerance"):
            # beyond the calibrated span: the bound with the scatter between time blocks
            tb = calibrate_component(pairs, targets[quantity], confidence, blocks)
            tol_t = tb.get("indicator_tolerance_new_field")
            beyond[name] = min(tol_t, comps[name]["indicator_tolerance"]) if tol_t else None
            comps[name]["indicator_tolerance_beyond_span"] = beyond[name]
            comps[name]["between_block_std_log"] = tb.get("between_run_std_log")
    for name, cc in comps.items():
        if not cc.get("indicator_tolerance") and name in UNCALIBRATED_TOLERANCES:
            cc.update(indicator_tolerance=UNCALIBRATED_TOLERANCES[name], fallback=True)
    if len(comps) > (1 if "p" in comps else 0):
        out["components"] = {k: {kk: vv for kk, vv in v.items() if kk != "components"} for k, v in comps.items()}
        out["tolerances"] = {k: v["indicator_tolerance"] for k, v in comps.items()
                             if v.get("indicator_tolerance")}
    spans = [float(e["times"][-1]) for e in errors if e.get("times")]
    if spans and beyond:
        out["calibrated_t_end"] = max(spans)
        out["tolerances_beyond_span"] = {k: v for k, v in beyond.items()
                                         if k in (out.get("tolerances") or {"p": None})}
    # the calibration fields (temperature-POD coordinates per step of each run): an online
    # field unlike all of them takes the new-field tolerances (tolerances_for_field)
    fields = [np.asarray(e["temperature_coeff_per_step"], dtype=float).tolist() for e in errors
              if e.get("temperature_coeff_per_step") is not None]
    if fields:
        out["fields"] = fields
        out["tolerances_new_field"] = {k: v.get("indicator_tolerance_new_field") for k, v in
                                       (comps.items() if comps else [("p", out)])
                                       if COMPONENT_ERRORS[k] == "p_error_per_step" and v.get("indicator_tolerance")}
    return out


def field_distance(coeff: np.ndarray, fields: list) -> float:
    """How far an online temperature history is from every calibration field.

    ``coeff`` (nt, r): the run's temperature-POD coordinates per step (the temperature
    component's fit at the sample points and sensors, :attr:`ddrom.rom.online.OnlineResult.
    temperature_coeff`); ``fields``: the calibration runs' (lists of (nt_j, r)). Returns
    ``max_k min_{j,l} ||c_k - c_{j,l}|| / max(||c_k||, max_{j,l} ||c_{j,l}|| 1e-3)``: the
    largest relative distance of a step's field to the nearest calibration step. 0 when the
    run's field is one of the calibration's; inf without calibration fields.
    """
    C = np.asarray(coeff, dtype=float)
    cal = [np.asarray(f, dtype=float).reshape(-1, C.shape[1] if C.ndim == 2 else 0) for f in fields]
    cal = [f for f in cal if f.size]
    if C.ndim != 2 or not cal:
        return math.inf
    ref = np.vstack(cal)
    floor = 1e-3 * float(np.linalg.norm(ref, axis=1).max(initial=0.0))
    out = 0.0
    for c in C:
        den = max(float(np.linalg.norm(c)), floor)
        if den == 0.0:
            continue
        out = max(out, float(np.linalg.norm(ref - c, axis=1).min()) / den)
    return out


def tolerances_for_field(calibration: Mapping[str, Any], distance: float,
                         tolerances: Mapping[str, float]) -> tuple[dict[str, float], dict]:
    """The p tolerances of a run whose field is at ``distance`` (:func:`field_distance`).

    Within :data:`FIELD_DISTANCE_TOL` of a calibration field: ``tolerances`` unchanged. Beyond
    it, each p component's calibrated tolerance is replaced by its new-field one (the bound
    with the calibration runs' between-run scatter, :func:`calibrate_component`), when the
    calibration could give one; a component calibrated on fewer than two fields keeps its
    tolerance and is reported as not validated for this field. Given (not calibrated)
    tolerances are kept. Returns (tolerances, report: ``distance``, ``new_field``, the
    ``replaced`` and ``not_validated`` components).
    """
    out = dict(tolerances)
    report: dict[str, Any] = {"distance": float(distance), "new_field": bool(distance > FIELD_DISTANCE_TOL),
                              "replaced": {}, "not_validated": []}
    new = calibration.get("tolerances_new_field") or {}
    if not report["new_field"]:
        return out, report
    _lower_calibrated(calibration, new, out, report)
    return out, report


def tolerances_for_time(calibration: Mapping[str, Any], t_end: float,
                        tolerances: Mapping[str, float]) -> tuple[dict[str, float], dict]:
    """The tolerances of a run up to ``t_end`` (the run's tolerances before
    :func:`tolerances_for_field`; a run both beyond the span and on a new field takes the
    smaller of the two rules' tolerances).

    Within the calibrated span (``calibrated_t_end``, the longest calibration run):
    ``tolerances`` unchanged. Beyond it, each calibrated tolerance is lowered to the bound
    that takes the error/indicator ratio of a later time to be one more draw of the scatter
    between the calibration histories' time blocks (:data:`TIME_BLOCKS`; Student's t with
    as many degrees of freedom as blocks minus one); a component whose calibration could
    not give that bound keeps its tolerance and is reported as not validated there. Given
    (not calibrated) tolerances are kept. Returns (tolerances, report: ``t_end``,
    ``calibrated_t_end``, ``beyond_span``, ``replaced``, ``not_validated``).

    Why: a calibration on the first cycles of a cyclic history saw the ratio of those
    cycles; over 50 cycles it grew (benchmarks/README.md, "Cyclic extrapolation": 2.9
    instead of ~1.5 at 62k DOFs) and a step 7 % above the target went unflagged with the
    indicator 7 % under its calibrated tolerance.
    """
    out = dict(tolerances)
    cal_end = calibration.get("calibrated_t_end")
    report: dict[str, Any] = {"t_end": float(t_end), "calibrated_t_end": cal_end,
                              "beyond_span": bool(cal_end is not None and t_end > cal_end * (1 + 1e-9)),
                              "replaced": {}, "not_validated": []}
    if not report["beyond_span"]:
        return out, report
    _lower_calibrated(calibration, calibration.get("tolerances_beyond_span") or {}, out, report)
    return out, report


def _lower_calibrated(calibration: Mapping[str, Any], lower: Mapping[str, float | None], out: dict,
                      report: dict) -> None:
    """Replace in ``out`` each calibrated tolerance by its ``lower`` one (the new-field or the
    beyond-span bound), recording ``report["replaced"][comp] = [old, new]`` when it is lower;
    a component whose calibration could not give that bound (None) is listed in
    ``report["not_validated"]``. Tolerances that are not the calibration's (absent, or given
    by the user) are left alone."""
    cal_tols = dict(calibration.get("tolerances") or {"p": calibration.get("indicator_tolerance")})
    for comp, tol in lower.items():
        if comp not in out or out[comp] != cal_tols.get(comp):
            continue                    # absent, or given by the user: not the calibration's to change
        if not tol:
            report["not_validated"].append(comp)
        elif tol < out[comp]:
            report["replaced"][comp] = [out[comp], float(tol)]
            out[comp] = float(tol)


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
