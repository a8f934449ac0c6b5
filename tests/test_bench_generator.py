"""bench/generator.py's CSP breakdown by prototype: the counts and rates it reports come from the inputs."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
gen_bench = pytest.importorskip("bench.generator")


def _rocksalt(a, b, lat):
    return Structure.from_spacegroup(225, Lattice.cubic(lat), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _cscl(a, b, lat):
    return Structure(Lattice.cubic(lat), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_prototype_key_ignores_species_but_not_symmetry():
    assert gen_bench.prototype_key(_rocksalt("Na", "Cl", 5.6)) == gen_bench.prototype_key(_rocksalt("Mg", "O", 4.2))
    assert gen_bench.prototype_key(_rocksalt("Na", "Cl", 5.6)) != gen_bench.prototype_key(_cscl("Cs", "Cl", 4.1))


def test_csp_by_prototype_bins_and_rates():
    train = [_rocksalt("Na", "Cl", 5.6), _rocksalt("K", "Br", 6.6)]
    test = [_rocksalt("Mg", "O", 4.2), _rocksalt("Li", "F", 4.0), _cscl("Cs", "Cl", 4.1)]
    r = gen_bench.csp_by_prototype([0.01, None, None], test, train, workers=1)
    rows = r["by_train_count"]
    assert rows["0"] == {"n": 1, "pct_of_test": 33.3, "match_rate": 0.0}
    assert rows["1-4"] == {"n": 2, "pct_of_test": 66.7, "match_rate": 50.0}
    assert rows["100+"]["n"] == 0 and rows["100+"]["match_rate"] is None
    assert r["seen_pct"] == 66.7


def test_csp_by_prototype_data_scaling_estimate_uses_the_measured_bin_rates():
    train = [_rocksalt("Na", "Cl", 5.6)]
    test = [_rocksalt("Mg", "O", 4.2), _cscl("Cs", "Cl", 4.1)]
    r = gen_bench.csp_by_prototype([0.01, None], test, train, workers=1, train_sources=["mp20_val"])
    # one MP-20 crystal stands for 27,136 more: the rocksalt test crystal moves to the top count bin, which has no
    # composition of its own and takes the rate of the highest measured bin (1 training crystal: 100 %); the
    # unseen CsCl crystal stays unseen (0 %)
    assert r["match_rate_if_mp20_train_added_estimate"] == 50.0
    assert r["seen_pct_by_mp20_crystals"] == {1: 50.0}


def test_missing_input_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        gen_bench.main(["--npz-csp", str(tmp_path / "none.npz"), "--out", str(tmp_path / "o.json")])
    assert "input file not found" in str(exc.value.code) and "none.npz" in str(exc.value.code)
    assert not (tmp_path / "o.json").exists()


def _sample_set(prefix, structs) -> dict:
    """One sample set as gpu_eval writes it: <prefix>_z, _frac, _lattice, _num_atoms."""
    return {f"{prefix}_z": np.array([site.specie.Z for s in structs for site in s]),
            f"{prefix}_frac": np.concatenate([s.frac_coords for s in structs]),
            f"{prefix}_lattice": np.stack([s.lattice.matrix for s in structs]),
            f"{prefix}_num_atoms": np.array([len(s) for s in structs])}


def _npz(path, structs, meta):
    np.savez(path, meta_json=json.dumps(meta), **_sample_set("csp", structs))


def test_csp_reference_scores_each_model_on_the_shared_prefix(tmp_path):
    test = [_rocksalt("Mg", "O", 4.2), _rocksalt("Li", "F", 4.0), _cscl("Cs", "Cl", 4.1)]
    wrong = _cscl("Li", "F", 2.5)  # LiF in the CsCl structure: not rocksalt
    _npz(tmp_path / "a.npz", test, {"model": "a"})
    _npz(tmp_path / "b.npz", [test[0], wrong], {"model": "b"})
    r = gen_bench.csp_reference([f"a={tmp_path / 'a.npz'}", f"b={tmp_path / 'b.npz'}"], test, workers=1)
    assert r["a"]["csp_match_rate_1"] == 100.0 and r["a"]["csp_n"] == 3 and r["a"]["meta"] == {"model": "a"}
    assert r["a"]["first_2"]["csp_match_rate_1"] == 100.0
    assert r["b"]["csp_match_rate_1"] == 50.0 and r["b"]["first_2"]["csp_n"] == 2


def test_csp_reference_takes_one_setting_of_a_sweep_file(tmp_path):
    """NAME=npz:VARIANT reads <VARIANT>_frac / _lattice of a `gpu_eval --sweep` file; its types are the test ones."""
    test = [_rocksalt("Mg", "O", 4.2), _rocksalt("Li", "F", 4.0)]
    wrong = _cscl("Li", "F", 2.5) * (2, 2, 1)  # 8 sites as the rocksalt cell, in the same species order
    good, bad = _sample_set("x", test), _sample_set("x", [test[0], wrong])
    meta = {"variants": {"good": {"steps": 1000}, "bad": {"steps": 100}}}
    np.savez(tmp_path / "sweep.npz", meta_json=json.dumps(meta), num_atoms=good["x_num_atoms"],
             good_frac=good["x_frac"], good_lattice=good["x_lattice"], bad_frac=bad["x_frac"],
             bad_lattice=bad["x_lattice"])
    r = gen_bench.csp_reference([f"g={tmp_path / 'sweep.npz'}:good", f"b={tmp_path / 'sweep.npz'}:bad"], test,
                                workers=1)
    assert r["g"]["csp_match_rate_1"] == 100.0 and r["b"]["csp_match_rate_1"] == 50.0
    assert r["b"]["meta"]["variant"] == "bad" and r["b"]["meta"]["settings"] == {"steps": 100}


def test_paired_matches_counts_discordant_compositions_and_mcnemar_p():
    ours = [0.1, None, 0.2, 0.3, None, 0.1]
    theirs = [0.1, 0.2, None, None, None, None, 0.5]  # longer: only the shared prefix counts
    r = gen_bench.paired_matches(ours, theirs)
    assert r == {"n": 6, "both": 1, "only_this": 3, "only_reference": 1, "mcnemar_p": 0.625}
    assert gen_bench.paired_matches([None], [None])["mcnemar_p"] == 1.0


def _pack(structs) -> dict:
    """Crystals as the training-tensor export packs them (qadb.models.generator.prepare.pack)."""
    import torch

    from qadb.models.generator.prepare import atomic_radii, pack

    radii = atomic_radii()
    records = [dict(types=np.array(s.atomic_numbers, np.int16), frac=s.frac_coords, lattice=s.lattice.matrix,
                    props={}, material_id=None, source="test", formula=s.composition.reduced_formula) for s in structs]
    return {**pack(records, radii), "radii": torch.from_numpy(radii)}


def _four_crystals() -> list:
    return [_rocksalt("Mg", "O", 4.2), _rocksalt("Li", "F", 4.0), _cscl("Cs", "Cl", 4.1), _rocksalt("Na", "Cl", 5.6)]


def _data_file(path, crystals, n_train: int) -> list:
    """A training-tensor file: the first n_train crystals as train, the rest as test; returns the crystals."""
    import torch

    torch.save({"train": _pack(crystals[:n_train]), "test": _pack(crystals[n_train:])}, path)
    return crystals


def test_cfg_and_condition_sets_in_one_file_keep_their_metric_names(tmp_path):
    """A gpu_eval file with the compactness pair (cfgc0/cfgc1) and a condition set (cond_mled): the shifts are stored
    as cfg_shift_mled / cfg_shift_c. The compactness loop once reused the suffix variable, so they came out as
    cfg_shift_mledcfgc1 (session 15)."""
    crystals = _data_file(tmp_path / "d.pt", _four_crystals(), n_train=2)
    sets = {k: v for prefix in ("gen", "cfgc0", "cfgc1", "cond_mled", "cond_compactness")
            for k, v in _sample_set(prefix, crystals).items()}
    meta = {"steps": 10, "timing": {"gen_s": 1.0}, "cfg_targets": [0.45, 0.75],
            "cond": {"mled": 9.0, "compactness": 0.7}, "cond_joint": {}, "cond_guidance": 1.0}
    np.savez(tmp_path / "g.npz", meta_json=json.dumps(meta), **sets)
    gen_bench.main(["--data", str(tmp_path / "d.pt"), "--npz-gen", str(tmp_path / "g.npz"), "--cov-ref", "2",
                    "--workers", "1", "--out", str(tmp_path / "o.json")])
    doc = json.loads((tmp_path / "o.json").read_text())
    names = set(doc["metrics"]) | set(doc["details"])
    assert {"cfg_shift_mled", "cfg_shift_c", "cfg_slope_c"} <= names
    assert not [k for k in names if "cfgc" in k]
    # the same crystals conditioned and unconditioned: no shift
    assert doc["metrics"]["cfg_shift_c"]["value"] == 0.0


def test_sample_1000_gpu_s_is_taken_only_from_a_set_of_exactly_1000(tmp_path):
    """gpu_eval's gen_s is the time of the whole set: a 5,000-sample file once set sample_1000_gpu_s to 105 s."""
    crystals = _data_file(tmp_path / "d.pt", _four_crystals(), n_train=2)
    meta = {"steps": 1000, "timing": {"gen_s": 5.0}, "cond": {}, "cond_joint": {}}
    for n in (1004, 1000):
        np.savez(tmp_path / "g.npz", meta_json=json.dumps(meta), **_sample_set("gen", (crystals * 251)[:n]))
        gen_bench.main(["--data", str(tmp_path / "d.pt"), "--npz-gen", str(tmp_path / "g.npz"), "--cov-ref", "0",
                        "--workers", "1", "--out", str(tmp_path / f"o{n}.json")])
    assert "sample_1000_gpu_s" in json.loads((tmp_path / "o1004.json").read_text())["details"]["not_measured"]
    assert json.loads((tmp_path / "o1000.json").read_text())["metrics"]["sample_1000_gpu_s"]["value"] == 5.0


