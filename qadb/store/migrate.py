"""Bringing a store written by an older qadb up to the current deduplication key.

Deduplication only compares structures that share a `dedupe_key`, so a store whose keys were
computed by an older rule would never be matched against new records of the same crystal. The
store remembers the rule its keys follow (one document in ``qadb_meta``); before an ingest
deduplicates, `ensure_dedupe_keys` recomputes the space group, its symbol and the key of every
stored structure written under another rule, from the stored representative. The recomputation is
idempotent: a run cut short is simply run again by the next ingest.
"""

from __future__ import annotations

import warnings
from typing import Callable

from pymatgen.core import Structure

from qadb.store.documents import StructureDoc
from qadb.store.identity import analyse

# The rule `Identity.dedupe_key` follows. 1 (unnamed, before 2026-12): spglib space group + Wyckoff letters,
# which depend on the origin choice. 2: moyopy space group + orbit sizes per element.
DEDUPE_SCHEME = "moyopy-orbits-2"
META = "qadb_meta"
_META_ID = "dedupe_key"


def stored_scheme(db) -> str | None:
    """The dedupe-key rule the store's structures follow (None: never recorded, i.e. the first rule)."""
    doc = db[META].find_one({"_id": _META_ID})
    return doc.get("scheme") if doc else None


def ensure_dedupe_keys(db, progress: Callable[[str, int, int], None] | None = None) -> int:
    """Recompute the dedupe keys of a store written under an older rule; returns how many changed."""
    if stored_scheme(db) == DEDUPE_SCHEME:
        return 0
    coll = StructureDoc._get_collection()
    ids = [d["_id"] for d in coll.find({}, {"_id": 1})]
    changed = 0
    if progress and ids:
        progress("migrate keys", 0, len(ids))
    for i in range(0, len(ids), 500):
        for doc in coll.find({"_id": {"$in": ids[i:i + 500]}},
                             {"structure": 1, "dedupe_key": 1, "spacegroup": 1, "spacegroup_symbol": 1}):
            fields = _symmetry_fields(doc["structure"])
            if any(doc.get(k) != v for k, v in fields.items()):
                coll.update_one({"_id": doc["_id"]}, {"$set": fields})
                changed += 1
        if progress:
            progress("migrate keys", min(i + 500, len(ids)), len(ids))
    db[META].update_one({"_id": _META_ID}, {"$set": {"scheme": DEDUPE_SCHEME}}, upsert=True)
    return changed


def _symmetry_fields(structure: dict) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ident = analyse(Structure.from_dict(structure))
    return {"spacegroup": ident.spacegroup, "spacegroup_symbol": ident.spacegroup_symbol,
            "dedupe_key": ident.dedupe_key}
