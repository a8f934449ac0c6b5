"""Compute jobs tracked in the store: idempotency keys, claims, heartbeats, finishing, lost runs.

A job is an `Activity` whose id is derived from what determines its result (kind, structure id,
structure hash, settings), so the record is both the idempotency key and the job's state::

    claim -> running -> finish(completed | unconverged)   or   fail -> failed

`claim` hands back the existing record instead of a claim when the job has already completed or
has run to its limits unconverged, so asking again costs one primary-key read. Failed jobs are
claimed again (a failure may be transient). A record left "running" by a process that died is
*stale* and is claimed again:

- on the embedded store opened for writing, every running record of another process is stale: this
  process holds the store's exclusive writer lock, so that process cannot be alive and about to write;
- on a server it is stale when its pid no longer exists on this host, or when its heartbeat
  (refreshed every `HEARTBEAT_S` while the job runs) is older than `stale_after_s`.

A live twin (the same job running in another process right now) is waited for and its result
returned (or, with ``wait=False``, its record is returned as it is, status "running"): nothing runs
twice.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymongo.errors import DuplicateKeyError

from qadb.store.connection import Store
from qadb.store.documents import Activity, Ref, utcnow
from qadb.store.identity import content_hash

HOST = socket.gethostname()
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # ten missed heartbeats
POLL_S = 2.0  # how often a job waiting on a live twin looks again
JOB_KINDS = ("relax", "bulk_modulus", "label", "hull")
FINAL_STATES = ("completed", "unconverged")
_ERROR_CHARS = 2000


def job_id(kind: str, key: Any) -> str:
    """Deterministic job id: the kind plus a hash of everything that determines the result."""
    return f"{kind}-{content_hash({'kind': kind, 'key': key})[:24]}"


@dataclass
class Claim:
    """What `claim` found: `owned` = this process now runs the job; else `doc` is the existing record."""

    doc: dict
    owned: bool

    @property
    def status(self) -> str:
        return self.doc["status"]


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    status = Path(f"/proc/{pid}/status")
    try:  # a killed child that nobody reaped yet is a zombie: dead for our purposes
        return "\nState:\tZ" not in status.read_text()
    except OSError:
        return True


def _this_process(doc: dict) -> bool:
    return doc.get("host") == HOST and doc.get("pid") == os.getpid()


def is_stale(doc: dict, store: Store, stale_after_s: float = STALE_AFTER_S) -> bool:
    """Whether a running record's owner is gone (see the module docstring for the rules)."""
    if doc.get("status") != "running":
        return False
    if _this_process(doc):
        return False  # a re-entrant call in this very process, not a dead run
    if store.embedded and not store.read_only:
        return True
    if doc.get("host") == HOST and not _pid_alive(doc.get("pid")):
        return True
    beat = doc.get("heartbeat_at") or doc.get("started_at")
    return beat is None or (utcnow() - beat).total_seconds() > stale_after_s


def _running_fields() -> dict:
    now = utcnow()
    return {"status": "running", "host": HOST, "pid": os.getpid(), "started_at": now, "heartbeat_at": now}


