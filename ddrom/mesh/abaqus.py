"""Abaqus / CalculiX input decks (``.inp``) as ddrom meshes, with their sets and surfaces (serial, rank 0).

:func:`read_inp` (and :func:`ddrom.mesh.io.read_mesh` for a ``.inp``) reads the mesh part
of a *flat* deck (no ``*PART``/``*INSTANCE``); every other keyword (materials, steps,
boundary conditions, ...) is skipped. Keywords, parameter names and set names are
case-insensitive, as in Abaqus and CalculiX; a region keeps the spelling of its first
definition. ``**`` starts a comment line; ``*INCLUDE, INPUT=file`` is followed (relative to
the including file).

Keywords
--------
``*NODE`` [``NSET=``]
    ``id, x[, y[, z]]``. The mesh keeps the nodes used by the volume elements, in the
    order of the deck (its natural numbering); :attr:`InpMesh.node_ids` holds their
    Abaqus numbers.
``*ELEMENT, TYPE=...`` [``ELSET=``]
    ``id, n1, ..., nk``; a record continues on the next line while a line ends with a
    comma. Types: ``C3D8`` (and its 8-node variants ``C3D8R``, ``C3D8I``, ``C3D8H``,
    ``C3D8RH``, ``C3D8IH``) -> ``hexahedron``; ``C3D4`` (``C3D4H``) -> ``tetra``. Their
    node order is VTK's (:data:`~ddrom.mesh.reference.FACES`). Any other type (``C3D20``,
    ``C3D10``, shells, beams, surface elements, ...) is refused by name, and hexahedra
    and tetrahedra cannot be mixed. Only the geometry is taken: ddrom computes with its
    own element technology (the case's ``bbar``). CalculiX's ``C3D8`` is plain 2x2x2
    Gauss integration (``bbar = false`` reproduces it); Abaqus' ``C3D8`` is selectively
    reduced (mean dilatation, as ddrom's B-bar); ``C3D8R``/``C3D8I`` have no ddrom
    counterpart (a warning says so).
``*NSET, NSET=name`` [``GENERATE``] [``ELSET=name``]
    Data lines list node ids and names of node sets defined earlier, or with
    ``GENERATE`` ``first, last[, increment]``; ``ELSET=`` adds the nodes of an element
    set. Repeating a name adds to the set. -> a node set of the mesh (region).
``*ELSET, ELSET=name`` [``GENERATE``]
    The same with element ids and element-set names. -> :attr:`Mesh.cell_sets`
    (element sets are a namespace of their own in ddrom: not load regions).
``*SURFACE, NAME=name`` [``TYPE=ELEMENT``] (the default)
    ``element id or element set, face label`` with labels ``S1``..``S6`` (hexahedra) or
    ``S1``..``S4`` (tetrahedra), numbered as in Abaqus/CalculiX (:data:`FACE_LABELS`);
    without a label, the faces of those elements that lie on the boundary of the mesh.
    -> a facet set (boundary region, pressure and traction act on it). Faces inside the
    volume are dropped with a warning, like tagged interior faces of other formats.
``*SURFACE, NAME=name, TYPE=NODE``
    ``node id or node set[, weight]`` (weights ignored) -> a node set.

A surface and a node set of the same name (common: ``*NSET, NSET=top`` and
``*SURFACE, NAME=top``) become a facet set and a node set of one ddrom region, whose nodes
are their union (:meth:`Mesh.nodes_of`); a warning says when they differ.

Errors name the file and line: an unsupported element type or keyword structure, a
malformed data line, a node or element defined twice, and a set or surface that refers
to a node, element or set that does not exist (``*NSET, NSET=X, GENERATE`` over absent
ids says which set and which id).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from ddrom.mesh.boundary import Selector, add_regions, boundary_facets, check_orientation
from ddrom.mesh.mesh import Mesh
from ddrom.mesh.reference import FACES
from ddrom.parallel.errors import DdromError

_log = logging.getLogger("ddrom.mesh")

#: Element types read, by ddrom cell type; others are refused by name.
ELEMENT_TYPES = {"hexahedron": ("C3D8", "C3D8H", "C3D8R", "C3D8RH", "C3D8I", "C3D8IH"),
                 "tetra": ("C3D4", "C3D4H")}
_CELL_OF = {t: c for c, ts in ELEMENT_TYPES.items() for t in ts}
_N_NODES = {"hexahedron": 8, "tetra": 4}

#: Abaqus/CalculiX face labels: 0-based element nodes of face ``Sk`` (checked against
#: CalculiX 2.20: a pressure ``Pk`` loads exactly these nodes).
FACE_LABELS: dict[str, dict[str, tuple[int, ...]]] = {
    "hexahedron": {"S1": (0, 1, 2, 3), "S2": (4, 7, 6, 5), "S3": (0, 4, 5, 1), "S4": (1, 5, 6, 2),
                   "S5": (2, 6, 7, 3), "S6": (3, 7, 4, 0)},
    "tetra": {"S1": (0, 1, 2), "S2": (0, 3, 1), "S3": (1, 3, 2), "S4": (2, 3, 0)},
}


def _ddrom_face(cell_type: str) -> dict[str, int]:
    """ddrom's local face index (:data:`FACES`) of each Abaqus face label (same node sets)."""
    ours = {frozenset(f): i for i, f in enumerate(FACES[cell_type])}
    return {lab: ours[frozenset(nodes)] for lab, nodes in FACE_LABELS[cell_type].items()}


