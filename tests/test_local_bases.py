"""Local bases online: the router stored in the ROM file, the global fallback, `ddrom cluster`'s check."""
from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
from mpi4py import MPI

import ddrom  # noqa: F401
from ddrom.parallel import CollectiveError, DdromError
from helpers import all_ok, write_regimes_case


# -------------------------------------------------------------------------- features
def test_input_features_of_declared_scales_and_temperatures():
    from ddrom.rom.classifier import PERIODIC_HARMONICS, InputFeatures

    spec = {"phi": {"kind": "number", "scale": "periodic", "period": 360.0},
            "S": {"kind": "number", "scale": "log", "min": 1.0, "max": 100.0},
            "E": {"kind": "number"}, "field": {"kind": "file"}}
    f = InputFeatures(spec)
    assert [g.name for g in f.groups] == ["phi:h1", "phi:h2", "S", "E"] and PERIODIC_HARMONICS == 2
    x = f.vector({"phi": 90.0, "S": 100.0, "E": 3.0, "field": "a.xdmf"})
    np.testing.assert_allclose(x, [0.0, 1.0, -1.0, 0.0, np.log(100.0), 3.0], atol=1e-15)
    # 0 and the period are the same point
    np.testing.assert_allclose(f.vector({"phi": 0.0, "S": 1, "E": 0}), f.vector({"phi": 360.0, "S": 1, "E": 0}),
                               atol=1e-12)
    with pytest.raises(DdromError, match="scale \"log\" and must be > 0"):
        f.vector({"phi": 0.0, "S": 0.0, "E": 0})
    # temperatures: identical in every simulation -> no feature; else principal coefficients
    same = InputFeatures.fit(spec, np.ones((4, 6)), [1.0], 20.0)
    assert not same.uses_temperature and same.n_features == 6
    V = np.outer(np.arange(4.0), np.linspace(0, 1, 6)) + np.outer([0, 1, 0, 1.0], np.ones(6))
    g = InputFeatures.fit(spec, V, [1.0, 2.0], 20.0)
    assert g.uses_temperature and g.modes.shape == (6, 2) and g.groups[-1].source == "temperature"
    X = np.array([g.vector({"phi": 0, "S": 1, "E": 0}, v)[6:] for v in V])
    # the coefficients keep the distances between the training temperatures
    d = lambda A: np.linalg.norm(A[:, None] - A[None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(d(X), d(V), atol=1e-12)
    meta, arrays = g.state()
    back = InputFeatures.from_state(json.loads(json.dumps(meta)), arrays)
    p = {"phi": 1, "S": 2, "E": 3}
    np.testing.assert_array_equal(back.vector(p, V[2]), g.vector(p, V[2]))


def test_parameter_scale_keys_are_validated_and_do_not_touch_the_hf_store(tmp_path):
    from ddrom.workflow.case import Case
    from helpers import REGIMES_CASE

    import tomllib

    data = tomllib.loads(REGIMES_CASE.format(name="r", extra_rom=""))
    base = Case.from_dict(json.loads(json.dumps(data)), tmp_path)
    data["parameters"]["P"].update(scale="periodic", period=4.0)
    per = Case.from_dict(json.loads(json.dumps(data)), tmp_path)
    assert per.store_hash("training") == base.store_hash("training") and per.config_hash != base.config_hash
    data["parameters"]["P"] = {"min": 0.0, "max": 4.0, "scale": "periodic"}
    data["parameters"]["A"] = {"min": 0.0, "max": 100.0, "scale": "log", "period": 2.0}
    data["rom"]["classifier"] = "svm"
    data["rom"]["classifier_margin"] = 1.5
    with pytest.raises(DdromError) as exc:
        Case.from_dict(data, tmp_path)
    msg = str(exc.value)
    for part in ("parameters.P: scale = \"periodic\" needs a period", "parameters.A.period: a period needs scale",
                 "parameters.A.scale: scale = \"log\" needs min > 0", "rom.classifier", "rom.classifier_margin"):
        assert part in msg, msg


# ------------------------------------------------------------------------- online
def _routing(runs):
    return [r.result.routing for r in runs]


@pytest.mark.mpi
@pytest.mark.slow
def test_router_in_the_rom_file_and_the_global_fallbacks(shared_tmp):
    """Two regimes of hot-spot positions: a point at a training position runs its cluster's
    local ROM (exact), a point halfway between the clusters is unsure and runs the global one,
    and a local run whose temperature indicator exceeds its tolerance is run again globally."""
    import ddrom as api

    comm = MPI.COMM_WORLD
    path = write_regimes_case(shared_tmp, "routing", extra_rom="classifier_margin = 0.1")
    api.run_hf(path, comm, which="all")
    s = api.build_rom(path, comm)
    assert [c["simulations"] for c in s["clusters"]] == [3, 3]
    assert s["classifier"]["method"] in ("nearest_medoid", "knn", "mlp") and s["classifier"]["requested"] == "auto"
    # the hot spot's position moves the subspaces, the traction's amplitude does not
    rel = s["classifier"]["relevance"]["by_source"]
    assert rel["A"] < 0.05 and rel["P"] + rel["temperature"] > 0.95
    rom = shared_tmp / "out" / "routing" / "rom.h5"
    if comm.rank == 0:
        with h5py.File(rom, "r") as f:
            assert f.attrs["schema_version"] == 6
            meta = json.loads(f.attrs["classifier"])
            assert meta["version"] == 2 and meta["features"]["temperature"]["n_modes"] >= 1
            # JSON metadata and numeric arrays only: no pickled object anywhere
            assert {"features", "multipliers", "temperature_mean", "temperature_modes"} <= set(f["classifier"])
            assert all(f["classifier"][k].dtype.kind in "fiu" for k in f["classifier"])
    comm.Barrier()
    on = api.run_rom(path, comm)
    err = api.compare_runs(path, comm, on.runs, on.model)
    r0, r1, r2 = _routing(on.runs)
    assert r0["cluster"] == r0["predicted"] and r0["fallback"] is None and r0["margin"] > 0.5
    assert err[0]["displacement"] < 1e-7                          # a training position: in the local span
    assert r1["cluster"] is None and r1["fallback"] == "margin" and r1["margin"] < 0.1
    assert on.runs[1].result.model.n_modes == on.model.n_modes    # the global model ran
    assert r2["cluster"] == 0 and r2["fallback"] is None
    # every rank took the same decisions
    all_ok(all(x == _routing(on.runs) for x in comm.allgather(_routing(on.runs))), "routing differs between ranks")
    saved = json.loads((shared_tmp / "out" / "routing" / "online_test_001.json").read_text())
    assert saved["routing"]["fallback"] == "margin" and saved["cluster"] is None
    # a tolerance on the temperature component: the local run of point 2 exceeds it, the global one runs
    on2 = api.run_rom(path, comm, indicator_tols={"temperature": 1e-6}, write=False)
    r2b = on2.runs[2].result.routing
    assert r2b["fallback"] == "indicator" and r2b["cluster"] is None and r2b["predicted"] == 0
    assert r2b["indicator"]["component"] == "temperature" and r2b["indicator"]["value"] > 1e-6
    assert on2.runs[0].result.routing["fallback"] is None       # in its cluster's span: no fallback
    # the fallback's result is the global model's
    glob = api.run_rom(api.load_case(path).replace({"rom": {"classifier_margin": 1.0}}), comm, [{"P": 1.1, "A": 10.0}],
                       write=False).runs[0].result
    assert glob.routing["fallback"] == "margin"
    np.testing.assert_allclose(on2.runs[2].result.q, glob.q, rtol=1e-12, atol=1e-14)


@pytest.mark.mpi
@pytest.mark.slow
def test_rom_file_of_schema_4_routes_by_nearest_medoid(shared_tmp):
    """A ROM file written before the classifier kept its arrays still runs its local bases:
    nearest medoid in standardized parameter space, never unsure."""
    import ddrom as api

    comm = MPI.COMM_WORLD
    path = write_regimes_case(shared_tmp, "legacy", extra_rom='classifier = "nearest_medoid"\nclassifier_margin = 0')
    api.run_hf(path, comm)
    api.build_rom(path, comm)
    rom = shared_tmp / "out" / "legacy" / "rom.h5"
    from ddrom.io.integrity import stamp_attrs
    from ddrom.rom.model import load_classifier

    meta = load_classifier(rom, comm)
    if comm.rank == 0:
        with h5py.File(rom, "a") as f:
            f.attrs["classifier"] = json.dumps({k: meta[k] for k in ("names", "labels", "medoids", "params",
                                                                     "dissimilarity")} | {"method": "nearest_medoid"})
            del f["classifier"]
            f.attrs["schema_version"] = 4
            stamp_attrs(f)          # the root attributes' digest of the edited file
    comm.Barrier()
    from ddrom.rom.classifier import load_router

    router = load_router(rom, comm)
    assert router.threshold == 0.0 and router.method == "nearest_medoid"
    runs = api.run_rom(path, comm, [{"P": 3.1, "A": 60.0}, {"P": 2.0, "A": 10.0}], write=False).runs
    P = np.array([p["P"] for p in meta["params"]])
    A = np.array([p["A"] for p in meta["params"]])
    for run in runs:
        q = np.array([run.params["P"], run.params["A"]])
        Z = np.column_stack([P, A]) / np.array([P.std(), A.std()])
        d = np.linalg.norm(Z[meta["medoids"]] - q / np.array([P.std(), A.std()]), axis=1)
        assert run.result.cluster == np.asarray(meta["labels"])[meta["medoids"]][int(np.argmin(d))]


# ------------------------------------------------------------------ ddrom cluster
@pytest.mark.mpi
@pytest.mark.slow
def test_cluster_report_heldout_criterion_and_online_check(shared_tmp):
    """The held-out columns, a recommendation from them, and the a posteriori check of the
    recommended configuration and of the global ROM on the same folds, identical on every rank."""
    import ddrom as api
    from ddrom.workflow.cluster import cluster_report
    from ddrom.io.jsonio import dumps as strict_dumps

    comm = MPI.COMM_WORLD
    path = write_regimes_case(shared_tmp, "check")
    api.run_hf(path, comm, which="all")
    out = cluster_report(path, comm, ks=[1, 2], Ns=[2, 4, 6], folds=3, check="folds")
    assert out["heldout"]["protocol"].startswith("3 folds of the 6 training simulations")
    assert out["heldout"]["folds"] == [[0, 3], [1, 4], [2, 5]]
    rows = {(r["k"], r["N"]): r for r in out["table"]}
    for r in rows.values():
        assert np.isfinite(r["heldout_mean_local"])
        assert r["heldout_mean_global"] == rows[(1, r["N"])]["heldout_mean_local"]
        # a held-out simulation is never better represented than the training ones by their own global basis
        assert r["k"] > 1 or r["heldout_mean_local"] >= r["mean_local"] - 1e-9
    rec = out["recommendation"]
    k, N = rec["choice"]["k"], rec["choice"]["N"]
    check = {(c["k"], c["N"]): c for c in out["check"]["configs"]}
    # by default every k at the recommended N is checked, and the verdict chooses among them
    assert sorted(check) == [(1, N), (2, N)]
    v = out["verdict"]
    assert v["N"] == N and v["a_priori"] == [k, N] and v["agrees"] == (v["k"] == k)
    assert v["online_error"] == check[(v["k"], N)]["mean_displacement"]
    # the online budget: local or global bases at the N a user affords
    b = cluster_report(path, comm, ks=[1, 2], Ns=[2, 4, 6], folds=3, check=None, online_modes=2)
    assert b["recommendation"]["choice"]["N"] == 2 and "check" not in b
    for bad, msg in (({"online_modes": 3}, "N=3 is not among the basis sizes"),
                     ({"online_modes": 2, "error_target": 0.1}, "exclude each other")):
        with pytest.raises(DdromError, match=msg):
            cluster_report(path, comm, ks=[1, 2], Ns=[2, 4, 6], folds=3, check=None, **bad)
    for c in check.values():
        assert c["n_runs"] == 6 and {x["fold"] for x in c["runs"]} == {0, 1, 2}
        assert np.isfinite(c["mean_displacement"]) and c["seconds_mean"] > 0
        assert c["routed_local"] + c["fallbacks"] == (6 if c["k"] > 1 else 0)
    # the same report on every rank (the fits are made on rank 0 and broadcast)
    text, _ = strict_dumps({k_: v for k_, v in out.items() if k_ not in ("timers", "check")}, sort_keys=True,
                           default=str)
    all_ok(len(set(comm.allgather(text))) == 1, "cluster report differs between ranks")
    # test points against their HF store: ROMs from every training simulation
    t = cluster_report(path, comm, ks=[1, 2], Ns=[4], folds=3, check="test", check_configs=[(1, 4), (2, 4)])
    assert t["check"]["mode"] == "test" and [c["n_runs"] for c in t["check"]["configs"]] == [3, 3]
    assert t["check"]["configs"][1]["runs"][0]["cluster"] == 0      # a training position, its cluster
    with pytest.raises(DdromError, match="folds must be an integer >= 2"):
        cluster_report(path, comm, folds=1)


@pytest.mark.mpi
def test_check_records_a_configuration_that_cannot_be_built(shared_tmp, monkeypatch):
    """A configuration whose ROM cannot be built from the check's simulations (e.g. a small
    cluster's basis singular at the integration points) is a result of the a posteriori
    check -- ranked worst, with the reason -- not the end of the report."""
    import ddrom as api
    import ddrom.workflow.cluster as wc

    comm = MPI.COMM_WORLD
    path = write_regimes_case(shared_tmp, "unbuildable")
    api.run_hf(path, comm, which="all")
    real = wc.build_rom_file

    def build(case, comm_, solver, store, rom, opts, k, copts, **kw):
        if k == 2:
            raise CollectiveError("the sampled basis is numerically singular (stand-in)")
        return real(case, comm_, solver, store, rom, opts, k, copts, **kw)

    monkeypatch.setattr(wc, "build_rom_file", build)
    out = wc.heldout_online(path, comm, [(1, 4), (2, 4)], mode="test")
    rows = {(r["k"], r["N"]): r for r in out["configs"]}
    assert rows[(2, 4)]["mean_displacement"] == math.inf and rows[(2, 4)]["n_runs"] == 0
    assert rows[(2, 4)]["unbuildable"] == [{"fold": 0, "reason": "the sampled basis is numerically singular "
                                                                   "(stand-in)"}]
    assert rows[(1, 4)]["n_runs"] == 3 and np.isfinite(rows[(1, 4)]["mean_displacement"])
    assert "inf" in wc.format_check(out)
    # a recommendation of the configuration that could not be built is overruled by the check
    v = wc.verdict({"choice": {"k": 2, "N": 4}}, out)
    assert (v["k"], v["N"], v["agrees"]) == (1, 4, False) and "could not be built in fold 0" in v["message"]


def _row(k, N, u, modes=None, points=None, **kw):
    return {"k": k, "N": N, "mean_displacement": u, "modes_mean": N if modes is None else modes,
            "points_mean": 10.0 * N if points is None else points, **kw}


def test_verdict_follows_the_online_check():
    """The final recommendation at the a priori N: an a priori local choice stands (with the k
    the check found best) unless the check finds it worse than the global basis online; an a
    priori global choice gives way only to a local gain of GAIN_MIN; never a configuration
    that was not built in every fold or costs more online; disagreements are named."""
    from ddrom.workflow.cluster import verdict

    loc = {"choice": {"k": 3, "N": 6}}
    v = verdict(loc, {"configs": [_row(3, 6, 0.01), _row(1, 6, 0.05)]})
    assert (v["k"], v["N"], v["agrees"], v["a_priori"]) == (3, 6, True, [3, 6]) and "x5.00" in v["message"]
    assert (v["online_error"], v["online_error_global"]) == (0.01, 0.05)
    v = verdict(loc, {"configs": [_row(3, 6, 0.048), _row(1, 6, 0.05)]})      # not contradicted: stands
    assert (v["k"], v["agrees"]) == (3, True)
    v = verdict(loc, {"configs": [_row(3, 6, 0.2), _row(1, 6, 0.05)]})
    assert (v["k"], v["agrees"]) == (1, False) and "the recommended k=3 gave 0.2 against 0.05" in v["message"]
    # another k of the same N did better online: the check's k, the a priori one named
    v = verdict(loc, {"configs": [_row(3, 6, 0.04), _row(2, 6, 0.01), _row(1, 6, 0.05)]})
    assert (v["k"], v["agrees"]) == (2, False) and "the recommended k=3 gave 0.04" in v["message"]
    # a gain at a higher online cost (more reduced points than the global ROM) is not taken
    v = verdict(loc, {"configs": [_row(3, 6, 0.01, points=80.0), _row(1, 6, 0.05, points=60.0)]})
    assert (v["k"], v["agrees"]) == (1, False) and "higher online cost" in v["message"]
    glob = {"choice": {"k": 1, "N": 6}}
    v = verdict(glob, {"configs": [_row(1, 6, 0.05), _row(2, 6, 0.06)]})
    assert (v["k"], v["agrees"]) == (1, True) and "no checked local configuration beats it" in v["message"]
    v = verdict(glob, {"configs": [_row(1, 6, 0.05), _row(2, 6, 0.048)]})     # gain 1.04 < GAIN_MIN
    assert (v["k"], v["agrees"]) == (1, True) and "a gain below x1.1" in v["message"]
    v = verdict(glob, {"configs": [_row(1, 6, 0.05), _row(2, 6, 0.01), _row(4, 6, 0.02)]})
    assert (v["k"], v["agrees"]) == (2, False) and "a local gain it missed" in v["message"]
    v = verdict(glob, {"configs": [_row(1, 6, 0.05), _row(2, 6, math.inf, unbuildable=[{"fold": 1, "reason": "x"}])]})
    assert (v["k"], v["agrees"]) == (1, True)
    # without a global ROM of that N nothing is compared: the a priori choice, said so
    v = verdict(loc, {"configs": [_row(3, 6, 0.01)]})
    assert (v["k"], v["agrees"]) == (3, None) and "no global ROM" in v["message"]


def test_router_decisions_margin_and_unavailable_features():
    """The router's three outcomes without a ROM: sure (its cluster), unsure (the global basis),
    and temperature features that cannot be computed (the global basis, reason given)."""
    from types import SimpleNamespace

    from ddrom.reduction.routing import NearestMedoid
    from ddrom.rom.classifier import InputFeatures, Router

    feats = InputFeatures({"x": {"kind": "number"}})
    clf = NearestMedoid().fit(np.array([[0.0], [1.0], [4.0], [5.0]]), [0, 0, 1, 1])
    router = Router(feats, np.ones(1), clf, 0.2)
    sure = router.decide(np.array([0.2]))
    assert (sure.cluster, sure.fallback) == (0, None) and sure.margin > 0.2
    unsure = router.decide(np.array([2.1]))                  # medoids 0 and 4: margin (2.1 - 1.9) / 4
    assert unsure.cluster is None and unsure.predicted == 1 and unsure.fallback == "margin"
    assert "margin 0.05 < 0.2" in unsure.reason
    d = unsure.to_dict()
    assert json.loads(json.dumps(d)) == d and set(d) >= {"cluster", "predicted", "margin", "fallback", "reason"}

    class Failing:
        def bind(self, model):
            raise DdromError("fields/T.xdmf: time 3 outside the series' span [0, 2]")

    V = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]])
    tfeats = InputFeatures.fit({"x": {"kind": "number"}}, V, [1.0], 20.0)
    router = Router(tfeats, np.ones(tfeats.n_features), clf, 0.2)
    d = router.route(SimpleNamespace(params={"x": 0.0}, temperature=Failing()), model=None)
    assert d.cluster is None and d.fallback == "features" and "outside the series' span" in d.reason


