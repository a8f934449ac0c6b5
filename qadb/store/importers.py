"""Entry points that turn files and staged datasets into records and ingest them."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pandas as pd

from qadb import config
from qadb.errors import InputError
from qadb.store import datasets
from qadb.store.connection import Store
from qadb.store.documents import AliasDoc, LabelDoc, Origin, StructureDoc
from qadb.store.ingest import IngestReport, _insert_ignoring_duplicates, _normalise_label, flag_conflicts, ingest_records, label_doc
from qadb.store.identity import content_hash
from qadb.store.readers import LabelSpec, RawLabel, RawRecord, detect_format, read_csv, read_path

Progress = Callable[[str, int, int], None]


def records_from_paths(paths: list[Path], *, fmt: str | None = None, labels: list[LabelSpec] = (),
                       cif_column: str = "cif", id_column: str | None = None, source: str | None = None) -> list[RawRecord]:
    """Records from user files; label specs apply to CSV columns."""
    out: list[RawRecord] = []
    for path in paths:
        opts = {"cif_column": cif_column, "id_column": id_column, "labels": list(labels)} if (fmt or detect_format(Path(path))) == "csv" else {}
        out.extend(read_path(Path(path), fmt=fmt, source=source, **opts))
    return out


def records_from_dataset(name: str) -> list[RawRecord]:
    """Records of a staged dataset preset (structure-bearing datasets only)."""
    if name == datasets.FERE:
        return list(_fere_records())
    p = datasets.preset(name)
    out: list[RawRecord] = []
    for path in p.paths():
        if not path.exists():
            raise InputError(f"dataset {name}: {path} not found (set QADB_SHARED_DATA to the staged data folder)")
        out.extend(read_csv(path, name, id_column=p.id_column, id_prefix=p.id_prefix, labels=p.labels,
                            theoretical_column=p.theoretical_column))
    return out


def _fere_records() -> Iterator[RawRecord]:
    path = config.shared_data_dir() / "fere_formation_enthalpy_multi_functional" / "fere_all_setups.csv.gz"
    if not path.exists():
        raise InputError(f"dataset fere: {path} not found (set QADB_SHARED_DATA to the staged data folder)")
    df = pd.read_csv(path)
    for idx, row in df.iterrows():
        fidelity = datasets.fere_fidelity(row["functional"], row["U_setting"])
        params = {
            "source": "FERE multi-functional set", "setup": row["setup"], "U_setting": row["U_setting"],
            "ldau": bool(row["ldau"]), "ldauu": row["ldauu"], "encut": float(row["encut"]), "redistribute": False,
        }
        labels = [
            RawLabel("formation_energy_per_atom", row["dft_dHf_eV_per_atom"], "eV/atom", fidelity, code="VASP", parameters=params),
            RawLabel("formation_energy_per_atom", row["exp_dHf_eV_per_atom"], "eV/atom", "EXP", code="experiment",
                     parameters={"source": "FERE multi-functional set (experimental)", "redistribute": False}),
        ]
        yield RawRecord(f"{path.name}:row {idx + 2}", "cif", row["cif"], "fere",
                        source_id=f"fere:{row['formula']}:{row['setup']}:{'ldau' if row['ldau'] else 'noldau'}", labels=labels)


def ingest_dataset(store: Store, name: str, *, strict: bool = True, workers: int | None = None,
                   progress: Progress | None = None) -> IngestReport:
    """Ingest one staged dataset by preset name (see `qadb.store.datasets.ALL_DATASETS`)."""
    if name in datasets.LABEL_ONLY:
        return attach_dataset_labels(store, name, strict=strict)
    return ingest_records(store, records_from_dataset(name), strict=strict, workers=workers,
                          parameters={"dataset": name}, progress=progress)


def _label_only_rows(name: str) -> Iterator[tuple[str, str, RawLabel]]:
    """(where, source id, label) for datasets that carry values keyed by an id but no structures."""
    root = config.shared_data_dir()
    if name == "megnet-bandgap":
        path = root / "megnet_multifidelity_bandgap" / "bandgaps_long.csv.gz"
        df = pd.read_csv(path)
        df = df[df["id_type"] == "mp_id"]
        for idx, row in df.iterrows():
            fidelity = datasets.MEGNET_FIDELITY[row["fidelity"]]
            yield (f"{path.name}:row {idx + 2}", row["id"],
                   RawLabel("band_gap", row["band_gap_eV"], "eV", fidelity, code="VASP",
                            parameters={"source": "MEGNet multi-fidelity band gaps (Chen et al. 2021)"}))
    elif name == "mp2020-exp":
        path = root / "mp2020_fit_exp_vs_gga" / "exp_formation_enthalpies.csv.gz"
        df = pd.read_csv(path)
        for idx, row in df[df["mpid"].notna()].iterrows():
            yield (f"{path.name}:row {idx + 2}", row["mpid"],
                   RawLabel("formation_energy_per_atom", row["exp_dHf_eV_per_atom"], "eV/atom", "EXP", code="experiment",
                            uncertainty=None if pd.isna(row["exp_uncertainty_eV_per_atom"]) else float(row["exp_uncertainty_eV_per_atom"]),
                            parameters={"source": "pymatgen MP2020 fit set (experimental)"}))
    else:
        raise InputError(f"unknown label-only dataset {name!r}; known: {', '.join(datasets.LABEL_ONLY)}")


def attach_dataset_labels(store: Store, name: str, *, strict: bool = True) -> IngestReport:
    """Attach id-keyed values to structures already in the store (joined by source id).

    Rows whose id matches no stored structure cannot be placed and are counted in `skipped`;
    they are not an error, since the structure may simply not have been ingested.
    """
    store.require_writable()
    rows = list(_label_only_rows(name))
    report = IngestReport(records=len(rows))
    problems = []
    normalised = []
    for where, sid, lab in rows:
        try:
            normalised.append((where, sid, _normalise_label(lab)))
        except InputError as exc:
            problems.append(f"{where}: {exc}")
    if problems and strict:
        raise InputError(f"{problems[0]}; nothing was stored")
    ids = sorted({sid for _, sid, _ in normalised})
    found: dict[str, tuple[str, str]] = {}
    chemsys: dict[str, str] = {}
    for i in range(0, len(ids), 1000):
        for doc in AliasDoc._get_collection().find({"_id": {"$in": ["s:" + x for x in ids[i:i + 1000]]}}):
            found[doc["_id"][2:]] = doc["material"]
    mids = sorted(set(found.values()))
    for i in range(0, len(mids), 1000):
        for doc in StructureDoc._get_collection().find({"_id": {"$in": mids[i:i + 1000]}}, {"chemsys": 1}):
            chemsys[doc["_id"]] = doc["chemsys"]
    activity = "labels-" + content_hash([name, [(sid, lab.fidelity, lab.value) for _, sid, lab in normalised]])[:20]
    docs = {}
    for where, sid, lab in normalised:
        if sid not in found:
            report.skipped.append(f"{where}: no structure with id {sid} in the store")
            continue
        mid = found[sid]
        file, _, row = where.partition(":")
        doc = label_doc(mid, chemsys[mid], lab, sid, Origin(kind="dataset", activity=activity, dataset=name, file=file, row=row))
        doc.validate()
        docs.setdefault(doc.id, doc.to_mongo().to_dict())
    report.skipped[:0] = problems
    report.new_labels = _insert_ignoring_duplicates(LabelDoc._get_collection(), list(docs.values()))
    report.conflicts = flag_conflicts({d["structure"] for d in docs.values()})
    report.activity = activity
    return report


def dataset_summary() -> str:
    """One line per known dataset, for `qadb ingest --list`."""
    lines = []
    for name in datasets.ALL_DATASETS:
        if name in datasets.PRESETS:
            p = datasets.PRESETS[name]
            labels = ", ".join(f"{s.property}@{s.fidelity}" for s in p.labels) or "structures only"
            lines.append(f"{name}: {', '.join(p.files)} -> {labels}")
        elif name == datasets.FERE:
            lines.append("fere: FERE 251 compounds x 10 DFT setups -> formation_energy_per_atom@r2SCAN(+U)/SCAN(+U)/PBE+U/EXP")
        else:
            lines.append(f"{name}: labels joined to stored structures by Materials Project id")
    return "\n".join(lines)


__all__ = ["attach_dataset_labels", "dataset_summary", "ingest_dataset", "records_from_dataset", "records_from_paths"]
