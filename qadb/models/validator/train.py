"""Training of MF-ENNP members and the bootstrap deep ensemble; checkpoint I/O (torch/numpy only)."""

from __future__ import annotations

import io
import math
import time
from pathlib import Path

import numpy as np
import torch

from qadb.models.validator.net import MFENNP, N_SPECIES, collate, predict_member

CHECKPOINT_FORMAT = "qadb-mfennp/1"

# Eq. 2 loss weights by accuracy rung (qadb.fidelity): rising with fidelity, w_PBE = 0.1, w_top = 1.0.
RUNG_WEIGHTS = {0: 0.05, 1: 0.1, 2: 0.3, 3: 0.6, 4: 1.0, 5: 1.0}


def default_train_config() -> dict:
    return {
        "steps": 1500,
        "batch_root": 64,
        "batch_other": 6,
        "lr": 1e-3,
        "weight_decay": 1e-5,
        "grad_clip": 5.0,
        "nll_weight": 1.0,
        "mse_only_frac": 0.3,
        "bootstrap": True,
        "n_members": 5,
    }


def fit_element_reference(graphs, items, root: int) -> np.ndarray:
    """Least-squares per-element energies for the root level (composition baseline)."""
    sel = np.where(items["level"] == root)[0]
    if len(sel) == 0:
        return np.zeros(N_SPECIES + 1)
    X = np.zeros((len(sel), N_SPECIES + 1))
    for r, i in enumerate(sel):
        z = np.clip(graphs[items["graph"][i]]["z"], 0, N_SPECIES)
        np.add.at(X[r], z, 1.0 / len(z))
    y = items["y"][sel].astype(np.float64)
    A = X.T @ X + 1e-3 * np.eye(X.shape[1])
    return np.linalg.solve(A, X.T @ y)


def level_loss(mu, var, y, lvl, weights, nll_weight: float, mse_only: bool):
    """Eq. 2 weighted multi-task loss: sum_l w_l MSE_l, plus a Gaussian NLL for the variance head
    (mean detached, so the means are driven by the MSE term exactly as in Eq. 2)."""
    pick_mu = mu.gather(1, lvl[:, None])[:, 0]
    pick_var = var.gather(1, lvl[:, None])[:, 0]
    total = mu.new_zeros(())
    parts = {}
    for l in torch.unique(lvl).tolist():
        m = lvl == l
        err = pick_mu[m] - y[m]
        mse = (err ** 2).mean()
        loss_l = mse
        if not mse_only and nll_weight > 0:
            nll = 0.5 * (torch.log(pick_var[m]) + (err.detach() ** 2) / pick_var[m]).mean()
            loss_l = loss_l + nll_weight * nll
        total = total + float(weights[l]) * loss_l
        parts[int(l)] = float(mse.detach())
    return total, parts


