"""Training of the MF-ENNP bootstrap deep ensemble; checkpoint I/O (torch/numpy only).

All M members train in one pass (`net.MFENNP` stacks them). Bootstrap: member m sees training row i
with weight ``c[m, i]`` = how often row i was drawn when that level's rows were resampled with
replacement (same count per level). Rows are sampled uniformly each step and weighted by these
counts, so member m's expected gradient equals that of training on its own bootstrap resample.
"""

from __future__ import annotations

import io
import math
import time
from pathlib import Path

import numpy as np
import torch

from qadb.models.validator.net import N_SPECIES, GraphBank, MFENNP, member_grad_clip_, predict_graphs

CHECKPOINT_FORMAT = "qadb-mfennp/1"
STATE_FORMAT = "qadb-mfennp-state/1"

# Eq. 2 loss weights by accuracy rung (qadb.fidelity): rising with fidelity, w_PBE = 0.1, w_top = 1.0.
RUNG_WEIGHTS = {0: 0.05, 1: 0.1, 2: 0.3, 3: 0.6, 4: 1.0, 5: 1.0}


def default_train_config() -> dict:
    return {
        "steps": 20000,
        "time_budget_s": None,   # stop (and finish the cosine schedule) at this wall time
        "batch_root": 128,
        "batch_other": 12,
        "lr": 1.5e-3,
        "lr_final_frac": 0.02,
        "warmup_frac": 0.03,
        "weight_decay": 1e-5,
        "grad_clip": 10.0,       # per member
        "nll_weight": 1.0,
        "mse_only_frac": 0.3,
        "ema_decay": 0.999,
        "bootstrap": True,
        "n_members": 5,
        "log_every": 500,
        "select": "top",         # keep the EMA weights with the best validation MAE of the top level
    }


def composition_matrix(graphs, ids) -> np.ndarray:
    """Element-fraction rows (n, N_SPECIES+1) for graph ids of a list of graph dicts or a GraphBank."""
    X = np.zeros((len(ids), N_SPECIES + 1))
    if isinstance(graphs, GraphBank):
        z = graphs.z.cpu().numpy()
        starts = np.concatenate([[0], np.cumsum(graphs.n_atoms)])
        zs = [z[starts[g]:starts[g + 1]] for g in ids]
    else:
        zs = [np.asarray(graphs[g]["z"]) for g in ids]
    for r, zz in enumerate(zs):
        np.add.at(X[r], np.clip(zz, 0, N_SPECIES), 1.0 / len(zz))
    return X


def fit_element_reference(graphs, items, root: int, rows=None) -> np.ndarray:
    """Least-squares per-element energies for the root level (composition baseline)."""
    sel = np.where(items["level"] == root)[0] if rows is None else np.asarray(rows)
    if len(sel) == 0:
        return np.zeros(N_SPECIES + 1)
    X = composition_matrix(graphs, items["graph"][sel])
    y = items["y"][sel].astype(np.float64)
    A = X.T @ X + 1e-3 * np.eye(X.shape[1])
    return np.linalg.solve(A, X.T @ y)


def bootstrap_counts(levels: np.ndarray, n_members: int, seed: int, bootstrap: bool = True) -> np.ndarray:
    """(M, n) resampling counts: per member, each level's rows drawn with replacement (same count)."""
    n = len(levels)
    c = np.ones((n_members, n), np.float32)
    if not bootstrap:
        return c
    for m in range(n_members):
        rng = np.random.default_rng(10_000 + seed + m)
        c[m] = 0
        for l in np.unique(levels):
            idx = np.where(levels == l)[0]
            np.add.at(c[m], rng.choice(idx, size=len(idx), replace=True), 1.0)
    return c


def ensemble_loss(mu, var, y, lvl, cnt, weights, nll_weight: float, mse_only: bool):
    """Eq. 2 weighted multi-task loss summed over members.

    ``mu``/``var`` (M, B, L); ``y``/``lvl`` (B,); ``cnt`` (M, B) bootstrap weights; ``weights`` (L,).
    Per member and level: weighted MSE_l = sum_i c_i (mu_i - y_i)^2 / sum_i c_i; total
    sum_m sum_l w_l (MSE_l + nll_weight * NLL_l), the Gaussian NLL with the mean detached (so the
    means are driven by the MSE term exactly as in Eq. 2). Returns (loss, per-level member-mean MSE).
    """
    M, B, L = mu.shape
    idx = lvl[None, :, None].expand(M, B, 1)
    pm = mu.gather(2, idx)[..., 0]
    pv = var.gather(2, idx)[..., 0]
    err = pm - y[None]
    denom = torch.zeros(M, L, dtype=mu.dtype, device=mu.device).index_add_(1, lvl, cnt).clamp_min(1e-6)
    wrow = cnt / denom[:, lvl] * weights[lvl][None]  # (M, B)
    se = err ** 2
    loss = (wrow * se).sum()
    if not mse_only and nll_weight > 0:
        nll = 0.5 * (torch.log(pv) + err.detach() ** 2 / pv)
        loss = loss + nll_weight * (wrow * nll).sum()
    per_level = torch.zeros(M, L, dtype=mu.dtype, device=mu.device).index_add_(1, lvl, cnt * se.detach()) / denom
    return loss, per_level.mean(0)


