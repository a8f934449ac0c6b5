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
from qadb.errors import InputError
from qadb.models.validator import data as D
from qadb.models.validator import uncertainty as U

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CHECKPOINT = REPO_ROOT / "qadb" / "data" / "checkpoints" / "validator_mfennp.pt"
DEFAULT_LOG = REPO_ROOT / "train_logs" / "validator.jsonl"
KIND = "validator"
ALL_LEVELS = list(D.LEVEL_FIDELITY)


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


def train_validator(records: list[dict] | None = None, *, bundle=None, hierarchy: str | dict = "full",
                    n_members: int = 5, steps: int = 20000, time_budget_s: float | None = None, seed: int = 0,
                    device: str = "cpu", checkpoint: str | Path | None = None, state_path: str | Path | None = None,
                    log: str | Path | None = DEFAULT_LOG, cache: str | Path | None = None,
                    max_root: int | None = None, model_overrides: dict | None = None,
                    train_overrides: dict | None = None, verbose: bool = True, run_name: str = "validator",
                    level_weights: dict | None = None) -> dict:
    """Train a bootstrap deep ensemble of MF-ENNP members and evaluate it on the held-out split.

    Data: ``records`` (see `data`), or ``bundle`` (a `data.export_bundle` file, or the tuple
    `data.load_bundle` returns), else the staged datasets. Returns ``{"members", "config", "levels",
    "metrics", "calibration", "data_hash", ...}``; appends one JSON line to ``log``.
    """
    t0 = time.time()
    if bundle is not None:
        bank, items, _, meta = D.load_bundle(bundle, device) if isinstance(bundle, (str, Path)) else bundle
        graphs, counts, dhash = bank, None, meta["data_hash"]
    else:
        records = records if records is not None else D.staged_formation_records(max_root=max_root, seed=seed)
        mc = {"cutoff": 5.0, "max_neighbors": 16}
        mc.update({k: v for k, v in (model_overrides or {}).items() if k in mc})
        graphs, gindex = D.featurize_records(records, cache=cache, cutoff=mc["cutoff"], max_neighbors=mc["max_neighbors"])
        items = D.to_arrays(records, gindex, ALL_LEVELS)
        counts, dhash = D.counts(records), D.data_hash(items)
    res = fit_arrays(graphs, items, hierarchy=hierarchy, n_members=n_members, steps=steps,
                     time_budget_s=time_budget_s, seed=seed, device=device, model_overrides=model_overrides,
                     train_overrides=train_overrides, verbose=verbose, level_weights=level_weights,
                     state_path=state_path)
    res.update({"data_hash": dhash, "counts": counts, "seconds": time.time() - t0})
    extra = checkpoint_extra(res, hierarchy)
    if checkpoint:
        from qadb.models.validator.train import save_checkpoint

        res["checkpoint_bytes"] = save_checkpoint(checkpoint, KIND, res["config"], res["members"], extra)
        res["checkpoint"] = str(checkpoint)
    _log_line(log, log_entry(res, run_name, hierarchy, seed))
    return res


def checkpoint_extra(res: dict, hierarchy) -> dict:
    levels = res["levels"]
    return {"levels": levels, "level_fidelity": {l: D.LEVEL_FIDELITY.get(l, l) for l in levels},
            "calibration": res["calibration"], "data_hash": res["data_hash"], "metrics": res["metrics"],
            "train_config": res["train_config"], "divergence_low_level": divergence_low_level(levels),
            "hierarchy": hierarchy if isinstance(hierarchy, str) else "custom"}


def log_entry(res: dict, run_name: str, hierarchy, seed: int) -> dict:
    h = res["history"]
    return {
        "run": run_name, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "hierarchy": hierarchy if isinstance(hierarchy, str) else "custom", "config": res["config"],
        "train_config": res["train_config"], "loss_weights": dict(zip(res["levels"], res["weights"])), "seed": seed,
        "data_hash": res["data_hash"], "n_train_rows": res["n_train_rows"], "steps": h.get("steps_done"),
        "train_seconds": h.get("seconds"), "loss_curve": h.get("loss"), "val_mae_curve": h.get("val"),
        "mse_last": {res["levels"][int(k)]: v[-1][1] for k, v in h.get("mse", {}).items() if v},
        "metrics": res["metrics"], "calibration": res["calibration"], "checkpoint": res.get("checkpoint"),
        "env": _env(), "seconds": res.get("seconds"),
    }


