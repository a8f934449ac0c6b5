"""The campaign loop (seed 000 Algorithm 1) as a resumable state machine over the store.

generate → predict → select → validate → augment → retrain → decide, once per cycle. Cycle 0 of
a replay campaign is the random seed set (`candidates.init` calls). The parts (source, model,
labeller) come from `qadb.campaign.build`; everything random is seeded by (seed, cycle) so a resumed
campaign reaches the same final state as an uninterrupted one. With the fireworks runner the validate
phase sends its paid jobs to a LaunchPad and waits for workers (`qadb.campaign.remote`).
"""

from __future__ import annotations

import math
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from qadb.campaign import state
from qadb.campaign.acquisition import Window, divergence, select
from qadb.campaign.parts import Labeller, Model, Prediction, Source
from qadb.campaign.remote import JobLabeller, LaunchPadValidator
from qadb.campaign.replay import HitRule
from qadb.store.documents import CampaignDoc, CycleDoc
from qadb.store.documents.common import utcnow


@dataclass
class Parts:
    source: Source
    model: Model
    labeller: Labeller
    target: Window
    hit: HitRule
    init: int = 0
    filters: Callable[[list[str]], list[str]] | None = None  # structure funnel for generated candidates
    after_retrain: Callable[[int, dict[str, float]], list[str]] | None = None  # e.g. generator fine-tune; returns notes


