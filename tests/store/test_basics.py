"""Fidelity taxonomy and property units: the vocabulary every label uses."""

import pytest

from qadb import fidelity as fid
from qadb.errors import InputError
from qadb.store import properties


@pytest.mark.parametrize("given, canon, slug", [
    ("PBE+U", "PBE+U", "pbe_u"), ("gga+u", "PBE+U", "pbe_u"), ("CCSD(T)", "CCSD(T)", "ccsd_t"),
    ("r2scan", "r2SCAN", "r2scan"), ("GLLB-SC", "GLLB-SC", "gllb_sc"), ("hse", "HSE06", "hse06"),
    ("experiment", "EXP", "exp"), ("MLIP:CHGNet@0.3.0", "MLIP:CHGNet@0.3.0", "mlip_chgnet_0_3_0"),
])
def test_fidelity_canonical_and_slug(given, canon, slug):
    assert fid.canonical(given) == canon
    assert fid.slug(canon) == slug


def test_fidelity_rungs_rise_with_accuracy():
    assert fid.rung("MLIP:SevenNet@0") < fid.rung("PBE") < fid.rung("r2SCAN") < fid.rung("HSE06") < fid.rung("CCSD(T)") < fid.rung("EXP")


@pytest.mark.parametrize("bad", ["B3LYP-ish", "", "MLIP:noversion", "MLIP:@1"])
def test_unknown_fidelity_is_one_line_error(bad):
    with pytest.raises(InputError) as err:
        fid.canonical(bad)
    assert "\n" not in str(err.value)


def test_unit_conversion_to_canonical():
    assert properties.normalise("formation_energy_per_atom", -96.485, "kJ/mol-atom") == pytest.approx(-1.0, abs=1e-4)
    assert properties.normalise("formation_energy_per_atom", -250, "meV/atom") == pytest.approx(-0.25)
    assert properties.normalise("bulk_modulus", 1.5, "Mbar") == pytest.approx(150.0)


def test_wrong_unit_and_implausible_value_are_rejected():
    with pytest.raises(InputError, match="unit 'GPa' is not valid for band_gap"):
        properties.normalise("band_gap", 1.0, "GPa")
    # -250 "eV/atom" is what a meV value in an eV column looks like
    with pytest.raises(InputError, match="implausible"):
        properties.normalise("formation_energy_per_atom", -250, "eV/atom")
    with pytest.raises(InputError, match="unknown property"):
        properties.get("colour")
