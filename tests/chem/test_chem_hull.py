"""Hulls: hand-computed binary/ternary cases, and agreement with pymatgen's PhaseDiagram to 1e-6 eV/atom."""

import json

import numpy as np
import pytest
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition

from qadb.chem import HullEntry, PhaseHull, build_hull, build_hulls, stability_class
from qadb.errors import InputError


def _li_co_o():
    return [
        HullEntry.make("Li2O", "Li2O", -2.0),
        HullEntry.make("CoO", "CoO", -1.2),
        HullEntry.make("LiCoO2", "LiCoO2", -1.8),
        HullEntry.make("Co3O4", "Co3O4", -1.0),  # above CoO + O: unstable
    ]


def test_binary_hand_computed():
    hull = build_hull([HullEntry.make("Li2O", "Li2O", -2.0), HullEntry.make("Li2O2", "Li2O2", -1.4)])
    res = hull.analyse("Li2O2", -1.4)
    # Hull at x_O = 1/2 between Li2O (x=1/3, -2) and O (x=1, 0): -2 + (1/6)/(2/3) * 2 = -1.5
    assert res.hull_energy == pytest.approx(-1.5, abs=1e-12)
    assert res.e_above_hull == pytest.approx(0.1, abs=1e-12)
    assert res.decomposition == pytest.approx({"Li2O": 0.75, "ref:O": 0.25}, abs=1e-12)
    assert res.stability == "marginally_metastable"


def test_ternary_li_co_o_hand_computed():
    hull = build_hull(_li_co_o())
    # LiCoO2 -> 3/8 Li2O + 1/2 CoO + 1/8 O: hull without it = 3/8(-2) + 1/2(-1.2) = -1.35
    res = hull.analyse("LiCoO2", -1.8, entry_id="LiCoO2")
    assert res.e_above_hull == pytest.approx(0.0, abs=1e-12)
    assert res.decomposition_energy == pytest.approx(-0.45, abs=1e-12)
    assert res.decomposition == pytest.approx({"Li2O": 0.375, "CoO": 0.5, "ref:O": 0.125}, abs=1e-12)
    assert res.stability == "stable"
    # A new LiCoO2 polymorph 20 meV above the known one: metastable against ALL other phases.
    poly = hull.analyse("Li2Co2O4", -1.78)
    assert poly.e_above_hull == pytest.approx(0.02, abs=1e-12)
    assert poly.decomposition_energy == pytest.approx(0.02, abs=1e-12)
    assert poly.decomposition == pytest.approx({"LiCoO2": 1.0})
    assert poly.stability == "metastable"
    # Co3O4 (x_O = 4/7): hull = CoO + O mix = -1.2 * (3/7) / (1/2) = -1.0286
    co3o4 = hull.analyse("Co3O4", -1.0, entry_id="Co3O4")
    assert co3o4.e_above_hull == pytest.approx(-1.0 + 1.2 * 6 / 7, abs=1e-12)
    assert co3o4.decomposition_energy == pytest.approx(co3o4.e_above_hull, abs=1e-12)
    assert set(hull.stable_ids) == {"ref:Li", "ref:Co", "ref:O", "Li2O", "CoO", "LiCoO2"}


@pytest.mark.parametrize("elements,n_entries", [(["Li", "O"], 40), (["Li", "Co", "O"], 120), (["Li", "Fe", "P", "O"], 300)])
def test_agrees_with_pymatgen(elements, n_entries):
    rng = np.random.default_rng(len(elements))
    entries = []
    for k in range(n_entries):
        chosen = rng.choice(elements, rng.integers(2, len(elements) + 1), replace=False)
        amounts = {el: int(rng.integers(1, 6)) for el in chosen}
        entries.append(HullEntry.make(f"e{k}", amounts, float(rng.normal(-0.8, 0.6))))
    entries.append(HullEntry.make("dup", entries[0].composition, entries[0].energy_per_atom + 0.01))
    hull = build_hull(entries)
    pd_entries = [PDEntry(Composition(e.composition), e.energy_per_atom * sum(e.composition.values()), name=e.id)
                  for e in entries] + [PDEntry(Composition(el), 0.0, name="ref:" + el) for el in elements]  # fmt: skip
    pd = PhaseDiagram(pd_entries)
    worst = 0.0
    for pe, e in zip(pd_entries, entries):
        res = hull.analyse(e.composition, e.energy_per_atom, entry_id=e.id)
        worst = max(worst, abs(res.e_above_hull - pd.get_e_above_hull(pe)))
        if res.e_above_hull < 1e-9:  # on the hull: decomposition energy vs the diagram without it
            others = PhaseDiagram([x for x in pd_entries if x is not pe])
            ref = others.get_decomp_and_e_above_hull(pe, allow_negative=True)[1]
            worst = max(worst, abs(res.decomposition_energy - ref))
    assert worst < 1e-6
    batch = hull.e_above_hull([e.composition for e in entries], [e.energy_per_atom for e in entries])
    assert np.allclose(batch, [pd.get_e_above_hull(pe) for pe in pd_entries[: len(entries)]], atol=1e-9)


def test_round_trip_dict_is_json_and_exact():
    hull = build_hull(_li_co_o(), fidelity="PBE")
    data = json.loads(json.dumps(hull.to_dict()))
    back = PhaseHull.from_dict(data)
    assert back.fidelity == "PBE" and back.elements == hull.elements
    for comp, e in [("LiCoO2", -1.7), ("Li5CoO4", -1.5), ("CoO2", -0.9)]:
        assert back.analyse(comp, e).as_dict() == hull.analyse(comp, e).as_dict()
    with pytest.raises(InputError):
        PhaseHull.from_dict({"schema": "other"})


def test_fidelities_are_kept_apart():
    entries = [HullEntry.make("a", "LiO", -1.0, "PBE"), HullEntry.make("b", "LiO", -1.3, "r2SCAN")]
    with pytest.raises(InputError, match="mix fidelities"):
        build_hull(entries)
    hulls = build_hulls(entries)
    assert set(hulls) == {"PBE", "r2SCAN"}
    assert hulls["r2SCAN"].analyse("LiO", -1.3).e_above_hull == pytest.approx(0.0, abs=1e-12)
    assert hulls["PBE"].analyse("LiO", -1.2).e_above_hull == pytest.approx(-0.2, abs=1e-12)


def test_subsystem_queries_and_errors():
    hull = build_hull(_li_co_o())
    assert hull.analyse("Li2O", -2.0).e_above_hull == pytest.approx(0.0, abs=1e-12)
    assert hull.analyse("Li", 0.1).e_above_hull == pytest.approx(0.1, abs=1e-12)
    with pytest.raises(InputError, match="outside the hull"):
        hull.analyse("NaCl", -1.0)
    with pytest.raises(InputError):
        hull.without("ref:O")


def test_stability_classes_table2():
    assert [stability_class(e) for e in (-0.001, 0.0, 0.049, 0.05, 0.1, 0.1001)] == [
        "stable", "metastable", "metastable", "marginally_metastable", "marginally_metastable", "unstable"
    ]  # fmt: skip
