"""The fast P1 CIF path gives exactly what pymatgen's CifParser gives, or defers to it."""

import warnings

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Structure

from qadb.store.readers import _fast_p1_cif
from tests.store.helpers import SAMPLES

FILES = ["mp_20_mattergen_cache/val.csv.gz", "mpts_52/val.csv.gz", "perov_5/val.csv.gz", "carbon_24/val.csv.gz",
         "aflow_bulk_modulus/val.csv.gz", "mp_elasticity_binaries/mp_binary_elasticity.csv.gz",
         "fere_formation_enthalpy_multi_functional/fere_all_setups.csv.gz", "pigen_fuse_spp/fuse2_probe_structures.csv.gz"]


@pytest.mark.parametrize("name", FILES)
def test_fast_path_matches_cifparser(shared_data, name):
    df = pd.read_csv(shared_data / name, nrows=80)
    used = 0
    for text in df["cif"]:
        fast = _fast_p1_cif(text)
        if fast is None:
            continue
        used += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = Structure.from_str(text, fmt="cif")
        assert [s.symbol for s in fast.species] == [s.symbol for s in ref.species]
        np.testing.assert_allclose(fast.lattice.matrix, ref.lattice.matrix, atol=1e-10)
        np.testing.assert_allclose(fast.frac_coords, ref.frac_coords, atol=1e-10)
    assert used > 0 or "fuse" in name  # FUSE probes carry symmetry operations: always the slow path


def test_fast_path_defers_on_anything_unusual():
    cif = (SAMPLES / "NaCl.cif").read_text()
    assert _fast_p1_cif(cif) is not None
    row = next(line for line in cif.splitlines() if line.strip().startswith("Na  Na1"))
    assert _fast_p1_cif(cif.replace(row, row[:-1] + "0.5")) is None  # partial occupancy
    assert _fast_p1_cif(cif.replace(row, row.replace("Na  Na1", "Na+  Na1"))) is None  # oxidation state
    assert _fast_p1_cif(cif + "\ndata_second\n") is None  # two blocks
    assert _fast_p1_cif(cif.replace("'P 1'", "'F m -3 m'")) is None  # symmetry to apply
