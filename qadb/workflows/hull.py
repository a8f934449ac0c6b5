"""Hull updates: the per-fidelity, per-chemical-system convex hull cache, refreshed as labels arrive.

A hull of system A-B-C at fidelity F is built from the ``formation_energy_per_atom`` labels (status
ok) at F of every stored structure whose elements lie inside A-B-C, the lowest value per structure.
The job id covers (chemsys, fidelity, hash of those labels and values), so refreshing a hull whose
labels did not change costs one read, and any new or changed label makes the next refresh rebuild
it. The cached hull (`HullCacheDoc`, id ``<chemsys>@<fidelity>``) holds `PhaseHull.to_dict()`; one
too large for a document goes to GridFS.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from jobflow import Maker, Response, job
from jobflow.core.reference import OnMissing
from pymatgen.core import Element

from qadb import fidelity as fid
from qadb.chem import HullEntry, PhaseHull, build_hull
from qadb.chem._hull import REF_PREFIX  # ids of the implicit elemental entries
from qadb.errors import InputError
from qadb.store.blobs import get_json, put_json
from qadb.store.connection import Store
from qadb.store.documents import HullCacheDoc, LabelDoc, Ref, StructureDoc, utcnow
from qadb.store.identity import content_hash
from qadb.workflows.context import use_store
from qadb.workflows.core import Outcome, Written, run_job

PROPERTY = "formation_energy_per_atom"
MAX_ELEMENTS = 10  # 1023 subsystems; beyond that a hull is not what the caller wants
INLINE_BYTES = 4_000_000  # larger hull data goes to GridFS (documents cap at 16 MB)


def normalise_chemsys(chemsys: str | Iterable[str]) -> str:
    """``"O-Mg"``, ``"MgO"`` lists or ``["Mg", "O"]`` → ``"Mg-O"``; unknown elements are an `InputError`."""
    parts = chemsys.replace(",", "-").split("-") if isinstance(chemsys, str) else list(chemsys)
    elements = sorted({p.strip() for p in parts if p.strip()})
    bad = [e for e in elements if not Element.is_valid_symbol(e)]
    if not elements or bad:
        raise InputError(f"chemical system {chemsys!r} is not elements joined by '-' (bad: {', '.join(bad) or 'empty'})")
    if len(elements) > MAX_ELEMENTS:
        raise InputError(f"chemical system {chemsys!r} has more than {MAX_ELEMENTS} elements")
    return "-".join(elements)


def subsystems(chemsys: str) -> list[str]:
    """Every non-empty subset of the system's elements, as chemsys strings."""
    elements = chemsys.split("-")
    return ["-".join(c) for n in range(1, len(elements) + 1) for c in itertools.combinations(elements, n)]


def cache_id(chemsys: str, fidelity: str) -> str:
    return f"{chemsys}@{fidelity}"


def hull_entries(chemsys: str, fidelity: str) -> list[HullEntry]:
    """The lowest formation energy per structure of the system and its subsystems, at one fidelity."""
    best: dict[str, dict] = {}
    query = {"property": PROPERTY, "fidelity": fidelity, "status": "ok", "chemsys": {"$in": subsystems(chemsys)}}
    for lab in LabelDoc._get_collection().find(query, {"structure": 1, "value": 1}):
        held = best.get(lab["structure"])
        if held is None or (lab["value"], lab["_id"]) < (held["value"], held["_id"]):
            best[lab["structure"]] = lab
    formulas = {d["_id"]: d["formula"] for d in StructureDoc._get_collection().find(
        {"_id": {"$in": sorted(best)}}, {"formula": 1})}
    return [HullEntry.make(sid, formulas[sid], best[sid]["value"], fidelity) for sid in sorted(best) if sid in formulas]


def load_hull(chemsys: str, fidelity: str, store: Store | str | None = None) -> PhaseHull | None:
    """The cached hull of (chemsys, fidelity), or None when it was never built (see `update_hull`)."""
    with use_store(store) as opened:
        doc = HullCacheDoc._get_collection().find_one({"_id": cache_id(normalise_chemsys(chemsys),
                                                                           fid.canonical(fidelity))})
        if doc is None:
            return None
        data = doc["data"]
        return PhaseHull.from_dict(get_json(opened, data["blob"]) if "blob" in data else data)


def cached_supersystems(chemsys: str, fidelity: str) -> list[str]:
    """Cached hulls at `fidelity` whose system contains `chemsys` (they go stale with its labels)."""
    inside = set(chemsys.split("-"))
    return sorted(d["chemsys"] for d in HullCacheDoc._get_collection().find({"fidelity": fidelity}, {"chemsys": 1})
                  if inside < set(d["chemsys"].split("-")))


@dataclass
class HullUpdateMaker(Maker):
    """Job refreshing the cached hull of one chemical system at one fidelity (a no-op when current)."""

    name: str = "hull update"
    rerun: bool = False

    def make(self, chemsys: str, fidelity: str, store_uri: str | None = None, after: Any = None) -> Any:
        """A Job on cpu workers; `after` (e.g. label jobs' outputs) only orders it behind them."""
        new = self._job(chemsys, fidelity, store_uri, after)
        new.config.manager_config = {"_category": "cpu"}
        new.config.on_missing_references = OnMissing.NONE  # a failed label must not block the refresh
        return new

    @job
    def _job(self, chemsys: str, fidelity: str, store_uri: str | None = None, after: Any = None) -> Response:
        return Response(output=self.run(chemsys, fidelity, store_uri).as_dict())

    def run(self, chemsys: str, fidelity: str, store_uri: str | Store | None = None) -> Outcome:
        chemsys, fidelity = normalise_chemsys(chemsys), fid.canonical(fidelity)
        with use_store(store_uri) as store:
            entries = hull_entries(chemsys, fidelity)
            state = content_hash([(e.id, round(e.energy_per_atom, 8)) for e in entries])
            key = {"chemsys": chemsys, "fidelity": fidelity, "entries": state}
            return run_job(store, "hull", key, inputs=[], code={}, rerun=self.rerun,
                           parameters={"chemsys": chemsys, "fidelity": fidelity, "n_entries": len(entries)},
                           work=lambda jid: _write_hull(store, jid, chemsys, fidelity, entries, state))


def _write_hull(store: Store, jid: str, chemsys: str, fidelity: str, entries: list[HullEntry], state: str) -> Written:
    hull = build_hull(entries, elements=chemsys.split("-"), fidelity=fidelity)
    data = hull.to_dict()
    cid = cache_id(chemsys, fidelity)
    outputs = [Ref(collection="hulls", id=cid, role="hull")]
    if len(json.dumps(data)) > INLINE_BYTES:
        outputs.append(Ref(collection="fs", id=put_json(store, f"{cid}.hull", data), role="hull_data"))
        data = {"schema": data["schema"], "blob": f"{cid}.hull"}
    doc = HullCacheDoc(id=cid, fidelity=fidelity, chemsys=chemsys, entries_hash=state, n_entries=len(entries),
                       data=data, updated_at=utcnow())
    doc.validate()
    HullCacheDoc._get_collection().replace_one({"_id": cid}, doc.to_mongo().to_dict(), upsert=True)
    stable = [i for i in hull.stable_ids if not i.startswith(REF_PREFIX)]
    return Written("completed", outputs, {"chemsys": chemsys, "fidelity": fidelity, "n_entries": len(entries),
                                          "stable": stable})