def train_member(graphs, items, model_config: dict, train_config: dict, weights, seed: int,
                 log=None) -> tuple[MFENNP, dict]:
    """Train one ensemble member on ``items`` (dict of arrays graph, level, y; training rows only)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = MFENNP(model_config)
    L = model.n_levels
    root = [i for i, p in enumerate(model.parents) if p < 0][0]
    with torch.no_grad():
        model.elem_ref.copy_(torch.as_tensor(fit_element_reference(graphs, items, root), dtype=torch.float32))
    by_level = [np.where(items["level"] == l)[0] for l in range(L)]
    tc = train_config
    steps = int(tc["steps"])
    opt = torch.optim.AdamW(model.parameters(), lr=float(tc["lr"]), weight_decay=float(tc["weight_decay"]))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, cosine decay to 10 % of lr
        opt, lambda k: min(1.0, (k + 1) / warm) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(k, steps) / max(steps, 1)))))
    w = torch.as_tensor(weights, dtype=torch.float32)
    hist = {"loss": [], "mse": {}}
    t0 = time.time()
    model.train()
    for step in range(steps):
        pick = []
        for l in range(L):
            if len(by_level[l]) == 0:
                continue
            k = int(tc["batch_root"]) if l == root else int(tc["batch_other"])
            pick.append(rng.choice(by_level[l], size=min(k, len(by_level[l])), replace=len(by_level[l]) < k))
        rows = np.concatenate(pick)
        b = collate(graphs, items["graph"][rows])
        y = torch.as_tensor(items["y"][rows], dtype=torch.float32)
        lvl = torch.as_tensor(items["level"][rows], dtype=torch.int64)
        # each graph appears once per row: rows -> graphs are 1:1 in the batch
        mu, var = model(b)
        loss, parts = level_loss(mu, var, y, lvl, w, float(tc["nll_weight"]),
                                 mse_only=step < float(tc["mse_only_frac"]) * steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(tc["grad_clip"]))
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            hist["loss"].append([step, float(loss.detach())])
            for l, v in parts.items():
                hist["mse"].setdefault(str(l), []).append([step, v])
            if log:
                log(f"seed {seed} step {step}/{steps} loss {float(loss):.4f} {time.time() - t0:.0f}s")
    hist["seconds"] = time.time() - t0
    model.eval()
    return model, hist


def bootstrap_items(items: dict, seed: int) -> dict:
    """Resample each level's training rows with replacement (same count per level)."""
    rng = np.random.default_rng(10_000 + seed)
    rows = []
    for l in np.unique(items["level"]):
        idx = np.where(items["level"] == l)[0]
        rows.append(rng.choice(idx, size=len(idx), replace=True))
    rows = np.concatenate(rows)
    return {k: v[rows] for k, v in items.items()}


def train_ensemble(graphs, items, model_config: dict, train_config: dict, weights, seed: int = 0,
                   log=None):
    members, hists = [], []
    for m in range(int(train_config["n_members"])):
        it = bootstrap_items(items, seed + m) if train_config.get("bootstrap", True) else items
        model, hist = train_member(graphs, it, model_config, train_config, weights, seed + m, log)
        members.append(model)
        hists.append(hist)
    return members, hists


def predict_ensemble(members, graphs, batch_size: int = 256):
    """Member means and sigmas, each (M, n_graphs, n_levels)."""
    mus, sig = [], []
    for m in members:
        mu, var = predict_member(m, graphs, batch_size)
        mus.append(mu)
        sig.append(np.sqrt(var))
    return np.stack(mus), np.stack(sig)


# ---------------------------------------------------------------- checkpoints

def save_checkpoint(path, kind: str, model_config: dict, members, extra: dict | None = None) -> int:
    """Write weights + plain config (loadable with ``torch.load(weights_only=True)``); returns bytes."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "kind": kind,
        "config": _plain(model_config),
        "members": [{k: v.detach().cpu().clone() for k, v in m.state_dict().items()} for m in members],
        "extra": _plain(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(payload, buf)
    path.write_bytes(buf.getvalue())
    return len(buf.getvalue())


def load_checkpoint(path, kind: str, model_cls=MFENNP):
    """(members, config, extra) from a checkpoint file; any problem is a one-line CheckpointError."""
    from qadb.errors import CheckpointError

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt/foreign file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{path}: not a readable checkpoint ({first})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a qadb MF-ENNP checkpoint")
    if payload.get("kind") != kind:
        raise CheckpointError(f"{path}: checkpoint kind is {payload.get('kind')!r}, expected {kind!r}")
    try:
        members = []
        for sd in payload["members"]:
            m = model_cls(payload["config"])
            m.load_state_dict(sd)
            m.eval()
            members.append(m)
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{path}: weights do not match the stored config ({first})") from None
    if not members:
        raise CheckpointError(f"{path}: checkpoint holds no ensemble members")
    return members, payload["config"], payload.get("extra", {})


def _plain(obj):
    """Config/metadata as plain python (dict/list/str/float/int/bool/None) for weights_only loading."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        v = float(obj)
        return None if math.isnan(v) else v
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj
