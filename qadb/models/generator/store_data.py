"""Training tensors for the generator exported from the store (CPU side: needs pymatgen and the store).

`qadb train generator --from-store` calls `write_from_store`: every stored structure with at most ``max_atoms``
sites (Niggli-reduced) becomes one training crystal, with the conditioning columns filled from its labels
(formation energy, E_hull, band gap, bulk modulus; compactness is computed). Structures that the generator made
itself (``origin.kind == "generated"``) are left out, and so is every structure that carries an MP-20 test id
when the staged MP-20 test file is found (the held-out set stays untouched). The file has the layout that
`qadb.models.generator.train` reads (``train`` tensors + ``meta_json``); it has no ``test`` part.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch

from qadb.errors import InputError
from qadb.models.generator.conditions import N_TYPES, PROPS

# store property name -> generator condition column
LABEL_COLUMNS = {"formation_energy_per_atom": "formation_energy", "energy_above_hull": "e_hull",
                 "band_gap": "band_gap", "bulk_modulus": "bulk_modulus"}


def mp20_test_ids() -> set[str]:
    """Material ids of the held-out MP-20 test split, when the staged data are beside the checkout."""
    try:
        from qadb.models.generator.prepare import data_root

        import pandas as pd

        path = data_root() / "mp_20_mattergen_cache/test.csv.gz"
        return set(pd.read_csv(path, usecols=["material_id"]).material_id.astype(str))
    except Exception:  # noqa: BLE001 - no staged data: nothing to hold out
        return set()


def read_stored(structure: dict, max_sites: int, niggli: bool = False):
    """A stored structure dict as a pymatgen Structure, reduced to its primitive cell when it has more than
    ``max_sites`` sites (and Niggli-reduced if asked); None when pymatgen cannot read or reduce it."""
    from pymatgen.core import Structure

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = Structure.from_dict(structure)
            if len(s) > max_sites:
                s = s.get_primitive_structure(tolerance=0.01)
            return s.get_reduced_structure() if niggli else s
    except Exception:  # noqa: BLE001 - an unreadable stored structure is skipped, and counted by the caller
        return None


def records_from_store(chemsys: str | None = None, max_atoms: int = 20, exclude_ids: set[str] | None = None,
                       limit: int = 0) -> tuple[list[dict], dict]:
    """Read structures (and their labels) from the connected store; returns (records, counts)."""
    from qadb.store.documents import LabelDoc, StructureDoc

    exclude_ids = exclude_ids or set()
    q = {"nsites__lte": 4 * max_atoms}
    if chemsys:
        q["chemsys"] = "-".join(sorted(chemsys.split("-")))
    counts = {"read": 0, "generated_skipped": 0, "test_id_skipped": 0, "too_large": 0, "bad": 0, "kept": 0}
    recs = []
    docs = StructureDoc.objects(**q).only("id", "structure", "source_ids", "origin", "formula_pretty")
    for doc in docs:
        counts["read"] += 1
        if doc.origin is not None and doc.origin.kind == "generated":
            counts["generated_skipped"] += 1
            continue
        if exclude_ids and any(s in exclude_ids for s in (doc.source_ids or [])):
            counts["test_id_skipped"] += 1
            continue
        s = read_stored(doc.structure, max_atoms, niggli=True)
        if s is None:
            counts["bad"] += 1
            continue
        if len(s) > max_atoms:
            counts["too_large"] += 1
            continue
        zs = np.array([sp.Z for sp in s.species], dtype=np.int16)
        if zs.max() > N_TYPES or not s.is_ordered:
            counts["bad"] += 1
            continue
        recs.append(dict(id=doc.id, source="store", material_id=doc.id, types=zs,
                         frac=s.frac_coords.astype(np.float32) % 1.0, lattice=s.lattice.matrix.astype(np.float32),
                         formula=doc.formula_pretty, props={}))
        if limit and len(recs) >= limit:
            break
    by_id = {r["id"]: r for r in recs}
    ids = list(by_id)
    for i in range(0, len(ids), 1000):
        for lab in LabelDoc.objects(structure__in=ids[i:i + 1000], property__in=list(LABEL_COLUMNS),
                                    status="ok").only("structure", "property", "value", "rung"):
            col = LABEL_COLUMNS[lab.property]
            r = by_id[lab.structure]
            # one value per column: the lowest fidelity rung wins (the most common, PBE-like scale)
            prev = r["props"].get(col)
            if prev is None or lab.rung < prev[1]:
                r["props"][col] = (float(lab.value), lab.rung)
    for r in recs:
        r["props"] = {k: v[0] for k, v in r["props"].items() if math.isfinite(v[0])}
    counts["kept"] = len(recs)
    return recs, counts


def write_from_store(out, chemsys: str | None = None, max_atoms: int = 20, limit: int = 0,
                     hold_out_mp20_test: bool = True) -> dict:
    """Write the training tensors built from the store to ``out``; returns the file's meta."""
    from qadb.models.generator.prepare import atomic_radii, pack, tensor_hash

    recs, counts = records_from_store(chemsys, max_atoms, mp20_test_ids() if hold_out_mp20_test else set(), limit)
    if len(recs) < 2:
        raise InputError(f"the store holds {len(recs)} usable structure(s) with <= {max_atoms} sites"
                         f"{' in ' + chemsys if chemsys else ''}: too few to train on (ingest some first)")
    radii = atomic_radii()
    tr = pack(recs, radii)
    tr["radii"] = torch.from_numpy(radii)
    meta = {"props": list(PROPS), "counts": {"store": counts}, "n_train": len(recs), "n_test": 0,
            "train_hash": tensor_hash(tr), "max_atoms": max_atoms, "n_types": N_TYPES, "source": "store",
            "query": {"chemsys": chemsys, "max_atoms": max_atoms, "limit": limit,
                      "hold_out_mp20_test": hold_out_mp20_test},
            "prop_coverage_train": {k: int((~torch.isnan(tr["props"][:, j])).sum()) for j, k in enumerate(PROPS)}}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"train": tr, "meta_json": json.dumps(meta)}, out)
    return meta
