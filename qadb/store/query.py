"""Querying the store: structures filtered by composition, symmetry, origin and label values.

Structure-level filters go to the `structures` collection; label filters (fidelity, property
range) go to `labels` and are joined by structure id. Whichever side is more selective is asked
first, so a chemsys + property-range query touches only that system's labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from pymatgen.core import Composition

from qadb import fidelity as fid
from qadb.errors import InputError
from qadb.store import properties
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


def find(q: Query, *, with_structure: bool = False) -> list[dict]:
    """Structure documents (as dicts, `_id` renamed `material_id`) matching `q`, with their labels."""
    _validate_elements(q.elements)
    sfilter = q.structure_filter()
    lfilter = q.label_filter()
    projection = None if with_structure else {"structure": 0, "members": 0}
    scoll, lcoll = StructureDoc._get_collection(), LabelDoc._get_collection()
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
    label_filter = {k: v for k, v in lfilter.items() if k in ("property", "fidelity", "value")}
    ids = list(by_id)
    for i in range(0, len(ids), 1000):
        for lab in lcoll.find({**label_filter, "structure": {"$in": ids[i:i + 1000]}}):
            by_id[lab["structure"]]["labels"].append(lab)
    for d in docs:
        d["material_id"] = d.pop("_id")
        for lab in d["labels"]:
            lab["id"] = lab.pop("_id")
    return docs


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
