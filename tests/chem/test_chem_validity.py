"""Validity checks and descriptors on hand-checked crystals: rock salt, perovskite, spinel, overlaps."""

import math

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from qadb.chem import (
    assign_oxidation_states,
    check_bond_valence,
    check_charge_neutrality,
    check_covalent_distance,
    check_electronegativity,
    check_min_distance,
    check_pauling_electrostatic,
    check_symmetry,
    check_volume,
    compactness,
    seed000_checks,
    symmetry_info,
)
from qadb.errors import InputError


def test_known_crystals_pass_every_check(rocksalt, perovskite, spinel):
    for s in (rocksalt, perovskite, spinel):
        results = seed000_checks(s) + [check_min_distance(s), check_volume(s), check_electronegativity(s)]
        assert all(r.passed for r in results), [r for r in results if not r.passed]


def test_pauling_second_rule_is_exact_for_ideal_polyhedra(rocksalt, perovskite, spinel):
    # NaCl: Cl gets 6 x 1/6; SrTiO3: O gets 2 x 4/6 + 4 x 2/12 = 2; spinel: O gets 2/4 + 3 x 3/6 = 2.
    for s in (rocksalt, perovskite, spinel):
        assert check_pauling_electrostatic(s).value == pytest.approx(0.0, abs=1e-12)


def test_symmetry_and_complexity(rocksalt, perovskite, spinel):
    assert [check_symmetry(s).value for s in (rocksalt, perovskite, spinel)] == [225, 221, 227]
    info = symmetry_info(perovskite)
    # orbits 1 Sr, 1 Ti, 3 O out of 5: -(2 * 0.2 log2 0.2 + 0.6 log2 0.6)
    assert info.complexity_per_atom == pytest.approx(-(2 * 0.2 * math.log2(0.2) + 0.6 * math.log2(0.6)))
    assert info.complexity_total == pytest.approx(5 * info.complexity_per_atom)


def test_overlapping_structure_is_rejected(overlapping):
    res = check_min_distance(overlapping)
    assert not res.passed and res.value == pytest.approx(0.4, abs=1e-6)
    cov = check_covalent_distance(overlapping, 0.8)
    assert not cov.passed and "Na-Cl" in cov.reason or "Cl-Na" in cov.reason
    # 0.4 / (0.8 * (1.55 + 0.99)) = 0.19685
    assert cov.value == pytest.approx(0.4 / (0.8 * 2.54), abs=1e-6)


def test_covalent_rule_thresholds(rocksalt):
    # Na-Cl 2.82 Å vs Pyykkö 1.55 + 0.99 = 2.54: ratio 2.82 / (0.8 * 2.54) = 1.388 passes; alpha 1.2 fails.
    assert check_covalent_distance(rocksalt, 0.8).value == pytest.approx(2.82 / (0.8 * 2.54), abs=1e-9)
    assert not check_covalent_distance(rocksalt, 1.2).passed


def test_charge_neutrality_and_electronegativity():
    assert not check_charge_neutrality("NaCl2").passed
    assert not check_electronegativity("NaCl2").passed
    assert check_charge_neutrality("MgAl2O4").passed
    # Fe3O4 needs mixed valence (Fe2+ + 2 Fe3+): the one-state (SMACT) rule rejects it.
    assert check_charge_neutrality("Fe3O4").passed
    assert not check_charge_neutrality("Fe3O4", mixed_valence=False).passed
    assert assign_oxidation_states("Fe3O4").states == pytest.approx({"Fe": 8 / 3, "O": -2.0})
    # Cl anion must be more electronegative than the cation: "ClNa" ordering is what counts.
    assert assign_oxidation_states("NaCl", en_order=True).states == {"Na": 1.0, "Cl": -1.0}
    # Intermetallics are exempt, as in CDVAE's compositional validity.
    assert check_charge_neutrality("Cu3Au").passed and "intermetallic" in check_charge_neutrality("Cu3Au").reason
    with pytest.raises(InputError):
        check_charge_neutrality("NaCl", tol=-1)


def test_tolerance_is_per_formula_unit():
    # Na2Cl is off by 1 e per formula unit, also written as Na4Cl2.
    assert not check_charge_neutrality("Na4Cl2", tol=0.9).passed
    assert check_charge_neutrality("Na4Cl2", tol=1.0).passed
    assert check_charge_neutrality("Na4Cl2", tol=1.0).value == pytest.approx(1.0)


def test_bond_valence_detects_compression(rocksalt):
    ok = check_bond_valence(rocksalt)
    squeezed = rocksalt.copy()
    squeezed.scale_lattice(rocksalt.volume * 0.7)
    bad = check_bond_valence(squeezed)
    assert ok.passed and not bad.passed and bad.value > ok.value


def test_volume_rules(rocksalt):
    tiny = Structure(Lattice.cubic(0.4), ["Na"], [[0, 0, 0]])
    assert not check_volume(tiny).passed
    assert not check_min_distance(tiny).passed  # a 0.4 Å lattice puts self-images 0.4 Å apart


def test_compactness_hand_computed(rocksalt, perovskite):
    # NaCl: 4 (1.80^3 + 1.00^3) * 4/3 pi / 5.64^3
    expected = 4 * (1.8**3 + 1.0**3) * 4 / 3 * math.pi / 5.64**3
    assert compactness(rocksalt) == pytest.approx(expected, rel=1e-12)
    expanded = perovskite.copy()
    expanded.scale_lattice(perovskite.volume * 2)
    assert compactness(expanded) == pytest.approx(compactness(perovskite) / 2, rel=1e-12)


def test_bad_input_is_one_line():
    with pytest.raises(InputError) as err:
        check_symmetry("not a structure")
    assert "\n" not in str(err.value)
    with pytest.raises(InputError):
        check_charge_neutrality("Xx2O")
    assert np.isfinite(compactness(Structure(Lattice.cubic(3), ["He"], [[0, 0, 0]])))
