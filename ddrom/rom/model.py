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
    data, material, expressions (texts), parameters, times; ``monitor`` (schema 6): the
    monitor points' ids, coordinates, strain operators, p modes and cell nodes
    (:class:`MonitorData`).
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

Integrity: the file is written through :class:`~ddrom.io.h5atomic.ParallelH5` (``.partial``
then renamed when complete, disk space reserved first, one error on every rank naming
the file and the cause on any failure); every dataset carries a Fletcher32 checksum and
every group a SHA-256 digest of its attributes (root attribute ``checksums``). Readers
verify what they read and name the damaged dataset or group; ``ddrom verify rom.h5``
checks the whole file. The file at the final path is never modified: the calibration is
recorded in a copy renamed over it (:func:`store_calibration`). Files of schema 2-4
written before checksums are read as they are (nothing to verify).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

import ddrom
from ddrom.io.atomic import atomic_update
from ddrom.io.h5atomic import SLACK, ParallelH5, io_error_message, reserve_space
from ddrom.io.integrity import (ATTRS_DIGEST_ATTR, IntegrityError, attrs_error_message, check_attrs, disk_bytes,
                                read_error_message, stamp_attrs)
from ddrom.parallel import DdromError, as_mpi, collective, root_only

SCHEMA = "ddrom-rom"
SCHEMA_VERSION = 6     # 2: stress basis at the sample points (online stress coefficients)
#                        3: stress_gram (ECM integrand columns weighted by the stress snapshots)
#                        4: the problem description (regions, expressions, temperature source,
#                           mesh signature) and the sample points' nodes and shape values
#                        5: the local-basis classifier's arrays (/classifier: features, their
#                           relevance, the fitted classifier)
#                        6: monitor points (/online/monitor: the hold-out check of the p
#                           reconstruction, MonitorData)
#: Versions this ddrom reads (a version-2 file has no stress_gram: its ECM columns were
#: unweighted, and an enrichment of it keeps them unweighted; a version-3 file has no
#: problem description: the online stage runs its stored expressions only; before version
#: 5 the classifier is refitted from the training parameters, ddrom.rom.classifier; before
#: version 6 there are no monitor points: the indicator's ``p_monitor`` component is absent).
READABLE_SCHEMA_VERSIONS = (2, 3, 4, 5, 6)


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
class MonitorData:
    """Monitor points: a hold-out set for the p reconstruction (replicated, O(M) per step).

    M integration points disjoint from the K sample points, chosen by Q-DEIM/D-optimal
    design on the plastic-strain basis (:func:`ddrom.rom.offline.monitor_points`). The
    online march integrates the constitutive law there along the reduced displacement, as
    at the sample points, but their values never enter a fit: the Gappy reconstruction
    ``Phi_p a`` (``a`` fitted at the sample points) is checked against them
    (:meth:`ddrom.rom.online.ReducedSolver.indicators`, component ``p_monitor``).
    """

    point_gids: np.ndarray       # (M,) natural point ids
    xyz: np.ndarray              # (M, 3)
    E: np.ndarray                # (M, N, 6) strains of the modes
    E_lift: np.ndarray           # (M, D, 6) strains of the lifting fields
    p_basis: np.ndarray          # (M, Np) plastic-strain modes at the monitor points
    point_nodes: np.ndarray      # (M, k) natural node ids of each point's cell (temperature files)
    point_shape: np.ndarray      # (M, k) shape-function values at the point
    point_node_xyz: np.ndarray   # (M, k, 3)


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
    #: monitor points of the p_monitor indicator component (None: schema < 6, or no p basis)
    monitor: MonitorData | None = None

    @property
    def n_modes(self) -> int:
        return self.E.shape[1]

    @property
    def n_points(self) -> int:
        return int(np.count_nonzero(self.weights))


#: Array fields of a ReducedModel written as datasets of its group (when not None).
_ARRAYS = ("E", "E_lift", "weights", "xyz", "point_gids", "times", "sigma_u", "stress_at_samples", "stress_gram",
           "point_nodes", "point_shape", "point_node_xyz")


