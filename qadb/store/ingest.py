"""Ingest: records -> validated, deduplicated documents, written idempotently.

The pipeline is linear: read (``readers``) -> parse and analyse every record (worker processes)
-> decide (deduplicate against the store and the batch) -> write. Nothing is written until every
record has been parsed and checked, so with ``strict=True`` one bad row leaves the store
unchanged; with ``strict=False`` bad rows are skipped and each is reported by file and row.
Every id is derived from content (structure hash, label inputs, ingest inputs), so re-running an
ingest, or finishing one that crashed half-way, adds nothing twice.

Deduplication follows seed 000 Algorithm 3: records are grouped by reduced formula and clustered
by symmetry at 0.1 Å (moyopy's space group and the orbit sizes of each element: the `dedupe_key`,
which no origin or axis choice changes); within a
cluster a StructureMatcher fit confirms a duplicate, whose lattice is cross-checked (Δa/a > 5 %
means "not the same entry": kept apart and flagged; beyond 15 % no fit is attempted). The
representative is chosen experimental first, then lowest formation energy, then first seen.
Lookups go through primary keys and indexed equalities (aliases, `dedupe_key`), so cost grows with
the size of a symmetry cluster, not with the size of the store.

Where the time goes (docs/store.md has the measurements): the symmetry search runs once per
distinct structure, in worker processes (moyopy: 0.6 ms a cell, where spglib took 10-50 ms for a
cubic one); each distinct text is parsed once; StructureMatcher fits run per cluster in
workers, on cells reduced once, behind a lattice test that rules out half the failing fits
exactly (`_cannot_map`); documents are built as plain dicts and written in one transaction per
collection.
"""

from __future__ import annotations

import gc
import os
import time
import warnings
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from qadb import __version__, fidelity as fid
from qadb.errors import InputError
from qadb.store import properties, sqlindex
from qadb.store.connection import Store, insert_new
from qadb.store.documents import Activity, AliasDoc, LabelDoc, Member, Origin, Ref, StructureDoc, utcnow
from qadb.store.identity import Cell, Identity, SymmetryCell, analyse_cell, analyse_structure, content_hash, symmetry
from qadb.store.migrate import ensure_dedupe_keys
from qadb.store.readers import RawLabel, RawRecord, read_structure

LATTICE_TOL = 0.05  # Algorithm 3: Δa/a above this is a different entry
PARALLEL_MIN = 256  # below this many distinct texts, worker processes cost more than they save
_MATCHER = StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5, primitive_cell=True, scale=True)


@dataclass
class Analysed:
    """A record after parsing: its identity and normalised labels, or why it was rejected."""

    record: RawRecord
    identity: Identity | None = None
    labels: list[RawLabel] = field(default_factory=list)
    error: str | None = None
    known: tuple[str, str, str] | None = None  # (material, formula, chemsys) when the text was seen before
    text_key: str = ""  # the record's `text_key()`, computed once per ingest


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


