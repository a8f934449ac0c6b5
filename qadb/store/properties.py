"""Known properties: canonical units, unit conversion and plausibility bounds.

A value is stored in its property's canonical unit. Values given in another unit are converted
here; an unknown unit, or a value outside the plausible range after conversion, is an
`InputError` so a wrong column or a kJ/mol-vs-eV slip never reaches the store silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qadb.errors import InputError

_EV_PER_HARTREE = 27.211386245988
_EV_PER_KJ_MOL = 0.010364269574711572
_EV_PER_KCAL_MOL = 0.0433641043

# factor to the canonical unit, keyed by (canonical unit, given unit)
_CONVERSIONS: dict[tuple[str, str], float] = {
    ("eV/atom", "eV/atom"): 1.0,
    ("eV/atom", "meV/atom"): 1e-3,
    ("eV/atom", "Ha/atom"): _EV_PER_HARTREE,
    ("eV/atom", "kJ/mol-atom"): _EV_PER_KJ_MOL,
    ("eV/atom", "kcal/mol-atom"): _EV_PER_KCAL_MOL,
    ("eV", "eV"): 1.0,
    ("eV", "meV"): 1e-3,
    ("eV", "Ha"): _EV_PER_HARTREE,
    ("GPa", "GPa"): 1.0,
    ("GPa", "Mbar"): 100.0,
    ("GPa", "kbar"): 0.1,
    ("eV/Å", "eV/Å"): 1.0,
    ("eV/Å", "eV/A"): 1.0,
    ("", ""): 1.0,
}


@dataclass(frozen=True)
class Property:
    name: str
    units: str
    low: float
    high: float
    conflict_tol: float  # two values closer than this are the same measurement
    description: str


PROPERTIES: dict[str, Property] = {
    p.name: p
    for p in (
        Property("formation_energy_per_atom", "eV/atom", -10.0, 10.0, 0.02,
                 "formation energy (DFT) or enthalpy (experiment) per atom from elemental references"),
        Property("energy_per_atom", "eV/atom", -1e4, 1e3, 0.005, "total energy per atom (code-specific zero)"),
        Property("energy_above_hull", "eV/atom", -10.0, 10.0, 0.02,
                 "decomposition energy vs the hull of the other phases (negative = on the hull)"),
        Property("band_gap", "eV", 0.0, 25.0, 0.05, "electronic band gap"),
        Property("direct_gap", "eV", 0.0, 25.0, 0.05, "direct band gap"),
        Property("bulk_modulus", "GPa", 0.0, 1000.0, 5.0, "bulk modulus (VRH average or E-V fit)"),
        Property("shear_modulus", "GPa", -100.0, 1000.0, 5.0, "shear modulus (VRH average)"),
        Property("is_metal", "", 0.0, 1.0, 0.5, "1 if metallic at this fidelity"),
        Property("max_force", "eV/Å", 0.0, 1e3, 0.01,
                 "largest atomic force of a computed structure (the full forces are in its job's result)"),
        Property("pressure", "GPa", -1e3, 1e3, 0.1,
                 "-trace(stress)/3, positive = compressed (the full stress is in its job's result)"),
    )
}


def get(name: str) -> Property:
    try:
        return PROPERTIES[name]
    except KeyError:
        known = ", ".join(sorted(PROPERTIES))
        raise InputError(f"unknown property {name!r}; known: {known}") from None


def normalise(name: str, value: float, units: str | None = None) -> float:
    """`value` converted to the canonical unit of `name`, checked for plausibility."""
    prop = get(name)
    given = prop.units if units is None else units.strip()
    factor = _CONVERSIONS.get((prop.units, given))
    if factor is None:
        raise InputError(f"unit {given!r} is not valid for {name} (expected {prop.units or 'dimensionless'})")
    try:
        out = float(value) * factor
    except (TypeError, ValueError):
        raise InputError(f"{name} value {value!r} is not a number") from None
    if math.isnan(out) or not prop.low <= out <= prop.high:
        raise InputError(
            f"{name} = {value} {given} is implausible (allowed {prop.low} to {prop.high} {prop.units}); "
            "check the column and unit"
        )
    return out
