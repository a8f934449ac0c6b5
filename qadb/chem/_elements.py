"""Per-element tables, each named so that a result can say which one it used.

- ``PYYKKO_2009``: single-bond covalent radii (Å) of Pyykkö & Atsumi, Chem. Eur. J. 15, 186 (2009),
  the radii seed 000 Sec. 3.2.1 prescribes for its 0.7x / 0.8x distance rules.
- ``PYMATGEN_ATOMIC_RADIUS``: pymatgen ``Element.atomic_radius`` (Å), the radii PIGEN's evaluation
  uses for compactness (pigen_fuse_spp README).
- Oxidation-state tables from pymatgen: ``common`` (``common_oxidation_states``), ``icsd``
  (``icsd_oxidation_states``), ``common+icsd`` (their union, the default), ``all`` (``oxidation_states``).
- Bond-valence parameters r, c of O'Keeffe & Brese (1991) as shipped with pymatgen.
"""

from __future__ import annotations

from functools import cache

from pymatgen.core import Element
from pymatgen.core.bond_valence import BV_PARAMS

from qadb.errors import InputError

# Index = atomic number - 1; values in Å (published to 0.01 Å).
_PYYKKO = (
    0.32, 0.46, 1.33, 1.02, 0.85, 0.75, 0.71, 0.63, 0.64, 0.67, 1.55, 1.39, 1.26, 1.16, 1.11, 1.03, 0.99, 0.96,
    1.96, 1.71, 1.48, 1.36, 1.34, 1.22, 1.19, 1.16, 1.11, 1.10, 1.12, 1.18, 1.24, 1.21, 1.21, 1.16, 1.14, 1.17,
    2.10, 1.85, 1.63, 1.54, 1.47, 1.38, 1.28, 1.25, 1.25, 1.20, 1.28, 1.36, 1.42, 1.40, 1.40, 1.36, 1.33, 1.31,
    2.32, 1.96, 1.80, 1.63, 1.76, 1.74, 1.73, 1.72, 1.68, 1.69, 1.68, 1.67, 1.66, 1.65, 1.64, 1.70, 1.62,
    1.52, 1.46, 1.37, 1.31, 1.29, 1.22, 1.23, 1.24, 1.33, 1.44, 1.44, 1.51, 1.45, 1.47, 1.42,
    2.23, 2.01, 1.86, 1.75, 1.69, 1.70, 1.71, 1.72, 1.66, 1.66, 1.68, 1.68, 1.65, 1.67, 1.73, 1.76, 1.61,
    1.57, 1.49, 1.43, 1.41, 1.34, 1.29, 1.28, 1.21, 1.22, 1.36, 1.43, 1.62, 1.75, 1.65, 1.57,
)  # fmt: skip

PYYKKO_2009 = "pyykko2009"
PYMATGEN_ATOMIC_RADIUS = "pymatgen_atomic_radius"
OXIDATION_TABLES = ("common", "icsd", "common+icsd", "all")
DEFAULT_OXIDATION_TABLE = "common+icsd"


@cache
def covalent_radius(symbol: str) -> float:
    """Pyykkö-Atsumi single-bond covalent radius (Å)."""
    return _PYYKKO[_element(symbol).Z - 1]


@cache
def atomic_radius(symbol: str) -> float:
    """pymatgen ``Element.atomic_radius`` (Å); 0 where pymatgen has none, as PIGEN does."""
    radius = _element(symbol).atomic_radius
    return float(radius) if radius is not None else 0.0


@cache
def electronegativity(symbol: str) -> float | None:
    """Pauling electronegativity, None where undefined (noble gases)."""
    x = _element(symbol).X
    return None if x != x else float(x)  # pymatgen gives NaN for undefined


@cache
def oxidation_states(symbol: str, table: str = DEFAULT_OXIDATION_TABLE) -> tuple[int, ...]:
    """Non-zero oxidation states of an element from a named pymatgen table, most common first."""
    el = _element(symbol)
    if table == "common":
        states = list(el.common_oxidation_states)
    elif table == "icsd":
        states = list(el.icsd_oxidation_states)
    elif table == "common+icsd":
        states = list(el.common_oxidation_states) + list(el.icsd_oxidation_states)
    elif table == "all":
        states = list(el.common_oxidation_states) + list(el.oxidation_states)
    else:
        raise InputError(f"unknown oxidation-state table {table!r}; known: {', '.join(OXIDATION_TABLES)}")
    return tuple(dict.fromkeys(s for s in states if s != 0))


@cache
def is_metal(symbol: str) -> bool:
    """Metal in pymatgen's sense (metalloids are not metals)."""
    return bool(_element(symbol).is_metal)


@cache
def is_metalloid(symbol: str) -> bool:
    return bool(_element(symbol).is_metalloid)


@cache
def bond_valence_r0(cation: str, anion: str) -> float | None:
    """O'Keeffe-Brese bond-valence parameter R0 (Å) for a cation-anion pair, None if not tabulated."""
    a, b = BV_PARAMS.get(_element(cation)), BV_PARAMS.get(_element(anion))
    if a is None or b is None:
        return None
    r1, c1, r2, c2 = a["r"], a["c"], b["r"], b["c"]
    return r1 + r2 - r1 * r2 * (c1**0.5 - c2**0.5) ** 2 / (c1 * r1 + c2 * r2)


def _element(symbol: str) -> Element:
    try:
        return Element(symbol)
    except ValueError:
        raise InputError(f"unknown element {symbol!r}") from None
