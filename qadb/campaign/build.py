"""Recipe → parts: the one place that knows which source, model and labeller a recipe asks for."""

from __future__ import annotations

from qadb.campaign import replay
from qadb.campaign.acquisition import Window
from qadb.campaign.engine import Parts
from qadb.campaign.parts import ReplayModel, ReplayOracle, ReplaySource
from qadb.errors import ConfigError


def hit_rule(recipe: dict, default: replay.HitRule) -> replay.HitRule:
    given = {k: v for k, v in recipe["hit"].items() if v is not None}
    return replay.HitRule(**given) if given else default


def target_window(recipe: dict, default: Window) -> Window:
    """The recipe's filter.target window, or the source's own default when the recipe gives none."""
    target = recipe["filter"].get("target")
    return Window(target.get("min"), target.get("max")) if target else default


def replay_parts(recipe: dict, task: replay.ReplayTask | None = None) -> Parts:
    """Parts of a replay campaign; pass `task` to reuse a loaded pool (benchmarks run many campaigns)."""
    task = task or replay.task(recipe["candidates"]["task"])
    predict = recipe["predict"]
    if predict["validator"] != "delta_ensemble":
        raise ConfigError("replay campaigns use predict.validator: delta_ensemble (the pool has no structures "
                          "to run MF-ENNP on)")
    target_w = target_window(recipe, task.target)
    return Parts(
        source=ReplaySource(task),
        model=ReplayModel(task, multi_fidelity=predict["multi_fidelity"], descriptors=predict["descriptors"],
                          seed=recipe["seed"]),
        labeller=ReplayOracle(task), target=target_w, hit=hit_rule(recipe, task.hit),
        init=recipe["candidates"]["init"],
    )


def parts(recipe: dict, cid: str) -> Parts:
    source = recipe["candidates"]["source"]
    if source == "replay":
        return replay_parts(recipe)
    if recipe["kind"] == "inverse_design":
        from qadb.campaign.inverse import inverse_parts

        return inverse_parts(recipe, cid)
    from qadb.campaign.generative import generative_parts

    return generative_parts(recipe, cid)
