"""Fixtures for the job layer: 2-atom structures in a store, and a FireWorks LaunchPad.

The LaunchPad runs in-process on mongomock: the one MongoDB wire-protocol server available here
(nx-27017) refuses FireWorks' documents (inserting a firework fails with "JSON path error near
'_id'"), so no server on this machine can host FireWorks. With ``QADB_TEST_MONGO_URI`` set, the
same tests put the LaunchPad on that real MongoDB server instead.
"""

from __future__ import annotations

import warnings

import pytest
from ase.build import bulk
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from qadb.store import ingest_records
from qadb.store.documents import ALL_DOCUMENTS
from qadb.store.readers import RawLabel, RawRecord
from tests.conftest import EXTERNAL_URI, mongomock_launchpad


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLIP packages and pymatgen warn about optional extras
        yield


def si2_compressed() -> Structure:
    """Primitive diamond Si squeezed by 4 %: a relaxation that keeps the structure type."""
    return AseAtomsAdaptor.get_structure(bulk("Si", a=5.43 * 0.96))


def si2_stretched() -> Structure:
    """Diamond Si with one cell edge stretched to 5.5 Å: CHGNet relaxes it into another structure."""
    return Structure(Lattice.from_parameters(3.84, 3.84, 5.5, 60, 60, 60), ["Si", "Si"], [[0, 0, 0], [0.25] * 3])


def h2_box(bond: float = 0.80, box: float = 8.0) -> Structure:
    """One H2 molecule in a cubic box: the cheapest 2-atom PySCF cell (Γ only).

    Boxes of different size are different materials to the store (Δa/a > 5 %); the same box with
    another bond length is deduplicated into the same material.
    """
    return Structure(Lattice.cubic(box), ["H", "H"], [[0, 0, 0], [0, 0, bond]], coords_are_cartesian=True)


def rocksalt(a: float, species=("Na", "Cl")) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), list(species), [[0, 0, 0], [0.5] * 3]).get_primitive_structure()


def add(store, *structures: Structure, labels: list[list[RawLabel]] | None = None) -> list[str]:
    """Ingest `structures` (with optional labels each) and return their material ids in order."""
    from qadb.store.documents import AliasDoc

    records = [RawRecord(where=f"test:{i}", fmt="dict", payload=s.as_dict(), source="test",
                         labels=list(labels[i]) if labels else []) for i, s in enumerate(structures)]
    ingest_records(store, records)
    return [AliasDoc.objects(id=rec.text_key()).first().material for rec in records]


def formation(value: float, fidelity: str = "PBE") -> RawLabel:
    return RawLabel("formation_energy_per_atom", value, "eV/atom", fidelity)


def counts() -> dict[str, int]:
    """Documents per collection: equal before and after means the store was left unchanged."""
    return {d._get_collection_name(): d._get_collection().count_documents({}) for d in ALL_DOCUMENTS}


@pytest.fixture
def launchpad(store, monkeypatch, tmp_path):
    """A LaunchPad for `store`: in-process mongomock, or the real server of QADB_TEST_MONGO_URI."""
    from qadb.workflows import fireworks as fw

    if EXTERNAL_URI:
        lp = fw.launchpad(store.uri)
    else:
        lp = mongomock_launchpad(monkeypatch, "qadb_fireworks_test")
    yield lp
    for name in ("fireworks", "launches", "workflows", "fw_id_assigner", "offline_runs"):
        lp.db.drop_collection(name)