def fit_arrays(graphs, items: dict, *, hierarchy="full", n_members=5, steps=20000, time_budget_s=None, seed=0,
               device="cpu", model_overrides=None, train_overrides=None, verbose=True, level_weights=None,
               state_path=None) -> dict:
    """Train + evaluate on item arrays (levels indexed in `ALL_LEVELS`) and graphs (list or GraphBank).

    torch/numpy only: this is what runs on the GPU machine."""
    from qadb.models.validator.net import default_config
    from qadb.models.validator.train import default_train_config, train_ensemble

    levels, parents = hierarchy_levels(hierarchy)
    mcfg = default_config(levels, parents)
    mcfg.update(model_overrides or {})
    mcfg["n_members"] = int(n_members)
    tcfg = default_train_config()
    tcfg.update({"steps": int(steps), "n_members": int(n_members), "time_budget_s": time_budget_s})
    tcfg.update(train_overrides or {})
    lvl_map = np.array([levels.index(l) if l in levels else -1 for l in ALL_LEVELS])

    def subset(split):
        m = (items["split"] == split) & (lvl_map[items["level"]] >= 0)
        return {"graph": items["graph"][m], "level": lvl_map[items["level"][m]], "y": items["y"][m]}

    train_items, val_items = subset("train"), subset("val")
    if len(train_items["y"]) == 0:
        raise InputError("no training rows for the requested hierarchy")
    weights = loss_weights(levels)
    if level_weights:
        weights = [float(level_weights.get(l, w)) for l, w in zip(levels, weights)]
    say = (lambda m: print(m, flush=True)) if verbose else None
    model, hist = train_ensemble(graphs, train_items, mcfg, tcfg, weights, seed=seed, log=say, device=device,
                                 state_path=state_path, val_items=val_items)
    result = evaluate([model], graphs, items, levels)
    result.update({"members": [model.cpu()], "config": mcfg, "train_config": tcfg, "levels": levels,
                   "weights": weights, "history": hist, "n_train_rows": int(len(train_items["y"]))})
    return result


def divergence_low_level(levels: list[str]) -> str:
    """The low-fidelity head that divergence compares E_MF with: the uncorrected PBE+U (FERE) head
    when the hierarchy has it, else the root (MP PBE+U, which includes MP's fitted corrections)."""
    return "PBE+U/FERE" if "PBE+U/FERE" in levels else levels[0]


def _ens_level(mus, sigs, levels, level):
    """Ensemble mean/sigma of one level; a level the model lacks is predicted by the root head."""
    li = levels.index(level) if level in levels else 0
    return U.aggregate(mus[:, :, li], sigs[:, :, li])


