"""Ingest: records -> validated, deduplicated documents, written idempotently.

The pipeline is linear: read (``readers``) -> parse and analyse every record (worker processes)
-> decide (deduplicate against the store and the batch) -> write. Nothing is written until every
record has been parsed and checked, so with ``strict=True`` one bad row leaves the store
unchanged; with ``strict=False`` bad rows are skipped and each is reported by file and row.
Every id is derived from content (structure hash, label inputs, ingest inputs), so re-running an
ingest, or finishing one that crashed half-way, adds nothing twice.

Deduplication follows seed 000 Algorithm 3: records are grouped by reduced formula and clustered
by spglib symmetry at 0.1 Å (space group and occupied Wyckoff sites: the `dedupe_key`); within a
cluster a StructureMatcher fit confirms a duplicate, whose lattice is cross-checked (Δa/a > 5 %
means "not the same entry": kept apart and flagged; beyond 15 % no fit is attempted). The
representative is chosen experimental first, then lowest formation energy, then first seen.
Lookups go through primary keys and indexed equalities (aliases, `dedupe_key`), so cost grows with
the size of a symmetry cluster, not with the size of the store.
"""

from __future__ import annotations

import os
import time
import warnings
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from pymongo.errors import BulkWriteError

from qadb import __version__, fidelity as fid
from qadb.errors import InputError
from qadb.store import properties
from qadb.store.connection import Store
from qadb.store.documents import Activity, AliasDoc, LabelDoc, Member, Origin, Ref, StructureDoc, utcnow
from qadb.store.identity import Identity, analyse, content_hash
from qadb.store.readers import RawLabel, RawRecord, parse

LATTICE_TOL = 0.05  # Algorithm 3: Δa/a above this is a different entry
PARALLEL_MIN = 256  # below this many records, worker processes cost more than they save
_MATCHER = StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5, primitive_cell=True, scale=True)


@dataclass
class Analysed:
    """A record after parsing: its identity and normalised labels, or why it was rejected."""

    record: RawRecord
    identity: Identity | None = None
    labels: list[RawLabel] = field(default_factory=list)
    error: str | None = None
    known: tuple[str, str, str] | None = None  # (material, formula, chemsys) when the text was seen before


@dataclass
class IngestReport:
    records: int = 0
    new_structures: int = 0
    merged: int = 0
    already_present: int = 0
    new_labels: int = 0
    conflicts: int = 0
    flagged: int = 0
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    activity: str = ""

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "skipped"} | {"skipped": len(self.skipped)}


def _normalise_label(label: RawLabel) -> RawLabel:
    label.fidelity = fid.canonical(label.fidelity)
    prop = properties.get(label.property)
    label.value = properties.normalise(label.property, label.value, label.units)
    label.units = prop.units
    return label


def _analyse_record(record: RawRecord) -> Analysed:
    try:
        structure = parse(record)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pymatgen warns per noble-gas site about electronegativity
            ident = analyse(structure)
        labels = [_normalise_label(lab) for lab in record.labels]
    except InputError as exc:
        msg = str(exc)
        return Analysed(record, error=msg if msg.startswith(record.where) else f"{record.where}: {msg}")
    return Analysed(record, ident, labels)


def _known_record(record: RawRecord, known: tuple[str, str, str]) -> Analysed:
    """A record whose exact text is stored already: only its labels need checking."""
    try:
        return Analysed(record, labels=[_normalise_label(lab) for lab in record.labels], known=known)
    except InputError as exc:
        return Analysed(record, error=f"{record.where}: {exc}")


def analyse_all(records: list[RawRecord], workers: int | None = None, progress: Callable[[int], None] | None = None) -> list[Analysed]:
    """Parse and analyse records, in worker processes when there are many."""
    workers = workers or min(os.cpu_count() or 1, 8)
    if workers <= 1 or len(records) < PARALLEL_MIN:
        out = []
        for rec in records:
            out.append(_analyse_record(rec))
            if progress:
                progress(1)
        return out
    out = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for res in pool.map(_analyse_record, records, chunksize=64):
            out.append(res)
            if progress:
                progress(1)
    return out


@dataclass
class _Candidate:
    id: str
    spacegroup: int | None
    volume_per_atom: float
    data: dict
    rank: tuple
    source_ids: set[str]
    _structure: Structure | None = None

    @property
    def structure(self) -> Structure:
        """Built only when a same-formula, same-symmetry record needs matching against it."""
        if self._structure is None:
            self._structure = Structure.from_dict(self.data)
        return self._structure


