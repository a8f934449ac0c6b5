"""Opening stores: persistence, the single-writer lock, unreachable and read-only stores."""

import subprocess
import sys
import textwrap

import pytest

from qadb.errors import StoreError, StoreLockedError
from qadb.store import connect
from qadb.store.documents import StructureDoc
from tests.store.helpers import ingest_samples


def test_embedded_store_persists_across_processes(tmp_path):
    uri = str(tmp_path / "s")
    with connect(uri) as s:
        ingest_samples(s)
        n = StructureDoc.objects.count()
    code = textwrap.dedent(f"""
        from qadb.store import connect
        from qadb.store.documents import StructureDoc
        with connect({uri!r}, read_only=True):
            print(StructureDoc.objects.count())
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert n == 5 and int(res.stdout.strip()) == 5


def test_second_writer_gets_clear_error_not_corruption(tmp_path):
    uri = str(tmp_path / "s")
    with connect(uri) as s:
        ingest_samples(s)
        code = f"from qadb.store import connect\nconnect({uri!r})"
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert res.returncode != 0
        assert "StoreLockedError" in res.stderr and "open for writing by another process" in res.stderr
    # the lock is released on close and the data are intact
    with connect(uri) as s:
        assert StructureDoc.objects.count() == 5


def test_lock_is_per_store_in_process_too(tmp_path):
    uri = str(tmp_path / "s")
    first = connect(uri)
    try:
        with pytest.raises(StoreLockedError):
            connect(uri)
    finally:
        first.close()


def test_unreachable_server_is_one_line_error():
    with pytest.raises(StoreError) as err:
        connect("mongodb://user:secret@127.0.0.1:1/qadb", timeout_ms=300)
    msg = str(err.value)
    assert "cannot reach MongoDB" in msg and "\n" not in msg
    assert "secret" not in msg  # credentials never printed


def test_read_only_store_refuses_writes(tmp_path):
    uri = str(tmp_path / "s")
    connect(uri).close()
    with connect(uri, read_only=True) as s:
        with pytest.raises(StoreError, match="read-only"):
            ingest_samples(s)


def test_read_only_open_of_missing_store_fails(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        connect(str(tmp_path / "nope"), read_only=True)
