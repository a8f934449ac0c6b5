"""The training-tensor export (qadb.models.generator.prepare) on a few rows of each staged source."""

from __future__ import annotations

import json
from importlib.metadata import version

import pytest
import torch

pytest.importorskip("pymatgen")

from qadb.models.generator.prepare import HASH_LIBRARIES, main, snap_frac, tensor_hash  # noqa: E402
from tests.conftest import SHARED_DATA  # noqa: E402

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "mp_20_mattergen_cache").exists(),
                                reason="needs the staged datasets in ../shared/data")


def _build(path) -> dict:
    main(["--out", str(path), "--limit", "5", "--workers", "1"])
    return torch.load(path, weights_only=True)


def test_export_is_deterministic_and_records_what_its_hashes_depend_on(tmp_path):
    a, b = _build(tmp_path / "a.pt"), _build(tmp_path / "b.pt")
    meta = json.loads(a["meta_json"])
    assert meta["train_hash"] == tensor_hash(a["train"]) == json.loads(b["meta_json"])["train_hash"]
    assert meta["test_hash"] == tensor_hash(a["test"]) == json.loads(b["meta_json"])["test_hash"]
    assert meta["versions"] == {p: version(p) for p in HASH_LIBRARIES}
    assert meta["n_test"] == 5 and meta["n_train"] == int(a["train"]["num_atoms"].numel()) > 0
    assert int(a["train"]["num_atoms"].max()) <= meta["max_atoms"]


def test_snap_frac_removes_kernel_dependent_round_off():
    """Round-off of order 1e-17 on special positions differs between BLAS kernels (measured: OpenBLAS SkylakeX
    against Haswell changed the export's hashes); it is put on the cell face, everything else kept."""
    import numpy as np

    f = snap_frac(np.array([[1e-17, -2e-17, 1 - 1e-9], [0.5, 0.25, 0.999]]))
    assert f.dtype == np.float32 and ((f >= 0) & (f < 1)).all()
    assert f[0].tolist() == [0.0, 0.0, 0.0]
    assert np.allclose(f[1], [0.5, 0.25, 0.999])