def test_merge_brings_an_earlier_runs_figures_into_the_results_file(tmp_path):
    """--merge: a run scored into its own file joins the results file as --update would, its metrics as metrics."""
    _data_file(tmp_path / "d.pt", [_rocksalt("Mg", "O", 4.2), _cscl("Cs", "Cl", 4.1)], n_train=1)
    old = {"metrics": {"csp_match_rate_1": {"value": 30.0}, "csp_match_rate_1_ranked": {"value": 47.0}},
           "details": {"csp_match_rate_1_ranked_note": "20 at 100 steps", "kept": 1}}
    run = {"metrics": {"csp_match_rate_1_ranked": {"value": 51.0}},
           "details": {"csp_match_rate_1_ranked_note": "8 at 1000 steps", "not_measured": ["sun_rate"]}}
    (tmp_path / "out.json").write_text(json.dumps(old))
    (tmp_path / "run.json").write_text(json.dumps(run))
    gen_bench.main(["--data", str(tmp_path / "d.pt"), "--merge", str(tmp_path / "run.json"), "--update",
                    "--out", str(tmp_path / "out.json")])
    doc = json.loads((tmp_path / "out.json").read_text())
    assert doc["metrics"]["csp_match_rate_1_ranked"]["value"] == 51.0
    assert doc["metrics"]["csp_match_rate_1"]["value"] == 30.0 and doc["details"]["kept"] == 1
    assert doc["details"]["csp_match_rate_1_ranked_note"] == "8 at 1000 steps"
    assert "csp_match_rate_1" not in doc["details"]["not_measured"]
    with pytest.raises(SystemExit, match="not found"):
        gen_bench.main(["--data", str(tmp_path / "d.pt"), "--merge", str(tmp_path / "nope.json"),
                        "--out", str(tmp_path / "x.json")])


