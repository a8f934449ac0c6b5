"""Reading structure files and datasets into raw records, without touching the store.

A `RawRecord` is one structure-to-be (file text or a dict) with where it came from and the labels
that ride along. Parsing text into a pymatgen Structure happens later, in `parse`, so ingest can
spread it over worker processes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from pymatgen.core import Element, Lattice, Structure

from qadb import fidelity as fid
from qadb.errors import InputError
from qadb.store import properties
from qadb.store.identity import Cell

STRUCTURE_FORMATS = ("cif", "poscar", "json", "extxyz", "csv")


@dataclass(frozen=True)
class LabelSpec:
    """How one CSV column becomes a label: ``COLUMN=PROPERTY@FIDELITY[:UNITS]``."""

    column: str
    property: str
    fidelity: str
    units: str | None = None
    code: str = "dataset"
    parameters: dict = field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def parse(cls, text: str) -> "LabelSpec":
        try:
            column, rest = text.split("=", 1)
            prop, rest = rest.split("@", 1)
        except ValueError:
            raise InputError(f"label spec {text!r} must look like COLUMN=PROPERTY@FIDELITY[:UNITS]") from None
        fidelity_name, _, units = rest.partition(":")
        properties.get(prop.strip())
        return cls(column.strip(), prop.strip(), fid.canonical(fidelity_name), units.strip() or None)


@dataclass
class RawLabel:
    property: str
    value: float
    units: str | None
    fidelity: str
    code: str = "dataset"
    code_version: str | None = None
    parameters: dict = field(default_factory=dict)
    uncertainty: float | None = None
    restore: dict | None = None  # a label exported by qadb, restored as it was


@dataclass
class RawRecord:
    """One structure to ingest: its text or dict, where it came from and its labels."""

    where: str
    fmt: str
    payload: str | dict
    source: str
    source_id: str | None = None
    labels: list[RawLabel] = field(default_factory=list)
    experimental: bool = False
    restore: dict | None = None  # a structure document exported by qadb, restored as it was

    def text_key(self) -> str:
        """Alias key of the exact input text, so seeing it again needs no parsing."""
        text = self.payload if isinstance(self.payload, str) else json.dumps(self.payload, sort_keys=True)
        return "t:" + hashlib.sha256(f"{self.fmt}\n{text}".encode()).hexdigest()[:40]


_CELL_KEYS = ("_cell_length_a", "_cell_length_b", "_cell_length_c", "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma")
_SITE_KEYS = ("_atom_site_type_symbol", "_atom_site_label", "_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z")
_THIRDS = (1 / 3, 2 / 3)


@lru_cache(maxsize=None)
def _site_order_key(symbol: str) -> tuple[float, str] | None:
    """pymatgen orders sites by (electronegativity, symbol); None where it has no electronegativity
    (noble gases, superheavy elements), whose order then depends on pymatgen's sort internals."""
    if not Element.is_valid_symbol(symbol):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = float(Element(symbol).X)
    return None if math.isnan(x) else (x, symbol)


def _loops(lines: list[str]) -> Iterator[tuple[list[str], list[str]] | tuple[str, str]]:
    """(names, body lines) for each ``loop_`` and (key, value) for each single-line item."""
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if line == "loop_":
            names = []
            while i < len(lines) and lines[i].strip().startswith("_"):
                names.append(lines[i].strip())
                i += 1
            body = []
            while i < len(lines) and lines[i].strip() and not lines[i].strip().startswith(("_", "loop_", "data_", "#")):
                body.append(lines[i].strip())
                i += 1
            yield names, body
        elif line.startswith("_"):
            key, *value = line.split(None, 1)
            yield key, value[0].strip() if value else ""


