"""Elemental reference energies at the same level of theory, and formation energies from them.

Reference structures: ASE's `bulk(symbol)` ground-state prototypes (fcc, bcc, hcp, diamond, ...)
at ASE's tabulated experimental lattice constants, primitive cells, not relaxed at the DFT level;
diatomic gases as one molecule (experimental bond length) in a cubic box, Γ only, O2 as a triplet.
Elements with neither (B, P, S, Mn, Ga, ...) must come in through `known=`.

A reference at given settings is a pure function of (element, settings); its cache key is the input
hash of that calculation, so the lead can persist references as ordinary labels and pass them back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from pymatgen.core import Composition, Element, Lattice, Structure

from qadb.drivers.hashing import input_hash
from qadb.drivers.pyscf_dft import hashed_settings, pyscf_label
from qadb.drivers.results import DFTResult
from qadb.errors import InputError

# Diatomic elemental references: bond length (Å, experimental) and unpaired electrons of the ground state
_DIATOMS: dict[str, tuple[float, int]] = {
    "H": (0.74, 0), "N": (1.10, 0), "O": (1.21, 2), "F": (1.42, 0), "Cl": (1.99, 0), "Br": (2.28, 0), "I": (2.67, 0),
}
BOX_A = 8.0  # molecule-in-a-box edge (Å); Γ-point for diatoms


def reference_structure(element: str | Element) -> tuple[Structure, int]:
    """(reference cell, unpaired electrons) of an element's standard state."""
    symbol = str(element)
    if symbol in _DIATOMS:
        d, spin = _DIATOMS[symbol]
        return Structure(Lattice.cubic(BOX_A), [symbol, symbol], [[0, 0, 0], [0, 0, d]],
                         coords_are_cartesian=True), spin
    from ase.build import bulk
    from pymatgen.io.ase import AseAtomsAdaptor

    try:
        return AseAtomsAdaptor.get_structure(bulk(symbol)), 0
    except Exception:  # ase raises ValueError/KeyError/TypeError for elements without a simple prototype
        raise InputError(f"no elemental reference structure for {symbol}; pass its energy via references=") from None


def reference_settings(settings: Any) -> Any:
    """Settings for a reference calculation: the target's, with the k-mesh taken from kspacing."""
    return replace(settings, kmesh=None)


def reference_key(element: str | Element, settings: Any) -> str:
    """Cache key of an elemental reference: the input hash of its own calculation (kmesh plays no part)."""
    structure, spin = reference_structure(element)
    return input_hash(structure, hashed_settings(reference_settings(settings), spin))


_CACHE: dict[tuple[str, Any], DFTResult] = {}


def reference_energy(element: str, settings: Any, *, threads: int | None = None) -> DFTResult:
    """Energy per atom of `element` in its reference state at `settings` (cached per process)."""
    ref = reference_settings(settings)
    key = (str(element), ref)
    if key not in _CACHE:
        structure, spin = reference_structure(element)
        _CACHE[key] = pyscf_label(structure, ref, spin=spin, threads=threads)
    return _CACHE[key]


def reference_energies(elements: Iterable[Element | str], settings: Any, *, known: Mapping[str, float] | None = None,
                       threads: int | None = None) -> dict[str, float]:
    """eV/atom per element: from `known` where given, else computed (and cached) at `settings`."""
    known = dict(known or {})
    return {str(el): known[str(el)] if str(el) in known else reference_energy(str(el), settings, threads=threads).value
            for el in elements}


def formation_energy_per_atom(energy_eV: float, composition: Composition, references: Mapping[str, float]) -> float:
    """(E_cell - sum_i n_i mu_i) / N with mu_i the elemental energies per atom (eV)."""
    missing = [str(el) for el in composition.elements if str(el) not in references]
    if missing:
        raise InputError(f"no reference energy for {', '.join(missing)}")
    ref = sum(amount * references[str(el)] for el, amount in composition.items())
    return (energy_eV - ref) / composition.num_atoms
