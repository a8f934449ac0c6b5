"""Φ_Q quantum-descriptor proxy: data assembly, `train_proxy`, `predict_q`.

q = [gap_PBE, gap_HSE06, gap_GLLB-SC, gap_SCAN (eV), p_metal]. Band gaps come from the MEGNet
multi-fidelity set joined by mp-id to structures in MP-20 val/test, MPTS-52 val/test and the MP
elasticity binaries; MP-20's own ``band_gap`` (PBE, MP) fills PBE where MEGNet has none. Metallic =
PBE gap == 0. DOS moments, ELF and linear-response components of seed 000's q have no staged data
and are not produced.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from qadb import fidelity
from qadb.config import shared_data_dir
from qadb.models.validator.api import REPO_ROOT, _env, _log_line
from qadb.models.validator.data import _mp_structure_tables, _read_csv, split_of

KIND = "proxy"
DEFAULT_CHECKPOINT = REPO_ROOT / "qadb" / "data" / "checkpoints" / "proxy_phiq.pt"
DEFAULT_LOG = REPO_ROOT / "train_logs" / "proxy.jsonl"
GAP_LEVELS = ["PBE", "HSE06", "GLLB-SC", "SCAN"]
_MEGNET = {"pbe": "PBE", "hse": "HSE06", "gllb-sc": "GLLB-SC", "scan": "SCAN"}
_FORMULA_RE = __import__("re").compile(r"_chemical_formula_sum\s+(.+)")
Q_NAMES = [f"gap_{fidelity.slug(l)}_ev" for l in GAP_LEVELS] + ["p_metal"]


def staged_gap_records(data_dir=None) -> list[dict]:
    """One record per structure: {key, structure (CIF), formula, gaps {level: eV}, source}."""
    from pymatgen.core import Composition

    data_dir = Path(data_dir) if data_dir else shared_data_dir()
    structs = _mp_structure_tables(data_dir)
    bg = _read_csv(data_dir / "megnet_multifidelity_bandgap" / "bandgaps_long.csv.gz")
    bg = bg[bg.id_type == "mp_id"]
    gaps: dict[str, dict[str, float]] = {}
    for fid, mid, v in zip(bg.fidelity, bg["id"], bg.band_gap_eV):
        if fid in _MEGNET and mid in structs:
            gaps.setdefault(mid, {})[_MEGNET[fid]] = float(v)
    formulas = {}
    for split in ("val", "test"):
        df = _read_csv(data_dir / "mp_20_mattergen_cache" / f"{split}.csv.gz",
                       usecols=["material_id", "band_gap", "pretty_formula_derived"])
        for mid, g, f in zip(df.material_id, df.band_gap, df.pretty_formula_derived):
            gaps.setdefault(mid, {}).setdefault("PBE", float(g))
            formulas[mid] = f
    recs = []
    for mid, gd in gaps.items():
        cif, src = structs[mid]
        f = formulas.get(mid)
        if f is None:
            m = _FORMULA_RE.search(cif)
            if m:
                f = m.group(1).strip().strip("'\"")
            else:
                from qadb.models.validator.featurize import structure_from_any

                f = structure_from_any(cif).composition.reduced_formula
        recs.append({"key": f"mp:{mid}", "structure": cif, "formula": Composition(f).reduced_formula,
                     "gaps": gd, "source": src})
    return recs


def gap_counts(records) -> dict:
    out = {}
    for l in GAP_LEVELS:
        rs = [r for r in records if l in r["gaps"]]
        out[l] = {"n": len(rs), "test": sum(split_of(r["formula"]) == "test" for r in rs)}
    out["metal_labels"] = out["PBE"]["n"]
    return out


def _arrays(records, gindex):
    n, K = len(records), len(GAP_LEVELS)
    y = np.full((n, K), np.nan, np.float32)
    for i, r in enumerate(records):
        for k, l in enumerate(GAP_LEVELS):
            if l in r["gaps"]:
                y[i, k] = r["gaps"][l]
    return {"graph": np.array([gindex[r["key"]] for r in records]), "y": y,
            "split": np.array([split_of(r["formula"]) for r in records])}


def train_proxy(records=None, *, steps: int = 1500, batch: int = 64, lr: float = 3e-3, seed: int = 0,
                checkpoint=None, log=DEFAULT_LOG, cache=None, verbose: bool = True, device: str = "cpu",
                time_budget_s: float | None = None) -> dict:
    """Train Φ_Q (Huber loss on every observed gap + BCE on PBE metallicity); evaluate on the test split."""
    from qadb.models.proxy.net import default_config
    from qadb.models.proxy.train import gap_metrics, predict_phiq, train_phiq
    from qadb.models.validator.data import featurize_records
    from qadb.models.validator.train import save_checkpoint

    t0 = time.time()
    records = records if records is not None else staged_gap_records()
    cfg = default_config(GAP_LEVELS)
    graphs, gindex = featurize_records(records, cache=cache, cutoff=cfg["cutoff"], max_neighbors=cfg["max_neighbors"])
    A = _arrays(records, gindex)
    model, losses, secs, done = train_phiq(graphs, A, cfg, steps=steps, batch=batch, lr=lr, seed=seed,
                                           time_budget_s=time_budget_s, device=device, verbose=verbose)
    te = np.where(A["split"] == "test")[0]
    q = predict_phiq(model, [graphs[i] for i in A["graph"][te]])
    metrics = gap_metrics(q, A["y"][te], GAP_LEVELS, fidelity.slug)
    h = __import__("hashlib").sha256(np.nan_to_num(A["y"], nan=-1).tobytes() + "|".join(r["key"] for r in records).encode()).hexdigest()[:16]
    res = {"model": model, "config": cfg, "metrics": metrics, "counts": gap_counts(records), "data_hash": h,
           "seconds": time.time() - t0}
    if checkpoint:
        res["checkpoint_bytes"] = save_checkpoint(checkpoint, KIND, cfg, [model], {"q_names": Q_NAMES, "metrics": metrics, "data_hash": h})
    _log_line(log, {"run": "proxy", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": cfg,
                    "train_config": {"steps": steps, "batch": batch, "lr": lr, "time_budget_s": time_budget_s},
                    "seed": seed, "data_hash": h, "n_train": int((A["split"] == "train").sum()), "steps": done,
                    "losses": losses, "metrics": metrics, "counts": res["counts"],
                    "checkpoint": str(checkpoint) if checkpoint else None, "env": _env(), "seconds": res["seconds"]})
    return res


def _predict_graphs(model, graphs, batch_size: int = 256) -> np.ndarray:
    from qadb.models.proxy.train import predict_phiq

    return predict_phiq(model, graphs, batch_size)


_CACHE: dict = {}


def load_proxy(checkpoint=None):
    from qadb.models.proxy.net import PhiQ
    from qadb.models.validator.train import load_checkpoint

    path = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
    key = (str(path), path.stat().st_mtime if path.exists() else None)
    if key not in _CACHE:
        _CACHE[key] = load_checkpoint(path, KIND, model_cls=PhiQ)
    return _CACHE[key]


def predict_q_graphs(structures, checkpoint=None, graphs=None):
    """(q array (n, 5), names) for pymatgen structures / dicts / CIF strings (or given graphs made
    with the proxy's cutoff and neighbour count)."""
    from qadb.models.validator.featurize import featurize

    members, cfg, _ = load_proxy(checkpoint)
    if graphs is None:
        graphs = [featurize(s, cfg["cutoff"], cfg["max_neighbors"]) for s in structures]
    return _predict_graphs(members[0], graphs), list(Q_NAMES)


def predict_q(structures, checkpoint=None) -> dict:
    """q for the generator: {"q": (n, 5) array, "names": [...]} (gaps in eV, p_metal in [0, 1])."""
    q, names = predict_q_graphs(list(structures), checkpoint)
    return {"q": q, "names": names}


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    r = train_proxy(checkpoint=DEFAULT_CHECKPOINT)
    print(json.dumps({"metrics": r["metrics"], "counts": r["counts"]}, indent=1))
