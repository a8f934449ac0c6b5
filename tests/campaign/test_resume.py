"""A campaign SIGKILLed in every phase, resumed each time, ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import yaml

from qadb.campaign import build, recipe as recipes, state
from qadb.campaign.engine import Engine
from qadb.store import connect
from tests.conftest import SHARED_DATA

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (SHARED_DATA / "megnet_multifidelity_bandgap").exists(),
                                                   reason="needs the staged datasets in ../shared/data")]

RECIPE = {"name": "resume", "kind": "replay", "seed": 7, "budget": 50, "max_cycles": 10, "patience": 10,
          "candidates": {"source": "replay", "task": "bandgap", "init": 10},
          "predict": {"validator": "delta_ensemble"}, "select": {"strategy": "divergence", "top_k": 20},
          "validate": {"labeller": "replay"}}
# one kill per phase of cycle 1 (and one in the middle of paying for labels), each in a fresh process
FAULTS = ["generate:0", "validate-mid:0", "generate:1", "predict:1", "select:1", "validate:1", "validate-mid:1",
          "augment:1", "retrain:1", "decide:1"]


def _launch(uri: str, recipe_path, cwd, fault: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "QADB_SHARED_DATA": str(SHARED_DATA)}
    env.pop(state.FAULT_ENV, None)
    if fault:
        env[state.FAULT_ENV] = fault
    return subprocess.run([sys.executable, "-m", "qadb.cli", "--store", uri, "launch", "campaign", str(recipe_path)],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def _final(cid: str) -> list[tuple]:
    """Every cycle's outcome; values to 1e-9 (the nx-27017 server keeps 15 significant digits of a double)."""
    return [(c.index, list(c.selected), {k: round(v, 9) for k, v in c.labels.items()}, list(c.hits), sorted(c.failed))
            for c in state.cycles(cid)]


def test_sigkill_in_every_phase_then_resume_gives_the_uninterrupted_result(store_uri, tmp_path):
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    for fault in FAULTS:
        proc = _launch(store_uri, path, tmp_path, fault)
        assert proc.returncode == -signal.SIGKILL, (fault, proc.returncode, proc.stderr[-2000:])
    done = _launch(store_uri, path, tmp_path, None)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "state completed" in done.stdout

    rec = recipes.validate(RECIPE)
    cid = recipes.campaign_id(rec)
    with connect(store_uri, read_only=True):
        resumed = _final(cid)
        summary = state.cycles(cid)
        paid = sum(len(c.labels) + len(c.failed) for c in summary)
        chosen = sum(len(c.selected) for c in summary)
    # the reference runs on the same kind of backend: a server that rounds doubles changes later fits
    server = store_uri.startswith("mongodb")
    ref_uri = store_uri.split("?")[0] + "_ref" if server else str(tmp_path / "reference")
    try:
        with connect(ref_uri):
            Engine(cid, rec, build.parts(rec, cid)).run()
            reference = _final(cid)
    finally:
        if server:
            import pymongo

            pymongo.MongoClient(ref_uri).drop_database(ref_uri.rsplit("/", 1)[1])
    assert resumed == reference
    assert paid == chosen <= RECIPE["budget"]  # every selected candidate paid once: nothing bought twice, nothing lost
