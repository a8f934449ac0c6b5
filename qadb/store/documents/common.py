"""Pieces shared by several documents: origins (CREATE links) and timestamps."""

from __future__ import annotations

import datetime as _dt

import mongoengine as me

ORIGIN_KINDS = ("dataset", "file", "generated", "relaxed", "computed", "manual")


def utcnow() -> _dt.datetime:
    # millisecond precision: what BSON keeps, so a round trip compares equal
    now = _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class Origin(me.EmbeddedDocument):
    """Where a document came from: the CREATE link of the provenance graph.

    `activity` names the `Activity` document that created it; `parents` the documents it was
    derived from (e.g. the structure a relaxation started from). Dataset rows carry their file
    and row so an imported value can always be traced back to its line.
    """

    kind = me.StringField(required=True, choices=ORIGIN_KINDS)
    activity = me.StringField()
    parents = me.ListField(me.StringField())
    dataset = me.StringField()
    file = me.StringField()
    row = me.StringField()
    checkpoint = me.StringField()
    campaign = me.StringField()
    cycle = me.IntField()
    settings = me.DictField()
    meta = {"strict": True}
