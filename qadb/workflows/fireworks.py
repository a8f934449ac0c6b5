"""FireWorks runner: flows become workflows on a LaunchPad in the store's own MongoDB; workers pull them.

- `launchpad` opens the LaunchPad in the same database as the qadb store. The URI (credentials
  included) comes from ``--store`` / ``$QADB_MONGO_URI`` / ``~/.qadb/config.yaml``; a launchpad
  YAML may refer to environment variables as ``${VAR}``, so no credential is written in a file.
- `to_workflow` converts a jobflow flow; every firework carries ``_category`` (gpu, cpu or dft,
  from its Maker), and a worker only pulls fireworks of its own categories, so GPU jobs reach GPU
  workers only.
- `run_worker` is what ``qadb worker`` runs: optionally re-run lost runs, then ``rapidfire`` with
  jobflow's job store pointed at the qadb store, so job outputs and references live there too.

Lost runs: a firework stays RUNNING when its worker dies (node failure, walltime kill). FireWorks
pings a running launch every few minutes; `lost_runs(lp, expiration_s, rerun=True)` finds launches
silent for longer than `expiration_s` and puts their fireworks back to READY. The re-run job then
finds the dead run's store record stale (`qadb.store.jobs`) and takes it over; nothing it already
wrote is duplicated because every id it writes is deterministic.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from pymongo.errors import PyMongoError

from qadb import config
from qadb.errors import ConfigError, StoreError
from qadb.store.connection import Store, is_server_uri

CATEGORIES = ("gpu", "cpu", "dft")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(value: Any, where: Path) -> Any:
    if isinstance(value, str):
        def sub(match: re.Match) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ConfigError(f"{where}: environment variable {name} is not set")
            return os.environ[name]
        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand(v, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, where) for v in value]
    return value


def load_yaml(path: str | Path) -> dict:
    """A launcher YAML file with ``${VAR}`` expanded from the environment (a missing one is an error)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    return _expand(data, path)


def launchpad(uri: str | None = None, *, config_file: str | Path | None = None, strm_lvl: str = "WARNING",
              timeout_ms: int = 5000) -> Any:
    """The LaunchPad in the MongoDB database of the store `uri` (or the one `config_file` names)."""
    import pymongo
    from fireworks import LaunchPad

    cfg = load_yaml(config_file) if config_file else {}
    host = cfg.get("host") or config.store_uri(uri)
    if not is_server_uri(host):
        raise ConfigError("FireWorks needs a MongoDB server for its LaunchPad: set QADB_MONGO_URI=mongodb://... "
                          "(the embedded store cannot host one)")
    name = cfg.get("name") or pymongo.uri_parser.parse_uri(host).get("database") or config.DEFAULT_DB
    options = {k: cfg[k] for k in ("logdir", "user_indices", "wf_user_indices", "authsource") if cfg.get(k)}
    client_kwargs = {"serverSelectionTimeoutMS": timeout_ms, **(cfg.get("mongoclient_kwargs") or {})}
    try:
        lp = LaunchPad(host=host, name=name, uri_mode=True, mongoclient_kwargs=client_kwargs,
                       strm_lvl=cfg.get("strm_lvl") or strm_lvl, **options)
        lp.db.command("ping")
        if lp.fw_id_assigner.count_documents({}) == 0:  # a fresh database: what `lpad reset` would set up
            lp.fw_id_assigner.insert_one({"next_fw_id": 1, "next_launch_id": 1})
            lp.tuneup()
    except PyMongoError as exc:
        first = str(exc).split("\n")[0].split(", Timeout")[0]
        raise StoreError(f"cannot reach the LaunchPad at {config.redact(host)}: {first}") from None
    return lp


def _check_no_credentials(job: Any) -> None:
    """Jobs go into the LaunchPad database as JSON: a URI with a password must not ride along."""
    for arg in [*job.function_args, *job.function_kwargs.values()]:
        if isinstance(arg, str) and is_server_uri(arg) and config.redact(arg) != arg:
            raise ConfigError(f"job {job.name!r} carries a store URI with credentials; submit jobs without "
                              "store_uri so that workers use their configured store")


def to_workflow(flow: Any, name: str | None = None) -> tuple[Any, dict[str, Any]]:
    """(FireWorks Workflow, {job uuid: Firework}); every firework gets a worker category."""
    from fireworks import Workflow
    from jobflow.core.flow import get_flow
    from jobflow.managers.fireworks import job_to_firework

    flow = get_flow(flow)
    by_uuid: dict[str, Any] = {}
    for job, parents in flow.iterflow():
        _check_no_credentials(job)
        fw = job_to_firework(job, None, parents=parents, parent_mapping=by_uuid)
        category = fw.spec.get("_category", "cpu")
        if category not in CATEGORIES:
            raise ConfigError(f"job {job.name!r} asks for worker category {category!r}; known: {', '.join(CATEGORIES)}")
        fw.spec["_category"] = category
    return Workflow(list(by_uuid.values()), name=name or flow.name), by_uuid