FIELDS_CASE = """
[case]
name = "fields"

[mesh]
generator = "box"
args = { lx = 4.0, ly = 1.0, lz = 1.0, nx = 12, ny = 2, nz = 2 }

[material]
law = "elastic"
E = 200e3
nu = 0.3
alpha = 1.2e-5
T_ref = 20.0

[parameters]
field = { kind = "file" }
A = { min = 1.0, max = 100.0, default = 10.0 }

[time]
times = [1.0, 2.0]

[loads]
dirichlet = [{ region = "xmin" }]
traction = [{ region = "xmax", vector = ["A * ramp(t, 1)", 0.0, 0.0] }]

[temperature]
file = "{field}"
field = "T"
scale = "ramp(t - 1, 1)"
T_ref = 20.0

[solver]
newton_rtol = 1e-10

[rom]
pod_tol = 1e-8
n_clusters = 2

[training]
values = [
  { field = "f/a1.xdmf", A = 3.0 }, { field = "f/a2.xdmf", A = 50.0 }, { field = "f/a3.xdmf", A = 10.0 },
  { field = "f/b1.xdmf", A = 80.0 }, { field = "f/b2.xdmf", A = 2.0 }, { field = "f/b3.xdmf", A = 20.0 },
]
"""
#: hot-spot positions of the fields: two groups near each end of the bar; "copy" has b2's
#: content under another name, "middle" is halfway between the groups
SPOTS = {"a1": 0.4, "a2": 0.7, "a3": 1.0, "b1": 3.0, "b2": 3.3, "b3": 3.6, "copy": 3.3, "middle": 2.0}


