"""Multi-fidelity formation-energy data from the staged datasets (CPU side).

Function boundary (for the store): everything downstream consumes *records*, plain dicts

    {"key": str, "structure": CIF text | Structure | Structure dict, "level": level id,
     "value": float (eV/atom), "formula": reduced formula, "source": str}

`staged_formation_records()` builds them from ``shared_data_dir()``; a store query can produce the
same dicts later. `to_arrays()` featurises records (with an optional on-disk cache keyed by
``key``) into the arrays the torch-only trainer takes.

Levels (ids are what the network heads are called; ``fidelity`` is the canonical taxonomy name):

=============  ==========  ==============================================================
level id       fidelity    source
=============  ==========  ==============================================================
PBE+U          PBE+U       MP-20 val+test ``formation_energy_per_atom`` (MP GGA/GGA+U mix, MP corrections),
                           plus MPTS-52 val+test rows whose mp-id is not in MP-20 val/test (same MP values:
                           99.5 % of the 4,967 shared ids agree to 1e-3 eV/atom)
PBE+U/FERE     PBE+U       FERE ``PBE+U Moore`` (uncorrected, own relaxed structure)
SCAN+U         SCAN+U      FERE ``SCAN+U Artrith``
r2SCAN+U       r2SCAN+U    FERE ``r2SCAN+U U=1``
SCAN           SCAN        FERE ``SCAN+U U=0``
r2SCAN         r2SCAN      FERE ``r2SCAN+U U=0``
EXP            EXP         FERE experiment (r2SCAN U=0 structure) + MP2020 experimental enthalpies joined by
                           mp-id to MP-20 / MPTS-52 / elasticity-binaries structures (formulas not in FERE)
=============  ==========  ==============================================================
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import numpy as np

from qadb import fidelity
from qadb.config import shared_data_dir
from qadb.errors import InputError

_FORMULA_RE = re.compile(r"_chemical_formula_sum\s+(.+)")

ROOT_LEVEL = "PBE+U"
HIGH_LEVEL = "EXP"

LEVEL_FIDELITY: dict[str, str] = {
    "PBE+U": "PBE+U",
    "PBE+U/FERE": "PBE+U",
    "SCAN+U": "SCAN+U",
    "r2SCAN+U": "r2SCAN+U",
    "SCAN": "SCAN",
    "r2SCAN": "r2SCAN",
    "EXP": "EXP",
}

FERE_SETUPS: dict[str, str] = {
    "PBE+U Moore": "PBE+U/FERE",
    "SCAN+U Artrith": "SCAN+U",
    "r2SCAN+U U=1": "r2SCAN+U",
    "SCAN+U U=0": "SCAN",
    "r2SCAN+U U=0": "r2SCAN",
}
FERE_EXP_SETUP = "r2SCAN+U U=0"

# Hierarchies (parent of each level; the root has none). Order = rung order used for the deltas.
HIERARCHIES: dict[str, dict[str, str | None]] = {
    # PBE+U(MP) -> PBE+U(FERE) -> SCAN+U -> r2SCAN+U -> SCAN -> r2SCAN -> EXP
    "full": {"PBE+U": None, "PBE+U/FERE": "PBE+U", "SCAN+U": "PBE+U/FERE", "r2SCAN+U": "SCAN+U",
             "SCAN": "r2SCAN+U", "r2SCAN": "SCAN", "EXP": "r2SCAN"},
    # skip the meta-GGA rung
    "skip_metagga": {"PBE+U": None, "PBE+U/FERE": "PBE+U", "EXP": "PBE+U/FERE"},
    # direct low -> high
    "direct": {"PBE+U": None, "EXP": "PBE+U"},
    # low fidelity only: EXP is predicted by the PBE+U head
    "low_only": {"PBE+U": None},
}


def level_slug(level: str) -> str:
    return fidelity.slug(level)


def _read_csv(path: Path, **kw):
    import pandas as pd

    if not path.exists():
        raise InputError(f"staged dataset file missing: {path}")
    return pd.read_csv(path, **kw)


def _mp_structure_tables(data_dir: Path):
    """mp-id -> (CIF, source) from MP-20 val/test, MPTS-52 val/test and the elasticity binaries."""
    out: dict[str, tuple[str, str]] = {}
    for split in ("val", "test"):
        df = _read_csv(data_dir / "mp_20_mattergen_cache" / f"{split}.csv.gz", usecols=["material_id", "cif"])
        for mid, cif in zip(df.material_id, df.cif):
            out.setdefault(mid, (cif, f"mp20_{split}"))
    for split in ("val", "test"):
        df = _read_csv(data_dir / "mpts_52" / f"{split}.csv.gz", usecols=["material_id", "cif"])
        for mid, cif in zip(df.material_id, df.cif):
            out.setdefault(mid, (cif, f"mpts52_{split}"))
    df = _read_csv(data_dir / "mp_elasticity_binaries" / "mp_binary_elasticity.csv.gz", usecols=["mp_id", "cif"])
    for mid, cif in zip(df.mp_id, df.cif):
        out.setdefault(mid, (cif, "mp_elasticity_binaries"))
    return out


def staged_formation_records(data_dir: Path | str | None = None, max_root: int | None = None,
                             seed: int = 0, with_mpts: bool = True) -> list[dict]:
    """All formation-energy records of every level (see module docstring) from the staged files.

    ``max_root`` subsamples the MP-20 (root) level, keeping the structures that also carry an
    experimental value, so CPU runs stay short.
    """
    from pymatgen.core import Composition

    data_dir = Path(data_dir) if data_dir else shared_data_dir()
    recs: list[dict] = []
    # FERE: five DFT levels + experiment, each with its own relaxed structure
    fere = _read_csv(data_dir / "fere_formation_enthalpy_multi_functional" / "fere_all_setups.csv.gz")
    fere_formulas = set()
    for row in fere.itertuples(index=False):
        formula = Composition(row.reduced_formula).reduced_formula
        fere_formulas.add(formula)
        if row.setup in FERE_SETUPS:
            recs.append({"key": f"fere:{row.formula}:{row.setup}", "structure": row.cif,
                         "level": FERE_SETUPS[row.setup], "value": float(row.dft_dHf_eV_per_atom),
                         "formula": formula, "source": "fere"})
        if row.setup == FERE_EXP_SETUP:
            recs.append({"key": f"fere:{row.formula}:{row.setup}", "structure": row.cif, "level": "EXP",
                         "value": float(row.exp_dHf_eV_per_atom), "formula": formula, "source": "fere_exp"})
    # MP2020 experimental enthalpies joined by mp-id to staged MP structures
    mp_struct = _mp_structure_tables(data_dir)
    exp = _read_csv(data_dir / "mp2020_fit_exp_vs_gga" / "exp_formation_enthalpies.csv.gz")
    exp_ids = set()
    for row in exp.itertuples(index=False):
        if not isinstance(row.mpid, str) or row.mpid not in mp_struct:
            continue
        formula = Composition(row.reduced_formula).reduced_formula
        if formula in fere_formulas:
            continue
        cif, src = mp_struct[row.mpid]
        exp_ids.add(row.mpid)
        recs.append({"key": f"mp:{row.mpid}", "structure": cif, "level": "EXP",
                     "value": float(row.exp_dHf_eV_per_atom), "formula": formula, "source": f"mp2020_exp/{src}"})
    # MP-20 formation energies (root level), then MPTS-52 structures MP-20 val/test lacks
    root = []
    seen = set()
    for split in ("val", "test"):
        df = _read_csv(data_dir / "mp_20_mattergen_cache" / f"{split}.csv.gz",
                       usecols=["material_id", "formation_energy_per_atom", "pretty_formula_derived", "cif"])
        for row in df.itertuples(index=False):
            seen.add(row.material_id)
            root.append({"key": f"mp:{row.material_id}", "structure": row.cif, "level": ROOT_LEVEL,
                         "value": float(row.formation_energy_per_atom),
                         "formula": Composition(row.pretty_formula_derived).reduced_formula,
                         "source": f"mp20_{split}"})
    if with_mpts:
        for split in ("val", "test"):
            df = _read_csv(data_dir / "mpts_52" / f"{split}.csv.gz",
                           usecols=["material_id", "formation_energy_per_atom", "cif"])
            for row in df.itertuples(index=False):
                if row.material_id in seen or not np.isfinite(row.formation_energy_per_atom):
                    continue
                seen.add(row.material_id)
                m = _FORMULA_RE.search(row.cif)
                formula = Composition(m.group(1).strip().strip("'\"")).reduced_formula if m else None
                if formula is None:
                    continue
                root.append({"key": f"mp:{row.material_id}", "structure": row.cif, "level": ROOT_LEVEL,
                             "value": float(row.formation_energy_per_atom), "formula": formula,
                             "source": f"mpts52_{split}"})
    if max_root is not None and len(root) > max_root:
        rng = np.random.default_rng(seed)
        must = [r for r in root if r["key"][3:] in exp_ids]
        rest = [r for r in root if r["key"][3:] not in exp_ids]
        pick = rng.choice(len(rest), size=max(0, max_root - len(must)), replace=False)
        root = must + [rest[i] for i in sorted(pick)]
    recs.extend(root)
    return recs


def split_of(formula: str, test_frac: float = 0.2, val_frac: float = 0.1, salt: str = "qadb-validator") -> str:
    """Deterministic split by reduced formula, shared by every level (no compound leaks across splits)."""
    u = int(hashlib.sha256(f"{salt}:{formula}".encode()).hexdigest()[:12], 16) / float(16 ** 12)
    if u < test_frac:
        return "test"
    if u < test_frac + val_frac:
        return "val"
    return "train"


def counts(records: list[dict]) -> dict:
    """Records per level and split, plus distinct formulas per level."""
    out: dict = {}
    for lvl in LEVEL_FIDELITY:
        rs = [r for r in records if r["level"] == lvl]
        c = Counter(split_of(r["formula"]) for r in rs)
        out[lvl] = {"fidelity": LEVEL_FIDELITY[lvl], "n": len(rs), "formulas": len({r["formula"] for r in rs}),
                    "train": c.get("train", 0), "val": c.get("val", 0), "test": c.get("test", 0)}
    return out


def featurize_records(records: list[dict], cache: Path | str | None = None, cutoff: float = 5.0,
                      max_neighbors: int = 16) -> tuple[list[dict], dict[str, int]]:
    """Unique graphs for the records' structures and key -> graph index (npz cache keyed by key)."""
    from qadb.models.validator.featurize import featurize, pack, unpack

    keys = list(dict.fromkeys(r["key"] for r in records))
    struct_of = {r["key"]: r["structure"] for r in records}
    cached: dict[str, dict] = {}
    cache = Path(cache) if cache else None
    tag = f"c{cutoff:g}_n{max_neighbors}"
    if cache and (cache / f"graphs_{tag}.npz").exists():
        with np.load(cache / f"graphs_{tag}.npz", allow_pickle=False) as f:
            ckeys = [str(k) for k in f["keys"]]
            cached = dict(zip(ckeys, unpack({k: f[k] for k in ("z", "n_atoms", "src", "dst", "dist", "n_edges")})))
    missing = [k for k in keys if k not in cached]
    for k in missing:
        cached[k] = featurize(struct_of[k], cutoff, max_neighbors)
    if cache and missing:
        cache.mkdir(parents=True, exist_ok=True)
        allk = list(cached)
        p = pack([cached[k] for k in allk])
        np.savez(cache / f"graphs_{tag}.npz", keys=np.array(allk), **p)
    graphs = [cached[k] for k in keys]
    return graphs, {k: i for i, k in enumerate(keys)}