def _rank(experimental: bool, energy: float | None, order: int) -> tuple:
    """Smaller is better: experimental first, then lowest formation energy, then first seen."""
    return (0 if experimental else 1, energy if energy is not None else float("inf"), order)


def _energy(labels: list[RawLabel]) -> float | None:
    vals = [lab.value for lab in labels if lab.property == "formation_energy_per_atom" and lab.fidelity != "EXP"]
    return min(vals) if vals else None


def _lattice_mismatch(a: float, b: float) -> float:
    """Relative difference of the per-atom cell edge, (Va/Vb)^(1/3) - 1: Δa/a independent of cell choice."""
    return abs((a / b) ** (1.0 / 3.0) - 1.0)


class _Planner:
    """Decides, record by record, whether it is new, a duplicate, or the same entry seen again."""

    def __init__(self) -> None:
        self.aliases: dict[str, tuple[str, str, str | None]] = {}
        self.new_aliases: dict[str, tuple[str, str, str | None]] = {}
        self.by_key: dict[str, list[_Candidate]] = {}
        self.new_docs: dict[str, dict] = {}
        self.updates: dict[str, dict] = defaultdict(lambda: {"members": [], "source_ids": set(), "flags": set(), "rep": None})
        self.report = IngestReport()

    # -- lookups: aliases prefetched from the store, then what this batch added ---------------
    def prefetch(self, keys: Iterable[str]) -> None:
        """Load every alias this batch could hit in a few primary-key queries."""
        keys = sorted(set(keys) - set(self.aliases))
        coll = AliasDoc._get_collection()
        for i in range(0, len(keys), 1000):
            for doc in coll.find({"_id": {"$in": keys[i:i + 1000]}}):
                self.aliases[doc["_id"]] = (doc["material"], doc["formula_pretty"], doc.get("chemsys"))

    def seen_text(self, rec: RawRecord) -> tuple[str, str, str] | None:
        """(material, formula, chemsys) if this exact text and its source id are already stored."""
        hit = self.aliases.get(rec.text_key())
        if hit is None or rec.restore:
            return None
        if rec.source_id:
            src = self.aliases.get("s:" + rec.source_id)
            if src is None or src[0] != hit[0]:
                return None
        return hit

    def _alias(self, key: str, formula: str) -> str | None:
        hit = self.aliases.get(key)
        return hit[0] if hit and hit[1] == formula else None

    def _remember(self, mid: str, ident: Identity, rec: RawRecord) -> None:
        keys = ("h:" + ident.struct_hash, "s:" + rec.source_id if rec.source_id else None, rec.text_key())
        for key in keys:
            if key and key not in self.aliases:
                self.aliases[key] = (mid, ident.formula_pretty, ident.chemsys)
                self.new_aliases[key] = (mid, ident.formula_pretty, ident.chemsys)

    def _candidates(self, key: str) -> list[_Candidate]:
        """Stored and in-batch materials of one symmetry cluster (an indexed equality lookup)."""
        if key not in self.by_key:
            cands = []
            cursor = StructureDoc._get_collection().find(
                {"dedupe_key": key},
                {"structure": 1, "spacegroup": 1, "volume_per_atom": 1, "experimental": 1, "source_ids": 1},
            )
            for i, doc in enumerate(cursor):
                cands.append(_Candidate(
                    doc["_id"], doc.get("spacegroup"), doc["volume_per_atom"], doc["structure"],
                    _rank(doc.get("experimental", False), None, -1 - i), set(doc.get("source_ids", [])),
                ))
            self.by_key[key] = cands
        return self.by_key[key]

    # -- decisions ----------------------------------------------------------------------------
    def place(self, item: Analysed, order: int, activity: str) -> str:
        """The material id this record belongs to, recording the writes that follow."""
        ident, rec = item.identity, item.record
        member = Member(
            struct_hash=ident.struct_hash, source=rec.source, source_id=rec.source_id,
            spacegroup=ident.spacegroup, experimental=rec.experimental, volume_per_atom=ident.volume_per_atom,
            origin=_origin(rec, activity),
        )
        if rec.restore:
            mid = rec.restore["material_id"]
            if self._alias("h:" + ident.struct_hash, ident.formula_pretty) or mid in self.new_docs:
                self.report.already_present += 1
                return mid
            self._new(mid, item, order, member, restore=rec.restore)
            return mid
        mid = self._alias("h:" + ident.struct_hash, ident.formula_pretty)
        if mid:
            self.report.already_present += 1
            self._merge(mid, item, member, order)
            return mid
        if rec.source_id:
            mid = self._alias("s:" + rec.source_id, ident.formula_pretty)
            if mid:
                self.report.merged += 1
                self._merge(mid, item, member, order)
                return mid
        structure = None
        flags = set()
        for cand in self._candidates(ident.dedupe_key):
            if _lattice_mismatch(ident.volume_per_atom, cand.volume_per_atom) > 3 * LATTICE_TOL:
                continue  # too far apart to be one entry, or to be worth flagging
            structure = structure or Structure.from_dict(ident.structure)
            if not _MATCHER.fit(structure, cand.structure):
                continue
            if _lattice_mismatch(ident.volume_per_atom, cand.volume_per_atom) > LATTICE_TOL:
                flags.add(f"lattice_discrepancy:{cand.id}")
                continue
            self.report.merged += 1
            self._merge(cand.id, item, member, order, structure=structure, candidate=cand)
            return cand.id
        mid = ident.material_id
        self._new(mid, item, order, member, flags=flags)
        return mid

    def _new(self, mid: str, item: Analysed, order: int, member: Member, *, flags=(), restore=None) -> None:
        ident, rec = item.identity, item.record
        fields = dict(
            id=mid, **ident.document_fields(), source_ids=[rec.source_id] if rec.source_id else [],
            members=[member], experimental=rec.experimental, flags=sorted(flags), origin=member.origin,
        )
        if restore:
            fields.update(_restored_fields(restore))
        self.new_docs[mid] = fields
        self.report.new_structures += 1
        if flags:
            self.report.flagged += 1
        self._remember(mid, ident, rec)
        self._candidates(ident.dedupe_key).append(_Candidate(
            mid, ident.spacegroup, ident.volume_per_atom, ident.structure,
            _rank(rec.experimental, _energy(item.labels), order), {rec.source_id} if rec.source_id else set(),
        ))

    def _merge(self, mid: str, item: Analysed, member: Member, order: int, *, structure=None, candidate=None) -> None:
        ident, rec = item.identity, item.record
        self._remember(mid, ident, rec)
        rank = _rank(rec.experimental, _energy(item.labels), order)
        better = candidate is not None and rank < candidate.rank
        if mid in self.new_docs:
            doc = self.new_docs[mid]
            if all(m.struct_hash != member.struct_hash or m.source_id != member.source_id for m in doc["members"]):
                doc["members"].append(member)
            if rec.source_id and rec.source_id not in doc["source_ids"]:
                doc["source_ids"].append(rec.source_id)
            if better:
                doc.update(_representative(ident, rec.experimental))
        else:
            upd = self.updates[mid]
            upd["members"].append(member)
            if rec.source_id:
                upd["source_ids"].add(rec.source_id)
            if better:
                upd["rep"] = _representative(ident, rec.experimental)
        if better:
            candidate.rank, candidate.data, candidate._structure = rank, ident.structure, structure