def _model_arrays(m: ReducedModel) -> list[np.ndarray]:
    """Every array a model writes (for the disk space reserved before writing)."""
    out = [np.asarray(getattr(m, n)) for n in _ARRAYS if getattr(m, n) is not None]
    for L in m.loads:
        out += [np.asarray(L.coeff)] + ([np.asarray(L.xyz)] if L.xyz is not None else [])
    if m.gappy is not None:
        out += [np.asarray(v) for v in asdict(m.gappy).values()]
    if m.temperature_data is not None:
        out += [np.asarray(v) for v in asdict(m.temperature_data).values() if np.ndim(v)]
    if m.monitor is not None:
        out += [np.asarray(v) for v in asdict(m.monitor).values()]
    return out


def _write_model(h5: ParallelH5, g: Any, m: ReducedModel) -> None:
    """The model into group ``g`` of a ROM file being written (collective, the same model
    on every rank): checksummed datasets, attributes sealed by a digest."""
    for name in _ARRAYS:
        if getattr(m, name) is not None:
            h5.write_array(g, name, getattr(m, name))
    attrs = {"dirichlet": json.dumps(m.dirichlet), "temperature": m.temperature, "material": json.dumps(m.material),
             "parameters": json.dumps(m.parameters), "info": json.dumps(m.info, default=str)}
    if m.problem is not None:
        attrs["problem"] = json.dumps(m.problem)
    h5.set_attrs(attrs, g)
    lg = h5.create_group(g, "loads")
    for i, L in enumerate(m.loads):
        t = h5.create_group(lg, f"{i:03d}")
        h5.set_attrs({"kind": L.kind, "expression": L.expression, "source": L.source}, t)
        h5.stamp_attrs(t)
        h5.write_array(t, "coeff", L.coeff)
        if L.xyz is not None:
            h5.write_array(t, "xyz", L.xyz)
    if m.gappy is not None:
        gg = h5.create_group(g, "gappy")
        for name, v in asdict(m.gappy).items():
            h5.write_array(gg, name, v)
    if m.temperature_data is not None:
        tg = h5.create_group(g, "temperature")
        scalars = {}
        for name, v in asdict(m.temperature_data).items():
            if np.ndim(v):
                h5.write_array(tg, name, v)
            else:
                scalars[name] = float(v)
        h5.set_attrs(scalars, tg)
        h5.stamp_attrs(tg)
    if m.monitor is not None:
        mg = h5.create_group(g, "monitor")
        for name, v in asdict(m.monitor).items():
            h5.write_array(mg, name, v)
    h5.stamp_attrs(g)


