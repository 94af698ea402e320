"""CalculiX results: ``.frd`` (nodal fields) and ``.dat`` (printed fields, e.g. integration-point stresses).

Both are read at the precision CalculiX prints them (nothing is recomputed here):

* ``.frd`` (``*NODE FILE`` / ``*EL FILE``): the mesh (nodes, elements) and, per output
  increment, nodal blocks such as ``DISP`` (D1 D2 D3), ``STRESS`` (SXX SYY SZZ SXY SYZ
  SZX: VTK's order, :data:`~ddrom.io.importers.VTK_ORDER`; extrapolated from the
  integration points and averaged at the nodes), ``PE`` (equivalent plastic strain,
  extrapolated likewise), ``FORC`` (reaction forces). Values are ``E12.5``: **6
  significant digits**, coordinates included. The time of a block is the *total* time
  (CalculiX's ``100C`` record); the step and increment numbers come from its ``1PSTEP``
  record. ASCII only (CalculiX's default); a binary ``.frd`` is refused.
  :class:`FrdFile` indexes the blocks in one pass (``mmap`` + regular expressions) and
  parses one block when asked, so a large file is never held whole in memory.
* ``.dat`` (``*NODE PRINT`` / ``*EL PRINT``): blocks such as ``stresses (elem,
  integ.pnt.,sxx,syy,szz,sxy,sxz,syz) for set EALL and time 0.1000000E+01`` with one line
  per element and integration point, ``equivalent plastic strain (elem, integ.pnt.,pe)``,
  ``global coordinates`` (``COORD``), ``displacements (vx,vy,vz)``, ``forces`` (``RF``);
  values ``E13.6``: **7 significant digits**. The ``.dat`` stress order is Abaqus'
  ``xx yy zz xy xz yz`` (:data:`~ddrom.io.importers.ABAQUS_ORDER`), not the ``.frd``'s.

Element types of the ``.frd`` mesh (its code): 1 = 8-node hexahedron (C3D8, C3D8R,
C3D8I are all written as such), 3 = 4-node tetrahedron (C3D4); others (C3D20, C3D10,
shells and beams expanded to solids, ...) are refused by name. Node orders are VTK's.

Integration points (C3D8 vs ddrom)
----------------------------------
CalculiX numbers the 8 Gauss points of a C3D8 (``gauss3d2`` in its sources) with the
first natural coordinate running fastest::

    ip = 1 + i + 2 j + 4 k   at   (xi, eta, zeta) = (s_i, s_j, s_k),  s_0 = -1/sqrt3, s_1 = +1/sqrt3

with the natural coordinates of the C3D8 nodes those of VTK's hexahedron (node 1 at
(-1, -1, -1), node 2 at (+1, -1, -1), node 4 at (-1, +1, -1), node 5 at (-1, -1, +1)).
ddrom's hexahedron (:data:`ddrom.mesh.reference.CELL_TYPES`) orders its 2x2x2 points the
same way (``x`` fastest, then ``y``, then ``z``), so **integration point ``ip`` of a
C3D8 is ddrom's quadrature point ``ip - 1``** (:data:`CALCULIX_QP_ORDER` is the
identity), for elements whose node order is the same in the deck and the case mesh
(a mesh read from the ``.inp`` keeps it). C3D4 has one point, at the centroid, like
ddrom's tetrahedron. :class:`IntegrationPointSeries` does not rely on the node order: it
places every printed point with the element's geometry, in CalculiX's order, and pairs
it with the case's quadrature point at the same position (an error if none is there).
Checked against CalculiX 2.20's ``*EL PRINT, COORD`` in ``tests/test_calculix.py``.
C3D8R (1 point) and C3D8I (CalculiX expands it internally) print other counts: a
mismatch with the case's points per cell is an error naming both counts.

Parallel model: rank 0 reads the files (one block at a time); the values go to the ranks
that hold the cells by their natural ids (:class:`~ddrom.io.matching.Router`), as for
the displacement series of :mod:`ddrom.io.importers`.
"""
from __future__ import annotations

import math
import mmap
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ddrom.parallel import CollectiveError, DdromError, as_mpi, raise_collective

