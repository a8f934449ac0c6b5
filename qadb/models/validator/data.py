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
PBE+U          PBE+U       MP-20 val+test ``formation_energy_per_atom`` (MP GGA/GGA+U mix, MP corrections)
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
from collections import Counter
from pathlib import Path

import numpy as np

from qadb import fidelity
from qadb.config import shared_data_dir
from qadb.errors import InputError

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
                             seed: int = 0) -> list[dict]:
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
    # MP-20 formation energies (root level)
    root = []
    for split in ("val", "test"):
        df = _read_csv(data_dir / "mp_20_mattergen_cache" / f"{split}.csv.gz",
                       usecols=["material_id", "formation_energy_per_atom", "pretty_formula_derived", "cif"])
        for row in df.itertuples(index=False):
            root.append({"key": f"mp:{row.material_id}", "structure": row.cif, "level": ROOT_LEVEL,
                         "value": float(row.formation_energy_per_atom),
                         "formula": Composition(row.pretty_formula_derived).reduced_formula,
                         "source": f"mp20_{split}"})
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