#: ddrom's local face of each Abaqus face label, per cell type.
FACE_OF_LABEL = {ct: _ddrom_face(ct) for ct in FACE_LABELS}


@dataclass
class InpMesh:
    """What :func:`read_inp` returns.

    Attributes
    ----------
    mesh : Mesh
        Cells in deck order, the used nodes in deck order, node sets (``*NSET`` and
        node-based surfaces), facet sets (element-based surfaces), cell sets (``*ELSET``).
    node_ids : (N,) int64
        Abaqus number of each mesh node.
    element_ids : (M,) int64
        Abaqus number of each cell.
    element_types : list of str
        The element types of the deck (e.g. ``["C3D8"]``).
    """

    mesh: Mesh
    node_ids: np.ndarray
    element_ids: np.ndarray
    element_types: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ lexing
@dataclass
class _Card:
    keyword: str                    # "*NODE", "*SOLID SECTION", ... (upper case, single blanks)
    params: dict[str, str]          # upper-case name -> value as written ('' for a flag)
    where: str                      # "file, line n"
    data: list[tuple[str, str]] = field(default_factory=list)   # (where, text) of the data lines


def _lines(path: Path, depth: int = 0) -> Iterator[tuple[str, str]]:
    """(where, text) of the meaningful lines of a deck, ``*INCLUDE`` followed."""
    if depth > 20:
        raise DdromError(f"{path}: *INCLUDE nested more than 20 levels deep (an include cycle?)")
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise DdromError(f"cannot read {path}: {exc}") from None
    for i, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("**"):
            continue
        where = f"{path}, line {i}"
        if line.startswith("*") and _keyword(line) == "*INCLUDE":
            params = _params(line, where)
            inc = params.get("INPUT", "")
            if not inc:
                raise DdromError(f"{where}: *INCLUDE without INPUT=")
            target = Path(inc) if Path(inc).is_absolute() else path.parent / inc
            if not target.is_file():
                raise DdromError(f"{where}: *INCLUDE, INPUT={inc}: no such file {target}")
            yield from _lines(target, depth + 1)
            continue
        yield where, line


def _keyword(line: str) -> str:
    return " ".join(line.split(",", 1)[0].upper().split())


def _params(line: str, where: str) -> dict[str, str]:
    out = {}
    for tok in line.split(",")[1:]:
        tok = tok.strip()
        if not tok:
            continue
        if "=" in tok:
            k, v = tok.split("=", 1)
            out[" ".join(k.upper().split())] = v.strip().strip('"').strip()
        else:
            out[" ".join(tok.upper().split())] = ""
    return out


def _cards(path: Path) -> list[_Card]:
    cards: list[_Card] = []
    for where, line in _lines(path):
        if line.startswith("*"):
            cards.append(_Card(_keyword(line), _params(line, where), where))
        elif cards:
            cards[-1].data.append((where, line))
        else:
            raise DdromError(f"{where}: data line {line!r} before any keyword")
    return cards


def _tokens(text: str) -> list[str]:
    toks = [t.strip() for t in text.split(",")]
    return toks[:-1] if toks and toks[-1] == "" else toks


def _records(card: _Card) -> Iterator[tuple[str, list[str]]]:
    """Data records of a card; a line ending with a comma continues on the next line."""
    where, acc = None, []
    for w, text in card.data:
        where = where or w
        acc += _tokens(text)
        if not text.rstrip().endswith(","):
            yield where, acc
            where, acc = None, []
    if acc:
        yield where, acc


