"""QA-GenAI campaigns fine-tune the generator every `generator_every` cycles (seed 000 Algorithm 1) on the
crystals labelled so far, and later cycles sample from the fine-tuned checkpoint, registered with its parent.
Real parts throughout: committed generator and MF-ENNP, CHGNet labels, CPU fine-tune."""

from __future__ import annotations

import copy

import pytest
import torch

from qadb.campaign import api, recipe as recipes, state
from qadb.models.generator import DEFAULT_CHECKPOINT, load_checkpoint
from qadb.store import connect

pytestmark = pytest.mark.slow


def test_generator_is_fine_tuned_and_samples_the_next_cycles(embedded_uri, tmp_path, monkeypatch):
    from qadb.store.documents import CheckpointDoc, StructureDoc

    monkeypatch.setenv("QADB_HOME", str(tmp_path))
    rec = copy.deepcopy(recipes.load("quickstart"))
    rec.update(name="ft-test", budget=9, max_cycles=3, patience=5)  # the quickstart's cycles, one more
    rec["retrain"]["generator_every"] = 1
    with connect(embedded_uri):
        doc = api.launch(recipes.validate(rec))
        cycles = state.cycles(doc.id)
        labelled = state.labelled(doc.id, through=1)
        origin = {c.index: {StructureDoc.objects.get(id=i).origin["checkpoint"] for i in c.generated} for c in cycles}
        parents = {c.id: c.parent for c in CheckpointDoc.objects()}
    assert doc.state == "completed" and [c.index for c in cycles] == [0, 1, 2]
    assert labelled, "the loop bought no label, so nothing could be fine-tuned"
    tuned = tmp_path / "campaigns" / doc.id / "generator_after_c001.pt"
    assert tuned.is_file() and any("fine-tuned on" in n for n in cycles[1].notes)
    base, new = load_checkpoint(DEFAULT_CHECKPOINT).model.state_dict(), load_checkpoint(tuned).model.state_dict()
    assert any(not torch.equal(base[k], new[k]) for k in base)
    # cycles 0 and 1 sample the committed generator, cycle 2 the fine-tuned one, whose parent is the committed one
    assert len(origin[0] | origin[1]) == 1 and len(origin[2]) == 1 and origin[2] != origin[0]
    assert parents[next(iter(origin[2]))] == next(iter(origin[0]))
