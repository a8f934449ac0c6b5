"""SPP tables and scores, M_LED (reference vs fast, hand-computed), funnel, novelty, describe."""

import json
import math

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from qadb.chem import (
    ReferenceSet,
    assign_framework,
    build_spp_table,
    compactness_stage,
    composition_novelty_stage,
    constraints_stage,
    describe,
    framework_prototypes,
    load_spp_table,
    mled,
    mled_reference,
    run_funnel,
    spp_stage,
    unique_indices,
)
from qadb.chem._spp import BIN_WIDTH, N_BINS, PRIOR, WALL


def test_spp_potential_from_counts_by_hand():
    # Two reference cells: Na-Cl pairs only at 2.82 Å (rock salt primitive) and K-Cl at 3.15 Å.
    nacl = Structure(Lattice([[0, 2.82, 2.82], [2.82, 0, 2.82], [2.82, 2.82, 0]]), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    kcl = Structure(Lattice([[0, 3.15, 3.15], [3.15, 0, 3.15], [3.15, 3.15, 0]]), ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    table = build_spp_table([nacl, kcl], "t", "hand")
    u = table.potential("Cl-Na")
    b_na, b_k = int(2.82 / BIN_WIDTH), int(3.15 / BIN_WIDTH)
    # pooled: one pair in each of 2 bins, 1e-3 pseudo-count in all N_BINS bins.
    p = (1 + 1e-3) / (2 + N_BINS * 1e-3)
    assert u[b_na] == pytest.approx(-math.log((1 + PRIOR * p) / (1 + PRIOR) / p), rel=1e-12)
    assert u[b_k] == pytest.approx(-math.log((PRIOR * p) / (1 + PRIOR) / p), rel=1e-12)
    assert u[0] == WALL and u[b_na] < 0 < u[b_k]
    assert table.score(nacl).value == pytest.approx(u[b_na])
    # Leave-one-out: without its own pair, Na-Cl is unseen (only the covalent wall remains).
    assert table.score(nacl, exclude_self=True).value != table.score(nacl).value


def test_shipped_spp_table_separates_real_from_overlapping(rocksalt, perovskite, overlapping):
    table = load_spp_table()
    assert table.version == "mp20val-v1" and 0 < table.threshold < 5
    assert table.score(rocksalt).value <= table.threshold
    assert table.score(perovskite).value <= table.threshold
    assert table.score(overlapping).value > table.threshold


def test_mled_hand_computed_rock_salt():
    prim = Structure(Lattice([[0, 2.82, 2.82], [2.82, 0, 2.82], [2.82, 2.82, 0]]), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    res = mled_reference(prim)
    # Both sites octahedral (OPSiteFingerprint index 18 -> slot 36); chemistry: Na and Cl slots twice each.
    vec = np.array(res.vector)
    na, cl = 74 + 10, 74 + 16  # PIGEN's element list: Na 10th, Cl 16th (0-based)
    assert vec[36] == 2 and vec[na] == 2 and vec[cl] == 2 and vec.sum() == 6
    x = np.arange(159)
    smooth = sum(np.exp(-((x - k) ** 2) / 200.0) for k in (36, na, cl)) / 3
    p = smooth / smooth.sum()
    assert res.positional == round(float(-(p * np.log2(p)).sum()), 4)
    assert res.polyhedral == 0.0 and res.value == res.positional
    assert mled(prim) == res


def test_mled_fast_equals_reference(perovskite):
    fast, ref = mled(perovskite), mled_reference(perovskite)
    assert fast == ref and fast.polyhedral > 0  # Sr (CN12), Ti (octahedral), O sites differ


def test_funnel_counts_and_reasons(rocksalt, perovskite, overlapping):
    structures = [rocksalt, perovskite, overlapping, Structure(Lattice.cubic(4.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0, 0.5, 0.5]])]
    reference = ReferenceSet.from_formulas(["NaCl"])
    stages = [constraints_stage(), spp_stage(), composition_novelty_stage(reference), compactness_stage()]
    report = run_funnel(structures, stages)
    assert report.counts[0] == ("seed000", 2)  # overlap and NaCl2 fail the constraint set
    assert report.rejected[2].startswith("seed000: covalent_distance")
    assert "charge_neutrality" in report.rejected[3]
    assert report.counts[2] == ("B_novel_composition", 1) and report.survivors == [1]
    assert json.loads(json.dumps(report.as_dict()))["stages"][-1]["survivors"] == 1


def test_uniqueness_novelty_and_frameworks(rocksalt, perovskite):
    kcl = rocksalt.copy()
    kcl.replace_species({"Na": "K"})
    kcl.scale_lattice(rocksalt.volume * 1.3)
    supercell = rocksalt * (1, 1, 2)
    assert unique_indices([rocksalt, supercell, kcl, perovskite]) == [0, 2, 3]
    ref = ReferenceSet.from_structures([rocksalt])
    assert not ref.is_novel(supercell) and ref.is_novel(kcl)
    assert ref.is_novel_composition(kcl) and not ref.is_novel_composition("Na2Cl2")
    frameworks = framework_prototypes([rocksalt, kcl, perovskite], top_n=5)
    assert [f.count for f in frameworks] == [2, 1]
    assert assign_framework(supercell, frameworks).rank == 1  # species-agnostic: NaCl frame = KCl frame


def test_describe_is_json_and_versioned(spinel):
    out = json.loads(json.dumps(describe(spinel, with_mled=False)))
    assert out["spacegroup"]["number"] == 227 and out["seed000_pass"] and out["valid_structure"]
    assert out["artifacts"]["spp_table"] == "mp20val-v1" and out["mled"] is None
    assert set(out["validity"]) >= {"min_distance", "charge_neutrality", "bond_valence", "symmetry"}