def _int(tok: str, where: str, what: str) -> int:
    try:
        return int(tok)
    except ValueError:
        try:
            f = float(tok)
        except ValueError:
            raise DdromError(f"{where}: {what} {tok!r} is not an integer") from None
        if f != int(f):
            raise DdromError(f"{where}: {what} {tok!r} is not an integer") from None
        return int(f)


def _is_int(tok: str) -> bool:
    return bool(re.fullmatch(r"[+-]?\d+", tok.strip()))


def _name(card: _Card, key: str) -> str:
    v = card.params.get(key, "")
    if not v:
        raise DdromError(f"{card.where}: {card.keyword} needs {key}=<name>")
    return v


# ------------------------------------------------------------------------------ sets
class _Sets:
    """Named sets of ids, case-insensitive, keeping the first spelling."""

    def __init__(self, kind: str, spelling: dict[str, str]):
        self.kind = kind
        self.ids: dict[str, list[np.ndarray]] = {}
        self.spelling = spelling          # shared by all kinds: one name, one spelling

    def add(self, name: str, ids: np.ndarray) -> None:
        key = name.upper()
        self.spelling.setdefault(key, name)
        self.ids.setdefault(key, []).append(np.asarray(ids, dtype=np.int64))

    def get(self, name: str, where: str) -> np.ndarray:
        key = name.upper()
        if key not in self.ids:
            known = sorted(self.spelling[k] for k in self.ids)
            raise DdromError(f"{where}: {self.kind} set {name!r} is not defined before this line "
                             f"(defined: {known[:20]}{' ...' if len(known) > 20 else ''})")
        return np.concatenate(self.ids[key])

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for key, parts in self.ids.items():
            yield self.spelling[key], np.unique(np.concatenate(parts))


class _Ids:
    """Existence checks and row lookups of node or element numbers."""

    def __init__(self, ids: np.ndarray, what: str):
        self.what = what
        self.order = np.argsort(ids, kind="stable")
        self.sorted = ids[self.order]

    def _found(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self.sorted, ids)
        if not len(self.sorted):
            return pos, np.zeros(len(ids), bool)
        return pos, (pos < len(self.sorted)) & (self.sorted[np.minimum(pos, len(self.sorted) - 1)] == ids)

    def exist(self, ids: np.ndarray) -> bool:
        return bool(np.all(self._found(ids)[1]))

    def rows(self, ids: np.ndarray, where: str, context: str) -> np.ndarray:
        """Rows (definition order) of ``ids``; an undefined id is an error naming ``where`` and ``context``."""
        ids = np.asarray(ids, dtype=np.int64)
        pos, ok = self._found(ids)
        if not np.all(ok):
            bad = ids[~ok]
            raise DdromError(f"{where}: {context}: {self.what} {int(bad[0])} is not defined"
                             + (f" ({bad.size} undefined {self.what}s, e.g. {bad[:5].tolist()})" if bad.size > 1 else "")
                             + f"; define it with *{self.what.upper()} or remove it from the set")
        return self.order[pos]


def _generate(toks: list[str], where: str, context: str) -> np.ndarray:
    if len(toks) not in (2, 3):
        raise DdromError(f"{where}: {context}, GENERATE: expected 'first, last[, increment]', got {toks}")
    a, b = _int(toks[0], where, "first id"), _int(toks[1], where, "last id")
    inc = _int(toks[2], where, "increment") if len(toks) == 3 and toks[2] else 1
    if inc <= 0 or b < a:
        raise DdromError(f"{where}: {context}, GENERATE {a}, {b}, {inc}: needs first <= last and an "
                         "increment > 0")
    return np.arange(a, b + 1, inc, dtype=np.int64)


