"""Job tracking in the store (fast): deterministic ids, claims, stale and live runs, serialisation."""

import os
import socket

import pytest

from qadb import fidelity as fid
from qadb.drivers import BulkModulusSettings, PySCFSettings, RelaxSettings
from qadb.store import jobs
from qadb.store.documents import Activity, Ref
from qadb.workflows import BulkModulusMaker, Outcome, PySCFLabelMaker, RelaxMaker, maker_from_record
from tests.workflows.conftest import add, si2_compressed


def test_fidelity_taxonomy_covers_every_level():
    names = ["PBE", "PBE+U", "PBEsol", "SCAN", "r2SCAN", "HSE06", "PBE0", "CCSD(T)", "EXP", "MLIP:CHGNet@0.3.0"]
    assert [fid.canonical(n) for n in names] == names
    assert fid.canonical("r2scan") == "r2SCAN" and fid.canonical("hse") == "HSE06" and fid.canonical("ccsd_t") == "CCSD(T)"
    assert fid.rung("MLIP:SevenNet-0@11Jul2024") < fid.rung("PBE") < fid.rung("r2SCAN") < fid.rung("HSE06")
    with pytest.raises(Exception, match="unknown fidelity"):
        fid.canonical("B3LYP")


def test_job_id_depends_on_structure_and_settings_only():
    s = si2_compressed()
    a = RelaxMaker(settings=RelaxSettings(fmax=0.05)).job_id("qadb-x", s)
    assert a == RelaxMaker(settings=RelaxSettings(fmax=0.05), device="cuda", threads=4).job_id("qadb-x", s)
    assert a != RelaxMaker(settings=RelaxSettings(fmax=0.02)).job_id("qadb-x", s)
    assert a != RelaxMaker().job_id("qadb-y", s)
    moved = s.copy()
    moved.translate_sites([0], [0.01, 0, 0])
    assert a != RelaxMaker().job_id("qadb-x", moved)
    assert a.startswith("relax-") and BulkModulusMaker().job_id("qadb-x", s).startswith("bulk_modulus-")


def _claim(store, jid="label-test", **kw):
    return jobs.claim(store, jid, kind="label", inputs=[Ref(collection="structures", id="s", role="input")],
                      parameters={}, code={}, **kw)


def test_claim_finish_then_cached(store):
    first = _claim(store)
    assert first.owned and first.doc["attempts"] == 1 and first.doc["pid"] == os.getpid()
    jobs.finish("label-test", "completed", outputs=[Ref(collection="labels", id="l1", role="energy_per_atom")],
                summary={"value": 1.5})
    again = _claim(store)
    assert not again.owned and again.status == "completed"
    assert Outcome.from_record(again.doc, cached=True).labels == ["l1"]
    assert _claim(store, rerun=True).owned  # an explicit rerun takes it again
    assert Activity.objects(id="label-test").first().attempts == 2


def test_failed_job_is_claimed_again(store):
    _claim(store)
    jobs.fail("label-test", "RuntimeError: boom\nwith a second line")
    doc = Activity._get_collection().find_one({"_id": "label-test"})
    assert doc["status"] == "failed" and doc["error"] == "RuntimeError: boom with a second line"
    assert _claim(store).owned


def _plant_running(host: str, pid: int, beat_age_s: float = 0.0) -> None:
    from datetime import timedelta

    from qadb.store.documents import utcnow

    when = utcnow() - timedelta(seconds=beat_age_s)
    Activity._get_collection().insert_one({"_id": "label-test", "kind": "label", "status": "running", "inputs": [],
                                           "host": host, "pid": pid, "attempts": 1, "started_at": when,
                                           "heartbeat_at": when})


def test_dead_owner_is_stale_and_taken_over(store):
    dead = 2 ** 22 + 12345  # above Linux's default pid_max: no such process
    _plant_running(socket.gethostname(), dead)
    assert [d["_id"] for d in jobs.stale_jobs(store)] == ["label-test"]
    taken = _claim(store)
    assert taken.owned and taken.doc["attempts"] == 2 and taken.doc["pid"] == os.getpid()


def test_live_twin_is_not_run_twice(store):
    if store.embedded:
        pytest.skip("on the embedded store the writer lock already rules out a live twin")
    _plant_running("another-host", 4242)  # fresh heartbeat on another machine: alive
    twin = _claim(store, wait=False)
    assert not twin.owned and twin.status == "running"
    Activity._get_collection().delete_one({"_id": "label-test"})
    _plant_running("another-host", 4242, beat_age_s=jobs.STALE_AFTER_S + 1)  # silent too long: lost
    assert _claim(store, wait=False).owned


def test_makers_survive_serialisation():
    """Jobs travel as JSON (FireWorks, job records): makers and nested settings come back equal."""
    import json

    from monty.json import MontyDecoder, jsanitize

    maker = BulkModulusMaker(settings=BulkModulusSettings(relax=RelaxSettings(fmax=0.02), n_points=5), device="cuda")
    job = maker.make("qadb-x")
    assert job.config.manager_config == {"_category": "gpu"}
    back = MontyDecoder().process_decoded(json.loads(json.dumps(jsanitize(job.as_dict(), strict=False))))
    assert back.maker == maker and isinstance(back.maker.settings.relax, RelaxSettings)
    pyscf = PySCFLabelMaker(settings=PySCFSettings(level="r2scan", kmesh=(2, 2, 2)), spin=2)
    again = maker_from_record(json.loads(json.dumps(pyscf.record())))
    assert again == pyscf and again.settings.kmesh == (2, 2, 2) and pyscf.make("x").config.manager_config["_category"] == "dft"
    with pytest.raises(Exception, match="not a qadb.workflows class"):
        maker_from_record({"maker": "os.system", "fields": {}})


def test_missing_structure_is_an_input_error(store):
    from qadb.errors import InputError
    from qadb.workflows import relax_structures

    add(store, si2_compressed())
    with pytest.raises(InputError, match="no structure 'qadb-nope' in the store"):
        relax_structures(["qadb-nope"], store=store)
    assert jobs.list_jobs() == []
