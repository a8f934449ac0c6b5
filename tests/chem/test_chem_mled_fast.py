"""The fast M_LED path (`mled`: _opmotif + _crystalnn) against the matminer/pymatgen oracle (`mled_reference`)."""

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from qadb.chem import mled, mled_reference
from qadb.chem._crystalnn import crystalnn_elements
from qadb.chem._mled import _INDEX, _reference_elements, _reference_motif
from qadb.chem._opmotif import matminer_neighbours, motif_indices
from tests.conftest import SHARED_DATA

# MP-20 test entries, as the dataset gives them (8-decimal coordinates, slightly noisy lattices)
MO2AS3P = Structure(  # mp-1221513, P1: every site its own orbit
    Lattice.from_parameters(3.281502, 4.79098627, 6.95890814, 80.38552701, 76.36256695, 69.97279854),
    ["Mo", "Mo", "As", "As", "As", "P"],
    [[0.846333, 0.100334, 0.207], [0.163111, 0.8848, 0.788978], [0.599644, 0.691001, 0.109711],
     [0.406744, 0.29521, 0.891302], [0.134249, 0.257174, 0.474328], [0.849919, 0.771481, 0.528681]],
)  # fmt: skip
GATE = Structure(  # mp-10009: Te is not in PIGEN's element list (its sites are skipped, its bonds not counted)
    Lattice.from_parameters(4.1346, 4.13459945, 18.42557, 90.0, 90.0, 120.00000439),
    ["Ga"] * 4 + ["Te"] * 4,
    [[0.66666667, 0.33333333, 0.817041], [0.33333333, 0.66666667, 0.317041], [0.33333333, 0.66666667, 0.182959],
     [0.66666667, 0.33333333, 0.682959], [0.66666667, 0.33333333, 0.113796], [0.33333333, 0.66666667, 0.613796],
     [0.33333333, 0.66666667, 0.886204], [0.66666667, 0.33333333, 0.386204]],
)  # fmt: skip
PUPT5 = Structure(  # mp-7751: Pu lies beyond PIGEN's 85 elements
    Lattice.from_parameters(4.468113, 5.342708, 5.34270899, 119.99999385, 90.0, 90.0),
    ["Pu"] + ["Pt"] * 5,
    [[0.0, 0.0, 0.0], [0.5, 0.0, 0.5], [0.0, 0.66666667, 0.33333333], [0.0, 0.33333333, 0.66666667],
     [0.5, 0.5, 0.5], [0.5, 0.5, 0.0]],
)  # fmt: skip


def _assert_same_sites(structure: Structure) -> None:
    """Every decided site: motif and neighbour elements equal matminer's / pymatgen's."""
    counted = [i for i, site in enumerate(structure) if site.specie.symbol in _INDEX]
    neighbours = {i: matminer_neighbours(structure, i) for i in counted}
    motifs = motif_indices(structure, neighbours)
    elements = crystalnn_elements(structure, neighbours)
    for i in counted:
        assert motifs[i] == _reference_motif(structure, i), i
        assert elements[i] == frozenset(_reference_elements(structure, i)), i


def _assert_same_mled(structure: Structure) -> None:
    fast, ref = mled(structure), mled_reference(structure)
    assert fast == ref
    assert np.array_equal(fast.vector, ref.vector) and fast.value == ref.value


@pytest.mark.parametrize("name", ["rocksalt", "perovskite", "spinel"])
def test_fast_equals_reference_on_hand_built_crystals(name, request):
    structure = request.getfixturevalue(name)
    _assert_same_mled(structure)
    assert mled(structure).fallback_sites == 0


@pytest.mark.parametrize("structure", [MO2AS3P, GATE, PUPT5], ids=["Mo2As3P-P1", "GaTe", "PuPt5"])
def test_fast_equals_reference_on_mp20_entries(structure):
    _assert_same_mled(structure)
    assert mled(structure).fallback_sites == 0


def test_fast_parts_equal_reference_site_by_site():
    _assert_same_sites(MO2AS3P)


def test_excluded_elements_are_skipped():
    assert mled(GATE).skipped_sites == 4 and mled(PUPT5).skipped_sites == 1


def test_undecided_sites_fall_back_to_the_reference():
    # Two atoms 0.05 Å apart: the fast motif path declines; a 25 Å vacuum gap: the 7 Å and 12 Å neighbour
    # lists do not close the Voronoi cells, so the fast CrystalNN path declines too.
    overlap = Structure(Lattice.cubic(4.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5125]])
    slab = Structure(Lattice.tetragonal(3.0, 28.0), ["Cu", "Cu"], [[0, 0, 0], [0.5, 0.5, 0.0536]])
    for structure in (overlap, slab):
        assert mled(structure).fallback_sites > 0
        _assert_same_mled(structure)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "mp_20_mattergen_cache").exists(), reason="MP-20 not staged")
def test_fast_equals_reference_on_mp20_test():
    from qadb.chem._datasets import mp20_structures

    _, structures = mp20_structures("test", 100)
    for structure in structures:
        _assert_same_mled(structure)
