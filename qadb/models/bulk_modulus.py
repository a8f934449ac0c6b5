"""Bulk-modulus pre-filter (seed 003 stage I): structure → K_VRH (GPa) in microseconds, so a campaign can
discard generated crystals far from the target before any MLIP call.

A small MLP over the chemistry fingerprint (`qadb.chem.fingerprint`: composition statistics, volume per atom,
density, log N) plus two packing features (atomic-volume fraction and shortest bond over the sum of covalent
radii), trained on log K. Data: AFLOW bulk moduli (its own train/val/test splits) and MP elasticity binaries
(split 80/10/10 by a hash of the reduced formula, so a formula never straddles train and test). The artifact is
an `.npz` of plain arrays (no pickle) evaluated with numpy; torch is only needed to rebuild it:

    python -m qadb.models.bulk_modulus --out qadb/data/checkpoints/bulk_modulus_prefilter.npz --seed 0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from qadb.errors import CheckpointError

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "data" / "checkpoints" / "bulk_modulus_prefilter.npz"
KIND = "qadb.bulk_modulus_prefilter"
_FP_DROP = -1  # the crystal-system slot needs a symmetry analysis: not worth it for a pre-filter


def features(structure) -> np.ndarray:
    """Fingerprint (without the crystal system) + atomic-volume fraction + shortest bond / covalent radii."""
    from qadb.chem import fingerprint
    from qadb.chem._elements import covalent_radius

    fp = np.delete(fingerprint(structure), _FP_DROP)
    radii = np.array([covalent_radius(s.specie.symbol) for s in structure])
    packing = float((4.0 / 3.0 * np.pi * radii**3).sum() / structure.volume)
    d = structure.distance_matrix + np.eye(len(structure)) * 1e3 if len(structure) > 1 else None
    if d is None:  # one atom: its nearest neighbour is its own image one lattice vector away
        bond = float(min(structure.lattice.abc)) / (2 * radii[0])
    else:
        i, j = np.unravel_index(np.argmin(d), d.shape)
        bond = float(d[i, j]) / (radii[i] + radii[j])
    return np.concatenate([fp, [packing, bond]])


class BulkModulusPrefilter:
    """The trained MLP (numpy forward pass); `predict` returns K in GPa."""

    def __init__(self, path: str | Path = DEFAULT_CHECKPOINT):
        p = Path(path)
        if not p.is_file():
            raise CheckpointError(f"bulk-modulus pre-filter not found: {p} (rebuild: python -m qadb.models.bulk_modulus)")
        with np.load(p, allow_pickle=False) as z:
            if str(z["kind"]) != KIND:
                raise CheckpointError(f"{p} is not a {KIND} artifact")
            self.mean, self.scale = z["mean"], z["scale"]
            self.layers = [(z[f"w{i}"], z[f"b{i}"]) for i in range(int(z["n_layers"]))]
            self.meta = json.loads(str(z["meta_json"]))
        self.path = str(p)

    def predict_features(self, x: np.ndarray) -> np.ndarray:
        h = (np.nan_to_num(np.atleast_2d(x), nan=0.0) - self.mean) / self.scale
        for n, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if n < len(self.layers) - 1:
                h = h / (1.0 + np.exp(-np.clip(h, -60.0, 60.0)))  # SiLU
        return np.exp(np.clip(h[:, 0], np.log(0.1), np.log(2000.0)))  # far-off cells (overlapping atoms) extrapolate

    def predict(self, structures: list) -> np.ndarray:
        if not structures:
            return np.zeros(0)
        return self.predict_features(np.stack([features(s) for s in structures]))


# --------------------------------------------------------------------------------------------- training
def _formula_split(formula: str) -> str:
    """MP rows: 80/10/10 by a stable hash of the reduced formula."""
    h = int(hashlib.sha256(formula.encode()).hexdigest()[:8], 16) % 10
    return "test" if h == 0 else "val" if h == 1 else "train"


def load_data(root: Path | None = None, max_sites: int = 40) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Features and K (GPa) per split from the staged AFLOW and MP elasticity tables."""
    import pandas as pd
    from pymatgen.core import Structure

    from qadb.models.generator.prepare import data_root

    root = root or data_root()
    rows: dict[str, list] = {"train": [], "val": [], "test": []}
    for split in rows:
        df = pd.read_csv(root / f"aflow_bulk_modulus/{split}.csv.gz")
        for cif, k in zip(df.cif, df.bulk_modulus):
            rows[split].append((cif, float(k)))
    mp = pd.read_csv(root / "mp_elasticity_binaries/mp_binary_elasticity.csv.gz", keep_default_na=False)  # "NaN" is a formula
    mp = mp[mp.n_sites <= max_sites]
    for cif, k, f in zip(mp.cif, mp.bulk_modulus_vrh_GPa, mp.reduced_formula):
        rows[_formula_split(f)].append((cif, float(k)))
    out = {}
    for split, items in rows.items():
        xs, ys = [], []
        for cif, k in items:
            if not k > 0:
                continue
            s = Structure.from_str(cif, fmt="cif")
            if len(s) > max_sites:
                continue
            xs.append(features(s))
            ys.append(k)
        out[split] = (np.stack(xs), np.array(ys))
    return out


