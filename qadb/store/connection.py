"""Opening a store: a real MongoDB server by URI, or the embedded default on local disk.

``mongodb://`` and ``mongodb+srv://`` URIs go to pymongo. Anything else (``embedded://PATH`` or a
bare folder path) opens the embedded engine, litemongo: the mongomock query engine over one SQLite
file per collection. It was chosen from measurements recorded in ``docs/store.md``: it passes the
pymongo operations mongoengine and jobflow use, persists across processes and needs no server.
It is not safe for concurrent writers, so a writer takes an exclusive ``flock`` on ``LOCK`` in the
store folder; a second writer gets a `StoreLockedError` naming the holder's pid instead of
corrupting the files. Readers take no lock.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gridfs
import mongoengine
import pymongo
from pymongo.errors import BulkWriteError, PyMongoError

from qadb import config
from qadb.errors import StoreError, StoreLockedError

ALIAS = "default"
_SERVER_SCHEMES = ("mongodb://", "mongodb+srv://")


def is_server_uri(uri: str) -> bool:
    return uri.startswith(_SERVER_SCHEMES)


def embedded_path(uri: str) -> Path:
    """Folder of an embedded store given as ``embedded://PATH`` or a bare path."""
    path = uri[len(config.EMBEDDED_SCHEME):] if uri.startswith(config.EMBEDDED_SCHEME) else uri
    return Path(path).expanduser().resolve()


class _WriterLock:
    """Exclusive advisory lock held for the life of a writable embedded connection."""

    def __init__(self, folder: Path):
        self.path = folder / "LOCK"
        self._fh = None

    def acquire(self) -> None:
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise StoreLockedError(
                f"embedded store {self.path.parent} is open for writing by another process "
                f"(pid {holder}); wait for it to finish, or use a MongoDB server (QADB_MONGO_URI)"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


@dataclass
class Store:
    """An open store: the pymongo-compatible database, its GridFS, and what it is."""

    uri: str
    db: Any
    client: Any
    embedded: bool
    read_only: bool = False
    _lock: _WriterLock | None = field(default=None, repr=False)

    @property
    def display_uri(self) -> str:
        return config.redact(self.uri)

    @property
    def fs(self) -> gridfs.GridFS:
        return gridfs.GridFS(self.db)

    def require_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"store {self.display_uri} was opened read-only; refusing to write")

    def close(self) -> None:
        if _OPEN and _OPEN[-1] is self:
            _OPEN.pop()
        mongoengine.disconnect(alias=ALIAS)
        try:
            self.client.close()
        finally:
            if self._lock:
                self._lock.release()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _embedded_client_class(folder: Path):
    """A mongoengine-compatible client class bound to one litemongo folder."""
    import litemongo
    from litemongo._vendor.mongomock.gridfs import enable_gridfs_integration

    enable_gridfs_integration()

    class EmbeddedClient(litemongo.MongoClient):
        def __init__(self, host: Any = None, **kwargs: Any):
            super().__init__(str(folder), database=config.DEFAULT_DB)

    return EmbeddedClient


def _db_name(uri: str) -> str:
    name = pymongo.uri_parser.parse_uri(uri).get("database") if is_server_uri(uri) else None
    return name or os.environ.get("QADB_DB", config.DEFAULT_DB)


_OPEN: list[Store] = []


def current() -> Store | None:
    """The store this process opened last and has not closed (what documents read and write now)."""
    return _OPEN[-1] if _OPEN else None


def connect(uri: str | None = None, *, read_only: bool = False, timeout_ms: int = 5000) -> Store:
    """Open the store named by `uri` (see `qadb.config.store_uri` for the default).

    Registers it as mongoengine's default connection, so the documents in `qadb.store.documents`
    read and write here. One store is active per process at a time.
    """
    uri = config.store_uri(uri)
    mongoengine.disconnect(alias=ALIAS)
    store = _connect_server(uri, read_only, timeout_ms) if is_server_uri(uri) else _connect_embedded(uri, read_only)
    _OPEN[:] = [store]
    return store


def _connect_server(uri: str, read_only: bool, timeout_ms: int) -> Store:
    name = _db_name(uri)
    try:
        client = mongoengine.connect(
            db=name, host=uri, alias=ALIAS, serverSelectionTimeoutMS=timeout_ms, uuidRepresentation="standard"
        )
        client.admin.command("ping")
    except PyMongoError as exc:
        mongoengine.disconnect(alias=ALIAS)
        first = str(exc).split("\n")[0].split(", Timeout")[0].split(" (configured timeouts")[0]
        raise StoreError(f"cannot reach MongoDB at {config.redact(uri)}: {first}") from None
    store = Store(uri=uri, db=client[name], client=client, embedded=False, read_only=read_only)
    if not read_only:
        ensure_indexes()
    return store


