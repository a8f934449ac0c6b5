"""The fast CIF reader gives exactly what pymatgen's CifParser gives, or defers to it."""

import warnings

import pandas as pd
import pytest
from pymatgen.core import Structure

from qadb.store.identity import analyse, analyse_cell
from qadb.store.readers import fast_cif_cell
from tests.store.helpers import SAMPLES

FILES = ["mp_20_mattergen_cache/val.csv.gz", "mpts_52/val.csv.gz", "perov_5/val.csv.gz", "carbon_24/val.csv.gz",
         "aflow_bulk_modulus/val.csv.gz", "mp_elasticity_binaries/mp_binary_elasticity.csv.gz",
         "fere_formation_enthalpy_multi_functional/fere_all_setups.csv.gz", "pigen_fuse_spp/fuse2_probe_structures.csv.gz"]


def _pymatgen(text: str) -> Structure:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(text, fmt="cif")


def _same(text: str) -> bool:
    """Fast cell == CifParser's structure: dict (labels, occupancies, site order), and every store key."""
    cell, ref = fast_cif_cell(text), _pymatgen(text)
    assert cell.as_dict() == ref.as_dict()
    assert cell.to_structure().as_dict() == ref.as_dict()
    assert analyse_cell(cell)[0] == analyse(ref)
    return True


@pytest.mark.parametrize("name", FILES)
def test_fast_reader_matches_cifparser(shared_data, name):
    df = pd.read_csv(shared_data / name)
    texts = list(df["cif"][:60])
    # rows with parentheses in a name or formula (e.g. data_Y(GaCo)6), which an earlier reader deferred
    texts += [t for t in df["cif"][60:3000] if "(" in t.split("loop_", 1)[0]][:20]
    used = sum(_same(t) for t in texts if fast_cif_cell(t) is not None)
    if "fuse" in name:
        assert used == 0  # FUSE probes carry symmetry operations: always pymatgen's reader
    else:
        assert used == len(texts)


def _nacl() -> str:
    return (SAMPLES / "NaCl.cif").read_text()


def _row(cif: str, label: str) -> str:
    return next(line for line in cif.splitlines() if line.split()[1:2] == [label])


@pytest.mark.parametrize("edit, why", [
    (lambda c: c.replace(_row(c, "Na1"), _row(c, "Na1")[:-1] + "0.5"), "partial occupancy"),
    (lambda c: c.replace(_row(c, "Na1"), _row(c, "Na1").replace("Na  Na1", "Na+  Na1")), "oxidation state"),
    (lambda c: c + "\ndata_second\n", "two blocks"),
    (lambda c: c.replace("'P 1'", "'F m -3 m'"), "symmetry to apply"),
    (lambda c: c.replace("  1  'x, y, z'", "  1  'x, y, z'\n  2  '-x, -y, -z'"), "two operations"),
    (lambda c: c.replace("3.98808225\n_cell_length_b", "3.988(2)\n_cell_length_b"), "uncertainty"),
    (lambda c: c.replace(" _atom_site_occupancy\n", "").replace(" 1\n", "\n"), "no occupancy column"),
    (lambda c: c.replace("Na  Na1", "Ar  Ar1"), "no electronegativity: pymatgen's sort decides"),
    (lambda c: c.replace("Na  Na1", "Na  'Na 1'"), "quoted label"),
])
def test_fast_reader_defers_on_anything_unusual(edit, why):
    assert fast_cif_cell(_nacl()) is not None
    assert fast_cif_cell(edit(_nacl())) is None, why


@pytest.mark.parametrize("edit", [
    lambda c: c.replace("0.50000000  0.50000000  0.50000000", "0.33333000  0.66667000  -0.25000000"),  # thirds, negative
    lambda c: c.replace("0.00000000  0.00000000  0.00000000", "1.00000000  0.00000000  -0.00000000"),  # on the boundary
    lambda c: c.replace(" _symmetry_equiv_pos_site_id\n", "").replace("  1  'x, y, z'", "  'x, y, z'"),  # ops without ids
    lambda c: c.replace("_cell_length_a   ", "_cell_length_a\t"),  # tab between name and value
    lambda c: c.replace("data_NaCl", "data_Na(Cl)"),  # parentheses outside numbers
])
def test_fast_reader_handles_harmless_variants_exactly(edit):
    assert fast_cif_cell(edit(_nacl())) is not None and _same(edit(_nacl()))