def evaluate(members, graphs, items, levels, split: str = "test", sigma_scale: float | None = None) -> dict:
    """Held-out metrics: per-level MAE, ECE (raw and variance-scaled), divergence R², DFT baselines.

    ``items["level"]`` indexes `ALL_LEVELS`; ``graphs`` is a list of graph dicts or a GraphBank.
    ``sigma_scale=None`` fits the variance scale on the EXP validation rows."""
    from qadb.models.validator.train import _Sub, predict_ensemble

    splits = [split] if sigma_scale is not None else ["val", split]
    used = np.unique(items["graph"][np.isin(items["split"], splits)])
    sub = _Sub(graphs, used) if hasattr(graphs, "batch") else [graphs[i] for i in used]
    mus, sigs = predict_ensemble(members, sub)
    pos = {int(g): k for k, g in enumerate(used)}
    metrics, calib, extra = {}, {}, {}
    ens = {l: _ens_level(mus, sigs, levels, l) for l in set(ALL_LEVELS) | set(levels)}
    preds = {}
    for li, lname in enumerate(ALL_LEVELS):
        for sp in splits:
            rows = np.where((items["level"] == li) & (items["split"] == sp))[0]
            if len(rows) == 0:
                continue
            k = np.array([pos[int(g)] for g in items["graph"][rows]])
            e, s = ens[lname]
            preds[(lname, sp)] = (rows, e[k], s[k], items["y"][rows], k)
    for lname in ALL_LEVELS:
        if (lname, split) in preds:
            rows, e, s, y, _ = preds[(lname, split)]
            metrics[f"mae_{D.level_slug(lname)}_ev_per_atom"] = float(np.mean(np.abs(e - y)))
            extra[f"n_test_{D.level_slug(lname)}"] = int(len(y))
            if lname == D.ROOT_LEVEL:
                mp20 = np.array([str(x).startswith("mp20") for x in items["source"][rows]])
                if mp20.any():
                    metrics["mae_pbe_u_mp20_ev_per_atom"] = float(np.mean(np.abs(e[mp20] - y[mp20])))
                    extra["n_test_pbe_u_mp20"] = int(mp20.sum())
    if ("EXP", split) not in preds:
        return {"metrics": metrics, "calibration": calib, "extra": extra}
    rows, e, s, y, k_exp = preds[("EXP", split)]
    metrics["ece_raw"] = U.ece(y, e, s)
    scale = 1.0 if sigma_scale is None else float(sigma_scale)
    if sigma_scale is None and ("EXP", "val") in preds and len(preds[("EXP", "val")][3]) >= 10:
        _, ev, sv, yv, _ = preds[("EXP", "val")]
        scale = U.fit_sigma_scale(yv, ev, sv)
    calib["sigma_scale"] = scale
    metrics["ece"] = U.ece(y, e, scale * s)
    metrics["mean_sigma_mf_ev_per_atom"] = float(np.mean(scale * s))
    src = np.asarray(items["source"][rows]).astype(str)
    fere = src == "fere_exp"
    formulas = np.asarray(items["formula"][rows]).astype(str)
    extra.update({"exp_test_abs_err": np.abs(e - y).tolist(), "exp_test_y": y.tolist(), "exp_test_mu": e.tolist(),
                  "exp_test_sigma_raw": s.tolist(), "exp_test_keys": np.asarray(items["key"][rows]).astype(str).tolist(),
                  "exp_test_fere": fere.tolist(), "sigma_scale": scale})
    # the same test structures' per-level predictions (for Δ-learning / co-kriging on top, bench)
    extra["exp_test_levels"] = {l: ens[l][0][k_exp].tolist() for l in levels}
    if fere.any():
        metrics["mae_exp_fere_ev_per_atom"] = float(np.mean(np.abs(e[fere] - y[fere])))
        extra["n_test_exp_fere"] = int(fere.sum())
        extra["exp_fere_formulas"] = formulas[fere].tolist()
        # DFT functionals themselves vs experiment on the same FERE test compounds (no model involved)
        by_level = {}
        for lv in ("r2SCAN", "SCAN", "r2SCAN+U", "SCAN+U", "PBE+U/FERE"):
            li = ALL_LEVELS.index(lv)
            m = items["level"] == li
            by_level[lv] = dict(zip(np.asarray(items["formula"][m]).astype(str), items["y"][m]))
            errs = [abs(by_level[lv][f] - yy) for f, yy in zip(formulas[fere], y[fere]) if f in by_level[lv]]
            if errs:
                metrics[f"dft_{D.level_slug(lv)}_vs_exp_mae_fere_test_ev_per_atom"] = float(np.mean(errs))
        # divergence on FERE: low = uncorrected PBE+U (Moore) DFT, high = experiment, same compounds
        low = divergence_low_level(levels)
        sel = np.array([f in by_level["PBE+U/FERE"] for f in formulas[fere]])
        if sel.sum() >= 3:
            fr = np.where(fere)[0][sel]
            actual = np.array([by_level["PBE+U/FERE"][f] for f in formulas[fr]]) - y[fr]
            _div_metrics(metrics, extra, "", ens[low][0][k_exp[fr]], e[fr], scale * s[fr], actual)
            extra["divergence_low_level"] = low
    # divergence on MP-20/MPTS compounds: low = MP PBE+U label (includes MP's fitted corrections)
    rootp = preds.get((D.ROOT_LEVEL, split))
    if rootp is not None:
        root_y = dict(zip(np.asarray(items["key"][rootp[0]]).astype(str), rootp[3]))
        keys = np.asarray(items["key"][rows]).astype(str)
        sel = np.array([kk in root_y for kk in keys])
        if sel.sum() >= 3:
            actual = np.array([root_y[kk] for kk in keys[sel]]) - y[sel]
            _div_metrics(metrics, extra, "_mp", ens[D.ROOT_LEVEL][0][k_exp[sel]], e[sel], scale * s[sel], actual)
    return {"metrics": metrics, "calibration": calib, "extra": extra}


