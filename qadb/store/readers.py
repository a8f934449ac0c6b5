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
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from pymatgen.core import Element, Lattice, Structure

from qadb import fidelity as fid
from qadb.errors import InputError
from qadb.store import properties

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


def _fast_p1_cif(text: str) -> Structure | None:
    """Parse the simple P1 CIFs that pymatgen and most databases write, ~10x faster than CifParser.

    Returns None for anything else (symmetry operations, occupancies, oxidation states,
    uncertainties, quoted values, several blocks), which then goes through pymatgen's parser.
    The two give identical structures on such files (tested on MP-20).
    """
    if text.count("data_") != 1 or "(" in text.split("loop_", 1)[0]:
        return None
    cell: dict[str, float] = {}
    ops: list[str] = []
    header: list[str] = []
    rows: list[list[str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if line.startswith(_CELL_KEYS):
            key, _, value = line.partition(" ")
            try:
                cell[key] = float(value.strip())
            except ValueError:
                return None
        elif line.startswith("_symmetry_space_group_name_H-M") or line.startswith("_space_group_name_H-M_alt"):
            if line.split(None, 1)[1].strip().strip("'\"").replace(" ", "") != "P1":
                return None
        elif line == "loop_":
            names = []
            while i < len(lines) and lines[i].strip().startswith("_"):
                names.append(lines[i].strip())
                i += 1
            body = []
            while i < len(lines) and lines[i].strip() and not lines[i].strip().startswith(("_", "loop_", "data_", "#")):
                body.append(lines[i].strip())
                i += 1
            if any(n.endswith(("_equiv_pos_as_xyz", "_operation_xyz")) for n in names):
                ops = body
            elif any(n.startswith("_atom_site_fract") for n in names):
                header, rows = names, [b.split() for b in body]
    if len(cell) != 6 or not rows or len(ops) > 1 or (ops and ops[0].split(None, 1)[-1].strip("'\"").replace(" ", "") != "x,y,z"):
        return None
    try:
        col = {name: header.index(name) for name in ("_atom_site_type_symbol", "_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z")}
    except ValueError:
        return None
    occ = header.index("_atom_site_occupancy") if "_atom_site_occupancy" in header else None
    species, coords = [], []
    for r in rows:
        if len(r) != len(header) or (occ is not None and r[occ] not in ("1", "1.0", "1.00", "1.000")):
            return None
        sym = r[col["_atom_site_type_symbol"]]
        if not Element.is_valid_symbol(sym):
            return None
        species.append(sym)
        try:
            coords.append([float(r[col[k]]) for k in ("_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z")])
        except ValueError:
            return None
    # as CifParser does: coordinates within 1e-4 (relative) of 1/3 or 2/3 are finite-precision thirds
    for xyz in coords:
        for j, x in enumerate(xyz):
            for third in (1 / 3, 2 / 3):
                if abs(x / third - 1) <= 1e-4:
                    xyz[j] = third
    lattice = Lattice.from_parameters(*(cell[k] for k in _CELL_KEYS))
    coords = np.mod(np.array(coords), 1.0)  # CifParser wraps into the cell too
    return Structure(lattice, species, coords).get_sorted_structure()  # site order as CifParser gives


def parse(record: RawRecord) -> Structure:
    """The record's structure; `InputError` naming the record if it cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if record.fmt == "dict":
                return Structure.from_dict(record.payload)
            if record.fmt == "cif":
                return _fast_p1_cif(record.payload) or Structure.from_str(record.payload, fmt="cif")
            if record.fmt == "poscar":
                return Structure.from_str(record.payload, fmt="poscar")
    except InputError:
        raise
    except Exception as exc:  # pymatgen raises many types for broken text
        first = str(exc).strip().split("\n")[0] or type(exc).__name__
        raise InputError(f"{record.where}: cannot read {record.fmt.upper()}: {first}") from None
    raise InputError(f"{record.where}: unsupported format {record.fmt!r}")


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
    for idx, row in df.iterrows():
        where = f"{path.name}:row {idx + 2}"  # +2: header line and 1-based lines
        text = row[cif_column]
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{where}: empty {cif_column!r} cell")
        raw_labels = []
        for spec in labels:
            value = row[spec.column]
            if pd.isna(value):
                continue
            raw_labels.append(
                RawLabel(spec.property, value, spec.units, spec.fidelity, code=spec.code, parameters=dict(spec.parameters))
            )
        sid = f"{id_prefix}{row[id_column]}" if id_column else f"{source}:{idx}"
        experimental = bool(theoretical_column) and not bool(row[theoretical_column])
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
