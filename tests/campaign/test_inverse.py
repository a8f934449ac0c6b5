"""Inverse-design campaign (seed 003): recipe checks, pre-filter, screening stages, fine-tune, resume."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from qadb.campaign import inverse, recipe as recipes, state
from qadb.campaign.generative import _Structures
from qadb.campaign.engine import Engine
from qadb.errors import ConfigError
from qadb.models.bulk_modulus import DEFAULT_CHECKPOINT, BulkModulusPrefilter
from qadb.store import connect
from tests.conftest import SHARED_DATA

needs_data = pytest.mark.skipif(not (SHARED_DATA / "mp_elasticity_binaries").exists(),
                                reason="needs the staged datasets in ../shared/data")

BASE = {"name": "inv-test", "kind": "inverse_design", "seed": 0, "budget": 4, "max_cycles": 2, "patience": 5,
        "candidates": {"source": "generator", "n": 4}, "select": {"strategy": "exploit", "top_k": 2,
                                                                   "budget_fraction": 1.0, "clusters": 2},
        "validate": {"labeller": "mlip"}, "filter": {"funnel": []},
        "inverse": {"target": 350, "stage2_max": 3, "mape_samples": 2}}


def rec(**over) -> dict:
    r = copy.deepcopy(BASE)
    for k, v in over.items():
        r[k] = {**r[k], **v} if isinstance(v, dict) and isinstance(r.get(k), dict) else v
    return recipes.validate(r)


def diamond() -> Structure:
    return Structure(Lattice.cubic(3.567), ["C"] * 8, [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0],
                                                       [.25, .25, .25], [.25, .75, .75], [.75, .25, .75], [.75, .75, .25]])


def rocksalt(a: str, b: str, lat: float) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(lat), [a, b], [[0, 0, 0], [.5, .5, .5]]).get_primitive_structure()


def sodium() -> Structure:
    return Structure(Lattice.cubic(4.23), ["Na", "Na"], [[0, 0, 0], [.5, .5, .5]])


# --- recipe --------------------------------------------------------------------------------------------
def test_shipped_recipe_validates():
    r = recipes.load("flows/inverse_bulk_modulus.yaml")
    assert r["kind"] == "inverse_design" and r["inverse"]["target"] == 350 and r["max_cycles"] >= 3


@pytest.mark.parametrize("over, message", [
    ({"inverse": {"target": None}}, "inverse.target: None is not of type 'number'"),
    ({"inverse": {"target": 350, "second_mlip": "chgnet"}}, "inverse.second_mlip: must differ"),
    ({"inverse": {"target": 350, "mlip_tolerance": 0.5}}, "inverse.mlip_tolerance: must not exceed"),
    ({"inverse": {"target": 350, "stage_2": 3}}, "inverse: unknown field(s): 'stage_2'"),
    ({"validate": {"labeller": "pyscf"}}, "validate.labeller must be mlip"),
])
def test_bad_inverse_fields_are_named(over, message):
    r = copy.deepcopy(BASE)
    r.update(over)
    with pytest.raises(ConfigError) as err:
        recipes.validate(r, where="x.yaml")
    text = str(err.value)
    assert text.startswith("x.yaml: ") and message in text and "\n" not in text


def test_missing_target_is_one_line():
    r = copy.deepcopy(BASE)
    r["inverse"] = {}
    with pytest.raises(ConfigError, match=r"^x.yaml: inverse.target is required for kind inverse_design$"):
        recipes.validate(r, where="x.yaml")


# --- pre-filter ----------------------------------------------------------------------------------------
def test_prefilter_artifact_loads_safely_and_predicts():
    assert DEFAULT_CHECKPOINT.stat().st_size < 2 * 2**20
    model = BulkModulusPrefilter()
    k = model.predict([diamond(), rocksalt("Mg", "O", 4.21), sodium()])
    assert np.all(np.isfinite(k)) and np.all(k > 0)
    assert k[0] > k[1] > k[2]  # diamond (~440 GPa) > MgO (~160) > Na (~7)
    assert model.meta["test"]["n"] > 500 and model.meta["test"]["mape"] < 0.6


# --- stage II relaxation --------------------------------------------------------------------------------
def left_handed(s: Structure) -> Structure:
    m = s.lattice.matrix[[1, 0, 2]]  # two vectors swapped: det < 0, same crystal
    return Structure(Lattice(m), s.species, s.cart_coords, coords_are_cartesian=True)


def test_left_handed_cell_is_made_right_handed_without_moving_atoms():
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from qadb.drivers.relax import right_handed

    s = left_handed(rocksalt("Mg", "O", 4.21))
    assert np.linalg.det(s.lattice.matrix) < 0
    r = right_handed(s)
    assert np.linalg.det(r.lattice.matrix) > 0 and np.allclose(r.cart_coords, s.cart_coords)
    assert StructureMatcher().fit(r, s) and right_handed(r) is r


@pytest.mark.slow
def test_chgnet_relaxes_a_left_handed_cell_like_its_right_handed_twin():
    """On a left-handed cell CHGNet's stress has the wrong sign; the driver must not let that steer the cell."""
    from qadb.drivers import RelaxSettings, relax

    s = rocksalt("Mg", "O", 4.0)  # compressed: the cell must expand
    settings = RelaxSettings(model="chgnet", fmax=0.05, steps=200)
    right = relax(s, settings, allow_unconverged=True)
    left = relax(left_handed(s), settings, allow_unconverged=True)
    assert right.converged and left.converged
    assert right.volume_change > 0.05 and left.volume_change == pytest.approx(right.volume_change, abs=0.01)


# --- stages --------------------------------------------------------------------------------------------
def _store(structures) -> list[str]:
    from qadb.store.documents import Origin
    from qadb.workflows.persist import store_structure

    return [store_structure(s, Origin(kind="computed", settings={"test": i})) for i, s in enumerate(structures)]


class _FakeSource:
    cycle, used = 0, "base"


def test_screen_stages_counts_and_mape(embedded_uri, monkeypatch):
    """Stage I uses the real pre-filter, stage II a stubbed MLIP K; the MAPE probe ignores both screens."""
    fake_k = {}
    monkeypatch.setattr(inverse, "bulk_moduli", lambda ids, inv, model: [fake_k.get(i) for i in ids])
    with connect(embedded_uri):
        ids = _store([diamond(), rocksalt("Mg", "O", 4.21), sodium()])
        fake_k.update({ids[0]: 420.0, ids[1]: 160.0, ids[2]: 7.0})
        r = rec(inverse={"target": 350, "mape_samples": 3, "stage2_max": 3})
        screen = inverse.Screen(r, "cid", inverse.settings(r), _FakeSource(), _Structures())
        kept = screen(ids)
        note = inverse.records("cid")[0]
    pred = BulkModulusPrefilter().predict([diamond(), rocksalt("Mg", "O", 4.21), sodium()])
    stage1 = [i for i, k in zip(ids, pred) if abs(k - 350) <= 105]
    assert note["stage1_passed"] == len(stage1) and note["stage2_run"] == len(stage1)
    assert kept == [i for i in stage1 if abs(fake_k[i] - 350) <= 70]
    assert note["mape_samples"] == 3 and note["mape"] == pytest.approx(np.mean([70 / 350, 190 / 350, 343 / 350]), abs=1e-4)
    assert note["median_k_gpa"] == 160.0


def test_finetune_set_is_stage2_survivors_with_stage3_values_first(embedded_uri, monkeypatch):
    """The generator learns every stage-II survivor (its CHGNet K) and the stage-III value where one was bought;
    crystals that failed stage II, and later cycles, stay out."""
    fake_k = {}
    monkeypatch.setattr(inverse, "bulk_moduli", lambda ids, inv, model: [fake_k.get(i) for i in ids])
    with connect(embedded_uri):
        ids = _store([diamond(), rocksalt("Mg", "O", 4.21), rocksalt("Ti", "C", 4.33), sodium()])
        fake_k.update(dict(zip(ids, [420.0, 160.0, 300.0, None])))
        r = rec(inverse={"target": 350, "prefilter_tolerance": 1.0, "mlip_tolerance": 0.3, "mape_samples": 1,
                         "stage2_max": 4})
        screen = inverse.Screen(r, "cid", inverse.settings(r), _FakeSource(), _Structures())
        kept = screen(ids)
        cyc = state.cycle("cid", 0)
        cyc.generated = kept
        cyc.labels = {state.key(ids[0]): 380.0}  # stage III bought the diamond
        cyc.save()
        later = state.cycle("cid", 1)
        later.labels = {state.key(ids[1]): 170.0}
        later.save()
        got = inverse.finetune_set("cid", 0)
    assert kept == [ids[0], ids[2]] or kept == [ids[2], ids[0]]
    assert got == {ids[0]: 380.0, ids[2]: 300.0}


@needs_data
def test_stage3_takes_mp_dft_for_a_known_binary(embedded_uri, monkeypatch):
    import gzip

    row = json.loads(gzip.open(SHARED_DATA / "mp_elasticity_binaries/mp-binary-pbe-elasticity-2025.1.json.gz").read())[0]
    s = Structure.from_dict(row["structure"])
    s.perturb(0.01)
    with connect(embedded_uri):
        sid = _store([s])[0]
        monkeypatch.setattr(inverse, "relaxed_id", lambda doc_id, inv: doc_id)  # "relaxed" = as stored
        monkeypatch.setattr(inverse, "bulk_moduli", lambda *a: pytest.fail("MP match must not run the second MLIP"))
        lab = inverse.HighFidelityLabeller(inverse.settings(rec()), "cid", _Structures())
        value = lab.label(sid)
        from qadb.store.documents import LabelDoc

        stored = LabelDoc.objects(structure=sid, property="bulk_modulus").first()
    assert value == pytest.approx(row["bulk_modulus_vrh"])
    assert stored.fidelity == "PBE" and stored.parameters["mp_id"] == row["mp_id"]


# --- fine-tune -----------------------------------------------------------------------------------------
def test_finetune_two_steps_changes_weights(tmp_path):
    from qadb.models.generator import DEFAULT_CHECKPOINT as GEN, load_checkpoint
    from qadb.models.generator.finetune import crystals_from_structures, finetune

    new = crystals_from_structures([diamond(), rocksalt("Mg", "O", 4.21)], "K", [440.0, 160.0])
    replay = crystals_from_structures([sodium()], "bulk_modulus", [7.0])
    out = tmp_path / "ft.pt"
    meta = finetune(GEN, out, new, replay, steps=2, batch_size=4, lr=1e-3, seed=0, threads=1)
    before, after = load_checkpoint(GEN).model.state_dict(), load_checkpoint(out).model.state_dict()
    assert meta["finetune"]["steps"] == 2 and meta["finetune"]["n_new"] == 2 and meta["finetune"]["n_replay"] == 1
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert not list(tmp_path.glob("*.tmp"))


# --- resume --------------------------------------------------------------------------------------------
class _Crash(RuntimeError):
    pass


def test_resume_does_not_repeat_paid_labels(embedded_uri, monkeypatch):
    """A campaign that dies after its first stage-III label resumes without buying that label again."""
    structures = [diamond(), rocksalt("Mg", "O", 4.21), rocksalt("Ti", "C", 4.33), rocksalt("Zr", "C", 4.70)]
    calls: list[str] = []
    crash = {"armed": True}
    r = rec(inverse={"target": 350, "prefilter_tolerance": 1.0, "mlip_tolerance": 1.0, "stage2_max": 4,
                     "mape_samples": 2})

    with connect(embedded_uri):
        ids = _store(structures)
        k = dict(zip(ids, [430.0, 170.0, 240.0, 220.0]))
        monkeypatch.setattr(inverse, "bulk_moduli", lambda todo, inv, model: [k[i] for i in todo])

        def candidates(self, cycle, exclude, n, seed):
            self.cycle = cycle
            return [i for i in ids if i not in exclude]

        def label(self, doc_id):
            calls.append(doc_id)
            if crash["armed"] and len(calls) == 2:  # the first label is stored: die while buying the second
                crash["armed"] = False
                raise _Crash("killed")
            return k[doc_id] * 1.05

        monkeypatch.setattr(inverse.InverseSource, "candidates", candidates)
        monkeypatch.setattr(inverse.InverseSource, "checkpoint", lambda self, cycle: self.checkpoint_path(0))
        monkeypatch.setattr(inverse.HighFidelityLabeller, "label", label)
        cid = recipes.campaign_id(r)
        with pytest.raises(_Crash):
            Engine(cid, r, inverse.inverse_parts(r, cid)).run()
        first = list(calls)
        doc = Engine(cid, r, inverse.inverse_parts(r, cid)).run()
        paid = [c for cyc in state.cycles(cid) for c in list(cyc.labels) + list(cyc.failed)]
        recs = inverse.records(cid)
    assert doc.state == "completed" and calls[:2] == first and len(first) == 2
    assert len(paid) == len(set(paid)) == doc.budget_spent == 4
    assert calls.count(first[0]) == 1  # paid before the crash: read back, not bought again
    assert sorted(calls) == sorted([state.unkey(p) for p in paid] + [first[1]])  # only the interrupted one twice
    assert [x["cycle"] for x in recs] == [0, 1] and recs[0]["mape_samples"] == 2


@pytest.mark.slow
@needs_data
def test_real_two_iteration_campaign(embedded_uri, tmp_path, monkeypatch):
    """The real loop, tiny: committed generator, pre-filter, CHGNet, stage III, a 2-step fine-tune, iteration 1
    sampled from the fine-tuned checkpoint (registered with its parent)."""
    from qadb.store.documents import CheckpointDoc

    monkeypatch.setenv("QADB_HOME", str(tmp_path))
    r = rec(budget=4, max_cycles=2, candidates={"n": 6, "steps": 50}, select={"top_k": 1},
            inverse={"target": 350, "prefilter_tolerance": 1.0, "mlip_tolerance": 1.0, "stage2_max": 2,
                     "mape_samples": 2, "finetune": {"steps": 2, "replay": 4}})
    cid = recipes.campaign_id(r)
    with connect(embedded_uri):
        doc = Engine(cid, r, inverse.inverse_parts(r, cid)).run()
        recs = inverse.records(cid)
        ckpts = {c.id: c.parent for c in CheckpointDoc.objects()}
    assert doc.state == "completed" and [x["cycle"] for x in recs] == [0, 1]
    if recs[0]["stage3_labelled"]:  # something was validated, so iteration 1 sampled a fine-tuned generator
        assert recs[1]["checkpoint"].endswith("generator_c001.pt") and any(p for p in ckpts.values())
