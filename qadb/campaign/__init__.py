"""Campaigns: divergence-driven active learning (seed 000 Algorithm 1), the PIGEN funnel and
property-targeted inverse design, as a resumable state machine whose state lives in the store.

    from qadb.campaign import launch, resume, status, stop, report
    doc = launch("flows/quickstart.yaml")          # runs to completion (or until stopped / killed)
    resume(doc.id)                                 # after a crash: no paid call is repeated

Parts: `recipe` (YAML schema + defaults), `acquisition` (filters, k-means, hybrid score; pure),
`surrogate` and `replay` (fast multi-fidelity surrogate and held-out-label tasks), `parts`/`build`
(sources, models, labellers), `engine` (the loop), `state` (store persistence), `report`.
"""

from qadb.campaign.api import launch, report, resume, status, stop
from qadb.campaign.recipe import load as load_recipe

__all__ = ["launch", "load_recipe", "report", "resume", "status", "stop"]
