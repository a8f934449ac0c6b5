"""Walking the provenance graph backwards: what did this document come from?"""

from __future__ import annotations

from qadb.store.documents import Activity, LabelDoc, StructureDoc

_COLLECTIONS = {"structures": StructureDoc, "labels": LabelDoc}


def lineage(doc_id: str, max_depth: int = 20) -> list[dict]:
    """Ancestors of a structure or label, nearest first: each with its origin and activity."""
    out, seen, frontier = [], set(), [doc_id]
    for _ in range(max_depth):
        nxt = []
        for did in frontier:
            if did in seen:
                continue
            seen.add(did)
            for name, doc_cls in _COLLECTIONS.items():
                doc = doc_cls._get_collection().find_one({"_id": did}, {"origin": 1})
                if doc is None:
                    continue
                origin = doc.get("origin") or {}
                act = Activity._get_collection().find_one({"_id": origin.get("activity")}) if origin.get("activity") else None
                out.append({"id": did, "collection": name, "origin": origin,
                            "activity": {k: act.get(k) for k in ("_id", "kind", "status", "parameters", "code")} if act else None})
                nxt.extend(origin.get("parents", []))
                if name == "labels":
                    nxt.append(doc_cls._get_collection().find_one({"_id": did}, {"structure": 1})["structure"])
                if act:
                    nxt.extend(ref["id"] for ref in act.get("inputs", []) if ref.get("collection") in _COLLECTIONS)
        if not nxt:
            break
        frontier = nxt
    return out
