"""Fidelity-hierarchy ablation (Table 9 analogue) and alternative strategies (Table 16 analogue).

Training: every hierarchy is trained with identical settings by `gpu_run` (``--jobs
full:70,full_trunk_root:70,skip_metagga:70,direct:70,low_only:70``), which stores the checkpoints
of all jobs in ``validator_ablation.pt``; CPU-only users can run ``python -m
qadb.models.validator.ablation --budget 300`` (same code, small budgets).

Evaluation (`ablation_rows`, used by ``bench/validator.py``): held-out EXP MAE with bootstrap 95 %
CIs, paired difference vs the full hierarchy, on the same rows for every method:

- ``full`` / ``full_trunk_root`` / ``skip_metagga`` / ``direct`` / ``low_only`` (structure only);
- ``linear_correction`` and ``cokriging_AR1`` on top of the low-only ensemble's PBE+U prediction
  (fit on EXP train+val rows; structure only);
- ``transfer`` (transfer learning): the low-only ensemble's trunk frozen, its root readout
  re-fitted to EXP by ridge regression on the pooled trunk features (structure only);
- extra structure-only rows computed elsewhere (``extra_structure_only``: the bundled-MLIP baselines
  and the MLIP member of `mlip_member`, see ``bench/validator.py``);
- DFT-input methods on the FERE rows (need a DFT calculation per compound): the r2SCAN DFT value
  itself, a linear correction of it, AR1 co-kriging on it (GP on element fractions), and r2SCAN DFT
  + the MF-ENNP's learned EXP − r2SCAN difference (Δ-learning on top of the DFT label).
"""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np

from qadb.models.validator import data as D
from qadb.models.validator import uncertainty as U
from qadb.models.validator.baselines import CoKriging, LinearCorrection, composition_features

ABLATION_ORDER = ["full", "full_trunk_root", "skip_metagga", "direct", "low_only"]


def load_ablation(path) -> dict:
    """{job: (members, config, extra)} from `gpu_run`'s ``validator_ablation.pt`` (weights_only)."""
    import torch

    from qadb.errors import CheckpointError
    from qadb.models.validator.train import CHECKPOINT_FORMAT, load_checkpoint_bytes

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a readable ablation file ({str(exc).splitlines()[0][:120]})") from None
    out = {}
    for name, p in payload.items():
        buf = io.BytesIO()
        torch.save({"format": CHECKPOINT_FORMAT, "kind": "validator", **p}, buf)
        out[name] = load_checkpoint_bytes(buf.getvalue(), "validator", name=f"{path}:{name}")
    return out


def _mae(e):
    return float(np.mean(e))


def pooled_features(model, graphs) -> np.ndarray:
    """Per-graph mean of the root level's final node features, averaged over members (for transfer)."""
    import torch

    from qadb.models.validator.net import collate

    feats = []
    with torch.no_grad():
        for s in range(0, len(graphs), 256):
            b = collate(graphs, range(s, min(s + 256, len(graphs))))
            h = model.embed[b["z"]]
            rbf, env = model.rbf(b["dist"])
            rbf_env = rbf * env[:, None]
            for blk in model.shared:
                h = blk(h, rbf_env, b["src"], b["dst"], model.norm)
            agg = model.fid.message(h, rbf_env, b["src"], b["dst"], model.norm)
            hl = h + model.fid.update(agg * (1 + model.fid_gamma[:, 0]) + model.fid_beta[:, 0])  # (N, M, F)
            n = b["n_graphs"]
            cnt = torch.zeros(n).index_add_(0, b["batch"], torch.ones(len(b["batch"]))).clamp_min(1)
            pooled = torch.zeros(n, *hl.shape[1:]).index_add_(0, b["batch"], hl) / cnt[:, None, None]
            feats.append(pooled.mean(1).numpy())
    return np.concatenate(feats) if feats else np.zeros((0, 0))