def test_comp_validity_uses_the_oxidation_table_of_the_published_figures():
    """CDVAE/DiffCSP scored with SMACT 2.x's 2014 table; SMACT >= 3 defaults to ICSD-2024, which differs both ways."""
    from pymatgen.core import Composition

    for formula, smact14, icsd24 in [("NaCl", True, True), ("NaCl2", False, False), ("BaCaO3", True, False),
                                      ("NaSnS2", False, True), ("Fe3Al", True, True)]:
        comp = Composition(formula)
        assert gen_bench.smact_valid(comp) is smact14, formula  # the default is the published protocol's table
        assert gen_bench.smact_valid(comp, "icsd24") is icsd24, formula
    s = Structure(Lattice.cubic(5.6), ["Ba", "Ca", "O", "O", "O"], [[0, 0, 0], [.5, .5, .5], [.5, 0, 0], [0, .5, 0],
                                                                      [0, 0, .5]])
    assert gen_bench.comp_validity([s, s]) == 100.0 and gen_bench.comp_validity([s], "icsd24") == 0.0


def test_assemble_takes_csp_figures_from_the_csp_files_and_the_rest_from_the_gen_file(tmp_path):
    """bench/_assemble_generator.py: one results file from two checkpoints' scored files (one per task)."""
    assemble = pytest.importorskip("bench._assemble_generator")

    def write(name, res):
        (tmp_path / name).write_text(json.dumps(gen_bench.contract(res)))
        return str(tmp_path / name)

    gen = write("gen.json", {"comp_validity": 85.2, "csp_match_rate_1": 34.5, "csp_rmse_1": 0.094, "csp_n": 9046,
                             "checkpoint": {"run": "r14", "step": 132063}, "history": "r12 elsewhere"})
    full = write("full.json", {"csp_match_rate_1": 45.3, "csp_rmse_1": 0.081, "csp_n": 9046,
                               "csp_meta": {"ckpt_meta": {"run": "scratch", "step": 72193, "data_hash": "f6"}},
                               "csp_reference": {"prev": {"csp_match_rate_1": 44.0, "csp_n": 9046,
                                                          "meta": {"ckpt_meta": {"run": "older-run"}},
                                                          "paired_with_this": {"only_this": 935}},
                                                 # the checkpoint shipped before, sampled again with another seed
                                                 "again": {"csp_match_rate_1": 34.1, "csp_n": 9046,
                                                           "meta": {"ckpt_meta": {"run": "r14"}, "seed": 1}}}})
    k20 = write("k20.json", {"csp_match_rate_20": 84.0, "csp_match_rate_1_ranked": 55.7, "csp_match_rate_1": 40.0})
    k8 = write("k8.json", {"csp_match_rate_1_ranked": 59.3, "csp_match_rate_8": 75.3, "csp_match_rate_1": 47.0})
    pair = write("pair.json", {"csp_match_rate_1": 42.9, "csp_rmse_1": 0.16, "csp_n": 1000, "csp_reference": {
        "r14": {"csp_match_rate_1": 37.9, "csp_rmse_1": 0.18, "paired_with_this": {"only_this": 129}}}})
    ck = tmp_path / "ck.pt"
    torch.save({"kind": "qadb.generator", "format_version": 1,
                "meta_json": json.dumps({"run": "scratch-named", "step": 72193, "data_hash": "f6"})}, ck)
    out = tmp_path / "out.json"
    assemble.main(["--gen", gen, "--csp-full", full, "--csp-k20", k20, "--csp-k8", k8, "--cpu-pair", pair,
                   "--history", "older figures in r14.json", "--csp-file", str(ck), "--out", str(out)])
    doc = json.loads(out.read_text())
    m, d = {k: v["value"] for k, v in doc["metrics"].items()}, doc["details"]
    # the 1-sample figure is the whole test set's, never a k-sample file's first sample
    assert m["csp_match_rate_1"] == 45.3 and m["csp_rmse_1"] == 0.081 and m["comp_validity"] == 85.2
    assert m["csp_match_rate_20"] == 84.0 and m["csp_match_rate_1_ranked"] == 59.3
    assert d["csp_match_rate_1_ranked_20x100steps"] == 55.7 and d["csp_match_rate_8"] == 75.3
    assert d["csp_cpu_default"]["csp_match_rate_1"] == 42.9
    assert d["csp_cpu_default"]["paired_with_r14"] == {"only_this": 129}
    assert d["csp_reference"]["r14"]["csp_match_rate_1"] == 34.5  # what the file held before moves aside
    assert d["csp_reference"]["r14, seed 1"]["csp_match_rate_1"] == 34.1  # beside it, not over it
    # a checkpoint scored beside the CSP file keeps its paired comparison, under its run's name
    assert d["csp_reference"]["older-run"]["paired_with_this"] == {"only_this": 935}
    assert d["checkpoint"]["csp"]["step"] == 72193 and d["checkpoint"]["gen"]["run"] == "r14"
    assert d["checkpoint"]["csp"]["run"] == "scratch-named"  # named by the shipped file, not the sampled copy
    assert not any(k.endswith("_meta") for k in d if k.startswith("csp_match"))
    assert d["history"] == "r12 elsewhere; older figures in r14.json"
    assert (tmp_path / "out.md").read_text().count("csp_match_rate_1 | 45.3") == 1
    with pytest.raises(SystemExit, match="has no csp_match_rate_1"):
        assemble.main(["--gen", gen, "--csp-full", write("x.json", {"comp_validity": 80.0}),
                       "--out", str(tmp_path / "y.json")])
    # a scored file sampled from another checkpoint is not filed under this one
    other = write("other.json", {"csp_match_rate_1": 40.0, "csp_rmse_1": 0.1, "csp_n": 1000,
                                 "csp_meta": {"ckpt_meta": {"step": 50000, "data_hash": "f6"}}})
    with pytest.raises(SystemExit, match="--cpu-pair file was sampled from step 50000"):
        assemble.main(["--gen", gen, "--csp-full", full, "--cpu-pair", other, "--csp-file", str(ck),
                       "--out", str(tmp_path / "w.json")])
    with pytest.raises(SystemExit, match="cannot read the --csp-file checkpoint"):
        assemble.main(["--gen", gen, "--csp-full", full, "--csp-file", str(tmp_path / "none.pt"),
                       "--out", str(tmp_path / "w.json")])
    assert not (tmp_path / "w.json").exists()
    with pytest.raises(SystemExit, match="cannot read results file"):
        assemble.main(["--gen", str(tmp_path / "nope.json"), "--csp-full", full, "--out", str(tmp_path / "z.json")])


