"""From a validated case to the objects the solvers use: mesh, material, loads, times.

The case file is validated in full by :func:`ddrom.workflow.case.load_case` before any heavy
work; what remains here can only fail collectively (same data on every rank).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ddrom.expressions import Expression
from ddrom.hf.loads import BodyForce, Centrifugal, Dirichlet, Loads, Pressure, Traction
from ddrom.hf.solver import SolverOptions
from ddrom.mesh.distributed import DistributedMesh
from ddrom.parallel import as_mpi, collective, raise_collective

SPACE_TIME = ("x", "y", "z", "t")
_COMPONENT = {"x": 0, "y": 1, "z": 2, 0: 0, 1: 1, 2: 2}


def build_mesh(case: Any, comm: Any) -> DistributedMesh:
    """Generate or read the mesh on rank 0 (with the case's geometric regions), then distribute."""
    from ddrom.mesh.distribute import distribute

    c = as_mpi(comm)
    cfg = case.raw["mesh"]
    mesh = None
    with collective(comm, "mesh"):
        if c.rank == 0:
            mesh = _serial_mesh(case, cfg)
    return distribute(mesh, comm, partitioner=cfg.get("partitioner", "ptscotch"))


def _serial_mesh(case: Any, cfg: Mapping[str, Any]):
    from ddrom.mesh.boundary import add_regions, check_orientation

    if cfg.get("generator"):
        from ddrom.mesh.generators import generate

        mesh = generate(cfg["generator"], **dict(cfg.get("args", {})))
    else:
        from ddrom.mesh.io import read_mesh

        mesh = read_mesh(case.folder / cfg["file"])
    if cfg.get("regions"):
        add_regions(mesh, dict(cfg["regions"]))
    check_orientation(mesh)
    return mesh


def _bind(expr: Expression, params: Mapping[str, float]):
    """A field callable of (x, y, z, t) with the parameter values bound."""
    if expr.constant is not None:
        return expr.constant
    fixed = dict(params)
    return lambda **kw: expr.evaluate({**fixed, **kw})


def _expr(case: Any, value: Any, names: set[str], what: str) -> Expression:
    """The expression compiled when the case was validated (compiled here if absent)."""
    compiled = getattr(case, "expressions", {}).get(what)
    if compiled is not None:
        return compiled
    return value if isinstance(value, Expression) else Expression(value, names, what=what)


def build_loads(case: Any, params: Mapping[str, float], dm: DistributedMesh | None = None) -> Loads:
    """The loads of one parameter point (expressions compiled once, parameters bound).

    ``dm`` is needed only for a temperature read from a file (values at this rank's
    integration points).
    """
    L = case.raw.get("loads", {})
    names = set(SPACE_TIME) | set(case.parameter_names)
    out = Loads()
    for i, d in enumerate(L.get("dirichlet", [])):
        comps = tuple(_COMPONENT[c] for c in d.get("components", ["x", "y", "z"]))
        out.dirichlet.append(Dirichlet(d["region"], comps,
                                       _bind(_expr(case, d.get("value", 0.0), names, f"loads.dirichlet[{i}].value"),
                                             params)))
    for i, p in enumerate(L.get("pressure", [])):
        out.pressure.append(Pressure(p["region"], _bind(_expr(case, p["value"], names, f"loads.pressure[{i}].value"),
                                                        params)))
    for i, tr in enumerate(L.get("traction", [])):
        vec = [_bind(_expr(case, v, names, f"loads.traction[{i}].vector[{j}]"), params)
               for j, v in enumerate(tr["vector"])]
        out.traction.append(Traction(tr["region"], vec))
    if L.get("body_force"):
        vec = [_bind(_expr(case, v, names, f"loads.body_force.vector[{j}]"), params)
               for j, v in enumerate(L["body_force"]["vector"])]
        out.body.append(BodyForce(vec))
    if L.get("centrifugal"):
        cf = L["centrifugal"]
        om = _bind(_expr(case, cf["omega"], names, "loads.centrifugal.omega"), params)
        out.centrifugal.append(Centrifugal(om, float(cf["density"]), tuple(cf.get("axis", (0, 0, 1))),
                                           tuple(cf.get("center", (0, 0, 0)))))
    temp = case.raw.get("temperature", {})
    if temp.get("file"):
        if dm is None:
            from ddrom.parallel import CollectiveError

            raise CollectiveError(f"{case.path}: temperature.file needs the distributed mesh")
        T_qp = temperature_from_file(case, dm)
        T_ref = float(temp.get("T_ref", 20.0))
        scale = _bind(_expr(case, temp.get("scale", 1.0), names, "temperature.scale"), params)
        if not callable(scale):
            s0 = float(scale)
            scale = lambda **kw: s0  # noqa: E731
        out.temperature = lambda t, **kw: T_ref + float(np.asarray(scale(t=t))) * (T_qp - T_ref)
        return out
    if "expression" in temp:
        out.temperature = _bind(_expr(case, temp["expression"], names, "temperature.expression"), params)
    return out


def temperature_from_file(case: Any, dm: DistributedMesh) -> np.ndarray:
    """A nodal temperature field of a file, at this rank's integration points (ne, nq).

    Rank 0 reads the file (meshio; the field is point data on the case mesh's nodes, in
    their order) and sends each rank its natural slice; nothing of the mesh size stays
    on rank 0. Cached on the case (read once per mesh).
    """
    cache = case.__dict__.setdefault("_temperature_cache", {})
    if id(dm) in cache:
        return cache[id(dm)]
    from ddrom.parallel import CollectiveError

    c = as_mpi(dm.comm)
    temp = case.raw["temperature"]
    path = case.folder / temp["file"]
    values, msg = None, None
    if c.rank == 0:
        try:
            import meshio

            m = meshio.read(path)
            if temp["field"] not in m.point_data:
                msg = (f"temperature.file {path}: no point field {temp['field']!r} "
                       f"(fields: {sorted(m.point_data)})")
            else:
                values = np.asarray(m.point_data[temp["field"]], dtype=float).reshape(len(m.points), -1)[:, 0]
                if len(values) != dm.n_nodes_global:
                    msg = (f"temperature.file {path}: {len(values)} nodal values, the mesh has "
                           f"{dm.n_nodes_global} nodes")
                elif not np.all(np.isfinite(values)):
                    msg = f"temperature.file {path}: the field {temp['field']!r} has NaN or Inf values"
        except Exception as exc:  # noqa: BLE001
            msg = f"temperature.file {path}: cannot read it ({type(exc).__name__}: {exc})"
    raise_collective(c, msg)
    nmap = dm.natural_nodes
    bounds = c.allgather(nmap.natural_range)
    chunk = c.scatter([values[lo:hi] for lo, hi in bounds] if c.rank == 0 else None, root=0)
    del values
    owned = nmap.from_natural(chunk)
    from petsc4py import PETSc

    g = dm.create_vector(1)
    g.array[:] = owned
    g.ghostUpdate(PETSc.InsertMode.INSERT_VALUES, PETSc.ScatterMode.FORWARD)
    with g.localForm() as lf:
        local = lf.array.copy()
    g.destroy()
    N = dm.ref.shape(dm.ref.qp)                                    # (nq, k)
    T_qp = np.einsum("qk,ek->eq", N, local[dm.cells])
    cache[id(dm)] = T_qp
    return T_qp


def build_times(case: Any) -> np.ndarray:
    """Time instants t_0 = 0 < t_1 < ... < t_n of the case (the case's step end times after 0)."""
    return np.concatenate([[0.0], case.times()])


def build_solver_options(case: Any) -> SolverOptions:
    s = case.raw.get("solver", {})
    return SolverOptions(rtol=float(s.get("newton_rtol", 1e-8)), atol=float(s.get("newton_atol", 1e-12)),
                         max_iterations=int(s.get("max_iterations", 25)),
                         line_search=bool(s.get("line_search", True)),
                         max_cutbacks=int(s.get("max_cutbacks", 6)),
                         bbar=s.get("element_technology", "bbar") == "bbar",
                         petsc_options=dict(s.get("petsc_options", {})))


def load_case_collectively(path: str, comm: Any):
    """Validate the case on every rank (same file, same verdict), one message if wrong."""
    from ddrom.workflow.case import load_case

    case = None
    with collective(comm, f"case file {path}"):
        case = load_case(path)
    return case


def sanity_check_regions(case: Any, dm: DistributedMesh) -> None:
    """Every region a load names exists on the mesh (checked before any solve)."""
    L = case.raw.get("loads", {})
    wanted = []
    for kind in ("dirichlet", "pressure", "traction"):
        for i, d in enumerate(L.get(kind, [])):
            if d["region"] not in dm.region_names():
                wanted.append(f"loads.{kind}[{i}].region: unknown region {d['region']!r}")
    msg = None
    if wanted:
        msg = f"{case.path}: " + "; ".join(wanted) + f" (the mesh has regions {dm.region_names()})"
    raise_collective(dm.comm, msg)
