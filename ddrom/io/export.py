"""Export of snapshot stores (HF runs, imported sets, ROM reconstructions) as VTU + PVD.

For post-processing with tools that read VTK files (ParaView, PyVista, meshio). The
XDMF sidecar that every store already has (:mod:`ddrom.io.xdmf`) points into the HDF5
file written collectively; this exporter writes *copies*: per simulation one folder with
one ``.vtu`` per time step (through meshio) and a ``<sim>.pvd`` collection with the times.

Content of each VTU (natural node and cell order, the case mesh's volume cells):

* point data ``displacement`` (N, 3);
* cell data ``p`` (cumulated plastic strain), ``stress`` (6 components in VTK's symmetric
  tensor order ``xx yy zz xy yz xz``, i.e. the Mandel shear terms divided by sqrt 2) and
  ``von_mises``: cell averages ``sum_q w_q det J_q f_q / sum_q w_q det J_q`` of the
  integration-point values.

Parallel model: each step's fields are moved to the natural layout (``NaturalMap``), and
rank 0 gathers the natural slices (one ``gather`` per field: they arrive in rank order,
which is the natural order) and writes the file. Rank 0 therefore holds one step's
whole-mesh arrays at a time: acceptable for output files (the collective-HDF5 path is the
store itself with its XDMF sidecar). Files are written under a temporary name and
renamed, so a reader never sees a half-written VTU.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ddrom.io.atomic import atomic_path, os_error_message, write_text_atomic
from ddrom.parallel import as_mpi, describe_exception, raise_collective

_SQ2 = np.sqrt(2.0)
_MESHIO_TYPE = {"hexahedron": "hexahedron", "tetra": "tetra"}


def _gather_root(comm: Any, nmap: Any, owned: np.ndarray) -> np.ndarray | None:
    """Owned items -> the whole array in natural order on rank 0 (None elsewhere)."""
    c = as_mpi(comm)
    parts = c.gather(nmap.to_natural(owned), root=0)
    return np.concatenate(parts) if c.rank == 0 else None


def natural_mesh_on_root(dm: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(points (N, 3), cells (M, k) natural node ids) on rank 0, None elsewhere (collective)."""
    pts = _gather_root(dm.comm, dm.natural_nodes, dm.coords[: dm.n_owned])
    # natural node ids through the float scatter: exact below 2**53
    cells = _gather_root(dm.comm, dm.natural_cells, dm.node_natural[dm.cells].astype(np.float64))
    return None if pts is None else (pts, np.rint(cells).astype(np.int64))


def _io_message(exc: BaseException, what: str) -> str:
    """``what: <cause>``: an OSError by its cause ("No space left on device"), anything else by kind."""
    if isinstance(exc, OSError):
        return f"{what}: {os_error_message(exc)}"
    return describe_exception(exc, what)


def _von_mises(s: np.ndarray) -> np.ndarray:
    """Von Mises stress of Mandel vectors (..., 6): sqrt(3/2 dev(s) : dev(s))."""
    tr = s[..., :3].sum(axis=-1, keepdims=True) / 3.0
    dev = np.concatenate([s[..., :3] - tr, s[..., 3:]], axis=-1)
    return np.sqrt(1.5 * np.einsum("...i,...i->...", dev, dev))


def write_vtu_series(comm: Any, dm: Any, folder: str | os.PathLike, name: str,
                     steps: Iterable[tuple[float, np.ndarray, np.ndarray, np.ndarray]]) -> str:
    """Write one simulation as VTU per step + ``<folder>/<name>.pvd`` (collective).

    Parameters
    ----------
    steps : iterable of ``(t, u_owned (n_owned, 3), stress (ne, nq, 6) Mandel, p (ne, nq))``
        on this rank's owned nodes and local cells.

    Returns the path of the .pvd (on every rank).
    """
    import meshio

    c = as_mpi(comm)
    folder = Path(folder)
    sub = folder / name
    msg = None
    if c.rank == 0:
        try:
            sub.mkdir(parents=True, exist_ok=True)
        except BaseException as exc:  # noqa: BLE001 - reported on every rank
            msg = _io_message(exc, f"VTU export: cannot create {sub}")
    raise_collective(c, msg)
    mesh = natural_mesh_on_root(dm)
    w = dm.weights
    vol = w.sum(axis=1)
    entries = []
    for k, (t, u, sig, p) in enumerate(steps):
        s_cell = np.einsum("eq,eqi->ei", w, sig) / vol[:, None]
        p_cell = (w * p).sum(axis=1) / vol
        vm_cell = (w * _von_mises(sig)).sum(axis=1) / vol
        U = _gather_root(c, dm.natural_nodes, u)
        S = _gather_root(c, dm.natural_cells, s_cell)
        P = _gather_root(c, dm.natural_cells, p_cell)
        VM = _gather_root(c, dm.natural_cells, vm_cell)
        fname = f"{name}_{k:04d}.vtu"
        if c.rank == 0:
            try:
                pts, cells = mesh
                m = meshio.Mesh(pts, [(_MESHIO_TYPE[dm.cell_type], cells)], point_data={"displacement": U},
                                cell_data={"p": [P], "stress": [S / np.array([1, 1, 1, _SQ2, _SQ2, _SQ2])],
                                           "von_mises": [VM]})
                with atomic_path(sub / fname) as tmp:
                    meshio.write(tmp, m, file_format="vtu")
            except BaseException as exc:  # noqa: BLE001 - reported on every rank
                msg = _io_message(exc, f"VTU export: cannot write {sub / fname}")
        raise_collective(c, msg)
        entries.append((float(t), f"{name}/{fname}"))
    pvd = folder / f"{name}.pvd"
    if c.rank == 0:
        try:
            text = ('<?xml version="1.0"?>\n<VTKFile type="Collection" version="0.1">\n<Collection>\n'
                    + "".join(f'  <DataSet timestep="{t!r}" part="0" file="{f}"/>\n' for t, f in entries)
                    + "</Collection>\n</VTKFile>\n")
            write_text_atomic(pvd, text)
        except BaseException as exc:  # noqa: BLE001 - reported on every rank
            msg = _io_message(exc, f"VTU export: cannot write {pvd}")
    raise_collective(c, msg)
    return str(pvd)


def export_store_vtu(path: str | os.PathLike, comm: Any, dm: Any, folder: str | os.PathLike,
                     sims: Sequence[str] | None = None) -> list[str]:
    """Every (or the given) complete simulation of a finalized store -> VTU + PVD (collective).

    Returns the .pvd paths, one per simulation.
    """
    from ddrom.io.store import SnapshotStore

    st = SnapshotStore.open(path, comm, mode="r", dmesh=dm)
    try:
        names = [s.name for s in st.simulations() if s.complete] if sims is None else list(sims)
        out = []
        for s in names:
            times = st.read_times(s)
            steps = ((t, st.read_displacement(s, k, dm), st.read_qp(s, "stress", k, dm), st.read_qp(s, "p", k, dm))
                     for k, t in enumerate(times))
            out.append(write_vtu_series(comm, dm, folder, s, steps))
    finally:
        st.close()
    return out