class _Reader:
    """Rank 0's serial reads of a ROM file: a failed read names the file and the dataset, and
    a group whose attributes fail their digest is named (files written before checksums are
    read as they are)."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, ds: Any) -> np.ndarray:
        try:
            return ds[...]
        except BaseException as exc:  # noqa: BLE001 - named, then raised on every rank by root_only
            raise IntegrityError(read_error_message(exc, self.path, ds.name, "ROM file")) from None

    def group(self, g: Any) -> Any:
        if check_attrs(g) is False:
            raise IntegrityError(attrs_error_message(self.path, g.name, "ROM file"))
        return g


def _read_model(g: Any, read: _Reader) -> ReducedModel:
    read.group(g)
    loads = []
    for key in sorted(g["loads"]):
        t = read.group(g["loads"][key])
        loads.append(LoadData(str(t.attrs["kind"]), str(t.attrs["expression"]), read(t["coeff"]),
                              read(t["xyz"]) if "xyz" in t else None, str(t.attrs.get("source", ""))))
    gappy = None
    if "gappy" in g:
        gg = g["gappy"]
        gappy = GappyData(**{k: read(gg[k]) for k in gg})
    tdata = None
    if "temperature" in g:
        tg = read.group(g["temperature"])
        tdata = TemperatureData(**{k: read(tg[k]) for k in tg},
                                **{k: float(v) for k, v in tg.attrs.items() if k != ATTRS_DIGEST_ATTR})
    monitor = None
    if "monitor" in g:
        mg = g["monitor"]
        monitor = MonitorData(**{k: read(mg[k]) for k in mg})
    return ReducedModel(
        E=read(g["E"]), E_lift=read(g["E_lift"]), weights=read(g["weights"]), xyz=read(g["xyz"]),
        point_gids=read(g["point_gids"]), dirichlet=json.loads(g.attrs["dirichlet"]), loads=loads,
        temperature=str(g.attrs["temperature"]), material=json.loads(g.attrs["material"]),
        parameters=json.loads(g.attrs["parameters"]), times=read(g["times"]), sigma_u=read(g["sigma_u"]),
        gappy=gappy, stress_at_samples=read(g["stress_at_samples"]),
        stress_gram=read(g["stress_gram"]) if "stress_gram" in g else None, info=json.loads(g.attrs["info"]),
        problem=json.loads(g.attrs["problem"]) if "problem" in g.attrs else None, temperature_data=tdata,
        monitor=monitor,
        **{k: read(g[k]) for k in ("point_nodes", "point_shape", "point_node_xyz") if k in g})


def _bases_bytes(bases: dict) -> int:
    return disk_bytes([(nmap.n_global,) + owned.shape[1:] for nmap, owned in bases.values()])


def _write_bases(h5: ParallelH5, parent: Any, group: str, bases: dict) -> None:
    bg = h5.create_group(parent, group)
    for name, (nmap, owned) in bases.items():
        nat = nmap.to_natural(owned)                      # (n_nat, bs, ncols)
        ds = h5.create_dataset(bg, name, (nmap.n_global,) + owned.shape[1:])
        lo, _ = nmap.natural_range
        h5.write(ds, (lo,) + (0,) * (owned.ndim - 1), nat)


def save_model(path: str | os.PathLike, model: ReducedModel, comm: Any, *, case_hash: str = "",
               provenance: dict | None = None, bases: dict[str, tuple[Any, np.ndarray]] | None = None,
               local: list[tuple[ReducedModel, dict]] | None = None, classifier: dict | None = None,
               attrs: dict[str, str] | None = None, private: bool = False) -> None:
    """Write the ROM file (collective) through :class:`~ddrom.io.h5atomic.ParallelH5`.

    Written as ``path.partial`` (``private``: ``path.partial.<pid>``, for files that two
    concurrent commands may write, e.g. an enriched ROM of ``ddrom online``) and renamed
    to ``path`` once complete and on disk: a file at ``path`` is always complete, and a
    previous ROM file there stays intact until then. The disk space is reserved first (a
    full disk is one error naming the file, the space needed and free, before anything
    is written); every dataset carries a Fletcher32 checksum and every group's attributes
    (material, expressions, calibration: JSON) a SHA-256 digest. Any failure on any rank
    removes the temporary file and raises one CollectiveError naming the file and the
    cause on every rank.

    ``attrs``: extra root attributes (strings, the same on every rank), e.g. the indicator
    calibration carried over to an enriched ROM.
    ``bases``: name -> (NaturalMap, owned rows (n_owned, bs, ncols)) written in natural order.
    ``local``: one (model, bases) per cluster (local bases), with the ``classifier`` data
    (training parameters, cluster labels, medoids; JSON-able, and under ``"arrays"`` a dict
    of numpy arrays written as datasets of ``/classifier``) that picks one online.
    """
    c = as_mpi(comm)
    root = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "ddrom_version": ddrom.__version__,
            "case_hash": case_hash, "provenance": json.dumps(provenance or {}, default=str),
            "n_local": len(local or [])}
    arrays = (classifier or {}).get("arrays") or {}
    if classifier is not None:
        root["classifier"] = json.dumps({k: v for k, v in classifier.items() if k != "arrays"}, default=str)
    root.update(attrs or {})
    models = [model] + [m for m, _ in (local or [])]
    nbytes = sum(disk_bytes([a.shape for a in _model_arrays(m)]) for m in models)
    nbytes += _bases_bytes(bases or {}) + sum(_bases_bytes(b) for _, b in (local or []))
    nbytes += disk_bytes([np.shape(v) for v in arrays.values()])
    # attributes (JSON texts) and object headers, generously
    nbytes += 2 * sum(len(str(v)) for v in root.values()) + 64 * 1024 * len(models)
    with ParallelH5.create(path, c, "ROM file", private=private) as h5:
        h5.reserve(nbytes)
        f = h5.f
        h5.set_attrs(root)
        # Small replicated data: identical on every rank; every rank makes the same
        # (collective) metadata calls and rank 0's copy is written.
        _write_model(h5, h5.create_group(f, "online"), model)
        if bases:
            _write_bases(h5, f, "bases", bases)
        for ic, (m_c, b_c) in enumerate(local or []):
            g = h5.create_group(f, f"local/{ic:03d}")
            _write_model(h5, h5.create_group(g, "online"), m_c)
            _write_bases(h5, g, "bases", b_c)
        if arrays:
            cg = h5.create_group(f, "classifier")
            for name, v in arrays.items():
                h5.write_array(cg, name, np.asarray(v))
        h5.set_attrs({"complete": True})
        h5.stamp_attrs()


def _open_checked(path: str, read: _Reader):
    """Rank 0: the ROM file open serially, its root checked (schema, version, completeness,
    attribute digest). DdromError naming the file otherwise."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise DdromError(f"ROM file {path} does not exist (run `ddrom offline` first)") from None
    except OSError as exc:
        raise DdromError(f"{path}: unreadable or truncated ROM file ({exc})") from None
    try:
        if f.attrs.get("schema") != SCHEMA:
            raise DdromError(f"{path}: not a ddrom ROM file")
        if int(f.attrs.get("schema_version", -1)) not in READABLE_SCHEMA_VERSIONS:
            raise DdromError(f"{path}: ROM file schema version {f.attrs.get('schema_version')} "
                             f"(this ddrom reads {', '.join(map(str, READABLE_SCHEMA_VERSIONS))}; "
                             "rebuild it with `ddrom offline`)")
        if not f.attrs.get("complete", False):
            raise DdromError(f"{path}: incomplete ROM file")
        read.group(f)
    except BaseException:
        f.close()
        raise
    return f


