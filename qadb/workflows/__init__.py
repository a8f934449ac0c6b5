"""Compute drivers as database-tracked jobs: jobflow Makers, a small API, local and FireWorks runners.

The API the campaign layer calls (every function takes structure ids, never pickled objects, and
`store`: an open `Store`, a URI, or None for the configured store)::

    from qadb import workflows as wf
    outs = wf.relax_structures(ids, RelaxSettings(model="chgnet"))          # list[Outcome], input order
    outs = wf.label_structures(ids, method="pyscf", settings=PySCFSettings(level="r2SCAN"))
    hull = wf.update_hull("Mg-O", "r2SCAN")                                  # Outcome of the hull job
    wf.run_flow(wf.screening_flow(ids), runner="fireworks")                  # {job uuid: firework id}

Each structure is one job whose id is derived from (kind, structure id, structure hash, settings):
asking again returns the stored outcome without running (`Outcome.cached`), a killed job is re-run
from scratch and writes onto the same ids, unconverged runs are recorded (status "unconverged")
and never stored as labels. Bad inputs (unknown ids, overlapping atoms, unknown functionals,
missing VASP) raise a `QadbError` before anything is written. See docs/drivers.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

from qadb import fidelity as fid
from qadb.drivers import BulkModulusSettings, PySCFSettings, RelaxSettings, VaspSettings
from qadb.errors import InputError
from qadb.store.connection import Store
from qadb.store.documents import StructureDoc
from qadb.store.jobs import fail, stale_jobs
from qadb.workflows.context import job_store, use_store
from qadb.workflows.core import Outcome, TrackedMaker, load_structure, maker_from_record
from qadb.workflows.dft import PySCFLabelMaker, VaspMaker
from qadb.workflows.hull import HullUpdateMaker, cached_supersystems, load_hull, normalise_chemsys
from qadb.workflows.mlip import BulkModulusMaker, RelaxMaker

Progress = Callable[[int, int], None]
LABEL_METHODS = ("pyscf", "vasp")


def _run_local(flow: Any, store: Store, raise_immediately: bool = True) -> dict:
    """Run a jobflow Job or Flow with jobflow's local manager on `store`; returns its responses."""
    from jobflow import run_locally

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="cd is deprecated", category=FutureWarning)  # inside jobflow
        return run_locally(flow, store=job_store(store), log=False, raise_immediately=raise_immediately)


def run_makers(maker: TrackedMaker, structure_ids: Sequence[str], *, store: Store | str | None = None,
               progress: Progress | None = None) -> list[Outcome]:
    """Run `maker` on each structure as a local jobflow job; outcomes in input order.

    Every structure is loaded and checked (and the maker's preconditions tested) before the first
    job starts, so a bad input changes nothing. A job that raises is recorded as failed and
    reported as an outcome with status "failed"; the others still run.
    """
    ids = list(dict.fromkeys(structure_ids))
    with use_store(store) as opened:
        opened.require_writable()
        loaded = {sid: load_structure(sid)[1] for sid in ids}
        for structure in loaded.values():
            maker.check(structure)
        outcomes = {}
        for done, sid in enumerate(ids, 1):
            job = maker.make(sid)
            try:
                outcomes[sid] = Outcome.from_dict(_run_local(job, opened)[job.uuid][1].output)
            except Exception as exc:  # noqa: BLE001 - the job record says failed; report and go on
                outcomes[sid] = Outcome(job=maker.job_id(sid, loaded[sid]), kind=maker.kind, status="failed",
                                        structure=sid, error=f"{type(exc).__name__}: {exc}")
            if progress:
                progress(done, len(ids))
    return [outcomes[sid] for sid in structure_ids]


def relax_structures(structure_ids: Sequence[str], settings: RelaxSettings | None = None, *, device: str = "cpu",
                     store: Store | str | None = None, rerun: bool = False,
                     progress: Progress | None = None) -> list[Outcome]:
    """MLIP-relax each structure; `Outcome.new_structure` is the relaxed structure's id.

    Energy, max force and pressure are labels at ``MLIP:<name>@<version>`` on the relaxed structure;
    `summary["structure_changed"]` flags a relaxation that left its parent's structure type.
    """
    maker = RelaxMaker(settings=settings or RelaxSettings(), device=device, rerun=rerun)
    return run_makers(maker, structure_ids, store=store, progress=progress)


def bulk_moduli(structure_ids: Sequence[str], settings: BulkModulusSettings | None = None, *, device: str = "cpu",
                store: Store | str | None = None, rerun: bool = False, progress: Progress | None = None) -> list[Outcome]:
    """E(V) bulk modulus (GPa) of each structure at the MLIP level, as a `bulk_modulus` label."""
    maker = BulkModulusMaker(settings=settings or BulkModulusSettings(), device=device, rerun=rerun)
    return run_makers(maker, structure_ids, store=store, progress=progress)


def label_maker(method: str = "pyscf", settings: PySCFSettings | VaspSettings | None = None, *,
                formation_energy: bool = True, rerun: bool = False, **options: Any) -> TrackedMaker:
    """The Maker of one labelling method (`options`: e.g. threads, spin for PySCF; vasp_cmd for VASP)."""
    if method == "pyscf":
        return PySCFLabelMaker(settings=settings or PySCFSettings(), formation_energy=formation_energy, rerun=rerun,
                               **options)
    if method == "vasp":
        return VaspMaker(settings=settings or VaspSettings(), rerun=rerun, **options)
    raise InputError(f"unknown labelling method {method!r}; known: {', '.join(LABEL_METHODS)}")


