"""Query planning on indexes: the embedded store's SQL indexes (`qadb.store.sqlindex`) give the
same documents as the engine's own evaluation, and as the filters' meaning computed by hand, on
both backends; they stay current whichever way documents are written, updated or deleted."""

from __future__ import annotations

import sqlite3

import pytest
from pymatgen.core import Lattice, Structure

from qadb.store import Query, connect, find, ingest_records
from qadb.store import sqlindex
from qadb.store.connection import _sqlite_collection
from qadb.store.documents import LabelDoc, StructureDoc
from qadb.store.query import _find_indexed
from qadb.store.readers import RawLabel, RawRecord
from tests.store.helpers import ingest_samples, rocksalt

PAIRS = [("Li", "O"), ("Na", "Cl"), ("K", "Cl"), ("Mg", "O"), ("Ca", "O"), ("Li", "F"), ("Na", "F"), ("Ba", "O"),
         ("Sr", "O"), ("Li", "Cl"), ("Zn", "S"), ("Li", "Br")]


def _perovskite(a: float, species=("Sr", "Ti", "O")) -> Structure:
    return Structure(Lattice.cubic(a), [species[0], species[1], species[2], species[2], species[2]],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def _populate(store) -> None:
    """~30 structures over a dozen systems, labels at two fidelities, two sources."""
    ingest_samples(store)
    recs = []
    for i, (a, b) in enumerate(PAIRS):
        labels = [RawLabel("formation_energy_per_atom", -0.4 * i - 0.3, "eV/atom", "PBE+U", code="VASP")]
        if i % 2 == 0:
            labels.append(RawLabel("band_gap", 0.5 * i, "eV", "PBE+U", code="VASP"))
        if i % 3 == 0:
            labels.append(RawLabel("band_gap", 0.5 * i + 1.1, "eV", "EXP", code="experiment"))
        recs.append(RawRecord(f"t:{i}", "dict", rocksalt(4.0 + 0.11 * i, (a, b)).as_dict(), "setA", f"a-{i}", labels))
    for i, (a, b, c) in enumerate([("Sr", "Ti", "O"), ("Ba", "Ti", "O"), ("Li", "Nb", "O"), ("K", "Nb", "O"),
                                   ("Ca", "Zr", "O"), ("Li", "Ta", "O")]):
        labels = [RawLabel("band_gap", 1.0 + 0.3 * i, "eV", "PBE+U", code="VASP")]
        recs.append(RawRecord(f"p:{i}", "dict", _perovskite(3.8 + 0.07 * i, (a, b, c)).as_dict(), "setB", f"b-{i}", labels))
    ingest_records(store, recs)


QUERIES = [
    Query(elements=["O"]),
    Query(elements=["Li", "O"]),
    Query(elements=["O", "Li"], limit=2),
    Query(elements=["O"], limit=3),
    Query(elements=["Xe"]),
    Query(elements=["Ti", "O"], nsites=(5, None)),
    Query(property="band_gap", value_range=(1.0, 3.0)),
    Query(property="band_gap", value_range=(1.0, None), limit=2),
    Query(property="band_gap", fidelity="EXP"),
    Query(fidelity="PBE+U"),
    Query(property="formation_energy_per_atom", value_range=(None, -2.0)),
    Query(elements=["O"], property="band_gap", value_range=(0.0, 2.0)),
    Query(chemsys="O-Li"),
    Query(chemsys="Li-O", property="band_gap"),
    Query(formula="SrTiO3"),
    Query(spacegroup=225),
    Query(spacegroup=225, elements=["Cl"]),
    Query(nsites=(2, 2), limit=4),
    Query(origin="setB"),
    Query(origin="dataset", elements=["Nb"]),
    Query(elements=["Li"], ids=[]),
]


def _by_hand(q: Query) -> list[tuple[str, list[str]]]:
    """What the filters mean, evaluated in Python over every stored document: (material, its
    matching labels' ids), material ids ascending."""
    labels = list(LabelDoc._get_collection().find({}))

    def label_ok(lab):
        lo, hi = q.value_range
        return ((q.property is None or lab["property"] == q.property) and (q.fidelity is None or lab["fidelity"] == q.fidelity)
                and (lo is None or lab["value"] >= lo) and (hi is None or lab["value"] <= hi))

    def label_match(lab):
        return label_ok(lab) and (not q.chemsys or lab["chemsys"] == "-".join(sorted(q.chemsys.split("-"))))

    wants_labels = q.property or q.fidelity or q.value_range != (None, None)
    with_label = {lab["structure"] for lab in labels if label_match(lab)}
    out = []
    for d in sorted(StructureDoc._get_collection().find({}), key=lambda d: d["_id"]):
        lo, hi = q.nsites
        origin = d.get("origin") or {}
        ok = (set(q.elements) <= set(d["elements"])
              and (not q.chemsys or d["chemsys"] == "-".join(sorted(q.chemsys.split("-"))))
              and (not q.formula or d["formula_pretty"] == q.formula)
              and (lo is None or d["nsites"] >= lo) and (hi is None or d["nsites"] <= hi)
              and (q.spacegroup is None or d.get("spacegroup") == q.spacegroup)
              and (not q.origin or q.origin in (origin.get("kind"), origin.get("dataset")))
              and (q.ids is None or d["_id"] in q.ids)
              and (not wants_labels or d["_id"] in with_label))
        if ok:
            out.append((d["_id"], sorted(lab["_id"] for lab in labels if lab["structure"] == d["_id"] and label_ok(lab))))
    return out[:q.limit] if q.limit else out


def _summary(docs: list[dict]) -> list[tuple[str, list[str]]]:
    return [(d["material_id"], sorted(lab["id"] for lab in d["labels"])) for d in docs]


def _indexed(store) -> bool:
    """Whether this store's queries are planned on the SQL indexes (the embedded store)."""
    table = _sqlite_collection(StructureDoc._get_collection())
    return table is not None and sqlindex.installed(table)


@pytest.fixture
def indexed_store(embedded_uri):
    """The populated embedded store, whose queries are planned on the SQL indexes (skipped where they are not)."""
    s = connect(embedded_uri)
    try:
        _populate(s)
        if not _indexed(s):
            pytest.skip("not the embedded store")
        yield s
    finally:
        s.close()


def test_results_match_the_filters_meaning_on_every_backend(store):
    _populate(store)
    assert StructureDoc.objects.count() >= 20
    nonempty = 0
    for q in QUERIES:
        got = find(q)
        assert _summary(got) == _by_hand(q), q
        nonempty += bool(got)
    assert nonempty >= len(QUERIES) - 3  # the queries exercise real matches, not empty sets


def test_index_path_gives_the_engines_documents(indexed_store):
    for q in QUERIES:
        for with_structure in (False, True):
            plan = _find_indexed(q, q.structure_filter(), q.label_filter(),
                                 {k: v for k, v in q.label_filter().items() if k in ("property", "fidelity", "value")},
                                 with_structure, StructureDoc._get_collection(), LabelDoc._get_collection())
            assert plan is not None, q  # the SQL plan answered
            # the whole documents, labels and their order included
            assert find(q, with_structure=with_structure) == find(q, with_structure=with_structure, use_index=False), q


def _both_agree(queries=QUERIES) -> None:
    for q in queries:
        assert find(q) == find(q, use_index=False), q


def test_index_follows_writes_that_bypass_the_bulk_writer(indexed_store):
    """Updates, deletes and inserts through the engine's own API (mongoengine, pymongo calls) reach
    the SQL indexes through the triggers."""
    coll = StructureDoc._get_collection()
    target = find(Query(chemsys="Li-O"))[0]["material_id"]
    coll.update_one({"_id": target}, {"$set": {"campaign": "camp-1", "nsites": 40}})
    assert [d["material_id"] for d in find(Query(campaign="camp-1"))] == [target]
    assert [d["material_id"] for d in find(Query(nsites=(40, 40)))] == [target]
    gone = [d["material_id"] for d in find(Query(chemsys="Cl-Na"))]
    assert gone
    for mid in gone:
        coll.delete_one({"_id": mid})
    LabelDoc._get_collection().delete_many({"structure": {"$in": gone}})
    assert find(Query(elements=["Na", "Cl"])) == []
    doc = dict(coll.find_one({"_id": target}))
    doc.update(_id="qadb-000000000000", chemsys="Li-O-Xe", elements=["Li", "O", "Xe"], campaign=None)
    coll.insert_one(doc)
    assert [d["material_id"] for d in find(Query(elements=["Xe", "O"]))] == ["qadb-000000000000"]
    LabelDoc._get_collection().update_many({"property": "band_gap"}, {"$set": {"value": 9.5}})
    assert len(find(Query(property="band_gap", value_range=(9.0, 10.0)))) == len(find(Query(property="band_gap")))
    _both_agree(QUERIES + [Query(campaign="camp-1"), Query(elements=["Xe"]), Query(property="band_gap", value_range=(9.0, 10.0))])


def test_repeated_upserts_of_a_queued_document_do_not_fail(indexed_store):
    """The engine writes with an upsert (INSERT ... ON CONFLICT DO UPDATE); writing the same document
    twice before any query indexes the queue used to fail on the queue's key ("UNIQUE constraint
    failed: qx_pending.k": seen in `qadb describe` and in an ingest)."""
    coll = StructureDoc._get_collection()
    target = find(Query(chemsys="Li-O"))[0]["material_id"]
    for n in (41, 42, 43):  # no query in between: the key stays queued
        coll.update_one({"_id": target}, {"$set": {"nsites": n}})
    assert [d["material_id"] for d in find(Query(nsites=(43, 43)))] == [target]
    assert find(Query(nsites=(41, 42))) == []


def test_store_made_before_the_indexes_is_indexed_on_first_use(embedded_uri):
    s = connect(embedded_uri)
    try:
        _populate(s)
        if not _indexed(s):
            pytest.skip("not the embedded store")
        expected = {repr(q): _summary(find(q, use_index=False)) for q in QUERIES}
        for coll in (StructureDoc._get_collection(), LabelDoc._get_collection()):
            conn = _sqlite_collection(coll)._connection
            with conn:
                for (name, kind) in conn.execute("SELECT name, type FROM sqlite_master WHERE name LIKE 'qx_%' AND type IN ('table', 'trigger')").fetchall():
                    conn.execute(f"DROP {kind.upper()} {name}")
            assert not sqlindex.installed(_sqlite_collection(coll))
    finally:
        s.close()
    r = connect(embedded_uri, read_only=True)  # a reader installs and fills them
    try:
        assert {repr(q): _summary(find(q)) for q in QUERIES} == expected
        assert _indexed(r)
        rows = _sqlite_collection(StructureDoc._get_collection())._connection.execute("SELECT count(*) FROM qx_row").fetchone()[0]
        assert rows == StructureDoc.objects.count()
    finally:
        r.close()


def test_reader_falls_back_to_the_engine_when_the_index_cannot_be_written(indexed_store):
    expected = [_summary(find(q)) for q in QUERIES]
    # another process's pending writes, on a file this reader may not change
    table = _sqlite_collection(StructureDoc._get_collection())
    with table._connection:
        table._connection.execute("INSERT OR IGNORE INTO qx_pending SELECT _id FROM documents")
    blocker = sqlite3.connect(table._path, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        table._connection.execute("PRAGMA busy_timeout = 0")
        assert not sqlindex.ready(table)
        assert [_summary(find(q)) for q in QUERIES] == expected
    finally:
        blocker.rollback()
        blocker.close()
    assert sqlindex.ready(table)