def test_assemble_files_prototype_prior_figures_beside_not_over_the_sample_from_noise(tmp_path):
    """--csp-prior: samples refined from prototype guesses get their own metrics, with the unrefined guesses
    (retrieval) and the paired counts; csp_match_rate_1 stays the sample from noise (DiffCSP's protocol)."""
    assemble = pytest.importorskip("bench._assemble_generator")

    def write(name, res):
        (tmp_path / name).write_text(json.dumps(gen_bench.contract(res)))
        return str(tmp_path / name)

    # the file re-assembled for the checkpoint it already holds: its own CSP figures are no reference to itself
    gen = write("gen.json", {"comp_validity": 85.2, "csp_match_rate_1": 48.4, "csp_rmse_1": 0.075, "csp_n": 9046,
                             "checkpoint": {"csp": {"run": "same", "step": 1}, "gen": {"run": "r14"}},
                             "csp_reference": {"older": {"csp_match_rate_1": 47.1}}})
    full = write("full.json", {"csp_match_rate_1": 48.4, "csp_rmse_1": 0.075, "csp_n": 9046})
    prior = write("prior.json", {"csp_match_rate_1": 69.6, "csp_rmse_1": 0.03, "csp_n": 9046, "csp_reference": {
        "retrieval": {"csp_match_rate_1": 69.5, "csp_rmse_1": 0.034, "csp_n": 9046,
                      "paired_with_this": {"only_this": 40, "only_reference": 30}},
        "diffusion": {"csp_match_rate_1": 44.4, "csp_rmse_1": 0.14, "csp_n": 9046,
                      "paired_with_this": {"only_this": 3000, "only_reference": 600}}}})
    out = tmp_path / "out.json"
    ck = tmp_path / "ck.pt"
    torch.save({"kind": "qadb.generator", "format_version": 1, "meta_json": json.dumps({"step": 1})}, ck)
    ranked = write("ranked.json", {"csp_match_rate_1_ranked": 75.7, "csp_match_rate_8": 86.1,
                                   "csp_match_rate_1": 71.3})
    assemble.main(["--gen", gen, "--csp-full", full, "--csp-prior", prior, "--prior-settings", "t_start 100",
                   "--csp-prior-ranked", ranked, "--csp-file", str(ck), "--out", str(out)])
    doc = json.loads(out.read_text())
    m, d = {k: v["value"] for k, v in doc["metrics"].items()}, doc["details"]
    assert m["csp_match_rate_1"] == 48.4 and m["csp_match_rate_1_prior"] == 69.6
    assert m["csp_match_rate_1_retrieval"] == 69.5 and m["csp_rmse_1_retrieval"] == 0.034
    assert doc["metrics"]["csp_match_rate_1"]["target"] == 55.0
    assert doc["metrics"]["csp_match_rate_1_prior"]["target"] is None  # another protocol: no target claimed
    assert d["csp_prior"]["paired_with_diffusion"] == {"only_this": 3000, "only_reference": 600}
    assert d["csp_prior"]["settings"] == "t_start 100" and d["csp_prior"]["retrieval"]["csp_n"] == 9046
    assert set(d["csp_reference"]) == {"older"} and d["checkpoint"]["gen"]["run"] == "r14"
    assert d["csp_prior"]["ranked"]["csp_match_rate_8"] == 86.1 and "csp_match_rate_1_ranked" not in m
    with pytest.raises(SystemExit, match="goes with --csp-prior"):
        assemble.main(["--gen", gen, "--csp-full", full, "--csp-prior-ranked", ranked, "--out", str(tmp_path / "v.json")])
    bad = write("bad.json", {"csp_match_rate_1": 70.0, "csp_rmse_1": 0.03, "csp_n": 10})
    with pytest.raises(SystemExit, match="no 'retrieval' reference"):
        assemble.main(["--gen", gen, "--csp-full", full, "--csp-prior", bad, "--csp-file", str(ck),
                       "--out", str(tmp_path / "w.json")])


def test_mlip_ranking_is_paired_with_each_compositions_first_sample():
    """csp_ranked_metrics picks the lowest CHGNet energy per atom (the real model, bundled in its package) and says
    where the pick differs from sample 1: here sample 1 of NaCl is a CsCl-type cell with Na-Cl at 2.25 A, which
    neither matches rock salt nor is low in energy, so the ranking gains that composition and loses none."""
    pytest.importorskip("chgnet")
    nacl, mgo = _rocksalt("Na", "Cl", 5.64), _rocksalt("Mg", "O", 4.21)
    wrong = _cscl("Na", "Cl", 2.6)
    r = gen_bench.csp_ranked_metrics([[wrong, nacl], [mgo, mgo.copy()]], [nacl, mgo], "chgnet", workers=1)
    assert r["csp_match_rate_1_ranked"] == 100.0
    assert r["csp_match_rate_1_ranked_picked_first"] == 1
    assert r["csp_match_rate_1_ranked_vs_first"] == {"n": 2, "both": 1, "only_this": 1, "only_reference": 0,
                                                     "mcnemar_p": 1.0}
