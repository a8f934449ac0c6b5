"""The validate phase on FireWorks: paid jobs go to the LaunchPad, workers elsewhere run them.

A labeller that can be dispatched names, for one candidate, the tracked jobs its label needs
(`jobs`: the candidate's relaxation or DFT label, plus shared jobs such as elemental references),
each with its deterministic job id (`qadb.store.jobs`). The phase then

1. submits every job that is neither finished in the store nor already on the LaunchPad (found by
   the ``qadb_job`` key of its firework spec), so a resumed campaign, a second campaign needing the
   same reference, or a crash between `add_wf` and the cycle's save never queues a job twice;
2. records the fireworks of each candidate in the cycle (``counts["fireworks"]``);
3. polls until each candidate's jobs are finished, then reads its label back through the labeller,
   whose tracked jobs return their stored results without running anything. A fizzled firework
   makes its candidate a `failed` entry with a note naming the firework and the job's error.

Waiting stops at a timeout or when the campaign is asked to stop; the jobs stay queued and
``qadb campaign resume`` picks up where the wait left off.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from qadb.campaign import state
from qadb.store.documents import Activity, CycleDoc
from qadb.store.jobs import FINAL_STATES

JOB_KEY = "qadb_job"  # firework spec field holding the tracked job id
FAILED_FW_STATES = ("FIZZLED",)
PROGRESS_EVERY_S = 600.0  # an unchanged progress line is repeated this often, so a long wait does not look hung


@runtime_checkable
class JobLabeller(Protocol):
    """A labeller whose paid work is tracked jobs that can run on any worker."""

    fidelity: str

    def jobs(self, doc_id: str) -> list[tuple[str, Any]]: ...
    def label(self, doc_id: str) -> float | None: ...


class LaunchPadValidator:
    """Runs the validate phase of one campaign through a FireWorks LaunchPad."""

    def __init__(self, cid: str, labeller: JobLabeller, lp: Any, *, poll_s: float = 30.0,
                 timeout_s: float | None = 86400.0, say: Callable[[str], None] = lambda _m: None,
                 sleep: Callable[[float], None] = time.sleep):
        self.cid, self.labeller, self.lp = cid, labeller, lp
        self.poll_s, self.timeout_s, self.say, self.sleep = poll_s, timeout_s, say, sleep

    # --- looking things up ---------------------------------------------------------------------
    def _fireworks(self, jids: set[str]) -> dict[str, tuple[int, str]]:
        """{job id: (fw_id, state)} of the newest firework carrying each job."""
        found: dict[str, tuple[int, str]] = {}
        for doc in self.lp.fireworks.find({f"spec.{JOB_KEY}": {"$in": sorted(jids)}},
                                          {"fw_id": 1, "state": 1, f"spec.{JOB_KEY}": 1}):
            jid = doc["spec"][JOB_KEY]
            if jid not in found or doc["fw_id"] > found[jid][0]:
                found[jid] = (doc["fw_id"], doc["state"])
        return found

    @staticmethod
    def _records(jids: set[str]) -> dict[str, dict]:
        return {d["_id"]: d for d in Activity._get_collection().find({"_id": {"$in": sorted(jids)}},
                                                                      {"status": 1, "error": 1})}

    # --- the phase -------------------------------------------------------------------------------
    def validate(self, cycle: int, cyc: CycleDoc, stopping: Callable[[], bool]) -> str | None:
        """Label every selected candidate of `cyc`; None when done, else why the wait was left."""
        pending = {k: state.unkey(k) for k in map(state.key, cyc.selected)
                   if k not in cyc.labels and k not in cyc.failed}
        needs = {k: self.labeller.jobs(doc_id) for k, doc_id in pending.items()}
        self._submit(cycle, cyc, needs)
        state.fault_point("validate-submitted", cycle)
        start, last, said_at = time.monotonic(), None, 0.0
        while True:
            self._collect(cyc, pending, needs)
            if not pending:
                return None
            open_jobs = {jid for k in pending for jid, _ in needs[k]}
            waiting = Counter(s for _, s in self._fireworks(open_jobs).values() if s != "COMPLETED")
            message = (f"cycle {cycle}: {len(pending)} of {len(needs)} candidates waiting on the LaunchPad "
                       f"(fireworks {', '.join(f'{s} {n}' for s, n in sorted(waiting.items())) or 'finishing'})")
            if message != last or time.monotonic() - said_at > PROGRESS_EVERY_S:
                self.say(message)
                last, said_at = message, time.monotonic()
            if stopping():
                return "stopped by the user while waiting for workers"
            waited = time.monotonic() - start
            if self.timeout_s is not None and waited >= self.timeout_s:
                return (f"waited {waited:.0f} s for {len(pending)} candidate(s) on the LaunchPad; their jobs stay "
                        f"queued: run `qadb worker`, then `qadb campaign resume {self.cid}`")
            self.sleep(self.poll_s)
            self._submit(cycle, cyc, {k: needs[k] for k in pending})  # a reset LaunchPad gets its jobs back

    def _submit(self, cycle: int, cyc: CycleDoc, needs: dict[str, list[tuple[str, Any]]]) -> None:
        from jobflow import Flow

        from qadb.workflows import fireworks as fw

        jids = {jid for jobs in needs.values() for jid, _ in jobs}
        done = {j for j, d in self._records(jids).items() if d["status"] in FINAL_STATES}
        queued = self._fireworks(jids)
        new: dict[str, Any] = {}
        for jobs in needs.values():
            for jid, job in jobs:
                if jid not in done and jid not in queued and jid not in new:
                    job.config.manager_config = {**job.config.manager_config, JOB_KEY: jid, "qadb_campaign": self.cid}
                    new[jid] = job
        if new:
            ids = fw.submit(Flow(list(new.values())), self.lp, name=f"{self.cid} cycle {cycle}")
            queued.update({jid: (ids[job.uuid], "READY") for jid, job in new.items()})
        recorded = dict(cyc.counts.get("fireworks") or {})
        for key, jobs in needs.items():
            recorded[key] = sorted({*recorded.get(key, []), *(queued[j][0] for j, _ in jobs if j in queued)})
        if new or recorded != cyc.counts.get("fireworks"):
            cyc.counts = {**cyc.counts, "fireworks": recorded}
            cyc.save()
        if new:
            self.say(f"cycle {cycle}: {len(new)} job(s) sent to the LaunchPad ({len(done)} already done in the store); "
                     "workers run them with `qadb worker`")

    def _collect(self, cyc: CycleDoc, pending: dict[str, str], needs: dict[str, list[tuple[str, Any]]]) -> None:
        """Read back every candidate whose jobs are finished; a fizzled job makes its candidate failed."""
        jids = {jid for k in pending for jid, _ in needs[k]}
        fws = self._fireworks(jids)  # before the records: a firework completes only after its job's record is final
        records = self._records(jids)
        for key in list(pending):
            doc_id, mine = pending[key], [jid for jid, _ in needs[key]]
            if all(records.get(j, {}).get("status") in FINAL_STATES for j in mine):
                value = self.labeller.label(doc_id)  # every job is stored: this reads, it runs nothing paid
                if value is None or not np.isfinite(value):
                    cyc.failed.append(key)
                else:
                    cyc.labels[key] = float(value)
            else:
                broken = [j for j in mine if j in fws and (fws[j][1] in FAILED_FW_STATES or fws[j][1] == "COMPLETED")
                          and records.get(j, {}).get("status") not in FINAL_STATES]
                if not broken:
                    continue
                cyc.failed.append(key)
                cyc.notes = [*cyc.notes, *(f"{doc_id}: firework {fws[j][0]} ({j}) {fws[j][1].lower()} without a "
                                           f"result: {records.get(j, {}).get('error') or 'no error recorded'}"
                                           for j in broken)]
            del pending[key]
            cyc.save()