def fast_cif_cell(text: str) -> Cell | None:
    """Read the simple P1 CIFs that pymatgen and most databases write, ~10x faster than CifParser.

    Returns None for anything else (symmetry to apply, partial or missing occupancies, oxidation
    states, uncertainties, quoted or multi-line values, several blocks, elements pymatgen cannot
    sort by electronegativity), which then goes through pymatgen's parser. On what it accepts it
    reproduces CifParser exactly: the same lattice, coordinates (1/3 and 2/3 snapped, wrapped into
    the cell), site order and labels (tested on every staged dataset).
    """
    if text.count("data_") != 1:
        return None
    cell: dict[str, float] = {}
    ops: list[str] | None = None  # the symmetry operations as written, without their ids
    header: list[str] = []
    rows: list[list[str]] = []
    for key, value in _loops(text.splitlines()):
        if isinstance(key, list):
            if any(n.endswith(("_equiv_pos_as_xyz", "_operation_xyz")) for n in key):
                ops = [line.split(None, len(key) - 1)[-1] for line in value]
            elif any(n.startswith("_atom_site_fract") for n in key):
                header, rows = key, [b.split() for b in value]
        elif key in _CELL_KEYS:
            try:
                cell[key] = float(value)
            except ValueError:
                return None
        elif key in ("_symmetry_space_group_name_H-M", "_space_group_name_H-M_alt"):
            if value.strip("'\"").replace(" ", "") != "P1":
                return None
    if len(cell) != 6 or not rows or (ops is not None and [o.strip("'\"").replace(" ", "") for o in ops] != ["x,y,z"]):
        return None
    if "_atom_site_occupancy" not in header or any(k not in header for k in _SITE_KEYS):
        return None
    occ, sym_col, label_col = (header.index(k) for k in ("_atom_site_occupancy", "_atom_site_type_symbol", "_atom_site_label"))
    xyz_cols = [header.index(k) for k in _SITE_KEYS[2:]]
    sites = []
    for r in rows:
        if len(r) != len(header) or r[occ] not in ("1", "1.0", "1.00", "1.000") or _site_order_key(r[sym_col]) is None:
            return None
        try:
            xyz = [float(r[c]) for c in xyz_cols]
        except ValueError:
            return None
        for j, x in enumerate(xyz):
            for third in _THIRDS:  # CifParser snaps finite-precision thirds (1e-4 relative)
                if math.isclose(x / third, 1, abs_tol=1e-4, rel_tol=0):
                    xyz[j] = third
        xyz = [x - math.floor(x) for x in xyz]  # and wraps into the cell this way
        sites.append((_site_order_key(r[sym_col]), r[sym_col], r[label_col], xyz))
    sites.sort(key=lambda s: s[0])  # stable, as Structure.get_sorted_structure
    lattice = Lattice.from_parameters(*(cell[k] for k in _CELL_KEYS))
    return Cell(lattice, [s[1] for s in sites], np.array([s[3] for s in sites]), [s[2] for s in sites])


def read_structure(fmt: str, payload: str | dict, *, fast: bool = True) -> Structure | Cell:
    """The crystal in a record's payload: a `Cell` when the fast CIF reader takes it (and `fast`),
    else a pymatgen Structure; `InputError` (without the record's location) if it cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == "dict":
                return Structure.from_dict(payload)
            if fmt == "cif":
                return (fast and fast_cif_cell(payload)) or Structure.from_str(payload, fmt="cif")
            if fmt == "poscar":
                return Structure.from_str(payload, fmt="poscar")
    except InputError:
        raise
    except Exception as exc:  # pymatgen raises many types for broken text
        first = str(exc).strip().split("\n")[0] or type(exc).__name__
        raise InputError(f"cannot read {fmt.upper()}: {first}") from None
    raise InputError(f"unsupported format {fmt!r}")


def parse(record: RawRecord) -> Structure:
    """The record's structure; `InputError` naming the record if it cannot be read."""
    try:
        out = read_structure(record.fmt, record.payload)
    except InputError as exc:
        raise InputError(f"{record.where}: {exc}") from None
    return out.to_structure() if isinstance(out, Cell) else out


