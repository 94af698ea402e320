"""From a validated case to the objects the solvers use: mesh, material, loads, times.

The case file is validated in full by :func:`ddrom.workflow.case.load_case` before any heavy
work; what remains here can only fail collectively (same data on every rank).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ddrom.hf.loads import Loads
from ddrom.mesh.distributed import DistributedMesh
from ddrom.parallel import as_mpi, collective, raise_collective

if TYPE_CHECKING:
    from ddrom.hf.problem import Problem

SPACE_TIME = ("x", "y", "z", "t")
_COMPONENT = {"x": 0, "y": 1, "z": 2, 0: 0, 1: 1, 2: 2}


def build_mesh(case: Any, comm: Any) -> DistributedMesh:
    """Generate or read the mesh in slices (with the case's geometric regions) and distribute it.

    No rank holds the whole mesh: generators build each rank's slice, XDMF/HDF5 files are
    read in hyperslabs, other formats are read by rank 0 and sent in slices
    (:mod:`ddrom.mesh.slices`, :mod:`ddrom.mesh.xdmf`).
    """
    from ddrom.mesh.slices import distribute_slices

    c = as_mpi(comm)
    cfg = case.raw["mesh"]
    partitioner = cfg.get("partitioner", "ptscotch")
    regions = dict(cfg.get("regions") or {})
    if cfg.get("generator"):
        from ddrom.mesh.generators import generate_slice

        ms = None
        with collective(comm, "mesh"):
            ms = generate_slice(cfg["generator"], c.rank, c.size, **dict(cfg.get("args", {})))
        return distribute_slices(ms, comm, partitioner=partitioner, regions=regions)
    from ddrom.mesh.xdmf import read_distributed

    return read_distributed(case.folder / cfg["file"], comm, partitioner=partitioner, regions=regions)


def build_mesh_serial(case: Any, comm: Any) -> DistributedMesh:
    """The former path: the whole mesh on rank 0, then :func:`ddrom.mesh.scatter.distribute`
    (kept to compare with :func:`build_mesh`)."""
    from ddrom.mesh.scatter import distribute

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


def build_problem(case: Any) -> "Problem":
    """The case's :class:`~ddrom.hf.problem.Problem` (built once per case and kept on it)."""
    cached = case.__dict__.get("_problem")
    if cached is not None:
        return cached
    from ddrom.hf.problem import (DirichletSpec, LoadSpec, ParameterSpec, Problem, TemperatureSpec)

    raw = case.raw
    L = raw.get("loads", {})
    params = {n: ParameterSpec.from_dict(n, p) for n, p in raw.get("parameters", {}).items()}
    dirichlet = [DirichletSpec(d["region"], tuple(_COMPONENT[c] for c in d.get("components", ["x", "y", "z"])),
                               case.expression(f"loads.dirichlet[{i}].value"))
                 for i, d in enumerate(L.get("dirichlet", []))]
    loads = []
    for i, p in enumerate(L.get("pressure", [])):
        loads.append(LoadSpec("pressure", (case.expression(f"loads.pressure[{i}].value"),), p["region"],
                              key=f"loads.pressure[{i}]"))
    for i, tr in enumerate(L.get("traction", [])):
        loads.append(LoadSpec("traction", tuple(case.expression(f"loads.traction[{i}].vector[{j}]")
                                                for j in range(3)), tr["region"], key=f"loads.traction[{i}]"))
    for i, nf in enumerate(L.get("nodal", [])):
        loads.append(LoadSpec("nodal", tuple(case.expression(f"loads.nodal[{i}].force_per_node[{j}]")
                                             for j in range(3)), nf["region"], key=f"loads.nodal[{i}]"))
    if L.get("body_force"):
        loads.append(LoadSpec("body", tuple(case.expression(f"loads.body_force.vector[{j}]") for j in range(3)),
                              key="loads.body_force"))
    if L.get("centrifugal"):
        cf = L["centrifugal"]
        loads.append(LoadSpec("centrifugal", (case.expression("loads.centrifugal.omega"),), None,
                              float(cf["density"]), tuple(float(a) for a in cf.get("axis", (0, 0, 1))),
                              tuple(float(a) for a in cf.get("center", (0, 0, 0))), key="loads.centrifugal"))
    temp = raw.get("temperature", {})
    file_params = tuple(n for n, p in params.items() if p.kind == "file")
    if temp.get("file"):
        kind = "series" if temp.get("series") else "field"
        T = TemperatureSpec(kind, float(temp.get("T_ref", 20.0)), source=temp["file"], field=temp["field"],
                            scale=case.expressions.get("temperature.scale") if kind == "field" else None,
                            times=tuple(temp["times"]) if temp.get("times") else None,
                            folder=str(case.folder), file_parameters=file_params)
    else:
        T = TemperatureSpec("expression", float(temp.get("T_ref", 20.0)),
                            expression=case.expression("temperature.expression"),
                            folder=str(case.folder), file_parameters=file_params)
    problem = Problem(parameters=params, dirichlet=dirichlet, loads=loads, temperature=T,
                      material=dict(raw["material"]), times=build_times(case),
                      element_technology=raw.get("solver", {}).get("element_technology", "bbar"),
                      mesh_signature=mesh_signature(case))
    case.__dict__["_problem"] = problem
    return problem


def mesh_signature(case: Any) -> dict:
    """What identifies the case's mesh: the generator and its arguments, or the mesh file's name,
    size and SHA-256; and the geometric regions added to it."""
    from ddrom.hf.problem import file_sha256

    cfg = case.raw["mesh"]
    sig: dict[str, Any] = {"regions": dict(cfg.get("regions", {}))}
    if cfg.get("generator"):
        sig.update(generator=cfg["generator"], args=dict(cfg.get("args", {})))
    else:
        f = case.mesh_file
        sig.update(file=f.name, size=f.stat().st_size, sha256=file_sha256(f))
    return sig


def build_loads(case: Any, params: Mapping[str, Any], dm: DistributedMesh | None = None) -> Loads:
    """The loads of one parameter point (``dm`` is needed for a temperature read from files)."""
    return build_problem(case).bind(params, dm)


def build_times(case: Any) -> np.ndarray:
    """Time instants t_0 = 0 < t_1 < ... < t_n of the case (the case's step end times after 0)."""
    return np.concatenate([[0.0], case.times()])


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
    for kind in ("dirichlet", "pressure", "traction", "nodal"):
        for i, d in enumerate(L.get(kind, [])):
            if d["region"] not in dm.region_names():
                wanted.append(f"loads.{kind}[{i}].region: unknown region {d['region']!r}")
    msg = None
    if wanted:
        msg = f"{case.path}: " + "; ".join(wanted) + f" (the mesh has regions {dm.region_names()})"
    raise_collective(dm.comm, msg)
