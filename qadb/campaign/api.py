"""Public campaign operations over the configured store (what the CLI calls)."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qadb.campaign import build, recipe as recipes, state
from qadb.campaign.engine import Engine
from qadb.errors import InputError
from qadb.store.documents import CampaignDoc

RUNNERS = ("local", "fireworks")


def _engine(cid: str, rec: dict, runner: str, on_event: Callable[[str], None] | None, launchpad_file: str | Path | None,
            launchpad: Any, poll_s: float, wait_timeout_s: float | None) -> Engine:
    parts = build.parts(rec, cid)
    if runner == "fireworks" and launchpad is None and launchpad_file is not None:
        from qadb.store.connection import current
        from qadb.workflows.fireworks import launchpad as open_launchpad

        launchpad = open_launchpad(current().uri if current() else None, config_file=launchpad_file)
    return Engine(cid, rec, parts, runner=runner, on_event=on_event, launchpad=launchpad, poll_s=poll_s,
                  wait_timeout_s=wait_timeout_s)


def launch(recipe: str | Path | dict, *, runner: str = "local", seed: int | None = None,
           on_event: Callable[[str], None] | None = None, launchpad_file: str | Path | None = None,
           launchpad: Any = None, poll_s: float = 30.0, wait_timeout_s: float | None = 86400.0) -> CampaignDoc:
    """Start (or continue, if the same recipe and seed already ran) a campaign and run it to the end.

    With ``runner="fireworks"`` each cycle's paid jobs go to the LaunchPad in the store's MongoDB
    (or the one `launchpad_file` names, or the given `launchpad`) and the campaign waits for workers,
    polling every `poll_s` seconds; after `wait_timeout_s` it stops (state "stopped") and `resume`
    continues the wait without submitting anything twice.
    """
    if runner not in RUNNERS:
        raise InputError(f"unknown runner {runner!r}; choose from {', '.join(RUNNERS)}")
    rec = recipes.validate(recipe) if isinstance(recipe, dict) else recipes.load(recipe)
    if seed is not None:
        rec["seed"] = int(seed)
    cid = recipes.campaign_id(rec)
    return _engine(cid, rec, runner, on_event, launchpad_file, launchpad, poll_s, wait_timeout_s).run()


def _get(cid: str) -> CampaignDoc:
    doc = CampaignDoc.objects(id=cid).first()
    if doc is None:
        known = [d.id for d in CampaignDoc.objects.only("id")][:10]
        raise InputError(f"no campaign {cid!r} in the store" + (f" (known: {', '.join(known)})" if known else ""))
    return doc


def resume(cid: str, on_event: Callable[[str], None] | None = None, *, launchpad_file: str | Path | None = None,
           launchpad: Any = None, poll_s: float = 30.0, wait_timeout_s: float | None = 86400.0) -> CampaignDoc:
    """Continue a campaign from the phase it was in, with the runner it was launched with; a stopped
    campaign is restarted (a fireworks campaign finds the jobs it already queued)."""
    doc = _get(cid)
    engine = _engine(cid, doc.recipe, doc.runner or "local", on_event, launchpad_file, launchpad, poll_s,
                     wait_timeout_s)  # a LaunchPad that cannot be reached fails here, before any state changes
    if doc.state == "stopped":
        doc.state = "running"
        state.save(doc)
    return engine.run()


def stop(cid: str, *, writable: bool = True) -> str:
    """Ask a running campaign to stop after its current phase (it can be resumed later).

    A campaign running on this host gets SIGTERM (it finishes the phase in hand and records
    'stopped'); on a server store the state is also set, so a campaign on another host stops too.
    `writable=False` is for an embedded store whose writer lock the running campaign holds.
    """
    doc = _get(cid)
    if doc.state != "running":
        return f"{cid} is {doc.state}; nothing to stop"
    signalled = False
    if doc.pid and doc.host == socket.gethostname():
        try:
            os.kill(doc.pid, signal.SIGTERM)
            signalled = True
        except ProcessLookupError:
            pass
    if writable:
        CampaignDoc.objects(id=cid).update_one(set__state="stopped", set__stop_reason="stopped by the user")
        return f"{cid}: stopped"
    if signalled:
        return f"{cid}: asked process {doc.pid} to stop after its current phase"
    return f"{cid}: its process {doc.pid} is gone; `qadb campaign resume {cid}` continues it"


def status(cid: str | None = None) -> list[dict]:
    """One row per campaign (or the named one): state, cycle, phase, budget, hits."""
    docs = [_get(cid)] if cid else list(CampaignDoc.objects.order_by("-updated_at"))
    rows = []
    for d in docs:
        cycles = state.cycles(d.id)
        rows.append({"id": d.id, "kind": d.kind, "state": d.state, "cycle": d.cycle, "phase": d.phase,
                     "budget": f"{state.spent(d.id, float(d.recipe['validate']['cost'])):g}/{d.budget_total:g}",
                     "hits": sum(len(c.hits) for c in cycles), "stop_reason": d.stop_reason or ""})
    return rows


def report(cid: str, out_dir: str | Path | None = None):
    """Per-cycle table and plots (PNG + HTML) for a campaign; returns the report object."""
    from qadb.campaign.report import build_report

    return build_report(_get(cid), out_dir)


def export_hits(cid: str, path: str | Path, *, validated: bool = False) -> dict:
    """Export a campaign's hits (or everything it validated) and their relaxed structures as MP-style JSON."""
    from qadb.store import Query, export
    from qadb.store.documents import StructureDoc

    doc = _get(cid)
    ids = [i for c in state.cycles(cid) for i in (c.validated if validated else c.hits)]
    if doc.kind == "replay":
        raise InputError(f"{cid} is a replay campaign: its candidates are dataset ids, not stored structures "
                         "(`qadb campaign report` lists them)")
    children = [d.id for d in StructureDoc.objects(origin__parents__in=ids).only("id")] if ids else []
    return export(Query(ids=ids + children), Path(path))
