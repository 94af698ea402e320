"""The reduced model: every replicated array the online stage needs, and the ROM file.

A ROM file is one HDF5 file, self-contained and independent of the number of ranks:

``/`` attrs
    schema ``ddrom-rom``, schema_version, ddrom_version, case_hash, provenance (JSON).
``/online``
    The reduced model proper (replicated, small): strain operators ``E`` (K, N, 6) at the
    K sample points, lifting strains ``E_lift`` (K, D, 6), weights ``w`` (K,) (zero at
    points only sampled for Gappy-POD), coordinates ``xyz`` (K, 3), natural point ids,
    the stress basis at the points ``stress_at_samples`` (K, 6, Ns), the Gram matrix of
    the stress snapshots' coefficients in that basis ``stress_gram`` (Ns, Ns; it weighs the
    ECM integrand columns, kept so that an enrichment can update it), load terms, Gappy
    data, material, expressions (texts), parameters, times.
``/bases``
    The distributed bases in natural numbering (``displacement`` (3 N_nodes, N) rows in
    natural node order; ``p`` (G, Np) rows in natural point order) for reconstruction
    of full fields, read back on any number of ranks.
``/local/<c>``
    With local bases: each cluster's ``online`` model and ``bases``; the root attribute
    ``classifier`` (JSON: training simulations, clusters, medoids, the classifier's
    metadata) and the group ``/classifier`` (its numpy arrays: training features, relevance
    multipliers, temperature feature modes, the classifier's weights) route a new input to
    one of them (:mod:`ddrom.rom.classifier`). No pickles.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

import ddrom
from ddrom.parallel import CollectiveError, as_mpi, raise_collective

SCHEMA = "ddrom-rom"
SCHEMA_VERSION = 5     # 2: stress basis at the sample points (online stress coefficients)
#                        3: stress_gram (ECM integrand columns weighted by the stress snapshots)
#                        4: the problem description (regions, expressions, temperature source,
#                           mesh signature) and the sample points' nodes and shape values
#                        5: the local-basis classifier's arrays (/classifier: features, their
#                           relevance, the fitted classifier)
#: Versions this ddrom reads (a version-2 file has no stress_gram: its ECM columns were
#: unweighted, and an enrichment of it keeps them unweighted; a version-3 file has no
#: problem description: the online stage runs its stored expressions only; before version
#: 5 the classifier is refitted from the training parameters, ddrom.rom.classifier).
READABLE_SCHEMA_VERSIONS = (2, 3, 4, 5)


@dataclass
class LoadData:
    kind: str
    expression: str
    coeff: np.ndarray            # (J, N)
    xyz: np.ndarray | None       # (J, 3) or None (spatially constant)
    source: str = ""             # the term's name, e.g. "loads.traction[0].vector[1]" ("" before schema 4)


@dataclass
class GappyData:
    sample_index: np.ndarray     # (S,) indices into the K points
    basis_at_samples: np.ndarray  # (S, Np) Phi_I
    sigma: np.ndarray            # singular values of the p snapshots


@dataclass
class TemperatureData:
    """What the temperature component of the indicator needs (replicated).

    The temperature modes (POD of the training's ``T - T_ref`` at the integration points,
    plus the fields the enrichment met) at the model's K sample points and at S sensor
    points spread over the part (farthest-point sampling, ``covering_radius`` their
    covering radius), and how to interpolate a nodal field at the sensors.
    """

    basis: np.ndarray            # (K + S, r): rows at the sample points, then at the sensors
    sigma: np.ndarray            # singular values of the temperature snapshots (r,)
    T_ref: float
    sensor_gids: np.ndarray      # (S,) natural point ids
    sensor_xyz: np.ndarray       # (S, 3)
    sensor_nodes: np.ndarray     # (S, k) natural node ids of each sensor's cell
    sensor_shape: np.ndarray     # (S, k) shape-function values at the sensor
    sensor_node_xyz: np.ndarray  # (S, k, 3)
    covering_radius: float = 0.0


@dataclass
class ReducedModel:
    E: np.ndarray                # (K, N, 6)
    E_lift: np.ndarray           # (K, D, 6)
    weights: np.ndarray          # (K,)
    xyz: np.ndarray              # (K, 3)
    point_gids: np.ndarray       # (K,) natural ids
    dirichlet: list[str]         # D expressions of t and parameters
    loads: list[LoadData]
    temperature: str
    material: dict
    parameters: dict[str, dict]  # name -> {min, max, default?}
    times: np.ndarray            # (nt,) incl. 0
    sigma_u: np.ndarray          # singular values of the displacement snapshots
    gappy: GappyData | None = None
    stress_at_samples: np.ndarray | None = None   # (K, 6, Ns) stress basis at the sample points
    stress_gram: np.ndarray | None = None         # (Ns, Ns) sum over stress snapshots of c c^T
    info: dict = field(default_factory=dict)
    #: :meth:`ddrom.hf.problem.Problem.describe` of the training case (None: schema < 4)
    problem: dict | None = None
    #: natural ids of the nodes of each sample point's cell (K, k), the shape-function values
    #: at the point (K, k) and the nodes' coordinates (K, k, 3): a nodal field (a temperature
    #: file) at the points without the mesh (None: schema < 4)
    point_nodes: np.ndarray | None = None
    point_shape: np.ndarray | None = None
    point_node_xyz: np.ndarray | None = None
    #: temperature modes at the points and sensors (None: schema < 4)
    temperature_data: TemperatureData | None = None

    @property
    def n_modes(self) -> int:
        return self.E.shape[1]

    @property
    def n_points(self) -> int:
        return int(np.count_nonzero(self.weights))


def _write_model(g, m: ReducedModel) -> None:
    for name in ("E", "E_lift", "weights", "xyz", "point_gids", "times", "sigma_u", "stress_at_samples",
                 "stress_gram", "point_nodes", "point_shape", "point_node_xyz"):
        if getattr(m, name) is not None:
            g.create_dataset(name, data=getattr(m, name))
    g.attrs["dirichlet"] = json.dumps(m.dirichlet)
    g.attrs["temperature"] = m.temperature
    g.attrs["material"] = json.dumps(m.material)
    g.attrs["parameters"] = json.dumps(m.parameters)
    g.attrs["info"] = json.dumps(m.info, default=str)
    if m.problem is not None:
        g.attrs["problem"] = json.dumps(m.problem)
    lg = g.create_group("loads")
    for i, L in enumerate(m.loads):
        t = lg.create_group(f"{i:03d}")
        t.attrs["kind"] = L.kind
        t.attrs["expression"] = L.expression
        t.attrs["source"] = L.source
        t.create_dataset("coeff", data=L.coeff)
        if L.xyz is not None:
            t.create_dataset("xyz", data=L.xyz)
    if m.gappy is not None:
        gg = g.create_group("gappy")
        for name, v in asdict(m.gappy).items():
            gg.create_dataset(name, data=v)
    if m.temperature_data is not None:
        tg = g.create_group("temperature")
        for name, v in asdict(m.temperature_data).items():
            if np.ndim(v):
                tg.create_dataset(name, data=v)
            else:
                tg.attrs[name] = float(v)


def _read_model(g) -> ReducedModel:
    loads = []
    for key in sorted(g["loads"]):
        t = g["loads"][key]
        loads.append(LoadData(str(t.attrs["kind"]), str(t.attrs["expression"]), t["coeff"][...],
                              t["xyz"][...] if "xyz" in t else None, str(t.attrs.get("source", ""))))
    gappy = None
    if "gappy" in g:
        gg = g["gappy"]
        gappy = GappyData(**{k: gg[k][...] for k in gg})
    tdata = None
    if "temperature" in g:
        tg = g["temperature"]
        tdata = TemperatureData(**{k: tg[k][...] for k in tg}, **{k: float(v) for k, v in tg.attrs.items()})
    return ReducedModel(
        E=g["E"][...], E_lift=g["E_lift"][...], weights=g["weights"][...], xyz=g["xyz"][...],
        point_gids=g["point_gids"][...], dirichlet=json.loads(g.attrs["dirichlet"]), loads=loads,
        temperature=str(g.attrs["temperature"]), material=json.loads(g.attrs["material"]),
        parameters=json.loads(g.attrs["parameters"]), times=g["times"][...], sigma_u=g["sigma_u"][...],
        gappy=gappy, stress_at_samples=g["stress_at_samples"][...],
        stress_gram=g["stress_gram"][...] if "stress_gram" in g else None, info=json.loads(g.attrs["info"]),
        problem=json.loads(g.attrs["problem"]) if "problem" in g.attrs else None, temperature_data=tdata,
        **{k: g[k][...] for k in ("point_nodes", "point_shape", "point_node_xyz") if k in g})


def _write_bases(f, group: str, bases: dict) -> None:
    bg = f.create_group(group)
    for name, (nmap, owned) in bases.items():
        nat = nmap.to_natural(owned)                      # (n_nat, bs, ncols)
        ds = bg.create_dataset(name, shape=(nmap.n_global,) + owned.shape[1:], dtype="f8")
        lo, hi = nmap.natural_range
        with ds.collective:
            ds[lo:hi] = nat


def save_model(path: str | os.PathLike, model: ReducedModel, comm: Any, *, case_hash: str = "",
               provenance: dict | None = None, bases: dict[str, tuple[Any, np.ndarray]] | None = None,
               local: list[tuple[ReducedModel, dict]] | None = None, classifier: dict | None = None,
               attrs: dict[str, str] | None = None) -> None:
    """Write the ROM file (collective): ``path.partial`` first, renamed when complete.

    ``attrs``: extra root attributes (strings, the same on every rank), e.g. the indicator
    calibration carried over to an enriched ROM.
    ``bases``: name -> (NaturalMap, owned rows (n_owned, bs, ncols)) written in natural order.
    ``local``: one (model, bases) per cluster (local bases), with the ``classifier`` data
    (training parameters, cluster labels, medoids; JSON-able, and under ``"arrays"`` a dict
    of numpy arrays written as datasets of ``/classifier``) that picks one online.
    """
    import h5py

    c = as_mpi(comm)
    tmp = str(path) + ".partial"
    msg = None
    try:
        with h5py.File(tmp, "w", driver="mpio", comm=c) as f:
            f.attrs["schema"] = SCHEMA
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["ddrom_version"] = ddrom.__version__
            f.attrs["case_hash"] = case_hash
            f.attrs["provenance"] = json.dumps(provenance or {}, default=str)
            # Small replicated data: identical on every rank; every rank makes the same
            # (collective) metadata calls and the same data is written.
            _write_model(f.create_group("online"), model)
            if bases:
                _write_bases(f, "bases", bases)
            for ic, (m_c, b_c) in enumerate(local or []):
                g = f.create_group(f"local/{ic:03d}")
                _write_model(g.create_group("online"), m_c)
                _write_bases(f, f"local/{ic:03d}/bases", b_c)
            if classifier is not None:
                arrays = classifier.get("arrays", {})
                f.attrs["classifier"] = json.dumps({k: v for k, v in classifier.items() if k != "arrays"},
                                                   default=str)
                if arrays:
                    cg = f.create_group("classifier")
                    for name, v in arrays.items():
                        cg.create_dataset(name, data=np.asarray(v))
            f.attrs["n_local"] = len(local or [])
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
            f.attrs["complete"] = True
    except Exception as exc:  # noqa: BLE001
        msg = f"writing ROM file {path}: {type(exc).__name__}: {exc}"
    raise_collective(c, msg)
    c.Barrier()
    if c.rank == 0:
        os.replace(tmp, path)
    c.Barrier()


def load_model(path: str | os.PathLike, comm: Any, local: int | None = None) -> ReducedModel:
    """Read the reduced model (every rank reads the small /online group), or local model ``local``."""
    import h5py

    c = as_mpi(comm)
    model, msg = None, None
    if c.rank == 0:
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("schema") != SCHEMA:
                    msg = f"{path}: not a ddrom ROM file"
                elif int(f.attrs.get("schema_version", -1)) not in READABLE_SCHEMA_VERSIONS:
                    msg = (f"{path}: ROM file schema version {f.attrs.get('schema_version')} "
                           f"(this ddrom reads {', '.join(map(str, READABLE_SCHEMA_VERSIONS))}; "
                           "rebuild it with `ddrom offline`)")
                elif not f.attrs.get("complete", False):
                    msg = f"{path}: incomplete ROM file"
                elif local is not None:
                    model = _read_model(f[f"local/{local:03d}/online"])
                else:
                    model = _read_model(f["online"])
        except FileNotFoundError:
            msg = f"ROM file {path} does not exist (run `ddrom offline` first)"
        except (OSError, KeyError) as exc:
            msg = f"{path}: unreadable or truncated ROM file ({exc})"
    raise_collective(c, msg)
    return c.bcast(model, root=0)


def load_classifier(path: str | os.PathLike, comm: Any) -> dict | None:
    """The local-basis classifier data of a ROM file (None when it has no local bases): the
    JSON metadata, with its arrays under ``"arrays"`` (empty before schema 5)."""
    import h5py

    c = as_mpi(comm)
    data, msg = None, None
    if c.rank == 0:
        try:
            with h5py.File(path, "r") as f:
                if int(f.attrs.get("n_local", 0)) > 0:
                    data = json.loads(f.attrs["classifier"])
                    data["arrays"] = {k: f["classifier"][k][...] for k in f["classifier"]} if "classifier" in f \
                        else {}
        except (OSError, KeyError, ValueError) as exc:
            msg = f"{path}: cannot read the local-basis classifier ({type(exc).__name__}: {exc})"
    raise_collective(c, msg)
    return c.bcast(data, root=0)


def load_bases(path: str | os.PathLike, dmesh: Any, names: list[str], group: str = "bases"
               ) -> dict[str, np.ndarray]:
    """Read distributed bases of a ROM file into the current distribution (owned rows).

    ``displacement`` -> (3 n_owned, N); integration-point bases -> (ne * nq * ncomp, Np).
    """
    import h5py

    c = as_mpi(dmesh.comm)
    out, msg = {}, None
    try:
        with h5py.File(path, "r", driver="mpio", comm=c) as f:
            if group not in f:
                raise KeyError(f"no /{group} group")
            for name in names:
                ds = f[group][name]
                nmap = dmesh.natural_nodes if name == "displacement" else dmesh.natural_cells
                if ds.shape[0] != nmap.n_global:
                    raise ValueError(f"basis {name!r} has {ds.shape[0]} rows, the mesh has {nmap.n_global} "
                                     f"{'nodes' if name == 'displacement' else 'cells'} (ROM built on another mesh?)")
                lo, hi = nmap.natural_range
                with ds.collective:
                    nat = ds[lo:hi]
                owned = nmap.from_natural(nat)
                out[name] = owned.reshape(-1, ds.shape[-1])
    except Exception as exc:  # noqa: BLE001
        msg = f"{path}: cannot read the bases: {type(exc).__name__}: {exc}"
    raise_collective(c, msg)
    return out


def store_calibration(path: str | os.PathLike, calibration: dict, comm: Any) -> None:
    """Record the indicator calibration in a ROM file (collective; rank 0 writes a small attribute)."""
    import h5py

    c = as_mpi(comm)
    msg = None
    if c.rank == 0:
        try:
            with h5py.File(path, "a") as f:
                f.attrs["indicator_calibration"] = json.dumps(calibration)
        except OSError as exc:
            msg = f"{path}: cannot record the indicator calibration ({exc})"
    raise_collective(c, msg)


def read_attrs(path: str | os.PathLike, comm: Any, names: tuple[str, ...] = ("indicator_calibration", "provenance",
                                                                          "case_hash")) -> dict[str, Any]:
    """Root attributes of a ROM file, JSON ones decoded (missing ones absent), on every rank."""
    import h5py

    c = as_mpi(comm)
    out, msg = {}, None
    if c.rank == 0:
        try:
            with h5py.File(path, "r") as f:
                for n in names:
                    if n in f.attrs:
                        v = f.attrs[n]
                        v = v.decode() if isinstance(v, bytes) else v
                        out[n] = json.loads(v) if n in ("indicator_calibration", "provenance") else v
        except OSError as exc:
            msg = f"{path}: cannot read the ROM file ({exc})"
    raise_collective(c, msg)
    return c.bcast(out, root=0)


def read_calibration(path: str | os.PathLike, comm: Any) -> dict:
    """The indicator calibration stored in a ROM file (empty if none)."""
    return read_attrs(path, comm, ("indicator_calibration",)).get("indicator_calibration", {})