#: frd element code -> (ddrom cell type, nodes); other codes are refused.
FRD_CELL = {1: ("hexahedron", 8), 3: ("tetra", 4)}
#: nodes per element of every frd element code, and a name for messages.
_FRD_NODES = {1: 8, 2: 6, 3: 4, 4: 20, 5: 15, 6: 10, 7: 3, 8: 6, 9: 4, 10: 8, 11: 2, 12: 3}
_FRD_NAME = {1: "he8 (C3D8)", 2: "pe6 (C3D6)", 3: "te4 (C3D4)", 4: "he20 (C3D20)", 5: "pe15 (C3D15)",
             6: "te10 (C3D10)", 7: "tr3 (shell S3)", 8: "tr6 (shell S6)", 9: "qu4 (shell S4)",
             10: "qu8 (shell S8)", 11: "be2 (beam B31)", 12: "be3 (beam B32)"}

_G = 1.0 / math.sqrt(3.0)
#: Natural coordinates of CalculiX's integration points, in its order (see the module doc).
CALCULIX_QP = {
    "hexahedron": np.array([[x, y, z] for z in (-_G, _G) for y in (-_G, _G) for x in (-_G, _G)]),
    "tetra": np.array([[0.25, 0.25, 0.25]]),
}
#: ddrom quadrature point j is CalculiX's integration point ``CALCULIX_QP_ORDER[ct][j] + 1``.
CALCULIX_QP_ORDER = {"hexahedron": np.arange(8), "tetra": np.arange(1)}

#: ``*EL PRINT`` / ``*NODE PRINT`` variable -> title of its ``.dat`` block.
DAT_TITLES = {"S": "stresses", "PEEQ": "equivalent plastic strain", "E": "strains", "ME": "mechanical strains",
              "COORD": "global coordinates", "SDV": "internal state variables", "U": "displacements",
              "RF": "forces", "ENER": "internal energy density", "NT": "temperatures"}


# ------------------------------------------------------------------------------ numbers
_FORTRAN_EXP = re.compile(rb"(\d)([+-]\d{3})$")


def _floats(fields: np.ndarray, where: str) -> np.ndarray:
    """Byte-string fields -> floats; also Fortran's 3-digit exponents without 'E' (``1.0-100``)."""
    try:
        return fields.astype(float)
    except ValueError:
        pass
    out = np.empty(fields.shape)
    flat = fields.reshape(-1)
    for i, f in enumerate(flat):
        t = f.strip()
        try:
            out.flat[i] = float(t)
        except ValueError:
            try:
                out.flat[i] = float(_FORTRAN_EXP.sub(rb"\1E\2", t))
            except ValueError:
                raise DdromError(f"{where}: {t.decode(errors='replace')!r} is not a number") from None
    return out


def _fixed(lines: list[bytes], start: int, width: int, count: int) -> np.ndarray:
    """Fixed-width fields ``[start + width*i, start + width*(i+1))`` of each line: (n, count) bytes."""
    L = start + width * count
    buf = np.array(lines, dtype=f"S{L}")
    raw = np.frombuffer(buf.tobytes(), dtype=np.uint8).reshape(len(lines), L)
    return np.ascontiguousarray(raw[:, start:L]).view(f"S{width}").reshape(len(lines), count)


def _data_lines(mm: Any, start: int, end: int) -> list[bytes]:
    return [ln.rstrip(b"\r") for ln in mm[start:end].split(b"\n") if ln.strip()]


def _open_mmap(path: str) -> tuple[Any, Any]:
    if not os.path.isfile(path):
        raise DdromError(f"{path}: file not found")
    f = open(path, "rb")
    if os.fstat(f.fileno()).st_size == 0:
        f.close()
        raise DdromError(f"{path}: empty file")
    return f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


# ================================================================================= .frd
@dataclass
class FrdBlock:
    """One nodal result block of a ``.frd`` (values not read).

    ``name`` is the ``-4`` record's name (``DISP``, ``STRESS``, ``PE``, ``FORC``, ...),
    ``time`` the total time, ``components`` the names of the stored components (those
    CalculiX computes on the fly, such as ``ALL``, are not stored), ``start``/``end`` the
    byte range of the data lines.
    """

    name: str
    time: float
    step: int | None
    increment: int | None
    components: list[str]
    n_nodes: int
    start: int
    end: int
    long: bool
    line: int


