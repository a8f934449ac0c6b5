"""Staged dataset presets: declared fidelities land on the labels, id-keyed labels join by mp-id."""

import pytest

from qadb.store import attach_dataset_labels, ingest_records, records_from_dataset
from qadb.store.documents import LabelDoc, StructureDoc


@pytest.fixture
def mp20_slice(store, shared_data):
    recs = records_from_dataset("mp20-val")[:150]
    ingest_records(store, recs)
    return recs


def test_mp20_labels_are_pbe_u_with_mp_parameters(mp20_slice):
    lab = LabelDoc.objects(property="formation_energy_per_atom").first()
    assert lab.fidelity == "PBE+U" and lab.code == "VASP" and lab.parameters["source"] == "Materials Project"
    assert LabelDoc.objects(property="band_gap").count() == 150


def test_megnet_gaps_join_by_mp_id(store, mp20_slice):
    report = attach_dataset_labels(store, "megnet-bandgap")
    ids = {r.source_id for r in mp20_slice}
    joined = LabelDoc.objects(parameters__source="MEGNet multi-fidelity band gaps (Chen et al. 2021)")  # nx-27017 has no regex
    assert report.new_labels == joined.count() > 0
    fidelities = {lab.fidelity for lab in joined}
    assert "PBE" in fidelities and fidelities <= {"PBE", "HSE06", "GLLB-SC", "SCAN"}
    for lab in joined[:20]:
        assert set(StructureDoc.objects.get(id=lab.structure).source_ids) & ids
    assert len(report.skipped) == report.records - report.new_labels  # every unplaced row is reported
    assert attach_dataset_labels(store, "megnet-bandgap").new_labels == 0  # idempotent


def test_fere_rows_carry_their_functional_and_experiment(store, shared_data):
    recs = [r for r in records_from_dataset("fere") if r.source_id.startswith("fere:Zn3N2:")]
    assert len(recs) == 10
    report = ingest_records(store, recs)
    fids = {lab.fidelity for lab in LabelDoc.objects}
    assert {"r2SCAN", "r2SCAN+U", "SCAN", "SCAN+U", "PBE+U", "EXP"} <= fids
    exp = LabelDoc.objects(fidelity="EXP")
    assert len({lab.value for lab in exp}) == 1 and all(lab.parameters["redistribute"] is False for lab in exp)
    assert report.new_structures < 10  # relaxations of one compound mostly merge
