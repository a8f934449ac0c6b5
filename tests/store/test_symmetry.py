"""Ingest's symmetry step (`identity.symmetry`, moyopy at 0.1 Å) on hand-checked cells.

The dedupe key is formula | space group | orbit sizes per element (per primitive cell). Each
cell's answer is checked by hand against the International Tables and against the same fingerprint
computed here by a different route, from spglib's dataset (its `crystallographic_orbits`, which use the
primitive cell's operations: its `equivalent_atoms` split the oxygen orbit of a perovskite supercell whose
lattice the 3-fold axes do not map onto itself, as moyopy's warnings say). The key must not
depend on the origin choice (perovskite A/B on 1a/1b or 1b/1a: the old Wyckoff-letter key did) nor on
the cell chosen (primitive, conventional, supercell).
"""

from __future__ import annotations

import numpy as np
import pytest
import spglib
from pymatgen.core import Lattice, Structure

from qadb.store.identity import SYMPREC, analyse, analyse_structure, symmetry
from tests.store.helpers import rocksalt


def _cell(structure: Structure):
    """The arrays ingest hands to `symmetry` for this structure."""
    return analyse_structure(structure, with_symmetry=False)[1]


def _perovskite(shift: float = 0.0) -> Structure:
    """SrTiO3; `shift` = 0.5 moves the origin from Sr to Ti (Sr on 1b, Ti on 1a, O on 3c instead of 3d)."""
    s = Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.905), ["Sr", "Ti", "O"],
                                  [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]])
    s.translate_sites(list(range(len(s))), [shift] * 3)
    return s


def _wurtzite() -> Structure:
    return Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"],
                                     [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]])


def _p1(seed: int = 3) -> Structure:
    """12 atoms at random positions in a triclinic cell, at least 1.2 Å apart: no symmetry but the identity."""
    rng = np.random.default_rng(seed)
    lattice = Lattice.from_parameters(6.1, 6.7, 7.3, 81, 97, 104)
    frac: list[np.ndarray] = []
    while len(frac) < 12:
        f = rng.random(3)
        if all(lattice.get_all_distances([f], [g])[0, 0] > 1.2 for g in frac):
            frac.append(f)
    return Structure(lattice, ["Li", "Mn", "O", "O"] * 3, frac)


def _spglib_reference(cell) -> tuple[int, str, str]:
    """Space group, symbol and orbit fingerprint from spglib's dataset alone (not via `identity`)."""
    matrix, frac, numbers, symbols = cell
    data = spglib.get_symmetry_dataset((matrix, frac, numbers), symprec=SYMPREC)
    per_prim = len(symbols) // len(set(data.mapping_to_primitive))
    per_element: dict[str, list[int]] = {}
    for rep in sorted(set(data.crystallographic_orbits)):
        size = int(np.count_nonzero(data.crystallographic_orbits == rep)) // per_prim
        per_element.setdefault(symbols[rep], []).append(size)
    finger = ",".join(f"{el}:{'+'.join(map(str, sorted(n)))}" for el, n in sorted(per_element.items()))
    return int(data.number), str(data.international), finger


CASES = [
    # (structure, space group, symbol, fingerprint) checked by hand against the International Tables
    (rocksalt(), 225, "Fm-3m", "Cl:1,Na:1"),  # Na 4a, Cl 4b: one site each per primitive cell
    (rocksalt(conventional=True), 225, "Fm-3m", "Cl:1,Na:1"),  # the same per primitive cell
    (_perovskite(), 221, "Pm-3m", "O:3,Sr:1,Ti:1"),  # Sr 1a, Ti 1b, O 3d
    (_perovskite(0.5), 221, "Pm-3m", "O:3,Sr:1,Ti:1"),  # Sr 1b, Ti 1a, O 3c: another origin, the same key
    (_perovskite() * (1, 2, 2), 221, "Pm-3m", "O:3,Sr:1,Ti:1"),  # a supercell
    (_wurtzite(), 186, "P6_3mc", "O:2,Zn:2"),  # both on 2b (1/3,2/3,z)
    (_p1(), 1, "P1", "Li:1+1+1,Mn:1+1+1,O:1+1+1+1+1+1"),  # every atom its own orbit
]


@pytest.mark.parametrize("structure,number,symbol,finger", CASES,
                         ids=["rocksalt", "rocksalt-conv", "perovskite", "perovskite-shifted", "perovskite-supercell",
                              "wurtzite", "p1"])
def test_symmetry_of_hand_checked_cells(structure, number, symbol, finger):
    cell = _cell(structure)
    got = symmetry(cell)
    assert got == _spglib_reference(cell)
    assert got == (number, symbol, finger)


def test_origin_choice_gives_one_dedupe_key():
    """The NaWO3 case found in the staged data: two origins of one Pm-3m crystal, one cluster."""
    keys = {analyse(s).dedupe_key for s in (_perovskite(), _perovskite(0.5), _perovskite(0.5) * (2, 1, 1))}
    assert keys == {"SrTiO3|221|O:3,Sr:1,Ti:1"}
