"""From a validated case to the objects the solvers use: mesh, material, loads, times.

The case file is validated in full by :func:`ddrom.cli.case.load_case` before any heavy
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


def build_loads(case: Any, params: Mapping[str, float]) -> Loads:
    """The loads of one parameter point (expressions compiled once, parameters bound)."""
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
        from ddrom.parallel import CollectiveError

        raise CollectiveError(f"{case.path}: temperature.file is not supported by the HF solver yet; "
                              "give temperature.expression")
    if "expression" in temp:
        out.temperature = _bind(_expr(case, temp["expression"], names, "temperature.expression"), params)
    return out


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
    from ddrom.cli.case import load_case

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