# ------------------------------------------------------------------------------ reader
def read_inp(path: str | Path, regions: Mapping[str, Selector] | None = None, *,
             check: bool = True) -> InpMesh:
    """Read the mesh, node sets, element sets and surfaces of an Abaqus/CalculiX deck.

    Parameters
    ----------
    path : str or Path
        The ``.inp`` file.
    regions : dict, optional
        Geometric regions ``{name: selector}`` added after those of the deck
        (:func:`~ddrom.mesh.boundary.add_regions`).
    check : bool
        Check that no cell is inverted or degenerate.

    Raises
    ------
    DdromError
        Naming the file and line (see the module doc).
    """
    p = Path(path)
    if not p.is_file():
        raise DdromError(f"mesh file not found: {p}")
    cards = _cards(p)

    # ---- nodes and elements (sets are resolved afterwards: they may precede them)
    node_id, node_x, node_where = [], [], []
    elems: list[tuple[str, str, np.ndarray, np.ndarray]] = []   # (type, where, ids, conn)
    for card in cards:
        kw = card.keyword
        if kw in ("*PART", "*INSTANCE", "*ASSEMBLY"):
            raise DdromError(f"{card.where}: {kw}: decks with parts and assemblies are not supported; "
                             "write a flat deck (Abaqus/CAE: model attributes, 'Do not use parts and "
                             "assemblies in input files')")
        if kw == "*NODE":
            sysv = card.params.get("SYSTEM", "R").upper()
            if sysv not in ("R", ""):
                raise DdromError(f"{card.where}: *NODE, SYSTEM={sysv}: only rectangular coordinates (SYSTEM=R)")
            ids, xs = [], []
            for where, toks in _records(card):
                if not 2 <= len(toks) <= 4:
                    raise DdromError(f"{where}: *NODE data {', '.join(toks)!r}: expected 'id, x, y, z'")
                ids.append(_int(toks[0], where, "node id"))
                try:
                    x = [float(t) if t else 0.0 for t in toks[1:]]
                except ValueError:
                    raise DdromError(f"{where}: *NODE data {', '.join(toks)!r}: a coordinate is not a number") from None
                xs.append(x + [0.0] * (3 - len(x)))
                node_where.append(where)
            node_id += ids
            node_x += xs
        elif kw == "*ELEMENT":
            etype = card.params.get("TYPE", "").upper()
            if not etype:
                raise DdromError(f"{card.where}: *ELEMENT without TYPE=")
            if etype not in _CELL_OF:
                raise DdromError(f"{card.where}: element type {etype} is not supported: ddrom reads the "
                                 f"solids {', '.join(ELEMENT_TYPES['hexahedron'])} (8-node hexahedra) and "
                                 f"{', '.join(ELEMENT_TYPES['tetra'])} (4-node tetrahedra)")
            k = _N_NODES[_CELL_OF[etype]]
            ids, conn = [], []
            for where, toks in _records(card):
                if len(toks) != k + 1:
                    raise DdromError(f"{where}: {etype} element {toks[0] if toks else ''}: expected an id and "
                                     f"{k} nodes, got {len(toks) - 1} nodes")
                ids.append(_int(toks[0], where, "element id"))
                conn.append([_int(t, where, "node id") for t in toks[1:]])
            elems.append((etype, card.where, np.array(ids, dtype=np.int64),
                          np.array(conn, dtype=np.int64).reshape(-1, k)))
    if not elems or not any(len(e[2]) for e in elems):
        raise DdromError(f"mesh file {p} has no elements (*ELEMENT)")
    types = sorted({e[0] for e in elems})
    cell_types = sorted({_CELL_OF[t] for t in types})
    if len(cell_types) > 1:
        raise DdromError(f"mesh file {p} mixes hexahedra and tetrahedra ({', '.join(types)}): ddrom needs one "
                         "cell type")
    cell_type = cell_types[0]
    odd = [t for t in types if t not in ("C3D8", "C3D4", "C3D8H", "C3D4H")]
    if odd:
        _log.warning("mesh file %s: element type(s) %s are read as plain %s cells; ddrom integrates them "
                     "with its own element (2x2x2 Gauss points, B-bar per the case's 'bbar'), not with "
                     "reduced integration or incompatible modes", p, odd, cell_type)

    node_ids = np.array(node_id, dtype=np.int64)
    X = np.array(node_x, dtype=float).reshape(-1, 3)
    dup = _first_duplicate(node_ids)
    if dup is not None:
        i, j = dup
        raise DdromError(f"{node_where[j]}: node {int(node_ids[j])} is defined twice (first at {node_where[i]})")
    elem_ids = np.concatenate([e[2] for e in elems])
    conn_ids = np.concatenate([e[3] for e in elems])
    dup = _first_duplicate(elem_ids)
    if dup is not None:
        raise DdromError(f"mesh file {p}: element {int(elem_ids[dup[1]])} is defined twice")
    nodes = _Ids(node_ids, "node")
    elements = _Ids(elem_ids, "element")
    conn_rows = np.empty_like(conn_ids)
    start = 0
    for etype, where, ids, conn in elems:
        conn_rows[start:start + len(ids)] = nodes.rows(conn.ravel(), where,
                                                       f"*ELEMENT, TYPE={etype}").reshape(conn.shape)
        start += len(ids)

    # ---- sets and surfaces, in deck order
    # A name is case-insensitive and keeps its first spelling whatever it names (an *NSET
    # "Top" and a *SURFACE "TOP" become the one ddrom region "Top").
    spelling: dict[str, str] = {}
    nsets, elsets = _Sets("node", spelling), _Sets("element", spelling)
    surfaces: list[tuple[str, str, str, list]] = []        # (name, type, where, [(where, toks)])
    for card in cards:
        kw = card.keyword
        if kw == "*NODE" and card.params.get("NSET"):
            nsets.add(card.params["NSET"], np.array([_int(t[0], w, "node id") for w, t in _records(card)],
                                                    dtype=np.int64))
        elif kw == "*ELEMENT" and card.params.get("ELSET"):
            elsets.add(card.params["ELSET"], np.array([_int(t[0], w, "element id") for w, t in _records(card)],
                                                      dtype=np.int64))
        elif kw in ("*NSET", "*ELSET"):
            is_n = kw == "*NSET"
            key = "NSET" if is_n else "ELSET"
            if "INSTANCE" in card.params:
                raise DdromError(f"{card.where}: {kw}, INSTANCE=: decks with parts and assemblies are not "
                                 "supported (write a flat deck)")
            name = _name(card, key)
            ctx = f"{kw}, {key}={name}"
            target, ids_of = (nsets, nodes) if is_n else (elsets, elements)
            parts = []
            if is_n and card.params.get("ELSET"):
                e = elements.rows(elsets.get(card.params["ELSET"], card.where), card.where, ctx)
                parts.append(node_ids[np.unique(conn_rows[e])])
            for where, toks in _records(card):
                if "GENERATE" in card.params:
                    parts.append(_generate(toks, where, ctx))
                    continue
                for t in toks:
                    if not t:
                        continue
                    parts.append(np.array([_int(t, where, "id")]) if _is_int(t) else target.get(t, where))
            ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
            _check_ids(ids_of, ids, card, ctx)
            target.add(name, ids)
        elif kw == "*SURFACE":
            stype = card.params.get("TYPE", "ELEMENT").upper()
            if stype not in ("ELEMENT", "NODE"):
                raise DdromError(f"{card.where}: *SURFACE, TYPE={stype} is not supported (ELEMENT or NODE)")
            name = _name(card, "NAME")
            surfaces.append((spelling.setdefault(name.upper(), name), stype, card.where, list(_records(card))))

    # ---- the ddrom mesh: used nodes in deck order, cells in deck order
    used = np.unique(conn_rows)
    new_of_old = np.full(len(node_ids), -1, dtype=np.int64)
    new_of_old[used] = np.arange(used.size)
    mesh = Mesh(X[used], new_of_old[conn_rows], cell_type)

    for name, ids in nsets.items():
        rows = new_of_old[nodes.rows(ids, str(p), f"*NSET, NSET={name}")]
        if np.any(rows < 0):
            _log.warning("mesh file %s: node set %r: %d node(s) belong to no element, ignored", p, name,
                         int((rows < 0).sum()))
        rows = rows[rows >= 0]
        if rows.size:
            mesh.node_sets[name] = np.unique(rows)
        else:
            _log.warning("mesh file %s: node set %r has no node of an element: not a region", p, name)
    for name, ids in elsets.items():
        mesh.cell_sets[name] = np.unique(elements.rows(ids, str(p), f"*ELSET, ELSET={name}"))

    if surfaces:
        _add_surfaces(mesh, surfaces, nsets, elsets, nodes, elements, new_of_old, p)
    if regions:
        add_regions(mesh, regions)
    if check:
        try:
            check_orientation(mesh)
        except DdromError as exc:
            raise DdromError(f"mesh file {p}: {exc}") from None
    return InpMesh(mesh, node_ids[used], elem_ids, types)