def label_structures(structure_ids: Sequence[str], method: str = "pyscf",
                     settings: PySCFSettings | VaspSettings | None = None, *, formation_energy: bool = True,
                     update_hulls: bool = True, store: Store | str | None = None, rerun: bool = False,
                     progress: Progress | None = None, **options: Any) -> list[Outcome]:
    """DFT-label each structure (energy, band gap, formation energy per atom at `settings.level`).

    Elemental references are computed once per settings and kept in the store. With `update_hulls`,
    the hulls of the labelled systems (and cached hulls containing them) are refreshed afterwards.
    """
    maker = label_maker(method, settings, formation_energy=formation_energy, rerun=rerun, **options)
    with use_store(store) as opened:
        outcomes = run_makers(maker, structure_ids, store=opened, progress=progress)
        if update_hulls:
            refresh_hulls(outcomes, store=opened)
    return outcomes


def update_hull(chemsys: str, fidelity: str, *, store: Store | str | None = None, rerun: bool = False) -> Outcome:
    """Rebuild the cached hull of (chemsys, fidelity) if its labels changed; `summary["stable"]` lists phases."""
    maker = HullUpdateMaker(rerun=rerun)
    with use_store(store) as opened:
        job = maker.make(normalise_chemsys(chemsys), fid.canonical(fidelity))
        return Outcome.from_dict(_run_local(job, opened)[job.uuid][1].output)


def refresh_hulls(outcomes: Sequence[Outcome], *, store: Store | str | None = None) -> list[Outcome]:
    """Hull updates for the systems of completed label outcomes that gave formation energies."""
    with use_store(store) as opened:
        targets: set[tuple[str, str]] = set()
        for out in outcomes:
            if out.ok and out.summary.get("formation_energy_per_atom") is not None and out.structure:
                doc = StructureDoc._get_collection().find_one({"_id": out.structure}, {"chemsys": 1})
                fidelity = out.summary["fidelity"]
                targets.add((doc["chemsys"], fidelity))
                targets.update((sup, fidelity) for sup in cached_supersystems(doc["chemsys"], fidelity))
        return [update_hull(chemsys, fidelity, store=opened) for chemsys, fidelity in sorted(targets)]


def rerun_lost(*, store: Store | str | None = None) -> list[Outcome]:
    """Run again, as they were asked for, the jobs whose process died while running them.

    Each lost record is first marked failed (so the record says what happened), then its Maker is
    rebuilt from the record (only `qadb.workflows` classes) and run; deterministic ids mean nothing
    the dead run wrote is duplicated.
    """
    with use_store(store) as opened:
        outcomes = []
        for doc in stale_jobs(opened):
            fail(doc["_id"], f"lost: its process ({doc.get('host')}/{doc.get('pid')}) died while running it")
            params = doc.get("parameters") or {}
            if doc["kind"] == "hull":
                outcomes.append(HullUpdateMaker().run(params["chemsys"], params["fidelity"], opened))
                continue
            structure = next(r["id"] for r in doc.get("inputs", []) if r.get("role") == "input")
            outcomes.append(maker_from_record(params).run(structure, opened))
        return outcomes


def screening_flow(structure_ids: Sequence[str], relax: RelaxMaker | None = None,
                   label: TrackedMaker | None = None, *, hulls: bool = True, store: Store | str | None = None) -> Any:
    """A jobflow Flow: relax each structure → label the relaxed structure → refresh the hulls.

    Pass ``relax=None`` to label the given structures directly. Jobs carry only ids; run it with
    `run_flow` locally or on FireWorks (relax jobs go to cpu or gpu workers, labels to dft workers).
    """
    from jobflow import Flow

    label = label or PySCFLabelMaker()
    jobs, by_system = [], {}
    with use_store(store):
        for sid in structure_ids:
            chemsys = load_structure(sid)[0]["chemsys"]
            target = sid
            if relax is not None:
                relax_job = relax.make(sid)
                jobs.append(relax_job)
                target = relax_job.output["new_structure"]
            label_job = label.make(target)
            jobs.append(label_job)
            by_system.setdefault(chemsys, []).append(label_job.output["labels"])
    level = getattr(label.settings, "level", None)
    if hulls and level:
        jobs += [HullUpdateMaker().make(chemsys, level, after=refs) for chemsys, refs in sorted(by_system.items())]
    return Flow(jobs, name="qadb screening")


def run_flow(flow: Any, runner: str = "local", *, store: Store | str | None = None, launchpad: Any = None) -> dict:
    """Run a flow: ``local`` runs it now (returns {job uuid: Outcome or output}); ``fireworks`` puts it
    on the LaunchPad in the store's MongoDB for `qadb worker` to run (returns {job uuid: firework id}).
    """
    if runner == "local":
        with use_store(store) as opened:
            responses = _run_local(flow, opened, raise_immediately=False)
        return {uuid: _as_outcome(by_index[max(by_index)].output) for uuid, by_index in responses.items()}
    if runner == "fireworks":
        from qadb.workflows.fireworks import launchpad as open_launchpad
        from qadb.workflows.fireworks import submit

        uri = store.uri if isinstance(store, Store) else store
        return submit(flow, launchpad or open_launchpad(uri))
    raise InputError(f"unknown runner {runner!r}; known: local, fireworks")


def _as_outcome(output: Any) -> Any:
    return Outcome.from_dict(output) if isinstance(output, dict) and {"job", "kind", "status"} <= set(output) else output


__all__ = [
    "BulkModulusMaker", "HullUpdateMaker", "Outcome", "PySCFLabelMaker", "RelaxMaker", "TrackedMaker", "VaspMaker",
    "bulk_moduli", "label_maker", "label_structures", "load_hull", "maker_from_record", "refresh_hulls",
    "relax_structures", "rerun_lost", "run_flow", "run_makers", "screening_flow", "update_hull",
]