def ablation_rows(models: dict, graphs_exp: list, y_exp: np.ndarray, split_exp: np.ndarray,
                  fere_mask_test: np.ndarray, formulas_test: np.ndarray, dft: dict, exp_fere_all: dict,
                  default_levels_pred: dict | None = None, seed: int = 0,
                  extra_structure_only: dict | None = None) -> dict:
    """Rows of the ablation/alternatives table.

    ``models``: {name: (members, config, extra)}; ``graphs_exp``/``y_exp``/``split_exp``: every EXP
    row (train, val, test); ``fere_mask_test``/``formulas_test``: for the EXP test rows;
    ``dft``: {level: {formula: DFT value}} for the FERE levels; ``exp_fere_all``: {formula: EXP} for
    FERE; ``default_levels_pred``: the default checkpoint's per-level predictions on the EXP test
    rows (for the Δ-learning row); ``extra_structure_only``: {name: (abs errors on every EXP test row or
    None, abs errors on the FERE test rows, note)} for structure-only methods evaluated elsewhere.
    Every structure-only row also gets its paired difference vs r2SCAN DFT on the FERE test rows."""
    from qadb.models.validator.train import predict_ensemble

    te = split_exp == "test"
    fit = ~te
    errs: dict[str, np.ndarray] = {}
    notes: dict[str, str] = {}
    for name in [n for n in ABLATION_ORDER if n in models] + [n for n in models if n not in ABLATION_ORDER]:
        members, cfg, extra = models[name]
        levels = list(cfg["levels"])
        mus, sigs = predict_ensemble(members, graphs_exp)
        e, _ = U.aggregate(mus[:, :, -1], sigs[:, :, -1])
        errs[name] = np.abs(e[te] - y_exp[te])
        notes[name] = " → ".join(levels)
        if name == "low_only":
            f_low = e
            lc = LinearCorrection().fit(f_low[fit], y_exp[fit])
            errs["linear_correction(low-only)"] = np.abs(lc.predict(f_low[te]) - y_exp[te])
            notes["linear_correction(low-only)"] = f"EXP ≈ {lc.a:.3f}·E_PBE+U + {lc.b:.3f}"
            X = composition_features(graphs_exp)
            ck = CoKriging().fit(f_low[fit], X[fit], y_exp[fit])
            errs["cokriging_AR1(low-only)"] = np.abs(ck.predict(f_low[te], X[te]) - y_exp[te])
            notes["cokriging_AR1(low-only)"] = f"rho {ck.rho:.3f}, GP lengthscale {np.sqrt(ck.l2):.2f} on element fractions"
            Fz = pooled_features(members[0], graphs_exp)
            A = np.concatenate([Fz, np.ones((len(Fz), 1))], 1)
            lam = 1e-2 * np.trace(A[fit].T @ A[fit]) / A.shape[1]
            w = np.linalg.solve(A[fit].T @ A[fit] + lam * np.eye(A.shape[1]), A[fit].T @ (y_exp[fit] - f_low[fit]))
            errs["transfer(low-only trunk, ridge head)"] = np.abs(f_low[te] + A[te] @ w - y_exp[te])
            notes["transfer(low-only trunk, ridge head)"] = "frozen low-only trunk; ridge readout of EXP − E_PBE+U"
    fere_errs = {name: e[fere_mask_test] for name, e in errs.items()}
    for name, (e_all, e_fere, note) in (extra_structure_only or {}).items():
        if e_all is not None:
            errs[name] = np.asarray(e_all, float)
            e_fere = errs[name][fere_mask_test]
        fere_errs[name] = np.asarray(e_fere, float)
        notes[name] = note
    rows = {}
    for name in fere_errs:
        e = errs.get(name)
        row = {"mae_exp_test": U.bootstrap_ci(_mae, e, seed=seed) if e is not None else None,
               "mae_fere_test": U.bootstrap_ci(_mae, fere_errs[name], seed=seed) if len(fere_errs[name]) else None,
               "note": notes.get(name, ""), "structure_only": True}
        if "full" in errs and name != "full" and e is not None:
            row["delta_vs_full_exp_test"] = U.bootstrap_ci(lambda a, b: float(np.mean(a - b)), e, errs["full"], seed=seed)
        rows[name] = row
    # DFT-input methods on FERE test compounds
    ft = [f for f, m in zip(formulas_test, fere_mask_test) if m]
    tr_f = [f for f in exp_fere_all if D.split_of(f) != "test" and f in dft.get("r2SCAN", {})]
    y_ft = np.array([exp_fere_all[f] for f in ft])
    if ft and "r2SCAN" in dft:
        r2 = dft["r2SCAN"]
        x_tr, y_tr = np.array([r2[f] for f in tr_f]), np.array([exp_fere_all[f] for f in tr_f])
        x_te = np.array([r2[f] for f in ft])
        dft_errs = {"r2SCAN DFT itself": np.abs(x_te - y_ft)}
        for lv in ("SCAN", "PBE+U/FERE"):
            if lv in dft:
                dft_errs[f"{lv} DFT itself"] = np.abs(np.array([dft[lv][f] for f in ft]) - y_ft)
        lc = LinearCorrection().fit(x_tr, y_tr)
        dft_errs["linear_correction(r2SCAN DFT)"] = np.abs(lc.predict(x_te) - y_ft)
        from pymatgen.core import Composition

        def comp(fs):
            X = np.zeros((len(fs), 101))
            for i, f in enumerate(fs):
                c = Composition(f).fractional_composition
                for el, x in c.items():
                    X[i, el.Z] = x
            return X

        ck = CoKriging().fit(x_tr, comp(tr_f), y_tr)
        dft_errs["cokriging_AR1(r2SCAN DFT)"] = np.abs(ck.predict(x_te, comp(ft)) - y_ft)
        if default_levels_pred and "r2SCAN" in default_levels_pred and "EXP" in default_levels_pred:
            d = np.asarray(default_levels_pred["EXP"]) - np.asarray(default_levels_pred["r2SCAN"])
            dft_errs["r2SCAN DFT + MF-ENNP Δ(EXP−r2SCAN)"] = np.abs(x_te + d[fere_mask_test] - y_ft)
        base = dft_errs["r2SCAN DFT itself"]
        for name in [n for n, r in rows.items() if r["structure_only"]]:
            if len(fere_errs[name]) == len(base):
                rows[name]["delta_vs_r2scan_fere"] = U.bootstrap_ci(
                    lambda a, b: float(np.mean(a - b)), fere_errs[name], base, seed=seed)
        for name, e in dft_errs.items():
            rows[name] = {"mae_exp_test": None, "mae_fere_test": U.bootstrap_ci(_mae, e, seed=seed),
                          "note": "needs a DFT calculation per compound", "structure_only": False}
            if "r2SCAN DFT itself" in dft_errs and name != "r2SCAN DFT itself":
                rows[name]["delta_vs_r2scan_fere"] = U.bootstrap_ci(
                    lambda a, b: float(np.mean(a - b)), e, dft_errs["r2SCAN DFT itself"], seed=seed)
    return rows


