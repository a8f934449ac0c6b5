"""The `campaigns` and `cycles` collections: the state of active-learning campaigns."""

from __future__ import annotations

import mongoengine as me

from qadb.store.documents.common import utcnow

CAMPAIGN_STATES = ("created", "running", "stopped", "completed", "failed")


class CampaignDoc(me.Document):
    """A campaign: its recipe, where it is, what it has spent and why it stopped."""

    id = me.StringField(primary_key=True)
    recipe = me.DictField(required=True)
    state = me.StringField(required=True, choices=CAMPAIGN_STATES, default="created")
    phase = me.StringField()
    cycle = me.IntField(default=0)
    seed = me.IntField()
    budget_total = me.FloatField()
    budget_spent = me.FloatField(default=0.0)
    stop_reason = me.StringField()
    name = me.StringField()
    kind = me.StringField()
    runner = me.StringField(default="local")
    no_hit_streak = me.IntField(default=0)
    validator_trained_through = me.IntField(default=-1)
    generator_trained_through = me.IntField(default=-1)
    summary = me.DictField()
    error = me.StringField()
    pid = me.IntField()
    host = me.StringField()
    created_at = me.DateTimeField(default=utcnow)
    updated_at = me.DateTimeField(default=utcnow)

    meta = {"collection": "campaigns", "strict": True, "indexes": ["state", "name"]}


class CycleDoc(me.Document):
    """One cycle of a campaign: ids generated, selected and validated, and what it found."""

    id = me.StringField(primary_key=True)
    campaign = me.StringField(required=True)
    index = me.IntField(required=True)
    phase = me.StringField()
    generated = me.ListField(me.StringField())
    selected = me.ListField(me.StringField())
    validated = me.ListField(me.StringField())
    hits = me.ListField(me.StringField())
    labels = me.DictField()
    failed = me.ListField(me.StringField())
    predictions = me.DictField()
    counts = me.DictField()
    notes = me.ListField(me.StringField())
    budget_spent = me.FloatField(default=0.0)
    started_at = me.DateTimeField(default=utcnow)
    finished_at = me.DateTimeField()

    meta = {"collection": "cycles", "strict": True, "indexes": ["campaign"]}
