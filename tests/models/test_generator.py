"""Fast CPU tests of the crystal diffusion generator (issue #5)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qadb.errors import CheckpointError, InputError
from qadb.models.generator.checkpoint import load_checkpoint
from qadb.models.generator.conditions import N_TYPES, PROPS
from qadb.models.generator.diffusion import Schedules, fc_edges, score_norm, wrapped_normal_logp, wrapped_normal_score
from qadb.models.generator.network import CrystalDenoiser
from qadb.models.generator.train import DEFAULTS, diffusion_loss

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def sched():
    return Schedules(T=50)


def _batch(seed=0, sizes=(3, 4)):
    g = torch.Generator().manual_seed(seed)
    na = torch.tensor(sizes)
    n = int(na.sum())
    types = torch.randint(1, 90, (n,), generator=g)
    frac = torch.rand(n, 3, generator=g)
    lat = torch.eye(3).repeat(len(sizes), 1, 1) * 2.0 + 0.3 * torch.randn(len(sizes), 3, 3, generator=g)
    B = len(sizes)
    props = torch.randn(B, len(PROPS), generator=g)
    pmask = torch.rand(B, len(PROPS), generator=g) > 0.5
    chemsys = torch.zeros(B, N_TYPES)
    mode = torch.tensor([0, 1])[:B]
    return na, types, frac, lat, props, pmask, chemsys, mode


def _run(model, na, types, frac, lat, props, pmask, chemsys, mode):
    a = torch.nn.functional.one_hot(types - 1, N_TYPES).float()
    a = a.to(frac.dtype)
    t = torch.full((len(na),), 0.3, dtype=frac.dtype)
    return model(a, frac, lat, na, t, props, pmask, chemsys, torch.zeros(len(na), dtype=torch.bool), mode)


@pytest.mark.parametrize("sigma", [0.005, 0.05, 0.2, 0.5])
def test_wrapped_normal_score_matches_numerical_derivative(sigma):
    x = torch.linspace(-1.3, 1.3, 41, dtype=torch.float64)
    h = 1e-6
    num = (wrapped_normal_logp(x + h, sigma) - wrapped_normal_logp(x - h, sigma)) / (2 * h)
    ana = wrapped_normal_score(x, sigma)
    assert torch.allclose(ana, num, rtol=1e-5, atol=1e-4 * max(1.0, 1 / sigma))
    # periodic, and a normalised density on one period
    assert torch.allclose(wrapped_normal_score(x + 1, sigma), ana, atol=1e-6 / sigma**2)
    grid = torch.arange(4096, dtype=torch.float64) / 4096 - 0.5
    assert abs(float(wrapped_normal_logp(grid, sigma).exp().mean()) - 1.0) < 1e-6


def test_score_norm_small_sigma_is_gaussian():
    s = torch.tensor([0.005, 0.01, 0.05])
    assert torch.allclose(score_norm(s), 1 / s**2, rtol=1e-3)


def test_fc_edges():
    src, dst = fc_edges(torch.tensor([2, 3]))
    pairs = set(zip(src.tolist(), dst.tolist()))
    assert pairs == {(0, 1), (1, 0), (2, 3), (2, 4), (3, 2), (3, 4), (4, 2), (4, 3)}


def test_shapes_and_symmetries():
    torch.manual_seed(0)
    model = CrystalDenoiser(hidden=32, layers=2, n_freq=4).double().eval()
    na, types, frac, lat, props, pmask, chemsys, mode = _batch()
    frac, lat, props = frac.double(), lat.double(), props.double()
    el, sf, ea = _run(model, na, types, frac, lat, props, pmask, chemsys.double(), mode)
    assert el.shape == (2, 3, 3) and sf.shape == (7, 3) and ea.shape == (7, N_TYPES)
    # permutation of atoms inside each crystal
    perm = torch.tensor([2, 0, 1, 6, 4, 3, 5])
    el2, sf2, ea2 = _run(model, na, types[perm], frac[perm], lat, props, pmask, chemsys.double(), mode)
    assert torch.allclose(el2, el, atol=1e-10) and torch.allclose(sf2, sf[perm], atol=1e-10)
    assert torch.allclose(ea2, ea[perm], atol=1e-10)
    # periodic translation of all fractional coordinates of a crystal (and wrapping into [0, 1))
    shift = torch.cat([torch.tensor([[0.37, -0.81, 0.5]]).repeat(3, 1), torch.tensor([[0.1, 0.2, 0.9]]).repeat(4, 1)])
    el3, sf3, _ = _run(model, na, types, (frac + shift.double()) % 1.0, lat, props, pmask, chemsys.double(), mode)
    assert torch.allclose(el3, el, atol=1e-9) and torch.allclose(sf3, sf, atol=1e-9)
    # rotation / reflection of the lattice: L -> Q L, eps_L -> Q eps_L, coordinate score invariant
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    el4, sf4, ea4 = _run(model, na, types, frac, q @ lat, props, pmask, chemsys.double(), mode)
    assert torch.allclose(el4, q @ el, atol=1e-9) and torch.allclose(sf4, sf, atol=1e-9)
    assert torch.allclose(ea4, ea, atol=1e-9)


def test_tiny_overfit(sched):
    torch.manual_seed(0)
    model = CrystalDenoiser(hidden=48, layers=2, n_freq=4)
    na, types, frac, lat, props, _, _, _ = _batch(sizes=(2, 2))
    radii = torch.full((N_TYPES,), 1.0)
    props[:, PROPS.index("compactness")] = 0.5
    b = dict(num_atoms=na, types=types, frac=frac, lattice=lat, props=props, props_raw=props)
    cfg = dict(DEFAULTS, lambda_c=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    t_fix = torch.tensor([10, 10])
    mode = torch.tensor([0, 1])
    losses = []
    for _ in range(150):
        torch.manual_seed(1)  # same noise every step: the network must fit one denoising problem
        loss, out = diffusion_loss(model, sched, b, cfg, radii, t_int=t_fix, mode=mode)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert "compactness" in out
    assert losses[-1] < 0.2 * losses[0]


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    wrong = tmp_path / "wrong.pt"
    torch.save({"kind": "qadb.validator", "format_version": 1}, wrong)
    with pytest.raises(CheckpointError, match="not a qadb.generator"):
        load_checkpoint(wrong)
    evil = tmp_path / "evil.pt"
    torch.save({"kind": "qadb.generator", "obj": _Unpicklable()}, evil)
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)
    for p in (bad, wrong, evil):
        try:
            load_checkpoint(p)
        except CheckpointError as e:
            assert "\n" not in str(e)


class _Unpicklable:
    pass


def test_default_checkpoint_csp_sampling():
    pytest.importorskip("pymatgen")
    from qadb.models.generator import CSP_CHECKPOINT, DEFAULT_CHECKPOINT, default_checkpoint, sample

    if not (DEFAULT_CHECKPOINT.exists() and CSP_CHECKPOINT.exists()):
        pytest.skip("default checkpoints not present")
    assert default_checkpoint("csp") == CSP_CHECKPOINT and default_checkpoint("gen") == DEFAULT_CHECKPOINT
    assert DEFAULT_CHECKPOINT.stat().st_size < 20 * 2**20 and CSP_CHECKPOINT.stat().st_size < 20 * 2**20
    structs = sample(None, n=2, mode="csp", composition="Na2Cl2", steps=20, seed=3)
    # no checkpoint given: the CSP one, not the ab initio one (same seed, different cells)
    other = sample(DEFAULT_CHECKPOINT, n=2, mode="csp", composition="Na2Cl2", steps=20, seed=3)
    assert not all(abs(a.volume - b.volume) < 1e-6 for a, b in zip(structs, other))
    assert len(structs) == 2
    for s in structs:
        assert s.composition.reduced_formula == "NaCl" and len(s) == 4
        assert math.isfinite(s.volume) and s.volume > 1.0
        assert all(0 <= x < 1 for x in s.frac_coords.ravel())


def test_missing_csp_checkpoint_is_reported_not_replaced(monkeypatch, tmp_path):
    """Without generator_csp.pt, CSP sampling fails naming the file; it never falls back to the ab initio model."""
    from qadb.models.generator import api

    missing = tmp_path / "generator_csp.pt"
    monkeypatch.setattr(api, "CSP_CHECKPOINT", missing)
    assert api.default_checkpoint("csp") == missing and api.default_checkpoint("gen") == api.DEFAULT_CHECKPOINT
    with pytest.raises(CheckpointError, match="generator_csp.pt"):
        api.sample(None, n=1, mode="csp", composition="Na2Cl2", steps=2, seed=0)


def test_default_checkpoint_gen_chemsys_and_conditions():
    pytest.importorskip("pymatgen")
    from qadb.models.generator import DEFAULT_CHECKPOINT, sample

    if not DEFAULT_CHECKPOINT.exists():
        pytest.skip("default checkpoint not present")
    structs = sample(DEFAULT_CHECKPOINT, n=2, mode="gen", chemsys="Li-O", num_atoms=3, conditions={"C": 0.6},
                     guidance={"C": 1.0}, steps=10, seed=1)
    for s in structs:
        assert {e.symbol for e in s.composition.elements} <= {"Li", "O"}
        assert len(s) == 3


def test_gpu_eval_conditions_single_joint_and_csp(tmp_path):
    """The evaluation sampler writes one sample set per condition spec: `M_LED=9` alone (cond_mled), both at once
    (cond_joint), and conditioned CSP; guided CSP differs from unguided CSP from the same seed."""
    import numpy as np

    from qadb.models.generator import DEFAULT_CHECKPOINT
    from qadb.models.generator.gpu_eval import run

    if not DEFAULT_CHECKPOINT.exists():
        pytest.skip("default checkpoint not present")
    data = tmp_path / "d.pt"
    torch.save({"test": {"num_atoms": torch.tensor([2, 3]), "types": torch.tensor([11, 17, 12, 8, 8])}}, data)
    kw = dict(csp_n=2, gen_n=2, steps=3, corrector=False, device="cpu")
    run(DEFAULT_CHECKPOINT, data, tmp_path / "a.npz", cond=("M_LED=9", "M_LED=9,C=0.7"), **kw)
    run(DEFAULT_CHECKPOINT, data, tmp_path / "b.npz", csp_cond="E_hull=0", csp_guidance=2.0, **kw)
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert {"gen_z", "cond_mled_z", "cond_joint_z", "csp_frac"} <= set(a.files)
    meta = json.loads(str(a["meta_json"]))
    assert meta["cond"] == {"mled": 9.0} and meta["cond_joint"] == {"mled": 9.0, "compactness": 0.7}
    assert json.loads(str(b["meta_json"]))["csp_cond"] == "E_hull=0"
    assert a["csp_lattice"].shape == (2, 3, 3) and not np.allclose(a["csp_lattice"], b["csp_lattice"])
    # a strength for C alone: same seeds, so only the sets that guide C change
    run(DEFAULT_CHECKPOINT, data, tmp_path / "c.npz", cond=("M_LED=9", "M_LED=9,C=0.7"), cond_guidance="C=3", **kw)
    c = np.load(tmp_path / "c.npz")
    assert np.allclose(a["gen_lattice"], c["gen_lattice"])
    assert np.allclose(a["cond_mled_lattice"], c["cond_mled_lattice"])
    assert not np.allclose(a["cond_joint_lattice"], c["cond_joint_lattice"])
    assert json.loads(str(c["meta_json"]))["cond_guidance"] == "C=3"


TINY_NUM_ATOMS = [2, 3, 2, 1, 2]
CSP_KEYS = ("csp_z", "csp_frac", "csp_lattice", "csp_num_atoms")


def _tiny_csp_eval_args(tmp_path) -> list[str]:
    """`gpu_eval` arguments for CSP on five small test compositions (`d.pt`), 3 steps on the CPU, chunks of 2."""
    from qadb.models.generator import DEFAULT_CHECKPOINT

    if not DEFAULT_CHECKPOINT.exists():
        pytest.skip("default checkpoint not present")
    data = tmp_path / "d.pt"
    torch.save({"test": {"num_atoms": torch.tensor(TINY_NUM_ATOMS),
                         "types": torch.tensor([11, 17, 12, 8, 8, 3, 9, 29, 14, 6])}}, data)
    return ["--ckpt", str(DEFAULT_CHECKPOINT), "--data", str(data), "--steps", "3", "--no-corrector",
            "--device", "cpu", "--chunk", "2"]


def _same_csp_samples(a, b) -> bool:
    import numpy as np

    return all(np.array_equal(a[k], b[k]) for k in CSP_KEYS)


def test_gpu_eval_csp_resume_equals_one_run_and_refuses_another_run(tmp_path, capsys):
    """A CSP run cut short and resumed (`--csp-resume`) gives the same samples as one uninterrupted run (the seeds
    follow the chunks); a file of other settings or other compositions is refused in one line, nothing written."""
    import numpy as np

    from qadb.models.generator.gpu_eval import main

    base = _tiny_csp_eval_args(tmp_path)
    data = tmp_path / "d.pt"
    main([*base, "--csp-n", "5", "--out", str(tmp_path / "whole.npz")])
    main([*base, "--csp-n", "4", "--out", str(tmp_path / "part.npz")])
    main([*base, "--csp-n", "5", "--csp-resume", str(tmp_path / "part.npz"), "--out", str(tmp_path / "joined.npz")])
    whole, joined = np.load(tmp_path / "whole.npz"), np.load(tmp_path / "joined.npz")
    assert _same_csp_samples(whole, joined)
    assert "csp_s_resumed" in json.loads(str(joined["meta_json"]))["timing"]
    capsys.readouterr()
    for extra, why in ((["--steps", "4"], "steps"), (["--chunk", "3"], "chunk")):
        with pytest.raises(SystemExit) as e:
            main([*base, "--csp-n", "5", "--csp-resume", str(tmp_path / "part.npz"), "--out",
                  str(tmp_path / "bad.npz"), *extra])
        assert why in str(e.value) and str(e.value).count("\n") == 0
    torch.save({"test": {"num_atoms": torch.tensor(TINY_NUM_ATOMS),
                         "types": torch.tensor([11, 17, 12, 8, 9, 3, 9, 29, 14, 6])}}, data)
    with pytest.raises(SystemExit, match="test compositions"):
        main([*base, "--csp-n", "5", "--csp-resume", str(tmp_path / "part.npz"), "--out", str(tmp_path / "bad.npz")])
    assert not (tmp_path / "bad.npz").exists()


def test_gpu_eval_killed_mid_csp_leaves_a_file_that_resumes_to_the_whole_run(tmp_path, monkeypatch):
    """A device call stopped by its time limit must not lose the chunks already drawn: `out` is rewritten after
    each CSP chunk and `--csp-resume` continues it to the samples of one uninterrupted run. The kill is simulated
    by making the third chunk's sampling raise (a signal cannot be aimed at one chunk of a test run)."""
    import numpy as np

    from qadb.models.generator import gpu_eval

    base = [*_tiny_csp_eval_args(tmp_path), "--csp-n", "5"]
    gpu_eval.main([*base, "--out", str(tmp_path / "whole.npz")])
    real, calls = gpu_eval.sample_tensors, []

    def killed_at_third_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(gpu_eval, "sample_tensors", killed_at_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        gpu_eval.main([*base, "--out", str(tmp_path / "cut.npz")])
    monkeypatch.setattr(gpu_eval, "sample_tensors", real)
    cut = np.load(tmp_path / "cut.npz")
    assert len(cut["csp_num_atoms"]) == 4 and not list(tmp_path.glob("*.tmp"))
    gpu_eval.main([*base, "--csp-resume", str(tmp_path / "cut.npz"), "--out", str(tmp_path / "cut.npz")])
    # resuming a file that is already whole draws nothing and writes the same samples
    gpu_eval.main([*base, "--csp-resume", str(tmp_path / "cut.npz"), "--out", str(tmp_path / "again.npz")])
    whole = np.load(tmp_path / "whole.npz")
    for name in ("cut.npz", "again.npz"):
        assert _same_csp_samples(whole, np.load(tmp_path / name)), name


def test_gpu_eval_cond_without_gen_n_is_a_usage_error(tmp_path, capsys):
    """--cond samples --gen-n structures per condition; without --gen-n it used to crash inside torch."""
    from qadb.models.generator.gpu_eval import main

    with pytest.raises(SystemExit) as e:
        main(["--ckpt", "x.pt", "--data", "d.pt", "--out", str(tmp_path / "o.npz"), "--cfg-n", "10",
              "--cond", "M_LED=9,C=0.7"])
    assert e.value.code == 2 and "--gen-n" in capsys.readouterr().err
    assert not (tmp_path / "o.npz").exists()


def test_lr_schedule_cosine():
    from qadb.models.generator.train import lr_at

    cfg = {**DEFAULTS, "lr": 1e-3, "lr_min": 1e-5, "lr_decay": "cosine", "warmup": 10}
    assert lr_at(cfg, 1000, 0.0) == pytest.approx(1e-3)
    assert lr_at(cfg, 1000, 0.5) == pytest.approx(0.5 * (1e-3 + 1e-5))
    assert lr_at(cfg, 1000, 1.0) == pytest.approx(1e-5)
    assert lr_at(cfg, 0, 0.0) == pytest.approx(1e-4)  # warm-up
    assert lr_at({**cfg, "lr_decay": "none"}, 1000, 0.9) == pytest.approx(1e-3)


def test_sampler_n_corrector_and_defaults(sched):
    from qadb.models.generator.api import sampler_defaults
    from qadb.models.generator.checkpoint import LoadedGenerator
    from qadb.models.generator.sampler import sample_tensors

    model = CrystalDenoiser(hidden=16, layers=1, n_freq=2).eval()
    na, types = torch.tensor([2, 3]), torch.tensor([11, 17, 8, 8, 12])
    outs = [sample_tensors(model, sched, na, types, steps=5, n_corrector=k, seed=0) for k in (0, 2)]
    for z, f, lat in outs:
        assert f.shape == (5, 3) and lat.shape == (2, 3, 3) and torch.isfinite(lat).all()
        assert ((f >= 0) & (f < 1)).all()
    assert not torch.allclose(outs[0][1], outs[1][1])
    # coord_noise 0 without the corrector: the predictor alone, so the coordinates follow from the start and the
    # lattice noise; a different noise scale changes them, the same one reproduces them
    csp = [sample_tensors(model, sched, na, types, steps=5, corrector=False, coord_noise=c, seed=0)
           for c in (0.0, 0.0, 1.0)]
    assert torch.equal(csp[0][1], csp[1][1]) and not torch.allclose(csp[0][1], csp[2][1])
    # lattice_noise scales the reverse lattice steps' noise in the same way
    lats = [sample_tensors(model, sched, na, types, steps=5, lattice_noise=s, seed=0)[2] for s in (0.5, 0.5, 1.0)]
    assert torch.equal(lats[0], lats[1]) and not torch.allclose(lats[0], lats[2])
    gens = [sample_tensors(model, sched, na, None, steps=5, type_noise=tn, seed=0) for tn in (1.0, 0.0)]
    assert all(z.shape == (5,) and int(z.min()) >= 1 for z, _, _ in gens)
    g = LoadedGenerator(model=model, schedules=sched, sampler={"steps": 7, "corrector": False})
    assert sampler_defaults(g) == {"steps": 7, "step_lr": 1e-5, "corrector": False, "type_noise": 1.0,
                                   "coord_noise": 1.0}
    per_mode = LoadedGenerator(model=model, schedules=sched, sampler={"coord_noise_csp": 0.0})
    assert sampler_defaults(per_mode, mode="csp")["coord_noise"] == 0.0
    assert sampler_defaults(per_mode, mode="gen")["coord_noise"] == 1.0
    assert sampler_defaults(per_mode, coord_noise=0.5, mode="csp")["coord_noise"] == 0.5
    fewer = LoadedGenerator(model=model, schedules=sched, sampler={"steps": 100, "steps_csp": 50})  # docs, Left to do 3d
    assert [sampler_defaults(fewer, mode=m)["steps"] for m in ("csp", "gen")] == [50, 100]
    corr = LoadedGenerator(model=model, schedules=sched, sampler={"corrector": False, "corrector_gen": True})
    assert sampler_defaults(corr, mode="gen")["corrector"] and not sampler_defaults(corr, mode="csp")["corrector"]
    assert not sampler_defaults(corr, corrector=False, mode="gen")["corrector"]
    assert sampler_defaults(g, steps=3, corrector=True)["steps"] == 3
    assert sampler_defaults(LoadedGenerator(model=model, schedules=sched))["steps"] == sched.T


def test_ab_initio_types_stay_within_the_training_elements(sched):
    """An untrained random model emits any of the 100 types; with `elements` only those (Cf and its like, which no
    MLIP takes, came out of the inverse campaign's samples before this)."""
    from qadb.models.generator.sampler import sample_tensors

    model = CrystalDenoiser(hidden=16, layers=1, n_freq=2).eval()
    na = torch.tensor([4, 5, 6, 3])
    free, _, _ = sample_tensors(model, sched, na, None, steps=5, seed=2)
    assert not set(free.tolist()) <= {8, 14, 26}  # the check below could fail
    kept, _, _ = sample_tensors(model, sched, na, None, steps=5, seed=2, elements=torch.tensor([8, 14, 26]))
    assert set(kept.tolist()) <= {8, 14, 26}
    chem = torch.zeros(4, 100)
    chem[:, [2, 7]] = 1.0  # Li-O: an explicit chemical system wins over the element list
    z, _, _ = sample_tensors(model, sched, na, None, steps=5, seed=2, chemsys=chem, elements=torch.tensor([14]))
    assert set(z.tolist()) <= {3, 8}


def test_default_checkpoint_knows_its_training_elements():
    from qadb.models.generator import DEFAULT_CHECKPOINT, load_checkpoint

    if not DEFAULT_CHECKPOINT.exists():
        pytest.skip("default checkpoint not present")
    elements = set(load_checkpoint(DEFAULT_CHECKPOINT).elements.tolist())
    assert {1, 3, 8, 26, 94} <= elements and not elements & {18, 96, 97, 98, 99, 100}  # Ar and Cm-Fm: none in training


def _qadb(*args, env_home):
    import os

    env = {**os.environ, "QADB_HOME": str(env_home)}
    env.pop("QADB_MONGO_URI", None)
    return subprocess.run([sys.executable, "-m", "qadb.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_cli_sample_stores_with_provenance(tmp_path, embedded_uri):
    pytest.importorskip("pymatgen")
    from qadb.models.generator import DEFAULT_CHECKPOINT

    if not DEFAULT_CHECKPOINT.exists():
        pytest.skip("default checkpoint not present")
    r = _qadb("--store", embedded_uri, "sample", "-n", "3", "--steps", "4", "--seed", "2", "--condition", "C=0.7",
              "--guidance", "C=2", "--chemsys", "Li-O", "-o", str(tmp_path / "s.json"), env_home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "stored" in r.stdout and (tmp_path / "s.json").exists()
    from qadb.store import connect
    from qadb.store.documents import Activity, CheckpointDoc, StructureDoc

    with connect(embedded_uri):
        docs = list(StructureDoc.objects(origin__kind="generated"))
        assert docs, r.stdout
        ck = CheckpointDoc.objects.first()
        assert ck.kind == "generator" and ck.sha256
        for d in docs:
            assert set(d.elements) <= {"Li", "O"}
            assert d.origin.checkpoint == ck.id
            assert d.origin.settings["steps"] == 4 and d.origin.settings["conditions"] == {"compactness": 0.7}
            assert d.origin.settings["guidance"] == {"compactness": 2.0}
            act = Activity.objects(id=d.origin.activity).first()
            assert act.kind == "sample" and act.status == "completed" and act.inputs[0].id == ck.id


def test_cli_sample_registers_the_checkpoint_of_its_mode(tmp_path, embedded_uri):
    """Without --checkpoint, `qadb sample` takes the committed checkpoint of its mode and records that one."""
    pytest.importorskip("pymatgen")
    import hashlib

    from qadb.models.generator import CSP_CHECKPOINT, DEFAULT_CHECKPOINT

    def file_sha256(p):
        return hashlib.sha256(p.read_bytes()).hexdigest()

    if not (DEFAULT_CHECKPOINT.exists() and CSP_CHECKPOINT.exists()):
        pytest.skip("default checkpoints not present")
    for args in (["--mode", "csp", "--composition", "Mg2O2"], ["--mode", "gen", "--chemsys", "Mg-O"]):
        r = _qadb("--store", embedded_uri, "sample", "-n", "2", "--steps", "3", *args, env_home=tmp_path)
        assert r.returncode == 0, r.stderr
    from qadb.store import connect
    from qadb.store.documents import CheckpointDoc, StructureDoc

    with connect(embedded_uri):
        by_sha = {c.sha256: c.id for c in CheckpointDoc.objects(kind="generator")}
        assert set(by_sha) == {file_sha256(CSP_CHECKPOINT), file_sha256(DEFAULT_CHECKPOINT)}
        for d in StructureDoc.objects(origin__kind="generated"):
            want = CSP_CHECKPOINT if d.origin.settings["mode"] == "csp" else DEFAULT_CHECKPOINT
            assert d.origin.checkpoint == by_sha[file_sha256(want)]


@pytest.mark.slow
def test_cli_csp_candidates_ranked_by_mlip(tmp_path, embedded_uri):
    """`--candidates`: the kept cells are the lowest-energy ones (re-evaluated here with the same MLIP)."""
    pytest.importorskip("chgnet")
    from pymatgen.core import Structure

    from qadb.drivers import load_mlip

    r = _qadb("--store", embedded_uri, "sample", "--mode", "csp", "--composition", "Na2Cl2", "-n", "2",
              "--candidates", "6", "--steps", "20", "--seed", "1", "-o", str(tmp_path / "s.json"), env_home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "ranked 6 candidates by MLIP:CHGNet@0.3.0" in r.stdout, r.stdout
    kept = [Structure.from_dict(d) for d in json.loads((tmp_path / "s.json").read_text())]
    assert len(kept) == 2 and all(s.composition.reduced_formula == "NaCl" and len(s) == 4 for s in kept)
    e = load_mlip("chgnet").energies_per_atom(kept)
    assert e[0] <= e[1] + 1e-6
    from qadb.store import connect
    from qadb.store.documents import StructureDoc

    with connect(embedded_uri):
        docs = list(StructureDoc.objects(origin__kind="generated"))
    assert docs and all(d.origin.settings["candidates"] == 6 for d in docs)
    ranking = docs[0].origin.settings["ranking"]
    assert ranking["mlip"] == "MLIP:CHGNet@0.3.0"
    assert ranking["energy_per_atom_eV"] == pytest.approx(sorted(e.tolist()), abs=1e-4)


@pytest.mark.parametrize("args, msg", [
    (["--condition", "C0.7"], "malformed condition"),
    (["--condition", "Q=1"], "unknown condition"),
    (["--condition", "C=abc"], "not a number"),
    (["--chemsys", "Li-Xx"], "unknown element"),
    (["--mode", "csp", "--composition", "Xx2O"], "unknown element 'Xx' in composition"),
    (["--mode", "csp"], "needs --composition"),
    (["--guidance", "C=2"], "without a --condition"),
    (["--checkpoint", "CORRUPT"], "corrupt"),
    (["--candidates", "4"], "needs --mode csp"),
    (["--mode", "csp", "--composition", "NaCl", "-n", "3", "--candidates", "2"], "fewer than -n 3"),
    (["--prior", "store"], "--prior gives prototype guesses for one composition: it needs --mode csp"),
    (["--mode", "csp", "--composition", "NaCl", "--noise-from", "5"], "--noise-from applies to --prior store"),
    (["--mode", "csp", "--composition", "NaCl", "--prior", "store", "--noise-from", "5000"],
     "--noise-from 5000 is beyond the checkpoint's last diffusion step (1000)"),
])
def test_cli_sample_bad_input_one_line(tmp_path, monkeypatch, capsys, args, msg):
    pytest.importorskip("pymatgen")
    from qadb.cli import main

    monkeypatch.setenv("QADB_HOME", str(tmp_path))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    args = [str(bad) if a == "CORRUPT" else a for a in args]
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--no-store", "--steps", "2", *(["-n", "1"] if "-n" not in args else []), *args])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and msg in lines[0], err


@pytest.mark.parametrize("content, msg", [
    (b"not a torch file", "is not a generator tensor file"),
    ("NOT_A_BLOB", "no 'train' crystals or 'meta_json'"),
])
def test_cli_train_generator_bad_data_one_line(tmp_path, monkeypatch, capsys, content, msg):
    from qadb.cli import main

    monkeypatch.setenv("QADB_HOME", str(tmp_path))
    data = tmp_path / "d.pt"
    if content == "NOT_A_BLOB":
        torch.save({"a": torch.zeros(2)}, data)
    else:
        data.write_bytes(content)
    with pytest.raises(SystemExit) as exc:
        main(["train", "generator", "--no-register", "--data", str(data), "--state", str(tmp_path / "st.pt"),
              "--checkpoint", str(tmp_path / "g.pt"), "--device", "cpu"])
    assert exc.value.code != 0
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and msg in lines[0], lines
    assert not (tmp_path / "st.pt").exists() and not (tmp_path / "g.pt").exists()


def test_cli_train_generator_smoke_from_store(tmp_path, embedded_uri):
    pytest.importorskip("pymatgen")
    from qadb.models.generator import DEFAULT_CHECKPOINT

    if not DEFAULT_CHECKPOINT.exists():
        pytest.skip("default checkpoint not present")
    # seed the store with a few generated-looking structures ingested as files (generated ones are skipped)
    from pymatgen.core import Lattice, Structure

    paths = []
    for i, (a, sp) in enumerate([(4.2, ("Na", "Cl")), (4.0, ("Mg", "O")), (3.6, ("Li", "F")), (4.3, ("K", "Br"))]):
        s = Structure(Lattice.cubic(a + 0.1 * i), list(sp), [[0, 0, 0], [0.5, 0.5, 0.5]])
        p = tmp_path / f"s{i}.cif"
        s.to(filename=str(p))
        paths.append(str(p))
    r = _qadb("--store", embedded_uri, "ingest", *paths, env_home=tmp_path)
    assert r.returncode == 0, r.stderr
    args = ["--store", embedded_uri, "train", "generator", "--from-store", "--smoke", "--max-steps", "3",
            "--data", str(tmp_path / "d.pt"), "--state", str(tmp_path / "st.pt"), "--checkpoint",
            str(tmp_path / "g.pt"), "--log", str(tmp_path / "log.jsonl"), "--device", "cpu"]
    r = _qadb(*args, env_home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "registered checkpoint generator@" in r.stdout
    r2 = _qadb(*args, env_home=tmp_path)  # resumes, registers the new checkpoint with the old one as parent
    assert r2.returncode == 0, r2.stderr
    assert "parent generator@" in r2.stdout
    assert load_checkpoint(tmp_path / "g.pt").meta["step"] == 6


def test_grow_fourier_preserves_the_function():
    from qadb.models.generator.network import grow_fourier

    torch.manual_seed(1)
    small = CrystalDenoiser(hidden=32, layers=2, n_freq=4).double().eval()
    big = CrystalDenoiser(hidden=32, layers=2, n_freq=9).double().eval()
    big.load_state_dict(grow_fourier(small.state_dict(), 4, 9))
    na, types, frac, lat, props, pmask, chemsys, mode = _batch()
    args = (na, types, frac.double(), lat.double(), props.double(), pmask, chemsys.double(), mode)
    for a, b in zip(_run(small, *args), _run(big, *args)):
        assert torch.allclose(a, b, atol=1e-12)
    # the grown inputs are live: their gradient is not zero, so training can use them
    big.train()
    _run(big, *args)[1].pow(2).sum().backward()
    assert big.layers[0].w_geo.weight.grad[:, 4:9].abs().sum() > 0
    with pytest.raises(ValueError, match="shrink"):
        grow_fourier(small.state_dict(), 4, 2)


def test_sampled_left_handed_cells_become_right_handed_with_the_same_atoms():
    """The denoiser sees L only through LᵀL, so sampled cells can be left-handed; CHGNet's stress has the wrong
    sign on those, so `to_structures` must return the same crystal on a right-handed cell."""
    import numpy as np

    from qadb.models.generator.api import to_structures

    lat = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 4.2, 0.0], [0.3, 0.0, -4.5]],
                        [[4.0, 0.0, 0.0], [0.0, 4.2, 0.0], [0.3, 0.0, 4.5]]], dtype=torch.float64)
    frac = torch.tensor([[0.1, 0.2, 0.3], [0.6, 0.7, 0.8], [0.1, 0.2, 0.3], [0.6, 0.7, 0.8]], dtype=torch.float64)
    left, right = to_structures(torch.tensor([11, 17, 11, 17]), frac, lat, torch.tensor([2, 2]))
    assert left.lattice.volume > 0 and np.linalg.det(left.lattice.matrix) > 0
    assert np.linalg.det(right.lattice.matrix) > 0
    cart_in = frac[:2].numpy() @ lat[0].numpy()
    # the same points in space, up to a lattice translation
    d = np.linalg.solve(left.lattice.matrix.T, (left.cart_coords - cart_in).T).T
    assert np.allclose(d, np.round(d), atol=1e-9)
    assert np.allclose(right.cart_coords, frac[2:].numpy() @ lat[1].numpy())


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    model = CrystalDenoiser(hidden=32, layers=2, n_freq=4, dropout=0.5).double()
    na, types, frac, lat, props, pmask, chemsys, mode = _batch()
    args = (na, types, frac.double(), lat.double(), props.double(), pmask, chemsys.double(), mode)
    model.train()
    assert not torch.allclose(_run(model, *args)[1], _run(model, *args)[1])
    model.eval()
    assert torch.equal(_run(model, *args)[1], _run(model, *args)[1])
    assert model.config["dropout"] == 0.5


def test_export_from_a_state_written_before_dropout_existed(tmp_path):
    from qadb.models.generator.train import export_checkpoint

    state = Path(__file__).resolve().parents[2] / "qadb/data/checkpoints/generator_train_state.pt"
    if not state.exists():
        pytest.skip("committed training state not present")
    raw = torch.load(state, map_location="cpu", weights_only=True)
    # the committed state (r14) has the key since session 15: write the same state as an older file would be
    cfg = json.loads(raw["config_json"])
    cfg.pop("dropout", None)
    raw["config_json"] = json.dumps(cfg)
    old = tmp_path / "old_state.pt"
    torch.save(raw, old)
    export_checkpoint(str(old), str(tmp_path / "g.pt"))
    g = load_checkpoint(tmp_path / "g.pt")
    assert g.model.config["dropout"] == 0.0
    ema = raw["ema"]
    assert all(torch.equal(v.float(), ema[k].float()) for k, v in g.model.state_dict().items())


@pytest.mark.parametrize("name, hidden, amp, ckpt_dtype", [
    ("generator_scratch_state.pt", 256, "float32", "float32"),  # the run started in session 17 (generator_csp.pt)
    ("generator_w384_state.pt", 384, "bfloat16", "bfloat16"),  # the hidden-384 run started in session 27
])
def test_the_committed_from_scratch_states_export_their_ema_weights_with_dropout(tmp_path, name, hidden, amp,
                                                                                 ckpt_dtype):
    """The committed train states of the from-scratch runs are slim (EMA weights, no raw weights or Adam moments,
    under the 50 MB state limit): config with dropout 0.1, width and training precision, the step, and EMA weights
    that export into a loadable checkpoint under the 20 MB checkpoint limit (width 384 only in bf16)."""
    from qadb.models.generator.train import STATE_KIND, export_checkpoint, read_raw

    state = Path(__file__).resolve().parents[2] / "train_states" / name
    if not state.exists():
        pytest.skip(f"committed state {name} not present")
    assert state.stat().st_size < 50e6
    raw = read_raw(str(state), STATE_KIND)
    cfg = {"amp": "float32", **json.loads(raw["config_json"])}  # states before session 27 have no "amp"
    assert cfg["dropout"] == 0.1 and cfg["hidden"] == hidden and cfg["amp"] == amp and raw["step"] > 0
    assert "opt" not in raw and "model" not in raw
    export_checkpoint(str(state), str(tmp_path / "g.pt"), dtype=ckpt_dtype)
    assert (tmp_path / "g.pt").stat().st_size < 20e6
    g = load_checkpoint(tmp_path / "g.pt")
    assert g.model.config["dropout"] == 0.1
    assert all(torch.equal(v.float(), raw["ema"][k].to(getattr(torch, ckpt_dtype)).float())
               for k, v in g.model.state_dict().items())


def _tiny_training_run(tmp_path) -> dict:
    """A training tensor file of four rock-salt cells and `train` settings for a 2-step CPU run on it."""
    pytest.importorskip("pymatgen")
    from pymatgen.core import Lattice, Structure

    from qadb.models.generator.prepare import atomic_radii, pack

    radii = atomic_radii()
    structs = [Structure(Lattice.cubic(a), sp, [[0, 0, 0], [0.5, 0.5, 0.5]])
               for a, sp in [(4.2, ["Na", "Cl"]), (4.0, ["Mg", "O"]), (3.6, ["Li", "F"]), (4.3, ["K", "Br"])]]
    records = [dict(types=torch.tensor(s.atomic_numbers).numpy(), frac=s.frac_coords, lattice=s.lattice.matrix,
                    props={}, material_id=None, source="test", formula=s.composition.reduced_formula) for s in structs]
    tr = {**pack(records, radii), "radii": torch.from_numpy(radii)}
    torch.save({"train": tr, "test": tr, "meta_json": json.dumps({"train_hash": "t", "counts": {}})}, tmp_path / "d.pt")
    return dict(data=str(tmp_path / "d.pt"), state=str(tmp_path / "st.pt"), max_steps=2, minutes=5, device="cpu",
                hidden=16, layers=1, n_freq=2, batch_size=2, warmup=10, val_frac=0.25)


def test_a_slim_state_resumes_from_its_ema_weights_with_a_fresh_warm_up(tmp_path):
    from qadb.models.generator.train import STATE_KIND, export_checkpoint, read_raw, slim_state, train

    kw = _tiny_training_run(tmp_path)
    train(**kw)
    assert slim_state(str(tmp_path / "st.pt"), str(tmp_path / "slim.pt")) == 2
    slim = read_raw(str(tmp_path / "slim.pt"), STATE_KIND)
    assert "opt" not in slim and "model" not in slim and (tmp_path / "slim.pt").stat().st_size < (
        tmp_path / "st.pt").stat().st_size / 2
    rec = train(**{**kw, "state": str(tmp_path / "slim.pt"), "ckpt": str(tmp_path / "ck.pt"), "run_name": "r2"})
    assert (rec["step_start"], rec["step_end"]) == (2, 4)
    # an export of the state carries the run and its validation loss, as the training-time checkpoint does
    export_checkpoint(str(tmp_path / "slim.pt"), str(tmp_path / "exported.pt"))
    assert load_checkpoint(tmp_path / "exported.pt").meta == load_checkpoint(tmp_path / "ck.pt").meta
    assert load_checkpoint(tmp_path / "exported.pt").meta["run"] == "r2"
    full = read_raw(str(tmp_path / "slim.pt"), STATE_KIND)  # written back whole: raw weights and Adam moments again
    assert {"model", "opt"} <= set(full) and full["step"] == 4


def test_a_bf16_slim_state_is_half_the_size_and_resumes_in_fp32(tmp_path):
    from qadb.models.generator.train import STATE_KIND, read_raw, slim_state, train

    kw = _tiny_training_run(tmp_path)
    train(**{**kw, "hidden": 64})
    slim_state(str(tmp_path / "st.pt"), str(tmp_path / "s32.pt"))
    slim_state(str(tmp_path / "st.pt"), str(tmp_path / "s16.pt"), dtype="bfloat16")
    e32, e16 = (read_raw(str(tmp_path / f), STATE_KIND)["ema"] for f in ("s32.pt", "s16.pt"))
    assert all(e16[k].dtype == torch.bfloat16 and torch.equal(e16[k], v.to(torch.bfloat16)) for k, v in e32.items())
    assert (tmp_path / "s16.pt").stat().st_size < 0.6 * (tmp_path / "s32.pt").stat().st_size
    rec = train(**{**kw, "hidden": 64, "state": str(tmp_path / "s16.pt")})
    assert rec["step_end"] == 4
    full = read_raw(str(tmp_path / "s16.pt"), STATE_KIND)
    assert all(v.dtype == torch.float32 for v in full["ema"].values() if v.is_floating_point())


def test_train_cli_slims_and_exports_without_a_state_and_names_missing_or_bad_arguments(tmp_path, capsys):
    """`--slim` needs only its two paths and `--export` only `--data` (the elements it may emit); a malformed
    `--sampler` or a training call without `--state` is a usage error in one line, and nothing is written."""
    from qadb.models.generator.train import main, train

    kw = _tiny_training_run(tmp_path)
    train(**kw)
    main(["--slim", kw["state"], str(tmp_path / "slim.pt")])
    main(["--data", kw["data"], "--export", str(tmp_path / "slim.pt"), str(tmp_path / "ck.pt"),
          "--sampler", '{"steps": 7}'])
    assert load_checkpoint(tmp_path / "ck.pt").sampler["steps"] == 7
    for argv, why in ((["--data", kw["data"], "--export", kw["state"], str(tmp_path / "bad.pt"), "--sampler", "{x"],
                       "--sampler is not valid JSON"),
                      (["--export", kw["state"], str(tmp_path / "bad.pt")], "--data is required"),
                      (["--data", kw["data"]], "--state is required")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and why in capsys.readouterr().err
    assert not (tmp_path / "bad.pt").exists()


def test_gradients_clipped_by_norm_or_by_value():
    """"norm" rescales the whole gradient to the bound; "value" clamps each element and leaves small ones as they
    are (DiffCSP's choice). Both return the norm before clipping, so an inf gradient is still seen and skipped."""
    from qadb.models.generator.train import clip_gradients

    lin = torch.nn.Linear(2, 1, bias=False)

    def clipped(grad, mode):
        lin.weight.grad = torch.tensor([grad])
        return clip_gradients(lin, {"grad_clip": 0.5, "grad_clip_mode": mode}), lin.weight.grad[0].tolist()

    norm, g = clipped([3.0, -0.2], "norm")
    assert norm.item() == pytest.approx(math.hypot(3.0, 0.2)) and math.hypot(*g) == pytest.approx(0.5)
    norm, g = clipped([3.0, -0.2], "value")
    assert norm.item() == pytest.approx(math.hypot(3.0, 0.2)) and g == pytest.approx([0.5, -0.2])
    norm, g = clipped([float("inf"), 0.1], "value")
    assert not math.isfinite(norm.item()) and g == pytest.approx([0.5, 0.1])


def test_train_rejects_an_unknown_clip_mode_before_writing_anything(tmp_path):
    from qadb.models.generator.train import train

    kw = _tiny_training_run(tmp_path)
    with pytest.raises(InputError, match="grad_clip_mode 'bogus'"):
        train(**kw, grad_clip_mode="bogus")
    assert not (tmp_path / "st.pt").exists()
    rec = train(**kw, grad_clip_mode="value", grad_clip=0.5)
    assert rec["config"]["grad_clip_mode"] == "value" and rec["step_end"] == 2
    # the module's command line (what runs on the GPU machine) says it in one line and exits non-zero
    r = subprocess.run([sys.executable, "-m", "qadb.models.generator.train", "--data", kw["data"], "--state",
                        str(tmp_path / "st2.pt"), "--max-steps", "1", "--device", "cpu", "--grad-clip-mode", "bogus"],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: grad_clip_mode 'bogus'"), r.stderr
    assert not (tmp_path / "st2.pt").exists()


def test_bf16_autocast_trains_in_mixed_precision_and_keeps_fp32_weights(tmp_path):
    """--amp bfloat16 runs the forward pass in bf16 (its loss differs from the fp32 one at the same seed), keeps the
    weights and the state in fp32, is remembered by a resumed state, and an unknown precision writes nothing."""
    from qadb.models.generator.train import STATE_KIND, autocast, read_raw, train

    kw = _tiny_training_run(tmp_path)
    with pytest.raises(InputError, match="amp 'float16'"):
        train(**kw, amp="float16")
    assert not (tmp_path / "st.pt").exists()
    r16 = train(**kw, amp="bfloat16")
    st = read_raw(kw["state"], STATE_KIND)
    assert json.loads(st["config_json"])["amp"] == "bfloat16"
    assert all(v.dtype == torch.float32 for v in st["model"].values() if v.is_floating_point())
    assert train(**kw)["config"]["amp"] == "bfloat16"  # resumed: the state's precision holds
    # the same two steps in fp32 from the same seed end at other weights: bf16 rounding reached the gradients
    train(**{**kw, "state": str(tmp_path / "a16.pt")}, amp="bfloat16")
    r32 = train(**{**kw, "state": str(tmp_path / "a32.pt")})
    assert r16["config"]["amp"] == "bfloat16" and r32["config"]["amp"] == "float32"
    w16, w32 = (read_raw(str(tmp_path / f), STATE_KIND)["model"] for f in ("a16.pt", "a32.pt"))
    assert any(not torch.equal(w16[k], w32[k]) for k in w32)
    lin = torch.nn.Linear(4, 4)
    with autocast(torch.device("cpu"), "bfloat16"):
        assert lin(torch.randn(2, 4)).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "float32"):
        assert lin(torch.randn(2, 4)).dtype == torch.float32


def test_masked_type_process_learns_types_and_samples_categoricals(tmp_path):
    """type_process="mask": hidden types are the zero vector, the type head is trained by cross-entropy (so a tiny
    model fitted on one crystal's types puts them first), and the sampler reveals every atom exactly once."""
    from qadb.models.generator.checkpoint import make_checkpoint
    from qadb.models.generator.sampler import sample_tensors

    msched = Schedules(T=50, type_process="mask")
    torch.manual_seed(0)
    model = CrystalDenoiser(hidden=32, layers=2, n_freq=4)
    na, _, frac, lat, props, _, _, _ = _batch(sizes=(3, 3))
    types = torch.tensor([8, 8, 14, 8, 8, 14])  # SiO2 twice
    b = dict(num_atoms=na, types=types, frac=frac, lattice=lat, props=props, props_raw=props)
    cfg = dict(DEFAULTS, type_process="mask")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss, out = diffusion_loss(model, msched, b, cfg, t_int=torch.tensor([50, 50]), mode=torch.tensor([1, 1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = float(out["type"]) if first is None else first
    assert first > 3.0 and float(out["type"]) < 1.0  # cross-entropy over 100 types starts near ln 100 = 4.6
    model.eval()
    z, f, lat_s = sample_tensors(model, msched, torch.tensor([3, 3, 3]), None, steps=10, seed=0, type_noise=0.0)
    assert set(z.tolist()) <= {8, 14} and torch.isfinite(lat_s).all()
    again, _, _ = sample_tensors(model, msched, torch.tensor([3, 3, 3]), None, steps=10, seed=0, type_noise=0.0)
    assert torch.equal(z, again)
    # the process travels in the checkpoint; older checkpoints (no key) load as gaussian
    ck = make_checkpoint(model.config, {"T": 50, "type_process": "mask"}, model.state_dict(), torch.ones(N_TYPES),
                         torch.ones(21), {}, {})
    torch.save(ck, tmp_path / "m.pt")
    assert load_checkpoint(tmp_path / "m.pt").schedules.type_process == "mask"
    ck["diffusion_config"] = {"T": 50}
    torch.save(ck, tmp_path / "g.pt")
    assert load_checkpoint(tmp_path / "g.pt").schedules.type_process == "gaussian"
    from qadb.errors import InputError
    from qadb.models.generator.train import diffusion_config

    with pytest.raises(InputError, match="type_process 'uniform'"):
        diffusion_config(dict(DEFAULTS, type_process="uniform"))
    ck["diffusion_config"] = {"T": 50, "type_process": "uniform"}
    torch.save(ck, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(tmp_path / "bad.pt")


def test_prototype_counts_and_weighted_draws_favour_rare_prototypes(tmp_path):
    """`prepare --proto-counts` keys a crystal by (sites, anonymous formula, space group): the four rock-salt cells
    share one key, a CsCl-type cell (Pm-3m, not Fm-3m) has its own. With proto_alpha = 1 each prototype is drawn
    equally often, so the lone CsCl cell is drawn about as often as the four rock-salt cells together; alpha 0
    keeps epochs; a negative alpha, or alpha without the counts, is refused before anything is written."""
    from pymatgen.core import Lattice, Structure

    from qadb.models.generator.prepare import atomic_radii, main as prepare_main, pack
    from qadb.models.generator.train import draw_weights, train

    kw = _tiny_training_run(tmp_path)
    blob = torch.load(kw["data"], weights_only=True)
    cscl = Structure(Lattice.cubic(4.1), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # primitive: 2 sites, Pm-3m
    extra = pack([dict(types=torch.tensor(cscl.atomic_numbers).numpy(), frac=cscl.frac_coords,
                       lattice=cscl.lattice.matrix, props={}, material_id=None, source="test", formula="CsCl")],
                 atomic_radii())
    rs = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    rs = rs.get_primitive_structure()
    recs = []
    for i in range(4):  # four rock-salt primitive cells (Fm-3m), lattice parameter varied
        s = rs.copy()
        s.scale_lattice(rs.volume * (1 + 0.05 * i))
        recs.append(dict(types=torch.tensor(s.atomic_numbers).numpy(), frac=s.frac_coords, lattice=s.lattice.matrix,
                         props={}, material_id=None, source="test", formula="NaCl"))
    new = pack(recs, atomic_radii())
    tr = {k: (torch.cat([new[k], extra[k]]) if torch.is_tensor(new[k]) else new[k] + extra[k]) for k in new}
    tr["radii"] = blob["train"]["radii"]
    torch.save({**blob, "train": tr}, tmp_path / "d5.pt")
    prepare_main(["--proto-counts", str(tmp_path / "d5.pt"), "--out", str(tmp_path / "d5pc.pt"), "--workers", "1"])
    out = torch.load(tmp_path / "d5pc.pt", weights_only=True)
    assert out["train"]["proto_count"].tolist() == [4, 4, 4, 4, 1]
    assert json.loads(out["meta_json"])["proto_counts"] == {"symprec": 0.1, "prototypes": 2, "singletons": 1}

    idx = torch.arange(5)
    w = draw_weights(out["train"], idx, 1.0)
    draws = torch.multinomial(w, 20000, replacement=True, generator=torch.Generator().manual_seed(0))
    assert abs(float((draws == 4).float().mean()) - 0.5) < 0.02  # the lone prototype: half of all draws
    assert draw_weights(out["train"], idx, 0.0) is None
    with pytest.raises(InputError, match="proto_alpha must be >= 0"):
        draw_weights(out["train"], idx, -1.0)
    with pytest.raises(InputError, match="--proto-counts"):
        train(**kw, proto_alpha=0.5)  # the file of _tiny_training_run has no counts
    assert not (tmp_path / "st.pt").exists()
    rec = train(**{**kw, "data": str(tmp_path / "d5pc.pt"), "val_frac": 0.2}, proto_alpha=0.5)
    assert rec["config"]["proto_alpha"] == 0.5 and rec["step_end"] == 2


def test_row_sets_train_on_the_mp20_like_part_of_the_pool_and_refuse_the_rest(tmp_path):
    """`rows="mp20_like"` leaves out AFLOW rows and rows whose known E_hull is above 0.08 eV/atom (an unknown E_hull
    is kept), `"mp20_only"` keeps MP-20's own sources; validation rows are not touched. An unknown row set, or one
    that keeps nothing, is refused before a state is written."""
    from qadb.models.generator.conditions import PROPS
    from qadb.models.generator.train import select_rows, train

    nan = float("nan")
    props = torch.full((5, len(PROPS)), nan)
    props[:, PROPS.index("e_hull")] = torch.tensor([0.0, 0.2, nan, 0.05, nan])
    rows = {"source": ["mp20_val", "mpts52_test", "aflow_train", "mp_elasticity", "mp20_train_recon"], "props": props}
    idx = torch.tensor([4, 3, 2, 1])  # row 0 stands for a validation row: never in the training indices
    assert select_rows(rows, idx, "all").tolist() == [4, 3, 2, 1]
    assert select_rows(rows, idx, "mp20_like").tolist() == [4, 3]
    assert select_rows(rows, idx, "mp20_only").tolist() == [4]
    with pytest.raises(InputError, match="rows 'mp20' is not one of all, mp20_like, mp20_only"):
        select_rows(rows, idx, "mp20")
    kw = _tiny_training_run(tmp_path)  # its rows' source is "test"
    with pytest.raises(InputError, match="rows 'mp20_only' keeps no training crystal"):
        train(**kw, rows="mp20_only")
    assert not (tmp_path / "st.pt").exists()
    rec = train(**kw, rows="mp20_like")
    assert rec["config"]["rows"] == "mp20_like" and rec["step_end"] == 2
