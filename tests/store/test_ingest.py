"""Ingest on every backend: formats, idempotency, deduplication, conflicts and bad input."""

import json

import pytest
from ase.io import write as ase_write
from pymatgen.io.ase import AseAtomsAdaptor

from qadb.errors import InputError
from qadb.store import ingest_records, records_from_paths
from qadb.store.documents import AliasDoc, LabelDoc, StructureDoc
from qadb.store.readers import LabelSpec, RawLabel, RawRecord
from tests.store.helpers import SAMPLES, ingest_samples, rocksalt


def _counts():
    return StructureDoc.objects.count(), LabelDoc.objects.count()


def _rec(structure, sid, labels=(), experimental=False, source="test"):
    return RawRecord(f"test:{sid}", "dict", structure.as_dict(), source, source_id=sid, labels=list(labels), experimental=experimental)


def test_ingest_then_reingest_adds_nothing(store):
    first = ingest_samples(store)
    assert first.new_structures == 5 and _counts() == (5, 0)
    again = ingest_samples(store)
    assert again.new_structures == 0 and again.already_present == 5
    assert _counts() == (5, 0)


def test_every_file_format(store, tmp_path):
    nacl = rocksalt()
    (tmp_path / "POSCAR").write_text(nacl.to(fmt="poscar"))
    mgo = rocksalt(4.21, ("Mg", "O"))
    (tmp_path / "mgo.json").write_text(json.dumps({"material_id": "mp-1265", "structure": mgo.as_dict()}))
    kcl = rocksalt(6.29, ("K", "Cl"))
    ase_write(tmp_path / "kcl.extxyz", AseAtomsAdaptor.get_atoms(kcl), format="extxyz")
    csv = tmp_path / "rows.csv"
    csv.write_text('material_id,cif,gap\nx-1,"' + rocksalt(5.0, ("Li", "F")).to(fmt="cif").replace('"', "'") + '",13.6\n')
    recs = records_from_paths([tmp_path / "POSCAR", tmp_path / "mgo.json", tmp_path / "kcl.extxyz", csv],
                              labels=[LabelSpec.parse("gap=band_gap@EXP:eV")])
    report = ingest_records(store, recs)
    assert report.new_structures == 4 and report.new_labels == 1
    lif = StructureDoc.objects(formula_pretty="LiF").first()
    assert lif.source_ids == ["x-1"] and lif.spacegroup == 225 and lif.chemsys == "F-Li"
    lab = LabelDoc.objects(structure=lif.id).first()
    assert (lab.property, lab.fidelity, lab.value, lab.units, lab.origin.row) == ("band_gap", "EXP", 13.6, "eV", "row 2")
    assert StructureDoc.objects(formula_pretty="MgO").first().source_ids == ["mp-1265"]


def test_same_crystal_in_two_settings_is_merged(store):
    prim, conv = rocksalt(), rocksalt(conventional=True)
    report = ingest_records(store, [_rec(prim, "a"), _rec(conv, "b")])
    assert report.new_structures == 1 and report.merged == 1
    doc = StructureDoc.objects.get()
    assert sorted(doc.source_ids) == ["a", "b"] and len(doc.members) == 2
    # both representations now lead to the material through the alias table
    assert AliasDoc.objects(material=doc.id).count() == 6  # h:, s: and t: keys of each


def test_lattice_off_by_more_than_5_percent_is_kept_apart_and_flagged(store):
    report = ingest_records(store, [_rec(rocksalt(5.64), "a"), _rec(rocksalt(5.64 * 1.08), "b")])
    assert report.new_structures == 2 and report.flagged == 1
    flagged = StructureDoc.objects(source_ids="b").first()
    assert any(f.startswith("lattice_discrepancy:") for f in flagged.flags)


def test_lattice_within_tolerance_merges(store):
    report = ingest_records(store, [_rec(rocksalt(5.64), "a"), _rec(rocksalt(5.64 * 1.03), "b")])
    assert report.new_structures == 1 and report.merged == 1


def test_experimental_structure_becomes_representative(store):
    ingest_records(store, [_rec(rocksalt(5.70), "dft")])
    ingest_records(store, [_rec(rocksalt(5.64), "icsd", experimental=True)])
    doc = StructureDoc.objects.get()
    assert doc.experimental and doc.volume_per_atom == pytest.approx(5.64 ** 3 / 8, rel=1e-6)


def test_conflicting_values_are_both_kept_and_flagged(store):
    lab = lambda v: RawLabel("formation_energy_per_atom", v, "eV/atom", "PBE+U", code="VASP", parameters={"src": "x"})
    ingest_records(store, [_rec(rocksalt(), "a", [lab(-2.10)])])
    report = ingest_records(store, [_rec(rocksalt(conventional=True), "b", [lab(-2.30)])])
    labs = LabelDoc.objects(property="formation_energy_per_atom")
    assert sorted(x.value for x in labs) == [-2.30, -2.10]
    assert all(x.conflict for x in labs) and report.conflicts == 2


def test_same_value_from_two_files_is_one_label(store):
    lab = RawLabel("band_gap", 5.0, "eV", "PBE", code="VASP")
    ingest_records(store, [_rec(rocksalt(), "mp-22862", [lab], source="one.csv")])
    ingest_records(store, [_rec(rocksalt(), "mp-22862", [RawLabel("band_gap", 5.0, "eV", "PBE", code="VASP")], source="two.csv")])
    assert LabelDoc.objects.count() == 1 and not LabelDoc.objects.get().conflict


