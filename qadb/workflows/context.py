"""Which store a job writes to, and jobflow's view of that store.

One store is open per process (`qadb.store.connect` registers it with mongoengine). Jobs name
their store by URI or not at all (`None`: the configured store). `use_store` reuses the store this
process already has open: the API functions and `qadb worker` open it once for many jobs, which keeps
job tracking to milliseconds and, on the embedded store, avoids a second writer lock in one process.
Only when nothing is open does a job connect, for its own duration.

jobflow keeps job outputs (here: small outcome dicts, which later jobs of a flow read through
references) in a maggma store; `job_store` puts them in the ``job_outputs`` collection of the qadb
store, so local flows and FireWorks workers resolve references from the same database.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from maggma.stores import MongoStore

from qadb import config
from qadb.errors import ConfigError
from qadb.store.connection import Store, connect, current, embedded_path, is_server_uri

JOB_OUTPUTS = "job_outputs"
_ACTIVE: list[Store] = []


def _same(store: Store, uri: str) -> bool:
    uri = config.store_uri(uri)
    if is_server_uri(uri) or not store.embedded:
        return uri == store.uri
    return embedded_path(uri) == embedded_path(store.uri)


def active_store() -> Store | None:
    """The store jobs in this process write to right now, if one is open (here or by `connect`)."""
    return _ACTIVE[-1] if _ACTIVE else current()


@contextmanager
def use_store(store: Store | str | None = None) -> Iterator[Store]:
    """The store to work in: `store` itself, the one already open here, or a fresh connection."""
    if isinstance(store, Store):
        _ACTIVE.append(store)
        try:
            yield store
        finally:
            _ACTIVE.pop()
        return
    current = active_store()
    if current is not None:
        if store is None or _same(current, store):
            yield current
            return
        raise ConfigError(f"this process already has store {current.display_uri} open; a job for "
                          f"{config.redact(store)} must run in a process of its own")
    opened = connect(store)
    _ACTIVE.append(opened)
    try:
        yield opened
    finally:
        _ACTIVE.pop()
        opened.close()


class CollectionStore(MongoStore):
    """A maggma store over one collection of an already open qadb store (embedded or server)."""

    def __init__(self, collection: Any, **kwargs: Any):
        self._given = collection
        self.collection_name = collection.name
        self.database = None
        self.default_sort = None
        self.safe_update = False
        self._coll = None
        self.kwargs = kwargs
        super(MongoStore, self).__init__(**kwargs)  # maggma's base Store: key, last_updated_field, ...

    def connect(self, force_reset: bool = False) -> None:
        self._coll = self._given

    def close(self) -> None:
        """The qadb store owns the connection; closing it is the store's business."""

    @property
    def name(self) -> str:
        return f"qadb:{self.collection_name}"

    def __hash__(self) -> int:
        return hash(self.name)


def job_store(store: Store) -> Any:
    """jobflow `JobStore` writing job outputs to the ``job_outputs`` collection of `store`."""
    from jobflow import JobStore

    return JobStore(CollectionStore(store.db[JOB_OUTPUTS]))
