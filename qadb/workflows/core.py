"""Tracked jobs: the claim → compute → persist → finish cycle every Maker runs through.

`run_job` turns a unit of work into a database-tracked job (`qadb.store.jobs`): a completed result
is returned without running, a crash marks the record failed (it is claimed again next time), an
unconverged calculation is recorded with status "unconverged" and never written as labels.
`TrackedMaker` is the jobflow `Maker` base of the per-structure jobs: a job receives a structure
id and optionally a store URI (never a pickled object), and its output is a plain `Outcome` dict.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from jobflow import Maker, Response, job
from pymatgen.core import Structure

from qadb import __version__
from qadb.drivers.hashing import input_hash
from qadb.drivers.results import ConvergenceError, Label
from qadb.drivers.structures import checked
from qadb.errors import InputError
from qadb.store.connection import Store
from qadb.store.documents import Ref, StructureDoc
from qadb.store.jobs import FINAL_STATES, claim, fail, finish, heartbeat, job_id
from qadb.workflows.context import use_store
from qadb.workflows.persist import label_docs, plain, result_blob, write_labels


@dataclass
class Outcome:
    """What a job did, in plain types (it is also the jobflow output of the job).

    `status`: completed | unconverged (recorded, no labels) | failed | running (a live twin of this
    job is running elsewhere) | skipped (in a flow, its input structure was never made; no record).
    `cached`: an earlier result was returned without running anything.
    """

    job: str | None
    kind: str
    status: str
    structure: str | None = None
    cached: bool = False
    new_structure: str | None = None
    labels: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Outcome:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    @classmethod
    def from_record(cls, doc: dict, cached: bool = False) -> Outcome:
        """The outcome an `Activity` record describes (the same for the first run and every cached one)."""
        outputs, inputs = doc.get("outputs") or [], doc.get("inputs") or []
        return cls(
            job=doc["_id"], kind=doc["kind"], status=doc["status"], cached=cached,
            structure=next((r["id"] for r in inputs if r.get("role") == "input"), None),
            new_structure=next((r["id"] for r in outputs if r.get("role") == "relaxed"), None),
            labels=[r["id"] for r in outputs if r["collection"] == "labels"],
            summary=doc.get("summary") or {}, error=doc.get("error"),
        )


@dataclass
class Written:
    """What a job's work wrote: final status, output links, a small summary, late-found inputs."""

    status: str
    outputs: list[Ref]
    summary: dict
    inputs: list[Ref] = field(default_factory=list)


def run_job(store: Store, kind: str, key: Any, *, inputs: list[Ref], parameters: dict, code: dict,
            work: Callable[[str], Written], rerun: bool = False) -> Outcome:
    """Run `work(job_id)` as the job identified by (kind, key), unless its result is already stored."""
    jid = job_id(kind, key)
    claimed = claim(store, jid, kind=kind, inputs=inputs, parameters=parameters, code=code, rerun=rerun)
    if not claimed.owned:
        return Outcome.from_record(claimed.doc, cached=claimed.status in FINAL_STATES)
    try:
        with heartbeat(store, jid):
            written = work(jid)
    except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised unchanged
        fail(jid, f"{type(exc).__name__}: {exc}")
        raise
    return Outcome.from_record(finish(jid, written.status, outputs=written.outputs, summary=written.summary,
                                      inputs=[*inputs, *written.inputs]))


def load_structure(structure_id: str) -> tuple[dict, Structure]:
    """(stored document, checked Structure): unknown ids and unusable cells are `InputError`s."""
    doc = StructureDoc._get_collection().find_one({"_id": structure_id}, {"structure": 1, "chemsys": 1})
    if doc is None:
        raise InputError(f"no structure {structure_id!r} in the store")
    try:
        return doc, checked(doc["structure"])
    except InputError as exc:
        raise InputError(f"{structure_id}: {exc}") from None


