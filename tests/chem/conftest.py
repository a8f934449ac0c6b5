"""Hand-built reference crystals shared by the chem tests."""

import pytest
from pymatgen.core import Lattice, Structure


@pytest.fixture(scope="session")
def rocksalt() -> Structure:
    """NaCl, a = 5.64 Å, conventional cell (8 sites)."""
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="session")
def perovskite() -> Structure:
    """Cubic SrTiO3, a = 3.905 Å."""
    return Structure.from_spacegroup(
        "Pm-3m", Lattice.cubic(3.905), ["Sr", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]
    )


@pytest.fixture(scope="session")
def spinel() -> Structure:
    """MgAl2O4 normal spinel (origin choice 2), a = 8.08 Å, u = 0.2624: primitive cell, 14 sites."""
    conv = Structure.from_spacegroup(
        "Fd-3m:2",
        Lattice.cubic(8.08),
        ["Mg", "Al", "O"],
        [[0.125, 0.125, 0.125], [0.5, 0.5, 0.5], [0.2624, 0.2624, 0.2624]],
    )
    return conv.get_primitive_structure()


@pytest.fixture()
def overlapping(rocksalt) -> Structure:
    """Rock salt with one Cl pushed to 0.4 Å from a Na."""
    s = rocksalt.copy()
    na = s.cart_coords[0]
    cl = next(k for k, site in enumerate(s) if site.specie.symbol == "Cl")
    s.replace(cl, "Cl", na + [0.4, 0.0, 0.0], coords_are_cartesian=True)
    return s
