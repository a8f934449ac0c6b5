"""Campaign engine on the real replay tasks: strategies, budget and stopping, reports, recipe errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from qadb.campaign import acquisition as acq, build, recipe as recipes, replay, report, status
from qadb.campaign.engine import Engine
from qadb.errors import ConfigError
from qadb.store import connect
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "megnet_multifidelity_bandgap").exists(),
                                reason="needs the staged datasets in ../shared/data")


@pytest.fixture(scope="module")
def task():
    return replay.task("bandgap", SHARED_DATA)


def replay_recipe(strategy: str, **over) -> dict:
    rec = {"name": f"t-{strategy}", "kind": "replay", "seed": 3, "budget": 60, "max_cycles": 50, "patience": 50,
           "candidates": {"source": "replay", "task": "bandgap", "init": 20},
           "predict": {"validator": "delta_ensemble"}, "select": {"strategy": strategy, "top_k": 20, "budget_fraction": 1.0},
           "validate": {"labeller": "replay"}}
    rec.update(over)
    return recipes.validate(rec)


def run(rec, task):
    return Engine(recipes.campaign_id(rec), rec, build.replay_parts(rec, task)).run()


def test_task_states_pool_hits_and_prevalence(task):
    s = task.summary()
    assert s["pool"] > 3000 and 0 < s["prevalence"] <= 0.10
    assert s["hits_in_pool"] == int(((task.y_high >= 1.0) & (task.y_high <= 1.8)).sum())


def test_divergence_beats_random_and_spends_exactly_the_budget(store_uri, task):
    with connect(store_uri):
        rnd = run(replay_recipe("random"), task)
        div = run(replay_recipe("divergence"), task)
        assert rnd.state == div.state == "completed" and div.stop_reason == "budget spent"
        assert div.summary["calls_total"] == 60 and div.summary["calls"] == 40  # 20 seed + 2 × 20 acquired
        assert div.summary["hits_per_call"] > rnd.summary["hits_per_call"]
        rows = status()
        assert {r["id"] for r in rows} == {rnd.id, div.id}


def test_revealed_values_are_the_held_out_labels(store_uri, task):
    with connect(store_uri):
        doc = run(replay_recipe("divergence"), task)
        from qadb.campaign import state

        got = state.labelled(doc.id)
        assert len(got) == 60
        for key, value in got.items():
            assert value == pytest.approx(task.y_high[task.index[key]], abs=1e-9)


def test_patience_stops_a_campaign_that_finds_nothing(store_uri, task):
    rec = replay_recipe("random", patience=2, hit={"min": 50.0})  # no band gap is 50 eV: no hits at all
    rec["budget"] = 200
    with connect(store_uri):
        doc = run(rec, task)
    assert doc.stop_reason == "2 consecutive cycles without a hit" and doc.summary["hits_total"] == 0


def test_report_writes_table_plots_and_html(store_uri, task, tmp_path):
    with connect(store_uri):
        doc = run(replay_recipe("divergence"), task)
        rep = report(doc.id, tmp_path)
    assert [r["cycle"] for r in rep.rows] == [0, 1, 2]
    assert rep.rows[-1]["cumulative_hits"] == doc.summary["hits_total"]
    for key in ("hits", "funnel", "html", "json"):
        assert (tmp_path / rep.files[key].split("/")[-1]).stat().st_size > 500


def test_hybrid_selection_spreads_over_clusters():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (50, 2)), rng.normal(5, 0.1, (50, 2))])
    signal = np.concatenate([np.ones(50), np.zeros(50)])  # every high-signal point is in cluster 0
    picked = acq.hybrid_select(signal, x, np.zeros((0, 2)), 2, clusters=2, seed=0)
    assert {i < 50 for i in picked} == {True, False}  # one per cluster before a second from either
    only_signal = acq.hybrid_select(signal, x, np.zeros((0, 2)), 2, w_signal=1.0, w_diversity=0.0, clusters=1, seed=0)
    assert all(i < 50 for i in only_signal)


def test_divergence_variants_follow_eqs_3_to_5():
    low, mf, sig = np.array([-1.0, -2.0]), np.array([-1.5, -1.0]), np.array([0.25, 0.5])
    assert acq.divergence(low, mf, sig, "abs").tolist() == [0.5, 1.0]
    assert acq.divergence(low, mf, sig, "rel").tolist() == [2.0, 2.0]
    assert acq.divergence(low, mf, sig, "sgn").tolist() == [0.5, -1.0]


@pytest.mark.parametrize("bad, message", [
    ({"select": {"top_k": 0}}, "select.top_k: 0 is less than the minimum of 1"),
    ({"select": {"strategy": "greedy"}}, "select.strategy: 'greedy' is not one of"),
    ({"budgett": 5}, "unknown field(s): 'budgett'"),
    ({"validate": {"labeller": "replay"}, "candidates": {"source": "generator"}}, "needs candidates.source replay"),
    ({"validate": {"labeller": "mlip", "low_level": "PBE"}, "candidates": {"source": "generator"}},
     "validate.low_level needs a DFT labeller (pyscf or vasp), not mlip"),
    ({"candidates": {"source": "generator", "num_atoms": 0}}, "candidates.num_atoms: 0 is less than the minimum of 1"),
])
def test_bad_recipe_fields_are_named(bad, message):
    rec = {"name": "x", "kind": "replay", "candidates": {"source": "replay", "task": "bandgap"},
           "validate": {"labeller": "replay"}}
    rec = {**rec, **copy.deepcopy(bad)}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        recipes.validate(rec, where="flows/x.yaml")


def test_every_shipped_recipe_validates():
    from pathlib import Path

    flows = sorted((Path(__file__).resolve().parents[2] / "flows").glob("*.yaml"))
    assert {p.stem for p in flows} >= {"quickstart", "qa_genai", "pigen_funnel", "replay_bandgap", "replay_enthalpy",
                                       "pyscf_two_level"}
    for path in flows:
        rec = recipes.load(path)
        assert rec["name"] == path.stem


def test_bad_labeller_settings_are_named(store_uri):
    from qadb.campaign.generative import DFTLabeller

    with pytest.raises(ConfigError, match="unknown field\\(s\\) xc for PySCFSettings"):
        DFTLabeller("pyscf", {"xc": "r2scan"})


def test_two_level_dft_labeller_only_accepts_what_both_levels_can_run():
    from pymatgen.core import Lattice, Structure

    from qadb.campaign.generative import DFTLabeller

    lab = DFTLabeller("pyscf", {"level": "PBE0", "basis": "gth-szv", "smearing_eV": 0.05}, low_level="PBE")
    assert (lab.fidelity, lab.low.level, lab.low.basis) == ("PBE0", "PBE", "gth-szv")
    rocksalt = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    feal = Structure(Lattice.cubic(2.9), ["Fe", "Al"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # no Fe in gth-szv
    assert lab.accepts(rocksalt) and not lab.accepts(feal)