def fit(data: dict, seed: int = 0, hidden: int = 128, epochs: int = 400, lr: float = 3e-3) -> tuple[dict, dict]:
    """Train the MLP on log K (early stopping on val); return (arrays, metrics)."""
    import torch

    torch.manual_seed(seed)
    xtr, ytr = data["train"]
    x_all = np.nan_to_num(xtr, nan=0.0)
    mean, scale = x_all.mean(0), x_all.std(0) + 1e-8

    def tens(x):
        return torch.tensor((np.nan_to_num(x, nan=0.0) - mean) / scale, dtype=torch.float32)

    sizes = [xtr.shape[1], hidden, hidden, 1]
    net = torch.nn.Sequential(torch.nn.Linear(sizes[0], hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, hidden),
                              torch.nn.SiLU(), torch.nn.Linear(hidden, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    xt, yt = tens(xtr), torch.tensor(np.log(ytr), dtype=torch.float32)[:, None]
    xv, yv = tens(data["val"][0]), torch.tensor(np.log(data["val"][1]), dtype=torch.float32)[:, None]
    best, best_state = float("inf"), None
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(xt), generator=g).split(128):
            loss = torch.nn.functional.smooth_l1_loss(net(xt[idx]), yt[idx], beta=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            v = float(torch.nn.functional.l1_loss(net(xv), yv))
        if v < best:
            best, best_state = v, {k: t.clone() for k, t in net.state_dict().items()}
    net.load_state_dict(best_state)
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    arrays = {"mean": mean, "scale": scale, "n_layers": np.array(len(linears))}
    for i, m in enumerate(linears):
        arrays[f"w{i}"] = m.weight.detach().numpy().T.astype(np.float32)
        arrays[f"b{i}"] = m.bias.detach().numpy().astype(np.float32)
    return arrays, {"val_mae_logk": round(best, 4)}


def evaluate(model: BulkModulusPrefilter, x: np.ndarray, y: np.ndarray) -> dict:
    pred = model.predict_features(x)
    err = np.abs(pred - y)
    return {"n": int(len(y)), "mae_gpa": round(float(err.mean()), 2), "mape": round(float((err / y).mean()), 4),
            "median_ape": round(float(np.median(err / y)), 4),
            "within_30pct": round(float((err / y <= 0.3).mean()), 4)}


def build(out: str | Path = DEFAULT_CHECKPOINT, seed: int = 0) -> dict:
    """Featurise, train, save the artifact, and return the held-out test metrics."""
    t0 = time.time()
    data = load_data()
    arrays, metrics = fit(data, seed=seed)
    meta = {"seed": seed, "n": {k: int(len(v[1])) for k, v in data.items()}, **metrics,
            "target": "log K_VRH (GPa)", "data": "aflow_bulk_modulus splits + mp_elasticity_binaries (formula hash)"}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, kind=np.array(KIND), meta_json=np.array(json.dumps(meta)), **arrays)
    model = BulkModulusPrefilter(out)
    meta["test"] = evaluate(model, *data["test"])
    meta["build_s"] = round(time.time() - t0, 1)
    np.savez_compressed(out, kind=np.array(KIND), meta_json=np.array(json.dumps(meta)), **arrays)
    return meta


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEFAULT_CHECKPOINT))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    print(json.dumps(build(a.out, a.seed), indent=1))


if __name__ == "__main__":
    main()
