"""Assemble the command line: import every command module so its commands register on `cli`."""

from __future__ import annotations

import importlib

from qadb.cli.groups import cli

_MODULES = ("commands", "jobs", "generator", "validator", "campaign", "bench")

for _name in _MODULES:
    try:
        importlib.import_module(f"qadb.cli.{_name}")
    except ModuleNotFoundError as exc:  # an area not built yet; any other missing module is a real error
        if exc.name != f"qadb.cli.{_name}":
            raise

__all__ = ["cli"]