@pytest.mark.mpi
@pytest.mark.slow
def test_temperature_fields_are_routed_by_their_content(shared_tmp):
    """A field read from a file is routed by what it looks like: a copy of a training field
    under another name goes to that field's cluster, surely; a field between the two groups
    is unsure (the global basis runs). The file parameter itself is no feature."""
    import contextlib

    import meshio

    import ddrom as api
    from ddrom.mesh.generators import generate

    comm = MPI.COMM_WORLD
    if comm.rank == 0:
        (shared_tmp / "f").mkdir(exist_ok=True)
        m = generate("box", lx=4.0, ly=1.0, lz=1.0, nx=12, ny=2, nz=2)
        for name, xc in SPOTS.items():
            T = 20.0 + 300.0 * np.exp(-((m.points[:, 0] - xc) / 0.4) ** 2)
            with contextlib.chdir(shared_tmp / "f"), meshio.xdmf.TimeSeriesWriter(f"{name}.xdmf") as w:
                w.write_points_cells(m.points, [(m.cell_type, m.cells)])
                w.write_data(0.0, point_data={"T": T})
        (shared_tmp / "fields.toml").write_text(FIELDS_CASE)
    comm.Barrier()
    path = str(shared_tmp / "fields.toml")
    api.run_hf(path, comm)
    s = api.build_rom(path, comm)
    assert s["classifier"]["relevance"]["by_source"]["temperature"] > 0.9
    from ddrom.rom.model import load_classifier

    meta = load_classifier(shared_tmp / "out" / "fields" / "rom.h5", comm)
    b2 = meta["labels"][meta["names"].index(next(n for n, p in zip(meta["names"], meta["params"])
                                                 if p["field"].endswith("b2.xdmf")))]
    runs = api.run_rom(path, comm, [{"field": "f/copy.xdmf", "A": 7.0}, {"field": "f/middle.xdmf", "A": 7.0}],
                       write=False).runs
    copy, middle = runs[0].result.routing, runs[1].result.routing
    assert copy["cluster"] == b2 and copy["margin"] > 0.9
    assert middle["cluster"] is None and middle["fallback"] == "margin"


