"""Public campaign operations over the configured store (what the CLI calls)."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from qadb.campaign import build, recipe as recipes, state
from qadb.campaign.engine import Engine
from qadb.errors import InputError
from qadb.store.documents import CampaignDoc

RUNNERS = ("local", "fireworks")


def launch(recipe: str | Path | dict, *, runner: str = "local", seed: int | None = None,
           on_event: Callable[[str], None] | None = None) -> CampaignDoc:
    """Start (or continue, if the same recipe and seed already ran) a campaign and run it to the end."""
    if runner not in RUNNERS:
        raise InputError(f"unknown runner {runner!r}; choose from {', '.join(RUNNERS)}")
    if runner == "fireworks":
        raise InputError("--runner fireworks is not available for campaigns yet (cycle jobs run locally); "
                         "use `qadb worker` with `qadb relax/label --runner fireworks` for cluster jobs")
    rec = recipes.validate(recipe) if isinstance(recipe, dict) else recipes.load(recipe)
    if seed is not None:
        rec["seed"] = int(seed)
    cid = recipes.campaign_id(rec)
    return Engine(cid, rec, build.parts(rec, cid), runner=runner, on_event=on_event).run()


def _get(cid: str) -> CampaignDoc:
    doc = CampaignDoc.objects(id=cid).first()
    if doc is None:
        known = [d.id for d in CampaignDoc.objects.only("id")][:10]
        raise InputError(f"no campaign {cid!r} in the store" + (f" (known: {', '.join(known)})" if known else ""))
    return doc


def resume(cid: str, on_event: Callable[[str], None] | None = None) -> CampaignDoc:
    """Continue a campaign from the phase it was in; a stopped campaign is restarted."""
    doc = _get(cid)
    if doc.state == "stopped":
        doc.state = "running"
        state.save(doc)
    rec = doc.recipe
    return Engine(cid, rec, build.parts(rec, cid), runner=doc.runner or "local", on_event=on_event).run()


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
