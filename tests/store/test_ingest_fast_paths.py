"""The shortcuts that make ingest fast give what the plain route gives.

Plain dicts instead of mongoengine documents, one bulk write instead of insert_many, structures
reduced once instead of per StructureMatcher call, symmetry once per distinct structure, and
worker processes: each is compared here with the route it replaces.
"""

import itertools

import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

import qadb.store.ingest as ingest
from qadb.store import connect, ingest_records, records_from_paths
from qadb.store.connection import insert_new
from qadb.store.documents import AliasDoc, LabelDoc, Member, Origin, StructureDoc
from qadb.store.readers import LabelSpec, RawLabel, RawRecord
from tests.store.helpers import SAMPLES, rocksalt


def test_as_mongo_is_what_mongoengine_stores():
    origin = dict(kind="dataset", activity="ingest-1", dataset="mp20-val", file="val.csv.gz", row="row 7")
    member = dict(struct_hash="ab", source="mp20-val", source_id="mp-1", spacegroup=225, experimental=False,
                  volume_per_atom=5.5, origin=Origin(**origin))
    fields = dict(id="qadb-1", structure={"sites": [{"label": "Na"}]}, formula="Na1 Cl1", formula_pretty="NaCl",
                  chemsys="Cl-Na", elements=["Cl", "Na"], nelements=2, nsites=2, spacegroup=225, spacegroup_symbol="Fm-3m",
                  volume=44.9, volume_per_atom=22.4, density=2.1, dedupe_key="NaCl|225|Cl:b1,Na:a1", struct_hash="ab",
                  source_ids=["mp-1"], members=[Member(**member)], experimental=False, flags=[], origin=Origin(**origin))
    stored = {**fields, "members": [{**member, "origin": ingest.as_mongo(Origin, origin)}],
              "origin": ingest.as_mongo(Origin, origin)}
    ours, theirs = ingest.as_mongo(StructureDoc, stored), StructureDoc(**fields).to_mongo().to_dict()
    assert list(ours) == list(theirs)
    assert {k: v for k, v in ours.items() if not k.endswith("_at")} == {k: v for k, v in theirs.items() if not k.endswith("_at")}
    label = RawLabel("band_gap", 1.5, "eV", "PBE+U", code="VASP", parameters={"source": "x"})
    ours = ingest._label_mongo("qadb-1", "Cl-Na", label, "mp-1", ingest.as_mongo(Origin, origin))
    theirs = ingest.label_doc("qadb-1", "Cl-Na", label, "mp-1", Origin(**origin)).to_mongo().to_dict()
    assert list(ours) == list(theirs)
    assert {k: v for k, v in ours.items() if k != "created_at"} == {k: v for k, v in theirs.items() if k != "created_at"}
    with pytest.raises(ValueError, match="kind"):
        ingest.as_mongo(Origin, {**origin, "kind": "rumour"})
    with pytest.raises(ValueError, match="required"):
        ingest.as_mongo(Origin, {"activity": "x"})


def test_insert_new_skips_stored_and_repeated_ids_and_is_queryable(store):
    coll = AliasDoc._get_collection()
    first = [{"_id": f"s:{i}", "material": f"m{i % 3}", "formula_pretty": "NaCl"} for i in range(5)]
    assert coll.find_one({"material": "m1"}) is None  # the embedded engine has built its query index now
    assert insert_new(coll, first) == 5
    again = [{"_id": "s:4", "material": "other", "formula_pretty": "X"}, {"_id": "s:9", "material": "m1", "formula_pretty": "X"},
             {"_id": "s:9", "material": "m2", "formula_pretty": "Y"}]
    assert insert_new(coll, again) == 1
    assert coll.count_documents({}) == 6
    assert coll.find_one({"_id": "s:4"})["material"] == "m1"  # a stored document is left alone
    assert sorted(d["_id"] for d in coll.find({"material": "m1"})) == ["s:1", "s:4", "s:9"]  # the index sees new ones
    assert insert_new(coll, []) == 0


def _strained(s: Structure, strain: tuple[float, float, float]) -> Structure:
    out = s.copy()
    out.lattice = Lattice(out.lattice.matrix * [[1 + x] for x in strain])
    return out


def test_reduced_once_fits_like_structure_matcher():
    nacl = rocksalt()
    variants = [rocksalt(conventional=True), rocksalt(5.64 * 1.03), rocksalt(5.64 * 1.2), rocksalt(species=("K", "Cl")),
                Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])]
    variants += [_strained(nacl, x) for x in ((0.1, 0, 0), (0.15, -0.05, 0), (0.25, 0, 0), (0.4, 0, -0.2), (0.3, 0.3, -0.3))]
    perturbed = nacl.copy()
    perturbed.perturb(0.05, min_distance=0.01, seed=1)
    ruled_out = 0
    for a, b in itertools.product([nacl, perturbed], variants + [perturbed]):
        ra, rb = ingest._reduced(a.as_dict()), ingest._reduced(b.as_dict())
        ruled_out += ingest._cannot_map(ra, rb)
        assert ingest._fits(ra, rb) == ingest._MATCHER.fit(a, b)
    assert ruled_out >= 4  # the cheap lattice rejection was exercised, and agreed with fit


