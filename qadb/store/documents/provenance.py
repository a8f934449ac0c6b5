"""The `activities` collection: the provenance graph's process nodes.

In AiiDA's terms an activity is a process node; its `inputs` are INPUT links (documents it read)
and every document it created names it in ``origin.activity`` (the CREATE link, stored on the
derived document itself so parent links can always be recovered from the stored data alone).
"""

from __future__ import annotations

import mongoengine as me

from qadb.store.documents.common import utcnow

ACTIVITY_KINDS = ("ingest", "relax", "label", "train", "sample", "hull", "export", "campaign", "merge")
ACTIVITY_STATES = ("running", "completed", "failed")


class Ref(me.EmbeddedDocument):
    """A link to a stored document (or a file outside the store, collection='file')."""

    collection = me.StringField(required=True)
    id = me.StringField(required=True)
    role = me.StringField()


class Activity(me.Document):
    """A process that read some documents and created others, with its settings and code."""

    id = me.StringField(primary_key=True)
    kind = me.StringField(required=True, choices=ACTIVITY_KINDS)
    status = me.StringField(required=True, choices=ACTIVITY_STATES, default="running")
    inputs = me.EmbeddedDocumentListField(Ref)
    parameters = me.DictField()
    code = me.DictField()
    summary = me.DictField()
    error = me.StringField()
    started_at = me.DateTimeField(default=utcnow)
    ended_at = me.DateTimeField()

    meta = {"collection": "activities", "strict": True, "indexes": ["kind", "status", "inputs.id"]}
