"""A reader of VTK XML unstructured grids (``.vtu``) that meshio rejects: DOLFINx's.

``dolfinx.io.VTKFile`` (0.5 and later) writes ``<VTKFile type="UnstructuredGrid"
version="2.2">`` pieces, which meshio refuses ("Unknown VTU file version"), with its cells
as Lagrange cells (``VTK_LAGRANGE_HEXAHEDRON`` = 72, ``VTK_LAGRANGE_TETRAHEDRON`` = 71; of
degree 1 for a P1/Q1 mesh: 8 or 4 nodes in the order of VTK's linear cells) and, when
written in parallel, the ghost cells of each process flagged in a ``vtkGhostType`` cell
array. (Its ``.pvtu`` also lists every piece twice; :func:`ddrom.io.importers.pvtu_pieces`
keeps each once.)

:func:`read_vtu` reads any version of the format: ``ascii``, inline ``binary`` (base64,
``UInt32`` or ``UInt64`` headers, uncompressed or ``vtkZLibDataCompressor`` /
``vtkLZMADataCompressor`` blocks) and ``appended`` data (``raw`` or ``base64``), both byte
orders, several pieces, offsets as VTK 1.0 writes them (the end of each cell) or with a
leading 0. :func:`linear_cell_type` names the cell types ddrom computes on, and
:data:`GHOST_CELL` is the ``vtkGhostType`` bit of a duplicated cell.
"""
from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass, field

import numpy as np

from ddrom.parallel import DdromError

_DTYPES = {"Int8": "i1", "UInt8": "u1", "Int16": "i2", "UInt16": "u2", "Int32": "i4", "UInt32": "u4",
           "Int64": "i8", "UInt64": "u8", "Float32": "f4", "Float64": "f8"}
#: VTK cell type -> (ddrom cell type, nodes) for the cells ddrom computes on (linear, or
#: Lagrange of degree 1, whose node order is the linear cell's).
_LINEAR = {12: ("hexahedron", 8), 72: ("hexahedron", 8), 10: ("tetra", 4), 71: ("tetra", 4)}
#: ``vtkGhostType`` bit of a cell that another piece owns (vtkDataSetAttributes::DUPLICATECELL).
GHOST_CELL = 1
#: meshio's names of VTK's Lagrange cells of degree 1 with the linear node order.
MESHIO_LAGRANGE = {"VTK_LAGRANGE_HEXAHEDRON": ("hexahedron", 8), "VTK_LAGRANGE_TETRAHEDRON": ("tetra", 4)}
#: VTK XML versions meshio reads (others go to :func:`read_vtu`).
MESHIO_VERSIONS = ("0.1", "1.0")


@dataclass
class VtuData:
    """The content of a ``.vtu``: points, cells (VTK types and flat connectivity) and the
    point and cell arrays (``(n,)`` or ``(n, components)``), pieces concatenated."""

    points: np.ndarray
    cell_types: np.ndarray
    offsets: np.ndarray            # (n_cells + 1,): cell i is connectivity[offsets[i]:offsets[i + 1]]
    connectivity: np.ndarray
    point_data: dict = field(default_factory=dict)
    cell_data: dict = field(default_factory=dict)
    version: str = ""


