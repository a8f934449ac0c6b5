"""The `checkpoints` collection: model metadata; the weights themselves live in GridFS."""

from __future__ import annotations

import mongoengine as me

from qadb.store.documents.common import Origin, utcnow


class CheckpointDoc(me.Document):
    """A trained model: kind, architecture, settings, training-set identity, metrics, lineage.

    `id` is ``<name>@<sha256[:12]>`` of the weights file, so registering the same file twice is a
    no-op. `file_id` points at the GridFS file holding the bytes (documents are capped at 16 MB).
    """

    id = me.StringField(primary_key=True)
    name = me.StringField(required=True)
    kind = me.StringField(required=True)
    architecture = me.StringField()
    hyperparameters = me.DictField()
    training_set = me.DictField()
    metrics = me.DictField()
    parent = me.StringField()
    file_id = me.ObjectIdField(required=True)
    sha256 = me.StringField(required=True)
    size = me.IntField(required=True)
    origin = me.EmbeddedDocumentField(Origin, required=True)
    created_at = me.DateTimeField(default=utcnow)

    meta = {"collection": "checkpoints", "strict": True, "indexes": ["kind", "name", "parent"]}
