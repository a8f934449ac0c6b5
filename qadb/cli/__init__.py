"""The `qadb` command line. Every user error prints one ``error: ...`` line and exits non-zero."""

from __future__ import annotations

import sys

import click

from qadb.errors import QadbError


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the click group, turning `QadbError` into one line + exit code."""
    from qadb.cli.app import cli

    try:
        code = cli.main(args=argv, prog_name="qadb", standalone_mode=False)
        if isinstance(code, int) and code:  # outside standalone mode click returns ctx.exit(code) instead of exiting
            sys.exit(code)
    except QadbError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
