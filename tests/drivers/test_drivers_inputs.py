"""Fast tests: structure checks, input hashing, result serialisation, formation-energy maths."""

import json

import numpy as np
import pytest
from pymatgen.core import Composition, Lattice, Structure

from qadb.drivers import (
    DFTResult,
    RelaxSettings,
    as_structure,
    check_structure,
    formation_energy_per_atom,
    input_hash,
    structure_changed,
)
from qadb.errors import InputError


def test_overlapping_atoms_rejected(overlapping):
    with pytest.raises(InputError, match="overlapping atoms.*0.200 Å"):
        check_structure(overlapping)


def test_self_image_overlap_and_bad_types_rejected():
    tiny = Structure(Lattice.cubic(0.3), ["H"], [[0, 0, 0]])
    with pytest.raises(InputError):
        check_structure(tiny)
    with pytest.raises(InputError, match="expected a pymatgen Structure"):
        as_structure("Si")


def test_ase_atoms_accepted(si2):
    from pymatgen.io.ase import AseAtomsAdaptor

    assert as_structure(AseAtomsAdaptor.get_atoms(si2)) == si2


def test_input_hash_ignores_order_wrapping_and_noise(si2):
    settings = RelaxSettings()
    h = input_hash(si2, settings)
    assert len(h) == 64 and h == input_hash(si2.copy(), RelaxSettings())
    shuffled = Structure(si2.lattice, [s.species for s in si2][::-1],
                         [s.frac_coords + np.array([1.0, -1.0, 0.0]) + 1e-9 for s in si2][::-1])
    assert input_hash(shuffled, settings) == h


def test_input_hash_changes_with_structure_and_settings(si2):
    h = input_hash(si2, RelaxSettings())
    assert input_hash(si2, RelaxSettings(fmax=0.02)) != h
    moved = si2.copy()
    moved.translate_sites([1], [0.01, 0, 0])
    assert input_hash(moved, RelaxSettings()) != h
    assert input_hash(si2, {"a": 1}) == input_hash(si2, {"a": 1})


def test_relax_settings_validated():
    with pytest.raises(InputError, match="unknown optimizer"):
        RelaxSettings(optimizer="LBFGS-X")
    assert RelaxSettings(optimizer="bfgs").optimizer == "BFGS"


def test_structure_changed_detects_other_prototype(si2):
    rocksalt_like = Structure(Lattice.cubic(3.0), ["Si", "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert not structure_changed(si2, si2.copy(), RelaxSettings())
    strained = si2.copy()
    strained.scale_lattice(si2.volume * 1.1)  # uniform scaling is not a change (matcher normalises volume)
    assert not structure_changed(si2, strained, RelaxSettings())
    assert structure_changed(si2, rocksalt_like, RelaxSettings())


def test_formation_energy_hand_computed():
    refs = {"Mg": -1.5, "O": -4.0}
    # MgO cell with 2 formula units: E = -13 eV; refs 2*-1.5 + 2*-4 = -11 -> (-13 + 11) / 4 = -0.5
    assert formation_energy_per_atom(-13.0, Composition("Mg2O2"), refs) == pytest.approx(-0.5)
    with pytest.raises(InputError, match="no reference energy for O"):
        formation_energy_per_atom(-13.0, Composition("Mg2O2"), {"Mg": -1.5})


def test_result_to_dict_is_json_and_labels(si2):
    result = DFTResult(property="energy_per_atom", value=-5.0, units="eV/atom", fidelity="PBE", code="pyscf",
                       code_version="2.14.0", parameters={"basis": "gth-szv", "kmesh": (2, 2, 2)}, converged=True,
                       wall_time_s=float("nan"), input_hash="x" * 64, energy_eV=np.float64(-10.0), natoms=2,
                       formula="Si2", band_gap_eV=0.7, formation_energy_per_atom_eV=0.0, structure=si2)
    d = json.loads(json.dumps(result.to_dict()))
    assert d["wall_time_s"] is None and d["parameters"]["kmesh"] == [2, 2, 2]
    assert Structure.from_dict(d["structure"]) == si2
    props = {(lab.property, lab.units) for lab in result.labels()}
    assert props == {("energy_per_atom", "eV/atom"), ("formation_energy_per_atom", "eV/atom"), ("band_gap", "eV")}
    assert all(lab.fidelity == "PBE" and lab.input_hash == "x" * 64 for lab in result.labels())
