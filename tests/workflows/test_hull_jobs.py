"""Hull-update jobs (fast): built from stored formation energies, cached, refreshed when labels arrive."""

import pytest

from qadb.errors import InputError
from qadb.store import jobs
from qadb.store.documents import HullCacheDoc
from qadb.workflows import load_hull, refresh_hulls, update_hull
from qadb.workflows.core import Outcome
from tests.workflows.conftest import add, formation, rocksalt


def test_hull_cache_is_built_reused_and_refreshed(store):
    nacl, kcl = add(store, rocksalt(5.64), rocksalt(6.29, ("K", "Cl")), labels=[[formation(-2.1)], [formation(-2.2)]])
    first = update_hull("Na-Cl", "PBE", store=store)
    assert first.status == "completed" and not first.cached and first.summary["stable"] == [nacl]
    assert load_hull("Cl-Na", "pbe", store=store).analyse({"Na": 1, "Cl": 1}, -2.0).e_above_hull == pytest.approx(0.1)
    again = update_hull("Cl-Na", "PBE", store=store)  # same labels: the stored outcome, nothing rebuilt
    assert again.cached and again.job == first.job

    (polymorph,) = add(store, rocksalt(5.0), labels=[[formation(-2.3)]])  # a new, lower NaCl label arrives
    fresh = update_hull("Na-Cl", "PBE", store=store)
    assert fresh.job != first.job and fresh.summary["stable"] == [polymorph] and fresh.summary["n_entries"] == 2
    assert HullCacheDoc.objects.count() == 1
    assert load_hull("Na-Cl", "r2SCAN", store=store) is None  # fidelities never mix
    assert update_hull("Na-Cl", "r2SCAN", store=store).summary["n_entries"] == 0

    ternary = update_hull("K-Na-Cl", "PBE", store=store)  # subsystems are included
    assert set(ternary.summary["stable"]) == {polymorph, kcl}
    (again_k,) = add(store, rocksalt(6.0, ("K", "Cl")), labels=[[formation(-2.4)]])
    refreshed = refresh_hulls([Outcome(job="x", kind="label", status="completed", structure=again_k,
                                       summary={"fidelity": "PBE", "formation_energy_per_atom": -2.4})], store=store)
    assert sorted(o.summary["chemsys"] for o in refreshed) == ["Cl-K", "Cl-K-Na"]  # own system + cached supersystem
    assert again_k in load_hull("K-Na-Cl", "PBE", store=store).stable_ids


def test_bad_hull_requests(store):
    with pytest.raises(InputError, match="not elements"):
        update_hull("Xx-O", "PBE", store=store)
    with pytest.raises(InputError, match="unknown fidelity"):
        update_hull("Na-Cl", "DFT", store=store)
    assert jobs.list_jobs() == []