def test_run_routed_falls_back_on_divergence_and_indicator(monkeypatch):
    """run_routed without a ROM file: stand-ins for the models and the reduced solver."""
    from types import SimpleNamespace

    import ddrom.rom.model as model_mod
    import ddrom.rom.online as online_mod
    from ddrom.rom.classifier import RoutingDecision
    from ddrom.workflow.rom import indicator_exceeded, run_routed

    glob, local = SimpleNamespace(name="global"), SimpleNamespace(name="local")
    behaviour = {}

    class Solver:
        def __init__(self, m, options=None, inputs=None):
            self.m = m

        def run(self, enricher=None):
            if self.m is local and behaviour.get("diverge"):
                raise online_mod.OnlineDivergence("reduced Newton diverged at step 2")
            ind = behaviour.get("indicator", 0.0) if self.m is local else 0.0
            return SimpleNamespace(seconds=0.5, model=self.m, indicators={"stress": np.array([0.0, 0.0, ind])})

    monkeypatch.setattr(online_mod, "ReducedSolver", Solver)
    monkeypatch.setattr(model_mod, "load_model", lambda path, comm, local=None: globals_local(local))

    def globals_local(c):
        assert c == 1
        return local

    class Router:
        def route(self, inputs, model):
            return RoutingDecision(1, 1, 0.7, "knn", 0.2)

    res, _ = run_routed(glob, Path("rom.h5"), Router(), None, None, None, tolerances={"stress": 0.1})
    assert res.model is local and res.cluster == 1 and res.routing["fallback"] is None
    behaviour.update(indicator=0.5)
    res, _ = run_routed(glob, Path("rom.h5"), Router(), None, None, None, tolerances={"stress": 0.1})
    assert res.model is glob and res.cluster is None and res.routing["fallback"] == "indicator"
    assert res.routing["indicator"] == {"step": 2, "component": "stress", "value": 0.5, "tolerance": 0.1,
                                        "local_seconds": 0.5}
    # no tolerance: no indicator check
    res, _ = run_routed(glob, Path("rom.h5"), Router(), None, None, None, tolerances={})
    assert res.model is local
    behaviour.update(diverge=True)
    res, _ = run_routed(glob, Path("rom.h5"), Router(), None, None, None)
    assert res.model is glob and res.routing["fallback"] == "divergence" and "diverged at step 2" in \
        res.routing["reason"]
    # the global model's divergence is the run's error
    with pytest.raises(online_mod.OnlineDivergence):
        run_routed(local, Path("rom.h5"), None, None, None, None)
    assert indicator_exceeded(SimpleNamespace(indicators={"p": np.array([np.nan, 2.0]), "stress": np.array([3.0, 0])}),
                              {"p": 1.0, "stress": 1.0}) == {"step": 0, "component": "stress", "value": 3.0,
                                                             "tolerance": 1.0}
