"""The `labels` collection: one value of one property of one structure at one fidelity."""

from __future__ import annotations

import mongoengine as me

from qadb.store.documents.common import Origin, utcnow

LABEL_STATUSES = ("ok", "unconverged", "failed")


class LabelDoc(me.Document):
    """A computed or measured property value with everything needed to trust or redo it.

    `id` is derived from (structure, property, fidelity, input_hash), so the same calculation or
    the same dataset row always lands on the same document: retries never duplicate. Two
    different values for the same structure, property and fidelity are both kept and flagged
    with `conflict` (seed 000 Algorithm 3: conflicts are information, not errors).
    """

    id = me.StringField(primary_key=True)
    structure = me.StringField(required=True)
    chemsys = me.StringField(required=True)
    property = me.StringField(required=True)
    value = me.FloatField(required=True)
    units = me.StringField(required=True)
    uncertainty = me.FloatField()
    fidelity = me.StringField(required=True)
    rung = me.IntField(required=True)
    code = me.StringField(required=True)
    code_version = me.StringField()
    parameters = me.DictField()
    job = me.StringField()
    input_hash = me.StringField(required=True)
    status = me.StringField(required=True, choices=LABEL_STATUSES, default="ok")
    conflict = me.BooleanField(default=False)
    origin = me.EmbeddedDocumentField(Origin, required=True)
    created_at = me.DateTimeField(default=utcnow)

    meta = {
        "collection": "labels",
        "strict": True,
        "indexes": ["structure", "property", "fidelity", "chemsys", "job", "status"],
    }