class FrdFile:
    """A CalculiX ``.frd`` results file (ASCII), indexed on opening; see the module doc.

    Attributes
    ----------
    path : str
    node_ids : (N,) int64
        Node numbers, in the order of the file's node block.
    points : (N, 3) float
        Their coordinates (6 significant digits).
    element_ids, element_types : (M,) int64
        Element numbers and frd type codes.
    connectivity : list of (M_t, k_t) int64
        Node *numbers* of the elements, one array per type code (:attr:`element_groups`).
    blocks : list of FrdBlock
        Every nodal result block, in file order.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._f, self._mm = _open_mmap(self.path)
        try:
            self._index()
        except Exception:
            self.close()
            raise

    # ---------------------------------------------------------------- index
    def _line_of(self, pos: int) -> int:
        """1-based line number at byte ``pos`` (counted on from the last query: the index asks in order)."""
        last_pos, last_line = getattr(self, "_last", (0, 1))
        if pos < last_pos:
            last_pos, last_line = 0, 1
        line = last_line + self._mm[last_pos:pos].count(b"\n")
        self._last = (pos, line)
        return line

    def _block_end(self, start: int, what: str) -> int:
        m = re.compile(rb"^ -3\s*$", re.M).search(self._mm, start)
        if m is None:
            raise DdromError(f"{self.path}: {what} (line {self._line_of(start)}) has no end record ' -3': "
                             "truncated file?")
        return m.start()

    def _index(self) -> None:
        mm, path = self._mm, self.path
        head = re.compile(rb"^ +2C[^\n]*$", re.M).search(mm)
        if head is None:
            raise DdromError(f"{path}: no node block ('2C' record): not a CalculiX .frd file")
        fmt = head.group().split()
        if len(fmt) < 3 or fmt[-1] not in (b"0", b"1"):
            raise DdromError(f"{path}: binary .frd (format {fmt[-1].decode() if fmt else '?'} in its node block) "
                             "is not supported: write the results in ASCII (CalculiX's default)")
        long = fmt[-1] == b"1"
        w = 10 if long else 5
        start = head.end() + 1
        end = self._block_end(start, "the node block")
        lines = _data_lines(mm, start, end)
        if not lines:
            raise DdromError(f"{path}: the node block is empty")
        bad = [ln for ln in lines if not ln.startswith(b" -1")]
        if bad:
            raise DdromError(f"{path}: unexpected line {bad[0].decode(errors='replace')!r} in the node block")
        self.node_ids = _fixed(lines, 3, w, 1)[:, 0].astype(np.int64)
        self.points = _floats(_fixed(lines, 3 + w, 12, 3), f"{path} (node block)")
        self._element_block(long)
        self._index_results()

    def _element_block(self, long_nodes: bool) -> None:
        mm, path = self._mm, self.path
        head = re.compile(rb"^ +3C[^\n]*$", re.M).search(mm)
        if head is None:
            raise DdromError(f"{path}: no element block ('3C' record)")
        long = head.group().split()[-1] == b"1"
        w = 10 if long else 5
        start = head.end() + 1
        lines = _data_lines(mm, start, self._block_end(start, "the element block"))
        ids, types, groups = [], [], {}
        i = 0
        while i < len(lines):
            ln = lines[i]
            if not ln.startswith(b" -1"):
                raise DdromError(f"{path}: unexpected line {ln.decode(errors='replace')!r} in the element block")
            eid, etype = int(ln[3:3 + w]), int(ln[3 + w:8 + w])
            k = _FRD_NODES.get(etype)
            if k is None:
                raise DdromError(f"{path}: element {eid} has unknown frd type {etype}")
            nl = -(-k // 10)                # 10 node numbers per ' -2' line (both formats)
            conn = []
            for ln2 in lines[i + 1:i + 1 + nl]:
                body = ln2[3:]
                conn += [int(body[j:j + w]) for j in range(0, len(body) - w + 1, w) if body[j:j + w].strip()]
            if len(conn) != k:
                raise DdromError(f"{path}: element {eid} ({_FRD_NAME[etype]}) lists {len(conn)} nodes, expected {k}")
            ids.append(eid)
            types.append(etype)
            groups.setdefault(etype, []).append(conn)
            i += 1 + nl
        self.element_ids = np.array(ids, dtype=np.int64)
        self.element_types = np.array(types, dtype=np.int64)
        self.element_groups = sorted(groups)
        self.connectivity = [np.array(groups[t], dtype=np.int64) for t in self.element_groups]

    def _index_results(self) -> None:
        mm, path = self._mm, self.path
        self.blocks: list[FrdBlock] = []
        step = inc = None
        rec = re.compile(rb"^ +(1PSTEP|100C)[^\n]*$", re.M)
        for m in rec.finditer(mm):
            line = m.group()
            if m.group(1) == b"1PSTEP":
                tok = line.split()[1:]
                inc, step = (int(tok[1]), int(tok[2])) if len(tok) >= 3 else (None, None)
                continue
            base = line.index(b"100C") + 4
            try:
                time = float(line[base + 6:base + 18])
                n_nodes = int(line[base + 18:base + 30])
            except ValueError:
                raise DdromError(f"{path}, line {self._line_of(m.start())}: unreadable result header "
                                 f"{line.decode(errors='replace')!r}") from None
            fmt = line.rstrip()[-1:]
            if fmt == b"2":
                raise DdromError(f"{path}, line {self._line_of(m.start())}: binary result block: write the "
                                 "results in ASCII (CalculiX's default)")
            pos = m.end() + 1
            header = []
            while True:
                nl = mm.find(b"\n", pos)
                nl = len(mm) if nl < 0 else nl
                ln = mm[pos:nl].rstrip(b"\r")
                if not (ln.startswith(b" -4") or ln.startswith(b" -5")):
                    break
                header.append(ln)
                pos = nl + 1
            if not header or not header[0].startswith(b" -4"):
                raise DdromError(f"{path}, line {self._line_of(m.start())}: a result block without its ' -4' record")
            name = header[0][5:13].decode().strip()
            comps = []
            for ln in header[1:]:
                iexist = int(ln[33:38]) if len(ln) >= 38 and ln[33:38].strip() else 0
                if iexist != 1:                 # 1: computed by the reader (e.g. ALL), not stored
                    comps.append(ln[5:13].decode().strip())
            end = self._block_end(pos, f"result block {name}")
            self.blocks.append(FrdBlock(name, time, step, inc, comps, n_nodes, pos, end, fmt == b"1",
                                        self._line_of(m.start())))

    # ---------------------------------------------------------------- queries
    def names(self) -> list[str]:
        """Names of the nodal result blocks present (``DISP``, ``STRESS``, ...)."""
        return sorted({b.name for b in self.blocks})

    def series(self, name: str) -> list[FrdBlock]:
        """The blocks named ``name`` (case-insensitive), in file order."""
        return [b for b in self.blocks if b.name.upper() == name.upper()]

    def times(self, name: str) -> np.ndarray:
        return np.array([b.time for b in self.series(name)])

    def read(self, block: FrdBlock) -> tuple[np.ndarray, np.ndarray]:
        """Node numbers (m,) and values (m, n_components) of a block, at the printed precision."""
        lines = _data_lines(self._mm, block.start, block.end)
        nv = len(block.components)
        per = max(1, -(-nv // 6))
        where = f"{self.path}, block {block.name} at t = {block.time:g} (line {block.line})"
        if len(lines) % per or any(not ln.startswith(b" -1") for ln in lines[::per]):
            raise DdromError(f"{where}: malformed data lines (expected {per} line(s) per node)")
        w = 10 if block.long else 5
        first = lines[::per]
        ids = _fixed(first, 3, w, 1)[:, 0].astype(np.int64)
        vals = [_floats(_fixed(lines[j::per], 3 + w, 12, min(6, nv - 6 * j)), where) for j in range(per)]
        return ids, np.hstack(vals) if vals else np.zeros((len(ids), 0))

    def volume_mesh(self) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
        """The solid mesh: ``cell_type``, ``cells`` (rows of :attr:`node_ids`), the element
        numbers and the rows of the nodes the cells use (sorted).

        Raises
        ------
        DdromError
            Element types other than he8/te4, or both of them.
        """
        other = [t for t in self.element_groups if t not in FRD_CELL]
        if other:
            raise DdromError(f"{self.path}: elements of type {', '.join(_FRD_NAME.get(t, str(t)) for t in other)}: "
                             "ddrom reads 8-node hexahedra (C3D8) and 4-node tetrahedra (C3D4) only")
        if len(self.element_groups) != 1:
            raise DdromError(f"{self.path}: mixes hexahedra and tetrahedra: ddrom needs one cell type")
        t = self.element_groups[0]
        conn = self.connectivity[0]
        cells = self.rows_of_nodes(conn.ravel(), "element connectivity").reshape(conn.shape)
        eids = self.element_ids[self.element_types == t]
        return FRD_CELL[t][0], cells, eids, np.unique(cells)

    def rows_of_nodes(self, ids: np.ndarray, what: str) -> np.ndarray:
        """Rows in :attr:`node_ids` of node numbers ``ids`` (an error names a missing one)."""
        if not hasattr(self, "_node_order"):
            self._node_order = np.argsort(self.node_ids, kind="stable")
        s = self.node_ids[self._node_order]
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.minimum(np.searchsorted(s, ids), len(s) - 1)
        bad = s[pos] != ids
        if np.any(bad):
            raise DdromError(f"{self.path}: {what} refers to node {int(ids[bad][0])}, which is not in the node block")
        return self._node_order[pos]

    def close(self) -> None:
        if getattr(self, "_mm", None) is not None:
            self._mm.close()
            self._f.close()
            self._mm = None


# ================================================================================= .dat
@dataclass
class DatBlock:
    """One printed block of a ``.dat``: ``title`` (``stresses``, ...), its column names, the
    set, the (total) time, and the byte range of its data lines."""

    title: str
    columns: list[str]
    set: str | None
    time: float
    start: int
    end: int
    line: int

    @property
    def per_point(self) -> bool:
        """Element and integration-point lines (``elem, integ.pnt., ...``)."""
        return len(self.columns) >= 2 and self.columns[0] == "elem" and self.columns[1].startswith("integ")

    @property
    def values(self) -> list[str]:
        return self.columns[2:] if self.per_point else self.columns


_DAT_HEAD = re.compile(rb"^ ([A-Za-z][^\n(]*?) *\(([^)\n]*)\) *(?:for set (\S+))? *and time +(\S+)[ \t\r]*$", re.M)
_BLANK = re.compile(rb"\n[ \t\r]*\n")


class DatFile:
    """A CalculiX ``.dat`` file, indexed on opening; see the module doc."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._f, self._mm = _open_mmap(self.path)
        try:
            self._index()
        except Exception:
            self.close()
            raise

    def _index(self) -> None:
        mm = self._mm
        self.blocks: list[DatBlock] = []
        heads = list(_DAT_HEAD.finditer(mm))
        line, last = 1, 0
        for i, m in enumerate(heads):
            line += mm[last:m.start()].count(b"\n")
            last = m.start()
            try:
                time = float(m.group(4))
            except ValueError:
                time = float(_floats(np.array([m.group(4)]), self.path)[0])
            start = m.end()
            limit = heads[i + 1].start() if i + 1 < len(heads) else len(mm)
            # data: after the blank line that follows the title, up to the next blank line
            first = re.compile(rb"\S").search(mm, start, limit)
            if first is None:
                continue
            blank = _BLANK.search(mm, first.start(), limit)
            end = blank.start() if blank else limit
            cols = [c.strip() for c in m.group(2).decode().split(",") if c.strip()]
            self.blocks.append(DatBlock(m.group(1).decode().strip(), cols,
                                        m.group(3).decode() if m.group(3) else None, time,
                                        mm.rfind(b"\n", 0, first.start()) + 1, end, line))
        if not self.blocks:
            raise DdromError(f"{self.path}: no printed result block (*NODE PRINT / *EL PRINT): not a CalculiX "
                             ".dat file, or nothing was printed")

    @staticmethod
    def title_of(quantity: str) -> str:
        """``"S"`` -> ``"stresses"`` (:data:`DAT_TITLES`); a title is returned as given."""
        return DAT_TITLES.get(quantity.upper(), quantity)

    def sets(self, quantity: str) -> list[str | None]:
        t = self.title_of(quantity)
        return list(dict.fromkeys(b.set for b in self.blocks if b.title == t))

    def series(self, quantity: str, set_name: str | None = None) -> list[DatBlock]:
        """Blocks of a quantity (``"S"``, ``"PEEQ"``, ... or a title) for one set, in file order.

        Raises
        ------
        DdromError
            The quantity is not printed, or it is printed for several sets and none is chosen.
        """
        t = self.title_of(quantity)
        bl = [b for b in self.blocks if b.title == t]
        if not bl:
            have = sorted({b.title for b in self.blocks})
            raise DdromError(f"{self.path}: no {t!r} printed (printed: {have}); add it to *EL PRINT / *NODE PRINT")
        sets = list(dict.fromkeys(b.set for b in bl))
        if set_name is None:
            if len(sets) > 1:
                raise DdromError(f"{self.path}: {t!r} printed for the sets {sets}: choose one")
            return bl
        sel = [b for b in bl if (b.set or "").upper() == set_name.upper()]
        if not sel:
            raise DdromError(f"{self.path}: {t!r} is not printed for set {set_name!r} (sets: {sets})")
        return sel

    def times(self, quantity: str, set_name: str | None = None) -> np.ndarray:
        return np.array([b.time for b in self.series(quantity, set_name)])

    def read(self, block: DatBlock) -> tuple[np.ndarray, np.ndarray]:
        """Ids and values of a block, at the printed precision.

        Per-point blocks: element ids (m,) and values (m, n_points, n_values), the points
        in CalculiX's order (every element must list points 1..n_points in order). Node
        blocks: node ids (m,) and values (m, n_values).
        """
        where = f"{self.path}, {block.title} at t = {block.time:g} (line {block.line})"
        lines = _data_lines(self._mm, block.start, block.end)
        if not lines:
            raise DdromError(f"{where}: no data lines")
        ncol = len(lines[0].split())
        tok = np.array(b" ".join(lines).split())
        if tok.size % ncol:
            raise DdromError(f"{where}: lines of different lengths")
        tok = tok.reshape(-1, ncol)
        nv = len(block.values)
        if block.per_point:
            if ncol != 2 + nv:
                raise DdromError(f"{where}: {ncol} columns, expected element, point and {nv} values")
            elem = tok[:, 0].astype(np.int64)
            ip = tok[:, 1].astype(np.int64)
            starts = np.flatnonzero(np.r_[True, elem[1:] != elem[:-1]])
            npt = int(np.diff(np.r_[starts, len(elem)]).max())
            if len(elem) != npt * len(starts) or not np.array_equal(ip, np.tile(np.arange(1, npt + 1), len(starts))):
                raise DdromError(f"{where}: every element must list its integration points 1..{npt} in order")
            vals = _floats(tok[:, 2:], where).reshape(len(starts), npt, nv)
            return elem[starts], vals
        if ncol == nv + 1:
            return tok[:, 0].astype(np.int64), _floats(tok[:, 1:], where)
        if ncol == nv:                       # totals: no ids
            return np.zeros(len(tok), np.int64), _floats(tok, where)
        raise DdromError(f"{where}: {ncol} columns for the {nv} values {block.values}")

    def close(self) -> None:
        if getattr(self, "_mm", None) is not None:
            self._mm.close()
            self._f.close()
            self._mm = None


