"""Conflicting labels are flagged by the ingest that brings them, not only by a later re-ingest."""

from qadb.store import ingest_records
from qadb.store.documents import LabelDoc
from qadb.store.readers import RawLabel, RawRecord
from tests.store.helpers import rocksalt


def _record(where: str, source: str, energy: float) -> RawRecord:
    return RawRecord(where, "dict", rocksalt(5.64).as_dict(), source, "mp-22862",
                     [RawLabel("formation_energy_per_atom", energy, "eV/atom", "PBE+U", code="VASP")])


def test_exact_repeat_from_another_dataset_with_another_value_is_flagged_at_once(store):
    # the same representation and source id in two datasets: one material, one member, two values
    rep = ingest_records(store, [_record("a:1", "setA", -2.10), _record("b:7", "setB", -1.60)])
    assert rep.new_structures == 1
    values = sorted((lab.value, lab.conflict) for lab in LabelDoc.objects(property="formation_energy_per_atom"))
    assert values == [(-2.10, True), (-1.60, True)]
    assert rep.conflicts == 2
    again = ingest_records(store, [_record("a:1", "setA", -2.10), _record("b:7", "setB", -1.60)])
    assert again.new_structures + again.new_labels == 0 and again.conflicts == 0


def test_agreeing_repeat_is_not_flagged(store):
    ingest_records(store, [_record("a:1", "setA", -2.10), _record("b:7", "setB", -2.1000001)])
    assert not any(lab.conflict for lab in LabelDoc.objects())
