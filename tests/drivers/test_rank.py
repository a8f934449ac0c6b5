"""Ranking candidate cells by MLIP energy (real CHGNet: no stand-in for the potential)."""

import math

import pytest
from ase.build import bulk
from pymatgen.io.ase import AseAtomsAdaptor

from qadb.drivers import load_mlip
from qadb.drivers.rank import RankSettings, rank_by_energy
from qadb.errors import InputError


def test_unknown_ranking_model_is_one_error(si2):
    with pytest.raises(InputError, match="unknown MLIP 'nope'"):
        rank_by_energy([si2], RankSettings(model="nope"))


@pytest.mark.slow
def test_ground_state_first_rejected_cells_last(si2, si2_compressed, overlapping):
    expanded = AseAtomsAdaptor.get_structure(bulk("Si", a=5.43 * 1.08))
    cells = [overlapping, si2_compressed, expanded, si2]
    ranking = rank_by_energy(cells)
    assert ranking.fidelity == "MLIP:CHGNet@0.3.0"
    assert [r.index for r in ranking.order][0] == 3 and ranking.best(1) == [3]
    assert ranking.best(10) == [r.index for r in ranking.order[:3]] and len(ranking.best(10)) == 3
    last = ranking.order[-1]
    assert last.index == 0 and math.isinf(last.energy_per_atom) and "overlapping atoms" in last.reason
    energies = [r.energy_per_atom for r in ranking.order[:3]]
    assert energies == sorted(energies) and -6 < energies[0] < -4


@pytest.mark.slow
def test_batched_energies_equal_the_ase_calculator(si2_compressed):
    """CHGNet's batched path and its ASE calculator give the same energy per atom."""
    mlip = load_mlip("chgnet")
    atoms = AseAtomsAdaptor.get_atoms(si2_compressed)
    atoms.calc = mlip.calculator()
    ase_e = atoms.get_potential_energy() / len(atoms)
    assert mlip.energies_per_atom([si2_compressed, si2_compressed])[1] == pytest.approx(ase_e, abs=1e-4)
    assert mlip.energies_per_atom([]).shape == (0,)


@pytest.mark.slow
def test_other_potentials_rank_through_their_calculator(si2, si2_compressed):
    pytest.importorskip("sevenn")
    ranking = rank_by_energy([si2_compressed, si2], RankSettings(model="sevennet-0"))
    assert ranking.fidelity.startswith("MLIP:SevenNet-0") and ranking.best(2) == [1, 0]
