"""Φ_Q training loop (torch/numpy only, so it runs on the GPU machine from the source tree).

Loss: Huber on every observed gap + 0.5 BCE on PBE metallicity (metal = PBE gap 0). Each batch is
3/4 uniform training rows and 1/4 rows that carry a non-PBE gap, so the scarce fidelities are seen
every step. One-cycle learning rate; the schedule follows ``time_budget_s`` when given.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from qadb.models.proxy.net import PhiQ
from qadb.models.validator.net import GraphBank, collate


def _batch(graphs, ids, dev):
    if hasattr(graphs, "batch"):
        return graphs.batch(ids)
    b = collate(graphs, ids)
    return {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in b.items()}


def train_phiq(graphs, A: dict, cfg: dict, *, steps: int = 1500, batch: int = 64, lr: float = 3e-3, seed: int = 0,
               time_budget_s: float | None = None, device: str = "cpu", verbose: bool = True, log_every: int = 500):
    """Train Φ_Q on ``A`` = {graph, y (n, K) with NaN for missing, split}; returns (model, losses, seconds)."""
    dev = torch.device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tr = np.where(A["split"] == "train")[0]
    rich = tr[np.isfinite(A["y"][tr, 1:]).any(1)]
    model = PhiQ(cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-5)
    y_all = torch.as_tensor(A["y"], device=dev)
    losses, t0, step = [], time.time(), 0
    model.train()
    while True:
        prog = step / steps
        if time_budget_s:
            prog = max(prog, (time.time() - t0) / time_budget_s)
        if prog >= 1.0:
            break
        f = prog / 0.1 if prog < 0.1 else 0.5 * (1 + math.cos(math.pi * (prog - 0.1) / 0.9))
        for g in opt.param_groups:
            g["lr"] = lr * max(f, 0.01)
        rows = np.concatenate([rng.choice(tr, batch - batch // 4), rng.choice(rich, batch // 4)])
        b = _batch(graphs, A["graph"][rows], dev)
        y = y_all[torch.as_tensor(rows, device=dev)]
        gaps, logit = model(b)
        mask = torch.isfinite(y)
        loss = torch.nn.functional.huber_loss(gaps[mask], y[mask], delta=1.0)
        pm = torch.isfinite(y[:, 0])
        metal = (y[pm, 0] <= 1e-6).float()
        loss = loss + 0.5 * torch.nn.functional.binary_cross_entropy_with_logits(logit[pm], metal)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        step += 1
        if step % log_every == 0 or step == 1:
            losses.append([step, float(loss)])
            if verbose:
                print(f"proxy step {step} loss {float(loss):.4f} {time.time() - t0:.0f}s", flush=True)
    model.eval()
    return model.cpu(), losses, time.time() - t0, step


@torch.no_grad()
def predict_phiq(model, graphs, batch_size: int = 512) -> np.ndarray:
    """(n, K+1) array: K gaps (eV) and p_metal, for a list of graph dicts or a GraphBank view."""
    model.eval()
    dev = next(model.parameters()).device
    out = []
    n = len(graphs)
    for s in range(0, n, batch_size):
        b = _batch(graphs, list(range(s, min(s + batch_size, n))), dev)
        gaps, logit = model(b)
        out.append(torch.cat([gaps, torch.sigmoid(logit)[:, None]], 1).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.k + 1), np.float32)


def gap_metrics(q: np.ndarray, y: np.ndarray, gap_levels, slug) -> dict:
    """Gap MAE per fidelity and metal/non-metal accuracy (metal = PBE gap 0, predicted p_metal > 0.5)."""
    metrics = {}
    for k, l in enumerate(gap_levels):
        m = np.isfinite(y[:, k])
        if m.any():
            metrics[f"proxy_gap_mae_{slug(l)}_ev"] = float(np.mean(np.abs(q[m, k] - y[m, k])))
            metrics[f"n_test_{slug(l)}"] = int(m.sum())
    m = np.isfinite(y[:, 0])
    metrics["proxy_metal_accuracy"] = float(np.mean((q[m, -1] > 0.5) == (y[m, 0] <= 1e-6)))
    metrics["metal_fraction_test"] = float(np.mean(y[m, 0] <= 1e-6))
    return metrics


__all__ = ["train_phiq", "predict_phiq", "gap_metrics", "GraphBank"]
