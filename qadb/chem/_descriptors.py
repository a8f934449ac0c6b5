"""Cheap global descriptors: compactness C (seed 002 Eq. 2) and symmetry with crystallographic complexity.

C = (4/3) pi sum_a r_a^3 / V_cell with pymatgen ``Element.atomic_radius`` (PIGEN's evaluation choice;
an element without a radius contributes 0). Overlap of spheres is ignored, as in the paper.

Crystallographic complexity (Krivovichev 2012, the K/atom of seed 002): Shannon information of the
partition of atoms into Wyckoff orbits, I_G = -sum_i p_i log2 p_i with p_i = |orbit_i| / N (bits/atom),
and I_G,total = N_prim * I_G for the primitive cell. Orbit fractions do not depend on the cell chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import spglib
from pymatgen.core import Element, Structure

from qadb.chem._elements import PYMATGEN_ATOMIC_RADIUS, atomic_radius
from qadb.errors import InputError

COMPACTNESS_WINDOW = (0.55, 0.85)  # seed 002 filter C


def compactness(structure: Structure, radii: str = PYMATGEN_ATOMIC_RADIUS) -> float:
    """Packing fraction C of seed 002 Eq. 2 (radius table named by `radii`)."""
    if radii != PYMATGEN_ATOMIC_RADIUS:
        raise InputError(f"unknown radius table {radii!r}; known: {PYMATGEN_ATOMIC_RADIUS}")
    z, counts = np.unique(structure.atomic_numbers, return_counts=True)
    volume = sum(n * _radius_by_z(int(k)) ** 3 for k, n in zip(z, counts))
    return 4.0 / 3.0 * np.pi * volume / structure.volume


@cache
def _radius_by_z(z: int) -> float:
    return atomic_radius(Element.from_Z(z).symbol)


@dataclass(frozen=True)
class SymmetryInfo:
    """spglib's verdict plus the complexity measures derived from its Wyckoff orbits."""

    number: int
    symbol: str
    n_orbits: int
    complexity_per_atom: float  # bits/atom
    complexity_total: float  # bits per primitive cell


def symmetry_info(structure: Structure, symprec: float = 0.1) -> SymmetryInfo | None:
    """Space group and crystallographic complexity, None when spglib finds no symmetry at `symprec`."""
    cell = (structure.lattice.matrix, structure.frac_coords, [site.specie.Z for site in structure])
    dataset = spglib.get_symmetry_dataset(cell, symprec=symprec)
    if dataset is None:
        return None
    _, sizes = np.unique(dataset.crystallographic_orbits, return_counts=True)
    p = sizes / sizes.sum()
    per_atom = float(-(p * np.log2(p)).sum())
    n_prim = len(np.unique(dataset.mapping_to_primitive))
    return SymmetryInfo(int(dataset.number), str(dataset.international), len(sizes), per_atom, per_atom * n_prim)
