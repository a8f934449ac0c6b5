"""What identifies a structure in the store: composition keys, symmetry, hashes, material ids.

`analyse` turns a parsed pymatgen Structure into the plain fields a `StructureDoc` stores;
`analyse_cell` does the same for a `Cell` (arrays read straight from simple CIF text), which skips
building pymatgen Site objects and gives the same fields. Both run in worker processes during
ingest, so they take and return plain data only. Symmetry (moyopy, the costly part) can be left
out and filled in later with `symmetry`, so ingest computes it once per distinct structure.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import moyopy
from pymatgen.core import Composition, Element, Lattice, Structure

from qadb.errors import InputError

SYMPREC = 0.1  # Å; seed 000 Algorithm 3 clusters by (spglib's) symmetry at 0.1 Å
MIN_DISTANCE = 0.5  # Å; closer atoms are a broken structure, not a material
MATERIAL_ID_PREFIX = "qadb-"
# moyopy logs a warning for every supercell whose lattice some primitive-cell operations do not map onto
# itself; the orbits stay right (they use the primitive cell's symmetry), so the warning is noise in ingest output.
logging.getLogger("moyo").setLevel(logging.ERROR)


@dataclass
class Identity:
    """Store keys of one structure."""

    structure: dict
    formula: str
    formula_pretty: str
    chemsys: str
    elements: list[str]
    nsites: int
    spacegroup: int | None
    spacegroup_symbol: str | None
    orbits: str
    volume: float
    volume_per_atom: float
    density: float
    struct_hash: str

    @property
    def dedupe_key(self) -> str:
        """The symmetry cluster of Algorithm 3: formula, space group and orbit sizes per element."""
        return f"{self.formula_pretty}|{self.spacegroup}|{self.orbits}"

    @property
    def material_id(self) -> str:
        return MATERIAL_ID_PREFIX + self.struct_hash[:12]

    def document_fields(self) -> dict:
        """The `StructureDoc` fields that follow from the structure alone (ingest and jobs add the rest)."""
        return dict(
            structure=self.structure, formula=self.formula, formula_pretty=self.formula_pretty,
            chemsys=self.chemsys, elements=self.elements, nelements=len(self.elements), nsites=self.nsites,
            spacegroup=self.spacegroup, spacegroup_symbol=self.spacegroup_symbol, volume=self.volume,
            volume_per_atom=self.volume_per_atom, density=self.density, dedupe_key=self.dedupe_key,
            struct_hash=self.struct_hash,
        )


@dataclass
class Cell:
    """An ordered crystal as arrays (one element per site, occupancy 1), in pymatgen's site order.

    What a fast CIF reader produces instead of a pymatgen Structure: building Site objects and
    their dicts costs more than parsing the text. `as_dict` and `to_structure` give exactly what
    pymatgen's CifParser gives for the same text, so nothing stored depends on which reader ran.
    """

    lattice: Lattice
    symbols: list[str]
    frac: np.ndarray
    labels: list[str]

    def as_dict(self) -> dict:
        """`Structure.as_dict()` of the same crystal, built without Site objects."""
        lattice = self.lattice.as_dict(verbosity=1)
        del lattice["@module"], lattice["@class"]
        matrix = self.lattice.matrix
        sites = [
            {"species": [{"element": sym, "occu": 1.0}], "abc": f.tolist(), "properties": {}, "label": label,
             "xyz": np.dot(f, matrix).tolist()}  # one row at a time, as each pymatgen site computes it
            for sym, f, label in zip(self.symbols, self.frac, self.labels)
        ]
        return {"@module": "pymatgen.core.structure", "@class": "Structure", "charge": 0.0, "lattice": lattice,
                "properties": {}, "sites": sites}

    def to_structure(self) -> Structure:
        return Structure(self.lattice, [{sym: 1.0} for sym in self.symbols], self.frac, labels=list(self.labels))


def _check_geometry(lattice: Lattice, frac: np.ndarray) -> None:
    volume = lattice.volume
    if volume <= 0.1 or not np.isfinite(volume):
        raise InputError(f"cell volume {volume:.3g} Å^3 is not physical")
    if len(frac) > 1:
        dmin = float(np.min(lattice.get_all_distances(frac, frac) + np.eye(len(frac)) * 1e9))
        if dmin < MIN_DISTANCE:
            raise InputError(f"atoms overlap (closest pair {dmin:.2f} Å < {MIN_DISTANCE} Å)")


def check_structure(structure: Structure) -> None:
    """Reject what the store cannot hold: unknown elements, disorder, empty or overlapping cells."""
    if len(structure) == 0:
        raise InputError("structure has no sites")
    for site in structure:
        for sp in site.species:
            if not isinstance(getattr(sp, "element", sp), Element):
                raise InputError(f"unknown element {str(sp)!r}")
    if not structure.is_ordered:
        raise InputError("partial occupancy is not supported (order the structure first)")
    _check_geometry(structure.lattice, structure.frac_coords)


def _hash(lattice: Lattice, symbols: list[str], frac: np.ndarray) -> str:
    abc = [round(x, 4) for x in lattice.abc]
    angles = [round(x, 3) for x in lattice.angles]
    frac = np.round(np.mod(frac, 1.0), 4) % 1.0
    sites = sorted((sym, *map(float, f)) for sym, f in zip(symbols, frac))
    text = json.dumps([abc, angles, sites], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def struct_hash(structure: Structure) -> str:
    """sha256 of a rotation-free, order-free text form of the cell (lattice parameters + sorted sites).

    The same file text always gives the same hash, so a re-ingest addresses the same document.
    Different settings of one crystal give different hashes; deduplication handles those.
    """
    return _hash(structure.lattice, [sp.symbol for sp in structure.species], structure.frac_coords)


SymmetryCell = tuple[np.ndarray, np.ndarray, list[int], list[str]]  # matrix, fractional coords, numbers, symbols


def symmetry(cell: SymmetryCell, symprec: float = SYMPREC) -> tuple[int | None, str | None, str]:
    """(space-group number, Hermann-Mauguin symbol, orbit fingerprint) at `symprec`, from moyopy.

    moyopy is spglib's algorithm reimplemented by spglib's maintainers, five times faster here and
    agreeing on the space group for 99.35 % of the staged structures (docs/store.md, "Symmetry").
    The fingerprint lists, per element, the sizes of its symmetry orbits in the primitive cell
    (e.g. ``Cl:1,Na:1``; ``O:3`` for perovskite oxygen). Unlike Wyckoff letters it does not depend on
    the origin or axis choice of the standard setting (perovskite A/B on 1a/1b or 1b/1a), and it is
    the same for primitive, conventional and supercell descriptions, so two descriptions of one
    crystal at the same tolerance share it.
    """
    matrix, frac, numbers, symbols = cell
    try:
        data = moyopy.MoyoDataset(moyopy.Cell(np.asarray(matrix).tolist(), np.asarray(frac).tolist(),
                                              [int(z) for z in numbers]), symprec=symprec)
    except (ValueError, RuntimeError):  # moyopy finds no consistent symmetry at this tolerance
        return None, None, ""
    scale = len(symbols) // len(data.prim_std_cell.numbers)
    sizes: dict[int, int] = {}
    for rep in data.orbits:
        sizes[rep] = sizes.get(rep, 0) + 1
    per_element: dict[str, list[int]] = {}
    for rep, n in sizes.items():
        per_element.setdefault(symbols[rep], []).append(n // scale)
    finger = ",".join(f"{el}:{'+'.join(map(str, sorted(ns)))}" for el, ns in sorted(per_element.items()))
    return int(data.number), _hm_symbol(data.hall_number), finger


@lru_cache(maxsize=None)
def _hm_symbol(hall_number: int) -> str:
    """Short Hermann-Mauguin symbol as spglib writes it (``P6_3/mmc``, no spaces)."""
    return moyopy.HallSymbolEntry(hall_number).hm_short.replace(" ", "")


_AMU_PER_A3_TO_G_PER_CM3 = 1.66053906660  # density in g/cm^3 without pymatgen's slow unit objects


@lru_cache(maxsize=None)
def _element(symbol: str) -> tuple[int, float]:
    """(Z, atomic mass in amu): `Element(symbol)` is an Enum lookup costing more per site than the rest of `_identity`."""
    el = Element(symbol)
    return el.Z, float(el.atomic_mass)


def _identity(structure: dict, lattice: Lattice, symbols: list[str], frac: np.ndarray, comp: Composition,
              mass: float, with_symmetry: bool) -> tuple[Identity, SymmetryCell]:
    elements = sorted(el.symbol for el in comp.elements)
    cell = (lattice.matrix, frac, [_element(s)[0] for s in symbols], symbols)
    sg, symbol, orbits = symmetry(cell) if with_symmetry else (None, None, "")
    volume = float(lattice.volume)
    ident = Identity(
        structure=structure,
        formula=comp.formula,
        formula_pretty=comp.reduced_formula,
        chemsys="-".join(elements),
        elements=elements,
        nsites=len(symbols),
        spacegroup=sg,
        spacegroup_symbol=symbol,
        orbits=orbits,
        volume=volume,
        volume_per_atom=float(volume / len(symbols)),
        density=float(mass * _AMU_PER_A3_TO_G_PER_CM3 / volume),
        struct_hash=_hash(lattice, symbols, frac),
    )
    return ident, cell


def analyse(structure: Structure, *, with_symmetry: bool = True) -> Identity:
    """Validate `structure` and compute its store keys."""
    return analyse_structure(structure, with_symmetry=with_symmetry)[0]


def analyse_structure(structure: Structure, *, with_symmetry: bool = True) -> tuple[Identity, SymmetryCell]:
    """`analyse`, also returning the arrays `symmetry` needs (when it is left for later)."""
    check_structure(structure)
    symbols = [sp.symbol for sp in structure.species]
    mass = sum(float(sp.atomic_mass) for sp in structure.species)
    return _identity(structure.as_dict(), structure.lattice, symbols, structure.frac_coords, structure.composition,
                     mass, with_symmetry)


def analyse_cell(cell: Cell, *, with_symmetry: bool = True) -> tuple[Identity, SymmetryCell]:
    """`analyse_structure` for a `Cell`: the same fields, without pymatgen Site objects."""
    if not cell.symbols:
        raise InputError("structure has no sites")
    _check_geometry(cell.lattice, cell.frac)
    amounts: dict[str, float] = {}
    for sym in cell.symbols:  # site order, as Structure.composition sums them
        amounts[sym] = amounts.get(sym, 0.0) + 1.0
    mass = sum(_element(sym)[1] for sym in cell.symbols)
    return _identity(cell.as_dict(), cell.lattice, cell.symbols, cell.frac, Composition(amounts), mass, with_symmetry)


def content_hash(obj: object) -> str:
    """sha256 of a JSON-serialisable object with sorted keys (ids of labels, activities, datasets)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
