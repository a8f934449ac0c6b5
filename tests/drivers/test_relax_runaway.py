"""A relaxation that runs away (collapsing cell, climbing energy) stops early as unconverged instead of
exhausting memory. Uses the real CHGNet on a Zr2Ni cell the generator produced, which collapsed 60 -> 6 Å^3.

The cell is left-handed (det L < 0), and that is why it ran away: CHGNet's stress has the wrong sign on such
cells. `relax` now hands the potential the right-handed equivalent, so the guard is exercised through
`optimize` on the cell as given, and `relax` is checked to relax the same crystal without running away."""

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from qadb.drivers import RelaxSettings, relax
from qadb.drivers.relax import optimize

pytestmark = pytest.mark.slow

ZR2NI = Structure(  # exactly as the generator wrote it (the runaway depends on the exact start)
    Lattice([[-3.649808645248413, 0.3073353171348572, -2.59206485748291],
             [0.3880193531513214, 0.5022165775299072, -4.333784103393555],
             [-1.0588698387145996, 3.7833688259124756, -1.864303708076477]]),
    ["Ni", "Zr", "Zr"],
    [[0.8132525682449341, 0.6605813503265381, 0.07109536975622177],
     [0.06530746817588806, 0.9123574495315552, 0.32049182057380676],
     [0.5644745826721191, 0.4114391505718231, 0.8182966113090515]],
)
SETTINGS = RelaxSettings(model="chgnet", fmax=0.1, steps=150)


def test_collapsing_cell_is_stopped_and_reported():
    assert np.linalg.det(ZR2NI.lattice.matrix) < 0
    atoms = AseAtomsAdaptor.get_atoms(ZR2NI)
    atoms.calc = SETTINGS.mlip("cpu").calculator()
    converged, steps, why = optimize(atoms, SETTINGS.optimizer, SETTINGS.fmax, SETTINGS.steps, True)
    assert not converged and steps < 60
    assert why is not None and why.startswith(("cell collapsed", "energy rose"))
    assert atoms.get_volume() > 0.3 * ZR2NI.volume


def test_the_same_crystal_relaxes_on_its_right_handed_cell():
    result = relax(ZR2NI, SETTINGS, allow_unconverged=True)
    assert result.converged
    assert 0.7 * ZR2NI.volume < result.structure.volume < 1.5 * ZR2NI.volume
    assert np.linalg.det(result.structure.lattice.matrix) > 0