def _read_text(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read file ({exc})") from None


def detect_format(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".cif"):
        return "cif"
    if name.endswith((".vasp", ".poscar")) or name.startswith(("poscar", "contcar")):
        return "poscar"
    if name.endswith(".json"):
        return "json"
    if name.endswith((".extxyz", ".xyz")):
        return "extxyz"
    if name.endswith(".csv"):
        return "csv"
    raise InputError(f"{path}: cannot tell the format from the name; pass --format ({', '.join(STRUCTURE_FORMATS)})")


def read_cif(path: Path, source: str) -> Iterator[RawRecord]:
    """One record per ``data_`` block, so multi-structure CIFs report the failing block."""
    text = _read_text(path)
    starts = [m.start() for m in re.finditer(r"(?m)^data_", text)]
    if len(starts) <= 1:
        yield RawRecord(f"{path}", "cif", text, source, source_id=path.stem)
        return
    for i, (a, b) in enumerate(zip(starts, [*starts[1:], len(text)])):
        yield RawRecord(f"{path}:block {i + 1}", "cif", text[a:b], source, source_id=f"{path.stem}#{i + 1}")


def read_poscar(path: Path, source: str) -> Iterator[RawRecord]:
    yield RawRecord(f"{path}", "poscar", _read_text(path), source, source_id=path.stem)


def read_extxyz(path: Path, source: str) -> Iterator[RawRecord]:
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    try:
        frames = read(io.StringIO(_read_text(path)), index=":", format="extxyz")
    except Exception as exc:
        raise InputError(f"{path}: cannot read extxyz: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    for i, atoms in enumerate(frames):
        if not atoms.pbc.all():
            raise InputError(f"{path}:frame {i + 1}: not periodic in all three directions")
        struct = AseAtomsAdaptor.get_structure(atoms)
        yield RawRecord(f"{path}:frame {i + 1}", "dict", struct.as_dict(), source, source_id=f"{path.stem}#{i + 1}")


def read_json(path: Path, source: str) -> Iterator[RawRecord]:
    """pymatgen Structure dicts, MP-style documents with a ``structure`` key, lists of either, or a
    qadb export (``{"meta": ..., "data": [...]}``), whose documents are restored as they were."""
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if isinstance(data, dict) and "data" in data and isinstance(data["data"], list):
        items = data["data"]
    elif isinstance(data, list):
        items = data
    else:
        items = [data]
    for i, item in enumerate(items):
        where = f"{path}:item {i + 1}"
        if not isinstance(item, dict):
            raise InputError(f"{where}: expected an object, got {type(item).__name__}")
        if item.get("@class") == "Structure":
            yield RawRecord(where, "dict", item, source, source_id=f"{path.stem}#{i + 1}")
            continue
        if not isinstance(item.get("structure"), dict):
            raise InputError(f"{where}: no 'structure' object (expected a pymatgen Structure dict)")
        restore = item if str(item.get("material_id", "")).startswith("qadb-") and "labels" in item else None
        labels = [_restored_label(where, lab) for lab in item.get("labels", [])] if restore else []
        yield RawRecord(
            where, "dict", item["structure"], source,
            source_id=str(item["material_id"]) if item.get("material_id") else f"{path.stem}#{i + 1}",
            labels=labels, experimental=bool(item.get("experimental", False)), restore=restore,
        )


def _restored_label(where: str, lab: dict) -> RawLabel:
    try:
        return RawLabel(
            property=lab["property"], value=lab["value"], units=lab["units"], fidelity=lab["fidelity"],
            code=lab.get("code", "dataset"), code_version=lab.get("code_version"),
            parameters=lab.get("parameters", {}), uncertainty=lab.get("uncertainty"), restore=lab,
        )
    except KeyError as exc:
        raise InputError(f"{where}: label is missing field {exc.args[0]!r}") from None


def read_csv(
    path: Path,
    source: str,
    *,
    cif_column: str = "cif",
    id_column: str | None = None,
    id_prefix: str = "",
    labels: list[LabelSpec] = (),
    theoretical_column: str | None = None,
    row_filter=None,
) -> Iterator[RawRecord]:
    """A CSV (optionally gzipped) with one CIF string per row and label columns."""
    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise InputError(f"{path}: cannot read CSV ({str(exc).splitlines()[0]})") from None
    missing = [c for c in [cif_column, id_column, *(s.column for s in labels)] if c and c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}; has {', '.join(map(str, df.columns))}")
    if id_column is None and "material_id" in df.columns:
        id_column = "material_id"
    if row_filter is not None:
        df = df[row_filter(df)]
    # whole columns as lists: DataFrame.iterrows builds a Series per row, which cost more than the rest of reading
    cifs = df[cif_column].tolist()
    ids = df[id_column].tolist() if id_column else None
    values = [df[spec.column].tolist() for spec in labels]
    theoretical = df[theoretical_column].tolist() if theoretical_column else None
    for i, idx in enumerate(df.index.tolist()):
        where = f"{path.name}:row {idx + 2}"  # +2: header line and 1-based lines
        text = cifs[i]
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{where}: empty {cif_column!r} cell")
        raw_labels = []
        for spec, column in zip(labels, values):
            value = column[i]
            if pd.isna(value):
                continue
            raw_labels.append(
                RawLabel(spec.property, value, spec.units, spec.fidelity, code=spec.code, parameters=dict(spec.parameters))
            )
        sid = f"{id_prefix}{ids[i]}" if id_column else f"{source}:{idx}"
        experimental = bool(theoretical_column) and not bool(theoretical[i])
        yield RawRecord(where, "cif", text, source, source_id=sid, labels=raw_labels, experimental=experimental)


def read_path(path: Path, fmt: str | None = None, source: str | None = None, **csv_options) -> Iterator[RawRecord]:
    """Records from one file of any supported format."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    fmt = fmt or detect_format(path)
    source = source or path.name
    readers = {"cif": read_cif, "poscar": read_poscar, "json": read_json, "extxyz": read_extxyz}
    if fmt == "csv":
        return read_csv(path, source, **csv_options)
    if fmt not in readers:
        raise InputError(f"{path}: unsupported format {fmt!r}; use one of {', '.join(STRUCTURE_FORMATS)}")
    return readers[fmt](path, source)
