"""Query filters, MP-style export validated by its schema, and the export -> ingest round trip."""

import json

import pytest

from qadb.store import Query, connect, export, find, ingest_records, query, records_from_paths
from qadb.store.documents import LabelDoc, StructureDoc
from qadb.store.readers import RawLabel, RawRecord
from tests.store.helpers import ingest_samples, rocksalt


def _labelled(store):
    ingest_samples(store)
    recs = [
        RawRecord("t:1", "dict", rocksalt(5.64).as_dict(), "t", "mp-22862",
                  [RawLabel("formation_energy_per_atom", -2.10, "eV/atom", "PBE+U", code="VASP"),
                   RawLabel("formation_energy_per_atom", -2.13, "eV/atom", "EXP", code="experiment")]),
        RawRecord("t:2", "dict", rocksalt(4.21, ("Mg", "O")).as_dict(), "t", "mp-1265",
                  [RawLabel("formation_energy_per_atom", -3.05, "eV/atom", "PBE+U", code="VASP"),
                   RawLabel("band_gap", 7.8, "eV", "EXP", code="experiment", parameters={"redistribute": False})]),
    ]
    ingest_records(store, recs)


def test_filters(store):
    _labelled(store)
    assert {d["formula_pretty"] for d in find(Query(elements=["O"]))} == {"MgO", "SrTiO3", "TiO2"}
    assert [d["formula_pretty"] for d in find(Query(chemsys="O-Mg"))] == ["MgO"]
    assert [d["formula_pretty"] for d in find(Query(formula="Ti2O4"))] == ["TiO2"]
    assert {d["formula_pretty"] for d in find(Query(nsites=(5, None)))} == {"SrTiO3", "TiO2"}
    assert [d["formula_pretty"] for d in find(Query(spacegroup=227))] == ["Si"]
    hits = find(Query(property="formation_energy_per_atom", fidelity="PBE+U", value_range=(-2.5, None)))
    assert [d["formula_pretty"] for d in hits] == ["NaCl"]
    assert [lab["value"] for lab in hits[0]["labels"]] == [-2.10]  # only the matching labels ride along
    both = find(Query(chemsys="Cl-Na", property="formation_energy_per_atom"))
    assert sorted(lab["fidelity"] for lab in both[0]["labels"]) == ["EXP", "PBE+U"]
    df = query(property="formation_energy_per_atom")
    assert set(df.columns) >= {"material_id", "formation_energy_per_atom@PBE+U", "formation_energy_per_atom@EXP"}


def test_export_is_mp_style_and_leaves_out_restricted_labels(store, tmp_path):
    _labelled(store)
    payload = export(Query(chemsys="Mg-O"), tmp_path / "out.json")
    doc = payload["data"][0]
    assert doc["formula_pretty"] == "MgO" and doc["formation_energy_per_atom"] == pytest.approx(-3.05)
    assert doc["symmetry"]["number"] == 225 and doc["material_id"].startswith("qadb-")
    assert all(lab["property"] != "band_gap" for lab in doc["labels"])
    full = export(Query(chemsys="Mg-O"), include_restricted=True)
    assert any(lab["property"] == "band_gap" for lab in full["data"][0]["labels"])
    assert json.loads((tmp_path / "out.json").read_text())["meta"]["count"] == 1


def _rounded(obj):
    """Floats to 12 significant digits and booleans as 0/1: nx-27017 keeps 15 digits and turns a
    boolean written by $set into an integer, neither of which is what is under test."""
    if isinstance(obj, bool):
        return int(obj)
    if isinstance(obj, float):
        return float(f"{obj:.12g}")
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj


def _content():
    strip = ("created_at", "updated_at")
    return tuple(
        sorted(json.dumps(_rounded({k: v for k, v in d.items() if k not in strip}), sort_keys=True, default=str)
               for d in doc._get_collection().find({}))
        for doc in (StructureDoc, LabelDoc)
    )


def test_round_trip_export_ingest_reproduces_store(store, tmp_path):
    _labelled(store)
    ingest_records(store, [RawRecord("t:3", "dict", rocksalt(5.64, conventional=True).as_dict(), "t2", "icsd-1", experimental=True)])
    export(Query(), tmp_path / "all.json", include_restricted=True)
    before = _content()
    store.close()
    other = tmp_path / "copy"
    with connect(str(other)) as s2:
        ingest_records(s2, records_from_paths([tmp_path / "all.json"]))
        assert _content() == before
        again = ingest_records(s2, records_from_paths([tmp_path / "all.json"]))
        assert (again.new_structures, again.new_labels) == (0, 0), again.as_dict()
