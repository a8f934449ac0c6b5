"""Python API of the MF-ENNP validator: `train_validator`, `evaluate`, `predict`, `load_validator`.

Training data arrive as records (see `qadb.models.validator.data`); by default they are assembled
from the staged datasets. Each training run appends one JSON line to ``train_logs/validator.jsonl``.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np

from qadb import fidelity
from qadb.errors import CheckpointError, InputError
from qadb.models.validator import data as D
from qadb.models.validator import uncertainty as U

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CHECKPOINT = REPO_ROOT / "qadb" / "data" / "checkpoints" / "validator_mfennp.pt"
DEFAULT_LOG = REPO_ROOT / "train_logs" / "validator.jsonl"
KIND = "validator"


def hierarchy_levels(hierarchy: str | dict) -> tuple[list[str], list[int]]:
    """Levels in parent-first order and parent indices for a named or explicit hierarchy."""
    h = D.HIERARCHIES.get(hierarchy) if isinstance(hierarchy, str) else hierarchy
    if h is None:
        raise InputError(f"unknown hierarchy {hierarchy!r}; known: {', '.join(D.HIERARCHIES)}")
    levels: list[str] = []
    pending = dict(h)
    while pending:
        ready = [l for l, p in pending.items() if p is None or p in levels]
        if not ready:
            raise InputError("hierarchy has a cycle or a parent that is not a level")
        for l in ready:
            levels.append(l)
            pending.pop(l)
    parents = [levels.index(h[l]) if h[l] is not None else -1 for l in levels]
    return levels, parents


def loss_weights(levels: list[str]) -> list[float]:
    from qadb.models.validator.train import RUNG_WEIGHTS

    return [RUNG_WEIGHTS[fidelity.rung(D.LEVEL_FIDELITY.get(l, l))] for l in levels]


def _log_line(path, entry: dict):
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(entry, default=float) + "\n")


def _env() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "machine": platform.machine(), "threads": torch.get_num_threads()}


def train_validator(records: list[dict] | None = None, *, hierarchy: str | dict = "full", n_members: int = 5,
                    steps: int = 800, seed: int = 0, checkpoint: str | Path | None = None,
                    log: str | Path | None = DEFAULT_LOG, cache: str | Path | None = None,
                    max_root: int | None = None, model_overrides: dict | None = None,
                    train_overrides: dict | None = None, verbose: bool = True, run_name: str = "validator",
                    level_weights: dict | None = None) -> dict:
    """Train a bootstrap deep ensemble of MF-ENNP members and evaluate it on the held-out split.

    Returns ``{"members", "config", "levels", "metrics", "calibration", "data_hash", "counts", ...}``.
    """
    import torch

    from qadb.models.validator.net import default_config
    from qadb.models.validator.train import default_train_config, save_checkpoint, train_ensemble

    t0 = time.time()
    records = records if records is not None else D.staged_formation_records(max_root=max_root, seed=seed)
    levels, parents = hierarchy_levels(hierarchy)
    mcfg = default_config(levels, parents)
    mcfg.update(model_overrides or {})
    tcfg = default_train_config()
    tcfg.update({"steps": int(steps), "n_members": int(n_members)})
    tcfg.update(train_overrides or {})
    graphs, gindex = D.featurize_records(records, cache=cache, cutoff=mcfg["cutoff"],
                                         max_neighbors=mcfg["max_neighbors"])
    all_levels = list(D.LEVEL_FIDELITY)
    items = D.to_arrays(records, gindex, all_levels)
    lvl_map = np.array([levels.index(l) if l in levels else -1 for l in all_levels])
    tr = (items["split"] == "train") & (lvl_map[items["level"]] >= 0)
    train_items = {"graph": items["graph"][tr], "level": lvl_map[items["level"][tr]], "y": items["y"][tr]}
    if len(train_items["y"]) == 0:
        raise InputError("no training rows for the requested hierarchy")
    weights = loss_weights(levels)
    if level_weights:
        weights = [float(level_weights.get(l, w)) for l, w in zip(levels, weights)]
    say = (lambda m: print(m, flush=True)) if verbose else None
    members, hists = train_ensemble(graphs, train_items, mcfg, tcfg, weights, seed=seed, log=say)
    result = evaluate(members, graphs, items, levels, records=records)
    result.update({"members": members, "config": mcfg, "train_config": tcfg, "levels": levels,
                   "data_hash": D.data_hash(items), "counts": D.counts(records), "seconds": time.time() - t0})
    extra = {"levels": levels, "level_fidelity": {l: D.LEVEL_FIDELITY.get(l, l) for l in levels},
             "calibration": result["calibration"], "data_hash": result["data_hash"],
             "metrics": result["metrics"], "train_config": tcfg, "hierarchy": hierarchy if isinstance(hierarchy, str) else "custom"}
    if checkpoint:
        result["checkpoint_bytes"] = save_checkpoint(checkpoint, KIND, mcfg, members, extra)
        result["checkpoint"] = str(checkpoint)
    _log_line(log, {
        "run": run_name, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "hierarchy": extra["hierarchy"],
        "config": mcfg, "train_config": tcfg, "loss_weights": dict(zip(levels, weights)), "seed": seed,
        "data_hash": result["data_hash"], "n_train_rows": int(len(train_items["y"])), "steps": int(tcfg["steps"]),
        "losses": [{"member": i, "final_loss": h["loss"][-1][1], "seconds": h["seconds"],
                    "mse_last": {levels[int(k)]: v[-1][1] for k, v in h["mse"].items()}} for i, h in enumerate(hists)],
        "metrics": result["metrics"], "calibration": result["calibration"], "checkpoint": result.get("checkpoint"),
        "env": _env(), "seconds": result["seconds"],
    })
    del torch
    return result


def _ens_level(mus, sigs, levels, level):
    """Ensemble mean/sigma of one level; a level the model lacks is predicted by the root head."""
    li = levels.index(level) if level in levels else 0
    return U.aggregate(mus[:, :, li], sigs[:, :, li])


def evaluate(members, graphs, items, levels, records=None, split: str = "test", sigma_scale: float | None = None) -> dict:
    """Held-out metrics: per-level MAE, ECE (raw and variance-scaled), divergence R², DFT baselines."""
    from qadb.models.validator.train import predict_ensemble

    all_levels = list(D.LEVEL_FIDELITY)
    used = np.unique(items["graph"][np.isin(items["split"], ["val", split] if sigma_scale is None else [split])])
    sub = [graphs[i] for i in used]
    pos = {int(g): k for k, g in enumerate(used)}
    mus, sigs = predict_ensemble(members, sub)
    top = levels[-1]
    metrics, calib, extra = {}, {}, {}
    preds = {}
    for li, lname in enumerate(all_levels):
        for sp in (("val", split) if sigma_scale is None else (split,)):
            m = (items["level"] == li) & (items["split"] == sp)
            if not m.any():
                continue
            rows = np.where(m)[0]
            e, s = _ens_level(mus, sigs, levels, lname)
            k = np.array([pos[int(g)] for g in items["graph"][rows]])
            preds[(lname, sp)] = (rows, e[k], s[k], items["y"][rows])
    for lname in all_levels:
        if (lname, split) in preds:
            rows, e, s, y = preds[(lname, split)]
            metrics[f"mae_{D.level_slug(lname)}_ev_per_atom"] = float(np.mean(np.abs(e - y)))
            extra[f"n_test_{D.level_slug(lname)}"] = int(len(y))
    # calibration of the top level (E_MF, sigma_MF) on EXP; scale fit on val
    if ("EXP", split) in preds:
        rows, e, s, y = preds[("EXP", split)]
        metrics["ece_raw"] = U.ece(y, e, s)
        scale = 1.0 if sigma_scale is None else float(sigma_scale)
        if sigma_scale is None and ("EXP", "val") in preds and len(preds[("EXP", "val")][3]) >= 10:
            _, ev, sv, yv = preds[("EXP", "val")]
            scale = U.fit_sigma_scale(yv, ev, sv)
        calib["sigma_scale"] = scale
        metrics["ece"] = U.ece(y, e, scale * s)
        metrics["mean_sigma_mf_ev_per_atom"] = float(np.mean(scale * s))
        fere = np.array([str(src) == "fere_exp" for src in items["source"][rows]])
        if fere.any():
            metrics["mae_exp_fere_ev_per_atom"] = float(np.mean(np.abs(e[fere] - y[fere])))
            extra["n_test_exp_fere"] = int(fere.sum())
            extra["exp_fere_formulas"] = items["formula"][rows][fere].tolist()
            extra["exp_fere_abs_err"] = np.abs(e[fere] - y[fere]).tolist()
        extra["exp_test_abs_err"] = np.abs(e - y).tolist()
        extra["exp_test_y"], extra["exp_test_mu"], extra["exp_test_sigma_raw"] = y.tolist(), e.tolist(), s.tolist()
        extra["exp_test_keys"] = items["key"][rows].tolist()
        # divergence vs actual low-high discrepancy on test compounds with an MP (root) label and an EXP label
        rootp = preds.get((D.ROOT_LEVEL, split))
        if rootp is not None:
            root_y = {items["key"][r]: yy for r, yy in zip(rootp[0], rootp[3])}
            sel = [i for i, r in enumerate(rows) if items["key"][r] in root_y]
            if len(sel) >= 3:
                sel = np.array(sel)
                g = items["graph"][rows[sel]]
                k = np.array([pos[int(x)] for x in g])
                e_pbe, _ = _ens_level(mus, sigs, levels, D.ROOT_LEVEL)
                d_abs, d_rel, d_sgn = U.divergence(e_pbe[k], e[sel], scale * s[sel])
                actual = np.array([root_y[items["key"][rows[i]]] for i in sel]) - y[sel]
                metrics["divergence_r2_abs"] = U.pearson_r2(d_abs, np.abs(actual))
                metrics["divergence_r2_rel"] = U.pearson_r2(d_rel, np.abs(actual))
                metrics["divergence_r2_sgn"] = U.pearson_r2(d_sgn, actual)
                metrics["divergence_r2"] = metrics["divergence_r2_abs"]
                extra["n_divergence"] = int(len(sel))
    # DFT functionals themselves vs experiment on the same FERE test compounds (no model involved)
    if records is not None and "exp_fere_formulas" in extra:
        fset = set(extra["exp_fere_formulas"])
        exp_by_f = {r["formula"]: r["value"] for r in records if r["level"] == "EXP" and r["source"] == "fere_exp"}
        for lv in ("r2SCAN", "SCAN", "PBE+U/FERE"):
            dft = {r["formula"]: r["value"] for r in records if r["level"] == lv and r["formula"] in fset}
            if dft:
                errs = [abs(dft[f] - exp_by_f[f]) for f in dft if f in exp_by_f]
                metrics[f"dft_{D.level_slug(lv)}_vs_exp_mae_fere_test_ev_per_atom"] = float(np.mean(errs))
    return {"metrics": metrics, "calibration": calib, "extra": extra}


# ---------------------------------------------------------------- inference

_CACHE: dict = {}


def load_validator(checkpoint: str | Path | None = None):
    """(members, config, extra) of a validator checkpoint (default: the committed small one)."""
    from qadb.models.validator.train import load_checkpoint

    path = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
    key = (str(path), path.stat().st_mtime if path.exists() else None)
    if key not in _CACHE:
        _CACHE[key] = load_checkpoint(path, KIND)
    return _CACHE[key]


def predict(structures, checkpoint: str | Path | None = None, proxy_checkpoint: str | Path | None | bool = None,
            baseline_e_pbe=None, batch_size: int = 256) -> dict:
    """Validator (and descriptor-proxy) outputs for pymatgen structures (or dicts / CIF strings).

    Returns numpy arrays of length n:
    ``energies[level]`` / ``sigmas[level]`` (ensemble mean / sigma per fidelity level, eV/atom),
    ``E_PBE`` (root PBE+U head), ``E_MF``, ``sigma_MF`` (top level, Sec. 2.3.1, recalibrated by the
    stored variance scale; ``sigma_MF_raw`` unscaled), ``D_abs``, ``D_rel``, ``D_sgn`` (Eqs. 3-5) and,
    when a proxy checkpoint exists, ``q`` (n, k) with ``q_names``.

    ``baseline_e_pbe``: optional per-structure PBE-level energies from an external model (e.g. CHGNet
    through ``qadb.drivers``); when given, the divergence uses them instead of the root head.
    """
    from qadb.models.validator.featurize import featurize
    from qadb.models.validator.train import predict_ensemble

    structures = list(structures)
    members, cfg, extra = load_validator(checkpoint)
    levels = list(cfg["levels"])
    graphs = [featurize(s, cfg["cutoff"], cfg["max_neighbors"]) for s in structures]
    mus, sigs = predict_ensemble(members, graphs, batch_size)
    scale = float(extra.get("calibration", {}).get("sigma_scale", 1.0))
    out: dict = {"levels": levels, "energies": {}, "sigmas": {}}
    for li, l in enumerate(levels):
        e, s = U.aggregate(mus[:, :, li], sigs[:, :, li])
        out["energies"][l], out["sigmas"][l] = e, s
    e_mf, s_mf = out["energies"][levels[-1]], out["sigmas"][levels[-1]]
    e_pbe = out["energies"][levels[0]]
    if baseline_e_pbe is not None:
        e_pbe = np.asarray(baseline_e_pbe, dtype=np.float64)
        if e_pbe.shape != e_mf.shape:
            raise InputError(f"baseline_e_pbe has {e_pbe.shape[0] if e_pbe.ndim else 0} values for {len(e_mf)} structures")
    out.update({"E_PBE": e_pbe, "E_MF": e_mf, "sigma_MF_raw": s_mf, "sigma_MF": scale * s_mf})
    out["D_abs"], out["D_rel"], out["D_sgn"] = U.divergence(e_pbe, e_mf, scale * s_mf)
    if proxy_checkpoint is not False:
        from qadb.models.proxy.api import DEFAULT_CHECKPOINT as PROXY_CKPT
        from qadb.models.proxy.api import predict_q_graphs

        p = Path(proxy_checkpoint) if proxy_checkpoint else PROXY_CKPT
        if p.exists() or proxy_checkpoint:
            q, names = predict_q_graphs(structures, p)
            out["q"], out["q_names"] = q, names
    return out


def divergence_from_baseline(baseline_e_pbe, e_mf, sigma_mf):
    """Hook for external PBE-level predictions (CHGNet/SevenNet wrappers): Eqs. 3-5 against E_MF."""
    return U.divergence(baseline_e_pbe, e_mf, sigma_mf)