class Engine:
    """Runs one campaign to completion (or until stopped), persisting every step."""

    def __init__(self, cid: str, recipe: dict, parts: Parts, runner: str = "local",
                 on_event: Callable[[str], None] | None = None, *, launchpad: Any = None, poll_s: float = 30.0,
                 wait_timeout_s: float | None = 86400.0):
        """`runner` "fireworks" sends the validate phase's jobs to `launchpad` (default: the one in the
        open store's MongoDB) and waits for workers, polling every `poll_s` for at most `wait_timeout_s`."""
        self.cid, self.recipe, self.parts, self.runner = cid, recipe, parts, runner
        self.say = on_event or (lambda _msg: None)
        self._pred: tuple[list[str], Prediction] | None = None
        self._pause: str | None = None
        self.remote: LaunchPadValidator | None = None
        if runner == "fireworks" and isinstance(parts.labeller, JobLabeller):
            if launchpad is None:
                from qadb.store.connection import current
                from qadb.workflows.fireworks import launchpad as open_launchpad

                launchpad = open_launchpad(current().uri if current() else None)
            self.remote = LaunchPadValidator(cid, parts.labeller, launchpad, poll_s=poll_s, timeout_s=wait_timeout_s,
                                             say=self.say)

    # --- bookkeeping -------------------------------------------------------------------------
    @property
    def cost(self) -> float:
        return float(self.recipe["validate"]["cost"])

    def remaining(self) -> float:
        return float(self.recipe["budget"]) - state.spent(self.cid, self.cost)

    def batch_size(self, cycle: int) -> int:
        if cycle == 0 and self.parts.init:
            return min(self.parts.init, int(self.remaining() // self.cost))
        sel = self.recipe["select"]
        calls_left = int(self.remaining() // self.cost)
        k = min(sel["top_k"], math.floor(sel["budget_fraction"] * calls_left))
        return max(0, min(calls_left, max(sel["min_batch"], k)))

    def _fit_model(self, doc: CampaignDoc) -> None:
        self.parts.model.fit(state.labelled(self.cid, through=doc.validator_trained_through))

    # --- the loop ----------------------------------------------------------------------------
    def run(self) -> CampaignDoc:
        doc = state.open_campaign(self.cid, self.recipe, self.runner)
        if doc.state == "completed":
            return doc
        doc.state, doc.error, doc.pid, doc.host = "running", None, os.getpid(), socket.gethostname()
        doc.stop_reason, doc.runner = None, self.runner
        state.save(doc)
        self._stop_requested, self._pause = False, None
        if self.runner == "fireworks" and self.remote is None:
            self.say(f"{self.parts.labeller.fidelity} labels come from the replay oracle in this process: "
                     "there are no paid jobs to send to the LaunchPad")
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if _main_thread() else None
        try:
            return self._loop(doc)
        except Exception as exc:
            doc.state, doc.error = "failed", f"{type(exc).__name__}: {exc}"
            state.save(doc)  # the phase stays recorded: `qadb campaign resume` retries from it
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _on_sigterm(self, *_args) -> None:
        self._stop_requested = True  # finish the phase in hand, then stop cleanly (resumable)

    def _stopping(self) -> bool:
        if self._stop_requested or self._pause:
            return True
        current = CampaignDoc.objects(id=self.cid).only("state").first()
        return current is not None and current.state == "stopped"

    def _loop(self, doc: CampaignDoc) -> CampaignDoc:
        self._fit_model(doc)
        while doc.state == "running":
            cyc = state.cycle(self.cid, doc.cycle)
            start = state.PHASES.index(doc.phase or "generate")
            for phase in state.PHASES[start:]:
                doc.phase = phase
                state.save(doc)
                state.fault_point(phase, doc.cycle)
                getattr(self, f"_{phase}")(doc, cyc)
                if self._stopping() and doc.state == "running":
                    doc.state, doc.stop_reason = "stopped", self._pause or "stopped by the user"
                    state.save(doc)
                    return doc
            if doc.state == "running":
                doc.cycle, doc.phase = doc.cycle + 1, "generate"
                state.save(doc)
        return doc

    # --- phases ------------------------------------------------------------------------------
    def _generate(self, doc: CampaignDoc, cyc: CycleDoc) -> None:
        seen = set(state.labelled(self.cid)) | {state.unkey(f) for c in state.cycles(self.cid) for f in c.failed}
        ids = self.parts.source.candidates(doc.cycle, seen, self.recipe["candidates"]["n"], doc.seed)
        counts = {"generated": len(ids)}
        if self.parts.filters:
            ids = self.parts.filters(ids)
        counts["passed_funnel"] = len(ids)
        cyc.generated, cyc.counts = ids, {**cyc.counts, **counts}
        cyc.save()
        self.say(f"cycle {doc.cycle}: {counts['generated']} candidates, {counts['passed_funnel']} through the funnel")

    def _predict(self, doc: CampaignDoc, cyc: CycleDoc) -> None:
        ids = list(cyc.generated)
        self._pred = (ids, self.parts.model.predict(ids) if ids else Prediction(np.array([]), np.array([]), np.array([])))
        passed = int(self.parts.target.contains(self._pred[1].y_mf).sum()) if ids else 0
        cyc.counts = {**cyc.counts, "passed_target_filter": passed}
        cyc.save()

    def _select(self, doc: CampaignDoc, cyc: CycleDoc) -> None:
        if self._pred is None or self._pred[0] != list(cyc.generated):
            self._predict(doc, cyc)
        ids, pred = self._pred
        k = self.batch_size(doc.cycle)
        sel = self.recipe["select"]
        strategy = "random" if (doc.cycle == 0 and self.parts.init) else sel["strategy"]
        if not ids or k == 0:
            chosen = []
        else:
            known_ids = [i for i in state.labelled(self.cid) if i not in set(ids)]
            feats = self.parts.source.features(ids + known_ids)  # one scaling for candidates and known
            chosen = select(strategy, k=k, x=feats[: len(ids)], known_x=feats[len(ids):], y_low=pred.y_low, y_mf=pred.y_mf, sigma=pred.sigma, target=self.parts.target,
                            divergence_kind=sel["divergence"], w_signal=sel["weights"]["signal"],
                            w_diversity=sel["weights"]["diversity"], clusters=sel["clusters"],
                            seed=int(np.random.default_rng([doc.seed, doc.cycle, 2]).integers(2**31)))
        cyc.selected = [ids[i] for i in chosen]
        d = divergence(pred.y_low, pred.y_mf, pred.sigma, sel["divergence"]) if ids else np.array([])
        cyc.predictions = {state.key(ids[i]): {"y_low": _f(pred.y_low[i]), "y_mf": _f(pred.y_mf[i]),
                                               "sigma": _f(pred.sigma[i]), "D": _f(d[i])} for i in chosen}
        cyc.counts = {**cyc.counts, "selected": len(chosen), "strategy": strategy}
        cyc.save()

    def _validate(self, doc: CampaignDoc, cyc: CycleDoc) -> None:
        if self.remote is not None:
            self._pause = self.remote.validate(doc.cycle, cyc, self._stopping)
            if self._pause is None:
                self.say(f"cycle {doc.cycle}: {len(cyc.labels)} labelled at {self.parts.labeller.fidelity} by workers, "
                         f"{len(cyc.failed)} failed")
            return
        for n, doc_id in enumerate(cyc.selected):
            key = state.key(doc_id)
            if key in cyc.labels or key in cyc.failed:
                continue  # paid for before a crash: read back, never bought twice
            value = self.parts.labeller.label(doc_id)
            if value is None or not np.isfinite(value):
                cyc.failed.append(key)
            else:
                cyc.labels[key] = float(value)
            cyc.save()
            if n == 0:
                state.fault_point("validate-mid", doc.cycle)
        self.say(f"cycle {doc.cycle}: {len(cyc.labels)} labelled at {self.parts.labeller.fidelity}, {len(cyc.failed)} failed")

    def _augment(self, doc: CampaignDoc, cyc: CycleDoc) -> None:
        ids = [state.unkey(k) for k in cyc.labels]
        y_high = np.array([cyc.labels[state.key(i)] for i in ids])
        y_low = np.array([cyc.predictions.get(state.key(i), {}).get("y_low", np.nan) for i in ids])
        hits = [i for i, h in zip(ids, self.parts.hit(y_high, y_low)) if h]
        cyc.hits = hits
        cyc.validated = ids
        cyc.budget_spent = (len(cyc.labels) + len(cyc.failed)) * self.cost
        cyc.counts = {**cyc.counts, "validated": len(ids), "failed": len(cyc.failed), "hits": len(hits)}
        cyc.save()

    def _retrain(self, doc: CampaignDoc, cyc: CycleDoc) -> None:
        every = self.recipe["retrain"]["validator_every"]
        retrain = doc.cycle == 0 or (every > 0 and doc.cycle % every == 0)
        if retrain:
            doc.validator_trained_through = doc.cycle
            state.save(doc)
            self._fit_model(doc)
        gen_every = self.recipe["retrain"]["generator_every"]
        if self.parts.after_retrain and gen_every > 0 and doc.cycle > 0 and doc.cycle % gen_every == 0:
            notes = self.parts.after_retrain(doc.cycle, state.labelled(self.cid))
            cyc.notes = list(cyc.notes) + notes
            cyc.save()
            doc.generator_trained_through = doc.cycle
            state.save(doc)

    def _decide(self, doc: CampaignDoc, cyc: CycleDoc) -> None:
        hits = len(cyc.hits)
        if doc.cycle > 0 or not self.parts.init:
            doc.no_hit_streak = 0 if hits else doc.no_hit_streak + 1
        doc.budget_spent = state.spent(self.cid, self.cost)
        cyc.finished_at = utcnow()
        cyc.phase = "done"
        cyc.save()
        reason = None
        if doc.no_hit_streak >= self.recipe["patience"]:
            reason = f"{doc.no_hit_streak} consecutive cycles without a hit"
        elif self.remaining() < self.cost:
            reason = "budget spent"
        elif doc.cycle + 1 >= self.recipe["max_cycles"]:
            reason = f"max_cycles ({self.recipe['max_cycles']}) reached"
        elif not cyc.generated:
            reason = "no candidates left"
        if reason:
            doc.state, doc.stop_reason = "completed", reason
            doc.summary = summary(self.cid)
        state.save(doc)
        self.say(f"cycle {doc.cycle}: {hits} hits; budget {doc.budget_spent:g}/{self.recipe['budget']:g}"
                 + (f"; stopping: {reason}" if reason else ""))


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _f(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def summary(cid: str) -> dict:
    """Totals over the cycles: calls, hits, hits per call (excluding the random seed set), cost."""
    cycles = state.cycles(cid)
    acq = [c for c in cycles if c.counts.get("strategy") != "random" or c.index > 0]
    calls = sum(len(c.labels) + len(c.failed) for c in acq)
    hits = sum(len(c.hits) for c in acq)
    return {"cycles": len(cycles), "calls": calls, "hits": hits, "hits_per_call": hits / calls if calls else 0.0,
            "calls_total": sum(len(c.labels) + len(c.failed) for c in cycles),
            "hits_total": sum(len(c.hits) for c in cycles)}
