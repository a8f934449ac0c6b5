"""Querying the store: structures filtered by composition, symmetry, origin and label values.

Structure-level filters go to the `structures` collection; label filters (fidelity, property
range) go to `labels` and are joined by structure id. On the embedded store both are planned on
the SQL indexes of `qadb.store.sqlindex` (elements, label value ranges and every other filter, in
one statement), and only the documents returned are read; on a server the server's indexes plan
the same filters.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from pymatgen.core import Composition

from qadb import fidelity as fid
from qadb.errors import InputError
from qadb.store import properties, sqlindex
from qadb.store.connection import _sqlite_collection
from qadb.store.documents import LabelDoc, StructureDoc

@dataclass
class Query:
    """Filters; every one is optional and they combine with AND."""

    elements: list[str] = field(default_factory=list)  # all of these elements present
    chemsys: str | None = None  # exactly this system, e.g. "Li-O-Fe" (any order)
    formula: str | None = None  # reduced formula, e.g. "LiFePO4"
    nsites: tuple[int | None, int | None] = (None, None)
    spacegroup: int | None = None
    origin: str | None = None  # origin kind or dataset name
    campaign: str | None = None
    fidelity: str | None = None
    property: str | None = None
    value_range: tuple[float | None, float | None] = (None, None)
    ids: list[str] | None = None
    limit: int | None = None

    def structure_filter(self) -> dict:
        f: dict[str, Any] = {}
        if self.chemsys:
            f["chemsys"] = "-".join(sorted(e.strip() for e in self.chemsys.split("-")))
        if self.formula:
            try:
                f["formula_pretty"] = Composition(self.formula).reduced_formula
            except Exception:
                raise InputError(f"cannot read formula {self.formula!r}") from None
        if self.elements:
            f["elements"] = {"$all": sorted(self.elements)}
        lo, hi = self.nsites
        if lo is not None or hi is not None:
            f["nsites"] = {k: v for k, v in (("$gte", lo), ("$lte", hi)) if v is not None}
        if self.spacegroup is not None:
            f["spacegroup"] = int(self.spacegroup)
        if self.origin:
            f["origin.kind" if self.origin in ("dataset", "file", "generated", "relaxed", "computed", "manual") else "origin.dataset"] = self.origin
        if self.campaign:
            f["campaign"] = self.campaign
        if self.ids is not None:
            f["_id"] = {"$in": list(self.ids)}
        return f

    def label_filter(self) -> dict:
        f: dict[str, Any] = {}
        if self.property:
            properties.get(self.property)
            f["property"] = self.property
        if self.fidelity:
            f["fidelity"] = fid.canonical(self.fidelity)
        lo, hi = self.value_range
        if lo is not None or hi is not None:
            if not self.property:
                raise InputError("a value range needs --property")
            f["value"] = {k: v for k, v in (("$gte", lo), ("$lte", hi)) if v is not None}
        if self.chemsys:
            f["chemsys"] = "-".join(sorted(e.strip() for e in self.chemsys.split("-")))
        return f


def _validate_elements(elements: list[str]) -> None:
    from pymatgen.core import Element

    for el in elements:
        if not Element.is_valid_symbol(el):
            raise InputError(f"unknown element {el!r}")


def find(q: Query, *, with_structure: bool = False, use_index: bool = True) -> list[dict]:
    """Structure documents (as dicts, `_id` renamed `material_id`) matching `q`, with their labels.

    On the embedded store the SQL indexes of `qadb.store.sqlindex` plan the query (elements,
    label value ranges and every other filter), and only the documents returned are read; on a
    server, or with ``use_index=False``, the engine plans it. Both give the same documents.
    """
    _validate_elements(q.elements)
    sfilter = q.structure_filter()
    lfilter = q.label_filter()
    projection = None if with_structure else {"structure": 0, "members": 0}
    scoll, lcoll = StructureDoc._get_collection(), LabelDoc._get_collection()
    label_filter = {k: v for k, v in lfilter.items() if k in ("property", "fidelity", "value")}
    docs = _find_indexed(q, sfilter, lfilter, label_filter, with_structure, scoll, lcoll) if use_index else None
    if docs is None:
        docs = _find_engine(q, sfilter, lfilter, label_filter, projection, scoll, lcoll)
    for d in docs:
        d["material_id"] = d.pop("_id")
        for lab in d["labels"]:
            lab["id"] = lab.pop("_id")
    return docs


def _find_engine(q: Query, sfilter: dict, lfilter: dict, label_filter: dict, projection: dict | None,
                 scoll: Any, lcoll: Any) -> list[dict]:
    """The query as the engine plans it (a server's indexes; the embedded engine's hash indexes)."""
    wants_labels = any(k in lfilter for k in ("property", "fidelity", "value"))
    if wants_labels:
        labs = list(lcoll.find(lfilter, {"structure": 1}))
        ids = sorted({lab["structure"] for lab in labs})
        if "_id" in sfilter:
            ids = sorted(set(ids) & set(sfilter["_id"]["$in"]))
        sfilter["_id"] = {"$in": ids}
    cursor = scoll.find(sfilter, projection).sort("_id", 1)
    if q.limit:
        cursor = cursor.limit(q.limit)
    docs = list(cursor)
    by_id = {d["_id"]: d for d in docs}
    for d in docs:
        d["labels"] = []
    ids = list(by_id)
    for i in range(0, len(ids), 1000):
        for lab in lcoll.find({**label_filter, "structure": {"$in": ids[i:i + 1000]}}):
            by_id[lab["structure"]]["labels"].append(lab)
    return docs


def _find_indexed(q: Query, sfilter: dict, lfilter: dict, label_filter: dict, with_structure: bool,
                  scoll: Any, lcoll: Any) -> list[dict] | None:
    """The query planned on the SQL indexes of the embedded store; None where they cannot answer.

    One SQL statement over the index tables selects the matching structure keys in material-id
    order (with the limit applied there); only those documents are read, and each is checked
    against the full filter by the engine's matcher before it is returned.
    """
    st, lt = _sqlite_collection(scoll), _sqlite_collection(lcoll)
    if st is None or lt is None:
        return None
    from litemongo._vendor.mongomock.filtering import filter_applies

    if st is None or lt is None or not (sqlindex.ready(st) and sqlindex.ready(lt)):
        return None
    where, params = ["1"], []
    for col, key in (("chemsys", "chemsys"), ("formula_pretty", "formula_pretty"), ("spacegroup", "spacegroup"),
                     ("origin_kind", "origin.kind"), ("origin_dataset", "origin.dataset"), ("campaign", "campaign")):
        if key in sfilter:
            where.append(f"s.{col} = ?")
            params.append(sfilter[key])
    _range_sql("s.nsites", sfilter.get("nsites"), where, params)
    source, head = "qx_row s", []
    elements = sorted(set(q.elements))
    if elements:
        try:
            counts = dict(st._connection.execute(
                "SELECT value, (SELECT count(*) FROM qx_elem WHERE el = value) FROM json_each(?)", [json.dumps(elements)]))
        except sqlite3.Error:
            return None
        rarest = min(elements, key=lambda el: (counts.get(el, 0), el))
        # few structures hold the rarest element: walk them; many, and only the first few wanted,
        # or a chemsys / formula / id list that selects more: walk material ids in order instead
        if counts.get(rarest, 0) <= 20 * (q.limit or 10**9) and not (q.chemsys or q.formula or q.ids is not None):
            source, head = "qx_elem d CROSS JOIN qx_row s ON s.k = d.k", [rarest]
            where.insert(1, "d.el = ?")
            elements.remove(rarest)
    for el in elements:
        where.append("EXISTS (SELECT 1 FROM qx_elem e WHERE e.el = ? AND e.k = s.k)")
        params.append(el)
    if q.ids is not None:
        where.append("s.id IN (SELECT value FROM json_each(?))")
        params.append(json.dumps([str(i) for i in q.ids]))
    ldb = None
    if any(k in lfilter for k in ("property", "fidelity", "value")):
        ldb = True
        lwhere, lparams = _label_sql(lfilter)
        # a chemsys selects fewer labels than any property range: make SQLite start there
        hint = " INDEXED BY qx_row_chemsys" if "chemsys" in lfilter else ""
        where.append(f"s.id IN (SELECT l.structure FROM lx.qx_row l{hint} WHERE {lwhere})")
        params.extend(lparams)
    sql = f"SELECT s.k FROM {source} WHERE {' AND '.join(where)} ORDER BY s.id"  # nosec: fixed columns
    params = head + params
    conn = st._connection
    exclude = () if with_structure else ("structure", "members")
    docs: list[dict] = []
    want = q.limit or None
    offset = 0
    try:
        if ldb is not None:
            sqlindex.attach(st, lt)
        while True:  # a page of keys in material-id order; more only if the check dropped some
            page = want - len(docs) if want else -1  # SQLite: LIMIT -1 is no limit
            keys = [r[0] for r in conn.execute(sql + " LIMIT ? OFFSET ?", [*params, page, offset])]
            offset += len(keys)
            for _, doc in sqlindex.fetch(st, keys, exclude=exclude):
                if filter_applies(sfilter, doc):
                    doc["labels"] = []
                    docs.append(doc)
            if want is None or len(docs) >= want or len(keys) < page:
                break
    except sqlite3.Error:
        return None
    docs = docs[:want] if want else docs
    by_id = {d["_id"]: d for d in docs}
    if by_id:
        lwhere, lparams = _label_sql(label_filter)
        lkeys = [r[0] for r in lt._connection.execute(
            f"SELECT k FROM qx_row INDEXED BY qx_row_structure WHERE structure IN (SELECT value FROM json_each(?)) AND {lwhere}",  # nosec
            [json.dumps(list(by_id)), *lparams])]
        for _, lab in sqlindex.fetch(lt, lkeys, natural_order=True):
            if filter_applies(label_filter, lab) and lab.get("structure") in by_id:
                by_id[lab["structure"]]["labels"].append(lab)
    return docs


def _range_sql(column: str, spec: dict | None, where: list[str], params: list) -> None:
    """Append a {"$gte": lo, "$lte": hi} filter on `column` as SQL bounds."""
    for op, bound in (spec or {}).items():
        where.append(f"{column} {'>=' if op == '$gte' else '<='} ?")
        params.append(bound)


def _label_sql(lfilter: dict) -> tuple[str, list]:
    where, params = ["1"], []
    for key in ("property", "fidelity", "chemsys"):
        if key in lfilter:
            where.append(f"{key} = ?")
            params.append(lfilter[key])
    _range_sql("value", lfilter.get("value"), where, params)
    return " AND ".join(where), params


def to_frame(docs: list[dict]) -> pd.DataFrame:
    """One row per structure, one column per ``property@fidelity`` (mean if several labels)."""
    rows = []
    for d in docs:
        row = {"material_id": d["material_id"], **{k: d.get(k) for k in ("formula_pretty", "chemsys", "nsites", "spacegroup")}}
        row["origin"] = (d.get("origin") or {}).get("dataset") or (d.get("origin") or {}).get("kind")
        values: dict[str, list[float]] = {}
        for lab in d.get("labels", []):
            values.setdefault(f"{lab['property']}@{lab['fidelity']}", []).append(lab["value"])
        row.update({k: sum(v) / len(v) for k, v in values.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def query(**filters: Any) -> pd.DataFrame:
    """`find` with keyword filters, as a pandas DataFrame (the Python entry point)."""
    return to_frame(find(Query(**filters)))
