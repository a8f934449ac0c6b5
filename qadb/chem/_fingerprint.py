"""A fixed-length numeric fingerprint of a crystal for diversity selection and fast surrogates.

Composition statistics (fraction-weighted mean, spread, min, max) of a small named set of element
properties, plus a few structure scalars. It is cheap (no neighbour search) so a campaign can
fingerprint a 10^4-candidate pool in seconds; it is not meant to distinguish polymorphs finely.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from pymatgen.core import Composition, Element

from qadb.chem._composition import CompositionLike, as_amounts
from qadb.chem._elements import atomic_radius, covalent_radius, electronegativity

ELEMENT_PROPERTIES = ("Z", "row", "group", "X", "covalent_radius", "atomic_radius", "mendeleev", "valence")
STRUCTURE_SCALARS = ("volume_per_atom", "density", "log_nsites", "spacegroup_crystal_system")
FINGERPRINT_NAMES = tuple(
    f"{stat}_{p}" for p in ELEMENT_PROPERTIES for stat in ("mean", "std", "min", "max")
) + ("nelements",) + STRUCTURE_SCALARS
FINGERPRINT_VERSION = "fp-v1"
_NOBLE_Z = (2, 10, 18, 36, 54, 86)


@cache
def _element_vector(symbol: str) -> np.ndarray:
    el = Element(symbol)
    x = electronegativity(symbol)
    valence = float(el.Z - max((z for z in _NOBLE_Z if z < el.Z), default=0))  # electrons beyond the noble-gas core
    return np.array([
        el.Z, el.row, el.group, x if x is not None else 0.0, covalent_radius(symbol), atomic_radius(symbol),
        float(el.mendeleev_no or 0), valence,
    ], dtype=float)


def _crystal_system_index(spacegroup: int | None) -> float:
    """0..6 for triclinic..cubic (from the space-group number), -1 when unknown."""
    if not spacegroup:
        return -1.0
    bounds = (2, 15, 74, 142, 167, 194, 230)
    return float(next(i for i, b in enumerate(bounds) if spacegroup <= b))


def composition_fingerprint(composition: CompositionLike) -> np.ndarray:
    """Fraction-weighted mean, std, min and max of each element property, plus the element count."""
    amounts = as_amounts(composition)
    symbols = list(amounts)
    w = np.array([amounts[s] for s in symbols], dtype=float)
    w /= w.sum()
    props = np.stack([_element_vector(s) for s in symbols])  # (n_el, n_prop)
    mean = w @ props
    std = np.sqrt(np.maximum(w @ (props - mean) ** 2, 0.0))
    stats = np.stack([mean, std, props.min(0), props.max(0)], axis=1).reshape(-1)
    return np.concatenate([stats, [len(symbols)]])


def fingerprint(structure=None, *, composition: CompositionLike | None = None, nsites: int | None = None,
                volume: float | None = None, spacegroup: int | None = None) -> np.ndarray:
    """The fingerprint of a pymatgen Structure, or of a composition plus whatever scalars are known.

    Unknown structure scalars are NaN, so a caller can tell "not given" from zero.
    """
    if structure is not None:
        composition = structure.composition
        nsites, volume = len(structure), structure.volume
    if composition is None:
        raise ValueError("fingerprint needs a structure or a composition")
    comp = Composition(composition) if not isinstance(composition, Composition) else composition
    nan = float("nan")
    vpa = volume / nsites if volume and nsites else nan
    density = comp.weight / volume * 1.66053906660 if volume else nan  # amu/Å^3 -> g/cm^3
    scalars = [vpa, float(density), float(np.log(nsites)) if nsites else nan, _crystal_system_index(spacegroup)]
    return np.concatenate([composition_fingerprint(comp), scalars])
