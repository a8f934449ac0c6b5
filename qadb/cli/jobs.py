"""Compute commands: relax, label, hull, jobs, worker. Every calculation is a job tracked in the store.

Structures are given as store ids, as files (ingested first, strictly: a bad file stores nothing),
or selected with ``--chemsys``. Settings are checked before the store is opened, and every
structure is checked before the first job runs, so bad input changes nothing. Jobs that fail or do
not converge are recorded (``qadb jobs``) and make the command exit non-zero with one ``error:`` line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from qadb.cli.groups import cli, console, open_store, out, progress
from qadb.errors import InputError, JobError

_RUNNERS = click.Choice(["local", "fireworks"])


def _targets(store: Any, targets: tuple[str, ...], chemsys: str | None, limit: int, maker: Any) -> list[str]:
    """Structure ids from ids, files (checked by `maker`, then ingested) and a chemsys selection."""
    from qadb.drivers.structures import checked
    from qadb.store.documents import AliasDoc, StructureDoc
    from qadb.store.importers import records_from_paths
    from qadb.store.ingest import ingest_records
    from qadb.store.readers import parse
    from qadb.workflows.hull import normalise_chemsys

    files = [Path(t) for t in targets if Path(t).exists()]
    ids = [t for t in targets if not Path(t).exists()]
    records = records_from_paths(files) if files else []
    for rec in records:  # a file that no job could use is refused before anything is stored
        try:
            maker.check(checked(parse(rec)))
        except InputError as exc:
            raise InputError(f"{rec.where}: {exc}") from None
    if records:
        ingest_records(store, records, strict=True, parameters={"paths": [str(f) for f in files]})
        aliases = AliasDoc._get_collection()
        ids += [aliases.find_one({"_id": rec.text_key()})["material"] for rec in records]
    if chemsys:
        cursor = StructureDoc._get_collection().find({"chemsys": normalise_chemsys(chemsys)}, {"_id": 1}).sort("_id")
        ids += [d["_id"] for d in cursor.limit(limit)]
    if not ids:
        raise InputError("no structures given: pass structure ids, structure files or --chemsys")
    return list(dict.fromkeys(ids))


def _run(ctx: click.Context, maker: Any, targets: tuple[str, ...], chemsys: str | None, limit: int, runner: str,
         as_json: bool, after: Any = None) -> None:
    """Run `maker` over the selected structures (locally, with progress) or queue them on FireWorks."""
    from qadb.workflows import run_flow, run_makers

    with open_store(ctx) as store:
        ids = _targets(store, targets, chemsys, limit, maker)
        if runner == "fireworks":
            from jobflow import Flow

            fw_ids = run_flow(Flow([maker.make(sid) for sid in ids], name=f"qadb {maker.name}"), "fireworks",
                              store=store)
            console.print(f"queued {len(fw_ids)} job(s) on the LaunchPad (fireworks {sorted(fw_ids.values())}); "
                          "run them with `qadb worker`")
            return
        with progress() as bar:
            task = bar.add_task(maker.name, total=len(ids))
            outcomes = run_makers(maker, ids, store=store,
                                  progress=lambda done, total: bar.update(task, completed=done, total=total))
        extra = after(outcomes, store) if after else []
    _report(outcomes + extra, as_json)


def _report(outcomes: list, as_json: bool) -> None:
    if as_json:
        for o in outcomes:
            click.echo(json.dumps(o.as_dict(), default=str))
    else:
        table = Table("structure", "job", "status", "value", "fidelity", "note")
        for o in outcomes:
            s = o.summary
            value = f"{s['value']:.4f} {s.get('units', '')}" if isinstance(s.get("value"), float) else ""
            note = ", ".join(filter(None, [
                "cached" if o.cached else "", f"relaxed -> {o.new_structure}" if o.new_structure else "",
                "STRUCTURE CHANGED" if s.get("structure_changed") else "",
                f"E_f {s['formation_energy_per_atom']:.4f} eV/atom" if s.get("formation_energy_per_atom") is not None else "",
                f"{len(s['stable'])} stable of {s['n_entries']}" if "stable" in s else "",
            ]))
            table.add_row(o.structure or s.get("chemsys", ""), o.job, o.status, value, s.get("fidelity", ""), note)
        out.print(table)
    bad = [o for o in outcomes if o.status in ("failed", "unconverged")]
    if bad:
        first = bad[0]
        why = first.error or first.summary.get("reason") or first.status
        raise JobError(f"{len(bad)} of {len(outcomes)} job(s) did not complete; {first.structure}: {first.status}: "
                       f"{why} (records: qadb jobs --status {first.status})")


def _common(f):
    options = [
        click.argument("targets", nargs=-1),
        click.option("--chemsys", default=None, help="Also take the stored structures of this chemical system."),
        click.option("--limit", type=int, default=100, show_default=True, help="At most this many from --chemsys."),
        click.option("--rerun", is_flag=True, help="Run again even where a completed result is stored."),
        click.option("--runner", type=_RUNNERS, default="local", show_default=True,
                     help="local: run now; fireworks: queue on the LaunchPad for `qadb worker`."),
        click.option("--json", "as_json", is_flag=True, help="One JSON outcome per line on stdout."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@cli.command()
@_common
@click.option("--model", default="chgnet", show_default=True, help="MLIP: chgnet, chgnet-r2scan, sevennet-0, "
              "sevennet-mf-0 (with --head), mace (with --checkpoint), ...")
@click.option("--head", default=None, help="Head of a multi-fidelity MLIP (SevenNet-MF-0: PBE or R2SCAN).")
@click.option("--checkpoint", default=None, help="MACE model file.")
@click.option("--optimizer", default="FIRE", show_default=True, type=click.Choice(["FIRE", "BFGS"], case_sensitive=False))
@click.option("--fmax", type=float, default=0.05, show_default=True, help="Force threshold, eV/Å.")
@click.option("--steps", type=int, default=500, show_default=True)
@click.option("--fixed-cell", is_flag=True, help="Relax positions only.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda (cuda jobs go to gpu workers).")
@click.option("--bulk-modulus", is_flag=True, help="Compute the E(V) bulk modulus instead of storing the relaxation.")
@click.pass_context
def relax(ctx, targets, chemsys, limit, rerun, runner, as_json, model, head, checkpoint, optimizer, fmax, steps,
          fixed_cell, device, bulk_modulus):
    """MLIP-relax structures: relaxed structure + energy/force/stress labels at MLIP:<name>@<version>."""
    from qadb.drivers import BulkModulusSettings, RelaxSettings
    from qadb.workflows import BulkModulusMaker, RelaxMaker

    settings = RelaxSettings(model=model, head=head, checkpoint=checkpoint, optimizer=optimizer, fmax=fmax,
                             steps=steps, relax_cell=not fixed_cell)
    maker = (BulkModulusMaker(settings=BulkModulusSettings(relax=settings), device=device, rerun=rerun)
             if bulk_modulus else RelaxMaker(settings=settings, device=device, rerun=rerun))
    _run(ctx, maker, targets, chemsys, limit, runner, as_json)


def _kmesh(text: str | None) -> tuple[int, int, int] | None:
    if not text:
        return None
    try:
        mesh = tuple(int(x) for x in text.replace("x", ",").split(","))
    except ValueError:
        raise InputError(f"--kmesh must look like 2,2,2, got {text!r}") from None
    if len(mesh) != 3:
        raise InputError(f"--kmesh needs three numbers, got {text!r}")
    return mesh  # type: ignore[return-value]


@cli.command()
@_common
@click.option("--method", type=click.Choice(["pyscf", "vasp"]), default="pyscf", show_default=True)
@click.option("--xc", "level", default="PBE", show_default=True,
              help="Level: PBE, SCAN, r2SCAN, PBE0, HSE06, CCSD(T) (PySCF); PBE, r2SCAN, HSE06 (VASP).")
@click.option("--basis", default="gth-szv", show_default=True, help="PySCF basis (gth-dzvp for production).")
@click.option("--pseudo", default=None, help="PySCF pseudopotential (default gth-pbe; gth-hf-rev for CCSD(T)).")
@click.option("--kmesh", default=None, help="k-point mesh, e.g. 2,2,2 (default: from --kspacing).")
@click.option("--kspacing", type=float, default=1.2, show_default=True, help="1/Å, 2π included.")
@click.option("--density-fit", type=click.Choice(["GDF", "FFT"], case_sensitive=False), default="GDF", show_default=True)
@click.option("--smearing", type=float, default=None, help="Fermi-Dirac width in eV (metals).")
@click.option("--conv-tol", type=float, default=1e-8, show_default=True, help="SCF tolerance, Ha.")
@click.option("--max-cycle", type=int, default=100, show_default=True)
@click.option("--spin", type=int, default=0, show_default=True, help="Unpaired electrons per cell.")
@click.option("--threads", type=int, default=None, help="Threads inside one PySCF job.")
@click.option("--no-formation-energy", is_flag=True, help="Skip elemental references and formation energies.")
@click.option("--no-hulls", is_flag=True, help="Do not refresh the hulls of the labelled systems.")
@click.option("--calc", type=click.Choice(["static", "relax"]), default="static", show_default=True, help="VASP only.")
@click.option("--vasp-cmd", default=None, help="VASP command line (default $QADB_VASP_CMD, $VASP_CMD or vasp_std).")
@click.pass_context
def label(ctx, targets, chemsys, limit, rerun, runner, as_json, method, level, basis, pseudo, kmesh, kspacing,
          density_fit, smearing, conv_tol, max_cycle, spin, threads, no_formation_energy, no_hulls, calc, vasp_cmd):
    """DFT-label structures: energy, band gap and formation energy per atom (references kept in the store)."""
    from qadb.drivers import PySCFSettings, VaspSettings
    from qadb.workflows import label_maker, refresh_hulls

    if method == "pyscf":
        settings = PySCFSettings(level=level, basis=basis, pseudo=pseudo, kmesh=_kmesh(kmesh), kspacing=kspacing,
                                 density_fit=density_fit, smearing_eV=smearing, conv_tol=conv_tol, max_cycle=max_cycle)
        maker = label_maker("pyscf", settings, formation_energy=not no_formation_energy, rerun=rerun, spin=spin,
                            threads=threads)
    else:
        maker = label_maker("vasp", VaspSettings(calc=calc, level=level), rerun=rerun, vasp_cmd=vasp_cmd)
    hulls = None if no_hulls else (lambda outcomes, store: refresh_hulls(outcomes, store=store))
    _run(ctx, maker, targets, chemsys, limit, runner, as_json, after=hulls)


@cli.command()
@click.option("--chemsys", required=True, help="Chemical system, e.g. Li-Fe-O.")
@click.option("--fidelity", required=True, help="Fidelity of the formation energies, e.g. PBE, r2SCAN, HSE06.")
@click.option("--rerun", is_flag=True, help="Rebuild even when the cached hull is current.")
@click.option("--json", "as_json", is_flag=True, help="Print the phases as JSON.")
@click.pass_context
def hull(ctx, chemsys, fidelity, rerun, as_json):
    """Refresh the cached convex hull of a chemical system at one fidelity and print its phases."""
    from qadb.store.documents import StructureDoc
    from qadb.workflows import load_hull, update_hull
    from qadb.workflows.hull import REF_PREFIX

    with open_store(ctx) as store:
        outcome = update_hull(chemsys, fidelity, store=store, rerun=rerun)
        phase_hull = load_hull(chemsys, fidelity, store=store)
        entries = [e for e in phase_hull.entries if not e.id.startswith(REF_PREFIX)]
        results = phase_hull.analyse_many([e.composition for e in entries], [e.energy_per_atom for e in entries],
                                          [e.id for e in entries]) if entries else []
        formulas = {d["_id"]: d["formula_pretty"] for d in StructureDoc._get_collection().find(
            {"_id": {"$in": [e.id for e in entries]}}, {"formula_pretty": 1})}
    rows = sorted(({"structure": e.id, "formula": formulas.get(e.id, ""), "formation_energy_per_atom": e.energy_per_atom,
                    **r.as_dict()} for e, r in zip(entries, results)), key=lambda r: (r["e_above_hull"], r["structure"]))
    if as_json:
        click.echo(json.dumps({"outcome": outcome.as_dict(), "phases": rows}, default=str))
        return
    console.print(f"hull {outcome.summary.get('chemsys', chemsys)} @ {outcome.summary.get('fidelity', fidelity)}: "
                  f"{len(rows)} phases ({'cached' if outcome.cached else 'rebuilt'}, job {outcome.job})")
    table = Table("structure", "formula", "E_f (eV/atom)", "E_above_hull", "E_decomp", "class")
    for r in rows:
        table.add_row(r["structure"], r["formula"], f"{r['formation_energy_per_atom']:.4f}", f"{r['e_above_hull']:.4f}",
                      f"{r['decomposition_energy']:.4f}", r["stability"])
    out.print(table)


@cli.command()
@click.option("--status", type=click.Choice(["running", "completed", "failed", "unconverged"]), default=None)
@click.option("--kind", type=click.Choice(["relax", "bulk_modulus", "label", "hull"]), default=None)
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--lost", is_flag=True, help="List lost runs: store jobs whose process is gone, and (on a MongoDB "
              "server) FireWorks launches silent for --lost-after seconds.")
@click.option("--lost-after", type=float, default=4 * 3600, show_default=True)
@click.option("--rerun", is_flag=True, help="With --lost: run the lost store jobs again here, as they were asked for.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def jobs(ctx, status, kind, limit, lost, lost_after, rerun, as_json):
    """Status of the compute jobs recorded in the store."""
    from qadb.store import jobs as tracking

    if rerun:
        from qadb.workflows import rerun_lost

        if not lost:
            raise InputError("--rerun needs --lost (it re-runs lost jobs)")
        with open_store(ctx) as store:
            _report(rerun_lost(store=store), as_json)
        return
    with open_store(ctx, read_only=True) as store:
        counts = tracking.job_counts()
        rows = tracking.stale_jobs(store) if lost else tracking.list_jobs(status=status, kind=kind, limit=limit)
        fw_lost = _fireworks_lost(store, lost_after) if lost and not store.embedded else None
    if as_json:
        click.echo(json.dumps({"counts": counts, "jobs": rows, "fireworks_lost": fw_lost}, default=str))
        return
    summary = "; ".join(f"{k}: " + ", ".join(f"{n} {s}" for s, n in v.items()) for k, v in counts.items())
    console.print(f"jobs in {store.display_uri}: {summary or 'none'}")
    table = Table("job", "status", "input", "attempts", "started", "host/pid", "note")
    for doc in rows:
        first = next((r["id"] for r in doc.get("inputs", []) if r.get("role") == "input"), "")
        note = doc.get("error") or ", ".join(f"{k}={v}" for k, v in (doc.get("summary") or {}).items()
                                             if k in ("value", "fidelity", "chemsys", "structure_changed"))
        table.add_row(doc["_id"], doc["status"], first or (doc.get("parameters") or {}).get("chemsys", ""),
                      str(doc.get("attempts") or ""), str(doc.get("started_at", ""))[:19],
                      f"{doc.get('host', '')}/{doc.get('pid', '')}", note[:80])
    out.print(table)
    if fw_lost is not None:
        console.print(f"FireWorks lost runs (silent > {lost_after:.0f} s): fireworks {fw_lost['fireworks']}; "
                      "re-queue them with `qadb worker --rerun-lost SECONDS`")


def _fireworks_lost(store: Any, lost_after: float) -> dict | None:
    from qadb.workflows.fireworks import launchpad, lost_runs

    return lost_runs(launchpad(store.uri), lost_after, rerun=False)


@cli.command()
@click.option("--category", "categories", multiple=True, type=click.Choice(["gpu", "cpu", "dft"]),
              help="Worker categories this worker takes (repeatable; default: from --fworker, else any).")
@click.option("--name", default=None, help="Worker name recorded with each launch.")
@click.option("--nlaunches", type=int, default=0, show_default=True, help="Stop after this many (0: until none left).")
@click.option("--max-loops", type=int, default=-1, show_default=True, help="Polling rounds (-1: no limit).")
@click.option("--sleep", "sleep_s", type=float, default=60, show_default=True, help="Seconds between polling rounds.")
@click.option("--timeout", "timeout_s", type=int, default=None, help="Stop launching after this many seconds.")
@click.option("--rerun-lost", "rerun_lost", type=float, default=None,
              help="First re-queue runs whose launch has been silent this many seconds (lost runs).")
@click.option("--launchpad", "launchpad_file", type=click.Path(path_type=Path), default=None,
              help="my_launchpad.yaml (${VAR} expanded; default: the store's MongoDB).")
@click.option("--fworker", "fworker_file", type=click.Path(path_type=Path), default=None, help="my_fworker.yaml")
@click.option("--queue", "qadapter_file", type=click.Path(path_type=Path), default=None,
              help="my_qadapter.yaml: submit --njobs batch jobs that each run `qadb worker` instead of running here.")
@click.option("--njobs", type=int, default=1, show_default=True)
@click.option("--launch-dir", type=click.Path(path_type=Path), default=None, help="Default: $QADB_HOME/launches.")
@click.option("--log-level", default="WARNING", show_default=True)
@click.pass_context
def worker(ctx, categories, name, nlaunches, max_loops, sleep_s, timeout_s, rerun_lost, launchpad_file, fworker_file,
           qadapter_file, njobs, launch_dir, log_level):
    """Run FireWorks jobs from the LaunchPad in the store's MongoDB (rlaunch rapidfire with qadb's config)."""
    from qadb.workflows import fireworks as fw

    lp = fw.launchpad(ctx.obj.get("uri"), config_file=launchpad_file, strm_lvl=log_level)
    me = fw.fworker(categories, name, fworker_file)
    if qadapter_file:
        fw.queue_launch(lp, me, qadapter_file, njobs=njobs, launch_dir=launch_dir, strm_lvl=log_level)
        console.print(f"submitted {njobs} batch job(s) through {qadapter_file}")
        return
    with open_store(ctx) as store:
        report = fw.run_worker(lp, store, me, nlaunches=nlaunches, max_loops=max_loops, sleep_s=sleep_s,
                               rerun_lost_after_s=rerun_lost, launch_dir=launch_dir, timeout_s=timeout_s,
                               strm_lvl=log_level)
    if report["lost"] is not None:
        console.print(f"re-queued lost runs: fireworks {report['lost']['fireworks']}")
    console.print(f"worker {me.name} ({', '.join(categories) or 'any category'}) done; fireworks by state: "
                  f"{report['after']}")
