"""MLIP loading and relaxation: fast error paths, real CHGNet / SevenNet / MACE runs marked slow."""

import json

import pytest

from qadb.drivers import ConvergenceError, RelaxSettings, load_mlip, relax
from qadb.errors import CheckpointError, InputError


def test_unknown_model_and_bad_heads():
    with pytest.raises(InputError, match="unknown MLIP 'nequip-x'; known: chgnet-0.3.0"):
        load_mlip("nequip-x")
    with pytest.raises(InputError, match="single head"):
        load_mlip("chgnet", head="PBE")
    with pytest.raises(InputError, match="multi-fidelity: pass head= one of PBE, R2SCAN"):
        load_mlip("sevennet-mf-0")
    with pytest.raises(InputError, match="has no head 'HSE'"):
        load_mlip("sevennet-mf-0", head="hse")


def test_mace_needs_an_existing_checkpoint(tmp_path):
    with pytest.raises(InputError, match="needs checkpoint=PATH"):
        load_mlip("mace")
    with pytest.raises(CheckpointError, match="MACE checkpoint not found: .*missing.model"):
        load_mlip("mace", checkpoint=str(tmp_path / "missing.model"))
    with pytest.raises(InputError, match="only for 'mace'"):
        load_mlip("chgnet", checkpoint=str(tmp_path / "x"))


def test_overlap_rejected_before_loading(overlapping):
    with pytest.raises(InputError, match="overlapping atoms"):
        relax(overlapping, RelaxSettings(model="no-such-model"))


@pytest.mark.slow
def test_chgnet_relaxation(si2_compressed):
    result = relax(si2_compressed, RelaxSettings(model="chgnet", fmax=0.02))
    assert result.converged and result.fidelity == "MLIP:CHGNet@0.3.0" and result.code == "chgnet"
    assert result.max_force_eV_per_A <= 0.02 + 1e-9 and 0 < result.steps <= 500
    assert result.volume_change > 0.05  # compressed 4 % in a -> expands back
    assert not result.structure_changed
    assert result.value == pytest.approx(result.energy_eV / 2) and -6 < result.value < -4
    assert load_mlip("chgnet") is load_mlip("chgnet-0.3.0")  # loaded once per process
    d = json.loads(json.dumps(result.to_dict()))
    assert d["units"] == "eV/atom" and d["parameters"]["cell_filter"] == "FrechetCellFilter"
    assert len(d["stress_GPa"]) == 6 and len(d["forces_eV_per_A"]) == 2


@pytest.mark.slow
def test_unconverged_relaxation_is_flagged(si2_compressed):
    settings = RelaxSettings(model="chgnet", optimizer="BFGS", fmax=1e-4, steps=1)
    with pytest.raises(ConvergenceError, match="not converged to fmax=0.0001 eV/Å in 1 steps") as err:
        relax(si2_compressed, settings)
    assert err.value.result.converged is False
    flagged = relax(si2_compressed, settings, allow_unconverged=True)
    assert flagged.converged is False and flagged.steps == 1


@pytest.mark.slow
def test_sevennet_single_and_multi_fidelity(si2_compressed):
    plain = relax(si2_compressed, RelaxSettings(model="sevennet-0"))
    assert plain.converged and plain.fidelity == "MLIP:SevenNet-0@11Jul2024"
    mf = relax(si2_compressed, RelaxSettings(model="sevennet-mf-0", head="r2scan", steps=0), allow_unconverged=True)
    assert mf.fidelity.startswith("MLIP:SevenNet-MF-0-r2SCAN@") and mf.parameters["head"] == "R2SCAN"
    assert mf.input_hash != plain.input_hash


@pytest.mark.slow
def test_mace_from_user_checkpoint(tmp_path, si2_compressed):
    """mace-torch bundles no weights: build a tiny random-weight MACE for Si, save it, load it by path."""
    import numpy as np
    import torch
    from e3nn import o3
    from mace import modules

    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    torch.manual_seed(0)
    model = modules.MACE(r_max=4.0, num_bessel=4, num_polynomial_cutoff=5, max_ell=1, interaction_cls=block,
                         interaction_cls_first=block, num_interactions=1, num_elements=1,
                         hidden_irreps=o3.Irreps("4x0e+4x1o"), MLP_irreps=o3.Irreps("4x0e"),
                         atomic_energies=np.array([-4.0]), avg_num_neighbors=8.0, atomic_numbers=[14],
                         correlation=2, gate=torch.nn.functional.silu).double()
    path = tmp_path / "tiny_si.model"
    torch.save(model, path)
    result = relax(si2_compressed, RelaxSettings(model="mace", checkpoint=str(path), steps=5), allow_unconverged=True)
    assert result.fidelity.startswith("MLIP:MACE@") and len(result.fidelity) == len("MLIP:MACE@") + 12
    assert result.code == "mace-torch" and result.steps <= 5
