"""Structure input handling shared by every driver: one conversion, one sanity check.

Drivers accept a pymatgen `Structure`, an ASE `Atoms` or a Structure dict, and refuse cells that no
code should be asked to compute (overlapping atoms, degenerate lattices) before any work is spent.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pymatgen.core import Structure

from qadb.errors import InputError

# Same threshold as the structural-validity metric in DESIGN.md: closer atoms are unphysical.
MIN_DISTANCE_A = 0.5


def as_structure(obj: Any) -> Structure:
    """Convert a pymatgen Structure, ASE Atoms or Structure dict to a pymatgen Structure."""
    if isinstance(obj, Structure):
        return obj.copy()
    if isinstance(obj, dict):
        try:
            return Structure.from_dict(obj)
        except Exception as exc:  # pymatgen raises many types on bad dicts
            raise InputError(f"not a pymatgen Structure dict: {exc}") from None
    try:
        from ase import Atoms
    except ImportError:  # pragma: no cover - ase is a core dependency
        Atoms = ()  # type: ignore[assignment]
    if isinstance(obj, Atoms):
        from pymatgen.io.ase import AseAtomsAdaptor

        if not all(obj.pbc):
            raise InputError("ASE Atoms must be periodic in all three directions")
        return AseAtomsAdaptor.get_structure(obj)
    raise InputError(f"expected a pymatgen Structure, ASE Atoms or Structure dict, got {type(obj).__name__}")


def check_structure(structure: Structure, min_distance: float = MIN_DISTANCE_A) -> None:
    """Raise `InputError` for an empty cell, a degenerate lattice or atoms closer than `min_distance` Å."""
    if len(structure) == 0:
        raise InputError("structure has no atoms")
    if not structure.is_ordered:
        raise InputError(f"structure {structure.formula} is disordered; drivers need an ordered cell")
    if structure.volume < 0.1 * len(structure):
        raise InputError(f"structure {structure.formula} has a degenerate cell (volume {structure.volume:.3g} Å³)")
    if len(structure) > 1:
        dist = structure.distance_matrix.copy()
        np.fill_diagonal(dist, np.inf)
        i, j = np.unravel_index(int(np.argmin(dist)), dist.shape)
        if dist[i, j] < min_distance:
            raise InputError(
                f"overlapping atoms in {structure.formula}: sites {i} and {j} are {dist[i, j]:.3f} Å apart "
                f"(minimum {min_distance} Å)"
            )
    shortest = min(structure.lattice.get_niggli_reduced_lattice().abc)
    if shortest < min_distance:
        raise InputError(f"structure {structure.formula} overlaps its own image: lattice vector {shortest:.3f} Å")


def checked(obj: Any) -> Structure:
    """`as_structure` followed by `check_structure`: what every driver calls first."""
    structure = as_structure(obj)
    check_structure(structure)
    return structure