def _first_duplicate(ids: np.ndarray) -> tuple[int, int] | None:
    """Positions (first, second) of the first repeated value, or None."""
    if ids.size < 2:
        return None
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    rep = np.flatnonzero(s[1:] == s[:-1])
    if not rep.size:
        return None
    a, b = order[rep], order[rep + 1]
    j = int(np.argmin(b))
    return int(a[j]), int(b[j])


def _check_ids(ids_of: _Ids, ids: np.ndarray, card: _Card, ctx: str) -> None:
    """Every id of a set exists; the message names the set, the id and the data line giving it."""
    if ids_of.exist(ids):
        return
    for where, toks in _records(card):          # the first data line with an undefined id
        if "GENERATE" in card.params:
            line_ids, how = _generate(toks, where, ctx), f" (GENERATE {', '.join(toks)})"
        else:
            line_ids, how = np.array([_int(t, where, "id") for t in toks if _is_int(t)], dtype=np.int64), ""
        ids_of.rows(line_ids, where, ctx + how)
    ids_of.rows(ids, card.where, ctx)            # from ELSET= or a referenced set


def _add_surfaces(mesh: Mesh, surfaces: list, nsets: _Sets, elsets: _Sets, nodes: _Ids, elements: _Ids,
                  new_of_old: np.ndarray, path: Path) -> None:
    ct = mesh.cell_type
    labels = FACE_OF_LABEL[ct]
    n_faces = len(FACES[ct])
    bnd = boundary_facets(mesh)
    bkey = np.sort(bnd[:, 0] * n_faces + bnd[:, 1])
    facet_parts: dict[str, list[np.ndarray]] = {}
    node_parts: dict[str, list[np.ndarray]] = {}
    for name, stype, where0, records in surfaces:
        if stype == "NODE":
            for where, toks in records:
                ctx = f"*SURFACE, NAME={name}, TYPE=NODE"
                ref = toks[0] if toks else ""
                ids = np.array([_int(ref, where, "node id")]) if _is_int(ref) else nsets.get(ref, where)
                rows = new_of_old[nodes.rows(ids, where, ctx)]
                node_parts.setdefault(name, []).append(rows[rows >= 0])
            continue
        for where, toks in records:
            ctx = f"*SURFACE, NAME={name}"
            ref = toks[0] if toks else ""
            ids = np.array([_int(ref, where, "element id")]) if _is_int(ref) else elsets.get(ref, where)
            cells = elements.rows(ids, where, ctx)
            label = toks[1].upper() if len(toks) > 1 and toks[1] else ""
            if label:
                if label not in labels:
                    raise DdromError(f"{where}: {ctx}: face label {toks[1]!r} is not one of "
                                     f"{sorted(labels)} ({ct} elements)")
                pairs = np.column_stack([cells, np.full(cells.size, labels[label])])
            else:           # no label: the faces of these elements on the mesh boundary
                pairs = bnd[np.isin(bnd[:, 0], cells)]
            facet_parts.setdefault(name, []).append(pairs)
    for name, parts in facet_parts.items():
        fs = np.unique(np.concatenate(parts).reshape(-1, 2), axis=0)
        k = fs[:, 0] * n_faces + fs[:, 1]
        inside = ~np.isin(k, bkey)
        if inside.any():
            _log.warning("mesh file %s: %d face(s) of surface %r lie inside the volume, ignored", path,
                         int(inside.sum()), name)
            fs = fs[~inside]
        if not fs.size:
            _log.warning("mesh file %s: surface %r has no boundary face: not a region", path, name)
            continue
        mesh.facet_sets[name] = fs
        if name in mesh.node_sets:
            _warn_if_different(mesh, name, np.unique(mesh.facet_nodes(name)), mesh.node_sets[name], path,
                               "surface", "node set")
    for name, parts in node_parts.items():
        rows = np.unique(np.concatenate(parts))
        if not rows.size:
            _log.warning("mesh file %s: node surface %r has no node of an element: not a region", path, name)
            continue
        if name in mesh.node_sets:
            _warn_if_different(mesh, name, rows, mesh.node_sets[name], path, "node surface", "node set")
            rows = np.union1d(rows, mesh.node_sets[name])
        mesh.node_sets[name] = rows


def _warn_if_different(mesh: Mesh, name: str, a: np.ndarray, b: np.ndarray, path: Path, wa: str, wb: str) -> None:
    if not np.array_equal(np.unique(a), np.unique(b)):
        _log.warning("mesh file %s: %s %r and %s %r of the same name have different nodes: the ddrom region "
                     "%r has both (its nodes are their union, its faces the surface's)", path, wa, name, wb,
                     name, name)


__all__ = ["read_inp", "InpMesh", "ELEMENT_TYPES", "FACE_LABELS", "FACE_OF_LABEL"]
