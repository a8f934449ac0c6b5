"""Which generator a campaign samples from before any fine-tune: the recipe's checkpoint, else the committed one
of its sampling mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from qadb.campaign.generative import GeneratorSource
from qadb.models.generator import CSP_CHECKPOINT, DEFAULT_CHECKPOINT


@pytest.mark.parametrize("mode, extra, want", [
    ("csp", {"composition": "Na2Cl2"}, CSP_CHECKPOINT),
    ("gen", {}, DEFAULT_CHECKPOINT),
    ("csp", {"composition": "Na2Cl2", "checkpoint": "mine.pt"}, Path("mine.pt")),
])
def test_base_checkpoint_follows_the_mode(mode, extra, want):
    if not CSP_CHECKPOINT.exists():
        pytest.skip("committed CSP checkpoint not present")
    recipe = {"seed": 0, "candidates": {"source": "generator", "n": 4, "mode": mode, **extra}}
    assert GeneratorSource(recipe, "c", structures=None).base_checkpoint() == want