def test_cheap_rejection_gives_the_same_clusters_as_plain_fits(monkeypatch, shared_data):
    """Carbon-24's crowded symmetry clusters settled with `_cannot_map` in front of every fit and
    with StructureMatcher alone: the same merges, flags and representatives."""
    rows = pd.read_csv(shared_data / "carbon_24" / "val.csv.gz", nrows=400)
    recs = [RawRecord(f"c:{i}", "cif", cif, "t", source_id=str(i)) for i, cif in enumerate(rows["cif"])]
    items = [a for a in ingest.analyse_all(recs, workers=1) if a.identity]
    clusters: dict[str, list] = {}
    for order, item in enumerate(items):
        clusters.setdefault(item.identity.dedupe_key, []).append(ingest._entry(item, order))
    crowded = [entries for entries in clusters.values() if len(entries) > 3]
    counts = {"ruled_out": 0}
    cannot_map = ingest._cannot_map

    def counting(r1, r2):
        out = cannot_map(r1, r2)
        counts["ruled_out"] += out
        return out

    monkeypatch.setattr(ingest, "_cannot_map", counting)
    fast = [ingest._settle_cluster(([], entries)) for entries in crowded]
    monkeypatch.setattr(ingest, "_cannot_map", lambda r1, r2: False)
    plain = [ingest._settle_cluster(([], entries)) for entries in crowded]
    assert fast == plain
    assert counts["ruled_out"] > 50 and sum(d[0] is not None for c in plain for d in c) > 10  # both paths were taken


def _dump(collection) -> list[dict]:
    return sorted(({k: v for k, v in d.items() if not k.endswith("_at")} for d in collection.find()), key=lambda d: d["_id"])


def test_workers_and_shortcuts_give_the_same_store(tmp_path, monkeypatch, shared_data):
    """Record by record vs by cluster, one process vs two workers, on staged rows with exact
    repeats, source-id merges, a StructureMatcher merge and a lattice discrepancy."""
    rows = pd.read_csv(shared_data / "mp_20_mattergen_cache" / "val.csv.gz", nrows=40)
    csv = tmp_path / "rows.csv"
    rows = pd.concat([rows, rows.iloc[:5]])  # the same text twice
    rows.to_csv(csv, index=False)
    recs = records_from_paths([csv], labels=[LabelSpec.parse("formation_energy_per_atom=formation_energy_per_atom@PBE+U")])
    nacl = rocksalt()
    extra = [RawRecord(f"x:{i}", "dict", s.as_dict(), "test", source_id=sid) for i, (s, sid) in enumerate([
        (nacl, "a"), (rocksalt(conventional=True), "b"), (rocksalt(5.64 * 1.08), "c"),  # match; flagged apart
        (Structure.from_dict(nacl.as_dict()), "d"),  # exact repeat of a's structure
    ])]
    monkeypatch.setattr(ingest, "PARALLEL_MIN", 1)
    dumps = []
    for workers, one_by_one in ((1, True), (1, False), (2, False)):
        if one_by_one:  # the record-by-record route that batches with restored exports take
            monkeypatch.setattr(ingest._Planner, "place_all", lambda self, items, origins, workers: [
                self._known(a) if a.known else self.place(a, i, o) for i, (a, o) in enumerate(zip(items, origins))])
        else:
            monkeypatch.undo()
            monkeypatch.setattr(ingest, "PARALLEL_MIN", 1)
        with connect(str(tmp_path / f"store{workers}{one_by_one}")) as s:
            report = ingest_records(s, recs + extra, workers=workers)
            assert (report.new_structures, report.merged, report.flagged) == (42, 1, 1)
            dumps.append([_dump(doc._get_collection()) for doc in (StructureDoc, AliasDoc, LabelDoc)])
    assert dumps[0] == dumps[1] == dumps[2]
    nacl_doc = next(d for d in dumps[0][0] if d["formula_pretty"] == "NaCl" and len(d["members"]) == 3)
    assert {m["source_id"] for m in nacl_doc["members"]} == {"a", "b", "d"}
    assert all(m["spacegroup"] == 225 for m in nacl_doc["members"])


def test_each_distinct_text_and_structure_is_analysed_once(monkeypatch):
    calls = {"read": 0, "symmetry": 0}
    read, sym = ingest._read_and_check, ingest.symmetry

    def counting_read(*a):
        calls["read"] += 1
        return read(*a)

    def counting_sym(*a):
        calls["symmetry"] += 1
        return sym(*a)

    monkeypatch.setattr(ingest, "_read_and_check", counting_read)
    monkeypatch.setattr(ingest, "symmetry", counting_sym)
    recs = records_from_paths(sorted(SAMPLES.glob("*.cif"))) * 2  # every text twice
    nacl = next(r for r in recs if "NaCl" in r.where)
    poscar = RawRecord("nacl.vasp", "poscar", Structure.from_str(nacl.payload, fmt="cif").to(fmt="poscar"), "t", source_id="p")
    out = ingest.analyse_all(recs + [poscar], workers=1)
    assert calls == {"read": 6, "symmetry": 5}  # 5 files + the POSCAR; the POSCAR is NaCl's structure again
    assert out[-1].identity.struct_hash == out[recs.index(nacl)].identity.struct_hash
    assert out[-1].identity.dedupe_key == out[recs.index(nacl)].identity.dedupe_key


def test_conflicts_within_one_batch_are_flagged_before_writing(store):
    lab = lambda v: RawLabel("formation_energy_per_atom", v, "eV/atom", "PBE+U", code="VASP", parameters={"src": "x"})
    recs = [RawRecord("t:1", "dict", rocksalt().as_dict(), "t", source_id="a", labels=[lab(-2.10)]),
            RawRecord("t:2", "dict", rocksalt(conventional=True).as_dict(), "t", source_id="b", labels=[lab(-2.30)])]
    report = ingest_records(store, recs)
    assert report.conflicts == 2 and all(x.conflict for x in LabelDoc.objects)
    # a run interrupted after writing the structure is finished, with the same flags
    AliasDoc.objects.delete()
    LabelDoc.objects.delete()
    again = ingest_records(store, recs)
    assert again.new_labels == 2 and again.conflicts == 2 and all(x.conflict for x in LabelDoc.objects)
