"""A job killed mid-run (SIGKILL of its process) is resumed with no duplicate labels (slow: real CHGNet)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from qadb.store import connect, jobs
from qadb.store.documents import Activity, LabelDoc, StructureDoc
from qadb.workflows import relax_structures, rerun_lost
from tests.workflows.conftest import add, si2_stretched

ROOT = Path(__file__).resolve().parents[2]


def _running_job(uri: str, proc: subprocess.Popen, timeout_s: float = 120) -> dict:
    """Poll the store (read-only: the job's process holds the writer lock) until the job is running."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            with connect(uri, read_only=True):
                doc = Activity._get_collection().find_one({"kind": "relax", "status": "running"})
        except Exception:  # noqa: BLE001 - the store folder may not be readable for a moment
            doc = None
        if doc:
            return doc
        time.sleep(0.05)
    raise AssertionError("the job never started")


@pytest.mark.slow
def test_sigkilled_job_is_rerun_and_writes_each_label_once(store_uri):
    with connect(store_uri) as s:
        (sid,) = add(s, si2_stretched())
    code = textwrap.dedent(f"""
        from qadb.workflows import RelaxMaker
        RelaxMaker().run({sid!r}, {store_uri!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        doc = _running_job(store_uri, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert doc["pid"] == proc.pid and proc.returncode == -signal.SIGKILL
    with connect(store_uri) as s:
        left = Activity._get_collection().find_one({"_id": doc["_id"]})
        assert left["status"] == "running" and LabelDoc.objects.count() == 0  # nothing half-written
        assert [d["_id"] for d in jobs.stale_jobs(s)] == [doc["_id"]]  # detected as a lost run
        (out,) = rerun_lost(store=s)  # the lost job, re-run as it was asked for
        assert out.job == doc["_id"] and out.status == "completed" and not out.cached
        record = Activity.objects(id=out.job).first()
        assert record.attempts == 2 and record.pid == os.getpid() and jobs.stale_jobs(s) == []
        assert LabelDoc.objects(structure=out.new_structure).count() == 3
        assert StructureDoc.objects(origin__kind="relaxed").count() == 1
        (again,) = relax_structures([sid], store=s)
        assert again.cached and LabelDoc.objects.count() == 3