def _read_and_check(fmt: str, payload: str | dict) -> tuple[Identity, SymmetryCell] | str:
    """Phase one (in a worker): one distinct payload read, checked and keyed, symmetry left for later;
    the problem as text when it is bad."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns per noble-gas site about electronegativity
        try:
            crystal = read_structure(fmt, payload)
            if isinstance(crystal, Cell):
                try:
                    return analyse_cell(crystal, with_symmetry=False)
                except InputError:  # let pymatgen's reader say what is wrong, in its words
                    crystal = read_structure(fmt, payload, fast=False)
            return analyse_structure(crystal, with_symmetry=False)
        except InputError as exc:
            return str(exc)


def default_workers() -> int:
    """Worker processes an ingest uses unless told otherwise: one per core, at most 8."""
    return min(os.cpu_count() or 1, 8)


def _start_worker() -> None:
    """A forked worker's cyclic collector leaves alone what it inherited (walking the parent's
    records would cost time and copy their pages), and runs for its own objects even when the
    parent paused it."""
    gc.freeze()
    gc.enable()


class _Workers:
    """``map`` over worker processes, or in this process when there is too little work for them."""

    def __init__(self, workers: int | None, items: int) -> None:
        self.n = workers or default_workers()
        self.pool = (ProcessPoolExecutor(max_workers=self.n, initializer=_start_worker)
                     if self.n > 1 and items >= PARALLEL_MIN else None)

    def __call__(self, fn: Callable, *args: list, chunksize: int | None = None) -> Iterable:
        if self.pool is None:
            return map(fn, *args)
        return self.pool.map(fn, *args, chunksize=chunksize or max(1, min(64, len(args[0]) // (self.n * 8))))

    def __enter__(self) -> "_Workers":
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def _known_record(record: RawRecord, known: tuple[str, str, str]) -> Analysed:
    """A record whose exact text is stored already: only its labels need checking."""
    try:
        return Analysed(record, labels=[_normalise_label(lab) for lab in record.labels], known=known)
    except InputError as exc:
        return Analysed(record, error=f"{record.where}: {exc}")


def analyse_all(records: list[RawRecord], workers: int | None = None,
                progress: Callable[[str, int, int], None] | None = None) -> list[Analysed]:
    """Parse and analyse records, in worker processes when there are many.

    Each distinct text is read once, and symmetry runs once per distinct structure (struct hash):
    an exact repeat, common where datasets overlap, shares its first occurrence's symmetry
    (under spglib the space group agreed for all 5,193 such repeats in the staged data).
    """
    first: dict[str, int] = {}
    unique: list[RawRecord] = []
    slot = []
    for rec in records:
        key = rec.text_key()
        if key not in first:
            first[key] = len(unique)
            unique.append(rec)
        slot.append(first[key])
    with _Workers(workers, len(unique)) as run:
        if progress:
            progress("parse", 0, len(unique))
        checked = []
        for res in run(_read_and_check, [u.fmt for u in unique], [u.payload for u in unique]):
            checked.append(res)
            if progress and len(checked) % 200 == 0:
                progress("parse", len(checked), len(unique))
        todo: dict[str, SymmetryCell] = {}
        for res in checked:
            if not isinstance(res, str):
                todo.setdefault(res[0].struct_hash, res[1])
        found = {}
        if progress:
            progress("symmetry", 0, len(todo))
        for h, sym in zip(todo, run(symmetry, list(todo.values()))):
            found[h] = sym
            if progress and len(found) % 200 == 0:
                progress("symmetry", len(found), len(todo))
    idents: list[Identity | str] = []
    for res in checked:
        if isinstance(res, str):
            idents.append(res)
        else:
            ident = res[0]
            ident.spacegroup, ident.spacegroup_symbol, ident.orbits = found[ident.struct_hash]
            idents.append(ident)
    out = []
    for rec, i in zip(records, slot):
        ident = idents[i]
        if isinstance(ident, str):
            out.append(Analysed(rec, error=f"{rec.where}: {ident}"))
            continue
        try:
            out.append(Analysed(rec, ident, [_normalise_label(lab) for lab in rec.labels]))
        except InputError as exc:
            out.append(Analysed(rec, error=f"{rec.where}: {exc}"))
    return out


@dataclass
class _Reduced:
    """A structure as StructureMatcher compares it, with the lattice invariants that rule a fit out cheaply."""

    structure: Structure
    volume: float
    minima: np.ndarray  # successive minima of its lattice: the sorted Niggli-reduced cell lengths
    lengths: np.ndarray  # its own cell lengths, sorted: the targets of the matcher's lattice search

    def __len__(self) -> int:
        return len(self.structure)


def _reduced(structure_dict: dict) -> _Reduced:
    """The structure StructureMatcher compares (Niggli-reduced, then primitive), as its `fit` derives it.

    `fit` repeats this reduction for both structures on every call (its cache holds 300 and
    confirms a hit with an O(n²) site comparison); a record compared against k candidates, and a
    candidate compared against many records, need it once. `_fits` passes it with
    ``skip_structure_reduction=True``, which gives `fit`'s own answer (tested).
    """
    structure = Structure.from_dict(structure_dict)
    reduced = Structure.from_sites(structure.get_reduced_structure(reduction_algo="niggli").get_primitive_structure())
    lattice = reduced.lattice
    return _Reduced(reduced, lattice.volume, np.sort(lattice.get_niggli_reduced_lattice().abc), np.sort(lattice.abc))


def _cannot_map(reduced1: _Reduced, reduced2: _Reduced) -> bool:
    """True when StructureMatcher's lattice search provably finds no mapping of 1's lattice onto 2's.

    `fit` scales the cells to one volume (L1·s and L2/s, s = (V2/V1)^(1/6)) and needs three
    independent vectors of L1·s whose lengths are each below (1 + ltol) times one of L2/s's cell
    lengths. The k-th shortest of any three independent vectors is at least the k-th successive
    minimum λk, so λk(L1)·s ≥ (1 + ltol)·ℓk(L2)/s for some k (ℓ sorted) leaves no candidate.
    About half of the fits that fail on staged data stop here, without building or copying Sites.
    The 1e-3 margin covers the Niggli reduction's own tolerance.
    """
    s_squared = (reduced2.volume / reduced1.volume) ** (1 / 3)
    return bool(np.any(reduced1.minima * s_squared > (1 + _MATCHER.ltol) * (1 + 1e-3) * reduced2.lengths))


def _fits(reduced1: _Reduced, reduced2: _Reduced) -> bool:
    if _cannot_map(reduced1, reduced2):
        return False
    return _MATCHER.fit(reduced1.structure, reduced2.structure, skip_structure_reduction=True)


@dataclass
class _Candidate:
    id: str
    volume_per_atom: float
    data: dict
    rank: tuple
    _reduced: _Reduced | None = None

    @property
    def reduced(self) -> _Reduced:
        """Built only when a same-formula, same-symmetry record needs matching against it."""
        if self._reduced is None:
            self._reduced = _reduced(self.data)
        return self._reduced


def _rank(experimental: bool, energy: float | None, order: int) -> tuple:
    """Smaller is better: experimental first, then lowest formation energy, then first seen."""
    return (0 if experimental else 1, energy if energy is not None else float("inf"), order)


def _energy(labels: list[RawLabel]) -> float | None:
    vals = [lab.value for lab in labels if lab.property == "formation_energy_per_atom" and lab.fidelity != "EXP"]
    return min(vals) if vals else None


def _lattice_mismatch(a: float, b: float) -> float:
    """Relative difference of the per-atom cell edge, (Va/Vb)^(1/3) - 1: Δa/a independent of cell choice."""
    return abs((a / b) ** (1.0 / 3.0) - 1.0)


def as_mongo(doc_cls: Any, values: dict) -> dict:
    """What ``doc_cls(**values).to_mongo()`` stores, for values already in stored form (embedded
    documents as dicts, plain numbers), without building the document.

    Building, validating and converting a mongoengine document cost more than writing it; ingest
    writes ~100k of them. Defaults are filled in and required fields and choices checked here;
    the types come from code that builds them (tests compare the result with mongoengine's).
    """
    out = {}
    for name in doc_cls._fields_ordered:
        fld = doc_cls._fields[name]
        value = values.get(name)
        if value is None and fld.default is not None:
            value = fld.default() if callable(fld.default) else fld.default
        if value is None:
            if fld.required:
                raise ValueError(f"{doc_cls.__name__}.{name} is required")
            continue
        if fld.choices and value not in fld.choices:
            raise ValueError(f"{doc_cls.__name__}.{name}={value!r} is not one of {fld.choices}")
        out[fld.db_field] = value
    return out


class _Planner:
    """Decides, record by record, whether it is new, a duplicate, or the same entry seen again."""

    def __init__(self) -> None:
        self.aliases: dict[str, tuple[str, str, str | None]] = {}
        self.new_aliases: dict[str, tuple[str, str, str | None]] = {}
        self.by_key: dict[str, list[_Candidate]] = {}
        self.new_docs: dict[str, dict] = {}
        self.updates: dict[str, dict] = defaultdict(lambda: {"members": [], "source_ids": set(), "rep": None})
        self.report = IngestReport()

    # -- lookups: aliases and symmetry clusters prefetched from the store, then this batch's ----
    def prefetch(self, keys: Iterable[str]) -> None:
        """Load every alias this batch could hit in a few primary-key queries."""
        keys = sorted(set(keys) - set(self.aliases))
        coll = AliasDoc._get_collection()
        for i in range(0, len(keys), 1000):
            for doc in coll.find({"_id": {"$in": keys[i:i + 1000]}}):
                self.aliases[doc["_id"]] = (doc["material"], doc["formula_pretty"], doc.get("chemsys"))

    def prefetch_clusters(self, keys: Iterable[str]) -> None:
        """Load the stored materials of every symmetry cluster this batch touches (indexed `$in`)."""
        keys = sorted(set(keys) - set(self.by_key))
        coll = StructureDoc._get_collection()
        for key in keys:
            self.by_key[key] = []
        for i in range(0, len(keys), 1000):
            cursor = coll.find({"dedupe_key": {"$in": keys[i:i + 1000]}},
                               {"dedupe_key": 1, "structure": 1, "volume_per_atom": 1, "experimental": 1})
            for doc in cursor:
                cands = self.by_key[doc["dedupe_key"]]
                cands.append(_Candidate(doc["_id"], doc["volume_per_atom"], doc["structure"],
                                        _rank(doc.get("experimental", False), None, -1 - len(cands))))

    def seen_text(self, rec: RawRecord, text_key: str) -> tuple[str, str, str] | None:
        """(material, formula, chemsys) if this exact text and its source id are already stored."""
        hit = self.aliases.get(text_key)
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

    def _remember(self, mid: str, ident: Identity, rec: RawRecord, text_key: str) -> None:
        keys = ("h:" + ident.struct_hash, "s:" + rec.source_id if rec.source_id else None, text_key)
        for key in keys:
            if key and key not in self.aliases:
                self.aliases[key] = (mid, ident.formula_pretty, ident.chemsys)
                self.new_aliases[key] = (mid, ident.formula_pretty, ident.chemsys)

    def _candidates(self, key: str) -> list[_Candidate]:
        """Stored and in-batch materials of one symmetry cluster."""
        if key not in self.by_key:
            self.prefetch_clusters([key])
        return self.by_key[key]

    # -- decisions ----------------------------------------------------------------------------
    def place_all(self, items: list[Analysed], origins: list[dict], workers: int | None) -> list[str]:
        """The material of every record, in order.

        Aliases (exact repeats, source ids) settle most records without any matching, and symmetry
        clusters do not interact otherwise, so the StructureMatcher work is done per cluster in
        worker processes, then replayed here in record order. A batch with restored exports is
        placed one record at a time instead: their ids are given, and later records may meet them.
        """
        if any(a.record.restore for a in items):
            return [self._known(a) if a.known else self.place(a, i, o) for i, (a, o) in enumerate(zip(items, origins))]
        plan = self._plan(items)
        decisions = self._settle_clusters(items, plan, workers)
        mids: list[str] = []
        for i, (item, origin, (how, to)) in enumerate(zip(items, origins, plan)):
            if how == "known":
                mids.append(self._known(item))
                continue
            member = _member(item, origin)
            if how != "cluster":
                mid = to if isinstance(to, str) else mids[to]
                self._count("already_present" if how == "hash" else "merged")
                self._merge(mid, item, member)
            elif decisions[i][0] is None:
                mid = item.identity.material_id
                self._new(mid, item, member, flags=decisions[i][1])
            else:
                mid = decisions[i][0]
                self._count("merged")
                self._merge(mid, item, member, better=decisions[i][2])
            mids.append(mid)
        return mids

    def _plan(self, items: list[Analysed]) -> list[tuple[str, str | int]]:
        """Pass one: per record, ("known" | "hash" | "source", the material or the earlier record
        whose material it joins) or ("cluster", itself) when matching in its cluster decides."""
        pending: dict[str, tuple[str | int, str]] = {}

        def owner(key: str, formula: str) -> str | int | None:
            hit = pending.get(key) or self.aliases.get(key)
            return hit[0] if hit and hit[1] == formula else None

        plan: list[tuple[str, str | int]] = []
        for i, item in enumerate(items):
            if item.known:
                plan.append(("known", item.known[0]))
                continue
            ident, rec = item.identity, item.record
            how, to = "cluster", i
            if (hit := owner("h:" + ident.struct_hash, ident.formula_pretty)) is not None:
                how, to = "hash", hit
            elif rec.source_id and (hit := owner("s:" + rec.source_id, ident.formula_pretty)) is not None:
                how, to = "source", hit
            for key in ("h:" + ident.struct_hash, "s:" + rec.source_id if rec.source_id else None, item.text_key):
                if key and key not in self.aliases and key not in pending:
                    pending[key] = (to, ident.formula_pretty)
            plan.append((how, to))
        return plan

    def _settle_clusters(self, items: list[Analysed], plan: list[tuple], workers: int | None) -> dict[int, tuple]:
        """Pass two: `_settle` for every record left to its cluster, the clusters spread over workers."""
        clusters: dict[str, list[int]] = defaultdict(list)
        for i, (how, _) in enumerate(plan):
            if how == "cluster":
                clusters[items[i].identity.dedupe_key].append(i)
        decisions: dict[int, tuple] = {}
        jobs: list[tuple[list[_Candidate], list[_Entry]]] = []
        owners: list[list[int]] = []
        for key, idx in clusters.items():
            cands = self._candidates(key)
            if not cands and len(idx) == 1:
                decisions[idx[0]] = (None, [], False)  # alone in its cluster: nothing to match
                continue
            jobs.append((cands, [_entry(items[i], i) for i in idx]))
            owners.append(idx)
        # largest first, one cluster per task: cluster costs differ by orders of magnitude
        order = sorted(range(len(jobs)), key=lambda j: -len(jobs[j][1]) * (len(jobs[j][0]) + len(jobs[j][1])))
        with _Workers(workers, len(jobs)) as run:
            for j, result in zip(order, run(_settle_cluster, [jobs[j] for j in order], chunksize=1)):
                decisions.update(zip(owners[j], result))
        return decisions

    def place(self, item: Analysed, order: int, origin: dict) -> str:
        """The material id of one record, decided in record order (see `place_all`)."""
        ident, rec = item.identity, item.record
        member = _member(item, origin)
        if rec.restore:
            mid = rec.restore["material_id"]
            if self._alias("h:" + ident.struct_hash, ident.formula_pretty) or mid in self.new_docs:
                self._count("already_present")
                return mid
            self._new(mid, item, member, restore=rec.restore)
            self._candidates(ident.dedupe_key).append(_Candidate(mid, ident.volume_per_atom, ident.structure, _entry(item, order).rank))
            return mid
        mid = self._alias("h:" + ident.struct_hash, ident.formula_pretty)
        if mid:
            self._count("already_present")
            self._merge(mid, item, member)
            return mid
        if rec.source_id:
            mid = self._alias("s:" + rec.source_id, ident.formula_pretty)
            if mid:
                self._count("merged")
                self._merge(mid, item, member)
                return mid
        target, flags, better = _settle(_entry(item, order), self._candidates(ident.dedupe_key))
        if target is None:
            self._new(ident.material_id, item, member, flags=flags)
            return ident.material_id
        self._count("merged")
        self._merge(target, item, member, better=better)
        return target

    def _count(self, what: str) -> None:
        setattr(self.report, what, getattr(self.report, what) + 1)

    def _known(self, item: Analysed) -> str:
        self._count("already_present")
        return item.known[0]

    def _new(self, mid: str, item: Analysed, member: dict, *, flags=(), restore=None) -> None:
        ident, rec = item.identity, item.record
        fields = dict(
            id=mid, **ident.document_fields(), source_ids=[rec.source_id] if rec.source_id else [],
            members=[member], experimental=rec.experimental, flags=sorted(flags), origin=member["origin"],
        )
        if restore:
            fields.update(_restored_fields(restore))
            StructureDoc._from_son(as_mongo(StructureDoc, fields)).validate()  # it comes from outside
        self.new_docs[mid] = fields
        self._count("new_structures")
        if flags:
            self._count("flagged")
        self._remember(mid, ident, rec, item.text_key)

    def _merge(self, mid: str, item: Analysed, member: dict, *, better: bool = False) -> None:
        """Add the record to material `mid`; `better`: it becomes the representative."""
        ident, rec = item.identity, item.record
        self._remember(mid, ident, rec, item.text_key)
        if mid in self.new_docs:
            doc = self.new_docs[mid]
            if all(m["struct_hash"] != member["struct_hash"] or m.get("source_id") != member.get("source_id") for m in doc["members"]):
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


@dataclass
class _Entry:
    """What matching within a cluster needs of one record (sent to a worker)."""

    material_id: str
    volume_per_atom: float
    structure: dict
    rank: tuple


def _entry(item: Analysed, order: int) -> _Entry:
    ident, rec = item.identity, item.record
    return _Entry(ident.material_id, ident.volume_per_atom, ident.structure, _rank(rec.experimental, _energy(item.labels), order))


def _member(item: Analysed, origin: dict) -> dict:
    ident, rec = item.identity, item.record
    return as_mongo(Member, dict(
        struct_hash=ident.struct_hash, source=rec.source, source_id=rec.source_id, spacegroup=ident.spacegroup,
        experimental=rec.experimental, volume_per_atom=ident.volume_per_atom, origin=origin,
    ))


def _settle(entry: _Entry, cands: list[_Candidate]) -> tuple[str | None, list[str], bool]:
    """Algorithm 3 within one symmetry cluster: (the candidate the record merges into, or None when
    it is new; the lattice_discrepancy flags it then carries; whether it becomes the representative).

    Candidates are tried in order; the first one StructureMatcher confirms with a per-atom cell
    edge within 5 % is the match. A confirmed one beyond 5 % is kept apart and flagged; beyond
    15 % no fit is attempted. `cands` is updated: a new record becomes a candidate, a better
    representative replaces the structure of the one it joins.
    """
    reduced = None
    flags = set()
    for cand in cands:
        mismatch = _lattice_mismatch(entry.volume_per_atom, cand.volume_per_atom)
        if mismatch > 3 * LATTICE_TOL:
            continue  # too far apart to be one entry, or to be worth flagging
        if reduced is None:
            reduced = _reduced(entry.structure)
        if len(reduced) != len(cand.reduced) or not _fits(reduced, cand.reduced):
            continue  # different primitive cells never fit (no supercells or subsets are tried)
        if mismatch > LATTICE_TOL:
            flags.add(f"lattice_discrepancy:{cand.id}")
            continue
        better = entry.rank < cand.rank
        if better:
            cand.rank, cand.data, cand._reduced = entry.rank, entry.structure, reduced
        return cand.id, [], better
    cands.append(_Candidate(entry.material_id, entry.volume_per_atom, entry.structure, entry.rank, reduced))
    return None, sorted(flags), False


def _settle_cluster(job: tuple[list[_Candidate], list[_Entry]]) -> list[tuple[str | None, list[str], bool]]:
    """`_settle` for the records of one cluster, in order (run in a worker)."""
    cands, entries = job
    return [_settle(entry, cands) for entry in entries]


def _representative(ident: Identity, experimental: bool) -> dict:
    return dict(
        structure=ident.structure, formula=ident.formula, nsites=ident.nsites, volume=ident.volume,
        volume_per_atom=ident.volume_per_atom, density=ident.density, struct_hash=ident.struct_hash,
        experimental=experimental,
    )


def _restored_fields(doc: dict) -> dict:
    """Fields of an exported document that ingest keeps as they were (round trip), in stored form."""
    out = {k: doc[k] for k in ("descriptors", "validity", "flags", "campaign", "source_ids") if k in doc}
    if doc.get("members"):
        out["members"] = [Member(**{**m, "origin": Origin(**m["origin"]) if m.get("origin") else None}).to_mongo().to_dict()
                          for m in doc["members"]]
    if doc.get("origin"):
        out["origin"] = Origin(**doc["origin"]).to_mongo().to_dict()
    out["experimental"] = bool(doc.get("experimental", False))
    return out


def _origin_values(rec: RawRecord, activity: str) -> dict:
    kind = "dataset" if rec.source and not rec.where.startswith(("/", ".")) else "file"
    file, _, row = rec.where.partition(":")
    return dict(kind=kind, activity=activity, dataset=rec.source, file=file, row=row or None)


def _origin(rec: RawRecord, activity: str) -> dict:
    """The record's CREATE link, in stored form."""
    return as_mongo(Origin, _origin_values(rec, activity))


def _label_values(structure_id: str, chemsys: str, label: RawLabel, source_id: str | None, job: str | None) -> dict:
    """`LabelDoc` fields (but `origin`) of a label whose id depends only on what was measured, where, and the value."""
    if label.restore:
        r = label.restore
        return dict(
            id=r["id"], structure=structure_id, chemsys=chemsys, property=r["property"], value=r["value"],
            units=r["units"], uncertainty=r.get("uncertainty"), fidelity=r["fidelity"], rung=fid.rung(r["fidelity"]),
            code=r["code"], code_version=r.get("code_version"), parameters=r.get("parameters", {}), job=r.get("job"),
            input_hash=r["input_hash"], status=r.get("status", "ok"), conflict=bool(r.get("conflict")),
        )
    input_hash = content_hash({
        "source_id": source_id, "property": label.property, "fidelity": label.fidelity,
        "parameters": label.parameters, "value": round(label.value, 8), "code": label.code,
    })
    lid = content_hash([structure_id, label.property, label.fidelity, input_hash])[:24]
    return dict(
        id=lid, structure=structure_id, chemsys=chemsys, property=label.property, value=float(label.value),
        units=label.units, uncertainty=None if label.uncertainty is None else float(label.uncertainty),
        fidelity=label.fidelity, rung=fid.rung(label.fidelity), code=label.code, code_version=label.code_version,
        parameters=label.parameters, job=job, input_hash=input_hash, status="ok",
    )


def label_doc(structure_id: str, chemsys: str, label: RawLabel, source_id: str | None, origin: Origin, job: str | None = None) -> LabelDoc:
    """A label document whose id depends only on what was measured, where, and the value."""
    values = _label_values(structure_id, chemsys, label, source_id, job)
    restored = label.restore.get("origin") if label.restore else None
    return LabelDoc(**values, origin=Origin(**restored) if restored else origin)


def _label_mongo(structure_id: str, chemsys: str, label: RawLabel, source_id: str | None, origin: dict) -> dict:
    """The stored form of `label_doc`; restored labels (from outside) are validated by mongoengine."""
    if label.restore:
        doc = label_doc(structure_id, chemsys, label, source_id, Origin(**origin))
        doc.validate()
        return doc.to_mongo().to_dict()
    return as_mongo(LabelDoc, {**_label_values(structure_id, chemsys, label, source_id, None), "origin": origin})


def _insert_ignoring_duplicates(collection, docs: list[dict]) -> int:
    """Insert; documents whose id already exists (an earlier, interrupted run) are left alone."""
    return insert_new(collection, docs)


def _conflicting(labels: Iterable[dict]) -> list[dict]:
    """The labels that disagree: same structure, property, fidelity and parameters, different values."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for lab in labels:
        groups[(lab["structure"], lab["property"], lab["fidelity"], content_hash(lab.get("parameters", {})))].append(lab)
    out = []
    for (_, prop, _, _), labs in groups.items():
        values = [lab["value"] for lab in labs]
        if len(labs) > 1 and max(values) - min(values) > properties.get(prop).conflict_tol:
            out.extend(lab for lab in labs if not lab.get("conflict"))
    return out


def flag_conflicts(structure_ids: Iterable[str]) -> int:
    """Flag stored labels that disagree (see `_conflicting`); returns how many were newly flagged."""
    coll = LabelDoc._get_collection()
    ids = list(set(structure_ids))
    flagged = 0
    for i in range(0, len(ids), 500):
        cursor = coll.find({"structure": {"$in": ids[i:i + 500]}},
                           {"structure": 1, "property": 1, "fidelity": 1, "parameters": 1, "value": 1, "conflict": 1})
        todo = [lab["_id"] for lab in _conflicting(cursor)]
        if todo:
            coll.update_many({"_id": {"$in": todo}}, {"$set": {"conflict": True}})
            flagged += len(todo)
    return flagged


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Ingest builds millions of small acyclic objects (parsed records, documents); the cyclic
    collector's full passes over them cost seconds and free nothing, so it waits until the end."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


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
    with _cyclic_gc_paused():
        return _ingest(store, list(records), strict, workers, parameters, progress)


def _ingest(store: Store, records: list[RawRecord], strict: bool, workers: int | None, parameters: dict | None,
            progress: Callable[[str, int, int], None] | None) -> IngestReport:
    t0 = time.perf_counter()
    total = len(records)
    text_keys = [r.text_key() for r in records]
    planner = _Planner()
    planner.prefetch(text_keys + ["s:" + r.source_id for r in records if r.source_id])
    known = [planner.seen_text(r, k) for r, k in zip(records, text_keys)]
    parsed = iter(analyse_all([r for r, k in zip(records, known) if k is None], workers, progress))
    analysed = [_known_record(r, k) if k else next(parsed) for r, k in zip(records, known)]
    for item, key in zip(analysed, text_keys):
        item.text_key = key
    bad = [a for a in analysed if a.error]
    if bad and strict:
        more = f" (and {len(bad) - 1} more bad record(s); --skip-bad stores the rest)" if len(bad) > 1 else ""
        raise InputError(f"{bad[0].error}{more}; nothing was stored")
    activity = "ingest-" + content_hash({
        "records": [a.text_key if not a.error else a.error for a in analysed],
        "labels": [[(lab.property, lab.fidelity, lab.value) for lab in a.labels] for a in analysed],
        "sources": [(a.record.source, a.record.source_id) for a in analysed],
    })[:20]
    good = [a for a in analysed if not a.error]
    ensure_dedupe_keys(store.db, progress)  # a store from an older qadb: its keys first follow today's rule
    planner.prefetch("h:" + a.identity.struct_hash for a in good if a.identity)
    planner.prefetch_clusters(a.identity.dedupe_key for a in good if a.identity)
    planner.report.records = total
    planner.report.skipped = [a.error for a in bad]
    labels: dict[str, dict] = {}
    touched: set[str] = set()
    labelled_once: set[str] = set()  # new materials that one labelled record of this batch reached so far
    if progress:
        progress("dedupe", 0, total)
    origins = [_origin(item.record, activity) for item in good]
    for item, origin, mid in zip(good, origins, planner.place_all(good, origins, workers)):
        chemsys = item.known[2] if item.known else item.identity.chemsys
        for lab in item.labels:
            doc = _label_mongo(mid, chemsys, lab, item.record.source_id, origin)
            labels.setdefault(doc["_id"], doc)
        if not item.labels:
            continue
        # labels can disagree where two records reach one material: a stored one, one with
        # several members, or one reached twice by the same representation (an exact repeat
        # adds no member but brings its own labels)
        if mid not in planner.new_docs or len(planner.new_docs[mid]["members"]) > 1 or mid in labelled_once:
            touched.add(mid)
        labelled_once.add(mid)
    report = planner.report
    if progress:
        progress("write", 0, total)
    resumed = _write_structures(planner, activity, parameters or {}, records) < len(planner.new_docs)
    # every label of a material this batch created is in `labels`, so their conflicts are found
    # before writing; stored materials (or a resumed run's) need what the store holds
    fresh = set() if resumed else touched & planner.new_docs.keys()
    in_batch = _conflicting(lab for lab in labels.values() if lab["structure"] in fresh)
    for lab in in_batch:
        lab["conflict"] = True
    report.new_labels = insert_new(LabelDoc._get_collection(), list(labels.values()))
    Activity.objects(id=activity).update_one(set__status="completed", set__ended_at=utcnow())
    report.conflicts = len(in_batch) + flag_conflicts(touched - fresh)
    # merged materials and flagged labels were updated in place: index them now, not at the next query
    sqlindex.sync_store([StructureDoc._get_collection(), LabelDoc._get_collection()])
    report.activity = activity
    report.seconds = time.perf_counter() - t0
    Activity.objects(id=activity).update_one(set__summary=report.as_dict())
    return report


def _write_structures(planner: _Planner, activity: str, parameters: dict, records: list[RawRecord]) -> int:
    """Write the planned structures, then their aliases (labels come last, so a rerun after a crash
    finds what is missing); returns how many structure documents were new."""
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
    now = utcnow()
    coll = StructureDoc._get_collection()
    created = insert_new(coll, [as_mongo(StructureDoc, {**fields, "created_at": now, "updated_at": now})
                                for fields in planner.new_docs.values()])
    insert_new(AliasDoc._get_collection(), [{"_id": k, "material": m, "formula_pretty": f, "chemsys": c}
                                            for k, (m, f, c) in planner.new_aliases.items()])
    mids = sorted(planner.updates)
    current: dict[str, list[dict]] = {}
    for i in range(0, len(mids), 1000):
        for doc in coll.find({"_id": {"$in": mids[i:i + 1000]}}, {"members": 1}):
            current[doc["_id"]] = doc.get("members", [])
    for mid in mids:
        upd = planner.updates[mid]
        change: dict = {"$set": {"updated_at": now}}
        # read-modify-$set rather than $push: one writer per embedded store, and nx-27017
        # turns sub-documents pushed with $each into strings
        stored = current.get(mid, [])
        existing = {(m.get("struct_hash"), m.get("source_id")) for m in stored}
        members = [m for m in upd["members"] if (m["struct_hash"], m.get("source_id")) not in existing]
        if members:
            change["$set"]["members"] = stored + members
        if upd["source_ids"]:
            change["$addToSet"] = {"source_ids": {"$each": sorted(upd["source_ids"])}}
        if upd["rep"]:
            change["$set"].update(upd["rep"])
        if len(change) > 1 or upd["rep"]:
            coll.update_one({"_id": mid}, change)
    return created
