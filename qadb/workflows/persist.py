"""Writing job results: labels, derived structures and result blobs, all under deterministic ids.

Every id here is a function of what was computed (label: structure, property, fidelity and input
hash; structure: its content hash; blob: the job id), so a job re-run after a crash writes onto the
same ids and nothing is ever stored twice. Jobs call these only after the calculation has finished.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from pymatgen.core import Structure

from qadb import fidelity as fid
from qadb.drivers.results import Label
from qadb.errors import InputError
from qadb.store.blobs import put_json
from qadb.store.connection import Store
from qadb.store.documents import AliasDoc, LabelDoc, Member, Origin, Ref, StructureDoc
from qadb.store.identity import analyse, content_hash
from qadb.store.ingest import _insert_ignoring_duplicates, flag_conflicts


def plain(obj: Any) -> Any:
    """Settings (dataclasses, tuples) as plain JSON values, the form stored in records."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    return json.loads(json.dumps(obj, default=str))


def label_id(structure_id: str, prop: str, fidelity: str, input_hash: str) -> str:
    """Same scheme as ingested labels: one id per (structure, property, fidelity, inputs)."""
    return content_hash([structure_id, prop, fidelity, input_hash])[:24]


def label_docs(labels: Iterable[Label], structure_id: str, chemsys: str, job: str, parents: Sequence[str]) -> list[dict]:
    """Validated `labels` documents for computed values, each naming its code, version and parameters."""
    docs = []
    for lab in labels:
        if lab.value is None or not math.isfinite(lab.value):
            raise InputError(f"{lab.property} of {structure_id} is not a finite number ({lab.value!r})")
        doc = LabelDoc(
            id=label_id(structure_id, lab.property, lab.fidelity, lab.input_hash), structure=structure_id,
            chemsys=chemsys, property=lab.property, value=float(lab.value), units=lab.units, fidelity=lab.fidelity,
            rung=fid.rung(lab.fidelity), code=lab.code, code_version=lab.code_version, parameters=plain(lab.parameters),
            job=job, input_hash=lab.input_hash, status="ok",
            origin=Origin(kind="computed", activity=job, parents=list(parents)),
        )
        doc.validate()
        docs.append(doc.to_mongo().to_dict())
    return docs


def write_labels(docs: list[dict]) -> list[Ref]:
    """Insert label documents (ids already present are left alone) and flag disagreeing values."""
    _insert_ignoring_duplicates(LabelDoc._get_collection(), docs)
    flag_conflicts({doc["structure"] for doc in docs})
    return [Ref(collection="labels", id=doc["_id"], role=doc["property"]) for doc in docs]


def store_structure(structure: Structure, origin: Origin, flags: Sequence[str] = ()) -> str:
    """Material id of `structure`: an existing document holding exactly this cell, or a new one.

    A relaxed cell is a structure of its own (linked to its parent through `origin`); it is not
    merged into a different material by StructureMatcher here: whether it duplicates a known phase
    is the novelty check's question, not the writer's.
    """
    ident = analyse(structure)
    alias = "h:" + ident.struct_hash
    hit = AliasDoc._get_collection().find_one({"_id": alias}, {"material": 1})
    if hit:
        return hit["material"]
    mid = ident.material_id
    member = Member(struct_hash=ident.struct_hash, source=origin.kind, volume_per_atom=ident.volume_per_atom,
                    spacegroup=ident.spacegroup, origin=origin)
    doc = StructureDoc(id=mid, **{**ident.document_fields(), "structure": {"sites": []}}, members=[member],
                       flags=sorted(flags), origin=origin)
    doc.validate()
    raw = doc.to_mongo().to_dict()
    raw["structure"] = ident.structure
    _insert_ignoring_duplicates(StructureDoc._get_collection(), [raw])
    _insert_ignoring_duplicates(AliasDoc._get_collection(), [
        {"_id": alias, "material": mid, "formula_pretty": ident.formula_pretty, "chemsys": ident.chemsys}])
    return mid


def result_blob(store: Store, job: str, result: Label, extra: dict | None = None) -> Ref:
    """The full typed result (forces, stress, structures, trajectory, ...) as a GridFS JSON blob."""
    blob_id = f"{job}.result"
    put_json(store, blob_id, {"result": result.to_dict(), **(extra or {})}, job=job)
    return Ref(collection="fs", id=blob_id, role="result")
