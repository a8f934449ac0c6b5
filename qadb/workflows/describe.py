"""Descriptors and validity flags from `qadb.chem.describe`, written onto structure documents.

chem computes and never touches the store; this writes its result where queries and campaigns can
read it: `descriptors` (C, SPP, M_LED, symmetry, complexity, with the schema and the versions of the
reference artifacts used) and `validity` (each check with its reason, plus the two verdicts).
Idempotent and resumable: a document whose descriptors carry the current schema and SPP table version
(and M_LED when asked for) is skipped unless `force`; each document is written on its own, so an
interrupted run keeps what it finished.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from qadb.store.documents import StructureDoc
from qadb.store.documents.common import utcnow

Progress = Callable[[int, int], None]
_VALIDITY_KEYS = ("validity", "valid_structure", "seed000_pass")


@dataclass
class DescribeReport:
    described: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # structure id -> one-line reason

    def as_dict(self) -> dict:
        return {"described": self.described, "skipped": self.skipped, "failed": len(self.failed)}


def up_to_date(descriptors: dict, schema: str, spp_version: str, with_mled: bool) -> bool:
    """Whether stored descriptors were made by this schema with this SPP table (and hold M_LED if wanted)."""
    return (descriptors.get("schema") == schema and descriptors.get("artifacts", {}).get("spp_table") == spp_version
            and (not with_mled or descriptors.get("mled") is not None))


def describe_structures(ids: Sequence[str], *, with_mled: bool = False, force: bool = False,
                        progress: Progress | None = None) -> DescribeReport:
    """Compute and store descriptors for `ids` (in the active store); failures are reported, not raised."""
    from pymatgen.core import Structure

    from qadb.chem import describe, load_spp_table
    from qadb.chem._describe import DESCRIBE_SCHEMA

    table = load_spp_table()
    report = DescribeReport()
    for k, sid in enumerate(ids):
        doc = StructureDoc.objects(id=sid).only("structure", "descriptors").first()
        if doc is None:
            report.failed[sid] = "no such structure"
        elif not force and up_to_date(doc.descriptors or {}, DESCRIBE_SCHEMA, table.version, with_mled):
            report.skipped += 1
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    d = describe(Structure.from_dict(doc.structure), spp_table=table, with_mled=with_mled)
            except Exception as exc:  # one bad structure must not stop a store-wide pass
                report.failed[sid] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            else:
                validity = {k: d.pop(k) for k in _VALIDITY_KEYS}
                StructureDoc.objects(id=sid).update_one(set__descriptors=d, set__validity=validity,
                                                        set__updated_at=utcnow())
                report.described += 1
        if progress:
            progress(k + 1, len(ids))
    return report
