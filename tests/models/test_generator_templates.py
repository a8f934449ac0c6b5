"""Prototype guesses (`templates.PrototypeIndex`) and structure prediction refined from them: the sampler's
``init``/``t_start``, `api.sample(prior=...)` and `qadb sample --prior store`, with the committed CSP checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("pymatgen")
from pymatgen.analysis.structure_matcher import StructureMatcher  # noqa: E402
from pymatgen.core import Lattice, Structure  # noqa: E402

from qadb.models.generator import CSP_CHECKPOINT, load_checkpoint, sample  # noqa: E402
from qadb.models.generator.sampler import sample_tensors  # noqa: E402
from qadb.models.generator.templates import PrototypeIndex  # noqa: E402

# pymatgen's default tolerances: the CSP metric's looser ones (stol 0.5) take zinc blende for rock salt
MATCH = StructureMatcher()


def _rocksalt(a=5.64, species=("Na", "Cl")) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), list(species), [[0, 0, 0], [0.5, 0.5, 0.5]])


def _zincblende(a=5.41, species=("Zn", "S")) -> Structure:
    return Structure.from_spacegroup("F-43m", Lattice.cubic(a), list(species), [[0, 0, 0], [0.25, 0.25, 0.25]])


@pytest.fixture(scope="module")
def index() -> PrototypeIndex:
    """Two AB prototypes of 8 sites (conventional cells): rock salt NaCl and zinc blende ZnS."""
    return PrototypeIndex.from_structures([_rocksalt(), _zincblende()], ["nacl", "zns"])


@pytest.fixture(scope="module")
def csp():
    if not CSP_CHECKPOINT.exists():
        pytest.skip("committed CSP checkpoint not present")
    return load_checkpoint(CSP_CHECKPOINT)


def _as_structure(g) -> Structure:
    return Structure(Lattice(g.lattice), g.types.tolist(), g.frac)


def test_guesses_rank_prototypes_by_element_likeness_and_keep_the_site_order(index):
    kbr = [35, 19, 19, 35, 35, 19, 19, 35]  # any site order: the guess keeps it
    first, second = index.guesses(kbr, k=2)
    assert (first.source, second.source) == ("nacl", "zns")  # K/Br are like Na/Cl, unlike Zn/S
    assert first.types.tolist() == kbr
    assert MATCH.fit(_as_structure(first), _rocksalt(6.6, ("K", "Br")))
    assert MATCH.fit(_as_structure(second), _zincblende(6.6, ("K", "Br")))
    assert not MATCH.fit(_as_structure(first), _zincblende(6.6, ("K", "Br")))
    # the cell grows with the atoms put on it: K and Br are larger than Na and Cl
    assert abs(np.linalg.det(first.lattice)) > _rocksalt().volume * 1.2
    assert index.guesses([31, 33] * 4)[0].source == "zns"  # GaAs: zinc blende first
    assert index.guesses([19, 35, 35, 35]) == []  # AB3: no prototype of that anonymous formula
    assert index.guesses([19, 35] * 2) == []  # AB of 4 sites: none of that size


def test_sampler_starts_from_a_given_structure_at_t_start(index, csp):
    g = index.guesses([19, 35] * 4)[0]
    na, types = torch.tensor([8]), torch.as_tensor(g.types)
    init = (torch.tensor(g.frac, dtype=torch.float32), torch.tensor(g.lattice[None], dtype=torch.float32))
    _, f, lat = sample_tensors(csp.model, csp.schedules, na, types, steps=1000, corrector=False, init=init, t_start=1)
    d = (f.numpy() - g.frac + 0.5) % 1.0 - 0.5  # one step from the lowest noise level keeps the structure
    assert np.abs(d).max() < 0.05 and np.allclose(lat[0].numpy(), g.lattice, rtol=0.05, atol=0.1)
    _, f_full, _ = sample_tensors(csp.model, csp.schedules, na, types, steps=10, corrector=False, init=init, t_start=1000)
    assert np.abs((f_full.numpy() - g.frac + 0.5) % 1.0 - 0.5).max() > 0.05  # from T: the start is forgotten
    with pytest.raises(ValueError, match="go together"):
        sample_tensors(csp.model, csp.schedules, na, types, steps=2, init=init)
    with pytest.raises(ValueError, match="1..1000"):
        sample_tensors(csp.model, csp.schedules, na, types, steps=2, init=init, t_start=0)
    with pytest.raises(ValueError, match="structure prediction"):
        sample_tensors(csp.model, csp.schedules, na, None, steps=2, init=init, t_start=5)


def test_csp_from_a_prototype_prior_refines_each_guess_and_says_which(index, csp):
    kept = sample(csp, n=3, mode="csp", composition="K4Br4", prior=index, t_start=0)
    assert [s.properties["prior"]["template"] for s in kept] == ["nacl", "zns", "nacl"]  # cycling through guesses
    assert np.allclose(kept[0].frac_coords % 1.0, index.guesses([19] * 4 + [35] * 4)[0].frac % 1.0, atol=1e-6)
    refined = sample(csp, n=2, mode="csp", composition="K4Br4", prior=index, seed=3)  # the default t_start
    assert [s.properties["prior"]["template"] for s in refined] == ["nacl", "zns"]
    assert all(s.properties["prior"]["t_start"] > 0 for s in refined)
    assert MATCH.fit(refined[0], _rocksalt(6.6, ("K", "Br")))
    assert MATCH.fit(refined[1], _zincblende(6.6, ("K", "Br")))
    assert not np.allclose(refined[0].frac_coords, kept[0].frac_coords)  # the model moved the atoms
    none = sample(csp, n=1, mode="csp", composition="KBr3", prior=index, steps=5)
    assert none[0].properties["prior"] is None and none[0].composition.reduced_formula == "KBr3"


def test_cli_csp_with_store_prototypes_records_the_templates(tmp_path, embedded_uri, csp):
    from qadb.store import connect, ingest_records
    from qadb.store.documents import StructureDoc
    from qadb.store.readers import RawRecord
    from tests.models.test_generator import _qadb

    with connect(embedded_uri) as store:
        recs = [RawRecord(f"test #{i}", "dict", s.as_dict(), "test", source_id=f"t-{i}")
                for i, s in enumerate([_rocksalt(), _zincblende()])]
        ingest_records(store, recs)
    r = _qadb("--store", embedded_uri, "sample", "--mode", "csp", "--composition", "K4Br4", "-n", "2", "--prior",
              "store", "-o", str(tmp_path / "s.json"), env_home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "prototype guesses: 2 stored crystal(s)" in r.stdout, r.stdout
    got = [Structure.from_dict(d) for d in json.loads((tmp_path / "s.json").read_text())]
    assert MATCH.fit(got[0], _rocksalt(6.6, ("K", "Br")))  # the nearest guess first
    with connect(embedded_uri):
        docs = list(StructureDoc.objects(origin__kind="generated"))
        known = {d.id for d in StructureDoc.objects(origin__kind__ne="generated")}
    assert docs and all(d.origin.settings["prior"]["kind"] == "store prototypes" for d in docs)
    assert set(docs[0].origin.settings["prior"]["templates"]) == known and len(known) == 2


def test_guesses_file_refined_by_gpu_eval_and_its_errors(tmp_path, csp, capsys):
    """`python -m qadb.models.generator.templates` writes the nearest guess of each test composition of a tensor
    file (training crystals as templates), and `gpu_eval --csp-init FILE --t-start T` refines them: from t = 1 the
    guess stays; a composition without a template (KBr3) is sampled from noise. A guesses file of other
    compositions, or --csp-init without --t-start, is a one-line error and nothing is written."""
    from qadb.models.generator import gpu_eval, templates
    from qadb.models.generator.prepare import atomic_radii, pack

    def packed(structs):
        return pack([dict(types=np.array(s.atomic_numbers, np.int16), frac=s.frac_coords % 1.0,
                          lattice=s.lattice.matrix, props={}, material_id=f"m{i}", source="t",
                          formula=s.composition.reduced_formula) for i, s in enumerate(structs)], atomic_radii())

    kbr3 = Structure(Lattice.cubic(5.0), ["K", "Br", "Br", "Br"], [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5],
                                                                  [0, 0.5, 0.5]])
    test = [_rocksalt(6.6, ("K", "Br")), _zincblende(5.65, ("Ga", "As")), kbr3]
    data = tmp_path / "d.pt"
    torch.save({"train": packed([_rocksalt(), _zincblende()]), "test": packed(test),
                "meta_json": json.dumps({"train_hash": "t"})}, data)
    templates.main(["--data", str(data), "--out", str(tmp_path / "g.npz")])
    g = np.load(tmp_path / "g.npz")
    assert g["guess_found"].tolist() == [True, True, False]
    assert np.array_equal(g["csp_z"], np.concatenate([s.atomic_numbers for s in test]))
    base = ["--ckpt", str(CSP_CHECKPOINT), "--data", str(data), "--csp-n", "3", "--chunk", "3", "--steps", "20",
            "--no-corrector", "--device", "cpu"]
    gpu_eval.main([*base, "--csp-init", str(tmp_path / "g.npz"), "--t-start", "1", "--out", str(tmp_path / "r.npz")])
    r = np.load(tmp_path / "r.npz")
    assert json.loads(str(r["meta_json"]))["t_start"] == 1
    d = (r["csp_frac"][:16] - g["csp_frac"][:16] + 0.5) % 1.0 - 0.5
    assert np.abs(d).max() < 0.05 and np.allclose(r["csp_lattice"][:2], g["csp_lattice"][:2], rtol=0.05, atol=0.1)
    assert not np.allclose(r["csp_lattice"][2], g["csp_lattice"][2], atol=0.1)  # KBr3: from noise, not the cube
    assert np.array_equal(r["csp_z"], g["csp_z"])
    capsys.readouterr()
    with pytest.raises(SystemExit, match="go together"):
        gpu_eval.main([*base, "--csp-init", str(tmp_path / "g.npz"), "--out", str(tmp_path / "bad.npz")])
    torch.save({"train": packed([_rocksalt()]), "test": packed(test[:1]), "meta_json": "{}"}, tmp_path / "o.pt")
    templates.main(["--data", str(tmp_path / "o.pt"), "--out", str(tmp_path / "other.npz")])
    with pytest.raises(SystemExit, match="not the test compositions") as e:
        gpu_eval.main([*base, "--csp-init", str(tmp_path / "other.npz"), "--t-start", "1", "--out",
                       str(tmp_path / "bad.npz")])
    assert "\n" not in str(e.value)
    with pytest.raises(SystemExit, match="not a generator tensor file"):
        templates.main(["--data", str(tmp_path / "g.npz"), "--out", str(tmp_path / "bad.npz")])
    assert not (tmp_path / "bad.npz").exists()