def vtu_version(path: str) -> str:
    """The ``version`` attribute of a VTK XML file's root (read from its first bytes), or ''."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return ""
    m = re.search(rb"<VTKFile[^>]*?\sversion=\"([^\"]*)\"", head)
    return m.group(1).decode() if m else ""


def linear_cell_type(vtk_type: int) -> tuple[str, int] | None:
    """(ddrom cell type, nodes) of a VTK cell type ddrom computes on, else None."""
    return _LINEAR.get(int(vtk_type))


class _Decoder:
    def __init__(self, root: ET.Element, appended: bytes | None, appended_encoding: str, path: str):
        self.path = path
        self.order = ">" if root.get("byte_order", "LittleEndian") == "BigEndian" else "<"
        self.header = np.dtype(self.order + _DTYPES[root.get("header_type", "UInt32")])
        comp = root.get("compressor")
        if comp in (None, ""):
            self.decompress = None
        elif comp == "vtkZLibDataCompressor":
            self.decompress = zlib.decompress
        elif comp == "vtkLZMADataCompressor":
            import lzma

            self.decompress = lzma.decompress
        else:
            raise DdromError(f"{path}: compressor {comp} is not supported (vtkZLibDataCompressor or "
                             "vtkLZMADataCompressor; write the file uncompressed or with zlib)")
        self.appended, self.appended_encoding = appended, appended_encoding

    def _b64(self, text: bytes | str, nbytes: int) -> bytes:
        return base64.b64decode(text[: 4 * -(-nbytes // 3)]) if nbytes else b""

    def _blocks(self, raw_or_b64: bytes, b64: bool) -> bytes:
        """Header + data of one array from its bytes (raw) or base64 text (uncompressed or blocks)."""
        hs = self.header.itemsize
        if self.decompress is None:
            if b64:
                # uncompressed base64: VTK encodes header and data in one stream (meshio too);
                # some writers encode them separately (padding after the header). The first
                # characters hold the header either way.
                hchars = 4 * -(-hs // 3)
                n = int(np.frombuffer(base64.b64decode(raw_or_b64[:hchars])[:hs], self.header)[0])
                try:
                    whole = base64.b64decode(raw_or_b64[:4 * -(-(hs + n) // 3)], validate=True)
                    if len(whole) >= hs + n:
                        return whole[hs:hs + n]
                except ValueError:
                    pass
                return base64.b64decode(raw_or_b64[hchars:hchars + 4 * -(-n // 3)])[:n]
            n = int(np.frombuffer(raw_or_b64[:hs], self.header)[0])
            return raw_or_b64[hs:hs + n]
        # compressed: [n_blocks, block size, last block size, compressed sizes...] then the blocks,
        # header and blocks encoded separately in base64
        if b64:
            h0 = np.frombuffer(self._b64(raw_or_b64, 3 * hs)[: 3 * hs], self.header)
            nb = int(h0[0])
            hlen = (3 + nb) * hs
            hchars = 4 * -(-hlen // 3)
            head = np.frombuffer(base64.b64decode(raw_or_b64[:hchars])[:hlen], self.header)
            body = base64.b64decode(raw_or_b64[hchars:])
        else:
            nb = int(np.frombuffer(raw_or_b64[:hs], self.header)[0])
            hlen = (3 + nb) * hs
            head = np.frombuffer(raw_or_b64[:hlen], self.header)
            body = raw_or_b64[hlen:]
        sizes = head[3:3 + nb].astype(np.int64)
        out, pos = [], 0
        for s in sizes:
            out.append(self.decompress(body[pos:pos + s]))
            pos += s
        return b"".join(out)

    def array(self, da: ET.Element, where: str) -> np.ndarray:
        t = da.get("type")
        if t not in _DTYPES:
            raise DdromError(f"{self.path}: {where}: DataArray type {t!r} is not supported")
        dt = np.dtype(self.order + _DTYPES[t])
        fmt = da.get("format", "ascii")
        if fmt == "ascii":
            text = (da.text or "").split()
            return np.array(text, dtype=float).astype(dt) if dt.kind == "f" else np.array(text, dtype=np.int64).astype(dt)
        if fmt == "binary":
            data = self._blocks((da.text or "").strip().encode(), True)
        elif fmt == "appended":
            if self.appended is None:
                raise DdromError(f"{self.path}: {where}: appended data but no <AppendedData> section")
            off = int(da.get("offset", "0"))
            chunk = self.appended[off:]
            data = self._blocks(chunk, self.appended_encoding == "base64")
        else:
            raise DdromError(f"{self.path}: {where}: DataArray format {fmt!r} is not supported")
        return np.frombuffer(data, dtype=dt).copy()


def _split_appended(raw: bytes, path: str) -> tuple[bytes, bytes | None, str]:
    """XML text without the raw appended bytes, the appended bytes (after '_'), and their encoding."""
    i = raw.find(b"<AppendedData")
    if i < 0:
        return raw, None, ""
    j = raw.find(b">", i)
    tag = raw[i:j + 1]
    m = re.search(rb"encoding=\"(\w+)\"", tag)
    enc = m.group(1).decode() if m else "raw"
    us = raw.find(b"_", j)
    if us < 0:
        raise DdromError(f"{path}: <AppendedData> without its '_' marker")
    end = raw.rfind(b"</AppendedData>")
    data = raw[us + 1:end if end > us else len(raw)]
    if enc == "base64":
        data = data.strip()
    xml = raw[:j + 1] + b"</AppendedData></VTKFile>"
    return xml, data, enc


def read_vtu(path: str) -> VtuData:
    """Read a ``.vtu`` (any version; see the module doc).

    Raises
    ------
    DdromError
        Naming the file: not an unstructured grid, unsupported encoding or compressor,
        inconsistent sizes, polyhedral cells.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DdromError(f"{path}: cannot read it ({exc})") from None
    xml, appended, enc = _split_appended(raw, path)
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise DdromError(f"{path}: not a readable VTU file ({exc})") from None
    if root.tag != "VTKFile" or root.get("type") != "UnstructuredGrid":
        raise DdromError(f"{path}: not a VTK unstructured grid (VTKFile type {root.get('type')!r})")
    dec = _Decoder(root, appended, enc, path)
    pieces = root.findall("./UnstructuredGrid/Piece")
    if not pieces:
        raise DdromError(f"{path}: no <Piece>")
    pts, types, offs, conn, pdata, cdata = [], [], [], [], [], []
    base = 0
    for k, piece in enumerate(pieces):
        npts, ncells = int(piece.get("NumberOfPoints", "0")), int(piece.get("NumberOfCells", "0"))
        where = f"piece {k}"
        p_el = piece.find("./Points/DataArray")
        if p_el is None:
            raise DdromError(f"{path}: {where} has no <Points>")
        x = dec.array(p_el, f"{where} points").astype(float).reshape(npts, -1)
        if x.shape[1] == 2:
            x = np.hstack([x, np.zeros((npts, 1))])
        arrays = {da.get("Name"): da for da in piece.findall("./Cells/DataArray")}
        if "faces" in arrays or "faceoffsets" in arrays:
            raise DdromError(f"{path}: polyhedral cells are not supported")
        missing = [n for n in ("connectivity", "offsets", "types") if n not in arrays]
        if missing:
            raise DdromError(f"{path}: {where}: <Cells> lacks {missing}")
        c = dec.array(arrays["connectivity"], f"{where} connectivity").astype(np.int64)
        o = dec.array(arrays["offsets"], f"{where} offsets").astype(np.int64)
        t = dec.array(arrays["types"], f"{where} types").astype(np.int64)
        if len(t) != ncells:
            raise DdromError(f"{path}: {where}: {len(t)} cell types for NumberOfCells = {ncells}")
        if len(o) == ncells + 1 and o[0] == 0:
            starts = o
        elif len(o) == ncells:
            starts = np.concatenate([[0], o])
        else:
            raise DdromError(f"{path}: {where}: {len(o)} offsets for {ncells} cells")
        if starts[-1] != len(c) or np.any(np.diff(starts) < 0):
            raise DdromError(f"{path}: {where}: offsets inconsistent with the connectivity ({len(c)} entries)")
        if c.size and (c.min() < 0 or c.max() >= npts):
            raise DdromError(f"{path}: {where}: connectivity refers to points outside 0..{npts - 1}")
        pts.append(x)
        types.append(t)
        offs.append(starts[:-1] + sum(len(a) for a in conn))
        conn.append(c + base)
        base += npts
        for store, tag, n in ((pdata, "PointData", npts), (cdata, "CellData", ncells)):
            d = {}
            for da in piece.findall(f"./{tag}/DataArray"):
                name = da.get("Name")
                v = dec.array(da, f"{where} {tag} {name!r}")
                ncomp = int(da.get("NumberOfComponents", "1"))
                if v.size != n * ncomp:
                    raise DdromError(f"{path}: {where}: {tag} {name!r} has {v.size} values for {n} items x "
                                     f"{ncomp} components")
                d[name] = v.reshape(n, ncomp) if ncomp > 1 else v
            store.append(d)
    connectivity = np.concatenate(conn)
    offsets = np.concatenate(offs + [[len(connectivity)]]).astype(np.int64)

    def merge(dicts: list[dict]) -> dict:
        names = set(dicts[0])
        for d in dicts[1:]:
            names &= set(d)
        return {n: np.concatenate([d[n] for d in dicts]) for n in sorted(names)}

    return VtuData(np.concatenate(pts), np.concatenate(types), offsets, connectivity, merge(pdata), merge(cdata),
                   root.get("version", ""))


