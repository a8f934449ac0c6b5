"""Real PySCF jobs on 2-atom cells (slow): references cached in the store, divergence recorded."""

import pytest

from qadb.drivers import PySCFSettings, reference_key
from qadb.store.documents import Activity, HullCacheDoc, LabelDoc
from qadb.workflows import label_structures, load_hull
from tests.workflows.conftest import add, counts, h2_box

pytestmark = pytest.mark.slow


def test_formation_energy_uses_references_computed_once_at_the_same_level(store):
    stretched, squeezed = add(store, h2_box(0.80), h2_box(0.70, box=7.0))
    settings = PySCFSettings(level="r2SCAN")
    (first,) = label_structures([stretched], "pyscf", settings, store=store)
    assert first.status == "completed" and first.summary["fidelity"] == "r2SCAN", first.error
    ref = LabelDoc.objects(input_hash=reference_key("H", settings), property="energy_per_atom").first()
    assert ref is not None and ref.fidelity == "r2SCAN" and ref.parameters["xc"] == "MGGA_X_R2SCAN,MGGA_C_R2SCAN"
    assert first.summary["references"] == {"H": pytest.approx(ref.value)}
    job = Activity._get_collection().find_one({"_id": first.job})
    assert {"collection": "labels", "id": ref.id, "role": "reference:H"} in job["inputs"]

    labels = {lab.property: lab for lab in LabelDoc.objects(structure=stretched)}
    assert set(labels) == {"energy_per_atom", "formation_energy_per_atom", "band_gap"}
    e_f = labels["formation_energy_per_atom"]
    assert e_f.value == pytest.approx(labels["energy_per_atom"].value - ref.value)
    assert e_f.code == "pyscf" and e_f.code_version and e_f.parameters["basis"] == "gth-szv"
    assert e_f.parameters["pseudo"] == "gth-pbe" and e_f.parameters["density_fit"] == "GDF" and e_f.parameters["kmesh"] == [1, 1, 1]

    reference_jobs = Activity.objects(kind="label").count()  # the compound and the H reference
    (second,) = label_structures([squeezed], "pyscf", settings, store=store)
    assert Activity.objects(kind="label").count() == reference_jobs + 1  # no new reference job
    assert second.summary["references"] == first.summary["references"]
    hull = load_hull("H", "r2SCAN", store=store)  # refreshed after each labelling
    assert {e.id for e in hull.entries} >= {stretched, squeezed}
    assert HullCacheDoc.objects(id="H@r2SCAN").first().n_entries == 2
    before = counts()
    assert label_structures([stretched, squeezed], "pyscf", settings, store=store)[0].cached
    assert counts() == before


def test_divergent_scf_is_recorded_never_stored(store):
    (sid,) = add(store, h2_box())
    before = counts()
    settings = PySCFSettings(level="PBE", max_cycle=1)
    (out,) = label_structures([sid], "pyscf", settings, formation_energy=False, store=store)
    assert out.status == "unconverged" and out.labels == [] and "not converged in 1 cycles" in out.summary["reason"]
    after = counts()
    assert after["labels"] == before["labels"] and after["activities"] == before["activities"] + 1
    record = Activity.objects(id=out.job).first()
    assert record.status == "unconverged" and record.summary["converged"] is False
    assert label_structures([sid], "pyscf", settings, formation_energy=False, store=store)[0].cached
