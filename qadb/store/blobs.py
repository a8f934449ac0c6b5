"""Large things in GridFS: model checkpoints, and JSON results of jobs (documents cap at 16 MB).

JSON blobs are gzip-compressed JSON under a caller-chosen id, so a job that is re-run after being
killed replaces its own blob instead of leaving an orphan; they are read back with `json`, never
unpickled.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

from qadb.errors import CheckpointError, StoreError
from qadb.store.connection import Store
from qadb.store.documents import CheckpointDoc, Origin


def register_checkpoint(store: Store, path: Path, *, name: str, kind: str, architecture: str = "",
                        hyperparameters: dict | None = None, training_set: dict | None = None,
                        metrics: dict | None = None, parent: str | None = None) -> CheckpointDoc:
    """Store the file's bytes in GridFS and its metadata as a document; idempotent by content."""
    store.require_writable()
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    cid = f"{name}@{sha[:12]}"
    existing = CheckpointDoc.objects(id=cid).first()
    if existing:
        return existing
    file_id = store.fs.put(data, filename=path.name, sha256=sha)
    doc = CheckpointDoc(
        id=cid, name=name, kind=kind, architecture=architecture, hyperparameters=hyperparameters or {},
        training_set=training_set or {}, metrics=metrics or {}, parent=parent, file_id=file_id, sha256=sha,
        size=len(data), origin=Origin(kind="file", file=str(path)),
    )
    doc.save()
    return doc


def checkpoint_bytes(store: Store, checkpoint_id: str) -> bytes:
    """The weights of a registered checkpoint, verified against their sha256."""
    doc = CheckpointDoc.objects(id=checkpoint_id).first()
    if doc is None:
        raise CheckpointError(f"no checkpoint {checkpoint_id!r} in the store")
    data = store.fs.get(doc.file_id).read()
    if hashlib.sha256(data).hexdigest() != doc.sha256:
        raise CheckpointError(f"checkpoint {checkpoint_id!r} is corrupt in the store (sha256 mismatch)")
    return data


def put_json(store: Store, blob_id: str, obj: Any, **metadata: Any) -> str:
    """Store `obj` as gzip JSON under `blob_id`, replacing an earlier blob of that id."""
    store.require_writable()
    data = gzip.compress(json.dumps(obj, separators=(",", ":")).encode(), compresslevel=5)
    fs = store.fs
    if fs.exists(blob_id):
        fs.delete(blob_id)
    fs.put(data, _id=blob_id, filename=f"{blob_id}.json.gz", format="json+gzip", **metadata)
    return blob_id


def get_json(store: Store, blob_id: str) -> Any:
    """The object stored by `put_json`; a missing blob is a `StoreError`."""
    from gridfs.errors import NoFile

    try:
        data = store.fs.get(blob_id).read()
    except NoFile:
        raise StoreError(f"no blob {blob_id!r} in the store") from None
    return json.loads(gzip.decompress(data))
