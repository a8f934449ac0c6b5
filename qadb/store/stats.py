"""A summary of what the store holds."""

from __future__ import annotations

from collections import Counter

from qadb.store.documents import ALL_DOCUMENTS, LabelDoc, StructureDoc


def summary() -> dict:
    """Counts per collection, labels per fidelity and property, structures per chemsys size."""
    counts = {d._get_collection_name(): d._get_collection().count_documents({}) for d in ALL_DOCUMENTS}
    by_fidelity: Counter = Counter()
    for lab in LabelDoc._get_collection().find({}, {"fidelity": 1, "property": 1, "conflict": 1}):
        by_fidelity[(lab["fidelity"], lab["property"])] += 1
    conflicts = LabelDoc._get_collection().count_documents({"conflict": True})
    sizes: Counter = Counter()
    origins: Counter = Counter()
    for doc in StructureDoc._get_collection().find({}, {"nelements": 1, "origin.dataset": 1, "origin.kind": 1}):
        sizes[doc["nelements"]] += 1
        origins[(doc.get("origin") or {}).get("dataset") or (doc.get("origin") or {}).get("kind")] += 1
    return {
        "collections": counts,
        "labels": [{"fidelity": f, "property": p, "count": n} for (f, p), n in sorted(by_fidelity.items())],
        "conflicting_labels": conflicts,
        "structures_by_nelements": dict(sorted(sizes.items())),
        "structures_by_origin": dict(sorted(origins.items(), key=lambda kv: -kv[1])),
    }
