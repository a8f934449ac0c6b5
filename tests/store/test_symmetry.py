"""Ingest's symmetry step (`identity.symmetry`, spglib at 0.1 Å) on hand-checked cells.

The dedupe key is formula | space group | Wyckoff fingerprint. Each cell's answer is checked by
hand against the International Tables and against a fingerprint computed here from spglib's
dataset by a different route (every site counted under its own Wyckoff letter). docs/store.md
("Measured") says why moyopy, though faster, does not replace spglib here.
"""

from __future__ import annotations

import numpy as np
import pytest
import spglib
from pymatgen.core import Lattice, Structure

from qadb.store.identity import SYMPREC, analyse_structure, symmetry
from tests.store.helpers import rocksalt


def _cell(structure: Structure):
    """The arrays ingest hands to `symmetry` for this structure."""
    return analyse_structure(structure, with_symmetry=False)[1]


def _perovskite() -> Structure:
    return Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.905), ["Sr", "Ti", "O"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]])


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
    """Space group, symbol and fingerprint computed from spglib's dataset alone (not via `identity`)."""
    matrix, frac, numbers, symbols = cell
    data = spglib.get_symmetry_dataset((matrix, frac, numbers), symprec=SYMPREC)
    per_prim = len(symbols) // len(set(data.mapping_to_primitive))
    counts: dict[tuple[str, str], int] = {}
    for sym, letter in zip(symbols, data.wyckoffs):  # every site counted under its own Wyckoff letter
        counts[(sym, letter)] = counts.get((sym, letter), 0) + 1
    finger = ",".join(f"{el}:{w}{n // per_prim}" for (el, w), n in sorted(counts.items()))
    return int(data.number), str(data.international), finger


CASES = [
    # (structure, space group, symbol, fingerprint) checked by hand against the International Tables
    (rocksalt(), 225, "Fm-3m", "Cl:b1,Na:a1"),  # Na 4a (0,0,0), Cl 4b (1/2,1/2,1/2); primitive cell
    (rocksalt(conventional=True), 225, "Fm-3m", "Cl:b1,Na:a1"),  # same per primitive cell
    (_perovskite(), 221, "Pm-3m", None),  # Sr and Ti on 1a/1b (origin choice), O on 3c/3d
    (_wurtzite(), 186, "P6_3mc", "O:b2,Zn:b2"),  # both on 2b (1/3,2/3,z)
    (_p1(), 1, "P1", "Li:a3,Mn:a3,O:a6"),
]


@pytest.mark.parametrize("structure,number,symbol,finger", CASES, ids=["rocksalt", "rocksalt-conv", "perovskite",
                                                                      "wurtzite", "p1"])
def test_symmetry_of_hand_checked_cells(structure, number, symbol, finger):
    cell = _cell(structure)
    got = symmetry(cell)
    assert got == _spglib_reference(cell)
    assert got[:2] == (number, symbol)
    if finger is not None:
        assert got[2] == finger
    else:  # perovskite: which of Sr/Ti sits on 1a is the origin choice (1a/1b, with O on 3d/3c)
        parts = sorted(got[2].split(","))
        assert [p.split(":")[0] for p in parts] == ["O", "Sr", "Ti"]
        assert parts[0][2:] in ("c3", "d3") and {parts[1][3:], parts[2][3:]} == {"a1", "b1"}
