"""Data preparation for the crystal diffusion generator (CPU side, needs pymatgen).

Builds the training set and the held-out MP-20 test set as compact tensors (a dict of plain tensors written with
``torch.save``) that the torch-only training code reads on the GPU machine.

Split (issue #5): MP-20 test (mattergen cache, 9,046 rows) is held out untouched. Training pool = MP-20 val
(mattergen cache) + MP-20 pilot train (1,000) + MPTS-52 val/test structures of <= 20 sites (primitive cell)
+ MP elasticity binaries <= 20 sites + AFLOW bulk-modulus train/val/test <= 20 sites. Rows that match a test
structure are removed: by ``material_id`` where both rows have one, by StructureMatcher(stol=0.5, angle_tol=10,
ltol=0.3) against test structures of the same reduced formula otherwise (AFLOW has no ids). Rows repeated
across sources (same material id) are kept once (first source wins).

Usage::

    python -m qadb.models.generator.prepare --out .gen_scratch/gen_data.pt [--limit N] [--workers 2]
    python -m qadb.models.generator.prepare --fill-mled .gen_scratch/gen_data.pt --out .gen_scratch/gen_data_mled.pt

    python -m qadb.models.generator.prepare --proto-counts .gen_scratch/gen_data.pt --out .gen_scratch/gen_data_pc.pt

``--fill-mled`` adds PIGEN's M_LED (``qadb.chem.mled``, exact) to the ``mled`` property column of the training
crystals of an existing tensor file (the held-out test set needs none), so that CFG on M_LED can be trained without re-parsing the sources.
``--proto-counts`` adds ``proto_count``: for each training crystal, how many training crystals share its prototype
(number of sites, anonymous formula, space group), the weights of ``train --proto-alpha``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from qadb.models.generator.conditions import N_TYPES, PROPS

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
MAX_ATOMS = 20
# the tensors (and so the hashes) depend on these libraries: their versions go into the meta so that a changed
# hash can be traced
HASH_LIBRARIES = ("pymatgen", "numpy", "spglib")


def data_root() -> Path:
    for cand in (DATA, Path("/work/shared/data")):
        if cand.exists():
            return cand
    raise FileNotFoundError("shared/data not found")


def atomic_radii() -> np.ndarray:
    """pymatgen ``Element.atomic_radius`` (Å) for Z = 1..N_TYPES; 0 where pymatgen has none (as PIGEN)."""
    from pymatgen.core import Element

    r = np.zeros(N_TYPES, dtype=np.float32)
    for z in range(1, N_TYPES + 1):
        try:
            v = Element.from_Z(z).atomic_radius
        except Exception:  # noqa: BLE001
            v = None
        r[z - 1] = float(v) if v is not None else 0.0
    return r


def compactness(structure, radii: np.ndarray | None = None) -> float:
    """C = (4/3)·π·Σ r_a³ / V_cell with pymatgen atomic radii (seed 002 Eq. 2)."""
    if radii is None:
        radii = atomic_radii()
    zs = np.array([sp.Z for sp in structure.species])
    return float(4.0 / 3.0 * math.pi * np.sum(radii[zs - 1] ** 3) / structure.volume)


def snap_frac(frac: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """Fractional coordinates in [0, 1) as float32, with those within ``tol`` of a cell face put on it.

    pymatgen leaves round-off of order 1e-17 on special positions, and its exact value depends on the BLAS kernel
    the CPU selects (OpenBLAS SkylakeX against Haswell); snapping it makes the exported tensors, and their
    hashes, the same on every machine."""
    f = np.asarray(frac, dtype=np.float64)
    near = np.round(f)
    f = np.where(np.abs(f - near) < tol, near, f) % 1.0
    return f.astype(np.float32) % np.float32(1.0)


def _parse(args):
    """Parse one CIF; optionally reduce to the primitive cell; Niggli-reduce. Returns arrays or None."""
    cif, primitive = args
    import warnings

    from pymatgen.core import Structure

    warnings.filterwarnings("ignore")
    try:
        s = Structure.from_str(cif, fmt="cif")
        if primitive:
            s = s.get_primitive_structure(tolerance=0.01)
        s = s.get_reduced_structure()
        if not s.is_ordered:
            return None
        zs = np.array([sp.Z for sp in s.species], dtype=np.int16)
        if zs.max() > N_TYPES:
            return None
        return (zs, snap_frac(s.frac_coords), s.lattice.matrix.astype(np.float32), s.composition.reduced_formula)
    except Exception:  # noqa: BLE001
        return None


def _parse_all(cifs, primitive, workers):
    args = [(c, primitive) for c in cifs]
    if workers <= 1:
        return [_parse(a) for a in args]
    with ProcessPoolExecutor(workers) as ex:
        return list(ex.map(_parse, args, chunksize=64))


def _records(df, parsed, source, id_col, prop_cols):
    out = []
    for (_, row), p in zip(df.iterrows(), parsed):
        if p is None or len(p[0]) > MAX_ATOMS:
            continue
        props = {}
        for k, col in prop_cols.items():
            v = row.get(col) if col else None
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                props[k] = float(v)
        mid = str(row[id_col]) if id_col else None
        out.append(dict(source=source, material_id=mid, types=p[0], frac=p[1], lattice=p[2], formula=p[3],
                        props=props))
    return out


def pack(records, radii):
    """Concatenate records into a dict of plain tensors."""
    n = len(records)
    num_atoms = torch.tensor([len(r["types"]) for r in records], dtype=torch.int16)
    types = torch.from_numpy(np.concatenate([r["types"] for r in records]).astype(np.int16))
    frac = torch.from_numpy(np.concatenate([r["frac"] for r in records]).astype(np.float32))
    lattice = torch.from_numpy(np.stack([r["lattice"] for r in records]).astype(np.float32))
    props = torch.full((n, len(PROPS)), float("nan"), dtype=torch.float32)
    for i, r in enumerate(records):
        vol = abs(float(np.linalg.det(r["lattice"])))
        r["props"]["compactness"] = float(4.0 / 3.0 * math.pi * np.sum(radii[r["types"] - 1] ** 3) / vol)
        for j, k in enumerate(PROPS):
            if k in r["props"]:
                props[i, j] = r["props"][k]
    return dict(num_atoms=num_atoms, types=types, frac=frac, lattice=lattice, props=props,
                material_id=[r["material_id"] or "" for r in records],
                source=[r["source"] for r in records], formula=[r["formula"] for r in records])


def _mled_one(args) -> float:
    from pymatgen.core import Lattice, Structure

    from qadb.chem import mled

    types, frac, lattice = args
    try:
        return mled(Structure(Lattice(lattice), types.tolist(), frac)).value
    except Exception:  # a cell M_LED cannot describe stays unlabelled (NaN), as in the source data
        return float("nan")


def split_rows(d: dict):
    """(types, frac, lattice) of each packed crystal of ``d``, as numpy arrays."""
    ptr = np.concatenate([[0], np.cumsum(d["num_atoms"].numpy().astype(np.int64))])
    types, frac, lattice = d["types"].numpy().astype(int), d["frac"].numpy().astype(float), d["lattice"].numpy()
    for i in range(len(ptr) - 1):
        yield types[ptr[i]:ptr[i + 1]], frac[ptr[i]:ptr[i + 1]], lattice[i].astype(float)


def fill_mled_rows(d: dict, workers: int = 2) -> int:
    """Compute the ``mled`` column of the packed crystals ``d`` in place; returns how many got a value."""
    t0 = time.time()
    with ProcessPoolExecutor(workers) as pool:
        values = list(pool.map(_mled_one, split_rows(d), chunksize=64))
    d["props"][:, PROPS.index("mled")] = torch.tensor(values, dtype=torch.float32)
    n = int(np.isfinite(values).sum())
    print(f"M_LED for {n} of {len(values)} crystals, {time.time() - t0:.0f}s", flush=True)
    return n


def fill_mled(src: str, out: str, workers: int = 2) -> dict:
    """Copy of the tensor file `src` with the ``mled`` column computed for every training crystal."""
    blob = torch.load(src, map_location="cpu", weights_only=True)
    coverage = {"train": fill_mled_rows(blob["train"], workers)}
    meta = json.loads(blob["meta_json"])
    meta.update(train_hash=tensor_hash(blob["train"]), mled_coverage=coverage,
                mled_filled_from=meta.get("train_hash"))
    meta["prop_coverage_train"]["mled"] = coverage["train"]
    blob["meta_json"] = json.dumps(meta)
    torch.save(blob, out)
    return meta


PROTO_SYMPREC = 0.1  # Å, spglib tolerance of the prototype key (MP's own symmetry tolerance)


def _space_group(args) -> int:
    from pymatgen.core import Lattice, Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    types, frac, lattice = args
    try:
        return int(SpacegroupAnalyzer(Structure(Lattice(lattice), types.tolist(), frac),
                                      symprec=PROTO_SYMPREC).get_space_group_number())
    except Exception:  # noqa: BLE001 - spglib finds no cell: a prototype of its own kind (group 0)
        return 0


def prototype_counts(d: dict, workers: int = 2) -> torch.Tensor:
    """For each packed crystal of ``d``: how many crystals of ``d`` share its prototype key (number of sites,
    anonymous formula, space group at ``PROTO_SYMPREC``). Why: the CSP misses concentrate on prototypes seen few
    times in training, and these counts let training draw them more often."""
    rows = list(split_rows(d))
    if workers <= 1:
        groups = [_space_group(r) for r in rows]
    else:
        with ProcessPoolExecutor(workers) as pool:
            groups = list(pool.map(_space_group, rows, chunksize=64))
    keys = [(len(t), tuple(sorted(Counter(t.tolist()).values())), g) for (t, _, _), g in zip(rows, groups)]
    n_key = Counter(keys)
    return torch.tensor([n_key[k] for k in keys], dtype=torch.int32)


def add_proto_counts(src: str, out: str, workers: int = 2) -> dict:
    """Copy of the tensor file `src` with the ``proto_count`` column of its training crystals."""
    blob = torch.load(src, map_location="cpu", weights_only=True)
    counts = prototype_counts(blob["train"], workers)
    blob["train"]["proto_count"] = counts
    meta = json.loads(blob["meta_json"])
    meta["proto_counts"] = {"symprec": PROTO_SYMPREC, "prototypes": int((1.0 / counts.double()).sum().round()),
                            "singletons": int((counts == 1).sum())}
    blob["meta_json"] = json.dumps(meta)
    torch.save(blob, out)
    return meta


def tensor_hash(d: dict) -> str:
    h = hashlib.sha256()
    for k in ("num_atoms", "types", "frac", "lattice", "props"):
        h.update(d[k].numpy().tobytes())
    return h.hexdigest()[:16]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".gen_scratch/gen_data.pt")
    ap.add_argument("--limit", type=int, default=0, help="rows per source (debug)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--fill-mled", metavar="SRC", help="add M_LED to an existing tensor file SRC and write --out")
    ap.add_argument("--proto-counts", metavar="SRC",
                    help="add the training crystals' prototype counts to an existing tensor file SRC and write --out")
    a = ap.parse_args(argv)
    if a.proto_counts:
        meta = add_proto_counts(a.proto_counts, a.out, a.workers)
        print(json.dumps({k: meta[k] for k in ("train_hash", "proto_counts")}))
        return
    if a.fill_mled:
        meta = fill_mled(a.fill_mled, a.out, a.workers)
        print(json.dumps({k: meta[k] for k in ("train_hash", "mled_coverage")}))
        return
    t0 = time.time()
    root = data_root()
    radii = atomic_radii()
    lim = (lambda df: df.head(a.limit)) if a.limit else (lambda df: df)
    counts = {}

    # --- held-out test: MP-20 test from the mattergen cache (cells already primitive) ---
    test_df = lim(pd.read_csv(root / "mp_20_mattergen_cache/test.csv.gz"))
    test_parsed = _parse_all(test_df.cif.tolist(), False, a.workers)
    test = _records(test_df, test_parsed, "mp20_test", "material_id",
                    {"formation_energy": "formation_energy_per_atom", "band_gap": "band_gap"})
    counts["mp20_test"] = {"rows": len(test_df), "kept": len(test)}
    test_ids = set(test_df.material_id.astype(str))
    test_by_formula = defaultdict(list)
    for r in test:
        test_by_formula[r["formula"]].append(r)

    # e_above_hull for MP-20 rows where the original rows are available (pilot/biternary files)
    ehull = {}
    for f in ("biternary_val", "pilot_val", "pilot_train", "biternary_test", "pilot_test"):
        d = pd.read_csv(root / f"mp_20_subsets/{f}.csv.gz", usecols=["material_id", "e_above_hull"])
        ehull.update(dict(zip(d.material_id.astype(str), d.e_above_hull.astype(float))))

    train, seen = [], set()

    def add(recs, name, rows, drop_ids=True):
        kept = dup = test_hit = 0
        for r in recs:
            mid = r["material_id"]
            if mid is not None and drop_ids and mid in test_ids:
                test_hit += 1
                continue
            if mid is not None and mid in seen:
                dup += 1
                continue
            if mid is not None:
                seen.add(mid)
            if mid in ehull and "e_hull" not in r["props"]:
                r["props"]["e_hull"] = ehull[mid]
            train.append(r)
            kept += 1
        counts[name] = {"rows": rows, "parsed_le20": len(recs), "removed_test_match": test_hit,
                        "removed_duplicate": dup, "kept": kept}
        print(name, counts[name], f"{time.time() - t0:.0f}s", flush=True)

    mp = {"formation_energy": "formation_energy_per_atom", "band_gap": "band_gap"}
    df = lim(pd.read_csv(root / "mp_20_mattergen_cache/val.csv.gz"))
    add(_records(df, _parse_all(df.cif.tolist(), False, a.workers), "mp20_val", "material_id", mp),
        "mp20_val", len(df))
    df = lim(pd.read_csv(root / "mp_20_subsets/pilot_train.csv.gz"))
    add(_records(df, _parse_all(df.cif.tolist(), False, a.workers), "mp20_pilot_train", "material_id",
                 {**mp, "e_hull": "e_above_hull"}), "mp20_pilot_train", len(df))
    for split in ("val", "test"):
        df = lim(pd.read_csv(root / f"mpts_52/{split}.csv.gz"))
        add(_records(df, _parse_all(df.cif.tolist(), True, a.workers), f"mpts52_{split}", "material_id",
                     {"formation_energy": "formation_energy_per_atom", "e_hull": "energy_above_hull"}),
            f"mpts52_{split}", len(df))
    df = lim(pd.read_csv(root / "mp_elasticity_binaries/mp_binary_elasticity.csv.gz"))
    df = df[df.n_sites <= 2 * MAX_ATOMS]
    add(_records(df, _parse_all(df.cif.tolist(), True, a.workers), "mp_elasticity", "mp_id",
                 {"bulk_modulus": "bulk_modulus_vrh_GPa"}), "mp_elasticity", len(df))

    # AFLOW: no material ids -> StructureMatcher against test structures of the same reduced formula
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Lattice, Structure

    sm = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)

    def to_struct(r):
        return Structure(Lattice(r["lattice"]), r["types"].tolist(), r["frac"], coords_are_cartesian=False)

    for split in ("train", "val", "test"):
        df = lim(pd.read_csv(root / f"aflow_bulk_modulus/{split}.csv.gz"))
        recs = _records(df, _parse_all(df.cif.tolist(), True, a.workers), f"aflow_{split}", None,
                        {"bulk_modulus": "bulk_modulus"})
        keep, hit = [], 0
        for r in recs:
            cands = test_by_formula.get(r["formula"], [])
            s = to_struct(r) if cands else None
            if cands and any(sm.fit(s, to_struct(t)) for t in cands):
                hit += 1
                continue
            keep.append(r)
        add(keep, f"aflow_{split}", len(df))
        counts[f"aflow_{split}"]["removed_test_match"] = hit
        counts[f"aflow_{split}"]["parsed_le20"] += hit

    tr, te = pack(train, radii), pack(test, radii)
    tr["radii"] = torch.from_numpy(radii)
    te["radii"] = torch.from_numpy(radii)
    meta = {"props": list(PROPS), "counts": counts, "n_train": len(train), "n_test": len(test),
            "train_hash": tensor_hash(tr), "test_hash": tensor_hash(te), "max_atoms": MAX_ATOMS,
            "n_types": N_TYPES, "built_s": round(time.time() - t0, 1),
            "versions": {p: version(p) for p in HASH_LIBRARIES}}
    # property coverage
    meta["prop_coverage_train"] = {k: int((~torch.isnan(tr["props"][:, j])).sum()) for j, k in enumerate(PROPS)}
    meta["nelem_hist_train"] = dict(Counter(len(set(r["types"].tolist())) for r in train))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"train": tr, "test": te, "meta_json": json.dumps(meta)}, out)
    print(json.dumps(meta, indent=1))
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB) in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
