"""Model checkpoints in GridFS: register a weights file once, fetch it back by id."""

from __future__ import annotations

import hashlib
from pathlib import Path

from qadb.errors import CheckpointError
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
