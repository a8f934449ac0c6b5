"""SQL indexes kept next to the embedded engine's documents, for the queries it cannot plan.

The embedded engine (litemongo) stores each collection as BSON blobs in one SQLite file and plans
queries with in-process hash indexes: equality and ``$in`` on scalars. ``{"elements": {"$all":
[...]}}`` (an array field) and a label value range are not plannable, so "contains Li and O" and
"band gap between 1 and 1.8 eV" decoded and tested every document (9.3 s and 0.8 s at 44k
structures). This module keeps, inside the same SQLite file, ordinary SQLite tables with B-tree
indexes on the fields `qadb.store.query` filters on:

- ``structures``: ``qx_row`` (one row per document: id, chemsys, formula, nsites, space group,
  origin kind and dataset, campaign) and ``qx_elem`` (one row per element of a document: the
  multikey index of the ``elements`` array);
- ``labels``: ``qx_row`` (id, structure, chemsys, property, fidelity, value).

Kept current by construction, whoever writes. Plain-SQL triggers on the engine's ``documents``
table (they need no Python function, so any connection, from any process, fires them) queue the
key of every inserted or updated document in ``qx_pending`` and drop the rows of a deleted one;
`sync` indexes what is queued before a query reads the tables. qadb's own bulk writer
(`connection.insert_new`) writes the rows directly, in the same transaction as the documents.
The first use on a store made before these tables existed queues every document once.

Documents whose indexed fields are not of the plain type qadb writes (a string, a number, a list
of strings) are marked ``odd``; a query then goes the engine's way, so an odd document can never
be missed. Every document the SQL plan returns is still checked against the full filter by the
engine's own matcher.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Iterable

import bson
from bson.raw_bson import RawBSONDocument

VERSION = 2  # 2: triggers that cannot fail on a key already queued (stores at 1 get them replaced)
_CHUNK = 500

_STRUCT_COLUMNS = ("id", "chemsys", "formula_pretty", "nsites", "spacegroup", "origin_kind", "origin_dataset", "campaign")
_LABEL_COLUMNS = ("id", "structure", "chemsys", "property", "fidelity", "value")

_SCHEMA = {
    "structures": [
        "CREATE TABLE IF NOT EXISTS qx_row(k TEXT PRIMARY KEY, id, chemsys, formula_pretty, nsites, spacegroup, "
        "origin_kind, origin_dataset, campaign, odd INTEGER NOT NULL DEFAULT 0)",
        "CREATE INDEX IF NOT EXISTS qx_row_id ON qx_row(id)",
        "CREATE INDEX IF NOT EXISTS qx_row_chemsys ON qx_row(chemsys, id)",
        "CREATE INDEX IF NOT EXISTS qx_row_formula ON qx_row(formula_pretty, id)",
        "CREATE INDEX IF NOT EXISTS qx_row_spacegroup ON qx_row(spacegroup, id)",
        "CREATE INDEX IF NOT EXISTS qx_row_nsites ON qx_row(nsites)",
        "CREATE INDEX IF NOT EXISTS qx_row_origin_dataset ON qx_row(origin_dataset, id)",
        "CREATE INDEX IF NOT EXISTS qx_row_campaign ON qx_row(campaign, id)",
        "CREATE INDEX IF NOT EXISTS qx_row_odd ON qx_row(odd)",
        "CREATE TABLE IF NOT EXISTS qx_elem(el TEXT NOT NULL, k TEXT NOT NULL, PRIMARY KEY (el, k)) WITHOUT ROWID",
        "CREATE INDEX IF NOT EXISTS qx_elem_k ON qx_elem(k)",
    ],
    "labels": [
        "CREATE TABLE IF NOT EXISTS qx_row(k TEXT PRIMARY KEY, id, structure, chemsys, property, fidelity, value, "
        "odd INTEGER NOT NULL DEFAULT 0)",
        "CREATE INDEX IF NOT EXISTS qx_row_structure ON qx_row(structure)",
        "CREATE INDEX IF NOT EXISTS qx_row_property_value ON qx_row(property, value)",
        "CREATE INDEX IF NOT EXISTS qx_row_fidelity_property_value ON qx_row(fidelity, property, value)",
        "CREATE INDEX IF NOT EXISTS qx_row_chemsys ON qx_row(chemsys)",
        "CREATE INDEX IF NOT EXISTS qx_row_odd ON qx_row(odd)",
    ],
}

_COMMON = [
    "CREATE TABLE IF NOT EXISTS qx_pending(k TEXT PRIMARY KEY) WITHOUT ROWID",
    # an upsert of an existing key fires the UPDATE trigger, a fresh key the INSERT one. Not "INSERT OR IGNORE":
    # SQLite lets the firing statement's conflict policy override the trigger's, and the engine's upsert
    # (INSERT ... ON CONFLICT DO UPDATE) then made a second write of a queued key fail on qx_pending's key
    "CREATE TRIGGER IF NOT EXISTS qx_on_insert AFTER INSERT ON documents "
    "BEGIN INSERT INTO qx_pending(k) SELECT new._id WHERE NOT EXISTS (SELECT 1 FROM qx_pending WHERE k = new._id); END",
    "CREATE TRIGGER IF NOT EXISTS qx_on_update AFTER UPDATE ON documents "
    "BEGIN INSERT INTO qx_pending(k) SELECT new._id WHERE NOT EXISTS (SELECT 1 FROM qx_pending WHERE k = new._id); "
    "DELETE FROM qx_row WHERE k = old._id AND old._id != new._id; END",
    "CREATE TRIGGER IF NOT EXISTS qx_on_delete AFTER DELETE ON documents "
    "BEGIN DELETE FROM qx_row WHERE k = old._id; DELETE FROM qx_pending WHERE k = old._id; {elem} END",
    "CREATE TABLE IF NOT EXISTS qx_meta(key TEXT PRIMARY KEY, value)",
]


def _schema(kind: str) -> list[str]:
    elem = "DELETE FROM qx_elem WHERE k = old._id;" if kind == "structures" else ""
    return _SCHEMA[kind] + [s.format(elem=elem) for s in _COMMON]


def kind_of(table: Any) -> str | None:
    """"structures" / "labels" for those collections of an embedded store, else None."""
    name = getattr(getattr(table, "_path", None), "name", None)
    return name if name in _SCHEMA else None


def installed(table: Any) -> bool:
    row = table._connection.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='qx_meta'").fetchone()
    if row is None:
        return False
    row = table._connection.execute("SELECT value FROM qx_meta WHERE key='version'").fetchone()
    return bool(row) and row[0] == VERSION


def install(table: Any) -> None:
    """Create the tables and triggers (idempotent) and queue every stored document once."""
    kind = kind_of(table)
    if kind is None or installed(table):
        return
    conn = table._connection
    with table._rwlock.writer(), conn:
        for name in ("qx_on_insert", "qx_on_update", "qx_on_delete"):  # an older version's triggers
            conn.execute(f"DROP TRIGGER IF EXISTS {name}")  # nosec - fixed names
        for stmt in _schema(kind):
            conn.execute(stmt)
        conn.execute("INSERT OR IGNORE INTO qx_pending(k) SELECT _id FROM documents")  # nosec
        conn.execute("INSERT OR REPLACE INTO qx_meta VALUES ('version', ?)", (VERSION,))


def _plain_str(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _plain_num(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _get(doc: Any, key: str) -> Any:
    try:
        return doc[key]
    except KeyError:
        return None


def rows_for(kind: str, key: str, doc: Any) -> tuple[tuple, list[tuple]]:
    """(the ``qx_row`` row, the ``qx_elem`` rows) of one document (a dict or a raw BSON document)."""
    if kind == "structures":
        origin = _get(doc, "origin")
        origin_ok = origin is None or isinstance(origin, (dict, RawBSONDocument))
        okind, odata = (_get(origin, "kind"), _get(origin, "dataset")) if origin is not None and origin_ok else (None, None)
        values = [_get(doc, "_id"), _get(doc, "chemsys"), _get(doc, "formula_pretty"), _get(doc, "nsites"),
                  _get(doc, "spacegroup"), okind, odata, _get(doc, "campaign")]
        elements = _get(doc, "elements")
        elements_ok = elements is None or (isinstance(elements, list) and all(isinstance(e, str) for e in elements))
        odd = not (isinstance(values[0], str) and origin_ok and elements_ok
                   and all(map(_plain_str, values[1:3] + values[5:])) and all(map(_plain_num, values[3:5])))
        if odd:
            return (key, *[v if isinstance(v, (str, int, float)) else None for v in values], 1), []
        return (key, *values, 0), [(e, key) for e in set(elements or ())]
    values = [_get(doc, c if c != "id" else "_id") for c in _LABEL_COLUMNS]
    odd = not (isinstance(values[0], str) and all(map(_plain_str, values[1:5])) and _plain_num(values[5]))
    if odd:
        values = [v if isinstance(v, (str, int, float)) else None for v in values]
    return (key, *values, int(odd)), []


def write_rows(table: Any, kind: str, items: Iterable[tuple[str, Any]]) -> None:
    """Index (key, document) pairs; call inside the transaction that writes the documents."""
    conn = table._connection
    rows, elems, keys = [], [], []
    for key, doc in items:
        row, el = rows_for(kind, key, doc)
        rows.append(row)
        elems.extend(el)
        keys.append((key,))
    if not rows:
        return
    if kind == "structures":
        conn.executemany("DELETE FROM qx_elem WHERE k = ?", keys)
    conn.executemany(f"INSERT OR REPLACE INTO qx_row VALUES ({','.join('?' * len(rows[0]))})", rows)  # nosec
    if elems:
        conn.executemany("INSERT OR IGNORE INTO qx_elem VALUES (?, ?)", elems)
    conn.executemany("DELETE FROM qx_pending WHERE k = ?", keys)


def sync(table: Any) -> None:
    """Index every queued document (written since the last sync, by any connection)."""
    conn = table._connection
    if conn.execute("SELECT 1 FROM qx_pending LIMIT 1").fetchone() is None:
        return
    kind = kind_of(table)
    with table._rwlock.writer(), conn:
        keys = [r[0] for r in conn.execute("SELECT k FROM qx_pending")]
        for i in range(0, len(keys), _CHUNK):
            chunk = keys[i:i + _CHUNK]
            found = conn.execute(
                f"SELECT _id, doc FROM documents WHERE _id IN ({','.join('?' * len(chunk))})", chunk  # nosec
            ).fetchall()
            present = {k for k, _ in found}
            gone = [(k,) for k in chunk if k not in present]
            if gone:
                conn.executemany("DELETE FROM qx_row WHERE k = ?", gone)
                if kind == "structures":
                    conn.executemany("DELETE FROM qx_elem WHERE k = ?", gone)
                conn.executemany("DELETE FROM qx_pending WHERE k = ?", gone)
            write_rows(table, kind, ((k, RawBSONDocument(doc)) for k, doc in found))


def sync_store(collections: Iterable[Any]) -> None:
    """`sync` the SQL indexes of these engine collections (a writer calls it when it is done, so
    the next reader finds them current); a no-op on a server."""
    from qadb.store.connection import _sqlite_collection

    for coll in collections:
        table = _sqlite_collection(coll)
        if table is not None and kind_of(table) and installed(table):
            sync(table)


def attach(table: Any, other: Any) -> None:
    """Make `other`'s tables readable from `table`'s connection as ``lx`` (kept for the connection)."""
    conn = table._connection
    if getattr(table, "_qx_attached", None) is not conn:
        conn.execute("ATTACH DATABASE ? AS lx", (str(other._path),))
        table._qx_attached = conn


def ready(table: Any) -> bool:
    """Install and sync if needed; False when the tables cannot be used (e.g. a read-only file, a
    busy writer, or documents of unexpected types), and the engine should answer instead."""
    try:
        if getattr(table, "_qx_installed", None) is not table._connection:
            install(table)
            table._qx_installed = table._connection
        sync(table)
        return table._connection.execute("SELECT 1 FROM qx_row WHERE odd = 1 LIMIT 1").fetchone() is None
    except sqlite3.Error:
        try:
            table._connection.rollback()
        except sqlite3.Error:
            pass
        return False


def decode(table: Any, raw: bytes, exclude: tuple[str, ...] = ()) -> dict:
    """The stored document as the engine decodes it, less the top-level fields in `exclude`."""
    doc = table._documents._decode_doc(raw)
    for key in exclude:
        doc.pop(key, None)
    return doc


def fetch(table: Any, keys: list[str], *, natural_order: bool = False,
          exclude: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    """(key, document) for the given keys: in the order given, or in insertion order."""
    conn = table._connection
    found: dict[str, bytes] = {}
    order: list[str] = []
    for i in range(0, len(keys), _CHUNK):
        chunk = keys[i:i + _CHUNK]
        sql = f"SELECT _id, doc FROM documents WHERE _id IN ({','.join('?' * len(chunk))})"  # nosec
        if natural_order:
            sql += " ORDER BY ROWID"
            rows = conn.execute(sql, chunk).fetchall()
            order.extend(k for k, _ in rows)
            found.update(rows)
        else:
            found.update(conn.execute(sql, chunk).fetchall())
    if not natural_order:
        order = [k for k in keys if k in found]
    elif len(keys) > _CHUNK:  # chunks are each in insertion order; merge them
        rowids: dict[str, int] = {}
        for i in range(0, len(order), _CHUNK):
            chunk = order[i:i + _CHUNK]
            rowids.update(conn.execute(
                f"SELECT _id, ROWID FROM documents WHERE _id IN ({','.join('?' * len(chunk))})", chunk  # nosec
            ).fetchall())
        order.sort(key=rowids.__getitem__)
    return [(k, decode(table, found[k], exclude)) for k in order]


__all__ = ["install", "installed", "sync", "sync_store", "ready", "attach", "write_rows", "rows_for", "fetch", "kind_of"]