def _rom_read(path: str | os.PathLike, comm: Any, fn: Any, what: str = "") -> Any:
    """``fn(file, reader)`` on rank 0 with the ROM file open and checked; its result (or its
    error, whatever it is, naming the file) on every rank."""
    path = os.fspath(path)

    def run() -> Any:
        read = _Reader(path)
        f = _open_checked(path, read)
        try:
            return fn(f, read)
        except DdromError:
            raise
        except (OSError, KeyError, ValueError) as exc:
            raise DdromError(f"{path}: unreadable or truncated ROM file ({type(exc).__name__}: {exc})") from None
        finally:
            f.close()

    return root_only(as_mpi(comm), run, what or f"ROM file {path}")


def load_model(path: str | os.PathLike, comm: Any, local: int | None = None) -> ReducedModel:
    """Read the reduced model (rank 0 reads the small /online group, checksums verified, and
    broadcasts it), or local model ``local``. A damaged dataset or attribute is one
    CollectiveError naming the file and the dataset, on every rank."""
    def fn(f: Any, read: _Reader) -> ReducedModel:
        if local is not None:
            return _read_model(f[f"local/{local:03d}/online"], read)
        return _read_model(f["online"], read)

    return _rom_read(path, comm, fn)


def load_classifier(path: str | os.PathLike, comm: Any) -> dict | None:
    """The local-basis classifier data of a ROM file (None when it has no local bases): the
    JSON metadata, with its arrays under ``"arrays"`` (empty before schema 5)."""
    def fn(f: Any, read: _Reader) -> dict | None:
        if int(f.attrs.get("n_local", 0)) <= 0:
            return None
        data = json.loads(f.attrs["classifier"])
        data["arrays"] = {k: read(f["classifier"][k]) for k in f["classifier"]} if "classifier" in f else {}
        return data

    return _rom_read(path, comm, fn, f"ROM file {path}: local-basis classifier")