def volume_cells(v: VtuData, path: str) -> tuple[np.ndarray, np.ndarray]:
    """The owned volume cells of a VTU: ``(cells (c, k), kept)``, ``kept`` the indices of
    those cells among all of the file's (ghost cells of a parallel writer dropped).

    Raises
    ------
    DdromError
        Hexahedra and tetrahedra mixed, or a cell with a node count not of its type.
    """
    lin = np.array([(_LINEAR.get(int(t)) or ("", 0))[1] for t in v.cell_types]) if len(v.cell_types) else np.zeros(0)
    n = np.diff(v.offsets)
    bad = np.flatnonzero((lin > 0) & (n != lin))
    if bad.size:
        i = int(bad[0])
        raise DdromError(f"{path}: cell {i} of VTK type {int(v.cell_types[i])} has {int(n[i])} nodes, expected "
                         f"{int(lin[i])}")
    vol = lin > 0
    ghost = v.cell_data.get("vtkGhostType")
    if ghost is not None:
        vol &= (np.asarray(ghost).reshape(-1).astype(np.int64) & GHOST_CELL) == 0
    kept = np.flatnonzero(vol)
    kinds = {_LINEAR[int(t)][0] for t in np.unique(v.cell_types[kept])}
    if len(kinds) > 1:
        raise DdromError(f"{path}: mixed volume cells {sorted(kinds)}")
    if not kept.size:
        return np.zeros((0, 0), dtype=np.int64), kept
    k = int(lin[kept[0]])
    idx = v.offsets[kept][:, None] + np.arange(k)
    return v.connectivity[idx], kept


__all__ = ["read_vtu", "VtuData", "vtu_version", "volume_cells", "linear_cell_type", "GHOST_CELL",
           "MESHIO_LAGRANGE", "MESHIO_VERSIONS"]