def _lr_factor(progress: float, tc: dict) -> float:
    warm = float(tc["warmup_frac"])
    if progress < warm:
        return (progress + 1e-4) / warm
    p = (progress - warm) / max(1e-9, 1.0 - warm)
    f = float(tc["lr_final_frac"])
    return f + (1 - f) * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


def train_ensemble(graphs, items, model_config: dict, train_config: dict, weights, seed: int = 0,
                   log=None, device: str = "cpu", state_path=None, state_every_s: float = 120.0,
                   val_items: dict | None = None):
    """Train the M-member ensemble on ``items`` (dict of arrays graph, level, y; training rows only).

    ``graphs``: list of graph dicts or a `GraphBank`. Resumable: with ``state_path`` the full state
    (weights, EMA, optimiser, step, elapsed time, sampler RNG) is written every ``state_every_s``
    seconds and at the end, and an existing compatible state file is resumed from.
    Returns (model with EMA weights, history dict).
    """
    tc = dict(train_config)
    M = int(tc["n_members"])
    mcfg = dict(model_config, n_members=M)
    dev = torch.device(device)
    bank = graphs if isinstance(graphs, GraphBank) else GraphBank.from_graphs(graphs, device=dev)
    torch.manual_seed(seed)
    model = MFENNP(mcfg).to(dev)
    L = model.n_levels
    root = 0
    ref = fit_element_reference(bank, items, root)
    with torch.no_grad():
        model.elem_ref.copy_(torch.as_tensor(np.tile(ref, (M, 1)), dtype=torch.float32, device=dev))
    by_level = [np.where(items["level"] == l)[0] for l in range(L)]
    cnt_all = torch.as_tensor(bootstrap_counts(items["level"], M, seed, bool(tc.get("bootstrap", True))), device=dev)
    y_all = torch.as_tensor(items["y"], dtype=torch.float32, device=dev)
    lvl_all = torch.as_tensor(items["level"], dtype=torch.int64, device=dev)
    w = torch.as_tensor(weights, dtype=torch.float32, device=dev)
    fused = dev.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=float(tc["lr"]), weight_decay=float(tc["weight_decay"]),
                            **({"fused": True} if fused else {"foreach": True}))
    ema = [p.detach().clone() for p in model.parameters()]
    rng = np.random.default_rng(seed)
    steps, budget = int(tc["steps"]), tc.get("time_budget_s")
    step, elapsed = 0, 0.0
    hist = {"loss": [], "mse": {}, "val": []}
    if state_path and Path(state_path).exists():
        st = torch.load(state_path, map_location=dev, weights_only=True)
        if st.get("format") == STATE_FORMAT and st.get("config") == _plain(mcfg):
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["opt"])
            for e, v in zip(ema, st["ema"]):
                e.copy_(v)
            step, elapsed = int(st["step"]), float(st["elapsed"])
            rng = np.random.default_rng([seed, step])
            hist = st.get("hist", hist) or hist
            if log:
                log(f"resumed from {state_path} at step {step} ({elapsed:.0f}s)")
    t0 = time.time() - elapsed
    last_save = time.time()
    decay = float(tc.get("ema_decay") or 0.0)
    best = (float("inf"), None, None)
    params = list(model.parameters())
    model.train()

    def progress_now():
        p = step / steps
        if budget:
            p = max(p, (time.time() - t0) / float(budget))
        return p

    while True:
        prog = progress_now()
        if prog >= 1.0:
            break
        for g in opt.param_groups:
            g["lr"] = float(tc["lr"]) * _lr_factor(prog, tc)
        pick = []
        for l in range(L):
            if len(by_level[l]) == 0:
                continue
            k = int(tc["batch_root"]) if l == root else int(tc["batch_other"])
            pick.append(rng.choice(by_level[l], size=k, replace=True))
        rows = np.concatenate(pick)
        b = bank.batch(items["graph"][rows])
        rt = torch.as_tensor(rows, device=dev)
        mu, var = model(b)
        loss, per_level = ensemble_loss(mu, var, y_all[rt], lvl_all[rt], cnt_all[:, rt], w,
                                        float(tc["nll_weight"]), mse_only=prog < float(tc["mse_only_frac"]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.get("grad_clip"):
            member_grad_clip_(model, float(tc["grad_clip"]))
        opt.step()
        if decay:
            d = min(decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - d)
        step += 1
        if step % int(tc["log_every"]) == 0 or step == 1:
            pl = per_level.cpu().numpy()
            hist["loss"].append([step, float(loss.detach()) / M])
            for l in range(L):
                hist["mse"].setdefault(str(l), []).append([step, float(pl[l])])
            msg = f"step {step} loss/member {float(loss.detach()) / M:.4f} rmse_root {math.sqrt(max(pl[0], 0)):.3f} " \
                  f"lr {opt.param_groups[0]['lr']:.2e} {time.time() - t0:.0f}s"
            if val_items is not None:
                v = _val_mae(model, ema, bank, val_items, L)
                hist["val"].append([step] + v)
                msg += " val_mae " + " ".join(f"{x:.3f}" for x in v)
                model.train()
                score = v[L - 1]
                if tc.get("select") == "top" and np.isfinite(score) and prog > 0.2 and score < best[0]:
                    best = (score, step, [e.detach().clone() for e in ema])
            if log:
                log(msg)
        if state_path and time.time() - last_save > state_every_s:
            _save_state(state_path, model, opt, ema, step, time.time() - t0, mcfg, hist)
            last_save = time.time()
    hist["seconds"] = time.time() - t0
    hist["steps_done"] = step
    if val_items is not None:  # final validation point, then the selection
        v = _val_mae(model, ema, bank, val_items, L)
        hist["val"].append([step] + v)
        if tc.get("select") == "top" and np.isfinite(v[L - 1]) and v[L - 1] < best[0]:
            best = (v[L - 1], step, [e.detach().clone() for e in ema])
    if state_path:
        _save_state(state_path, model, opt, ema, step, time.time() - t0, mcfg, hist)
    if best[2] is not None:
        ema = best[2]
        hist["selected_step"], hist["selected_val_mae_top"] = best[1], best[0]
    if decay or best[2] is not None:
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
    model.eval()
    return model, hist


@torch.no_grad()
def _val_mae(model, ema, bank, val_items, L):
    """Per-level validation MAE of the ensemble mean with the EMA weights (weights restored after)."""
    params = list(model.parameters())
    saved = [p.detach().clone() for p in params]
    for p, e in zip(params, ema):
        p.copy_(e)
    mu, _ = predict_graphs(model, _Sub(bank, val_items["graph"]), 512)
    for p, s in zip(params, saved):
        p.copy_(s)
    e = mu.mean(0)
    out = []
    for l in range(L):
        m = val_items["level"] == l
        out.append(float(np.mean(np.abs(e[m, l] - val_items["y"][m]))) if m.any() else float("nan"))
    return out


class _Sub:
    """A view of some graphs of a GraphBank (for batched prediction)."""

    def __init__(self, bank, ids):
        self.bank, self.ids = bank, np.asarray(ids)

    def __len__(self):
        return len(self.ids)

    def batch(self, idx):
        return self.bank.batch(self.ids[np.asarray(idx)])


def _save_state(path, model, opt, ema, step, elapsed, mcfg, hist):
    payload = {"format": STATE_FORMAT, "config": _plain(mcfg), "model": model.state_dict(),
               "opt": opt.state_dict(), "ema": [e.detach() for e in ema], "step": int(step),
               "elapsed": float(elapsed), "hist": _plain(hist)}
    buf = io.BytesIO()
    torch.save(payload, buf)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def predict_ensemble(members, graphs, batch_size: int = 256):
    """Member means and sigmas, each (M, n_graphs, n_levels); ``members`` is a list of stacked
    ensembles (their member axes are concatenated)."""
    mus, sig = [], []
    if isinstance(members, MFENNP):
        members = [members]
    for m in members:
        mu, var = predict_graphs(m, graphs, batch_size)
        mus.append(mu)
        sig.append(np.sqrt(var))
    return np.concatenate(mus, 0), np.concatenate(sig, 0)


# ---------------------------------------------------------------- checkpoints

def save_checkpoint(path, kind: str, model_config: dict, members, extra: dict | None = None) -> int:
    """Write weights + plain config (loadable with ``torch.load(weights_only=True)``); returns bytes.

    ``members`` is a list of modules built from ``model_config`` (the validator stores one stacked
    ensemble; Φ_Q one network)."""
    if isinstance(members, torch.nn.Module):
        members = [members]
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
    return load_checkpoint_bytes(path.read_bytes(), kind, model_cls, name=str(path))


def load_checkpoint_bytes(data: bytes, kind: str, model_cls=MFENNP, name: str = "checkpoint"):
    from qadb.errors import CheckpointError

    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # foreign pickles trigger protocol warnings before failing
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt/foreign file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{name}: not a readable checkpoint ({first})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{name}: not a qadb MF-ENNP checkpoint")
    if payload.get("kind") != kind:
        raise CheckpointError(f"{name}: checkpoint kind is {payload.get('kind')!r}, expected {kind!r}")
    try:
        members = []
        for sd in payload["members"]:
            m = model_cls(payload["config"])
            m.load_state_dict(sd)
            m.eval()
            members.append(m)
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{name}: weights do not match the stored config ({first})") from None
    if not members:
        raise CheckpointError(f"{name}: checkpoint holds no ensemble members")
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
