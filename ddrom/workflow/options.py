"""Option objects of every stage, built from a validated case.

Each option has ONE default, in the dataclass of the layer that uses it:
:class:`~ddrom.hf.solver.SolverOptions` (Newton: :class:`~ddrom.hf.stepping.NewtonOptions`),
:class:`~ddrom.rom.offline.OfflineOptions`, :class:`~ddrom.rom.enrichment.EnrichmentOptions`,
:class:`~ddrom.rom.classifier.ClassifierOptions`, :class:`~ddrom.io.store.StoreOptions`,
:class:`IndicatorOptions` and :class:`ImportOptions`. The case schema (:mod:`ddrom.workflow.case`) takes the defaults of
its keys from them, so a case that omits a key, a Python user who builds the options by hand
and the command line get the same value; the functions here only map the case's keys (all
present after validation) onto the fields.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ddrom.hf.solver import SolverOptions
from ddrom.rom.classifier import ClassifierOptions
from ddrom.rom.enrichment import EnrichmentOptions
from ddrom.rom.offline import OfflineOptions


@dataclass
class IndicatorOptions:
    """Calibration of the error indicator (``[rom] indicator_*``).

    target : error target of the cumulated plastic strain (per step, relative)
    target_u : error target of the displacement (per step, relative), for the stress and
        temperature components
    confidence : the tolerance of a component is where the one-sided upper prediction
        bound of its log-log fit at this confidence meets the target
        (:func:`ddrom.rom.calibration.calibrate_component`)
    tolerance : a p tolerance given by the user (None: calibrated)
    """

    target: float = 1e-2
    target_u: float = 1e-3
    confidence: float = 0.95
    tolerance: float | None = None
    tolerances: dict = field(default_factory=dict)


@dataclass
class ImportOptions:
    """Checks of ``ddrom import`` (``[import]`` keys; ``--equilibrium-tol`` overrides).

    equilibrium_tol : the part of an imported step's equilibrium residual (relative to the
        external forces, to the reactions without external forces;
        :class:`~ddrom.hf.consistency.EquilibriumCheck`) that the precision of the data does
        not explain: a step passes when its residual is at most ``equilibrium_tol`` plus
        :data:`ddrom.workflow.importing.NOISE_ALLOWANCE` times the residual one realization
        of the data's rounding error gives; also the largest deviation of the displacement
        from the case's Dirichlet values, relative to the largest displacement. Above it
        the import stops: the data and the case describe different problems. The default
        leaves room for another code's own convergence test (CalculiX's and Abaqus': the
        residual forces within 0.5 % of the average force) on top of the data's precision.
        Measured on C3D8 cantilevers run by CalculiX 2.20 (tests/test_calculix.py):
        consistent 6-digit ``.frd`` data leave 7e-4 .. 1.6e-2 (the latter under a
        concentrated load near collapse, where the rounding noise alone gives 1.4e-2);
        B-bar instead of full integration 1.6 .. 6.6, a Young's modulus 10 % off 0.1 .. 1.1
        (5 % off: 0.05), a load 10 % off 0.09 (5 % off: 0.048); ddrom's own double-precision
        runs (Newton tolerance 1e-8) 3e-9 .. 7e-9.
    """

    equilibrium_tol: float = 2e-2


def store_options(case: Any) -> "StoreOptions":
    """The case's ``[output]`` keys: the layout of the snapshot stores it writes (the
    dataclass defaults when the section is absent)."""
    from ddrom.io.store import StoreOptions

    cfg = case.raw.get("output") or {}
    return StoreOptions(**{k: cfg[k] for k in ("store_state", "compression") if k in cfg})


def import_options(case: Any) -> ImportOptions:
    """The case's ``[import]`` keys (the dataclass defaults when the section is absent)."""
    cfg = case.raw.get("import") or {}
    return ImportOptions(**{k: cfg[k] for k in ("equilibrium_tol",) if k in cfg})