def claim(store: Store, jid: str, *, kind: str, inputs: list[Ref], parameters: dict, code: dict,
          rerun: bool = False, wait: bool = True, stale_after_s: float = STALE_AFTER_S) -> Claim:
    """Take job `jid` for this process, or return the record that makes running it unnecessary.

    `rerun=True` runs a completed or unconverged job again (a live run is still never doubled).
    A live twin in another process is waited for (`wait`, polling every `POLL_S`) until it
    finishes, then its record is returned, or until it goes stale, then the job is taken over.
    Races between processes are settled by the primary key (first insert wins) and by a
    compare-and-set on `attempts` for records that already exist.
    """
    store.require_writable()
    coll = Activity._get_collection()
    while True:
        doc = coll.find_one({"_id": jid})
        if doc is None:
            new = Activity(id=jid, kind=kind, inputs=inputs, parameters=parameters, code=code, attempts=1,
                           **_running_fields()).to_mongo().to_dict()
            try:
                coll.insert_one(new)
            except DuplicateKeyError:
                continue  # another process inserted it first: look again
            return Claim(new, True)
        state = doc["status"]
        if state in FINAL_STATES and not rerun:
            return Claim(doc, False)
        if state == "running" and not is_stale(doc, store, stale_after_s):
            if not wait or _this_process(doc):
                return Claim(doc, False)
            time.sleep(POLL_S)
            continue
        change = {"$set": {**_running_fields(), "outputs": [], "summary": {}, "code": code},
                  "$inc": {"attempts": 1}, "$unset": {"error": "", "ended_at": ""}}
        if coll.update_one({"_id": jid, "status": state, "attempts": doc.get("attempts")}, change).matched_count:
            return Claim(coll.find_one({"_id": jid}), True)


def finish(jid: str, status: str, *, outputs: list[Ref], summary: dict, inputs: list[Ref] | None = None) -> dict:
    """Mark a claimed job completed (or unconverged) with what it wrote; returns the record.

    `inputs` replaces the recorded inputs when the job found more on the way (e.g. reference labels).
    """
    change = {"status": status, "outputs": [ref.to_mongo().to_dict() for ref in outputs], "summary": summary,
              "ended_at": utcnow()}
    if inputs is not None:
        change["inputs"] = [ref.to_mongo().to_dict() for ref in inputs]
    coll = Activity._get_collection()
    coll.update_one({"_id": jid}, {"$set": change})
    return coll.find_one({"_id": jid})


def fail(jid: str, error: str) -> dict:
    """Mark a claimed job failed with a one-line reason; it will be claimed again when asked for."""
    line = " ".join(str(error).split())[:_ERROR_CHARS]
    coll = Activity._get_collection()
    coll.update_one({"_id": jid}, {"$set": {"status": "failed", "error": line, "ended_at": utcnow()}})
    return coll.find_one({"_id": jid})


@contextmanager
def heartbeat(store: Store, jid: str, every_s: float = HEARTBEAT_S) -> Iterator[None]:
    """Refresh the job's `heartbeat_at` from a thread while the body runs (server stores only).

    The embedded store needs none: its writer lock already tells live owners from dead ones.
    """
    if store.embedded:
        yield
        return
    stop = threading.Event()
    coll = Activity._get_collection()

    def beat() -> None:
        while not stop.wait(every_s):
            coll.update_one({"_id": jid, "status": "running"}, {"$set": {"heartbeat_at": utcnow()}})

    thread = threading.Thread(target=beat, name=f"heartbeat-{jid}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def list_jobs(*, status: str | None = None, kind: str | None = None, limit: int = 50) -> list[dict]:
    """Job records, newest first (ingest and other activities are not jobs and are left out)."""
    query: dict[str, Any] = {"kind": kind if kind else {"$in": list(JOB_KINDS)}}
    if status:
        query["status"] = status
    cursor = Activity._get_collection().find(query).sort("started_at", -1)
    return list(cursor.limit(limit) if limit else cursor)


def stale_jobs(store: Store, stale_after_s: float = STALE_AFTER_S) -> list[dict]:
    """Running job records whose owner is gone: lost runs, re-run the next time they are asked for."""
    return [doc for doc in list_jobs(status="running", limit=0) if is_stale(doc, store, stale_after_s)]


def job_counts() -> dict[str, dict[str, int]]:
    """{kind: {status: count}} over every job record."""
    counts: Counter = Counter()
    for doc in Activity._get_collection().find({"kind": {"$in": list(JOB_KINDS)}}, {"kind": 1, "status": 1}):
        counts[(doc["kind"], doc["status"])] += 1
    out: dict[str, dict[str, int]] = {}
    for (kind, status), n in sorted(counts.items()):
        out.setdefault(kind, {})[status] = n
    return out