def _connect_embedded(uri: str, read_only: bool) -> Store:
    folder = embedded_path(uri)
    if read_only and not folder.exists():
        raise StoreError(f"embedded store {folder} does not exist yet; ingest something first")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create embedded store at {folder}: {exc.strerror}") from None
    if not read_only and not os.access(folder, os.W_OK):
        raise StoreError(f"embedded store {folder} is not writable")
    lock = None
    if not read_only:
        lock = _WriterLock(folder)
        lock.acquire()
    try:
        client = mongoengine.connect(
            db=config.DEFAULT_DB, alias=ALIAS, mongo_client_class=_embedded_client_class(folder)
        )
    except Exception:
        if lock:
            lock.release()
        raise
    store = Store(
        uri=config.EMBEDDED_SCHEME + str(folder), db=client[config.DEFAULT_DB], client=client,
        embedded=True, read_only=read_only, _lock=lock,
    )
    if not read_only:
        ensure_indexes()
        _install_sql_indexes(store)
    return store


def _install_sql_indexes(store: Store) -> None:
    """The embedded store's SQL query indexes (`qadb.store.sqlindex`): tables and triggers."""
    from qadb.store import sqlindex
    from qadb.store.documents import LabelDoc, StructureDoc

    for doc in (StructureDoc, LabelDoc):
        table = _sqlite_collection(store.db[doc._get_collection_name()])
        if table is not None:
            sqlindex.install(table)


def ensure_indexes() -> None:
    """Create the indexes every document declares (idempotent)."""
    from qadb.store.documents import ALL_DOCUMENTS

    for doc in ALL_DOCUMENTS:
        doc.ensure_indexes()


def insert_new(collection: Any, docs: list[dict]) -> int:
    """Insert the documents whose ``_id`` is not stored yet (nor earlier in `docs`); returns how many.

    On a server this is ``insert_many(ordered=False)`` with duplicate-key errors ignored. On the
    embedded engine the same outcome is written directly: one SQLite transaction for the whole
    list, each document BSON-encoded once, and the engine's in-process query index kept current.
    Through its pymongo API every document costs a commit, two encodings and a recursive copy,
    which made writes the larger part of ingest time.
    """
    if not docs:
        return 0
    table = _sqlite_collection(collection)
    if table is None:
        try:
            return len(collection.insert_many(docs, ordered=False).inserted_ids)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != 11000 for e in errors):
                raise
            return exc.details.get("nInserted", len(docs) - len(errors))
    documents = table._documents
    keys = [documents.encode_key(d["_id"]) for d in docs]
    seen: set = set()
    for i in range(0, len(keys), 500):
        chunk = keys[i:i + 500]
        rows = table._connection.execute(
            f"SELECT {documents.ID} FROM {documents._table_name} WHERE {documents.ID} IN ({','.join('?' * len(chunk))})",  # nosec
            chunk,
        )
        seen.update(row[0] for row in rows)
    fresh = []
    for key, doc in zip(keys, docs):
        if key not in seen:
            seen.add(key)
            fresh.append((key, doc))
    from qadb.store import sqlindex

    kind = sqlindex.kind_of(table)
    indexed = kind is not None and sqlindex.installed(table)
    with table._rwlock.writer(), table._connection:
        table._connection.executemany(
            f"INSERT INTO {documents._table_name} VALUES (?, ?)",  # nosec
            [(key, documents._encode_doc(doc)) for key, doc in fresh],
        )
        if indexed:  # the SQL query indexes, in the same transaction (no re-reading later)
            sqlindex.write_rows(table, kind, fresh)
        if table._query_index is not None:
            for key, doc in fresh:
                table._query_index.add(key, doc)
    return len(fresh)


def _sqlite_collection(collection: Any) -> Any:
    """The embedded engine's storage behind a collection, or None for a server (or another engine)."""
    store = getattr(collection, "_store", None)
    if store is None or not hasattr(collection, "_db_store"):
        return None
    from litemongo import sqlite_store

    return store if isinstance(store, sqlite_store.CollectionStore) else None