def _representative(ident: Identity, experimental: bool) -> dict:
    return dict(
        structure=ident.structure, formula=ident.formula, nsites=ident.nsites, volume=ident.volume,
        volume_per_atom=ident.volume_per_atom, density=ident.density, struct_hash=ident.struct_hash,
        experimental=experimental,
    )


def _restored_fields(doc: dict) -> dict:
    """Fields of an exported document that ingest keeps as they were (round trip)."""
    out = {k: doc[k] for k in ("descriptors", "validity", "flags", "campaign", "source_ids") if k in doc}
    if doc.get("members"):
        out["members"] = [Member(**{**m, "origin": Origin(**m["origin"]) if m.get("origin") else None}) for m in doc["members"]]
    if doc.get("origin"):
        out["origin"] = Origin(**doc["origin"])
    out["experimental"] = bool(doc.get("experimental", False))
    return out


def _origin(rec: RawRecord, activity: str) -> Origin:
    kind = "dataset" if rec.source and not rec.where.startswith(("/", ".")) else "file"
    file, _, row = rec.where.partition(":")
    return Origin(kind=kind, activity=activity, dataset=rec.source, file=file, row=row or None)


def label_doc(structure_id: str, chemsys: str, label: RawLabel, source_id: str | None, origin: Origin, job: str | None = None) -> LabelDoc:
    """A label document whose id depends only on what was measured, where, and the value."""
    if label.restore:
        r = label.restore
        return LabelDoc(
            id=r["id"], structure=structure_id, chemsys=chemsys, property=r["property"], value=r["value"],
            units=r["units"], uncertainty=r.get("uncertainty"), fidelity=r["fidelity"], rung=fid.rung(r["fidelity"]),
            code=r["code"], code_version=r.get("code_version"), parameters=r.get("parameters", {}), job=r.get("job"),
            input_hash=r["input_hash"], status=r.get("status", "ok"), conflict=bool(r.get("conflict")),
            origin=Origin(**r["origin"]) if r.get("origin") else origin,
        )
    input_hash = content_hash({
        "source_id": source_id, "property": label.property, "fidelity": label.fidelity,
        "parameters": label.parameters, "value": round(label.value, 8), "code": label.code,
    })
    lid = content_hash([structure_id, label.property, label.fidelity, input_hash])[:24]
    return LabelDoc(
        id=lid, structure=structure_id, chemsys=chemsys, property=label.property, value=label.value,
        units=label.units, uncertainty=label.uncertainty, fidelity=label.fidelity, rung=fid.rung(label.fidelity),
        code=label.code, code_version=label.code_version, parameters=label.parameters, job=job,
        input_hash=input_hash, status="ok", origin=origin,
    )


