"""The `hulls` collection: per-fidelity, per-chemical-system convex hull caches."""

from __future__ import annotations

import mongoengine as me

from qadb.store.documents.common import utcnow


class HullCacheDoc(me.Document):
    """A serialised hull for one (fidelity, chemsys), keyed by a hash of the entries it used.

    A cache is valid while `entries_hash` equals the hash of the current labels of that system;
    the drivers' hull job rebuilds it when labels arrive.
    """

    id = me.StringField(primary_key=True)
    fidelity = me.StringField(required=True)
    chemsys = me.StringField(required=True)
    entries_hash = me.StringField(required=True)
    n_entries = me.IntField(required=True)
    data = me.DictField(required=True)
    updated_at = me.DateTimeField(default=utcnow)

    meta = {"collection": "hulls", "strict": True, "indexes": ["fidelity", "chemsys"]}
