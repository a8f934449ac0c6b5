"""Campaign commands: `qadb launch campaign RECIPE`, `qadb campaign status|resume|report|stop|export`."""

from __future__ import annotations

from pathlib import Path

import click
from rich import box
from rich.table import Table

from qadb.cli.groups import cli, console, open_store, out


_STRATEGY = {"divergence": "div", "uncertainty": "unc", "low_fidelity": "low", "random": "rand", "exploit": "expl"}
_SHORT = {"cycle": "cyc", "strategy": "strat", "generated": "gen", "passed_funnel": "funnel", "passed_target_filter": "target", "selected": "sel",
          "validated": "valid", "failed": "fail", "budget_spent": "spent", "cumulative_hits": "cum"}


def _say(msg: str) -> None:
    console.print(f"[dim]{msg}[/]")


def _print_report(rep) -> None:
    from qadb.campaign.report import COLUMNS

    table = Table(title=f"campaign {rep.campaign}", box=box.SIMPLE_HEAD, pad_edge=False)
    for c in COLUMNS:
        table.add_column(_SHORT.get(c, c), justify="right")
    for r in rep.rows:
        cells = {**r, "strategy": _STRATEGY.get(r["strategy"], r["strategy"])}
        table.add_row(*(f"{cells[c]:g}" if isinstance(cells[c], float) else str(cells[c]) for c in COLUMNS))
    out.print("strategy: div = divergence, unc = uncertainty, low = low-fidelity screen, rand = random")
    out.print(table)
    s = rep.summary
    out.print(f"state [bold]{s['state']}[/] ({s.get('stop_reason') or '-'}); {s['hits']} hits in {s['calls']} "
              f"acquired high-fidelity calls ({s['hits_per_call']:.3f} per call); "
              f"{s['calls_total']} calls in all including the seed set")
    for name, path in rep.files.items():
        out.print(f"  {name}: {path}")


@cli.group()
def launch() -> None:
    """Launch work described by a recipe in flows/."""


def _fireworks_options(command):
    """Where the LaunchPad is and how long a fireworks campaign waits for its workers."""
    command = click.option("--launchpad", "launchpad_file", type=click.Path(path_type=Path), default=None,
                           help="fireworks runner: my_launchpad.yaml (${VAR} expanded; default: the store's "
                                "MongoDB).")(command)
    command = click.option("--poll", "poll_s", type=float, default=30.0, show_default=True,
                           help="fireworks runner: seconds between looks at the LaunchPad.")(command)
    return click.option("--wait-timeout", "wait_timeout_s", type=float, default=86400.0, show_default=True,
                        help="fireworks runner: seconds to wait for workers before stopping (resume continues; "
                             "0: no limit).")(command)


def _wait(wait_timeout_s: float) -> float | None:
    return wait_timeout_s if wait_timeout_s > 0 else None


@launch.command("campaign")
@click.argument("recipe")
@click.option("--runner", type=click.Choice(["local", "fireworks"]), default="local", show_default=True,
              help="local runs every job in this process; fireworks sends each cycle's paid jobs to the LaunchPad "
                   "for `qadb worker` on any machine and waits for them.")
@click.option("--seed", type=int, default=None, help="Override the recipe's seed.")
@click.option("--report-dir", type=click.Path(path_type=Path), default=None,
              help="Where to write the report (default: ./qadb-reports/<campaign id>).")
@_fireworks_options
@click.pass_context
def launch_campaign(ctx, recipe, runner, seed, report_dir, launchpad_file, poll_s, wait_timeout_s):
    """Run the campaign RECIPE (a YAML file, or the name of one in flows/) to its end, then report.

    Launching the same recipe and seed again continues the same campaign instead of starting over.
    """
    from qadb.campaign import launch as run, report

    with open_store(ctx):
        doc = run(recipe, runner=runner, seed=seed, on_event=_say, launchpad_file=launchpad_file, poll_s=poll_s,
                  wait_timeout_s=_wait(wait_timeout_s))
        rep = report(doc.id, report_dir or Path("qadb-reports") / doc.id)
    _print_report(rep)


@cli.group()
def campaign() -> None:
    """Inspect and control campaigns stored in the store."""


@campaign.command("status")
@click.argument("campaign_id", required=False)
@click.pass_context
def campaign_status(ctx, campaign_id):
    """List campaigns (or one) with state, cycle, phase, budget and hits."""
    from qadb.campaign import status

    with open_store(ctx, read_only=True):
        rows = status(campaign_id)
    table = Table()
    for c in ("id", "kind", "state", "cycle", "phase", "budget", "hits", "stop_reason"):
        table.add_column(c)
    for r in rows:
        table.add_row(*(str(r[c]) for c in ("id", "kind", "state", "cycle", "phase", "budget", "hits", "stop_reason")))
    out.print(table if rows else "no campaigns in the store")


@campaign.command("resume")
@click.argument("campaign_id")
@click.option("--report-dir", type=click.Path(path_type=Path), default=None)
@_fireworks_options
@click.pass_context
def campaign_resume(ctx, campaign_id, report_dir, launchpad_file, poll_s, wait_timeout_s):
    """Continue a campaign from the phase it stopped or crashed in; paid calls are never repeated."""
    from qadb.campaign import report, resume

    with open_store(ctx):
        doc = resume(campaign_id, on_event=_say, launchpad_file=launchpad_file, poll_s=poll_s,
                     wait_timeout_s=_wait(wait_timeout_s))
        rep = report(doc.id, report_dir or Path("qadb-reports") / doc.id)
    _print_report(rep)


@campaign.command("report")
@click.argument("campaign_id")
@click.option("--out", "report_dir", type=click.Path(path_type=Path), default=None,
              help="Folder for report.html, report.json and the PNG plots (default: ./qadb-reports/<id>).")
@click.pass_context
def campaign_report(ctx, campaign_id, report_dir):
    """Print the per-cycle table and write the plots and HTML report."""
    from qadb.campaign import report

    with open_store(ctx, read_only=True):
        rep = report(campaign_id, report_dir or Path("qadb-reports") / campaign_id)
    _print_report(rep)


@campaign.command("stop")
@click.argument("campaign_id")
@click.pass_context
def campaign_stop(ctx, campaign_id):
    """Ask a running campaign to stop after its current phase (resume continues it)."""
    from qadb.campaign import stop
    from qadb.errors import StoreLockedError

    try:
        with open_store(ctx):
            message = stop(campaign_id)
    except StoreLockedError:  # the running campaign holds the embedded store's writer lock
        with open_store(ctx, read_only=True):
            message = stop(campaign_id, writable=False)
    out.print(message)


@campaign.command("export")
@click.argument("campaign_id")
@click.option("-o", "--out", "path", type=click.Path(path_type=Path), required=True, help="Output JSON file.")
@click.option("--validated", is_flag=True, help="Export every validated candidate, not only the hits.")
@click.pass_context
def campaign_export(ctx, campaign_id, path, validated):
    """Export the discovered candidates (and their relaxed structures) as Materials Project-style JSON."""
    from qadb.campaign.api import export_hits

    with open_store(ctx, read_only=True):
        payload = export_hits(campaign_id, path, validated=validated)
    out.print(f"exported {payload['meta']['count']} materials to {path}")
