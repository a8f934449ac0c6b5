"""Fast CPU tests of the Φ_Q descriptor proxy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qadb.errors import CheckpointError


def _structure():
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(4.2), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _model():
    from qadb.models.proxy.api import GAP_LEVELS
    from qadb.models.proxy.net import PhiQ, default_config

    torch.manual_seed(0)
    return PhiQ(default_config(GAP_LEVELS)).eval()


def test_predict_q_shapes_and_ranges(tmp_path):
    from qadb.models.proxy.api import Q_NAMES, predict_q
    from qadb.models.validator.train import save_checkpoint

    m = _model()
    p = tmp_path / "p.pt"
    save_checkpoint(p, "proxy", m.config, [m], {"q_names": Q_NAMES})
    s = _structure()
    rot = s.copy()
    rot.apply_operation(__import__("pymatgen.core.operations", fromlist=["SymmOp"]).SymmOp.from_axis_angle_and_translation([1, 2, 3], 37.0))
    out = predict_q([s, rot], checkpoint=p)
    q = out["q"]
    assert q.shape == (2, 5) and out["names"] == Q_NAMES
    assert (q[:, :4] >= 0).all() and ((q[:, 4] >= 0) & (q[:, 4] <= 1)).all()
    np.testing.assert_allclose(q[0], q[1], atol=1e-5)


def test_proxy_checkpoint_errors(tmp_path):
    from qadb.models.proxy.api import load_proxy

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError):
        load_proxy(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_proxy(tmp_path / "nope.pt")
