"""Early refusal: estimate memory and disk before allocating, refuse what cannot fit.

A case asking for a 400^3 box or ``n_steps = 1e9`` used to grow until the machine was
out of memory (21.7 GB of 23 before anything stopped it). Commands first build an
:class:`Estimate` from the size of the request -- the mesh counted from the generator
arguments without building it (:func:`generator_mesh_size`), the number of steps,
simulations and snapshots -- and call :func:`check_resources`, which compares it
with what each node has (``MemAvailable`` of ``/proc/meminfo``, the cgroup limit if
one is set) and with the free disk of the output folder, and raises one
:class:`~ddrom.parallel.CollectiveError` giving the estimate and what is available.

The estimates are upper-bound models with coefficients measured on this code (see
:data:`HF_BYTES_PER_CELL` and friends), not promises: their purpose is to stop a
request that is off by orders of magnitude, before it takes the machine down. Set
the environment variable :data:`OVERRIDE_ENV` (``DDROM_IGNORE_RESOURCES=1``) or pass
``force=True`` to run anyway.
"""
from __future__ import annotations

import inspect
import math
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Mapping

from ddrom.parallel import CollectiveError, DdromError, as_mpi, root_only

__all__ = ["MeshSize", "Estimate", "generator_mesh_size", "store_bytes", "estimate_hf", "estimate_offline",
           "available_memory", "free_disk", "check_resources", "ResourceReport", "OVERRIDE_ENV", "MAX_TIME_STEPS", "format_bytes"]

#: Set to 1 to skip the refusal (the estimate is still computed and returned).
OVERRIDE_ENV = "DDROM_IGNORE_RESOURCES"
#: Most time steps a case may ask for (a validation limit: beyond, it is a typo such as
#: ``dt = 1e-12``; an HF sweep of a million steps per simulation is already weeks).
MAX_TIME_STEPS = 1_000_000

#: Memory of a rank before any data: Python, numpy, PETSc, SLEPc, mpi4py, h5py
#: (measured: 92 MB for ``ddrom info``, 150 MB at the start of ``ddrom hf``).
BASE_BYTES = 160 << 20
def _hf_doubles_per_cell(k: int, nq: int, n_state: int) -> int:
    """Doubles per local cell of the HF solver at its peak.

    Per integration point what lives for the whole step: shape-function gradients (3 k),
    stress and strain (12), coordinates, weights and the cell averages of B-bar (~24), the
    material state of the iterate and of the line-search trial or converged state
    (2 n_state, + n_state of slack). Element matrices and tangents are no longer stored per
    cell or point: the kernels run over blocks of 2,048 cells and 16,384 points, whose
    temporaries (~30 MB) are in :data:`BASE_BYTES`' margin. With :data:`HF_BYTES_PER_DOF`
    this bounds the measured peaks of a Chaboche Newton step (13 internal variables) on
    2 ranks: 3,273 MiB per rank at 1.07M DOFs (model 3,347), 738 MiB at 206k (model 768).
    """
    return nq * (3 * k + 36 + 3 * n_state)


#: Per DOF: PETSc's AIJ matrix (81 nonzeros of 8 + 4 bytes per row of a hexahedral mesh,
#: ~1 KB) and the GAMG hierarchy with the GMRES vectors (measured ~2.1-2.4 KB at 2 ranks).
HF_BYTES_PER_DOF = 4200
#: Rank 0 builds the serial mesh and its dual graph before distributing it: points,
#: cells, sorted face keys (np.unique), generator temporaries (measured order: 1 KB
#: per hexahedron).
RANK0_BYTES_PER_CELL = 1200
RANK0_BYTES_PER_NODE = 200
#: Offline: the snapshot blocks read by every rank and the POD's working copies
#: (measured: 4.7x the local stress block at the peak of ``ddrom offline`` on the demo).
OFFLINE_COPIES = 5.0
#: Bytes per time step kept per rank (time arrays, step lists).
BYTES_PER_STEP = 32


@dataclass(frozen=True)
class MeshSize:
    """Global size of a mesh (counted, not built)."""

    cells: int
    nodes: int
    cell_type: str = "hexahedron"

    @property
    def nodes_per_cell(self) -> int:
        return {"hexahedron": 8, "tetra": 4}[self.cell_type]

    @property
    def n_qp(self) -> int:
        return {"hexahedron": 8, "tetra": 1}[self.cell_type]

    @property
    def dofs(self) -> int:
        return 3 * self.nodes