def submit(flow: Any, lp: Any, name: str | None = None) -> dict[str, int]:
    """Add `flow` to the LaunchPad; returns {job uuid: firework id}."""
    wf, by_uuid = to_workflow(flow, name)
    provisional = {uuid: fw.fw_id for uuid, fw in by_uuid.items()}  # add_wf renumbers the fireworks in place
    new_ids = lp.add_wf(wf)
    return {uuid: new_ids[old] for uuid, old in provisional.items()}


def lost_runs(lp: Any, expiration_s: float, rerun: bool = False) -> dict[str, list[int]]:
    """Fireworks whose launch has not pinged for `expiration_s`; with `rerun`, back to READY."""
    launches, fireworks, inconsistent = lp.detect_lostruns(expiration_secs=expiration_s, rerun=rerun)
    return {"launches": list(launches), "fireworks": list(fireworks), "inconsistent": list(inconsistent)}


def fw_states(lp: Any) -> dict[str, int]:
    """{state: number of fireworks} on the LaunchPad."""
    return dict(Counter(doc["state"] for doc in lp.fireworks.find({}, {"state": 1})))


@contextmanager
def _jobflow_store(store: Store):
    import jobflow

    from qadb.workflows.context import job_store

    previous = jobflow.SETTINGS.JOB_STORE
    jobflow.SETTINGS.JOB_STORE = job_store(store)
    try:
        yield
    finally:
        jobflow.SETTINGS.JOB_STORE = previous


def fworker(categories: list[str] | tuple[str, ...] = (), name: str | None = None, config_file: str | Path | None = None) -> Any:
    """The FWorker: from `config_file` (my_fworker.yaml) if given, categories from the arguments win."""
    from fireworks import FWorker

    cfg = load_yaml(config_file) if config_file else {}
    cats = list(categories) or cfg.get("category") or []
    cats = [cats] if isinstance(cats, str) else list(cats)
    bad = [c for c in cats if c not in CATEGORIES]
    if bad:
        raise ConfigError(f"unknown worker category {', '.join(bad)}; known: {', '.join(CATEGORIES)}")
    query = cfg.get("query")
    try:
        query = json.loads(query) if isinstance(query, str) else query
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{config_file}: query is not a JSON object ({exc.msg})") from None
    return FWorker(name=name or cfg.get("name") or f"qadb-{'-'.join(cats) or 'any'}", category=cats or "",
                   query=query, env=cfg.get("env"))


def run_worker(lp: Any, store: Store, worker: Any, *, nlaunches: int = 0, max_loops: int = -1, sleep_s: float = 60,
               rerun_lost_after_s: float | None = None, launch_dir: str | Path | None = None,
               timeout_s: float | None = None, strm_lvl: str = "WARNING") -> dict:
    """Run fireworks of `worker`'s categories until none are left (or `nlaunches` / `max_loops` / `timeout_s`).

    Jobs write to `store` (opened once for all of them). Returns the lost runs re-queued and the
    LaunchPad's states before and after.
    """
    from fireworks.core.rocket_launcher import rapidfire

    from qadb.workflows.context import use_store

    lost = lost_runs(lp, rerun_lost_after_s, rerun=True) if rerun_lost_after_s is not None else None
    before = fw_states(lp)
    directory = Path(launch_dir or config.qadb_home() / "launches").expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    try:
        with use_store(store), _jobflow_store(store):
            rapidfire(lp, worker, m_dir=str(directory), nlaunches=nlaunches, max_loops=max_loops,
                      sleep_time=sleep_s, strm_lvl=strm_lvl, timeout=timeout_s)
    finally:
        os.chdir(cwd)
    return {"lost": lost, "before": before, "after": fw_states(lp)}


def queue_launch(lp: Any, worker: Any, qadapter_file: str | Path, *, njobs: int, launch_dir: str | Path | None = None,
                 strm_lvl: str = "WARNING") -> None:
    """Submit `njobs` batch jobs through a my_qadapter.yaml (SLURM/PBS); each runs ``qadb worker``."""
    from fireworks.queue.queue_launcher import rapidfire as queue_rapidfire
    from fireworks.utilities.fw_serializers import load_object

    adapter = load_object(load_yaml(qadapter_file))
    directory = Path(launch_dir or config.qadb_home() / "launches").expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    queue_rapidfire(lp, worker, adapter, launch_dir=str(directory), nlaunches=njobs, njobs_queue=njobs,
                    sleep_time=5, strm_lvl=strm_lvl)
