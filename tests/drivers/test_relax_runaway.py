"""A relaxation that runs away (collapsing cell, climbing energy) stops early as unconverged instead of
exhausting memory. Uses the real CHGNet on a Zr2Ni cell the generator produced, which collapsed 60 -> 6 Å^3."""

import pytest
from pymatgen.core import Lattice, Structure

from qadb.drivers import ConvergenceError, RelaxSettings, relax

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


def test_collapsing_cell_is_stopped_and_reported():
    with pytest.raises(ConvergenceError, match="stopped: (cell collapsed|energy rose)") as err:
        relax(ZR2NI, RelaxSettings(model="chgnet", fmax=0.1, steps=150))
    result = err.value.result
    assert not result.converged and result.steps < 60
    assert result.structure.volume > 0.3 * ZR2NI.volume
