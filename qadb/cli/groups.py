"""The root `qadb` group and the shared helpers every command module uses.

Each area registers its commands in its own module (`commands`, `jobs`, `generator`, `validator`,
`campaign`); `qadb.cli.app` imports them all, so adding an area never edits another's file.
"""

from __future__ import annotations

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)
out = Console()


@click.group()
@click.option("--store", "uri", envvar="QADB_MONGO_URI", default=None,
              help="Store URI: mongodb://..., mongodb+srv://..., or a folder for the embedded store "
                   "(default: $QADB_MONGO_URI, then mongo_uri in ~/.qadb/config.yaml, then ~/.qadb/store).")
@click.version_option(package_name="qadb")
@click.pass_context
def cli(ctx: click.Context, uri: str | None) -> None:
    """qadb: materials store and generative discovery campaigns."""
    ctx.ensure_object(dict)
    ctx.obj["uri"] = uri


@cli.group()
def train() -> None:
    """Train a model (generator, validator, proxy) and register its checkpoint in the store."""


def open_store(ctx: click.Context, read_only: bool = False):
    """Connect to the store chosen by --store / $QADB_MONGO_URI / config (embedded by default)."""
    from qadb.store import connect

    return connect(ctx.obj.get("uri"), read_only=read_only)


def progress() -> Progress:
    """A transient progress bar on stderr, silent when stderr is not a terminal."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True, disable=not console.is_terminal)
