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
    return mu.numpy()[0], var.numpy()[0]


def _model(levels=3, stop_grad=True):
    torch.manual_seed(0)
    cfg = default_config([f"l{i}" for i in range(levels)], [-1] + list(range(levels - 1)))
    cfg["stop_grad"] = stop_grad
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
    (mu[:, 0] ** 2 + torch.log(var[:, 0])).sum().backward()  # low-fidelity (root) loss
    for p in model.level_parameters(2):
        assert p.grad is not None
        assert torch.count_nonzero(p.grad[2]) == 0, "low-fidelity loss reached a high-fidelity head"
        assert torch.count_nonzero(p.grad[1]) == 0
    assert model.embed.weight.grad.abs().sum() > 0  # the shared trunk does learn from low fidelity

    model.zero_grad()
    mu, var = model(b)
    (mu[:, 2] ** 2).sum().backward()  # high-fidelity loss does not move the low-fidelity heads either
    for p in model.level_parameters(0):
        assert torch.count_nonzero(p.grad[0]) == 0
        assert torch.count_nonzero(p.grad[1]) == 0
    assert model.elem_ref.grad is None or torch.count_nonzero(model.elem_ref.grad) == 0


def test_without_stop_grad_high_loss_reaches_low_head():
    model = _model(levels=2, stop_grad=False).train()
    from qadb.models.validator.featurize import featurize

    mu, _ = model(collate([featurize(_toy_structure())], [0]))
    (mu[:, 1] ** 2).sum().backward()
    assert torch.count_nonzero(model.head_w2.grad[0]) > 0


def test_checkpoint_roundtrip_and_corrupt(tmp_path):
    from qadb.models.validator.train import load_checkpoint, save_checkpoint

    m = _model()
    p = tmp_path / "v.pt"
    save_checkpoint(p, "validator", m.config, [m, m], {"calibration": {"sigma_scale": 1.5}})
    members, cfg, extra = load_checkpoint(p, "validator")
    assert len(members) == 2 and extra["calibration"]["sigma_scale"] == 1.5
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
    save_checkpoint(p, "validator", m.config, [m, _model()], {"calibration": {"sigma_scale": 2.0}})
    out = predict([_toy_structure(), _toy_structure().as_dict()], checkpoint=p, proxy_checkpoint=False)
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
