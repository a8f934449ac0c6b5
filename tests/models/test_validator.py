"""Fast CPU tests of the MF-ENNP validator: aggregation, divergence, ECE, invariances, gradient stopping, checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qadb.errors import CheckpointError
from qadb.models.validator import uncertainty as U
from qadb.models.validator.net import MFENNP, collate, default_config


def test_aggregate_hand_computed():
    means = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    sigmas = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    e, s = U.aggregate(means, sigmas)
    assert e == pytest.approx(3.0)
    # (1/5) sum sigma^2 = (0.01+0.04+0.09+0.16+0.25)/5 = 0.11; Var = (4+1+0+1+4)/5 = 2
    assert s == pytest.approx(math.sqrt(0.11 + 2.0))


def test_aggregate_vectorised_and_identical_members():
    means = np.array([[-1.0, 0.5]] * 5)
    sigmas = np.array([[0.2, 0.3]] * 5)
    e, s = U.aggregate(means, sigmas)
    np.testing.assert_allclose(e, [-1.0, 0.5])
    np.testing.assert_allclose(s, [0.2, 0.3])


def test_divergence_formulas():
    d_abs, d_rel, d_sgn = U.divergence([-1.0, -0.5], [-1.2, -0.3], [0.1, 0.4])
    np.testing.assert_allclose(d_abs, [0.2, 0.2])
    np.testing.assert_allclose(d_rel, [2.0, 0.5])
    np.testing.assert_allclose(d_sgn, [0.2, -0.2])


def test_ece_calibrated_vs_miscalibrated():
    rng = np.random.default_rng(0)
    n = 20000
    mu = rng.normal(size=n)
    sigma = rng.uniform(0.1, 1.0, size=n)
    y = mu + sigma * rng.normal(size=n)
    assert U.ece(y, mu, sigma) < 0.01
    assert U.ece(y, mu, 0.5 * sigma) > 0.15  # over-confident
    assert U.ece(y, mu, 3.0 * sigma) > 0.15  # under-confident
    assert U.fit_sigma_scale(y, mu, 0.5 * sigma) == pytest.approx(2.0, rel=0.05)


def test_ece_hand_computed():
    # all residuals zero: every interval covers everything -> coverage 1 at each level
    levels = U.ECE_LEVELS
    assert U.ece([0.0, 0.0], [0.0, 0.0], [1.0, 1.0]) == pytest.approx(float(np.mean(1 - levels)))


def _toy_structure():
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice([[4.1, 0.2, 0.0], [0.1, 3.9, 0.3], [0.0, 0.4, 4.3]]),
                     ["Na", "Cl", "Cl", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.1, 0.6, 0.3], [0.7, 0.2, 0.8]])


def _energies(model, structure):
    from qadb.models.validator.featurize import featurize

    g = featurize(structure)
    with torch.no_grad():
        mu, var = model(collate([g], [0]))
    return mu.numpy()[:, 0], var.numpy()[:, 0]  # (members, levels)


def _model(levels=3, stop_grad=True, members=2, seed=0, trunk_from_root=False):
    torch.manual_seed(seed)
    cfg = default_config([f"l{i}" for i in range(levels)], [-1] + list(range(levels - 1)))
    cfg.update(stop_grad=stop_grad, n_members=members, trunk_from_root=trunk_from_root, n_features=16, hidden=8)
    m = MFENNP(cfg)
    with torch.no_grad():  # make heads non-trivial
        m.head_w2.normal_(0, 0.3)
        m.fid_gamma.normal_(0, 0.5)
    return m.eval()


def test_rotation_translation_permutation_invariance():
    from pymatgen.core import Lattice, Structure
    from scipy.spatial.transform import Rotation

    model = _model()
    s = _toy_structure()
    ref_mu, ref_var = _energies(model, s)
    R = Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).as_matrix()
    rot = Structure(Lattice(s.lattice.matrix @ R.T), s.species, s.cart_coords @ R.T, coords_are_cartesian=True)
    trans = s.copy()
    trans.translate_sites(list(range(len(trans))), [0.13, 0.27, -0.41], frac_coords=True)
    perm_idx = [2, 0, 3, 1]
    perm = Structure(s.lattice, [s.species[i] for i in perm_idx], [s.frac_coords[i] for i in perm_idx])
    for other in (rot, trans, perm):
        mu, var = _energies(model, other)
        np.testing.assert_allclose(mu, ref_mu, atol=1e-5)
        np.testing.assert_allclose(var, ref_var, atol=1e-6)


def test_gradient_stopping_low_loss_leaves_high_head_untouched():
    model = _model(levels=3).train()
    from qadb.models.validator.featurize import featurize

    b = collate([featurize(_toy_structure())], [0])
    mu, var = model(b)
    (mu[..., 0] ** 2 + torch.log(var[..., 0])).sum().backward()  # low-fidelity (root) loss
    for p in model.level_parameters(2):
        assert p.grad is not None
        assert torch.count_nonzero(p.grad[:, 2]) == 0, "low-fidelity loss reached a high-fidelity head"
        assert torch.count_nonzero(p.grad[:, 1]) == 0
    assert model.embed.grad.abs().sum() > 0  # the shared trunk does learn from low fidelity

    model.zero_grad()
    mu, var = model(b)
    (mu[..., 2] ** 2).sum().backward()  # high-fidelity loss does not move the low-fidelity heads either
    for p in model.level_parameters(0):
        assert torch.count_nonzero(p.grad[:, 0]) == 0
        assert torch.count_nonzero(p.grad[:, 1]) == 0
    assert model.elem_ref.grad is None or torch.count_nonzero(model.elem_ref.grad) == 0


def test_members_are_independent():
    """The stacked ensemble is M separate networks: member 0's loss leaves member 1's weights alone,
    and each member equals a 1-member model built from its slice of the weights."""
    from qadb.models.validator.featurize import featurize

    model = _model(levels=3, members=3).train()
    b = collate([featurize(_toy_structure())], [0])
    mu, var = model(b)
    (mu[0] ** 2).sum().backward()
    for p in model.parameters():
        if p.grad is None:
            continue
        g = p.grad.movedim(model.member_axis(p), 0)
        assert torch.count_nonzero(g[1:]) == 0
    single = _model(levels=3, members=1)
    params = dict(model.named_parameters())
    sd = {}
    for k, v in model.state_dict().items():
        if k in params:
            ax = model.member_axis(params[k])
            v = v.narrow(ax, 1, 1)
        sd[k] = v
    single.load_state_dict(sd)
    with torch.no_grad():
        np.testing.assert_allclose(single.eval()(b)[0].numpy()[0], model.eval()(b)[0].numpy()[1], atol=1e-5)


def test_trunk_from_root_keeps_high_levels_off_the_trunk():
    from qadb.models.validator.featurize import featurize

    model = _model(levels=3, trunk_from_root=True).train()
    mu, _ = model(collate([featurize(_toy_structure())], [0]))
    (mu[..., 2] ** 2).sum().backward()
    assert model.embed.grad is None or torch.count_nonzero(model.embed.grad) == 0
    assert torch.count_nonzero(model.head_w1.grad[:, 2]) > 0


def test_graph_bank_batch_equals_collate():
    from qadb.models.validator.featurize import featurize
    from qadb.models.validator.net import GraphBank

    gs = [featurize(_toy_structure()), featurize(_toy_structure().as_dict()), featurize(_toy_structure())]
    gs[1] = {k: v[: len(v)] for k, v in gs[1].items()}
    bank = GraphBank.from_graphs(gs)
    a, b = bank.batch([2, 0]), collate(gs, [2, 0])
    for k in ("z", "src", "dst", "dist", "batch"):
        assert torch.equal(a[k], b[k])


def test_bootstrap_counts_and_weighted_loss():
    from qadb.models.validator.train import bootstrap_counts, ensemble_loss

    lv = np.array([0] * 50 + [1] * 10)
    c = bootstrap_counts(lv, 3, seed=0)
    assert c.shape == (3, 60)
    np.testing.assert_allclose(c[:, :50].sum(1), 50)  # resampled per level, same count
    np.testing.assert_allclose(c[:, 50:].sum(1), 10)
    assert not np.allclose(c[0], c[1])
    # weighted MSE per member and level equals the MSE over the resampled rows
    mu = torch.randn(3, 60, 2)
    var = torch.ones(3, 60, 2)
    y = torch.randn(60)
    loss, per = ensemble_loss(mu, var, y, torch.as_tensor(lv), torch.as_tensor(c), torch.tensor([0.1, 1.0]), 1.0, True)
    expect = 0.0
    for m in range(3):
        for l, w in ((0, 0.1), (1, 1.0)):
            rows = np.repeat(np.where(lv == l)[0], c[m, lv == l].astype(int))
            expect += w * float(((mu[m, rows, l] - y[rows]) ** 2).mean())
    assert float(loss) == pytest.approx(expect, rel=1e-5)


def test_without_stop_grad_high_loss_reaches_low_head():
    model = _model(levels=2, stop_grad=False).train()
    from qadb.models.validator.featurize import featurize

    mu, _ = model(collate([featurize(_toy_structure())], [0]))
    (mu[..., 1] ** 2).sum().backward()
    assert torch.count_nonzero(model.head_w2.grad[:, 0]) > 0


def test_checkpoint_roundtrip_and_corrupt(tmp_path):
    from qadb.models.validator.train import load_checkpoint, save_checkpoint

    m = _model()
    p = tmp_path / "v.pt"
    save_checkpoint(p, "validator", m.config, [m], {"calibration": {"sigma_scale": 1.5}})
    members, cfg, extra = load_checkpoint(p, "validator")
    assert len(members) == 1 and members[0].n_members == 2 and extra["calibration"]["sigma_scale"] == 1.5
    s = _toy_structure()
    np.testing.assert_allclose(_energies(members[0], s)[0], _energies(m, s)[0], atol=1e-6)
    with pytest.raises(CheckpointError, match="kind"):
        load_checkpoint(p, "proxy")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(bad, "validator")
    assert "\n" not in str(ei.value)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(p.read_bytes()[:200])
    with pytest.raises(CheckpointError):
        load_checkpoint(trunc, "validator")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt", "validator")


def test_predict_end_to_end(tmp_path):
    from qadb.models.validator.api import predict
    from qadb.models.validator.train import save_checkpoint

    m = _model()
    p = tmp_path / "v.pt"
    save_checkpoint(p, "validator", m.config, [m], {"calibration": {"sigma_scale": 2.0}, "divergence_low_level": "l1"})
    out = predict([_toy_structure(), _toy_structure().as_dict()], checkpoint=p, proxy_checkpoint=False)
    assert out["low_level"] == "l1"
    np.testing.assert_allclose(out["E_PBE"], out["energies"]["l1"])
    assert set(out["energies"]) == {"l0", "l1", "l2"}
    np.testing.assert_allclose(out["E_MF"], out["energies"]["l2"])
    np.testing.assert_allclose(out["sigma_MF"], 2.0 * out["sigma_MF_raw"])
    np.testing.assert_allclose(out["D_abs"], np.abs(out["E_PBE"] - out["E_MF"]))
    np.testing.assert_allclose(out["D_sgn"], out["E_PBE"] - out["E_MF"])
    ext = predict([_toy_structure()], checkpoint=p, proxy_checkpoint=False, baseline_e_pbe=[0.0])
    np.testing.assert_allclose(ext["D_sgn"], -ext["E_MF"])


def test_hierarchy_order_and_weights():
    from qadb.models.validator.api import hierarchy_levels, loss_weights

    levels, parents = hierarchy_levels("full")
    assert levels[0] == "PBE+U" and levels[-1] == "EXP" and parents[0] == -1
    w = loss_weights(levels)
    assert w[0] == pytest.approx(0.1) and w[-1] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(w, w[1:]))


def test_split_is_by_formula_and_deterministic():
    from qadb.models.validator.data import split_of

    assert split_of("NaCl") == split_of("NaCl")
    fr = [split_of(f"X{i}") for i in range(2000)]
    assert 0.15 < fr.count("test") / 2000 < 0.25


def test_linear_correction_and_cokriging_recover_synthetic():
    from qadb.models.validator.baselines import CoKriging, LinearCorrection

    rng = np.random.default_rng(0)
    f = rng.normal(size=200)
    X = rng.dirichlet(np.ones(5), size=200)
    y = 0.8 * f - 0.1 + 0.3 * np.sin(6 * X[:, 0])
    lc = LinearCorrection().fit(f, y)
    assert lc.a == pytest.approx(0.8, abs=0.05)
    ck = CoKriging().fit(f[:150], X[:150], y[:150])
    assert ck.rho == pytest.approx(0.8, abs=0.05)
    err_ck = np.abs(ck.predict(f[150:], X[150:]) - y[150:]).mean()
    err_lc = np.abs(lc.predict(f[150:]) - y[150:]).mean()
    assert err_ck < err_lc


# ------------------------------------------------------------------ CLI: qadb train validator/proxy, qadb predict

SAMPLES = __import__("pathlib").Path(__file__).resolve().parents[2] / "qadb" / "data" / "samples"


def _cli(capsys, *args):
    from qadb.cli import main

    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code or 0
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _small_checkpoint(path):
    from qadb.models.validator.api import hierarchy_levels
    from qadb.models.validator.train import save_checkpoint

    levels, parents = hierarchy_levels("full")
    torch.manual_seed(0)
    cfg = default_config(levels, parents)
    cfg.update(n_members=2, n_features=8, hidden=4, n_shared=1)
    save_checkpoint(path, "validator", cfg, [MFENNP(cfg).eval()],
                    {"calibration": {"sigma_scale": 1.0}, "divergence_low_level": "PBE+U/FERE"})
    return path


def test_cli_predict_files_jsonl_and_table(tmp_path, capsys):
    import json

    ck = _small_checkpoint(tmp_path / "v.pt")
    code, out, err = _cli(capsys, "--store", str(tmp_path / "st"), "predict", str(SAMPLES / "MgO.cif"),
                          "--cif", str(SAMPLES / "Si.cif"), "--checkpoint", str(ck), "--no-proxy", "--output", "jsonl")
    assert code == 0, err
    rows = [json.loads(x) for x in out.splitlines()]
    assert [r["formula"] for r in rows] == ["MgO", "Si"]
    r = rows[0]
    assert set(r["energies"]) >= {"PBE+U", "r2SCAN", "EXP"} and r["low_level"] == "PBE+U/FERE"
    assert r["D_abs"] == pytest.approx(abs(r["E_PBE"] - r["E_MF"]), abs=1e-6)
    assert r["E_MF"] == pytest.approx(r["energies"]["EXP"], abs=1e-6)
    code, out, err = _cli(capsys, "--store", str(tmp_path / "st"), "predict", str(SAMPLES / "NaCl.cif"),
                          "--checkpoint", str(ck), "--no-proxy", "--all-levels")
    assert code == 0 and "MF-ENNP predictions" in out, err


def test_cli_predict_bad_inputs_are_one_line_errors(tmp_path, capsys):
    ck = _small_checkpoint(tmp_path / "v.pt")
    st = str(tmp_path / "st")
    bad = tmp_path / "broken.cif"
    bad.write_text("data_x\nnot a cif\n")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80garbage")
    assert _cli(capsys, "--store", st, "ingest", str(SAMPLES / "Si.cif"))[0] == 0
    for args, needle in (((str(bad), "--checkpoint", str(ck)), "broken.cif"),
                         ((str(SAMPLES / "Si.cif"), "--checkpoint", str(corrupt)), "corrupt.pt"),
                         (("qadb-doesnotexist", "--checkpoint", str(ck)), "unknown structure id"),
                         (("--checkpoint", str(tmp_path / "missing.pt"), str(SAMPLES / "Si.cif")), "not found"),
                         ((), "nothing to predict")):
        code, out, err = _cli(capsys, "--store", st, "predict", "--no-proxy", *args)
        lines = [x for x in err.splitlines() if x.strip()]
        assert code != 0 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], (args, err)


def test_cli_predict_stored_ids_and_register_checkpoint(tmp_path, capsys):
    import json

    st = str(tmp_path / "st")
    code, _, err = _cli(capsys, "--store", st, "ingest", str(SAMPLES / "MgO.cif"), str(SAMPLES / "Si.cif"))
    assert code == 0, err
    code, out, _ = _cli(capsys, "--store", st, "query", "--output", "jsonl")
    ids = {json.loads(x)["formula_pretty"]: json.loads(x)["material_id"] for x in out.splitlines()}
    ck = _small_checkpoint(tmp_path / "v.pt")
    code, out, err = _cli(capsys, "--store", st, "train", "validator", "--register-existing", str(ck))
    assert code == 0, err
    cid = out.split(" as ")[-1].strip()
    assert cid.startswith("validator@")
    code, out, err = _cli(capsys, "--store", st, "predict", ids["MgO"], "--checkpoint", cid, "--no-proxy",
                          "--output", "jsonl")
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["id"] == ids["MgO"]


def test_cli_train_validator_from_bundle(tmp_path, capsys):
    """`qadb train validator --bundle` trains, writes a checkpoint, logs a line, registers with lineage."""
    import json

    from qadb.models.validator.data import export_bundle

    cifs = {p.stem: p.read_text() for p in SAMPLES.glob("*.cif")}
    recs = []
    for i, (name, cif) in enumerate(sorted(cifs.items())):
        formula = {"TiO2-rutile": "TiO2"}.get(name, name)
        for lvl, v in (("PBE+U", -1.0 - 0.2 * i), ("r2SCAN", -1.1 - 0.2 * i), ("EXP", -1.2 - 0.2 * i)):
            recs.append({"key": f"t:{name}:{lvl}", "structure": cif, "level": lvl, "value": v,
                         "formula": formula, "source": "fere_exp" if lvl == "EXP" else "test"})
    bundle = tmp_path / "b.npz"
    export_bundle(bundle, records=recs, gap_records=[])
    st, ck, log = str(tmp_path / "st"), tmp_path / "v.pt", tmp_path / "log.jsonl"
    code, out, err = _cli(capsys, "--store", st, "train", "validator", "--bundle", str(bundle), "--steps", "3",
                          "--members", "2", "-o", str(ck), "--log", str(log))
    assert code == 0, err
    assert ck.exists() and "registered as validator@" in out
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["steps"] == 3 and entry["config"]["n_members"] == 2 and entry["data_hash"]


# ------------------------------------------------------------------ MLIP low-fidelity member (mlip_member)

def test_cokriging_multi_column_linear_kernel_and_set_params():
    from qadb.models.validator.baselines import CoKriging

    rng = np.random.default_rng(1)
    n = 160
    F = rng.normal(size=(n, 2))
    X = rng.dirichlet(np.ones(4), size=n)
    offs = np.array([0.3, -0.2, 0.1, 0.0])  # per-"element" offsets: what the linear kernel is for
    y = 0.2 * F[:, 0] + 0.7 * F[:, 1] + 0.05 + X @ offs + 0.01 * rng.normal(size=n)
    ck = CoKriging().fit(F[:120], X[:120], y[:120], linear=(1.0, 10.0))
    assert ck.rho.shape == (2,) and ck.rho == pytest.approx([0.2, 0.7], abs=0.05)
    mu, sd = ck.predict(F[120:], X[120:], return_std=True)
    assert np.abs(mu - y[120:]).mean() < 0.03 and (sd > 0).all()
    # rebuilding from hyper-parameters + training arrays gives the same model (the artifact path)
    ck2 = CoKriging().set_params(ck.ls, ck.lin, ck.ratio, ck.beta, ck.s2, F[:120], X[:120], y[:120])
    mu2, sd2 = ck2.predict(F[120:], X[120:], return_std=True)
    np.testing.assert_allclose(mu2, mu, atol=1e-10)
    np.testing.assert_allclose(sd2, sd, atol=1e-10)
    # one column keeps the classic API (scalar rho)
    one = CoKriging().fit(F[:120, 1], X[:120], y[:120])
    assert isinstance(one.rho, float) and one.predict(F[120:, 1], X[120:]).shape == (40,)


def _synthetic_member_data(n=90, seed=0):
    rng = np.random.default_rng(seed)
    X = np.zeros((n, 101))
    X[:, [8, 12, 14]] = rng.dirichlet(np.ones(3), size=n)  # O, Mg, Si fractions
    mu_true = np.zeros(101)
    mu_true[[8, 12, 14]] = [-4.9, -1.6, -5.4]
    y = X @ np.array([0.0] * 8 + [-1.0] + [0.0] * 92) + 0.05 * rng.normal(size=n)  # "EXP"
    e = np.stack([y + X @ mu_true + 0.02 * rng.normal(size=n), y + X @ mu_true - 0.1 + 0.04 * rng.normal(size=n)], 1)
    mf = {"PBE+U": y + 0.1 * rng.normal(size=n), "EXP": y + 0.08 * rng.normal(size=n)}
    split = np.array(["train"] * (n - 20) + ["val"] * 20)
    fere = np.arange(n) % 3 == 0
    return e, X, y, split, fere, mf, np.stack([mu_true, mu_true])


MEMBER_CANDIDATES = [{"mlips": (0,), "train": "all", "features": (), "linear": False},
                     {"mlips": (0, 1), "train": "fere", "features": ("PBE+U",), "linear": True}]


def _fit_synthetic_member(path, validator_sha=None, candidates=MEMBER_CANDIDATES):
    from qadb.models.validator import mlip_member as MM

    e, X, y, split, fere, mf, mu = _synthetic_member_data()
    sel, mu_sel, arrays, table = MM.select_and_fit(e, X, y, split, fere, mf, mu, ("a", "b"), candidates=candidates)
    assert len(table) == len(candidates) and all(r["n_val"] == 20 for r in table)
    best = table[int(np.argmin([r["mae_val"] for r in table]))]
    assert sel["design"]["mlip_keys"] == best["mlips"] and sel["design"]["features"] == best["features"]
    assert arrays["used"].sum() == (len(y) if best["train"] == "all" else arrays["fere"].sum())
    meta = {"member": "synthetic", "mlip_fidelities": [f"MLIP:{k}" for k in sel["design"]["mlip_keys"]], **sel,
            "validator_sha256": validator_sha, "selection": {"candidates": table}}
    member = MM.MLIPMember(meta, mu_sel, arrays)
    member.save(path)
    return member, (e, X, y, mf)


def test_mlip_member_select_fit_save_load_roundtrip(tmp_path):
    from qadb.models.validator import mlip_member as MM

    member, (e, X, y, mf) = _fit_synthetic_member(tmp_path / "m.npz")
    assert (tmp_path / "m.npz").stat().st_size < 200_000
    loaded = MM.load_member(tmp_path / "m.npz")  # allow_pickle=False inside
    cols = [int(k == "b") for k in loaded.mlip_keys]
    mu1, sd1 = member.predict(e[:, cols], X, mf)
    mu2, sd2 = loaded.predict(e[:, cols], X, mf)
    np.testing.assert_allclose(mu2, mu1, atol=1e-10)
    np.testing.assert_allclose(sd2, sd1, atol=1e-10)
    assert np.abs(mu1 - y).mean() < 0.06 and loaded.sigma_scale > 0
    np.testing.assert_allclose(loaded.f_low(e[:, cols], X), e[:, cols] - X @ loaded.mu.T)
    # test rows never reach the fit
    e2, X2, y2, split, fere, mf2, mu = _synthetic_member_data(30)
    split[0] = "test"
    from qadb.errors import InputError

    with pytest.raises(InputError, match="train/val rows only"):
        MM.select_and_fit(e2, X2, y2, split, fere, mf2, mu, ("a", "b"))
    with pytest.raises(InputError, match="expected energies of"):
        loaded.predict(np.zeros((3, len(cols) + 1)), X[:3], mf)
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros(2))
    with pytest.raises(CheckpointError, match="not an MLIP-member artifact"):
        MM.load_member(bad)


def test_predict_with_mlip_member_precomputed_energies(tmp_path):
    from qadb.errors import InputError
    from qadb.models.validator import mlip_member as MM
    from qadb.models.validator.api import predict
    from qadb.models.validator.baselines import composition_features
    from qadb.models.validator.featurize import featurize

    ck = _small_checkpoint(tmp_path / "v.pt")
    member, _ = _fit_synthetic_member(tmp_path / "m.npz", validator_sha=MM.file_sha256(ck))
    structs = [_toy_structure(), _toy_structure()]
    E = np.array([[-4.0, -4.2], [-4.1, -4.3]])[:, : len(member.mlip_keys)]
    out = predict(structs, checkpoint=ck, proxy_checkpoint=False, mlip_member=tmp_path / "m.npz", mlip_energies=E)
    X = composition_features([featurize(s) for s in structs])
    want, sd = member.predict(E, X, out["energies"])
    np.testing.assert_allclose(out["E_EXP_mlip"], want)
    np.testing.assert_allclose(out["sigma_EXP_mlip"], sd)
    np.testing.assert_allclose(out["sigma_EXP_mlip"], member.sigma_scale * out["sigma_EXP_mlip_raw"])
    assert out["E_mlip_low"].shape == (2, len(member.mlip_keys)) and out["mlip_fidelities"] == member.fidelities
    assert "E_EXP_mlip" not in predict(structs, checkpoint=ck, proxy_checkpoint=False)  # off by default
    with pytest.raises(InputError, match="rows for 2 structures"):
        predict(structs, checkpoint=ck, proxy_checkpoint=False, mlip_member=tmp_path / "m.npz", mlip_energies=E[:1])
    # a member with MF-ENNP columns refuses another validator checkpoint
    m2, _ = _fit_synthetic_member(tmp_path / "m2.npz", validator_sha="0" * 16, candidates=MEMBER_CANDIDATES[1:])
    assert m2.features == ("PBE+U",)
    with pytest.raises(InputError, match="refit it"):
        predict(structs, checkpoint=ck, proxy_checkpoint=False, mlip_member=tmp_path / "m2.npz",
                mlip_energies=np.zeros((2, 2)))


def test_cli_predict_mlip_member_bad_reference_is_one_line_error(tmp_path, capsys):
    ck = _small_checkpoint(tmp_path / "v.pt")
    for ref, needle in (("nope", "unknown MLIP member"), (str(tmp_path / "missing.npz"), "not found")):
        code, out, err = _cli(capsys, "--store", str(tmp_path / "st"), "predict", str(SAMPLES / "MgO.cif"),
                              "--checkpoint", str(ck), "--no-proxy", "--mlip-member", ref)
        lines = [x for x in err.splitlines() if x.strip()]
        assert code != 0 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], (ref, err)


def test_bundled_mlip_member_artifact_is_small_and_train_val_only():
    from qadb.models.validator import mlip_member as MM

    path = MM.default_artifact("chgnet")
    if not path.exists():
        pytest.skip("no committed MLIP member artifact")
    assert path.stat().st_size < 300_000
    m = MM.load_member("chgnet")
    assert set(np.asarray(m.arrays["split"]).astype(str)) <= {"train", "val"}
    assert m.meta["mu"]["split"] == "train+val" and m.meta["selection"]["candidates"]
    assert m.meta["validator_sha256"] == MM.file_sha256(__import__("qadb.models.validator.api", fromlist=["x"]).DEFAULT_CHECKPOINT)


def test_bundled_mlip_member_predicts_mgo_with_chgnet():  # ≈ 2-5 s (loads both CHGNet models)
    pytest.importorskip("chgnet")
    from qadb.models.validator.api import predict

    torch.set_num_threads(1)
    out = predict([str((SAMPLES / "MgO.cif").read_text())], proxy_checkpoint=False, mlip_member="chgnet")
    # experimental ΔH_f(MgO) ≈ -3.11 eV/atom
    assert abs(out["E_EXP_mlip"][0] + 3.11) < 0.25 and 0 < out["sigma_EXP_mlip"][0] < 0.5