def revive(cls: type, data: Any) -> Any:
    """Rebuild a (possibly nested) settings dataclass from its plain form or from an instance.

    jobflow/FireWorks serialise a Maker's nested dataclasses one level deep only (deeper ones come
    back as dicts inside an instance), and job records keep settings as plain JSON; both come back
    through here.
    """
    if not dataclasses.is_dataclass(cls):
        return data
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        data = {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
    if not isinstance(data, dict):
        return data
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            hint = hints.get(f.name)
            kwargs[f.name] = revive(hint, data[f.name]) if dataclasses.is_dataclass(hint) else data[f.name]
    return cls(**kwargs)


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass
class TrackedMaker(Maker):
    """Base of the per-structure Makers: one job = one structure id + this maker's settings.

    Subclasses set `kind`, a `settings` field, and implement `compute` (write → run → parse); this
    class does the decide step (converged or not), the persisting and the tracking. The job id is
    derived from (kind, structure id, input hash of the structure and `hashed()`), so it is known
    before running and identical on every machine.
    """

    kind: ClassVar[str] = ""
    code_dists: ClassVar[tuple[str, ...]] = ()
    name: str = "tracked job"
    settings: Any = None  # subclasses narrow the type; its dataclass is rebuilt from plain data here
    rerun: bool = False  # run again even when a completed result is stored (not part of the job id)

    def __post_init__(self) -> None:
        self.settings = revive(typing.get_type_hints(type(self))["settings"], self.settings)

    # --- what subclasses provide -------------------------------------------------------------------
    @property
    def category(self) -> str:
        """FireWorks worker category this job needs: gpu, cpu or dft."""
        return "cpu"

    def hashed(self) -> Any:
        """Everything besides the structure that determines the result (the job id covers it)."""
        return self.settings

    def check(self, structure: Structure) -> None:
        """Refuse work that cannot succeed before anything is written (missing programs, sizes)."""

    def compute(self, store: Store, jid: str, structure: Structure, extra: dict) -> Label:
        """Write inputs, run, parse: the result, or `ConvergenceError` carrying the flagged one."""
        raise NotImplementedError

    def persist(self, store: Store, jid: str, structure_id: str, chemsys: str, result: Label) -> list[Ref]:
        """Store a converged result; default: its labels on the input structure."""
        return write_labels(label_docs(result.labels(), structure_id, chemsys, jid, [structure_id]))

    def summarize(self, result: Label) -> dict:
        """Small numbers kept on the job record (the full result goes to GridFS)."""
        return {"property": result.property, "value": result.value, "units": result.units,
                "fidelity": result.fidelity, "converged": result.converged, "wall_time_s": result.wall_time_s}

    # --- jobflow --------------------------------------------------------------------------------------
    def make(self, structure_id: str, store_uri: str | None = None) -> Any:
        """A jobflow Job running this maker on one stored structure (routed to `category` workers)."""
        new = self._job(structure_id, store_uri)
        new.config.manager_config = {"_category": self.category}
        return new

    @job
    def _job(self, structure_id: str | None, store_uri: str | None = None) -> Response:
        if structure_id is None:  # in a flow: the job that was to make this structure did not complete
            return Response(output=Outcome(job=None, kind=self.kind, status="skipped", summary={
                "reason": "no input structure: the job producing it did not complete"}).as_dict())
        return Response(output=self.run(structure_id, store_uri).as_dict())

    # --- running ------------------------------------------------------------------------------------
    def run(self, structure_id: str, store_uri: str | Store | None = None) -> Outcome:
        """Run (or fetch) the job for one stored structure in the given or configured store."""
        with use_store(store_uri) as store:
            doc, structure = load_structure(structure_id)
            return self.run_on(store, structure_id, doc["chemsys"], structure)

    def job_id(self, structure_id: str, structure: Structure) -> str:
        return job_id(self.kind, self._key(structure_id, structure))

    def _key(self, structure_id: str, structure: Structure) -> dict:
        return {"structure": structure_id, "input": input_hash(structure, self.hashed())}

    def record(self) -> dict:
        """How the job record names its maker: importable class path + plain fields (for reruns)."""
        cls = type(self)
        return {"maker": f"{cls.__module__}.{cls.__qualname__}", "fields": plain(self)}

    def code(self) -> dict:
        versions = {"qadb": __version__, **{d: _dist_version(d) for d in self.code_dists}}
        return {k: v for k, v in versions.items() if v}

    def run_on(self, store: Store, structure_id: str, chemsys: str, structure: Structure) -> Outcome:
        """Run on an already loaded structure (also used for elemental references)."""
        self.check(structure)
        inputs = [Ref(collection="structures", id=structure_id, role="input")]
        return run_job(store, self.kind, self._key(structure_id, structure), inputs=inputs, parameters=self.record(),
                       code=self.code(), rerun=self.rerun,
                       work=lambda jid: self._work(store, jid, structure_id, chemsys, structure))

    def _work(self, store: Store, jid: str, structure_id: str, chemsys: str, structure: Structure) -> Written:
        extra: dict = {}  # compute may add JSON detail for the blob, and "inputs" it found on the way
        try:
            result = self.compute(store, jid, structure, extra)
        except ConvergenceError as exc:  # decide: recorded with its numbers, never stored as labels
            late = extra.pop("inputs", [])
            blob = result_blob(store, jid, exc.result, extra)
            return Written("unconverged", [blob], {**self.summarize(exc.result), "reason": str(exc)}, late)
        late = extra.pop("inputs", [])
        blob = result_blob(store, jid, result, extra)
        refs = self.persist(store, jid, structure_id, chemsys, result)
        return Written("completed", [blob, *refs], self.summarize(result), late)


def maker_from_record(record: dict) -> TrackedMaker:
    """The Maker a job record names (only `qadb.workflows` classes are ever imported)."""
    path = str(record.get("maker", ""))
    module, _, name = path.rpartition(".")
    if not module.startswith("qadb.workflows."):
        raise InputError(f"job record names maker {path!r}, which is not a qadb.workflows class")
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, Maker)):
        raise InputError(f"job record names unknown maker {path!r}")
    return cls(**record.get("fields", {}))
