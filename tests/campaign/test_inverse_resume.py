"""An inverse-design campaign SIGKILLed in every phase of an iteration, resumed each time, ends exactly where an
uninterrupted run with the same seed ends, and no label is bought or written twice.

The real loop, tiny: the committed generator, the pre-filter, CHGNet relaxation + E(V) for the MAPE probe and
stage II, stage III (MP DFT or SevenNet-0), a fine-tune of the generator before iteration 1. Each kill is a
SIGKILL of the campaign process (`QADB_FAULT_AT` makes the process kill itself at a named point, so the kill
lands where it is meant to; nothing runs after it, exactly as for a kill from outside), plus one kill from this
process at a moment it does not choose. The reference run goes on in parallel, in its own store and QADB_HOME.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import torch
import yaml

from qadb.campaign import inverse, recipe as recipes, state
from qadb.store import connect
from tests.conftest import SHARED_DATA

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (SHARED_DATA / "mp_elasticity_binaries").exists(),
                                                   reason="needs the staged datasets in ../shared/data")]

# two-atom cells (CHGNet is cheap on them; fewer than ~50 denoising steps leave cells of 10^3-10^4 Å^3 per atom
# whose atoms do not interact) and wide screens so that iteration 0 buys stage-III labels and iteration 1 samples a fine-tuned generator
RECIPE = {"name": "inv-resume", "kind": "inverse_design", "seed": 1, "budget": 4, "max_cycles": 2, "patience": 5,
          "candidates": {"source": "generator", "n": 5, "steps": 100, "num_atoms": 2},
          "select": {"strategy": "exploit", "top_k": 2, "budget_fraction": 1.0, "clusters": 2},
          "validate": {"labeller": "mlip"}, "filter": {"funnel": []},
          "inverse": {"target": 350, "prefilter_tolerance": 1.0, "mlip_tolerance": 1.0, "stage2_max": 2,
                      "mape_samples": 2, "relax": {"fmax": 0.2, "steps": 100},
                      "finetune": {"steps": 2, "batch_size": 4, "replay": 4}}}
# iteration 0: one kill while paying for stage III; iteration 1: one kill in every phase, in order: before the
# fine-tune, after it, after sampling, in the MAPE probe, in stage II, after the screens, then each engine phase
# (stage III before and between labels)
FAULTS = ["validate-mid:0", "generate:1", "finetune:1", "sample:1", "probe-mid:1", "stage2-mid:1", "screened:1",
          "predict:1", "select:1", "validate:1", "validate-mid:1", "augment:1", "retrain:1", "decide:1"]


def _cmd(uri: str, recipe_path) -> list[str]:
    return [sys.executable, "-m", "qadb.cli", "--store", uri, "launch", "campaign", str(recipe_path)]


def _env(home, fault: str | None = None) -> dict:
    env = {**os.environ, "QADB_SHARED_DATA": str(SHARED_DATA), "QADB_HOME": str(home)}
    env.pop(state.FAULT_ENV, None)
    if fault:
        env[state.FAULT_ENV] = fault
    return env


def _launch(uri: str, recipe_path, home, cwd, fault: str | None) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(uri, recipe_path), env=_env(home, fault), cwd=cwd, capture_output=True, text=True,
                          timeout=900)


def _final(cid: str) -> dict:
    """Everything a run ends with: cycles, stage records, generated crystals, labels (values to 1e-9)."""
    from qadb.store.documents import LabelDoc, StructureDoc

    def r(v):
        return round(v, 9) if isinstance(v, float) else v

    cycles = [(c.index, list(c.generated), list(c.selected), {k: r(v) for k, v in c.labels.items()}, list(c.hits),
               sorted(c.failed), c.phase) for c in state.cycles(cid)]
    records = [{k: ({kk: r(vv) for kk, vv in v.items()} if isinstance(v, dict) else r(v))
                for k, v in rec.items() if k != "checkpoint"} for rec in inverse.records(cid)]
    generated = sorted(d.id for d in StructureDoc.objects(campaign=cid).only("id"))
    labels = sorted((d.structure, d.property, d.fidelity, r(d.value)) for d in LabelDoc.objects())
    return {"cycles": cycles, "records": records, "generated": generated, "labels": labels}


def _weights(path) -> dict:
    from qadb.models.generator import load_checkpoint

    return load_checkpoint(path).model.state_dict()


def test_inverse_campaign_sigkilled_in_every_phase_resumes_to_the_uninterrupted_result(embedded_uri, tmp_path):
    path = tmp_path / "inverse.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    rec = recipes.validate(RECIPE)
    cid = recipes.campaign_id(rec)
    server = embedded_uri.startswith("mongodb")
    ref_uri = embedded_uri.split("?")[0] + "_ref" if server else str(tmp_path / "reference")
    home, ref_home = tmp_path / "home", tmp_path / "ref_home"
    reference = subprocess.Popen(_cmd(ref_uri, path), env=_env(ref_home), cwd=tmp_path, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    try:
        # a kill from outside, at whatever point the campaign has reached after 5 s: early enough that cycle 0's
        # own fault points below are still ahead on a quiet machine (it finished cycle 0 within 20 s there)
        proc = subprocess.Popen(_cmd(embedded_uri, path), env=_env(home), cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(5)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) in (-signal.SIGKILL, 0)
        for fault in FAULTS:
            proc = _launch(embedded_uri, path, home, tmp_path, fault)
            assert proc.returncode == -signal.SIGKILL, (fault, proc.returncode, proc.stderr[-2000:])
        done = _launch(embedded_uri, path, home, tmp_path, None)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "state completed" in done.stdout
        out, _ = reference.communicate(timeout=900)
        assert reference.returncode == 0, out[-2000:]
        with connect(embedded_uri, read_only=True):
            resumed = _final(cid)
        with connect(ref_uri, read_only=True):
            expected = _final(cid)
    finally:
        if reference.poll() is None:
            reference.kill()
        if server:
            import pymongo

            pymongo.MongoClient(ref_uri).drop_database(ref_uri.rsplit("/", 1)[1])

    ft = home / "campaigns" / cid / "generator_c001.pt"
    assert ft.is_file() and not list(ft.parent.glob("*.tmp"))  # iteration 1 sampled a fine-tuned generator
    ref_w, w = _weights(ref_home / "campaigns" / cid / "generator_c001.pt"), _weights(ft)
    assert all(torch.equal(w[k], ref_w[k]) for k in ref_w)
    assert resumed == expected
    # no label twice: one per (structure, property, fidelity), and each stage-III candidate paid once
    keys = Counter((s, p, f) for s, p, f, _ in resumed["labels"])
    assert keys and max(keys.values()) == 1
    paid = [k for _, _, _, labels, _, failed, _ in resumed["cycles"] for k in list(labels) + failed]
    chosen = [k for _, _, selected, _, _, _, _ in resumed["cycles"] for k in selected]
    assert len(paid) == len(set(paid)) == len(chosen) <= RECIPE["budget"]
    assert sum(len(labels) for _, _, _, labels, _, _, _ in resumed["cycles"][:1]) >= 1