def _div_metrics(metrics, extra, suffix, e_low, e_mf, s_mf, actual):
    """R² of D_abs and D_rel with |actual| and of D_sgn with the signed actual low-high discrepancy."""
    d_abs, d_rel, d_sgn = U.divergence(e_low, e_mf, s_mf)
    metrics[f"divergence_r2_abs{suffix}"] = U.pearson_r2(d_abs, np.abs(actual))
    metrics[f"divergence_r2_rel{suffix}"] = U.pearson_r2(d_rel, np.abs(actual))
    metrics[f"divergence_r2_sgn{suffix}"] = U.pearson_r2(d_sgn, actual)
    vals = [metrics[f"divergence_r2_{v}{suffix}"] for v in ("abs", "rel", "sgn")]
    metrics[f"divergence_r2{suffix}"] = float(np.nanmax(vals)) if np.isfinite(vals).any() else float("nan")
    metrics[f"divergence_mae_sgn{suffix}_ev_per_atom"] = float(np.mean(np.abs(d_sgn - actual)))
    extra[f"n_divergence{suffix}"] = int(len(actual))
    extra[f"divergence{suffix}"] = {"d_abs": d_abs.tolist(), "d_rel": d_rel.tolist(), "d_sgn": d_sgn.tolist(),
                                   "actual": np.asarray(actual).tolist()}


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
            baseline_e_pbe=None, batch_size: int = 256, low_level: str | None = None, graphs=None,
            mlip_member: str | Path | None = None, mlip_energies=None) -> dict:
    """Validator (and descriptor-proxy) outputs for pymatgen structures (or dicts / CIF strings).

    Returns numpy arrays of length n:
    ``energies[level]`` / ``sigmas[level]`` (ensemble mean / sigma per fidelity level, eV/atom),
    ``E_PBE`` (the low-fidelity head divergence uses: ``low_level``, by default the checkpoint's
    ``divergence_low_level`` = the uncorrected PBE+U/FERE head when present), ``E_MF``, ``sigma_MF``
    (top level, Sec. 2.3.1, recalibrated by the stored variance scale; ``sigma_MF_raw`` unscaled),
    ``D_abs``, ``D_rel``, ``D_sgn`` (Eqs. 3-5) and, when a proxy checkpoint exists, ``q`` (n, k) with
    ``q_names``.

    ``baseline_e_pbe``: optional per-structure PBE-level energies from an external model (e.g. CHGNet
    through ``qadb.drivers``); when given, the divergence uses them instead of the model's low head.
    ``graphs``: already featurised graphs (skips featurisation; structures are then only needed for q
    and the MLIP member).

    ``mlip_member``: ``"chgnet"`` (the committed `mlip_member` artifact) or an ``.npz`` path. Adds
    ``E_EXP_mlip`` / ``sigma_EXP_mlip`` (experimental formation enthalpy co-kriged from the bundled
    CHGNet models' energies and the MF-ENNP's PBE+U head, structure only; GP standard deviation
    recalibrated by the variance scale fitted on EXP val; ``sigma_EXP_mlip_raw`` unscaled),
    ``E_mlip_low`` (n, k) (each MLIP's formation energy, energy minus fitted chemical potentials) and
    ``mlip_fidelities``. Off by default: CHGNet costs far more than the MF-ENNP on a CPU.
    ``mlip_energies``: precomputed (n, k) MLIP energies per atom in the member's order (skips the MLIP).
    """
    from qadb.models.validator.featurize import featurize
    from qadb.models.validator.train import predict_ensemble

    structures = list(structures)
    members, cfg, extra = load_validator(checkpoint)
    levels = list(cfg["levels"])
    if graphs is None:
        graphs = [featurize(s, cfg["cutoff"], cfg["max_neighbors"]) for s in structures]
    mus, sigs = predict_ensemble(members, graphs, batch_size)
    scale = float(extra.get("calibration", {}).get("sigma_scale", 1.0))
    out: dict = {"levels": levels, "energies": {}, "sigmas": {}}
    for li, l in enumerate(levels):
        e, s = U.aggregate(mus[:, :, li], sigs[:, :, li])
        out["energies"][l], out["sigmas"][l] = e, s
    e_mf, s_mf = out["energies"][levels[-1]], out["sigmas"][levels[-1]]
    low = low_level or extra.get("divergence_low_level") or levels[0]
    if low not in out["energies"]:
        raise InputError(f"unknown low level {low!r}; this checkpoint has {', '.join(levels)}")
    e_pbe = out["energies"][low]
    if baseline_e_pbe is not None:
        e_pbe = np.asarray(baseline_e_pbe, dtype=np.float64)
        if e_pbe.shape != e_mf.shape:
            raise InputError(f"baseline_e_pbe has {e_pbe.shape[0] if e_pbe.ndim else 0} values for {len(e_mf)} structures")
        low = "baseline"
    out.update({"E_PBE": e_pbe, "low_level": low, "E_MF": e_mf, "sigma_MF_raw": s_mf, "sigma_MF": scale * s_mf})
    out["D_abs"], out["D_rel"], out["D_sgn"] = U.divergence(e_pbe, e_mf, scale * s_mf)
    if mlip_member is not None:
        out.update(_mlip_member_outputs(mlip_member, structures, graphs, out["energies"],
                                        Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT, mlip_energies))
    if proxy_checkpoint is not False:
        from qadb.models.proxy.api import DEFAULT_CHECKPOINT as PROXY_CKPT
        from qadb.models.proxy.api import predict_q_graphs

        from qadb.models.proxy.api import load_proxy

        p = Path(proxy_checkpoint) if proxy_checkpoint else PROXY_CKPT
        if p.exists() or proxy_checkpoint:
            pcfg = load_proxy(p)[1]
            same = (pcfg["cutoff"], pcfg["max_neighbors"]) == (cfg["cutoff"], cfg["max_neighbors"])
            q, names = predict_q_graphs(structures, p, graphs=graphs if same else None)
            out["q"], out["q_names"] = q, names
    return out


