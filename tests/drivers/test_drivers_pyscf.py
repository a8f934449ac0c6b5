"""PySCF labelling: settings validation and size guards (fast); real 2-atom Si calculations (slow).

Slow runs use Γ-point sampling (kspacing=3.0 Å⁻¹) and gth-szv so the whole file stays near two minutes
on two cores; the bench (bench/drivers.py) times 2x2x2 k-meshes and larger cells.
"""

import json

import pytest
from pymatgen.core import Lattice, Structure

from qadb.drivers import (
    ConvergenceError,
    PySCFSettings,
    kmesh_for,
    pyscf_label,
    reference_energy,
    reference_key,
    reference_structure,
)
from qadb.errors import InputError

GAMMA = 3.0  # kspacing (1/Å) that gives a Γ-only mesh for 2-atom Si


def test_unknown_functional_is_a_clear_error():
    with pytest.raises(InputError, match="unknown fidelity 'B3LYP-XYZ'"):
        PySCFSettings(level="B3LYP-XYZ")
    with pytest.raises(InputError, match="PySCF driver does not do 'PBE\\+U'; levels: PBE, SCAN, r2SCAN"):
        PySCFSettings(level="PBE+U")


def test_settings_normalised_and_validated():
    s = PySCFSettings(level="hse", density_fit="gdf")
    assert (s.level, s.xc, s.density_fit, s.pseudo) == ("HSE06", "HSE06", "GDF", "gth-pbe")
    assert PySCFSettings(level="ccsd_t").pseudo == "gth-hf-rev"
    assert PySCFSettings(level="r2scan").xc == "MGGA_X_R2SCAN,MGGA_C_R2SCAN"
    with pytest.raises(InputError, match="kmesh must be three positive integers"):
        PySCFSettings(kmesh=(2, 0, 2))
    with pytest.raises(InputError, match="density_fit"):
        PySCFSettings(density_fit="RI")
    with pytest.raises(InputError, match="CCSD\\(T\\) takes no smearing"):
        PySCFSettings(level="CCSD(T)", smearing_eV=0.1)


def test_kmesh_from_kspacing(si2):
    assert kmesh_for(si2, PySCFSettings()) == (2, 2, 2)  # |b| = 2.00 1/Å, kspacing 1.2
    assert kmesh_for(si2, PySCFSettings(kspacing=GAMMA)) == (1, 1, 1)
    assert kmesh_for(si2, PySCFSettings(kmesh=(3, 3, 3))) == (3, 3, 3)


def test_overlapping_atoms_fail_before_any_calculation(overlapping):
    with pytest.raises(InputError, match="overlapping atoms"):
        pyscf_label(overlapping, PySCFSettings())


def test_odd_electron_cell_needs_smearing():
    al = Structure(Lattice.cubic(4.05), ["Al"], [[0, 0, 0]])
    with pytest.raises(InputError, match="odd.*set smearing_eV"):
        pyscf_label(al, PySCFSettings(kspacing=GAMMA))


def test_ccsd_t_size_limit_checked_before_scf(si2):
    big = si2.copy()
    big.make_supercell([2, 2, 2])  # 16 atoms x 4 gth-szv orbitals = 64 > 32
    with pytest.raises(InputError, match="64 orbitals x k-points exceeds cc_max_orbitals=32"):
        pyscf_label(big, PySCFSettings(level="CCSD(T)", kmesh=(1, 1, 1)))


def test_reference_structures_and_keys():
    si, spin = reference_structure("Si")
    assert len(si) == 2 and spin == 0 and si.get_space_group_info()[1] == 227
    o2, spin = reference_structure("O")
    assert len(o2) == 2 and spin == 2 and o2.lattice.a == 8.0
    with pytest.raises(InputError, match="no elemental reference structure for B"):
        reference_structure("B")
    key = reference_key("Si", PySCFSettings())
    assert key == reference_key("Si", PySCFSettings(kmesh=(4, 4, 4)))  # references take kmesh from kspacing
    assert key != reference_key("Si", PySCFSettings(level="PBE0"))


@pytest.mark.slow
def test_pbe_energy_gap_and_formation_energy(si2):
    settings = PySCFSettings(level="PBE", kspacing=GAMMA)
    ref = reference_energy("Si", settings)
    result = pyscf_label(si2, settings, formation_energy=True)
    assert result.converged and result.fidelity == "PBE" and result.code == "pyscf"
    assert result.parameters["kmesh"] == [1, 1, 1] and result.parameters["basis"] == "gth-szv"
    assert result.value == pytest.approx(ref.value, abs=1e-6)  # same cell as the reference
    assert result.formation_energy_per_atom_eV == pytest.approx(0.0, abs=1e-6)
    assert result.references_eV_per_atom == {"Si": ref.value}
    assert ref.input_hash == reference_key("Si", settings)  # the cache key is the reference's own input hash
    assert 0.5 < result.band_gap_eV < 5 and result.scf_cycles >= 1
    d = json.loads(json.dumps(result.to_dict()))
    assert d["input_hash"] == result.input_hash and d["parameters"]["density_fit"] == "GDF"
    assert {lab.property for lab in result.labels()} == {"energy_per_atom", "formation_energy_per_atom", "band_gap"}


@pytest.mark.slow
@pytest.mark.parametrize("level", ["r2SCAN", "PBE0"])
def test_other_functionals_run(si2, level):
    result = pyscf_label(si2, PySCFSettings(level=level, kspacing=GAMMA))
    assert result.converged and result.fidelity == level
    assert -100 < result.value < -94  # eV/atom: Si with 4-valence-electron GTH pseudopotentials (PBE: -96.7)


@pytest.mark.slow
def test_unconverged_scf_is_never_returned_as_converged(si2):
    settings = PySCFSettings(level="PBE", kspacing=GAMMA, max_cycle=1, conv_tol=1e-12)
    with pytest.raises(ConvergenceError, match="not converged in 1 cycles") as err:
        pyscf_label(si2, settings)
    flagged = err.value.result  # what allow_unconverged=True would return, flagged for the store
    assert flagged.converged is False and flagged.to_dict()["converged"] is False and flagged.scf_cycles == 1


@pytest.mark.slow
def test_gamma_point_ccsd_t(si2):
    result = pyscf_label(si2, PySCFSettings(level="CCSD(T)", kmesh=(1, 1, 1)))
    assert result.converged and result.fidelity == "CCSD(T)" and result.band_gap_eV is None
    parts = result.components_eV
    assert parts["ccsd"] < 0 and result.energy_eV == pytest.approx(parts["hf"] + parts["ccsd"] + parts["triples"])


def test_left_handed_cells_are_given_to_pyscf_right_handed(si2):
    """Generated cells can be left-handed; PySCF's lattice sums assume right-handed vectors (it warns otherwise)."""
    import numpy as np

    from qadb.drivers.pyscf_dft import build_cell

    m = si2.lattice.matrix.copy()
    m[[0, 1]] = m[[1, 0]]
    left = Structure(Lattice(m), si2.species, si2.cart_coords, coords_are_cartesian=True)
    assert np.linalg.det(left.lattice.matrix) < 0
    cell = build_cell(left, PySCFSettings(level="PBE", kmesh=(1, 1, 1)))
    assert np.linalg.det(cell.lattice_vectors()) > 0
    assert np.allclose(cell.atom_coords(unit="Angstrom"), left.cart_coords)  # atoms where they were
