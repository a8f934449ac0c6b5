"""Fast CPU tests of the crystal diffusion generator (issue #5)."""

from __future__ import annotations

import math

import pytest
import torch

from qadb.errors import CheckpointError
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
    from qadb.models.generator import DEFAULT_CHECKPOINT, sample

    if not DEFAULT_CHECKPOINT.exists():
        pytest.skip("default checkpoint not present")
    assert DEFAULT_CHECKPOINT.stat().st_size < 20 * 2**20
    structs = sample(DEFAULT_CHECKPOINT, n=2, mode="csp", composition="Na2Cl2", steps=20, seed=3)
    assert len(structs) == 2
    for s in structs:
        assert s.composition.reduced_formula == "NaCl" and len(s) == 4
        assert math.isfinite(s.volume) and s.volume > 1.0
        assert all(0 <= x < 1 for x in s.frac_coords.ravel())


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
