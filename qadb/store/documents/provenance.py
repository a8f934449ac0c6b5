"""The `activities` collection: the provenance graph's process nodes.

In AiiDA's terms an activity is a process node; its `inputs` are INPUT links (documents it read)
and every document it created names it in ``origin.activity`` (the CREATE link, stored on the
derived document itself so parent links can always be recovered from the stored data alone).

Compute jobs (``relax``, ``bulk_modulus``, ``label``, ``hull``) are activities too: their id is derived
from (kind, structure, settings), so the record doubles as the idempotency key and the job's state
(`qadb.store.jobs` claims, heartbeats and finishes them).
"""

from __future__ import annotations

import mongoengine as me

from qadb.store.documents.common import utcnow

ACTIVITY_KINDS = ("ingest", "relax", "bulk_modulus", "label", "train", "sample", "hull", "export", "campaign", "merge")
# "unconverged": the calculation ran to its limits without converging; recorded, never stored as a result
ACTIVITY_STATES = ("running", "completed", "failed", "unconverged")


class Ref(me.EmbeddedDocument):
    """A link to a stored document (or a file outside the store, collection='file')."""

    collection = me.StringField(required=True)
    id = me.StringField(required=True)
    role = me.StringField()


class Activity(me.Document):
    """A process that read some documents and created others, with its settings and code.

    Jobs also record who runs them (`host`, `pid`, `heartbeat_at`: how a dead run is told from a
    live one), how often they were started (`attempts`) and what they wrote (`outputs`).
    """

    id = me.StringField(primary_key=True)
    kind = me.StringField(required=True, choices=ACTIVITY_KINDS)
    status = me.StringField(required=True, choices=ACTIVITY_STATES, default="running")
    inputs = me.EmbeddedDocumentListField(Ref)
    parameters = me.DictField()
    code = me.DictField()
    summary = me.DictField()
    error = me.StringField()
    outputs = me.EmbeddedDocumentListField(Ref)
    host = me.StringField()
    pid = me.IntField()
    attempts = me.IntField()
    started_at = me.DateTimeField(default=utcnow)
    heartbeat_at = me.DateTimeField()
    ended_at = me.DateTimeField()

    meta = {"collection": "activities", "strict": True, "indexes": ["kind", "status", "inputs.id"]}
