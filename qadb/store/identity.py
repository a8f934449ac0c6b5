"""What identifies a structure in the store: composition keys, symmetry, hashes, material ids.

`analyse` turns a parsed pymatgen Structure into the plain fields a `StructureDoc` stores. It runs
in worker processes during ingest, so it takes and returns plain data only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import spglib
from pymatgen.core import Element, Structure

from qadb.errors import InputError

SYMPREC = 0.1  # Å; seed 000 Algorithm 3 clusters by spglib symmetry at 0.1 Å
MIN_DISTANCE = 0.5  # Å; closer atoms are a broken structure, not a material
MATERIAL_ID_PREFIX = "qadb-"


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
    wyckoff: str
    volume: float
    volume_per_atom: float
    density: float
    struct_hash: str

    @property
    def dedupe_key(self) -> str:
        """The symmetry cluster of Algorithm 3: formula, space group and occupied Wyckoff sites."""
        return f"{self.formula_pretty}|{self.spacegroup}|{self.wyckoff}"

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
    if structure.volume <= 0.1 or not np.isfinite(structure.volume):
        raise InputError(f"cell volume {structure.volume:.3g} Å^3 is not physical")
    if len(structure) > 1:
        dmin = float(np.min(structure.distance_matrix + np.eye(len(structure)) * 1e9))
        if dmin < MIN_DISTANCE:
            raise InputError(f"atoms overlap (closest pair {dmin:.2f} Å < {MIN_DISTANCE} Å)")


def struct_hash(structure: Structure) -> str:
    """sha256 of a rotation-free, order-free text form of the cell (lattice parameters + sorted sites).

    The same file text always gives the same hash, so a re-ingest addresses the same document.
    Different settings of one crystal give different hashes; deduplication handles those.
    """
    abc = [round(x, 4) for x in structure.lattice.abc]
    angles = [round(x, 3) for x in structure.lattice.angles]
    frac = np.round(np.mod(structure.frac_coords, 1.0), 4) % 1.0
    sites = sorted((sp.symbol, *map(float, f)) for sp, f in zip(structure.species, frac))
    text = json.dumps([abc, angles, sites], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def symmetry(structure: Structure, symprec: float = SYMPREC) -> tuple[int | None, str | None, str]:
    """(space-group number, international symbol, Wyckoff fingerprint) from spglib.

    The fingerprint lists, per element, the Wyckoff letters of its symmetry-distinct sites with
    multiplicities per primitive cell (e.g. ``Cl:a1,Na:b1``); two descriptions of one crystal share
    it, so it narrows deduplication candidates without a StructureMatcher call.
    """
    cell = (structure.lattice.matrix, structure.frac_coords, structure.atomic_numbers)
    data = spglib.get_symmetry_dataset(cell, symprec=symprec)
    if data is None:
        return None, None, ""
    n_prim = len(set(data.mapping_to_primitive))
    scale = len(structure) // n_prim if n_prim else 1
    counts: dict[tuple[str, str], int] = {}
    for i in set(int(x) for x in data.equivalent_atoms):
        key = (structure[i].specie.symbol, data.wyckoffs[i])
        counts[key] = counts.get(key, 0) + int(np.sum(data.equivalent_atoms == i))
    finger = ",".join(f"{el}:{w}{n // scale}" for (el, w), n in sorted(counts.items()))
    return int(data.number), str(data.international), finger


_AMU_PER_A3_TO_G_PER_CM3 = 1.66053906660


def density(structure: Structure) -> float:
    """Mass density in g/cm^3; agrees with pymatgen's `density` to 1e-8 and skips its slow unit objects."""
    mass = sum(sp.atomic_mass for sp in structure.species)
    return float(mass * _AMU_PER_A3_TO_G_PER_CM3 / structure.volume)


def analyse(structure: Structure) -> Identity:
    """Validate `structure` and compute its store keys."""
    check_structure(structure)
    comp = structure.composition
    elements = sorted(el.symbol for el in comp.elements)
    sg, symbol, wyckoff = symmetry(structure)
    return Identity(
        structure=structure.as_dict(),
        formula=comp.formula,
        formula_pretty=comp.reduced_formula,
        chemsys="-".join(elements),
        elements=elements,
        nsites=len(structure),
        spacegroup=sg,
        spacegroup_symbol=symbol,
        wyckoff=wyckoff,
        volume=float(structure.volume),
        volume_per_atom=float(structure.volume / len(structure)),
        density=density(structure),
        struct_hash=struct_hash(structure),
    )


def content_hash(obj: object) -> str:
    """sha256 of a JSON-serialisable object with sorted keys (ids of labels, activities, datasets)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
