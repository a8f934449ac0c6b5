"""Prototype transfer for MP-20 train rows without coordinates (qadb.models.generator.reconstruct)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("pymatgen")

from pymatgen.analysis.structure_matcher import StructureMatcher  # noqa: E402
from pymatgen.core import Lattice, Structure  # noqa: E402

from qadb.models.generator.prepare import atomic_radii, pack  # noqa: E402
from qadb.models.generator.reconstruct import TemplateIndex  # noqa: E402
from qadb.models.generator.templates import element_roles  # noqa: E402
from qadb.models.generator.train import split_indices  # noqa: E402


def _pool(structures: list[Structure], ids: list[str]) -> dict:
    recs = [dict(source="t", material_id=m, types=np.array(s.atomic_numbers, np.int16),
                 frac=s.frac_coords.astype(np.float32), lattice=s.lattice.matrix.astype(np.float32),
                 formula=s.composition.reduced_formula, props={})
            for s, m in zip(structures, ids)]
    return pack(recs, atomic_radii())


def _perovskite(a: str, b: str, x: str, lat: float) -> Structure:
    return Structure(Lattice.cubic(lat), [a, b, x, x, x],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def _rocksalt(a: str, x: str, lat: float) -> Structure:
    return Structure(Lattice.cubic(lat), [a] * 4 + [x] * 4,
                     [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0], [.5, .5, .5], [.5, 0, 0], [0, .5, 0],
                      [0, 0, .5]]).get_primitive_structure()


def test_element_roles_orders_by_count_then_electronegativity():
    counts, order = element_roles([8, 22, 8, 38, 8])  # SrTiO3 sites
    assert counts == (1, 1, 3)
    assert order == [38, 22, 8]  # Sr (0.95) before Ti (1.54); O, the only element counted thrice, last


def test_prototype_transfer_rebuilds_a_perovskite_and_a_rocksalt():
    pool = _pool([_perovskite("Sr", "Ti", "O", 3.9), _rocksalt("Na", "Cl", 5.64)], ["mp-a", "mp-b"])
    index = TemplateIndex(pool)
    sm = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    truth = _perovskite("Ba", "Zr", "O", 4.19)
    lat = truth.lattice
    cands = index.candidates(["Ba", "Zr", "O", "O", "O"], lat.abc, lat.angles)
    assert cands, "a cubic ABO3 cell must find the perovskite template"
    assert sm.fit(cands[0], truth)  # first assignment: by electronegativity rank
    assert cands[0].lattice.volume == pytest.approx(lat.volume, rel=1e-6)  # the row's own cell, not the template's
    assert any(not sm.fit(c, truth) for c in cands[1:])  # the swapped A/B assignment is offered too
    kbr = _rocksalt("K", "Br", 6.6)
    got = index.candidates([str(s) for s in kbr.species], kbr.lattice.abc, kbr.lattice.angles)
    assert got and sm.fit(got[0], kbr)


def test_prototype_transfer_needs_the_same_cell_shape_and_can_leave_a_row_out():
    pool = _pool([_perovskite("Sr", "Ti", "O", 3.9)], ["mp-a"])
    index = TemplateIndex(pool)
    assert index.candidates(["Ba", "Zr", "O", "O", "O"], (4.19, 4.19, 4.6), (90, 90, 90)) == []  # tetragonal: no
    assert index.candidates(["Ba", "Zr", "O", "O", "O"], (4.19,) * 3, (90,) * 3, exclude_id="mp-a") == []
    assert index.candidates(["Ba", "Zr", "O", "O"], (4.19,) * 3, (90,) * 3) == []  # another anonymous formula


def test_validation_rows_come_from_real_crystals_only():
    val, tr = split_indices(1000, 600, 0.02)
    assert len(val) == 12 and int(val.max()) < 600
    assert sorted(torch.cat([val, tr]).tolist()) == list(range(1000))
    old_val, _ = split_indices(600, 600, 0.02)
    assert torch.equal(val, old_val)  # appending reconstructed rows leaves the validation crystals as they were


def test_energy_check_drops_a_rebuilt_row_whose_energy_contradicts_its_dft_formation_energy():
    """Real CHGNet single points (the wheel ships its weights): a pool of three rock salts fixes the elemental
    references; a rebuilt NaBr whose label agrees with its CHGNet estimate stays, a crushed NaBr with the same
    label goes."""
    import json

    from qadb.models.generator.conditions import PROPS
    from qadb.models.generator.reconstruct import SOURCE, energy_check, formation_energy_model

    real = [_rocksalt("Na", "Cl", 5.64), _rocksalt("K", "Cl", 6.29), _rocksalt("K", "Br", 6.6)]
    good = _rocksalt("Na", "Br", 5.97)
    crushed = Structure(good.lattice, good.species, [good[0].frac_coords, good[0].frac_coords + [0.1, 0.0, 0.0]])
    pool = _pool(real + [good, crushed], ["mp-1", "mp-2", "mp-3", "mp-4", "mp-5"])
    j = PROPS.index("formation_energy")
    pool["props"][:3, j] = torch.tensor([-2.1, -2.2, -1.9])
    estimate = formation_energy_model(pool, 3)
    ef_good = float(estimate([good])[0])
    pool["props"][3:, j] = ef_good + 0.02
    meta = {"n_real_train": 3, "counts": {SOURCE: {"rows": 2, "kept": 2}}}
    out = energy_check({"train": pool, "meta_json": json.dumps(meta)})
    assert out["train"]["material_id"] == ["mp-1", "mp-2", "mp-3", "mp-4"]
    assert int(out["train"]["num_atoms"].sum()) == 8 and len(out["train"]["frac"]) == 8
    assert json.loads(out["meta_json"])["counts"][SOURCE]["removed_energy_check"] == 1


def test_cli_bad_input_is_one_line(tmp_path):
    import json

    from qadb.models.generator.reconstruct import main

    with pytest.raises(SystemExit, match="tensor file not found"):
        main(["--data", str(tmp_path / "missing.pt"), "--validate"])
    plain = tmp_path / "plain.pt"
    torch.save({"train": _pool([_rocksalt("Na", "Cl", 5.64)], ["mp-1"]), "meta_json": json.dumps({})}, plain)
    with pytest.raises(SystemExit, match="no rebuilt rows"):
        main(["--data", str(plain), "--check-only", "--out", str(tmp_path / "o.pt")])
    assert not (tmp_path / "o.pt").exists()
