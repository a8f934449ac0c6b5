"""``qadb bench AREA [ARGS]...``: run ``bench/AREA.py`` of the source checkout with this interpreter.

The benchmark scripts are not part of the installed package (they read staged datasets and write
``bench/results/``), so this command needs the checkout the package was installed from (``pip install -e``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from qadb.cli.groups import cli
from qadb.errors import InputError

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def bench_areas(folder: Path = BENCH_DIR) -> list[str]:
    """The areas with a script in `folder` (files starting with ``_`` are helpers, not areas)."""
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.argument("area")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def bench(ctx: click.Context, area: str, args: tuple[str, ...]) -> None:
    """Run a benchmark: `qadb bench generator --quick` is `python bench/generator.py --quick`, and
    `qadb bench generator --help` lists that script's options. The script prints a markdown table and writes
    bench/results/AREA.json."""
    if area in ("-h", "--help"):  # options after AREA belong to the script, so click's own help is off
        click.echo(ctx.get_help())
        return
    if not BENCH_DIR.is_dir():
        raise InputError(f"no bench/ folder at {BENCH_DIR}: benchmarks run from a source checkout (pip install -e .)")
    areas = bench_areas()
    if area not in areas:
        raise InputError(f"unknown bench area {area!r}; known: {', '.join(areas)}")
    code = subprocess.call([sys.executable, str(BENCH_DIR / f"{area}.py"), *args], cwd=BENCH_DIR.parent)
    if code:
        raise click.exceptions.Exit(code)
