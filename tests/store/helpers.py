"""Small structures built in code, so tests depend on no downloaded files."""

from __future__ import annotations

from pathlib import Path

from pymatgen.core import Lattice, Structure

from qadb.store import ingest_records, records_from_paths

SAMPLES = Path(__file__).resolve().parents[2] / "qadb" / "data" / "samples"


def rocksalt(a: float = 5.64, species=("Na", "Cl"), conventional: bool = False) -> Structure:
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), list(species), [[0, 0, 0], [0.5, 0.5, 0.5]])
    return s if conventional else s.get_primitive_structure()


def ingest_samples(store, **kw):
    return ingest_records(store, records_from_paths(sorted(SAMPLES.glob("*.cif"))), **kw)