# ============================================================= integration-point series
def _element_geometry(path: str) -> tuple[str, np.ndarray, np.ndarray, float]:
    """Element numbers (sorted), their node coordinates (m, k, 3) in the same order, the cell
    type and the absolute precision of the coordinates, from an ``.inp`` or a ``.frd``."""
    if path.lower().endswith(".frd"):
        frd = FrdFile(path)
        try:
            ct, cells, eids, _ = frd.volume_mesh()
            X = frd.points[cells]
            prec = 1e-5 * float(np.abs(frd.points).max()) if len(frd.points) else 0.0
        finally:
            frd.close()
    elif path.lower().endswith(".inp"):
        from ddrom.mesh.abaqus import read_inp

        inp = read_inp(path, check=False)
        ct, eids, X, prec = inp.mesh.cell_type, inp.element_ids, inp.mesh.points[inp.mesh.cells], 0.0
    else:
        raise DdromError(f"{path}: the element geometry is read from a CalculiX .frd or an .inp")
    order = np.argsort(eids, kind="stable")
    return ct, eids[order], X[order], prec


class IntegrationPointSeries:
    """Integration-point fields of a CalculiX ``.dat`` on the cells of a distributed case mesh.

    Collective. Rank 0 indexes the ``.dat`` and reads the element geometry from
    ``geometry`` (the run's ``.inp`` or ``.frd``; default: the file of the same stem next
    to the ``.dat``, the ``.inp`` first for its full precision); the printed elements are matched to the case's cells
    by centroid (:func:`~ddrom.io.matching.match_rows`: kept in order when they are the
    case's cells in natural order, e.g. a case mesh read from the same ``.inp``), and each
    printed point to the case's quadrature point at the same position (see the module doc).
    Every cell of the case must be printed (``*EL PRINT, ELSET=<all elements>``).

    Parameters
    ----------
    dat : str
        The ``.dat`` file.
    dm : DistributedMesh
    geometry : str, optional
        ``.frd`` or ``.inp`` holding the elements' nodes.
    elset : str, optional
        The element set of the printed blocks (needed when several sets are printed).
    quantity : str
        The printed quantity whose elements are matched (``"S"`` by default; any
        per-point quantity printed for the same set works, e.g. ``"PEEQ"``).
    coord_rtol : float
        Matching tolerance relative to the mesh diagonal (raised to the coordinates'
        printed precision for a ``.frd``).

    Attributes (same on every rank)
    ----------
    source : str
    n_points : int
        Points per element (the case's).
    max_point_distance : float
        Largest distance between a printed point and its case quadrature point.
    cell_match : "identity" | "coordinates"
        How the printed elements were matched to the case's cells.

    Attributes (this rank)
    ----------
    point_order : (n_cells, n_points) int
        ``point_order[e, q]``: the printed point (0-based, CalculiX's order) at case
        quadrature point ``q`` of local cell ``e`` (:data:`CALCULIX_QP_ORDER` for a case
        mesh read from the deck).
    """

    def __init__(self, dat: str, dm: Any, geometry: str | None = None, elset: str | None = None,
                 quantity: str = "S", coord_rtol: float | None = None, node_order: str = "auto"):
        from ddrom.io.importers import DEFAULT_COORD_RTOL
        from ddrom.io.matching import Router, bbox_diagonal, case_cell_centroids, match_rows

        c = as_mpi(dm.comm)
        self.dm, self._c, self.source, self.elset = dm, c, str(dat), elset
        self._dat: DatFile | None = None
        rtol = DEFAULT_COORD_RTOL if coord_rtol is None else coord_rtol
        self.n_points = dm.n_qp
        msg, head = None, None
        rows_x = np.zeros((0, 3))
        qp_file = np.zeros((0, self.n_points * 3))
        if c.rank == 0:
            try:
                self._dat = DatFile(dat)
                blocks = self._dat.series(quantity, elset)
                if not blocks[0].per_point:
                    raise DdromError(f"{dat}: {blocks[0].title!r} is not an integration-point quantity")
                self.elset = blocks[0].set
                eids, vals = self._dat.read(blocks[0])
                if vals.shape[1] != self.n_points:
                    raise DdromError(f"{dat}: {blocks[0].title!r} at {vals.shape[1]} integration point(s) per "
                                     f"element, the case's {dm.cell_type} cells have {self.n_points} (C3D8R "
                                     "prints 1; ddrom's hexahedron has the 8 points of C3D8)")
                geo = geometry or self._guess_geometry(dat)
                ct, gids, X, prec = _element_geometry(geo)
                if ct != dm.cell_type:
                    raise DdromError(f"{geo}: {ct} elements, the case mesh has {dm.cell_type} cells")
                pos = np.minimum(np.searchsorted(gids, eids), len(gids) - 1)
                if np.any(gids[pos] != eids):
                    bad = int(eids[gids[pos] != eids][0])
                    raise DdromError(f"{dat}: element {bad} is printed but is not an element of {geo}")
                Xe = X[pos]                                         # (m, k, 3) in .dat order
                rows_x = Xe.mean(axis=1)
                from ddrom.mesh.reference import CELL_TYPES

                N = CELL_TYPES[ct].shape(CALCULIX_QP[ct])            # (nq, k)
                qp_file = np.einsum("qk,mkd->mqd", N, Xe).reshape(len(Xe), -1)
                self._eids = eids
                head = (self.elset, prec, geo)
            except DdromError as exc:
                msg = str(exc)
            except Exception as exc:  # noqa: BLE001 - any reader failure names the file
                msg = f"{dat}: cannot read it ({type(exc).__name__}: {exc})"
        try:
            raise_collective(c, msg)
        except CollectiveError:
            self.close()
            raise
        self.elset, prec, self.geometry = c.bcast(head, root=0)
        diag = bbox_diagonal(c, dm.coords[: dm.n_owned])
        rtol = max(rtol, prec / diag if diag > 0 else 0.0)
        hint = ("print the integration-point fields of every element of the case mesh "
                "(*EL PRINT, ELSET=<all elements>)")
        try:
            mt = match_rows(c, rows_x, case_cell_centroids(dm), diag, mode=node_order, coord_rtol=rtol,
                            single=True, what="cell", source=self.source, hint=hint)
            self._router = Router(c, dm.natural_cells, mt.natural_ids, self.source, "cell")
            xq_file = self._router.route(qp_file, 3 * self.n_points).reshape(dm.n_cells, self.n_points, 3)
            self.point_order, self.max_point_distance = self._pair_points(xq_file, mt.tolerance)
        except CollectiveError:
            self.close()
            raise
        self.cell_match = mt.method

    @staticmethod
    def _guess_geometry(dat: str) -> str:
        stem = os.path.splitext(dat)[0]
        for ext in (".inp", ".frd"):        # the deck first: full precision
            if os.path.isfile(stem + ext):
                return stem + ext
        raise DdromError(f"{dat}: no {os.path.basename(stem)}.inp or .frd next to it for the element geometry: "
                         "give the geometry file")

    def _pair_points(self, xq_file: np.ndarray, tol: float) -> tuple[np.ndarray, float]:
        """Per cell, the printed point at each case quadrature point (collective check)."""
        xq = self.dm.qp_coordinates()                                   # (ne, nq, 3)
        d = np.linalg.norm(xq[:, :, None, :] - xq_file[:, None, :, :], axis=-1)   # (ne, case q, file q)
        perm = d.argmin(axis=2)
        dmin = np.take_along_axis(d, perm[:, :, None], axis=2)[:, :, 0]
        ok = np.all(np.sort(perm, axis=1) == np.arange(self.n_points), axis=1) & np.all(dmin <= tol, axis=1)
        bad = np.flatnonzero(~ok)
        msg = None
        if bad.size:
            e = int(bad[0])
            msg = (f"{self.source}: the integration points printed for case cell {int(self.dm.cell_natural[e])} "
                   f"are not at its quadrature points (largest distance {float(dmin[e].max()):.3e}, tolerance "
                   f"{tol:.3e}): the element geometry of {self.geometry} differs from the case mesh's")
        raise_collective(self._c, msg)
        from mpi4py import MPI

        dmax = self._c.allreduce(float(dmin.max()) if dmin.size else 0.0, op=MPI.MAX)
        return perm, dmax

    # ------------------------------------------------------------------ data
    def times(self, quantity: str = "S") -> np.ndarray:
        """Times of the blocks of ``quantity`` for this set (same on every rank; collective)."""
        return self._on_root(lambda: self._dat.times(quantity, self.elset))

    def _on_root(self, fn) -> Any:
        out, msg = None, None
        if self._c.rank == 0:
            try:
                out = fn()
            except DdromError as exc:
                msg = str(exc)
        raise_collective(self._c, msg)
        return self._c.bcast(out, root=0)

    def read(self, quantity: str, k: int) -> np.ndarray:
        """(n_cells, n_points, n_values) values of the k-th block of ``quantity`` on this rank's
        cells, points in ddrom's order (collective)."""
        vals, msg, nv = np.zeros((0, self.n_points, 0)), None, None
        if self._c.rank == 0:
            try:
                blocks = self._dat.series(quantity, self.elset)
                if not 0 <= k < len(blocks):
                    raise DdromError(f"{self.source}: {blocks[0].title!r} has {len(blocks)} blocks, no block {k}")
                eids, vals = self._dat.read(blocks[k])
                if not np.array_equal(eids, self._eids):
                    raise DdromError(f"{self.source}: {blocks[k].title!r} at t = {blocks[k].time:g} is printed for "
                                     "other elements than the matched ones")
                nv = vals.shape[2]
            except DdromError as exc:
                msg = str(exc)
        raise_collective(self._c, msg)
        nv = self._c.bcast(nv, root=0)
        v = self._router.route(vals.reshape(len(vals), self.n_points * nv), self.n_points * nv)
        v = v.reshape(-1, self.n_points, nv)
        return np.take_along_axis(v, self.point_order[:, :, None], axis=1)

    def stress(self, k: int, order: str | None = None) -> np.ndarray:
        """(n_cells, n_points, 6) Mandel stress of the k-th ``stresses`` block; ``order``: the
        file's component order (default Abaqus', which the ``.dat`` prints: ``xx yy zz xy xz yz``)."""
        from ddrom.io.importers import ABAQUS_ORDER, to_mandel

        s = self.read("S", k)
        if s.shape[2] != 6:
            raise CollectiveError(f"{self.source}: stresses with {s.shape[2]} components, expected 6 (3D solids)")
        try:
            return to_mandel(s.reshape(-1, 6), self.source, order or ABAQUS_ORDER).reshape(s.shape)
        except DdromError as exc:       # a bad order: the same verdict on every rank
            raise CollectiveError(str(exc)) from None

    def peeq(self, k: int) -> np.ndarray:
        """(n_cells, n_points) equivalent plastic strain of the k-th ``PEEQ`` block."""
        return self.read("PEEQ", k)[:, :, 0]

    def close(self) -> None:
        if self._dat is not None:
            self._dat.close()
            self._dat = None


__all__ = ["FrdFile", "FrdBlock", "DatFile", "DatBlock", "IntegrationPointSeries", "CALCULIX_QP",
           "CALCULIX_QP_ORDER", "DAT_TITLES", "FRD_CELL"]
