"""Campaign state in the store: one CampaignDoc per campaign, one CycleDoc per cycle.

The engine writes the phase it is entering before doing its work, and every paid result (a
high-fidelity label) as soon as it exists, so a process killed at any instant resumes from the
store: finished phases are not redone, a half-done phase is redone from its start, and labels
already paid for are read back instead of being bought again.
"""

from __future__ import annotations

import os
import signal

from qadb.store.documents import CampaignDoc, CycleDoc
from qadb.store.documents.common import utcnow

PHASES = ("generate", "predict", "select", "validate", "augment", "retrain", "decide")
FAULT_ENV = "QADB_FAULT_AT"


def fault_point(phase: str, cycle: int) -> None:
    """Kill this process with SIGKILL when $QADB_FAULT_AT names this point ("phase:cycle").

    A fault-injection hook for the resume tests and for users who want to check their own
    recipes survive a crash; it does nothing unless the variable is set.
    """
    if os.environ.get(FAULT_ENV) == f"{phase}:{cycle}":
        os.kill(os.getpid(), signal.SIGKILL)


def open_campaign(cid: str, recipe: dict, runner: str) -> CampaignDoc:
    """The campaign with this id, created in state 'created' if it does not exist yet."""
    doc = CampaignDoc.objects(id=cid).first()
    if doc is None:
        doc = CampaignDoc(id=cid, recipe=recipe, name=recipe["name"], kind=recipe["kind"], seed=recipe["seed"],
                          budget_total=float(recipe["budget"]), runner=runner, state="created", phase="generate",
                          cycle=0)
        doc.save(force_insert=True)
    return doc


def save(doc: CampaignDoc) -> None:
    doc.updated_at = utcnow()
    doc.save()


def cycle(cid: str, index: int) -> CycleDoc:
    cyc = CycleDoc.objects(id=f"{cid}-c{index:03d}").first()
    if cyc is None:
        cyc = CycleDoc(id=f"{cid}-c{index:03d}", campaign=cid, index=index)
        cyc.save(force_insert=True)
    return cyc


def cycles(cid: str) -> list[CycleDoc]:
    return sorted(CycleDoc.objects(campaign=cid), key=lambda c: c.index)


def labelled(cid: str, through: int | None = None) -> dict[str, float]:
    """Every high-fidelity value the campaign has paid for (optionally only up to a cycle)."""
    out: dict[str, float] = {}
    for c in cycles(cid):
        if through is None or c.index <= through:
            out.update({unkey(k): float(v) for k, v in c.labels.items()})
    return out


def spent(cid: str, cost: float) -> float:
    """Budget spent = paid calls × cost, derived from the stored labels so it can never double count."""
    return sum((len(c.labels) + len(c.failed)) * cost for c in cycles(cid))


def key(doc_id: str) -> str:
    """Map a document id to a key MongoDB accepts in a sub-document ('.' and a leading '$' are not)."""
    return doc_id.replace(".", "\uff0e").replace("$", "\uff04")


def unkey(k: str) -> str:
    return k.replace("\uff0e", ".").replace("\uff04", "$")
