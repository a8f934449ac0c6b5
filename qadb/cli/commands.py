"""Store commands: ingest, query, describe, stats, export, lineage, schemas, demo."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from qadb import config
from qadb.cli.groups import cli, console, open_store as _open, out, progress as _progress
from qadb.errors import InputError


def _print_report(report, name: str) -> None:
    d = report.as_dict()
    console.print(
        f"[bold]{name}[/]: {d['records']} records -> {d['new_structures']} new structures, "
        f"{d['merged']} merged as duplicates, {d['already_present']} already stored, {d['new_labels']} new labels, "
        f"{d['conflicts']} conflicting labels flagged, {d['skipped']} skipped ({d['seconds']:.1f} s)"
    )
    for line in report.skipped[:20]:
        console.print(f"  skipped {line}")
    if len(report.skipped) > 20:
        console.print(f"  ... and {len(report.skipped) - 20} more skipped")


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--dataset", "datasets_", multiple=True, help="A staged dataset preset (see --list); repeatable, or 'all'.")
@click.option("--list", "list_", is_flag=True, help="List the dataset presets and exit.")
@click.option("--format", "fmt", type=click.Choice(["cif", "poscar", "json", "extxyz", "csv"]), default=None)
@click.option("--label", "labels", multiple=True, help="CSV column to label: COLUMN=PROPERTY@FIDELITY[:UNITS].")
@click.option("--cif-column", default="cif", show_default=True)
@click.option("--id-column", default=None, help="CSV column with the source id (default: material_id if present).")
@click.option("--source", default=None, help="Name recorded as the source of these records (default: file name).")
@click.option("--strict/--skip-bad", default=True, show_default=True,
              help="--strict stores nothing if any record is bad; --skip-bad stores the good ones and lists the rest.")
@click.option("--workers", type=int, default=None, help="Parser processes (default: all cores).")
@click.pass_context
def ingest(ctx, paths, datasets_, list_, fmt, labels, cif_column, id_column, source, strict, workers):
    """Ingest structure files (CIF, POSCAR, JSON, extxyz, CSV with a CIF column) or staged datasets."""
    from qadb.store import datasets as ds
    from qadb.store.importers import dataset_summary, ingest_dataset, records_from_paths
    from qadb.store.ingest import ingest_records
    from qadb.store.readers import LabelSpec

    if list_:
        out.print(dataset_summary())
        return
    if not paths and not datasets_:
        raise InputError("nothing to ingest: give files or --dataset NAME (see --list)")
    names = list(ds.ALL_DATASETS) if "all" in datasets_ else list(datasets_)
    for name in names:
        if name not in ds.ALL_DATASETS:
            raise InputError(f"unknown dataset {name!r}; known: {', '.join(ds.ALL_DATASETS)}")
    specs = [LabelSpec.parse(s) for s in labels]
    records = records_from_paths(list(paths), fmt=fmt, labels=specs, cif_column=cif_column, id_column=id_column,
                                 source=source) if paths else []
    store = _open(ctx)
    with store, _progress() as bar:
        task = bar.add_task("parsing", total=None)

        def progress(stage: str, done: int, total: int) -> None:
            bar.update(task, description=stage, completed=done, total=total)

        if records:
            _print_report(ingest_records(store, records, strict=strict, workers=workers,
                                         parameters={"paths": [str(p) for p in paths]}, progress=progress), "files")
        for name in sorted(names, key=lambda n: n in ds.LABEL_ONLY):
            _print_report(ingest_dataset(store, name, strict=strict, workers=workers, progress=progress), name)


def _query_options(f):
    options = [
        click.option("--elements", default=None, help="Comma-separated elements that must all be present."),
        click.option("--chemsys", default=None, help="Exact chemical system, e.g. Fe-O."),
        click.option("--formula", default=None, help="Reduced formula, e.g. LiFePO4."),
        click.option("--nsites", default=None, help="Range MIN:MAX (either side may be empty)."),
        click.option("--spacegroup", type=int, default=None),
        click.option("--origin", default=None, help="Origin kind (dataset, generated, relaxed, ...) or dataset name."),
        click.option("--campaign", default=None),
        click.option("--fidelity", default=None, help="Only labels at this fidelity (e.g. PBE+U, r2SCAN, EXP)."),
        click.option("--property", "prop", default=None, help="Only labels of this property."),
        click.option("--range", "value_range", default=None, help="Property value range MIN:MAX in canonical units."),
        click.option("--limit", type=int, default=None),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def _range(text: str | None, cast) -> tuple:
    if not text:
        return (None, None)
    lo, sep, hi = text.partition(":")
    if not sep:
        raise InputError(f"range {text!r} must look like MIN:MAX")
    try:
        return (cast(lo) if lo.strip() else None, cast(hi) if hi.strip() else None)
    except ValueError:
        raise InputError(f"range {text!r} must hold numbers") from None


def _build_query(elements, chemsys, formula, nsites, spacegroup, origin, campaign, fidelity, prop, value_range, limit):
    from qadb.store import Query

    return Query(
        elements=[e.strip() for e in elements.split(",")] if elements else [], chemsys=chemsys, formula=formula,
        nsites=_range(nsites, int), spacegroup=spacegroup, origin=origin, campaign=campaign, fidelity=fidelity,
        property=prop, value_range=_range(value_range, float), limit=limit,
    )


@cli.command()
@_query_options
@click.option("--output", "output", type=click.Choice(["table", "jsonl", "csv"]), default="table", show_default=True)
@click.pass_context
def query(ctx, output, **filters):
    """Find structures by composition, symmetry, origin, fidelity and property values."""
    from qadb.store import find, to_frame

    q = _build_query(**filters)
    with _open(ctx, read_only=True):
        docs = find(q)
    if output == "jsonl":
        for d in docs:
            click.echo(json.dumps(d, default=str))
        return
    df = to_frame(docs)
    if output == "csv":
        click.echo(df.to_csv(index=False), nl=False)
        return
    table = Table(title=f"{len(df)} structures")
    for col in df.columns:
        table.add_column(str(col), overflow="fold")
    for _, row in df.head(200).iterrows():
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
    out.print(table)
    if len(df) > 200:
        console.print(f"(first 200 of {len(df)} rows; use --output jsonl or csv for all)")


@cli.command()
@_query_options
@click.option("--mled/--no-mled", default=False, show_default=True,
              help="Also compute M_LED (PIGEN's local-environment diversity; the slow descriptor).")
@click.option("--force", is_flag=True, help="Recompute descriptors that are already up to date.")
@click.pass_context
def describe(ctx, mled, force, **filters):
    """Write descriptors (C, SPP, M_LED, symmetry) and validity flags onto the selected structures."""
    from qadb.store import find
    from qadb.workflows.describe import describe_structures

    q = _build_query(**filters)
    with _open(ctx):
        ids = [d["material_id"] for d in find(q)]
        with _progress() as bar:
            task = bar.add_task("describe", total=len(ids))
            report = describe_structures(ids, with_mled=mled, force=force,
                                         progress=lambda done, total: bar.update(task, completed=done))
    console.print(f"described {report.described}, already up to date {report.skipped}, failed {len(report.failed)}")
    for sid, reason in list(report.failed.items())[:20]:
        console.print(f"  {sid}: {reason}")
    if report.failed:
        raise click.ClickException(f"{len(report.failed)} structure(s) could not be described (listed above)")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def stats(ctx, as_json):
    """Summarise the store: documents per collection, labels per fidelity, structures per system size."""
    from qadb.store import summary

    with _open(ctx, read_only=True) as store:
        s = summary()
        where = store.display_uri
    if as_json:
        click.echo(json.dumps(s, indent=1))
        return
    out.print(f"[bold]store[/] {where}")
    t = Table(title="collections")
    t.add_column("collection")
    t.add_column("documents", justify="right")
    for k, v in s["collections"].items():
        t.add_row(k, str(v))
    out.print(t)
    t = Table(title="labels per fidelity")
    for c in ("fidelity", "property", "count"):
        t.add_column(c, justify="right" if c == "count" else "left")
    for row in s["labels"]:
        t.add_row(row["fidelity"], row["property"], str(row["count"]))
    out.print(t)
    out.print(f"conflicting labels: {s['conflicting_labels']}")
    out.print("structures by number of elements: " + ", ".join(f"{k}: {v}" for k, v in s["structures_by_nelements"].items()))


@cli.command()
@_query_options
@click.option("-o", "--out", "path", type=click.Path(path_type=Path), required=True, help="Output JSON file.")
@click.option("--summary-fidelity", default="PBE+U", show_default=True,
              help="Fidelity of the top-level formation_energy_per_atom / band_gap / energy_above_hull fields.")
@click.option("--include-restricted", is_flag=True, help="Also export labels whose source forbids redistribution.")
@click.pass_context
def export(ctx, path, summary_fidelity, include_restricted, **filters):
    """Export matching structures and their labels as Materials Project-style JSON."""
    from qadb import fidelity as fid
    from qadb.store import export as do_export

    q = _build_query(**filters)
    with _open(ctx, read_only=True) as store:
        payload = do_export(q, path, summary_fidelity=fid.canonical(summary_fidelity),
                            include_restricted=include_restricted, store_uri=store.display_uri)
    console.print(f"wrote {payload['meta']['count']} materials to {path}")


@cli.command()
@click.argument("doc_id")
@click.pass_context
def lineage(ctx, doc_id):
    """Show where a structure or label came from (provenance, nearest first)."""
    from qadb.store import lineage as walk

    with _open(ctx, read_only=True):
        chain = walk(doc_id)
    if not chain:
        raise InputError(f"no structure or label with id {doc_id!r}")
    for node in chain:
        act = node["activity"] or {}
        o = node["origin"]
        click.echo(f"{node['collection']}:{node['id']}  origin={o.get('kind')} dataset={o.get('dataset')} "
                   f"file={o.get('file')} row={o.get('row')}  activity={act.get('_id')} ({act.get('kind')})")


@cli.command()
@click.option("--check", is_flag=True, help="Exit non-zero if schemas/ differs from the code instead of writing.")
@click.option("--dir", "folder", type=click.Path(path_type=Path), default=Path("schemas"), show_default=True)
def schemas(check, folder):
    """Regenerate the JSON Schemas in schemas/ from the document definitions and the recipe schema."""
    from qadb.campaign.recipe import SCHEMA as RECIPE_SCHEMA
    from qadb.store import schemas as sch

    every = {**sch.all_schemas(), "campaign_recipe.schema.json": RECIPE_SCHEMA}
    if check:
        stale = [n for n, s in every.items() if not (folder / n).exists() or (folder / n).read_text() != sch.render(s)]
        if stale:
            raise InputError(f"schemas out of date: {', '.join(stale)} (run `qadb schemas`)")
        click.echo("schemas up to date")
        return
    folder.mkdir(parents=True, exist_ok=True)
    for name, schema in every.items():
        (folder / name).write_text(sch.render(schema))
        click.echo(folder / name)


@cli.command()
@click.option("--out", "path", type=click.Path(path_type=Path), default=Path("qadb-demo-export.json"), show_default=True)
@click.pass_context
def demo(ctx, path):
    """Ingest a sample (MP-20 pilot set if staged, else bundled CIFs), query it, export it."""
    from qadb.store import Query, export as do_export, find, ingest_dataset, ingest_records, records_from_paths

    store = _open(ctx)
    with store:
        console.print(f"store: {store.display_uri}")
        pilot = config.shared_data_dir() / "mp_20_subsets" / "pilot_val.csv.gz"
        if pilot.exists():
            from qadb.store.datasets import _mp_labels
            from qadb.store.readers import read_csv

            recs = list(read_csv(pilot, "mp20-pilot-val", labels=_mp_labels(ehull="e_above_hull")))
        else:
            recs = records_from_paths(sorted((Path(__file__).resolve().parents[1] / "data" / "samples").glob("*.cif")))
        with _progress() as bar:
            task = bar.add_task("ingest", total=len(recs))
            report = ingest_records(store, recs, strict=False,
                                    progress=lambda s, d, t: bar.update(task, description=s, completed=d, total=t))
        _print_report(report, "demo sample")
        docs = find(Query(elements=["O"], property="formation_energy_per_atom", value_range=(None, -2.5), limit=10))
        console.print(f"oxides with formation energy below -2.5 eV/atom (first {len(docs)}):")
        for d in docs:
            e = [lab["value"] for lab in d["labels"] if lab["property"] == "formation_energy_per_atom"]
            console.print(f"  {d['material_id']}  {d['formula_pretty']:<12} {e[0]:.3f} eV/atom")
        payload = do_export(Query(ids=[d["material_id"] for d in docs]), path, store_uri=store.display_uri)
        console.print(f"exported {payload['meta']['count']} materials to {path}")
