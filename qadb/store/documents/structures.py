"""The `structures` collection: one document per distinct crystal (after deduplication)."""

from __future__ import annotations

import mongoengine as me

from qadb.store.documents.common import Origin, utcnow


class Member(me.EmbeddedDocument):
    """One representation merged into this material by deduplication (seed 000 Algorithm 3)."""

    struct_hash = me.StringField(required=True)
    source = me.StringField()
    source_id = me.StringField()
    spacegroup = me.IntField()
    experimental = me.BooleanField(default=False)
    volume_per_atom = me.FloatField()
    origin = me.EmbeddedDocumentField(Origin)


class StructureDoc(me.Document):
    """A crystal structure with composition keys, symmetry, descriptors and provenance.

    `id` is the qadb material id (``qadb-`` + 12 hex digits of the first representation's
    hash), so re-ingesting the same data addresses the same document. `members` lists every
    representation and source id merged into it; `structure` is the chosen representative.
    """

    id = me.StringField(primary_key=True)
    structure = me.DictField(required=True)
    formula = me.StringField(required=True)
    formula_pretty = me.StringField(required=True)
    chemsys = me.StringField(required=True)
    elements = me.ListField(me.StringField(), required=True)
    nelements = me.IntField(required=True)
    nsites = me.IntField(required=True)
    spacegroup = me.IntField()
    spacegroup_symbol = me.StringField()
    volume = me.FloatField()
    volume_per_atom = me.FloatField()
    density = me.FloatField()
    dedupe_key = me.StringField(required=True)
    struct_hash = me.StringField(required=True)
    source_ids = me.ListField(me.StringField())
    members = me.EmbeddedDocumentListField(Member)
    experimental = me.BooleanField(default=False)
    descriptors = me.DictField()
    validity = me.DictField()
    flags = me.ListField(me.StringField())
    origin = me.EmbeddedDocumentField(Origin, required=True)
    campaign = me.StringField()
    created_at = me.DateTimeField(default=utcnow)
    updated_at = me.DateTimeField(default=utcnow)

    meta = {
        "collection": "structures",
        "strict": True,
        "indexes": [
            "chemsys", "formula_pretty", "dedupe_key", "nsites", "spacegroup", "nelements",
            "campaign", "origin.kind", "elements",
        ],
    }


class AliasDoc(me.Document):
    """A scalar key that leads to a material: ``h:<struct_hash>``, ``s:<source id>`` or
    ``t:<hash of the record's text>`` (the last lets a re-ingest skip parsing text it has seen).

    Kept apart from `StructureDoc` because a key stored in an array (members, source_ids) cannot
    be looked up by an equality index in every engine (the embedded one scans arrays); a primary
    key can, so deduplication and joins by id stay O(1) per record everywhere.
    """

    id = me.StringField(primary_key=True)
    material = me.StringField(required=True)
    formula_pretty = me.StringField(required=True)
    chemsys = me.StringField()

    meta = {"collection": "aliases", "strict": True, "indexes": ["material"]}