def _insert_ignoring_duplicates(collection, docs: list[dict]) -> int:
    """Insert; documents whose id already exists (an earlier, interrupted run) are left alone."""
    if not docs:
        return 0
    try:
        return len(collection.insert_many(docs, ordered=False).inserted_ids)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(e.get("code") != 11000 for e in errors):
            raise
        return exc.details.get("nInserted", len(docs) - len(errors))


def flag_conflicts(structure_ids: Iterable[str]) -> int:
    """Flag labels that disagree: same structure, property, fidelity and parameters, different values."""
    coll = LabelDoc._get_collection()
    ids = list(set(structure_ids))
    flagged = 0
    for i in range(0, len(ids), 500):
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for lab in coll.find({"structure": {"$in": ids[i:i + 500]}}, {"structure": 1, "property": 1, "fidelity": 1, "parameters": 1, "value": 1, "conflict": 1}):
            key = (lab["structure"], lab["property"], lab["fidelity"], content_hash(lab.get("parameters", {})))
            groups[key].append(lab)
        for (_, prop, _, _), labs in groups.items():
            values = [lab["value"] for lab in labs]
            if len(labs) > 1 and max(values) - min(values) > properties.get(prop).conflict_tol:
                todo = [lab["_id"] for lab in labs if not lab.get("conflict")]
                if todo:
                    coll.update_many({"_id": {"$in": todo}}, {"$set": {"conflict": True}})
                    flagged += len(todo)
    return flagged