def format_table(rows: dict) -> str:
    f = lambda t: "—" if t is None else f"{t[0]:.3f} ({t[1]:.3f}–{t[2]:.3f})"  # noqa: E731
    lines = ["| method | input | EXP test MAE (95% CI) | FERE test MAE (95% CI) | Δ vs full, EXP test (95% CI) | Δ vs r2SCAN DFT, FERE (95% CI) |",
             "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {'structure' if r['structure_only'] else 'structure + DFT'} | {f(r['mae_exp_test'])} | "
                     f"{f(r['mae_fere_test'])} | {f(r.get('delta_vs_full_exp_test'))} | {f(r.get('delta_vs_r2scan_fere'))} |")
    return "\n".join(lines)


def main(argv=None):
    """CPU path: train every hierarchy with the same small budget, then print the table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=300.0, help="seconds per hierarchy")
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--out", default="validator_ablation.pt")
    a = ap.parse_args(argv)
    import torch

    from qadb.models.validator import api as A
    from qadb.models.validator.train import _plain

    t0 = time.time()
    records = D.staged_formation_records()
    graphs, gindex = D.featurize_records(records, cache=a.cache)
    items = D.to_arrays(records, gindex, A.ALL_LEVELS)
    payload = {}
    for name in ABLATION_ORDER:
        over = {"trunk_from_root": True} if name == "full_trunk_root" else {}
        hier = "full" if name == "full_trunk_root" else name
        res = A.fit_arrays(graphs, items, hierarchy=hier, n_members=a.members, steps=10 ** 7, time_budget_s=a.budget,
                           model_overrides=over, verbose=False)
        res["data_hash"] = D.data_hash(items)
        m = res["members"][0]
        payload[name] = {"config": _plain(res["config"]), "members": [m.state_dict()],
                         "extra": _plain(A.checkpoint_extra(res, hier))}
        print(f"{name}: {json.dumps({k: round(v, 4) for k, v in res['metrics'].items() if isinstance(v, float)})} "
              f"({time.time() - t0:.0f}s)", flush=True)
    torch.save(payload, a.out)
    print(f"wrote {a.out}; run bench/validator.py --ablation {a.out} for the table")


if __name__ == "__main__":
    main()