def _mlip_member_outputs(ref, structures, graphs, mf_levels: dict, checkpoint_path: Path, energies=None) -> dict:
    from qadb.models.validator import mlip_member as MM
    from qadb.models.validator.baselines import composition_features

    member = MM.load_member(ref)
    MM.check_validator(member, checkpoint_path)
    n = len(graphs)
    if energies is None:
        if len(structures) != n:
            raise InputError("mlip_member needs the structures themselves (the MLIP runs on them), not only graphs")
        energies = member.energies(structures)
    energies = np.asarray(energies, dtype=np.float64)
    energies = energies[:, None] if energies.ndim == 1 else energies
    if energies.shape[0] != n:
        raise InputError(f"mlip_energies has {energies.shape[0]} rows for {n} structures")
    X = composition_features(graphs)
    e, s = member.predict(energies, X, mf_levels, raw_std=True)
    return {"E_EXP_mlip": e, "sigma_EXP_mlip": member.sigma_scale * s, "sigma_EXP_mlip_raw": s,
            "E_mlip_low": member.f_low(energies, X),
            "mlip_fidelities": member.fidelities, "mlip_member": member.name}


def divergence_from_baseline(baseline_e_pbe, e_mf, sigma_mf):
    """Hook for external PBE-level predictions (CHGNet/SevenNet wrappers): Eqs. 3-5 against E_MF."""
    return U.divergence(baseline_e_pbe, e_mf, sigma_mf)
