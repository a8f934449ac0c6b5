"""Fidelity-hierarchy ablation and alternative multi-fidelity strategies on one split.

``python -m qadb.models.validator.ablation [--members 3] [--steps 600] [--cache DIR]``

Trains one ensemble per hierarchy (full, skip_metagga, direct, low_only) with identical settings,
then fits the linear-correction and co-kriging alternatives on top of the low-only ensemble's PBE+U
predictions, and the DFT-input linear correction (r2SCAN value -> experiment) on FERE. Reports the
held-out EXP MAE with bootstrap 95 % CIs; appends one JSON line to train_logs/validator_ablation.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from qadb.models.validator import data as D
from qadb.models.validator import uncertainty as U
from qadb.models.validator.api import REPO_ROOT, hierarchy_levels, train_validator
from qadb.models.validator.baselines import CoKriging, LinearCorrection, composition_features


def _mae(e):
    return float(np.mean(e))


def run(members: int = 3, steps: int = 600, seed: int = 0, cache=None, hierarchies=None, log_path=None) -> dict:
    from qadb.models.validator.train import predict_ensemble

    t0 = time.time()
    records = D.staged_formation_records()
    graphs, gindex = D.featurize_records(records, cache=cache)
    items = D.to_arrays(records, gindex, list(D.LEVEL_FIDELITY))
    exp_li = list(D.LEVEL_FIDELITY).index("EXP")
    rows = {sp: np.where((items["level"] == exp_li) & (items["split"] == sp))[0] for sp in ("train", "val", "test")}
    test_keys = items["key"][rows["test"]]
    fere_mask = np.array([s == "fere_exp" for s in items["source"][rows["test"]]])
    out: dict = {"methods": {}, "n_exp_test": int(len(test_keys)), "n_fere_test": int(fere_mask.sum())}
    errs: dict[str, np.ndarray] = {}
    low_members = None
    for h in hierarchies or ["full", "skip_metagga", "direct", "low_only"]:
        r = train_validator(records, hierarchy=h, n_members=members, steps=steps, seed=seed, cache=cache,
                            log=REPO_ROOT / "train_logs" / "validator.jsonl", verbose=False, run_name=f"ablation_{h}")
        assert r["extra"]["exp_test_keys"] == test_keys.tolist()
        errs[h] = np.asarray(r["extra"]["exp_test_abs_err"])
        out["methods"][h] = {"levels": r["levels"], "ece": r["metrics"].get("ece"),
                             "divergence_r2_abs": r["metrics"].get("divergence_r2_abs")}
        if h == "low_only":
            low_members = r["members"]
        print(f"{h}: EXP test MAE {errs[h].mean():.3f} ({time.time() - t0:.0f}s)", flush=True)
    if low_members is not None:
        allrows = np.concatenate([rows["train"], rows["val"], rows["test"]])
        sub = [graphs[i] for i in items["graph"][allrows]]
        mus, sigs = predict_ensemble(low_members, sub)
        f_low, _ = U.aggregate(mus[:, :, 0], sigs[:, :, 0])
        X = composition_features(sub)
        ntr = len(rows["train"]) + len(rows["val"])  # fit on train+val (no hyper-parameter selection on test)
        y = items["y"][allrows]
        lc = LinearCorrection().fit(f_low[:ntr], y[:ntr])
        errs["linear_correction(low-only model)"] = np.abs(lc.predict(f_low[ntr:]) - y[ntr:])
        ck = CoKriging().fit(f_low[:ntr], X[:ntr], y[:ntr])
        errs["cokriging_AR1(low-only model)"] = np.abs(ck.predict(f_low[ntr:], X[ntr:]) - y[ntr:])
        out["methods"]["cokriging_AR1(low-only model)"] = {"rho": float(ck.rho), "lengthscale": float(np.sqrt(ck.l2))}
        out["methods"]["linear_correction(low-only model)"] = {"a": float(lc.a), "b": float(lc.b)}
    # DFT-input baselines on FERE test compounds (these need a DFT calculation per compound)
    fere_test = [f for f, m in zip(items["formula"][rows["test"]], fere_mask) if m]
    exp_by_f = {r["formula"]: r["value"] for r in records if r["level"] == "EXP" and r["source"] == "fere_exp"}
    r2 = {r["formula"]: r["value"] for r in records if r["level"] == "r2SCAN"}
    tr_f = [r["formula"] for r in records if r["level"] == "EXP" and r["source"] == "fere_exp" and D.split_of(r["formula"]) != "test"]
    lc_dft = LinearCorrection().fit([r2[f] for f in tr_f], [exp_by_f[f] for f in tr_f])
    dft_errs = {
        "r2SCAN DFT itself": np.array([abs(r2[f] - exp_by_f[f]) for f in fere_test]),
        "linear_correction(r2SCAN DFT input)": np.abs(lc_dft.predict([r2[f] for f in fere_test]) - np.array([exp_by_f[f] for f in fere_test])),
    }
    table = {}
    for name, e in errs.items():
        row = {"mae_exp_test": U.bootstrap_ci(_mae, e, seed=seed), "mae_fere_test": U.bootstrap_ci(_mae, e[fere_mask], seed=seed)}
        if "full" in errs and name != "full":
            row["delta_vs_full_exp_test"] = U.bootstrap_ci(lambda a, b: float(np.mean(a - b)), e, errs["full"], seed=seed)
        table[name] = row
    for name, e in dft_errs.items():
        table[name] = {"mae_exp_test": None, "mae_fere_test": U.bootstrap_ci(_mae, e, seed=seed)}
    out["table"] = table
    out["members"], out["steps"], out["seed"], out["seconds"] = members, steps, seed, time.time() - t0
    log_path = log_path or REPO_ROOT / "train_logs" / "validator_ablation.jsonl"
    with open(log_path, "a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **out}) + "\n")
    return out


def format_table(out: dict) -> str:
    lines = ["| method | EXP test MAE (95% CI) | FERE test MAE (95% CI) | Δ vs full (95% CI) |", "|---|---|---|---|"]
    f = lambda t: "—" if t is None else f"{t[0]:.3f} ({t[1]:.3f}–{t[2]:.3f})"  # noqa: E731
    for name, row in out["table"].items():
        lines.append(f"| {name} | {f(row['mae_exp_test'])} | {f(row['mae_fere_test'])} | {f(row.get('delta_vs_full_exp_test'))} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--hierarchies", default=None)
    a = ap.parse_args(argv)
    out = run(a.members, a.steps, a.seed, a.cache, a.hierarchies.split(",") if a.hierarchies else None)
    print(f"n EXP test = {out['n_exp_test']}, n FERE test = {out['n_fere_test']}")
    print(format_table(out))


if __name__ == "__main__":
    main()