def _args(fn: Any, args: Mapping[str, Any]) -> dict:
    bound = inspect.signature(fn).bind_partial(**dict(args))
    bound.apply_defaults()
    return dict(bound.arguments)


def _int_arg(a: dict, name: str) -> int:
    v = a[name]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or v < 1:
        raise DdromError(f"mesh argument {name} must be a positive integer, got {v!r}")
    return int(v)


def generator_mesh_size(name: str, args: Mapping[str, Any]) -> MeshSize:
    """Number of cells and nodes the generator ``name`` would build with ``args`` (nothing built).

    Exact for the built-in generators (``box``, ``plate_with_hole``; tetrahedral variants
    split each hexahedron into 6 without new nodes).
    """
    from ddrom.mesh import generators as g

    if name not in g.GENERATORS:
        raise DdromError(f"unknown mesh generator {name!r} (available: {', '.join(sorted(g.GENERATORS))})")
    try:
        a = _args(g.GENERATORS[name], args)
    except TypeError as exc:
        raise DdromError(f"mesh generator {name!r}: {exc}") from None
    ct = g._cell_type(a.get("cell_type", "hexahedron"))
    if name == "box":
        nx, ny, nz = (_int_arg(a, k) for k in ("nx", "ny", "nz"))
        hexes, nodes = nx * ny * nz, (nx + 1) * (ny + 1) * (nz + 1)
    elif name == "plate_with_hole":
        na, nr, nt = (_int_arg(a, k) for k in ("n_around", "n_radial", "n_thick"))
        w, h = float(a["width"]), float(a["height"])
        q = max(1, na // 8)
        quads, pts = nr * na, (nr + 1) * na
        ext = (max(w, h) - min(w, h)) / 2
        half = min(w, h) / 2
        if ext > 1e-12 * half:
            ne = max(1, int(round(ext / (half / q))))
            quads += 2 * ne * 2 * q
            pts += 2 * ne * (2 * q + 1)          # each block shares one edge with the square
        hexes, nodes = quads * nt, pts * (nt + 1)
    else:  # pragma: no cover - a generator added without a size formula
        raise DdromError(f"mesh generator {name!r}: no size formula for the resource estimate")
    return MeshSize(cells=hexes * (6 if ct == "tetra" else 1), nodes=nodes, cell_type=ct)


def store_bytes(mesh: MeshSize, n_steps: int, n_simulations: int, n_state: int) -> int:
    """Bytes of a snapshot store (``ddrom.io.store`` layout) before compression, the bound
    its writer reserves: data of every step of every simulation (displacement, stress, p,
    two cell averages, and ``n_state`` internal variables -- 0 unless the store keeps them,
    ``[output] store_state``) + the mesh. A compressed store is smaller (64 instead of 101 B
    per DOF and step on the demo)."""
    per_step = 8 * (3 * mesh.nodes + mesh.cells * mesh.n_qp * (6 + 1 + n_state) + 2 * mesh.cells)
    mesh_b = 8 * (3 * mesh.nodes + mesh.cells * mesh.nodes_per_cell)
    return int(mesh_b + n_simulations * (n_steps + 1) * per_step * 1.01)


@dataclass
class Estimate:
    """What a request needs.

    Attributes
    ----------
    what : the request, for messages ("ddrom hf of 64000000 hexahedra, 20 steps x 12 simulations").
    memory_per_rank : bytes at the peak on a rank (the largest, the ranks being balanced).
    memory_rank0_extra : bytes rank 0 needs on top (the whole mesh, when it reads a file
        that cannot be read in slices).
    disk : bytes written to the output folder.
    breakdown : the terms, for the message and for tests.
    """

    what: str
    memory_per_rank: int
    memory_rank0_extra: int = 0
    disk: int = 0
    breakdown: dict = field(default_factory=dict)


def estimate_hf(mesh: MeshSize, ranks: int, n_steps: int, n_simulations: int, n_state: int = 0,
                stored_state: int = 0, serial_on_rank0: bool = False) -> Estimate:
    """Memory per rank and disk of an HF sweep (``ddrom hf``): ``n_state`` internal
    variables per integration point in memory, ``stored_state`` of them in the store.

    ``serial_on_rank0``: rank 0 reads the whole mesh first (a mesh file meshio reads whole:
    VTU, Gmsh, ``.inp``); generators and XDMF/HDF5 files are built or read in slices
    (:mod:`ddrom.mesh.slices`), so rank 0 needs nothing more than the others."""
    ranks = max(1, int(ranks))
    cells_r = math.ceil(mesh.cells / ranks)
    dofs_r = math.ceil(mesh.dofs / ranks)
    cell_b = 8 * _hf_doubles_per_cell(mesh.nodes_per_cell, mesh.n_qp, n_state) * cells_r
    dof_b = HF_BYTES_PER_DOF * dofs_r
    steps_b = BYTES_PER_STEP * (int(n_steps) + 1)
    rank0 = (RANK0_BYTES_PER_CELL * mesh.cells + RANK0_BYTES_PER_NODE * mesh.nodes) if serial_on_rank0 else 0
    disk = store_bytes(mesh, n_steps, n_simulations, stored_state)
    return Estimate(what=(f"{mesh.cells} {mesh.cell_type} cells, {mesh.nodes} nodes, {n_steps} steps x "
                          f"{n_simulations} simulation(s) on {ranks} rank(s)"),
                    memory_per_rank=BASE_BYTES + cell_b + dof_b + steps_b, memory_rank0_extra=rank0, disk=disk,
                    breakdown={"base": BASE_BYTES, "cells": cell_b, "dofs": dof_b, "steps": steps_b,
                               "rank0_serial_mesh": rank0, "store": disk})


def estimate_offline(mesh: MeshSize, ranks: int, n_snapshots: int, n_state: int = 0) -> Estimate:
    """Memory per rank of the offline stage (snapshot blocks and POD copies), plus the
    HF context it builds (assembly of one solver)."""
    ranks = max(1, int(ranks))
    m = int(n_snapshots)
    cells_r = math.ceil(mesh.cells / ranks)
    nodes_r = math.ceil(mesh.nodes / ranks)
    stress = 8 * m * cells_r * mesh.n_qp * 6
    disp = 8 * m * nodes_r * 3
    p = 8 * m * cells_r * mesh.n_qp
    blocks = int(OFFLINE_COPIES * stress + 3 * disp + 2 * p)
    hf = estimate_hf(mesh, ranks, 0, 0, n_state)
    solver = hf.memory_per_rank - BASE_BYTES
    return Estimate(what=f"offline on {m} snapshots of {mesh.cells} {mesh.cell_type} cells on {ranks} rank(s)",
                    memory_per_rank=BASE_BYTES + blocks + solver, memory_rank0_extra=hf.memory_rank0_extra,
                    disk=8 * m * (3 * mesh.nodes + mesh.cells * mesh.n_qp * 7),
                    breakdown={"base": BASE_BYTES, "snapshot_blocks": blocks, "solver": solver,
                               "rank0_serial_mesh": hf.memory_rank0_extra})


# ---------------------------------------------------------------- what there is
def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _cgroup_room() -> tuple[int | None, str]:
    """Bytes the cgroup of this process may still allocate (limit - usage), if limited."""
    try:
        with open("/proc/self/cgroup") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None, ""
    for ln in lines:                          # cgroup v2: "0::/path"
        parts = ln.split(":", 2)
        if len(parts) == 3 and parts[0] == "0":
            base = "/sys/fs/cgroup" + parts[2]
            limit = _read_int(os.path.join(base, "memory.max"))
            used = _read_int(os.path.join(base, "memory.current"))
            if limit is not None and used is not None:
                return max(0, limit - used), f"cgroup limit {format_bytes(limit)}"
    for ln in lines:                          # cgroup v1: "N:memory:/path"
        parts = ln.split(":", 2)
        if len(parts) == 3 and "memory" in parts[1].split(","):
            base = "/sys/fs/cgroup/memory" + parts[2]
            limit = _read_int(os.path.join(base, "memory.limit_in_bytes"))
            used = _read_int(os.path.join(base, "memory.usage_in_bytes"))
            if limit is not None and used is not None and limit < (1 << 60):
                return max(0, limit - used), f"cgroup limit {format_bytes(limit)}"
    return None, ""


def available_memory() -> tuple[int, str]:
    """Bytes this node can still give (``MemAvailable``, capped by a cgroup limit) and the source."""
    avail, source = None, ""
    try:
        with open("/proc/meminfo") as fh:
            for ln in fh:
                if ln.startswith("MemAvailable:"):
                    avail, source = int(ln.split()[1]) * 1024, "MemAvailable"
                    break
    except OSError:
        pass
    room, csrc = _cgroup_room()
    if room is not None and (avail is None or room < avail):
        avail, source = room, csrc
    if avail is None:           # not Linux: do not refuse on memory
        return 1 << 62, "unknown"
    return int(avail), source


def _rss() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def free_disk(folder: str | os.PathLike) -> int:
    """Free bytes of the file system of ``folder`` (of its nearest existing parent)."""
    p = os.path.abspath(os.fspath(folder))
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    return int(shutil.disk_usage(p).free)


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


@dataclass
class ResourceReport:
    """The comparison :func:`check_resources` made (identical on every rank)."""

    estimate: Estimate
    node_need: int
    node_available: int
    memory_source: str
    disk_free: int | None
    ok: bool
    message: str


def check_resources(estimate: Estimate, comm: Any, folder: str | os.PathLike | None = None, *,
                    force: bool | None = None, what: str = "ddrom") -> ResourceReport:
    """Compare ``estimate`` with each node's memory and the folder's free disk (collective).

    The ranks sharing a node (``MPI_COMM_TYPE_SHARED``) add their needs; the memory
    they already hold counts as available to them. Raises a CollectiveError on every
    rank (exit code 2) naming the estimate and what is available, unless ``force``
    (default: the environment variable :data:`OVERRIDE_ENV` set to a non-empty value
    other than 0) -- then the report says what would have been refused.
    """
    from mpi4py import MPI

    c = as_mpi(comm)
    if force is None:
        force = os.environ.get(OVERRIDE_ENV, "") not in ("", "0")
    node = c.Split_type(MPI.COMM_TYPE_SHARED, key=c.rank)
    try:
        need = estimate.memory_per_rank + (estimate.memory_rank0_extra if c.rank == 0 else 0)
        node_need = node.allreduce(need)
        held = node.allreduce(_rss())
        avail, source = available_memory() if node.rank == 0 else (0, "")
        avail, source = node.bcast((avail, source), root=0)
    finally:
        node.Free()
    short = node_need - (avail + held)
    worst = c.allreduce((short, c.rank), op=MPI.MAXLOC)
    short_max, worst_rank = worst
    info = c.bcast((node_need, avail + held, source), root=worst_rank)
    disk_free = None
    if folder is not None:
        disk_free = root_only(c, lambda: free_disk(folder), f"free disk of {folder}")
    problems = []
    if short_max > 0:
        n_need, n_avail, src = info
        problems.append(f"about {format_bytes(n_need)} of memory on a node ({format_bytes(estimate.memory_per_rank)} "
                        f"per rank" + (f", rank 0 +{format_bytes(estimate.memory_rank0_extra)} for the serial mesh"
                                       if estimate.memory_rank0_extra else "")
                        + f") but {format_bytes(n_avail)} is available ({src})")
    if disk_free is not None and estimate.disk > disk_free:
        problems.append(f"about {format_bytes(estimate.disk)} of disk in {os.fspath(folder)} but "
                        f"{format_bytes(disk_free)} is free")
    message = ""
    if problems:
        message = (f"{what}: refused before allocating anything: {estimate.what} needs "
                   + " and ".join(problems) + ". Reduce the mesh, the steps or the simulations, use more "
                   f"nodes, or set {OVERRIDE_ENV}=1 (the command line: --ignore-resources) to run anyway "
                   "(the estimate is an upper bound)")
    report = ResourceReport(estimate=estimate, node_need=int(info[0]), node_available=int(info[1]),
                            memory_source=info[2], disk_free=disk_free, ok=not problems, message=message)
    if problems and not force:
        raise CollectiveError(message)
    return report
