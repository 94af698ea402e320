"""Offline stage: snapshot store -> reduced model (POD, ECM, Gappy-POD, reduced operators).

1. POD of the displacement snapshots with their prescribed DOFs zeroed (= u - lifting),
   truncated at ``pod_tol`` (relative energy: l2_err = pod_tol ||S||_F).
2. POD of the stress snapshots in the quadrature-weighted inner product: a compressed
   stress basis Psi (so that the ECM integrand has N x r columns, not N x m).
3. ECM on the integrands of the stress snapshots, eps(phi_k) : sigma_s at every integration
   point (plus the constant): K reduced points and positive weights, identical for any
   number of ranks. The snapshot columns are represented exactly by N x Ns columns
   eps(phi_k) : (Psi L)_j with L L^T the Gram matrix of the snapshots' stress coefficients
   (:func:`stress_column_weights`; offline L = diag(sigma_s)).
4. Gappy-POD of the cumulated plastic strain: POD basis Phi_p; samples = reduced points
   plus Q-DEIM points (constitutive law also evaluated there, with weight 0).
5. Reduced operators at the sample points, lifting strains, projected loads.

Steps 3-5 (:func:`hyper_reduce`) work from distributed bases only, so the online
enrichment (:mod:`ddrom.rom.enrichment`) reruns them on its enriched bases.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ddrom.hf.solver import HFSolver
from ddrom.parallel import Timers, as_mpi, check_all
from ddrom.reduction.ecm import PointProducts
from ddrom.reduction.exact import row_matmul
from ddrom.rom.integrand import IntegrandCache
from ddrom.rom.model import GappyData, LoadData, MonitorData, ReducedModel, TemperatureData
from ddrom.rom.operators import (all_mode_strains, lifting_fields, mode_values_local,
                                 natural_point_ids, point_coordinates, point_interpolation, reduced_load_terms,
                                 strain_operators, values_at_points)


@dataclass
class OfflineOptions:
    """Options of the offline stage (the single source of their defaults: the case file's
    ``[rom]`` keys take theirs from here).

    pod_tol : relative energy tolerance of the displacement POD: the truncation error
        ``sqrt(sum_{i>N} sigma_i^2) <= pod_tol ||S||_F``.
    stress_tol : the same for the compression of the stress snapshots (quadrature inner product).
    ecm_tol : relative tolerance of the ECM: ``||J^T omega - b|| <= ecm_tol ||b||`` over the
        stress snapshots' internal-force integrands (:func:`stress_column_weights`).
    p_tol : relative energy tolerance of the plastic-strain POD (Gappy basis).
    max_modes : cap on the displacement modes (None: no cap).
    pod_method : POD algorithm (None: :data:`ddrom.reduction.pod.DEFAULT_METHOD`;
        ``"streaming"``: incremental displacement POD).
    temperature_tol : relative energy tolerance of the POD of the training temperatures
        (``T - T_ref`` at the integration points), the basis of the indicator's temperature
        component.
    temperature_sensors : points spread over the part (farthest-point sampling) where the
        online stage reads the temperature for that component, besides the sample points:
        a new hot spot larger than their covering radius is seen wherever it is. An
        enrichment keeps them and adds the sample points it drops (:func:`_temperature_data`).
    noise_margin : the POD tolerances of the displacement, the stress and the plastic strain
        are kept at least this many times the training data's noise floor (imported data:
        :func:`noise_floors`); a tolerance below the floor keeps modes of noise (measured on
        CalculiX data: the stress POD at 1e-5 keeps modes of rounding noise whose reduced
        points and Gappy fit the data cannot support). 0 disables it.
    monitor_points : integration points, disjoint from the sample points, where the online
        stage integrates the constitutive law too but does not fit: the hold-out check of
        the p reconstruction (indicator component ``p_monitor``; :func:`monitor_points`).
        Their online cost is one material update per increment at these points (the
        sample points take one per Newton iteration). 0: no such component.
    """

    pod_tol: float = 1e-4
    stress_tol: float = 1e-5
    ecm_tol: float = 1e-4
    p_tol: float = 1e-4
    max_modes: int | None = None
    pod_method: str | None = None
    temperature_tol: float = 1e-8
    temperature_sensors: int = 64
    noise_margin: float = 3.0
    monitor_points: int = 32


#: The POD tolerance of each quantity of a noise floor (OfflineOptions field, case key).
_FLOOR_TOLERANCES = {"displacement": ("pod_tol", "pod_tol"), "stress": ("stress_tol", "stress_tol"),
                     "p": ("p_tol", "dual_pod_tol")}


def noise_floors(store: Any, sims: list[str] | None = None) -> dict[str, float]:
    """The relative noise of the training snapshots, per quantity (``displacement``, ``stress``,
    ``p``): what ``ddrom import`` recorded with each simulation (metadata ``noise``: the noise
    the precision of the values leaves after the replay, and the RMS difference to a field
    the producer gave at integration points or per cell), combined over the simulations as
    ``sqrt(sum noise^2 / sum norm^2)``, the larger of the two estimates. 0 for a quantity no
    simulation records (ddrom's own HF runs: double precision, no floor to respect)."""
    acc: dict[str, np.ndarray] = {}
    for info in store.simulations():
        if not info.complete or (sims is not None and info.name not in sims):
            continue
        meta = store.metadata(info.name, "noise") or {}
        for key, v in meta.items():
            if isinstance(v, dict) and "noise2" in v:
                acc.setdefault(key, np.zeros(2))
                acc[key] += [float(v["noise2"]), float(v["norm2"])]
    out = {}
    for q in _FLOOR_TOLERANCES:
        vals = [np.sqrt(a[0] / a[1]) for k, a in acc.items() if k in (q, f"{q}_replay") and a[1] > 0]
        out[q] = float(max(vals, default=0.0))
    return out


def tolerances_above_noise(options: OfflineOptions, floors: dict[str, float], comm: Any = None
                           ) -> tuple[OfflineOptions, dict[str, dict]]:
    """``options`` with the POD tolerances raised to ``noise_margin`` times the noise floors
    (:func:`noise_floors`) where they are below; logs each change and the key that sets it.
    Returns the options and ``{quantity: {"floor", "tolerance", "raised_from"}}``."""
    from dataclasses import replace

    from ddrom.parallel import get_logger

    out, report = options, {}
    for q, (fld, key) in _FLOOR_TOLERANCES.items():
        floor = float(floors.get(q, 0.0))
        tol = getattr(options, fld)
        want = options.noise_margin * floor
        entry = {"floor": floor, "tolerance": tol}
        if want > tol:
            out = replace(out, **{fld: want})
            entry.update(tolerance=want, raised_from=tol)
            get_logger(comm).warning(
                f"  {q} POD tolerance raised from {tol:g} to {want:.2e}: {options.noise_margin:g} x the noise floor "
                f"{floor:.2e} of the training data (the precision of the imported values, see `ddrom import`); "
                f"a smaller [rom] {key} would keep modes of noise. Set [rom] {key} >= {want:.2e} to silence this, "
                "or [rom] noise_margin = 0 to keep it")
        report[q] = entry
    return out, report


def build_reduced_model(problem: Any, solver: HFSolver, store: Any, options: OfflineOptions,
                        timers: Timers | None = None, sims: list[str] | None = None
                        ) -> tuple[ReducedModel, dict]:
    """Build the reduced model from the training store; returns it and the distributed bases.

    ``problem``: the :class:`~ddrom.hf.problem.Problem` the store was computed for (loads
    projected on the basis, descriptions kept in the model). ``sims`` restricts the
    snapshots to some simulations (a local basis of a cluster).
    """
    from ddrom.reduction import Diagonal, Euclidean, l2_err_from_relative, pod
    from ddrom.reduction.pod import DEFAULT_METHOD

    timers = timers or Timers()
    dm = solver.dm
    comm = solver.comm
    floors = noise_floors(store, sims)
    options, raised = tolerances_above_noise(options, floors, comm)
    # the streaming method applies to the displacement; the other PODs use the default
    kw = {"method": options.pod_method} if options.pod_method not in (None, "streaming") else {}
    # Natural row ids make the (default) POD bitwise independent of the partition, hence
    # the ECM and Gappy points and the whole ROM file (ddrom.reduction.exact); the other
    # methods have no such mode and get none.
    exact = kw.get("method", DEFAULT_METHOD) == "rcholqr"

    def ids(rows: np.ndarray) -> dict:
        return {"row_ids": rows} if exact else {}

    nown = 3 * dm.n_owned
    # 1. displacement POD (prescribed DOFs zeroed: u - lifting)
    with timers("pod_displacement"):
        if options.pod_method == "streaming":
            r_u = _streaming_displacement_pod(solver, store, sims, options)
        else:
            U = store.read_block("displacement", dm, sims=sims)
            U[solver.fixed[:nown]] = 0.0
            # a cap above the number of snapshots (a small cluster's local basis) is no cap
            cap = None if options.max_modes is None else min(int(options.max_modes), U.shape[1])
            r_u = pod(U, comm, Euclidean(), l2_err=l2_err_from_relative(options.pod_tol, U, comm),
                      rtol=1e-12, modes=cap, name="displacement snapshots", **kw,
                      **ids(dm.natural_dof_ids()))
            del U
    Phi = r_u.modes_loc
    check_all(comm, Phi.shape[1] > 0, "the displacement snapshots are all zero: nothing to reduce")
    # 2. stress compression in the quadrature inner product
    w_qp = solver.asm.wdet.ravel()
    with timers("pod_stress"):
        Sig = store.read_block("stress", dm, sims=sims)                        # (ne*nq*6, m)
        # the largest block of the offline stage: pod may scale it in place (overwrite)
        r_s = pod(Sig, comm, Diagonal(np.repeat(w_qp, 6)), rtol=1e-12,
                  l2_err=l2_err_from_relative(options.stress_tol, Sig, comm, Diagonal(np.repeat(w_qp, 6))),
                  name="stress snapshots", overwrite=True, **kw, **ids(dm.natural_qp_row_ids(6)))
        del Sig
    # 4a. POD of p (its Gappy samples are chosen with the ECM points, in hyper_reduce)
    with timers("pod_p"):
        P = store.read_block("p", dm, sims=sims)                               # (G, m)
        pn = as_mpi(comm).allreduce(float(np.sum(P * P)))
        Phip, sigma_p = None, None
        if pn > 0:
            r_p = pod(P, comm, Diagonal(w_qp), rtol=1e-12,
                      l2_err=l2_err_from_relative(options.p_tol, P, comm, Diagonal(w_qp)),
                      name="plastic strain snapshots", **kw, **ids(dm.natural_qp_row_ids(1)))
            Phip, sigma_p = r_p.modes_loc, r_p.sigma
    # 4c. POD of the training temperatures (T - T_ref at the points): the indicator's
    # temperature component measures how far a new field is from their span
    with timers("pod_temperature"):
        Tsnap = training_temperatures(problem, solver, store, sims)
        tn = as_mpi(comm).allreduce(float(np.sum(Tsnap * Tsnap)))
        PhiT, sigma_T = np.zeros((Tsnap.shape[0], 0)), np.zeros(0)
        if tn > 0:
            r_T = pod(Tsnap, comm, Diagonal(w_qp), rtol=1e-12,
                      l2_err=l2_err_from_relative(options.temperature_tol, Tsnap, comm, Diagonal(w_qp)),
                      name="temperature snapshots", **kw, **ids(dm.natural_qp_row_ids(1)))
            PhiT, sigma_T = r_T.modes_loc, r_T.sigma
    model = hyper_reduce(problem, solver, Phi, r_s.modes_loc, Phip, ecm_tol=options.ecm_tol, timers=timers,
                         sigma_u=r_u.sigma_all, sigma_p=sigma_p, stress_gram=np.diag(np.asarray(r_s.sigma) ** 2),
                         PhiT=PhiT, sigma_T=sigma_T, n_sensors=options.temperature_sensors,
                         n_monitor=options.monitor_points)
    # the training's largest sample norms: the scales below which the indicator components'
    # denominators are floored (ReducedSolver.indicators; the onset of plasticity, a
    # load-free step)
    if model.gappy is not None:
        model.info["p_sample_scale"] = float(np.linalg.norm(values_at_points(dm, P, model.point_gids),
                                                            axis=0).max())
    if model.monitor is not None:
        model.info["p_monitor_scale"] = float(np.linalg.norm(values_at_points(dm, P, model.monitor.point_gids),
                                                             axis=0).max())
    del P
    Sig = store.read_block("stress", dm, sims=sims).reshape(dm.n_cells * dm.n_qp, 6, -1)
    model.info["stress_sample_scale"] = float(np.linalg.norm(
        values_at_points(dm, Sig, model.point_gids).reshape(-1, Sig.shape[-1]), axis=0).max())
    del Sig
    td = model.temperature_data
    rows = np.concatenate([model.point_gids, td.sensor_gids])
    model.info["temperature_sample_scale"] = float(np.linalg.norm(values_at_points(dm, Tsnap, rows), axis=0).max()) \
        if Tsnap.shape[1] else 0.0
    del Tsnap
    model.info.update({"pod_tol": options.pod_tol, "stress_tol": options.stress_tol, "p_tol": options.p_tol,
                       "pod_method": r_u.method, "temperature_tol": options.temperature_tol,
                       "temperature_sensors": options.temperature_sensors, "noise_floors": floors,
                       "monitor_points": options.monitor_points,
                       "noise_margin": options.noise_margin,
                       "raised_tolerances": {q: r["raised_from"] for q, r in raised.items() if "raised_from" in r}})
    model.info["simulations"] = list(sims) if sims is not None else [s.name for s in store.simulations()
                                                                      if s.complete]
    return model, distributed_bases(dm, Phi, r_s.modes_loc, Phip, PhiT)


def training_temperatures(problem: Any, solver: HFSolver, store: Any, sims: list[str] | None) -> np.ndarray:
    """``T - T_ref`` at this rank's integration points at every stored step of the training
    simulations, (ne nq, m) in the store's snapshot order (collective for temperature files)."""
    dm = solver.dm
    cols = []
    T_ref = float(problem.temperature.T_ref)
    for info in store.simulations():
        if not info.complete or (sims is not None and info.name not in sims):
            continue
        T = problem.temperature_field(info.params, dm)
        shape = (dm.n_cells, dm.n_qp)
        xq = solver.xq
        from ddrom.hf.loads import evaluate

        for t in store.read_times(info.name):
            v = evaluate(T, shape, x=xq[..., 0], y=xq[..., 1], z=xq[..., 2], t=float(t))
            cols.append(np.asarray(v, dtype=float).reshape(-1) - T_ref)
    return np.column_stack(cols) if cols else np.zeros((dm.n_cells * dm.n_qp, 0))


def distributed_bases(dm: Any, Phi: np.ndarray, Psi: np.ndarray, Phip: np.ndarray | None,
                      PhiT: np.ndarray | None = None) -> dict:
    """The bases in the form :func:`~ddrom.rom.model.save_model` writes (owned rows + natural map)."""
    ne, nq = dm.n_cells, dm.n_qp
    bases = {"displacement": (dm.natural_nodes, Phi.reshape(dm.n_owned, 3, -1))}
    if Phip is not None:
        bases["p"] = (dm.natural_cells, Phip.reshape(ne, nq, -1))
    bases["stress"] = (dm.natural_cells, Psi.reshape(ne, nq * 6, -1))
    if PhiT is not None and PhiT.shape[1]:
        bases["temperature"] = (dm.natural_cells, PhiT.reshape(ne, nq, -1))
    return bases


def stress_column_weights(stress_gram: np.ndarray | None, n_stress: int) -> np.ndarray:
    """``L`` (Ns, Ns) with ``L L^T = G / lambda_max(G)``: ECM columns ``eps(phi_k) : (Psi L)_j``.

    The ECM should integrate the internal-force integrands of the stress snapshots,
    ``eps(phi_k) : sigma_s`` (docs/ALGORITHMS.md). With ``sigma_s = Psi c_s`` and ``G = sum_s c_s
    c_s^T``, the snapshot integrand matrix is ``A_Psi (I_N (x) C)`` (``C = [c_s]``) and for any
    rule the integration errors satisfy ``||E (I (x) C)||_F = ||E (I (x) L)||_F``: the N x Ns
    columns ``eps(phi_k) : (Psi L)_j`` carry the snapshots' error norm exactly (whatever the
    number of snapshots). The tolerance ``||J^T omega - b|| <= tol ||b||`` then weighs each
    stress direction by how much of it the snapshots contain, instead of demanding the
    same relative accuracy for a mode carrying 1e-5 of the stress as for the first one
    (measured on cases/adaptive.toml: 88 instead of 134 points, same ROM errors).
    ``G = None`` (ROM files of schema 2): identity, the unweighted modes.
    """
    if stress_gram is None:
        return np.eye(n_stress)
    G = np.asarray(stress_gram, dtype=float)
    lam, U = np.linalg.eigh(0.5 * (G + G.T))
    lam = np.clip(lam, 0.0, None)
    if lam.max() <= 0.0:
        return np.eye(n_stress)
    return U * np.sqrt(lam / lam.max())


def _ecm_integrand(solver: HFSolver, Phi: np.ndarray, Psi3: np.ndarray, stress_gram: np.ndarray | None,
                   cache: IntegrandCache | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The modes on the local DOFs, the ECM columns ``A[g, (k, l)] = eps(phi_k) : (Psi L)_l`` at
    every local point (G, N Ns) and, with a cache, their exact integrals (else None: the ECM
    sums them). With a ``cache`` (:class:`ddrom.rom.integrand.IntegrandCache`, bases that only
    grew since its last call) only the new modes' values, strains and integrand blocks are
    computed and the integrals come from the cache; without, everything, and the ECM sums
    the columns itself (the offline stage)."""
    Ns = Psi3.shape[-1]
    L = stress_column_weights(stress_gram, Ns)
    if cache is not None:
        modes_local, n0 = cache.mode_values(solver, Phi)
        strains = cache.mode_strains(solver, modes_local, n0)
        A, b = cache.integrand(strains, Psi3, L, solver.asm.wdet.ravel(), n0, solver.comm)
        return modes_local, A, b
    modes_local = mode_values_local(solver, Phi)
    strains = all_mode_strains(solver, modes_local)                         # (G, N, 6)
    PsiL = row_matmul(Psi3.reshape(-1, Ns), L).reshape(Psi3.shape)
    return modes_local, PointProducts(strains, PsiL), None


def hyper_reduce(problem: Any, solver: HFSolver, Phi: np.ndarray, Psi: np.ndarray, Phip: np.ndarray | None, *,
                 ecm_tol: float, sigma_u: np.ndarray, sigma_p: np.ndarray | None = None,
                 ecm_initial: np.ndarray | None = None, stress_gram: np.ndarray | None = None,
                 cache: IntegrandCache | None = None, timers: Timers | None = None,
                 PhiT: np.ndarray | None = None, sigma_T: np.ndarray | None = None,
                 n_sensors: int = OfflineOptions.temperature_sensors,
                 n_monitor: int = OfflineOptions.monitor_points, ecm_batch: int = 1,
                 previous_reads: tuple[np.ndarray, np.ndarray] | None = None) -> ReducedModel:
    """Steps 3-5 from distributed bases: ECM, Gappy samples, reduced operators.

    ``Phi`` (3 n_owned, N) displacement modes (zero on prescribed DOFs), ``Psi``
    (ne nq 6, Ns) stress modes, ``Phip`` (ne nq, Np) plastic-strain modes or None.
    ``stress_gram`` (Ns, Ns): Gram matrix of the stress snapshots' coefficients in ``Psi``
    (weights of the ECM columns, :func:`stress_column_weights`; None: unweighted).
    ``ecm_initial``: global point ids to warm-start the ECM from (enrichment); ``ecm_batch``:
    candidates per pass of its greedy (:func:`ddrom.reduction.ecm.ecm`).
    ``cache``: an :class:`~ddrom.rom.integrand.IntegrandCache` kept by the caller between
    calls whose bases only grow (enrichment): the modes' local values, strains and ECM
    integrand blocks already computed are reused, and the ECM gets its integrals from it.
    ``PhiT`` (ne nq, r): temperature modes (``T - T_ref``; None: none), read at the sample
    points and at ``n_sensors`` sensor points spread over the part (farthest from the
    sample points and from each other) for the indicator's temperature component; with
    ``previous_reads`` (the previous model's sample and sensor ids: enrichment) the sensors
    are instead the previous ones plus the sample points that left (:func:`_temperature_data`).
    Shared by the offline stage and the online enrichment, which calls it with the
    enriched bases.
    """
    from ddrom.reduction.ecm import ecm
    from ddrom.reduction.gappy import qdeim_points

    timers = timers or Timers()
    dm, comm = solver.dm, solver.comm
    ne, nq = dm.n_cells, dm.n_qp
    N = Phi.shape[1]
    w_qp = solver.asm.wdet.ravel()
    Psi3 = Psi.reshape(ne * nq, 6, -1)
    gids = natural_point_ids(dm)
    # 3. ECM
    with timers("ecm_integrand"):
        modes_local, A, b = _ecm_integrand(solver, Phi, Psi3, stress_gram, cache)
    with timers("ecm"):
        ecm_res = ecm(A, w_qp, gids, comm, tol=ecm_tol, initial_points=ecm_initial, integrals=b,
                      batch=ecm_batch,
                      score_buffer=None if cache is None else cache.scratch((A.shape[0] * A.shape[1],),
                                                                            np.float32))
        del A
    if not ecm_res.converged:
        from ddrom.parallel import get_logger

        get_logger(comm).warning(f"ECM stopped ({ecm_res.stop_reason}) at relative residual "
                                 f"{ecm_res.relative_residual:.2e} > ecm_tol = {ecm_tol:g}")
    red_gids = np.asarray(ecm_res.point_gids, dtype=np.int64)
    red_w = np.asarray(ecm_res.weights, dtype=float)
    # 4b. Gappy samples of p: the ECM points plus Q-DEIM points
    gappy = None
    extra = np.zeros(0, dtype=np.int64)
    if Phip is not None:
        with timers("gappy"):
            # Oversample (n_extra = Np points beyond the ECM ones): with exactly Np samples the
            # fit interpolates and the residual indicator would be identically zero.
            samples = np.asarray(qdeim_points(Phip, gids, comm, exclude=red_gids, n_extra=Phip.shape[1]),
                                 dtype=np.int64)
            extra = np.setdiff1d(samples, red_gids)
    all_gids = np.concatenate([red_gids, np.sort(extra)])
    weights = np.concatenate([red_w, np.zeros(len(extra))])
    if Phip is not None:
        gappy = GappyData(sample_index=np.arange(len(all_gids)),
                          basis_at_samples=values_at_points(dm, Phip, all_gids),
                          sigma=np.asarray(sigma_p if sigma_p is not None else []))
    stress_at_samples = values_at_points(dm, Psi3, all_gids)
    # 5. operators
    with timers("operators"):
        E = strain_operators(solver, modes_local, all_gids)
        lifts = lifting_fields(solver)
        E_lift = np.stack([strain_operators(solver, chi[:, None], all_gids)[:, 0, :] for chi in lifts], axis=1) \
            if lifts else np.zeros((len(all_gids), 0, 6))
        xyz = point_coordinates(solver, all_gids)
        terms = reduced_load_terms(solver, problem, modes_local)
        pt_nodes, pt_shape, pt_xyz = point_interpolation(dm, all_gids)
    with timers("temperature_sensors"):
        tdata = _temperature_data(problem, solver, all_gids, xyz, PhiT, sigma_T, n_sensors, previous_reads)
    monitor = None
    if Phip is not None and n_monitor > 0:
        with timers("monitor_points"):
            monitor = monitor_points(solver, Phip, all_gids, n_monitor, modes_local, lifts)
    # one lifting column per (condition, component), in the solver's order
    dirichlet = [d.value.text for d in problem.dirichlet for _ in d.components]
    T = problem.temperature
    desc = problem.describe()
    return ReducedModel(
        E=E, E_lift=E_lift, weights=weights, xyz=xyz, point_gids=all_gids, dirichlet=dirichlet,
        loads=[LoadData(t.kind, _text(problem, t.source), t.coeff, t.xyz, t.source) for t in terms],
        temperature=T.expression.text if T.kind == "expression" else "",
        material=dict(problem.material), parameters=desc["parameters"],
        times=np.asarray(problem.times, dtype=float), sigma_u=np.asarray(sigma_u), gappy=gappy,
        stress_at_samples=stress_at_samples,
        stress_gram=None if stress_gram is None else np.asarray(stress_gram, dtype=float),
        info={"n_modes": N, "n_qp": int(nq), "n_reduced_points": int(len(red_gids)), "n_gappy_extra_points": int(len(extra)),
              "n_stress_modes": int(Psi3.shape[-1]), "n_p_modes": int(Phip.shape[1]) if Phip is not None else 0,
              "ecm_tol": ecm_tol, "ecm_iterations": ecm_res.n_iterations,
              "ecm_relative_residual": float(ecm_res.relative_residual), "ecm_converged": bool(ecm_res.converged)},
        problem=desc, point_nodes=pt_nodes, point_shape=pt_shape, point_node_xyz=pt_xyz, temperature_data=tdata,
        monitor=monitor)


def monitor_points(solver: HFSolver, Phip: np.ndarray, sample_gids: np.ndarray, n: int,
                   modes_local: np.ndarray, lifts: list[np.ndarray]) -> MonitorData | None:
    """Monitor points: a hold-out set that checks the Gappy reconstruction of p online.

    The Gappy fit ``a = argmin ||Phi_I a - p_I||`` at the sample points I has a residual
    that sees only the part of ``p_I`` outside ``range(Phi_I)``; an error of ``a`` inside
    the span (a biased fit, a field whose shape drifted within the sampled rows' range)
    leaves it unchanged. A hold-out set M, where the online march integrates the
    constitutive law along the reduced displacement exactly as at I but never fits,
    measures ``||p_M - Phi_M a||`` -- the reconstruction's own error at points it did not
    use (cross-validation), whatever its origin.

    M is the greedy D-optimal continuation of I (:func:`ddrom.reduction.gappy.qdeim_points`
    with ``exclude = I``, phase 2): each point maximizes ``log det(A + phi_g^T phi_g)`` with
    ``A = Phi_J^T Phi_J`` over the points J chosen so far, i.e. the first one has the
    largest leverage ``phi_g^T (Phi_I^T Phi_I)^{-1} phi_g`` -- the point where the
    reconstruction is most sensitive to an error of the sampled values -- and the next
    ones spread over the remaining directions. Partition-independent (ties broken by the
    smallest global id) and replicated: O(M (N + D + Np)) data, one material update per
    increment at M points online. Returns None when the mesh has no point left.
    """
    from ddrom.reduction.gappy import qdeim_points

    dm, comm = solver.dm, solver.comm
    gids = natural_point_ids(dm)
    free = int(as_mpi(comm).allreduce(int(len(gids)))) - len(sample_gids)
    n = min(int(n), free)
    if n <= 0:
        return None
    chosen = np.asarray(qdeim_points(Phip, gids, comm, exclude=np.asarray(sample_gids, dtype=np.int64),
                                     n_extra=n), dtype=np.int64)
    mon = np.sort(chosen[len(sample_gids):])
    if len(mon) == 0:
        return None
    E = strain_operators(solver, modes_local, mon)
    E_lift = np.stack([strain_operators(solver, chi[:, None], mon)[:, 0, :] for chi in lifts], axis=1) \
        if lifts else np.zeros((len(mon), 0, 6))
    nodes, shape, nxyz = point_interpolation(dm, mon)
    return MonitorData(point_gids=mon, xyz=point_coordinates(solver, mon), E=E, E_lift=E_lift,
                       p_basis=values_at_points(dm, Phip, mon).reshape(len(mon), -1), point_nodes=nodes,
                       point_shape=shape, point_node_xyz=nxyz)


def _temperature_data(problem: Any, solver: HFSolver, gids: np.ndarray, xyz: np.ndarray, PhiT: np.ndarray | None,
                      sigma_T: np.ndarray | None, n_sensors: int,
                      previous_reads: tuple[np.ndarray, np.ndarray] | None = None) -> TemperatureData:
    """Sensors spread from the sample points (farthest-point sampling) and the temperature
    modes at the points and the sensors.

    With ``previous_reads = (I_old, S_old)`` (an enrichment: the previous model's sample and
    sensor ids) the sensors are ``S_old - I`` followed by the old sample points that are no
    longer sample points (``I_old - I``, ascending), so that the points where the temperature
    component reads the field, ``I + S``, contain the previous ones: its covering radius
    (recomputed, one pass with a k-d tree and one reduction) is at most the previous one,
    i.e. a hot spot the previous model would have seen is still seen. A new farthest-point
    sampling from the new sample points (64 sequential global picks, each a latency-bound
    collective) would only move sensors that still do their job.
    """
    from ddrom.reduction.coverage import covering_radius, farthest_points

    dm = solver.dm
    own = natural_point_ids(dm)
    if previous_reads is None:
        sensors, radius = farthest_points(solver.xq.reshape(-1, 3), own, n_sensors, solver.comm, start=xyz)
    else:
        old_samples, old_sensors = (np.asarray(a, dtype=np.int64) for a in previous_reads)
        left = np.setdiff1d(old_samples, np.concatenate([gids, old_sensors]))
        # a sensor that became a sample point is read there already (no duplicate row)
        sensors = np.concatenate([old_sensors[~np.isin(old_sensors, gids)], left])
        radius = covering_radius(solver.xq.reshape(-1, 3),
                                 np.vstack([xyz, point_coordinates(solver, sensors)]), solver.comm)
    s_nodes, s_shape, s_node_xyz = point_interpolation(dm, sensors)
    s_xyz = point_coordinates(solver, sensors)
    rows = np.concatenate([gids, sensors])
    r = 0 if PhiT is None else PhiT.shape[1]
    basis = values_at_points(dm, PhiT, rows) if r else np.zeros((len(rows), 0))
    return TemperatureData(basis=basis.reshape(len(rows), r), sigma=np.asarray(sigma_T if sigma_T is not None
                                                                               else np.zeros(0), dtype=float),
                           T_ref=float(problem.temperature.T_ref), sensor_gids=sensors, sensor_xyz=s_xyz,
                           sensor_nodes=s_nodes, sensor_shape=s_shape, sensor_node_xyz=s_node_xyz,
                           covering_radius=float(radius))


def _text(problem: Any, source: str) -> str:
    """The expression text of a load term named ``source`` (``loads.traction[0].vector[1]``)."""
    from ddrom.rom.inputs import load_expressions

    return load_expressions(problem)[source].text


def _streaming_displacement_pod(solver: HFSolver, store: Any, sims: list[str] | None,
                                options: OfflineOptions, use_hf_state: bool = True):
    """Incremental POD of the displacement, one time step at a time: memory O(n N), not O(n m).

    If the HF sweep streamed the snapshots itself (``rom.stream_during_hf``, see
    :class:`DisplacementStream`) and its saved state is consistent with this request
    (same store, the same simulations in the same order with the same steps, the same
    prescribed DOFs, the same tolerances), that state is used; otherwise the snapshots
    are fed from the store (steps 0..n of each complete simulation, in store order,
    prescribed DOFs zeroed), which is what the HF sweep does too. ``info["fed_by"]`` says
    which (``"hf"`` or ``"store"``) and ``info["hf_state"]`` why the HF state was not used.
    """
    dm = solver.dm
    infos = [s for s in store.simulations() if s.complete and (sims is None or s.name in sims)]
    reason = "not requested"
    if use_hf_state:
        stream = DisplacementStream(solver, store, options.pod_tol, options.max_modes)
        ipod, _, reason = stream.load_consistent([[s.name, s.n_steps] for s in infos])
        if ipod is not None:
            res = ipod.result()
            res.info.update(fed_by="hf", hf_state=str(stream.path))
            return res
    ipod = displacement_streamer(solver.comm, options.pod_tol, options.max_modes)
    fixed = solver.fixed[: 3 * dm.n_owned]
    for info in infos:
        _feed_simulation(ipod, store, info, dm, fixed)
    res = ipod.result()
    res.info.update(fed_by="store", hf_state=reason)
    return res


def _feed_simulation(ipod: Any, store: Any, info: Any, dm: Any, fixed: np.ndarray) -> None:
    """Steps 0..n of one stored simulation, prescribed DOFs zeroed, one update per step."""
    for k in range(info.n_steps + 1):
        u = store.read_displacement(info.name, k, dm).reshape(-1).copy()
        u[fixed] = 0.0
        ipod.update(u[:, None])


def displacement_streamer(comm: Any, pod_tol: float, max_modes: int | None):
    """The incremental POD of the displacement snapshots, with the offline stage's settings.

    Euclidean inner product on the DOFs, final error ``||S - U U^T S||_F <= pod_tol
    ||S||_F`` (:class:`~ddrom.reduction.streaming.IncrementalPOD` with ``eps = pod_tol``),
    at most ``max_modes`` modes. The HF sweep and the offline stage both build it here,
    so that a state saved by one is the same computation as the other's.
    """
    from ddrom.reduction import Euclidean
    from ddrom.reduction.streaming import IncrementalPOD

    return IncrementalPOD(comm, Euclidean(), eps=float(pod_tol), max_modes=max_modes,
                          name="displacement snapshots")


def hf_stream_path(store_path: Any) -> "Path":
    """Side file of the displacement streaming POD fed by the HF sweep.

    ``<folder>/<store stem>.pod_stream.h5`` next to the store's final path (e.g.
    ``hf_training.pod_stream.h5``), also while the store is still ``.partial``.
    """
    from pathlib import Path

    p = Path(str(store_path))
    return p.with_name(p.stem + ".pod_stream.h5")


class DisplacementStream:
    """Displacement streaming POD fed by the HF sweep, persisted after every simulation.

    The sweep calls :meth:`resume` once (after opening the store), :meth:`add` with every
    converged (and stored) step of a simulation, :meth:`finish_simulation` when the
    simulation is complete in the store. The state file (:func:`hf_stream_path`) is
    written atomically (``.tmp`` then rename) by
    :func:`~ddrom.reduction.streaming.save_state` with ``meta``:

    * ``case_hash``: the store's;
    * ``simulations``: ``[name, n_steps]`` of every simulation fed, in order;
    * ``n_fixed``: global number of prescribed DOFs (zeroed before the update).

    Resume rule: the saved state is kept if its simulations are, in order, the first
    complete simulations of the store (the ones after it are fed from the store: a
    crash between the store's ``finish`` and the state's rename loses nothing); any
    other state is discarded and every complete simulation is fed from the store. So a
    resumed sweep neither counts a simulation twice nor misses one, and a simulation
    interrupted mid-way (not complete, not in the state) is fed again from step 0 when
    it is recomputed.
    """

    def __init__(self, solver: HFSolver, store: Any, pod_tol: float, max_modes: int | None):
        self.solver = solver
        self.store = store
        self.comm = solver.comm
        self.dm = solver.dm
        self.path = hf_stream_path(store.path)
        self.fixed = solver.fixed[: 3 * self.dm.n_owned]
        self.n_fixed = int(as_mpi(self.comm).allreduce(int(self.fixed.sum())))
        self.pod_tol, self.max_modes = float(pod_tol), max_modes
        self.ipod = displacement_streamer(self.comm, pod_tol, max_modes)
        self.simulations: list[list] = []

    def _meta(self) -> dict:
        return {"case_hash": self.store.case_hash, "simulations": self.simulations,
                "n_fixed": self.n_fixed}

    def load_consistent(self, simulations: list[list], prefix: bool = False):
        """The saved state if it matches: ``(ipod, saved simulations, "")``, else
        ``(None, [], reason)``. Collective.

        Matches: same case hash, prescribed DOFs and tolerances (``eps``, ``l2_err``,
        ``rtol``, ``atol``, ``max_modes``, ``reorth_every``), and its simulations equal to
        ``simulations`` (``[name, n_steps]`` in order), or a prefix of it with ``prefix``.
        """
        from ddrom.reduction import Euclidean
        from ddrom.reduction.streaming import load_state

        ipod, meta, reason = load_state(self.path, self.dm.natural_nodes, self.comm, Euclidean(),
                                        name="displacement snapshots")
        if ipod is None:
            return None, [], reason
        want = self.ipod.state()
        got = ipod.state()
        keys = ("eps", "l2_err", "rtol", "atol", "max_modes", "reorth_every")
        saved = [list(x) for x in meta.get("simulations", [])]
        simulations = [list(x) for x in simulations]
        reason = ""
        if meta.get("case_hash") != self.store.case_hash:
            reason = f"{self.path}: written for another store (case hash)"
        elif meta.get("n_fixed") != self.n_fixed:
            reason = f"{self.path}: {meta.get('n_fixed')} prescribed DOFs, now {self.n_fixed}"
        elif any(got[k] != want[k] for k in keys):
            reason = (f"{self.path}: other tolerances (" + ", ".join(
                f"{k} {got[k]} vs {want[k]}" for k in keys if got[k] != want[k]) + ")")
        elif not (saved == simulations[:len(saved)] if prefix else saved == simulations):
            reason = (f"{self.path}: other simulations ({len(saved)} saved, "
                      f"{len(simulations)} wanted)")
        return (None, [], reason) if reason else (ipod, saved, "")

    def resume(self) -> str:
        """Continue from the saved state, catching up from the store (see the class doc).

        Returns a one-line description for the log. Collective.
        """
        done = [s for s in self.store.simulations() if s.complete]
        ipod, saved, reason = self.load_consistent([[s.name, s.n_steps] for s in done],
                                                   prefix=True)
        if ipod is not None:
            self.ipod, self.simulations = ipod, saved
            how = f"resumed from {self.path.name} ({len(self.simulations)} simulation(s))"
        else:
            how = f"started over ({reason})" if done else ""
        todo = done[len(self.simulations):]
        for info in todo:
            _feed_simulation(self.ipod, self.store, info, self.dm, self.fixed)
            self.simulations.append([info.name, info.n_steps])
        if todo:
            self.save()
            how += f"; {len(todo)} complete simulation(s) fed from the store"
        return how

    def add(self, u_owned: np.ndarray) -> None:
        """One converged step: this rank's owned displacement (n_owned, 3)."""
        u = np.asarray(u_owned, dtype=np.float64).reshape(-1).copy()
        u[self.fixed] = 0.0
        self.ipod.update(u[:, None])

    def finish_simulation(self, name: str, n_steps: int) -> None:
        """The simulation is complete in the store: record it and save the state."""
        self.simulations.append([name, int(n_steps)])
        self.save()

    def save(self) -> None:
        from ddrom.reduction.streaming import save_state

        save_state(self.path, self.ipod, self.dm.natural_nodes, self._meta())

    def discard(self) -> None:
        """Remove a saved state (a sweep that starts a new store). Collective."""
        c = as_mpi(self.comm)
        if c.rank == 0:
            for p in (self.path, self.path.with_name(self.path.name + ".tmp")):
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass
        c.Barrier()


def cluster_simulations(solver: HFSolver, store: Any, n_clusters: int, dissimilarity: str = "grassmann_max",
                        sims: list[str] | None = None) -> dict:
    """Group the training simulations into ``n_clusters`` regimes (physics-informed local bases).

    One distributed Gram matrix of the displacement snapshots (t = 0 excluded, prescribed
    DOFs zeroed), made bitwise identical on every rank (a clustering is a discrete
    decision), then k-medoids (PAM) on the dissimilarity of the simulations' subspaces,
    replicated and deterministic. ``sims``: only these simulations (default: every complete one).

    Returns ``names``, ``labels``, ``medoids`` (indices into ``names``), ``params``,
    ``dissimilarity``, and for the classifier: ``C`` (the Gram matrix), ``groups`` (the
    columns of each simulation, in ``names`` order) and ``D`` (their dissimilarities).
    """
    from ddrom.reduction import Euclidean
    from ddrom.reduction.clustering import agree, cluster, dissimilarity as _dis, simulation_groups

    dm = solver.dm
    infos = [s for s in store.simulations() if s.complete and (sims is None or s.name in sims)]
    names = [s.name for s in infos]
    check_all(solver.comm, n_clusters <= len(names),
              f"rom.n_clusters = {n_clusters} exceeds the {len(names)} training simulations")
    steps = range(1, infos[0].n_steps + 1)
    U = store.read_block("displacement", dm, sims=names, steps=steps)
    U[solver.fixed[: 3 * dm.n_owned]] = 0.0
    C = agree(Euclidean().gram(U, comm=solver.comm), solver.comm)
    del U
    labels = [lab[0] for lab in store.snapshot_labels(sims=names, steps=steps)]
    D_sorted = _dis(C, dissimilarity, sims=labels)              # simulations in sorted name order
    cl = cluster(C, n_clusters, dissimilarity=dissimilarity, method="pam", sims=labels, D=D_sorted)
    order = [list(cl.sim_names).index(n) for n in names]
    sim_labels = np.asarray(cl.labels)[order]
    medoid_names = [str(cl.sim_names[i]) for i in cl.medoids]
    params = [s.params for s in infos]
    sorted_names, sorted_groups = simulation_groups(labels)
    groups = [sorted_groups[list(sorted_names).index(n)] for n in names]
    D = D_sorted[np.ix_(order, order)]
    return {"names": names, "labels": sim_labels.tolist(), "medoids": [names.index(m) for m in medoid_names],
            "params": params, "dissimilarity": dissimilarity, "C": C, "groups": groups, "D": D}
