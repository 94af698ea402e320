"""XDMF 3 sidecars: let ParaView open HDF5 files of ddrom (mesh and fields over time).

The XDMF file is small text written by ONE rank after the HDF5 file is closed; it only
points into the HDF5 file. Time-major datasets (nt, n, ...) are referenced one step at a
time through ``HyperSlab`` DataItems, so nothing is copied.

:func:`write_xdmf_fields` is the generic writer (any HDF5 file holding a mesh and
time-major fields, e.g. later ROM outputs); :func:`write_store_xdmf` writes the sidecar of
a snapshot store; :func:`read_data_item` evaluates a DataItem (HDF, XML, HyperSlab) back
into an array, for tests and tools (meshio's XDMF reader does not know HyperSlab).
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ddrom.io.atomic import write_text_atomic
from ddrom.parallel import DdromError

#: ddrom cell type -> (XDMF TopologyType, nodes per cell); node orders agree (VTK order).
TOPOLOGY = {"hexahedron": ("Hexahedron", 8), "tetra": ("Tetrahedron", 4)}


@dataclass
class XdmfField:
    """One attribute: ``dataset`` is an HDF5 path of shape (nt, n, *comp) (``time_major``)
    or (n, *comp) (the same values at every step). ``comp`` is () -> Scalar, (3,) -> Vector."""

    name: str
    dataset: str
    center: str = "Node"          # "Node" or "Cell"
    time_major: bool = True


@dataclass
class XdmfSeries:
    """A temporal collection: one grid per time, sharing the mesh. ``steps`` selects the
    rows of the time-major datasets (default: 0..len(times)-1)."""

    name: str
    times: Sequence[float]
    fields: Sequence[XdmfField]
    steps: Sequence[int] | None = None


def _dtype_attrs(dtype: np.dtype) -> dict:
    kind = "Float" if dtype.kind == "f" else ("UInt" if dtype.kind == "u" else "Int")
    return {"NumberType": kind, "Precision": str(dtype.itemsize)}


def _hdf_item(parent, h5name: str, dset: str, shape: tuple[int, ...], dtype: np.dtype):
    el = ET.SubElement(parent, "DataItem", Dimensions=" ".join(map(str, shape)), Format="HDF",
                       **_dtype_attrs(dtype))
    el.text = f"{h5name}:{dset}"
    return el


def _slab_item(parent, h5name: str, dset: str, shape: tuple[int, ...], dtype: np.dtype, step: int):
    """HyperSlab selecting row ``step`` of a time-major dataset: start/stride/count rows."""
    count = (1,) + tuple(shape[1:])
    el = ET.SubElement(parent, "DataItem", ItemType="HyperSlab", Type="HyperSlab",
                       Dimensions=" ".join(map(str, count)))
    sel = ET.SubElement(el, "DataItem", Dimensions=f"3 {len(shape)}", Format="XML",
                        NumberType="Int", Precision="8")
    start = (step,) + (0,) * (len(shape) - 1)
    stride = (1,) * len(shape)
    sel.text = "  ".join(" ".join(map(str, v)) for v in (start, stride, count))
    _hdf_item(el, h5name, dset, shape, dtype)
    return el


def write_xdmf_fields(path_h5: str | os.PathLike, path_xdmf: str | os.PathLike, *, cell_type: str,
                      series: Sequence[XdmfSeries], points: str = "/mesh/points",
                      cells: str = "/mesh/cells") -> None:
    """Write an XDMF 3 file describing ``series`` of fields stored in ``path_h5``.

    Call on ONE rank, after every writer has closed ``path_h5`` (it is opened read-only
    to learn the dataset shapes). The HDF5 file is referenced by its name relative to
    the XDMF file's folder, so the pair can be moved together.
    """
    import h5py

    if cell_type not in TOPOLOGY:
        raise DdromError(f"XDMF: unsupported cell type {cell_type!r}")
    topo, k = TOPOLOGY[cell_type]
    path_h5, path_xdmf = os.fspath(path_h5), os.fspath(path_xdmf)
    h5name = os.path.relpath(os.path.abspath(path_h5), os.path.dirname(os.path.abspath(path_xdmf)))
    with h5py.File(path_h5, "r") as f:
        def info(dset: str):
            if dset not in f:
                raise DdromError(f"XDMF: dataset {dset} missing in {path_h5}")
            return f[dset].shape, f[dset].dtype

        pshape, pdtype = info(points)
        cshape, cdtype = info(cells)
        if len(pshape) != 2 or pshape[1] != 3 or len(cshape) != 2 or cshape[1] != k:
            raise DdromError(f"XDMF: {points} {pshape} / {cells} {cshape} are not a {cell_type} mesh")
        n_of = {"Node": pshape[0], "Cell": cshape[0]}
        root = ET.Element("Xdmf", Version="3.0")
        domain = ET.SubElement(root, "Domain")
        for s in series:
            steps = list(range(len(s.times))) if s.steps is None else [int(j) for j in s.steps]
            if len(steps) != len(s.times):
                raise DdromError(f"XDMF series {s.name!r}: {len(steps)} steps for {len(s.times)} times")
            fields = []
            for fl in s.fields:
                shape, dtype = info(fl.dataset)
                if fl.center not in n_of:
                    raise DdromError(f"XDMF field {fl.name!r}: center must be 'Node' or 'Cell'")
                item = shape[1:] if fl.time_major else shape
                if not item or item[0] != n_of[fl.center] or len(item) > 2 or \
                        (len(item) == 2 and item[1] != 3):
                    raise DdromError(f"XDMF field {fl.name!r}: {fl.dataset} has shape {shape}, "
                                     f"not {'(nt, ' if fl.time_major else '('}{n_of[fl.center]}[, 3])")
                if fl.time_major and max(steps, default=-1) >= shape[0]:
                    raise DdromError(f"XDMF field {fl.name!r}: step {max(steps)} beyond {shape[0]} rows")
                fields.append((fl, shape, dtype, "Vector" if len(item) == 2 else "Scalar"))
            coll = ET.SubElement(domain, "Grid", Name=s.name, GridType="Collection",
                                 CollectionType="Temporal")
            for t, j in zip(s.times, steps):
                grid = ET.SubElement(coll, "Grid", Name=f"{s.name}_{j}", GridType="Uniform")
                ET.SubElement(grid, "Time", Value=repr(float(t)))
                top = ET.SubElement(grid, "Topology", TopologyType=topo, NumberOfElements=str(cshape[0]))
                _hdf_item(top, h5name, cells, cshape, cdtype)
                geo = ET.SubElement(grid, "Geometry", GeometryType="XYZ")
                _hdf_item(geo, h5name, points, pshape, pdtype)
                for fl, shape, dtype, atype in fields:
                    att = ET.SubElement(grid, "Attribute", Name=fl.name, AttributeType=atype,
                                        Center=fl.center)
                    if fl.time_major:
                        _slab_item(att, h5name, fl.dataset, shape, dtype, j)
                    else:
                        _hdf_item(att, h5name, fl.dataset, shape, dtype)
    ET.indent(root, space=" ")
    # temporary file renamed into place, removed on any failure (a full disk included)
    write_text_atomic(path_xdmf, '<?xml version="1.0" ?>\n<!DOCTYPE Xdmf SYSTEM "Xdmf.dtd" []>\n'
                      + ET.tostring(root, encoding="unicode") + "\n")


def store_xdmf_path(path_h5: str | os.PathLike) -> str:
    """The sidecar of ``x.h5`` is ``x.xdmf``."""
    return os.path.splitext(os.fspath(path_h5))[0] + ".xdmf"


def write_store_xdmf(path_h5: str | os.PathLike, path_xdmf: str | os.PathLike | None = None) -> str:
    """Write the sidecar of a snapshot store (ONE rank, store closed); returns its path.

    One temporal collection per simulation (steps 0..last written step), with the
    displacement at the nodes and the cell averages ``p_cell`` and ``von_mises_cell``.
    """
    import h5py

    path_xdmf = store_xdmf_path(path_h5) if path_xdmf is None else os.fspath(path_xdmf)
    series = []
    with h5py.File(path_h5, "r") as f:
        cell_type = f["mesh"].attrs["cell_type"]
        sims = sorted(f["simulations"].items(), key=lambda kv: int(kv[1].attrs["index"]))
        for name, g in sims:
            n = int(g.attrs["n_steps"]) + 1 if bool(g.attrs["complete"]) else int(g.attrs["last_step"]) + 1
            if n <= 0:
                continue
            base = f"/simulations/{name}"
            series.append(XdmfSeries(name, g["time"][:n].tolist(), [
                XdmfField("displacement", f"{base}/displacement", "Node"),
                XdmfField("p_cell", f"{base}/p_cell", "Cell"),
                XdmfField("von_mises_cell", f"{base}/von_mises_cell", "Cell")]))
    write_xdmf_fields(path_h5, path_xdmf, cell_type=str(cell_type), series=series)
    return path_xdmf


def read_data_item(item: ET.Element, base_dir: str | os.PathLike = ".") -> np.ndarray:
    """Evaluate an XDMF DataItem (Format XML or HDF, or ItemType HyperSlab) into an array
    of its declared Dimensions. For checking files; reads with serial h5py."""
    import h5py

    dims = tuple(int(d) for d in item.get("Dimensions", "").split())
    if item.get("ItemType") == "HyperSlab":
        sel, src = list(item)
        start, stride, count = read_data_item(sel, base_dir).astype(np.int64).reshape(3, -1)
        data = read_data_item(src, base_dir)
        idx = tuple(slice(a, a + s * c, s) for a, s, c in zip(start, stride, count))
        return data[idx].reshape(dims)
    fmt = item.get("Format", "XML")
    text = (item.text or "").strip()
    if fmt == "XML":
        return np.array(text.split(), dtype=float).reshape(dims)
    if fmt == "HDF":
        fname, dset = text.split(":", 1)
        with h5py.File(os.path.join(os.fspath(base_dir), fname), "r") as f:
            data = f[dset][...]
        if data.shape != dims:
            raise DdromError(f"XDMF DataItem {text}: Dimensions {dims} but the dataset has {data.shape}")
        return data
    raise DdromError(f"XDMF DataItem format {fmt!r} not supported")


def read_data_item_rows(item: ET.Element, base_dir: str | os.PathLike, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (first axis) of an XDMF DataItem, reading only those rows where the
    format allows it: an HDF dataset (or a hyperslab of one) is read with an HDF5 point
    selection, so the cost is proportional to ``len(rows)``, not to the dataset; XML data
    is parsed whole (it is small by nature)."""
    import h5py

    rows = np.asarray(rows, dtype=np.int64)
    uniq, inverse = np.unique(rows, return_inverse=True)      # h5py wants increasing indices
    if item.get("ItemType") == "HyperSlab":
        sel, src = list(item)
        start, stride, _ = read_data_item(sel, base_dir).astype(np.int64).reshape(3, -1)
        # the first axis of the slab is rows start[0] + stride[0] * i of the source
        src_rows = start[0] + stride[0] * uniq
        data = read_data_item_rows(src, base_dir, src_rows)
        tail = tuple(slice(a, None, s) for a, s in zip(start[1:], stride[1:]))
        dims = tuple(int(d) for d in item.get("Dimensions", "").split())
        data = data[(slice(None),) + tail][(slice(None),) + tuple(slice(0, d) for d in dims[1:])]
        return data[inverse]
    if item.get("Format", "XML") == "HDF":
        fname, dset = (item.text or "").strip().split(":", 1)
        with h5py.File(os.path.join(os.fspath(base_dir), fname), "r") as f:
            ds = f[dset]
            if len(uniq) and (uniq[0] < 0 or uniq[-1] >= ds.shape[0]):
                raise DdromError(f"XDMF DataItem {fname}:{dset}: row {int(uniq[-1])} beyond its "
                                 f"{ds.shape[0]} rows")
            data = ds[uniq] if len(uniq) else np.zeros((0,) + ds.shape[1:], dtype=ds.dtype)
        return np.asarray(data)[inverse]
    return read_data_item(item, base_dir)[rows]
