"""Shared fixtures: a fresh store per test on every backend that can run here.

Backends: the embedded default (litemongo on a temp folder) and a real MongoDB wire-protocol
server (`nx-27017`, started once per session on a free loopback port). When
``QADB_TEST_MONGO_URI`` is set, the whole suite runs against that server instead, each test in a
database of its own that is dropped afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pymongo
import pytest

os.environ.setdefault("SPGLIB_WARNING", "OFF")

EXTERNAL_URI = os.environ.get("QADB_TEST_MONGO_URI")
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def wire_server(tmp_path_factory):
    """A real MongoDB wire-protocol server (nx-27017 over SQLite) on loopback."""
    exe = shutil.which("nx-27017")
    if exe is None:
        pytest.skip("nx-27017 is not installed (pip install -e '.[test]')")
    folder = tmp_path_factory.mktemp("nx27017")
    port = _free_port()
    pid_file = folder / "pid"
    subprocess.run([exe, "-d", "--data-dir", str(folder / "data"), "--host", "127.0.0.1", "--port", str(port),
                    "--pid-file", str(pid_file), "--log-file", str(folder / "log")], check=True, timeout=60)
    uri = f"mongodb://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            pymongo.MongoClient(uri, serverSelectionTimeoutMS=500).admin.command("ping")
            break
        except pymongo.errors.PyMongoError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    yield uri
    subprocess.run([exe, "--stop", "--pid-file", str(pid_file)], timeout=60)


def _server_uri(base: str) -> str:
    """A fresh database on the server at `base`."""
    head = base.split("?")[0].rstrip("/")
    query = "?" + base.split("?", 1)[1] if "?" in base else ""
    if head.count("/") > 2:
        head = head.rsplit("/", 1)[0]
    return f"{head}/qadb_test_{uuid.uuid4().hex[:10]}{query}"


BACKENDS = ["external"] if EXTERNAL_URI else ["embedded", "wire"]


@pytest.fixture(params=BACKENDS)
def store_uri(request, tmp_path):
    """URI of an empty store on each backend."""
    if request.param == "embedded":
        yield str(tmp_path / "store")
        return
    base = EXTERNAL_URI if request.param == "external" else request.getfixturevalue("wire_server")
    uri = _server_uri(base)
    yield uri
    client = pymongo.MongoClient(uri)
    client.drop_database(pymongo.uri_parser.parse_uri(uri)["database"])
    client.close()


@pytest.fixture
def store(store_uri):
    from qadb.store import connect

    s = connect(store_uri)
    yield s
    s.close()


@pytest.fixture
def embedded_uri(tmp_path):
    """An embedded store folder (or the external server when one is given)."""
    if EXTERNAL_URI:
        return _server_uri(EXTERNAL_URI)
    return str(tmp_path / "store")


@pytest.fixture
def shared_data():
    if not SHARED_DATA.exists():
        pytest.skip(f"staged datasets not found at {SHARED_DATA}")
    return SHARED_DATA


def mongomock_launchpad(monkeypatch, db: str):
    """A FireWorks LaunchPad on in-process mongomock (no server here can host FireWorks' documents)."""
    import fireworks.core.launchpad as lpmod
    import gridfs.synchronous.grid_file as grid_file
    import mongomock
    from mongomock.collection import Collection
    from mongomock.database import Database

    from qadb.workflows import fireworks as fw

    def widened(current, extra):
        return (*(current if isinstance(current, tuple) else (current,)), extra)

    # FireWorks opens a GridFS on its database: let gridfs accept mongomock's classes too
    monkeypatch.setattr(grid_file, "Database", widened(grid_file.Database, Database))
    monkeypatch.setattr(grid_file, "Collection", widened(grid_file.Collection, Collection))
    monkeypatch.setattr(lpmod, "MongoClient", mongomock.MongoClient)
    return fw.launchpad(f"mongodb://localhost/{db}")
