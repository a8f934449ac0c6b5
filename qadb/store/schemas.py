"""JSON Schemas generated from the documents, and the schema of the MP-style export.

`python -m qadb.store.schemas` (or `qadb schemas`) rewrites ``schemas/``; a test regenerates
them in memory and fails when code and the checked-in files drift apart.
"""

from __future__ import annotations

import json
from pathlib import Path

import mongoengine as me

from qadb.store.documents import ALL_DOCUMENTS

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

_SCALARS = {
    me.StringField: {"type": "string"},
    me.IntField: {"type": "integer"},
    me.FloatField: {"type": "number"},
    me.BooleanField: {"type": "boolean"},
    me.DateTimeField: {"type": "string", "format": "date-time"},
    me.ObjectIdField: {"type": "string", "pattern": "^[0-9a-f]{24}$"},
    me.DictField: {"type": "object"},
}


def _field_schema(f: me.fields.BaseField) -> dict:
    if isinstance(f, (me.EmbeddedDocumentListField, me.ListField)):
        return {"type": "array", "items": _field_schema(f.field)}
    if isinstance(f, me.EmbeddedDocumentField):
        return _document_schema(f.document_type)
    for cls, schema in _SCALARS.items():
        if isinstance(f, cls):
            out = dict(schema)
            if getattr(f, "choices", None):
                out["enum"] = list(f.choices)
            return out
    raise TypeError(f"no JSON Schema mapping for {type(f).__name__}")


def _document_schema(doc: type[me.Document] | type[me.EmbeddedDocument]) -> dict:
    props, required = {}, []
    for name, f in doc._fields.items():
        key = "_id" if name == "id" and issubclass(doc, me.Document) else name
        schema = _field_schema(f)
        if not f.required and key != "_id":
            schema = {"anyOf": [schema, {"type": "null"}]}
        props[key] = schema
        if f.required or key == "_id":
            required.append(key)
    out = {"type": "object", "properties": props, "required": required, "additionalProperties": False}
    if doc.__doc__:
        out["description"] = " ".join(doc.__doc__.split())
    return out


def document_schemas() -> dict[str, dict]:
    """File name -> JSON Schema for every stored collection."""
    out = {}
    for doc in ALL_DOCUMENTS:
        name = doc._get_collection_name()
        out[f"{name}.schema.json"] = {"$schema": SCHEMA_DIALECT, "title": name, **_document_schema(doc)}
    return out


def export_schema() -> dict:
    """The MP-style export: emmet names where they apply, plus qadb's provenance."""
    from qadb.store.documents import LabelDoc, Member, Origin

    label = _document_schema(LabelDoc)
    label["properties"]["id"] = label["properties"].pop("_id")
    label["required"] = ["id" if r == "_id" else r for r in label["required"]]
    label["properties"]["created_at"] = {"anyOf": [{"type": "string"}, {"type": "null"}]}
    number_or_null = {"anyOf": [{"type": "number"}, {"type": "null"}]}
    material = {
        "type": "object",
        "required": ["material_id", "structure", "formula_pretty", "chemsys", "elements", "nsites", "labels"],
        "properties": {
            "material_id": {"type": "string", "pattern": "^qadb-[0-9a-f]{12}$"},
            "structure": {"type": "object", "required": ["lattice", "sites"]},
            "formula_pretty": {"type": "string"},
            "formula": {"type": "string"},
            "chemsys": {"type": "string"},
            "elements": {"type": "array", "items": {"type": "string"}},
            "nelements": {"type": "integer"},
            "nsites": {"type": "integer"},
            "symmetry": {"type": "object", "properties": {"number": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                                                           "symbol": {"anyOf": [{"type": "string"}, {"type": "null"}]}}},
            "volume": {"type": "number"},
            "density": {"type": "number"},
            "formation_energy_per_atom": number_or_null,
            "energy_above_hull": number_or_null,
            "band_gap": number_or_null,
            "summary_fidelity": {"type": "string"},
            "origins": {"type": "array", "items": {"type": "object"}},
            "source_ids": {"type": "array", "items": {"type": "string"}},
            "members": {"type": "array", "items": _document_schema(Member)},
            "origin": _document_schema(Origin),
            "experimental": {"type": "boolean"},
            "flags": {"type": "array", "items": {"type": "string"}},
            "descriptors": {"type": "object"},
            "validity": {"type": "object"},
            "campaign": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "labels": {"type": "array", "items": label},
            "last_updated": {"type": "string"},
        },
    }
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "qadb MP-style export",
        "type": "object",
        "required": ["meta", "data"],
        "properties": {
            "meta": {"type": "object", "required": ["qadb_version", "created_at", "count"]},
            "data": {"type": "array", "items": material},
        },
    }


def all_schemas() -> dict[str, dict]:
    return {**document_schemas(), "export.schema.json": export_schema()}


def render(schema: dict) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schema in all_schemas().items():
        path = folder / name
        path.write_text(render(schema))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write(Path(__file__).resolve().parents[2] / "schemas"):
        print(p)