def to_arrays(records: list[dict], graph_index: dict[str, int], levels: list[str]) -> dict:
    """Item arrays for the trainer: graph index, level index, target, split, formula."""
    lvl_idx = {l: i for i, l in enumerate(levels)}
    rs = [r for r in records if r["level"] in lvl_idx]
    return {
        "graph": np.array([graph_index[r["key"]] for r in rs], dtype=np.int64),
        "level": np.array([lvl_idx[r["level"]] for r in rs], dtype=np.int64),
        "y": np.array([r["value"] for r in rs], dtype=np.float32),
        "split": np.array([split_of(r["formula"]) for r in rs]),
        "formula": np.array([r["formula"] for r in rs]),
        "source": np.array([r["source"] for r in rs]),
        "key": np.array([r["key"] for r in rs]),
    }


def data_hash(arrays: dict) -> str:
    h = hashlib.sha256()
    for k in ("graph", "level", "y"):
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    h.update("|".join(arrays["key"].tolist()).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- portable bundle (GPU machine)

def export_bundle(path, cache=None, records: list[dict] | None = None, gap_records: list[dict] | None = None) -> dict:
    """Featurise every formation-energy and band-gap record into one compressed ``.npz`` of plain
    arrays (no pickle), so the torch-only trainer can run where pymatgen is absent. Returns counts."""
    from qadb.models.proxy.api import GAP_LEVELS, staged_gap_records

    records = records if records is not None else staged_formation_records()
    gap_records = gap_records if gap_records is not None else staged_gap_records()
    pseudo = [{"key": r["key"], "structure": r["structure"]} for r in records + gap_records]
    graphs, gindex = featurize_records(pseudo, cache=cache)
    n_atoms = np.array([len(g["z"]) for g in graphs], np.int64)
    if n_atoms.max() > 255:
        raise InputError("bundle stores local atom indices as uint8; a structure has more than 255 sites")
    items = to_arrays(records, gindex, list(LEVEL_FIDELITY))
    py = np.full((len(gap_records), len(GAP_LEVELS)), np.nan, np.float32)
    for i, r in enumerate(gap_records):
        for k, l in enumerate(GAP_LEVELS):
            if l in r["gaps"]:
                py[i, k] = r["gaps"][l]
    z = np.concatenate([g["z"] for g in graphs]).astype(np.uint8)
    edges = _pair_encode([g["src"] for g in graphs], [g["dst"] for g in graphs], [g["dist"] for g in graphs])
    arrays = {
        "z": z,
        "n_atoms": n_atoms.astype(np.int32),
        **edges,
        "levels": np.array(list(LEVEL_FIDELITY)),
        "gap_levels": np.array(GAP_LEVELS),
        "p_graph": np.array([gindex[r["key"]] for r in gap_records], np.int32),
        "p_y": py,
        "p_split": np.array([split_of(r["formula"]) for r in gap_records]),
        "data_hash": np.array(data_hash(items)),
    }
    for k, v in items.items():
        arrays[f"f_{k}"] = v
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _save_lzma(path, arrays)
    return {"graphs": len(graphs), "edges": int(sum(len(g["dist"]) for g in graphs)), "pairs": int(len(edges["pa"])),
            "formation_rows": len(items["y"]), "gap_rows": len(gap_records), "data_hash": str(arrays["data_hash"].reshape(-1)[0])}


DIST_SCALE = 2000.0  # bundle distances in units of 0.5 mÅ (uint16)


def _pair_encode(srcs, dsts, dists) -> dict:
    """Lossless-up-to-0.25-mÅ compact edge lists: each graph's directed edges i<-j and j<-i at the same
    distance become one unordered pair (a <= b, distance, count each way), sorted by (a, distance, b)."""
    n_edges = np.array([len(d) for d in dists], np.int64)
    gid = np.repeat(np.arange(len(dists)), n_edges)
    src, dst = np.concatenate(srcs).astype(np.int64), np.concatenate(dsts).astype(np.int64)
    q = np.round(np.concatenate(dists).astype(np.float64) * DIST_SCALE).astype(np.int64)
    a, b, fwd = np.minimum(src, dst), np.maximum(src, dst), dst <= src
    key = ((gid * 256 + a) * 65536 + q) * 256 + b
    uk, inv = np.unique(key, return_inverse=True)
    cf = np.bincount(inv, weights=fwd, minlength=len(uk)).astype(np.uint8)
    cb = np.bincount(inv, weights=~fwd, minlength=len(uk)).astype(np.uint8)
    pg = uk // (256 * 65536 * 256)
    return {"n_pairs": np.bincount(pg, minlength=len(dists)).astype(np.int32),
            "pa": ((uk // (65536 * 256)) % 256).astype(np.uint8), "pb": (uk % 256).astype(np.uint8),
            "pq": ((uk // 256) % 65536).astype(np.uint16), "pcf": cf, "pcb": cb}


def _pair_decode(n_atoms, n_pairs, pa, pb, pq, pcf, pcb):
    """Inverse of `_pair_encode`: (src, dst, dist, n_edges) with each graph's edges contiguous,
    grouped by centre atom (edge order inside a centre is irrelevant to the network)."""
    G = len(n_pairs)
    pg = np.repeat(np.arange(G), n_pairs)
    a, b = pa.astype(np.int64), pb.astype(np.int64)
    d = pq.astype(np.float32) / np.float32(DIST_SCALE)
    f_rep, b_rep = pcf.astype(np.int64), pcb.astype(np.int64)
    dst = np.concatenate([np.repeat(a, f_rep), np.repeat(b, b_rep)])
    src = np.concatenate([np.repeat(b, f_rep), np.repeat(a, b_rep)])
    dist = np.concatenate([np.repeat(d, f_rep), np.repeat(d, b_rep)])
    g = np.concatenate([np.repeat(pg, f_rep), np.repeat(pg, b_rep)])
    order = np.lexsort((dist, dst, g))
    return src[order], dst[order], dist[order], np.bincount(g, minlength=G)


def _save_lzma(path, arrays: dict) -> None:
    """An .npz of uint8 blobs, each array's bytes compressed with LZMA (about 40 % smaller than zip)."""
    import json
    import lzma

    meta, blobs = {}, {}
    for k, v in arrays.items():
        v = np.ascontiguousarray(v)
        meta[k] = {"dtype": v.dtype.str, "shape": list(v.shape)}
        blobs[k] = np.frombuffer(lzma.compress(v.tobytes(), preset=9 | lzma.PRESET_EXTREME), np.uint8)
    np.savez(path, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **blobs)


def _load_lzma(path) -> dict:
    import json
    import lzma

    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(bytes(f["__meta__"]).decode())
        return {k: np.frombuffer(lzma.decompress(bytes(f[k])), np.dtype(m["dtype"])).reshape(tuple(m["shape"])).copy()
                for k, m in meta.items()}


def load_bundle(path, device: str = "cpu"):
    """(GraphBank, formation items, gap items, meta) from `export_bundle`'s file (numpy/torch only)."""
    from qadb.models.validator.net import GraphBank

    a = _load_lzma(path)
    src, dst, dist, n_edges = _pair_decode(a["n_atoms"], a["n_pairs"], a["pa"], a["pb"], a["pq"], a["pcf"], a["pcb"])
    bank = GraphBank(a["z"].astype(np.int64), a["n_atoms"], src, dst, dist, n_edges, device=device)
    items = {k[2:]: v for k, v in a.items() if k.startswith("f_")}
    items["graph"] = items["graph"].astype(np.int64)
    items["level"] = items["level"].astype(np.int64)
    gaps = {"graph": a["p_graph"].astype(np.int64), "y": a["p_y"], "split": a["p_split"]}
    meta = {"levels": a["levels"].tolist(), "gap_levels": a["gap_levels"].tolist(),
            "data_hash": str(a["data_hash"].reshape(-1)[0])}
    return bank, items, gaps, meta