@pytest.mark.parametrize("text, problem", [
    ("data_broken\n_cell_length_a 4\nthis is not a CIF", "cannot read CIF"),
    ("data_x\n_cell_length_a 4\n_cell_length_b 4\n_cell_length_c 4\n_cell_angle_alpha 90\n_cell_angle_beta 90\n"
     "_cell_angle_gamma 90\n_symmetry_space_group_name_H-M 'P 1'\nloop_\n_atom_site_type_symbol\n_atom_site_label\n"
     "_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n_atom_site_occupancy\nXx Xx0 0 0 0 1\nNa Na0 .5 .5 .5 1\n",
     "unknown element"),
    ("data_x\n_cell_length_a 4\n_cell_length_b 4\n_cell_length_c 4\n_cell_angle_alpha 90\n_cell_angle_beta 90\n"
     "_cell_angle_gamma 90\n_symmetry_space_group_name_H-M 'P 1'\nloop_\n_atom_site_type_symbol\n_atom_site_label\n"
     "_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n_atom_site_occupancy\nNa Na0 0 0 0 0.5\nCl Cl0 .5 .5 .5 1\n",
     "partial occupancy"),
    ("data_x\n_cell_length_a 4\n_cell_length_b 4\n_cell_length_c 4\n_cell_angle_alpha 90\n_cell_angle_beta 90\n"
     "_cell_angle_gamma 90\n_symmetry_space_group_name_H-M 'P 1'\nloop_\n_atom_site_type_symbol\n_atom_site_label\n"
     "_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n_atom_site_occupancy\nNa Na0 0 0 0 1\nCl Cl0 0.02 0 0 1\n",
     "atoms overlap"),
])
def test_bad_cif_strict_leaves_store_unchanged(store, tmp_path, text, problem):
    ingest_samples(store)
    before = _counts()
    bad = tmp_path / "bad.cif"
    bad.write_text(text)
    recs = records_from_paths([*sorted(SAMPLES.glob("*.cif")), bad])
    recs[0].payload = rocksalt(5.0, ("Li", "F")).to(fmt="cif")  # a good, new record in the same batch
    with pytest.raises(InputError) as err:
        ingest_records(store, recs)
    assert problem in str(err.value) and "bad.cif" in str(err.value) and "\n" not in str(err.value)
    assert _counts() == before


def test_skip_bad_stores_the_good_rows_and_names_the_bad(store, tmp_path):
    csv = tmp_path / "rows.csv"
    good = rocksalt(5.0, ("Li", "F")).to(fmt="cif").replace('"', "'")
    csv.write_text(f'material_id,cif,ef\na,"{good}",-3.0\nb,"garbage",-1.0\nc,"{good}",-250\n')
    recs = records_from_paths([csv], labels=[LabelSpec.parse("ef=formation_energy_per_atom@PBE")])
    with pytest.raises(InputError, match="rows.csv:row 3"):
        ingest_records(store, recs)
    assert _counts() == (0, 0)
    report = ingest_records(store, recs, strict=False)
    assert report.new_structures == 1 and len(report.skipped) == 2
    assert "row 3" in report.skipped[0] and "row 4" in report.skipped[1] and "implausible" in report.skipped[1]


def test_crash_between_writes_is_finished_by_rerun(store):
    """A run that died after writing structures but before labels is completed by re-running it."""
    lab = RawLabel("band_gap", 5.0, "eV", "PBE", code="VASP")
    recs = [_rec(rocksalt(), "a", [lab])]
    ingest_records(store, recs)
    LabelDoc.objects.delete()  # what an interrupted run leaves: structure stored, label not
    report = ingest_records(store, [_rec(rocksalt(), "a", [RawLabel("band_gap", 5.0, "eV", "PBE", code="VASP")])])
    assert report.new_structures == 0 and report.new_labels == 1 and _counts() == (1, 1)


def test_two_origins_of_one_perovskite_are_merged(store):
    """Pm-3m with Sr on 1a or on 1b: Wyckoff letters differ, the crystal does not (a pair the old key missed)."""
    from tests.store.test_symmetry import _perovskite

    report = ingest_records(store, [_rec(_perovskite(), "a"), _rec(_perovskite(0.5), "b")])
    assert report.new_structures == 1 and report.merged == 1
    assert sorted(StructureDoc.objects.get().source_ids) == ["a", "b"]


def test_store_with_old_dedupe_keys_is_migrated_before_dedupe(store):
    """A store written under the Wyckoff-letter rule: its keys are recomputed, so a new setting still merges."""
    from qadb.store.migrate import DEDUPE_SCHEME, META, stored_scheme

    ingest_records(store, [_rec(rocksalt(), "a")])
    assert stored_scheme(store.db) == DEDUPE_SCHEME
    coll = StructureDoc._get_collection()
    coll.update_many({}, {"$set": {"dedupe_key": "NaCl|225|Cl:b1,Na:a1"}})  # what the old rule wrote
    store.db[META].delete_many({})
    report = ingest_records(store, [_rec(rocksalt(conventional=True), "b")])
    assert report.new_structures == 0 and report.merged == 1
    assert coll.find_one({})["dedupe_key"] == "NaCl|225|Cl:1,Na:1"
    assert stored_scheme(store.db) == DEDUPE_SCHEME