def ingest_records(
    store: Store,
    records: Iterable[RawRecord],
    *,
    strict: bool = True,
    workers: int | None = None,
    parameters: dict | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> IngestReport:
    """Validate, deduplicate and write `records`; see the module docstring for the guarantees."""
    store.require_writable()
    t0 = time.perf_counter()
    records = list(records)
    total = len(records)
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress:
            progress("parse", done[0], total)

    planner = _Planner()
    planner.prefetch([r.text_key() for r in records] + ["s:" + r.source_id for r in records if r.source_id])
    known = [planner.seen_text(r) for r in records]
    fresh = [r for r, k in zip(records, known) if k is None]
    parsed = iter(analyse_all(fresh, workers, tick))
    analysed = [_known_record(r, k) if k else next(parsed) for r, k in zip(records, known)]
    bad = [a for a in analysed if a.error]
    if bad and strict:
        more = f" (and {len(bad) - 1} more bad record(s); --skip-bad stores the rest)" if len(bad) > 1 else ""
        raise InputError(f"{bad[0].error}{more}; nothing was stored")
    activity = "ingest-" + content_hash({
        "records": [a.record.text_key() if not a.error else a.error for a in analysed],
        "labels": [[(lab.property, lab.fidelity, lab.value) for lab in a.labels] for a in analysed],
        "sources": [(a.record.source, a.record.source_id) for a in analysed],
    })[:20]
    planner.prefetch(k for a in analysed if a.identity for k in ("h:" + a.identity.struct_hash,))
    planner.report.records = total
    planner.report.skipped = [a.error for a in bad]
    labels: dict[str, LabelDoc] = {}
    touched: set[str] = set()
    for order, item in enumerate(a for a in analysed if not a.error):
        if item.known:
            planner.report.already_present += 1
            mid, chemsys = item.known[0], item.known[2]
        else:
            mid = planner.place(item, order, activity)
            chemsys = item.identity.chemsys
        origin = _origin(item.record, activity)
        for lab in item.labels:
            doc = label_doc(mid, chemsys, lab, item.record.source_id, origin)
            labels.setdefault(doc.id, doc)
        if item.labels and (mid not in planner.new_docs or len(planner.new_docs[mid]["members"]) > 1):
            touched.add(mid)
        if progress and order % 500 == 0:
            progress("dedupe", order, total)
    report = planner.report
    report.new_labels = _write(planner, labels, activity, parameters or {}, records)
    report.conflicts = flag_conflicts(touched)
    report.activity = activity
    report.seconds = time.perf_counter() - t0
    Activity.objects(id=activity).update_one(set__summary=report.as_dict())
    return report


def _write(planner: _Planner, labels: dict[str, LabelDoc], activity: str, parameters: dict, records: list[RawRecord]) -> int:
    """Write the planned documents; returns the number of labels that were new."""
    inputs = sorted({(r.source, r.where.partition(":")[0]) for r in records})
    Activity._get_collection().update_one(
        {"_id": activity},
        {"$setOnInsert": Activity(
            id=activity, kind="ingest", status="running", parameters=parameters,
            inputs=[Ref(collection="file", id=f, role=s) for s, f in inputs][:1000],
            code={"qadb": __version__},
        ).to_mongo().to_dict()},
        upsert=True,
    )
    docs = []
    for fields in planner.new_docs.values():
        # validate and convert everything but the (large, free-form) structure dict through the
        # document class; mongoengine's recursive conversion of that dict costs more than the write
        doc = StructureDoc(**{**fields, "structure": {"sites": []}})
        doc.validate()
        raw = doc.to_mongo().to_dict()
        raw["structure"] = fields["structure"]
        docs.append(raw)
    coll = StructureDoc._get_collection()
    for i in range(0, len(docs), 1000):
        _insert_ignoring_duplicates(coll, docs[i:i + 1000])
    aliases = [{"_id": k, "material": m, "formula_pretty": f, "chemsys": c} for k, (m, f, c) in planner.new_aliases.items()]
    for i in range(0, len(aliases), 2000):
        _insert_ignoring_duplicates(AliasDoc._get_collection(), aliases[i:i + 2000])
    now = utcnow()
    for mid, upd in planner.updates.items():
        change: dict = {"$set": {"updated_at": now}}
        # read-modify-$set rather than $push: one writer per embedded store, and nx-27017
        # turns sub-documents pushed with $each into strings
        current = (coll.find_one({"_id": mid}, {"members": 1}) or {}).get("members", [])
        existing = {(m.get("struct_hash"), m.get("source_id")) for m in current}
        members = [m.to_mongo().to_dict() for m in upd["members"]]
        members = [m for m in members if (m["struct_hash"], m.get("source_id")) not in existing]
        if members:
            change["$set"]["members"] = current + members
        if upd["source_ids"]:
            change["$addToSet"] = {"source_ids": {"$each": sorted(upd["source_ids"])}}
        if upd["rep"]:
            change["$set"].update(upd["rep"])
        if len(change) > 1 or upd["rep"]:
            coll.update_one({"_id": mid}, change)
    label_docs = []
    for lab in labels.values():
        lab.validate()
        label_docs.append(lab.to_mongo().to_dict())
    inserted = 0
    lcoll = LabelDoc._get_collection()
    for i in range(0, len(label_docs), 2000):
        inserted += _insert_ignoring_duplicates(lcoll, label_docs[i:i + 2000])
    Activity.objects(id=activity).update_one(set__status="completed", set__ended_at=utcnow())
    return inserted
