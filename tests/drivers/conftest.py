"""Shared structures for driver tests: small cells so that real calculations stay cheap."""

import warnings

import pytest
from ase.build import bulk
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLIP packages and pymatgen warn about optional extras
        yield


@pytest.fixture
def si2() -> Structure:
    """Primitive diamond Si (2 atoms) at ASE's experimental lattice constant."""
    return AseAtomsAdaptor.get_structure(bulk("Si"))


@pytest.fixture
def si2_compressed() -> Structure:
    """Si2 squeezed by 4% in a: something for a relaxation to do."""
    return AseAtomsAdaptor.get_structure(bulk("Si", a=5.43 * 0.96))


@pytest.fixture
def overlapping() -> Structure:
    return Structure(Lattice.cubic(4.0), ["Si", "Si"], [[0, 0, 0], [0.05, 0, 0]])
