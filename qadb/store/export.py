"""Export to Materials Project-style JSON (emmet field names where they apply), and back.

The export carries every label with its provenance, so `qadb ingest` of an export into an empty
store reproduces the same documents (same material ids, same label ids). Labels whose source
forbids redistribution (``parameters.redistribute == False``, e.g. the FERE set) are left out
unless asked for, and the store URI is written without credentials.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import jsonschema

from qadb import __version__
from qadb.errors import InputError
from qadb.store.query import Query, find
from qadb.store.schemas import export_schema

SUMMARY_FIDELITY = "PBE+U"


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, _dt.datetime):
        return obj.isoformat()
    if hasattr(obj, "binary") or type(obj).__name__ == "ObjectId":
        return str(obj)
    return obj


def _summary_value(labels: list[dict], prop: str, fidelity: str) -> float | None:
    vals = [lab["value"] for lab in labels if lab["property"] == prop and lab["fidelity"] == fidelity and lab.get("status", "ok") == "ok"]
    return sum(vals) / len(vals) if vals else None


def to_mp_doc(doc: dict, *, summary_fidelity: str = SUMMARY_FIDELITY, include_restricted: bool = False) -> dict:
    """One stored structure as an MP-style material document."""
    labels = [lab for lab in doc.get("labels", []) if include_restricted or (lab.get("parameters") or {}).get("redistribute", True)]
    out = {
        "material_id": doc["material_id"],
        "structure": doc["structure"],
        "formula_pretty": doc["formula_pretty"],
        "formula": doc.get("formula"),
        "chemsys": doc["chemsys"],
        "elements": doc["elements"],
        "nelements": doc.get("nelements"),
        "nsites": doc["nsites"],
        "symmetry": {"number": doc.get("spacegroup"), "symbol": doc.get("spacegroup_symbol")},
        "volume": doc.get("volume"),
        "density": doc.get("density"),
        "formation_energy_per_atom": _summary_value(labels, "formation_energy_per_atom", summary_fidelity),
        "energy_above_hull": _summary_value(labels, "energy_above_hull", summary_fidelity),
        "band_gap": _summary_value(labels, "band_gap", summary_fidelity),
        "summary_fidelity": summary_fidelity,
        "origins": [{"name": m.get("source"), "task_id": m.get("source_id")} for m in doc.get("members", [])],
        "source_ids": doc.get("source_ids", []),
        "members": doc.get("members", []),
        "origin": doc.get("origin"),
        "experimental": bool(doc.get("experimental", False)),
        "flags": doc.get("flags", []),
        "descriptors": doc.get("descriptors", {}),
        "validity": doc.get("validity", {}),
        "campaign": doc.get("campaign"),
        "labels": labels,
        "last_updated": doc.get("updated_at"),
    }
    return _jsonable(out)


def export(q: Query, path: Path | None = None, *, summary_fidelity: str = SUMMARY_FIDELITY,
           include_restricted: bool = False, store_uri: str = "") -> dict:
    """Export the structures matching `q`; validated against ``schemas/export.schema.json``."""
    docs = find(q, with_structure=True)
    payload = {
        "meta": {
            "qadb_version": __version__,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "count": len(docs),
            "store": store_uri,
            "query": {k: v for k, v in q.__dict__.items() if v not in (None, [], (None, None))},
            "summary_fidelity": summary_fidelity,
            "restricted_labels_included": include_restricted,
        },
        "data": [to_mp_doc(d, summary_fidelity=summary_fidelity, include_restricted=include_restricted) for d in docs],
    }
    try:
        jsonschema.validate(payload, export_schema())
    except jsonschema.ValidationError as exc:
        raise InputError(f"export does not match its schema at {'/'.join(map(str, exc.absolute_path))}: {exc.message}") from None
    if path is not None:
        tmp = Path(str(path) + ".part")
        tmp.write_text(json.dumps(payload, indent=1))
        tmp.replace(path)
    return payload