def load_bases(path: str | os.PathLike, dmesh: Any, names: list[str], group: str = "bases"
               ) -> dict[str, np.ndarray]:
    """Read distributed bases of a ROM file into the current distribution (owned rows).

    ``displacement`` -> (3 n_owned, N); integration-point bases -> (ne * nq * ncomp, Np).
    Collective reads with their checksums verified; a damaged chunk is one CollectiveError
    naming the file and the dataset on every rank.
    """
    c = as_mpi(dmesh.comm)
    path = os.fspath(path)
    out: dict[str, np.ndarray] = {}
    h5 = ParallelH5.open(path, c, "ROM file", "r")
    try:
        dsets = {}
        with collective(c, f"ROM file {path}"):
            f = h5.f
            if group not in f:
                raise DdromError(f"ROM file {path}: no /{group} group")
            for name in names:
                if name not in f[group]:
                    raise DdromError(f"ROM file {path}: no basis /{group}/{name}")
                ds = f[group][name]
                nmap = dmesh.natural_nodes if name == "displacement" else dmesh.natural_cells
                if ds.shape[0] != nmap.n_global:
                    raise DdromError(f"ROM file {path}: basis {name!r} has {ds.shape[0]} rows, the mesh has "
                                     f"{nmap.n_global} {'nodes' if name == 'displacement' else 'cells'} "
                                     "(ROM built on another mesh?)")
                dsets[name] = (ds, nmap)
        for name, (ds, nmap) in dsets.items():
            lo, hi = nmap.natural_range
            nat = h5.read(ds, (lo,) + (0,) * (ds.ndim - 1), (hi - lo,) + ds.shape[1:])
            out[name] = nmap.from_natural(nat).reshape(-1, ds.shape[-1])
    finally:
        h5.close()
    return out


def store_calibration(path: str | os.PathLike, calibration: dict, comm: Any) -> None:
    """Record the indicator calibration in a ROM file (collective).

    Never in place: rank 0 updates a copy (a copy-on-write clone where the file system
    has them) and renames it over the file once flushed to disk
    (:func:`ddrom.io.atomic.atomic_update`); a failure (a full disk, a kill) leaves the
    previous file intact and no temporary file, and is raised on every rank.
    """
    import h5py

    path = os.fspath(path)

    def update() -> None:
        try:
            with atomic_update(path) as tmp:
                # HDF5 must not meet a full disk (it cannot close the file after a failed
                # write and crashes at exit): the room for the new attribute is reserved first
                reserve_space(tmp, SLACK + 4 * len(json.dumps(calibration)))
                with h5py.File(tmp, "a") as f:
                    f.attrs["indicator_calibration"] = json.dumps(calibration)
                    stamp_attrs(f)
        except OSError as exc:
            raise DdromError(io_error_message(exc, f"ROM file {path}: cannot record the indicator calibration",
                                              path)) from None

    root_only(as_mpi(comm), update, f"ROM file {path}: cannot record the indicator calibration")


def read_attrs(path: str | os.PathLike, comm: Any, names: tuple[str, ...] = ("indicator_calibration", "provenance",
                                                                          "case_hash")) -> dict[str, Any]:
    """Root attributes of a ROM file, JSON ones decoded (missing ones absent), on every rank."""
    def fn(f: Any, read: _Reader) -> dict:
        out = {}
        for n in names:
            if n in f.attrs:
                v = f.attrs[n]
                v = v.decode() if isinstance(v, bytes) else v
                out[n] = json.loads(v) if n in ("indicator_calibration", "provenance") else v
        return out

    return _rom_read(path, comm, fn)


def read_calibration(path: str | os.PathLike, comm: Any) -> dict:
    """The indicator calibration stored in a ROM file (empty if none)."""
    return read_attrs(path, comm, ("indicator_calibration",)).get("indicator_calibration", {})
