"""The materials store: connection, documents, ingest, query, export, checkpoints, provenance.

Thin public API over the modules of this package::

    from qadb import store
    s = store.connect()                      # embedded default, or a mongodb:// URI
    store.ingest_dataset(s, "mp20-val")
    df = store.query(chemsys="Fe-O", property="formation_energy_per_atom", value_range=(-3, -1))
"""

from qadb.store.blobs import checkpoint_bytes, register_checkpoint
from qadb.store.connection import Store, connect
from qadb.store.export import export
from qadb.store.importers import attach_dataset_labels, ingest_dataset, records_from_dataset, records_from_paths
from qadb.store.ingest import IngestReport, ingest_records
from qadb.store.lineage import lineage
from qadb.store.query import Query, find, query, to_frame
from qadb.store.stats import summary

__all__ = [
    "IngestReport", "Query", "Store", "attach_dataset_labels", "checkpoint_bytes", "connect", "export", "find",
    "ingest_dataset", "ingest_records", "lineage", "query", "records_from_dataset", "records_from_paths",
    "register_checkpoint", "summary", "to_frame",
]
