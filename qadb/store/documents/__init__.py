"""mongoengine documents of every stored collection, one module per concern."""

from qadb.store.documents.caches import HullCacheDoc
from qadb.store.documents.campaigns import CampaignDoc, CycleDoc
from qadb.store.documents.checkpoints import CheckpointDoc
from qadb.store.documents.common import Origin, utcnow
from qadb.store.documents.labels import LabelDoc
from qadb.store.documents.provenance import Activity, Ref
from qadb.store.documents.structures import AliasDoc, Member, StructureDoc

ALL_DOCUMENTS = (StructureDoc, AliasDoc, LabelDoc, CheckpointDoc, CampaignDoc, CycleDoc, Activity, HullCacheDoc)

__all__ = [
    "ALL_DOCUMENTS", "Activity", "AliasDoc", "CampaignDoc", "CheckpointDoc", "CycleDoc", "HullCacheDoc",
    "LabelDoc", "Member", "Origin", "Ref", "StructureDoc", "utcnow",
]
