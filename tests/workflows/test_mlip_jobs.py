"""Real CHGNet jobs on 2-atom Si cells (slow): relaxed structures, labels, provenance, idempotency."""

import pytest

from qadb.drivers import BulkModulusSettings, RelaxSettings
from qadb.store import lineage
from qadb.store.blobs import get_json
from qadb.store.documents import Activity, LabelDoc, StructureDoc
from qadb.workflows import RelaxMaker, bulk_moduli, relax_structures
from tests.workflows.conftest import add, counts, si2_compressed, si2_stretched

pytestmark = pytest.mark.slow


def test_relax_stores_new_structure_labels_and_trajectory_once(store):
    kept, changed = add(store, si2_compressed(), si2_stretched())
    seen = []
    first = relax_structures([kept, changed], RelaxSettings(model="chgnet"), store=store,
                             progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 2), (2, 2)] and [o.status for o in first] == ["completed", "completed"]
    ok, moved = first
    assert ok.structure == kept and not ok.cached and ok.new_structure not in (kept, changed)
    assert ok.summary["fidelity"] == "MLIP:CHGNet@0.3.0" and ok.summary["structure_changed"] is False
    assert moved.summary["structure_changed"] is True
    assert StructureDoc.objects(id=moved.new_structure).first().flags == ["changed_on_relax"]

    relaxed = StructureDoc.objects(id=ok.new_structure).first()
    assert relaxed.origin.kind == "relaxed" and relaxed.origin.parents == [kept] and relaxed.origin.activity == ok.job
    labels = {lab.property: lab for lab in LabelDoc.objects(structure=ok.new_structure)}
    assert set(labels) == {"energy_per_atom", "max_force", "pressure"} and sorted(ok.labels) == sorted(l.id for l in labels.values())
    energy = labels["energy_per_atom"]
    assert energy.fidelity == "MLIP:CHGNet@0.3.0" and energy.rung == 0 and energy.code == "chgnet" and energy.code_version
    assert energy.parameters["optimizer"] == "FIRE" and energy.parameters["fmax_eV_per_A"] == 0.05
    assert energy.job == ok.job and -6 < energy.value < -4 and labels["max_force"].value <= 0.05
    # provenance: label -> relaxed structure -> relax job -> parent
    assert {kept, ok.new_structure} <= {step["id"] for step in lineage(energy.id)}
    blob = get_json(store, f"{ok.job}.result")
    assert len(blob["trajectory"]) == ok.summary["steps"] + 1 and len(blob["result"]["forces_eV_per_A"]) == 2

    before = counts()
    again = relax_structures([kept, changed], RelaxSettings(model="chgnet"), store=store)
    assert all(o.cached for o in again) and [o.new_structure for o in again] == [o.new_structure for o in first]
    assert counts() == before and Activity.objects(id=ok.job).first().attempts == 1


def test_unconverged_relaxation_is_recorded_not_stored(store):
    (sid,) = add(store, si2_stretched())
    before = counts()
    (out,) = relax_structures([sid], RelaxSettings(model="chgnet", steps=2), store=store)
    assert out.status == "unconverged" and out.new_structure is None and out.labels == []
    assert "not converged" in out.summary["reason"]
    after = counts()
    assert after["labels"] == before["labels"] and after["structures"] == before["structures"]
    assert relax_structures([sid], RelaxSettings(model="chgnet", steps=2), store=store)[0].cached


def test_bulk_modulus_label(store):
    (sid,) = add(store, si2_compressed())
    (out,) = bulk_moduli([sid], BulkModulusSettings(relax=RelaxSettings(model="chgnet"), n_points=5), store=store)
    assert out.status == "completed" and 60 < out.summary["value"] < 120  # experiment ~98 GPa
    (lab,) = LabelDoc.objects(structure=sid, property="bulk_modulus")
    assert lab.units == "GPa" and lab.parameters["method"] == "eos:birch_murnaghan" and lab.fidelity.startswith("MLIP:")


def test_crash_while_writing_leaves_no_duplicate_on_rerun(store, monkeypatch):
    """A job that dies between its writes is re-run onto the same ids: one structure, one label set."""
    import qadb.workflows.persist as persist

    (sid,) = add(store, si2_compressed())
    real = persist.flag_conflicts

    def die(ids):  # the labels are inserted, the job record is not finished yet
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(persist, "flag_conflicts", die)
    with pytest.raises(KeyboardInterrupt):
        RelaxMaker().run(sid, store)
    assert Activity.objects(kind="relax").first().status == "failed"
    monkeypatch.setattr(persist, "flag_conflicts", real)
    (out,) = relax_structures([sid], store=store)
    assert out.status == "completed" and not out.cached and Activity.objects(id=out.job).first().attempts == 2
    assert LabelDoc.objects(structure=out.new_structure).count() == 3
    assert StructureDoc.objects(origin__kind="relaxed").count() == 1



def test_local_flow_skips_the_label_of_an_unconverged_relaxation(store):
    from qadb.workflows import PySCFLabelMaker, run_flow, screening_flow

    (sid,) = add(store, si2_stretched())
    flow = screening_flow([sid], RelaxMaker(settings=RelaxSettings(steps=1)), PySCFLabelMaker(), store=store)
    outcomes = {o.kind: o for o in run_flow(flow, store=store).values()}
    assert outcomes["relax"].status == "unconverged" and outcomes["label"].status == "skipped"
    assert outcomes["hull"].status == "completed"  # the refresh of the system still ran
    assert Activity.objects(kind="label").count() == 0