def solver_options(case: Any) -> SolverOptions:
    s = case.raw["solver"]
    return SolverOptions(rtol=s["newton_rtol"], atol=s["newton_atol"], max_iterations=s["max_iterations"],
                         line_search=s["line_search"], max_cutbacks=s["max_cutbacks"],
                         bbar=s["element_technology"] == "bbar", petsc_options=dict(s["petsc_options"]))


def online_newton_options(case: Any) -> "OnlineOptions":
    """The reduced Newton's options: the case's [solver] Newton keys (those of the HF Newton)."""
    from ddrom.rom.online import OnlineOptions

    s = case.raw["solver"]
    return OnlineOptions(rtol=s["newton_rtol"], atol=s["newton_atol"], max_iterations=s["max_iterations"],
                         line_search=s["line_search"], max_cutbacks=s["max_cutbacks"])


def offline_options(case: Any) -> OfflineOptions:
    r = case.raw["rom"]
    return OfflineOptions(pod_tol=r["pod_tol"], stress_tol=r["stress_tol"], ecm_tol=r["ecm_tol"],
                          p_tol=r["dual_pod_tol"], max_modes=r.get("max_modes"), pod_method=r.get("pod_method"),
                          temperature_tol=r["temperature_tol"], temperature_sensors=r["temperature_sensors"],
                          monitor_points=r["monitor_points"],
                          noise_margin=r["noise_margin"])


def classifier_options(case: Any) -> ClassifierOptions:
    r = case.raw["rom"]
    return ClassifierOptions(method=r["classifier"], margin=r["classifier_margin"])


def indicator_options(case: Any) -> IndicatorOptions:
    r = case.raw["rom"]
    return IndicatorOptions(target=r["indicator_target"], target_u=r["indicator_target_u"],
                            confidence=r["indicator_confidence"], tolerance=r.get("indicator_tol"))


def enrichment_options(case: Any, *, enabled: bool | None = None, tolerance: float | None = None,
                       tolerances: dict | None = None, max_enrichments: int | None = None,
                       calibration: dict | None = None) -> EnrichmentOptions:
    """The enrichment options of a case with the command line's overrides.

    Tolerances, in order: given here; ``[rom.enrichment] indicator_tol`` (p) and
    ``indicator_tols`` (others); ``[rom] indicator_tol``; the calibration stored in the ROM
    file (``calibration``, :func:`ddrom.rom.model.read_calibration`); for a component none of
    these gives, :data:`ddrom.rom.calibration.UNCALIBRATED_TOLERANCES` (which alone do not
    enable an enrichment: at least one tolerance must be given or calibrated).
    """
    rom = case.raw["rom"]
    cfg = rom["enrichment"]
    cal = calibration or {}
    tol = tolerance or cfg.get("indicator_tol") or rom.get("indicator_tol") or cal.get("indicator_tolerance")
    from ddrom.rom.calibration import UNCALIBRATED_TOLERANCES

    tols = {**{k: v for k, v in (cal.get("tolerances") or {}).items() if k != "p"},
            **dict(cfg.get("indicator_tols", {})), **dict(tolerances or {})}
    fallback = tuple(k for k in UNCALIBRATED_TOLERANCES if k not in tols)
    tols = {**{k: UNCALIBRATED_TOLERANCES[k] for k in fallback}, **tols}
    return EnrichmentOptions(tolerance=None if tol is None else float(tol),
                             max_enrichments=int(max_enrichments if max_enrichments is not None
                                                 else cfg["max_enrichments"]),
                             basis_tol=cfg["basis_tol"], hf_rtol=cfg["hf_rtol"], ecm_tol=cfg.get("ecm_tol"),
                             tolerances={k: float(v) for k, v in tols.items()}, fallback=fallback,
                             enabled=cfg["enabled"] if enabled is None else bool(enabled), save=cfg["save"])
