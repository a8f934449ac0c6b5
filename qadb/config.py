"""Where things live: the store URI, the embedded store's folder, the staged datasets.

Resolution order for the store URI (first wins): an explicit argument, ``$QADB_MONGO_URI``,
``mongo_uri`` in ``$QADB_CONFIG`` (default ``~/.qadb/config.yaml``), else the embedded default at
``$QADB_HOME/store`` (default ``~/.qadb/store``). Credentials belong in the URI given by the
environment or the config file; `redact` strips them before anything is logged or exported.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from qadb.errors import ConfigError

EMBEDDED_SCHEME = "embedded://"
DEFAULT_DB = "qadb"


def qadb_home() -> Path:
    """Folder for the embedded store, caches and the user config (``$QADB_HOME`` or ``~/.qadb``)."""
    return Path(os.environ.get("QADB_HOME", Path.home() / ".qadb")).expanduser()


def config_path() -> Path:
    return Path(os.environ.get("QADB_CONFIG", qadb_home() / "config.yaml")).expanduser()


def load_config() -> dict:
    """The user config file as a dict ({} when absent); a malformed file is a `ConfigError`."""
    path = config_path()
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" line {line + 1}" if line is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def store_uri(uri: str | None = None) -> str:
    """The store URI to use: argument, environment, config file, or the embedded default."""
    if uri:
        return uri
    if os.environ.get("QADB_MONGO_URI"):
        return os.environ["QADB_MONGO_URI"]
    cfg = load_config()
    if cfg.get("mongo_uri"):
        return str(cfg["mongo_uri"])
    return EMBEDDED_SCHEME + str(qadb_home() / "store")


def redact(uri: str) -> str:
    """The URI with any ``user:password@`` removed, safe for logs and exports."""
    return re.sub(r"//[^/@]*@", "//***@", uri)


def shared_data_dir() -> Path:
    """The staged public datasets (``$QADB_SHARED_DATA`` or ``<repo>/../shared/data``)."""
    env = os.environ.get("QADB_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"
