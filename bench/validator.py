"""Benchmark of the MF-ENNP validator and the Φ_Q proxy on the held-out split of the staged data.

    python bench/validator.py [--quick] [--out FILE] [--checkpoint PT] [--proxy-checkpoint PT]
                              [--ablation PT] [--cache DIR] [--mlip N] [--mlip-member chgnet|NPZ|none]

Prints a markdown table and writes JSON (default bench/results/validator.json):
{"area": "validator", "quick", "env", "metrics": {name: {"value", "unit", "target", "direction"}}},
plus the ablation/alternatives table (with bootstrap 95 % CIs) under "ablation".

Held-out split = formulas hashed to "test" (qadb.models.validator.data.split_of), shared by every
level; the committed checkpoints never saw these formulas. The MF-ENNP takes NO DFT energy as
input: it predicts every level (and experiment) from the structure alone. Rows marked
"structure + DFT" in the ablation table do take the r2SCAN DFT energy as input (Δ-learning); the
DFT functionals' own errors on the same FERE test compounds are listed for a like-with-like
comparison. The MLIP member (`qadb.models.validator.mlip_member`, ``predict(..., mlip_member="chgnet")``)
is structure-only too: bundled CHGNet energies of the given structure + the MF-ENNP PBE+U head,
co-kriged to experiment; it was fitted on EXP train+val rows only (artifact
qadb/data/checkpoints/validator_mlip_chgnet.npz), and its rows here are its only test evaluation, next
to the pure "MLIP energy + chemical potentials fitted to EXP" baselines. --quick subsamples the MP
(PBE+U) test rows and the proxy test rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
warnings.filterwarnings("ignore")


def _throughput(structs, checkpoint, proxy_checkpoint, threads):
    import torch

    from qadb.models.validator.api import predict

    torch.set_num_threads(threads)
    predict(structs[:16], checkpoint=checkpoint, proxy_checkpoint=proxy_checkpoint)  # warm-up
    t = time.perf_counter()
    predict(structs, checkpoint=checkpoint, proxy_checkpoint=proxy_checkpoint)
    return len(structs) / (time.perf_counter() - t)


MLIPS = [("chgnet-0.3.0", None, "PBE+U/FERE"), ("chgnet-r2scan", None, "r2SCAN"),
         ("sevennet-mf-0", "PBE", "PBE+U/FERE"), ("sevennet-mf-0", "R2SCAN", "r2SCAN")]


def _fit_mu(X, e, y, lam=1e-3):
    """Per-element chemical potentials: y ≈ e - X @ mu (ridge), X = element fractions."""
    A = X.T @ X + lam * np.eye(X.shape[1])
    return np.linalg.solve(A, X.T @ (e - y))


def mlip_baselines(all_recs, n_mp_test: int, n_mp_train: int, seed: int, validator_ckpt) -> dict:
    """Bundled MLIPs as formation-energy baselines: MLIP energy per atom minus fitted per-element
    chemical potentials (ridge on the training rows; no relaxation, structures as stored).

    FERE (all 251 compounds, r2SCAN-relaxed structures): μ fitted on FERE train+val to the matching DFT
    level (PBE heads -> PBE+U Moore, r2SCAN heads -> r2SCAN) and to experiment; MAE on the 47 FERE test
    compounds. MLIP-PBE vs MLIP-r2SCAN divergence (D_sgn = E_PBE-MLIP - E_r2SCAN-MLIP) vs the actual
    PBE+U - EXP gap. MP: PBE heads with μ fitted on ``n_mp_train`` MP train rows, MAE on ``n_mp_test``
    MP test rows (random subsample: MLIPs are slow on this CPU), next to MF-ENNP on the same rows."""
    from qadb.drivers.mlip import load_mlip
    from qadb.models.validator import data as D
    from qadb.models.validator import uncertainty as U
    from qadb.models.validator.api import predict
    from qadb.models.validator.featurize import structure_from_any

    def comp(recs):
        X = np.zeros((len(recs), 101))
        for i, r in enumerate(recs):
            for el, x in structure_from_any(r["structure"]).composition.fractional_composition.items():
                X[i, el.Z] = x
        return X

    t0 = time.time()
    fere = [r for r in all_recs if r["level"] == "EXP" and r["source"] == "fere_exp"]
    fs = [structure_from_any(r["structure"]) for r in fere]
    Xf = comp(fere)
    te = np.array([D.split_of(r["formula"]) == "test" for r in fere])
    y_exp = np.array([r["value"] for r in fere])
    dft = {lv: {r["formula"]: r["value"] for r in all_recs if r["level"] == lv} for lv in ("PBE+U/FERE", "r2SCAN")}
    unseen = sorted({el for i in np.where(te)[0] for el in np.where(Xf[i] > 0)[0] if Xf[~te][:, el].sum() == 0})
    res: dict = {"n_fere_test": int(te.sum()), "n_fere_fit": int((~te).sum()), "fere_test_elements_unseen_in_fit": unseen,
                 "models": {}}
    form = {}
    for name, head, target in MLIPS:
        m = load_mlip(name, head=head)
        t1 = time.time()
        e = m.energies_per_atom(fs)
        print(f"{m.fidelity}: {len(fs)} FERE structures in {time.time() - t1:.0f}s", file=sys.stderr, flush=True)
        y_t = np.array([dft[target][r["formula"]] for r in fere])
        f_t = e - Xf @ _fit_mu(Xf[~te], e[~te], y_t[~te])
        f_x = e - Xf @ _fit_mu(Xf[~te], e[~te], y_exp[~te])
        form[m.fidelity] = f_t
        res["models"][m.fidelity] = {
            "target_level": target,
            f"mae_vs_{D.level_slug(target)}_dft_fere_test": float(np.mean(np.abs(f_t[te] - y_t[te]))),
            "mae_vs_exp_fere_test_mu_fit_to_exp": float(np.mean(np.abs(f_x[te] - y_exp[te]))),
            "mae_vs_exp_fere_test_mu_fit_to_dft": float(np.mean(np.abs(f_t[te] - y_exp[te])))}
    actual = np.array([dft["PBE+U/FERE"][r["formula"]] for r in fere]) - y_exp
    for pbe, r2 in (("MLIP:CHGNet@0.3.0", "MLIP:CHGNet-r2SCAN"), ("MLIP:SevenNet-MF-0-PBE", "MLIP:SevenNet-MF-0-r2SCAN")):
        k2 = next((k for k in form if k.startswith(r2)), None)
        k1 = next((k for k in form if k.startswith(pbe)), None)
        if k1 and k2:
            d = form[k1] - form[k2]
            res["models"][k1][f"divergence_vs_{k2}"] = {
                "r2_abs": U.pearson_r2(np.abs(d[te]), np.abs(actual[te])), "r2_sgn": U.pearson_r2(d[te], actual[te])}
    # MP PBE+U labels: PBE heads, μ fitted on a random subsample of MP train rows
    rng = np.random.default_rng(seed)
    mp = [r for r in all_recs if r["level"] == D.ROOT_LEVEL and str(r["source"]).startswith("mp20")]
    tr = [mp[i] for i in rng.permutation([i for i, r in enumerate(mp) if D.split_of(r["formula"]) == "train"])[:n_mp_train]]
    ts = [mp[i] for i in rng.permutation([i for i, r in enumerate(mp) if D.split_of(r["formula"]) == "test"])[:n_mp_test]]
    s_tr, s_ts = [structure_from_any(r["structure"]) for r in tr], [structure_from_any(r["structure"]) for r in ts]
    X_tr, X_ts = comp(tr), comp(ts)
    y_tr, y_ts = np.array([r["value"] for r in tr]), np.array([r["value"] for r in ts])
    res["mp"] = {"n_test": len(ts), "n_fit": len(tr),
                 "mfennp_mae_pbe_u": float(np.mean(np.abs(predict(s_ts, checkpoint=validator_ckpt, proxy_checkpoint=False)
                                                          ["energies"][D.ROOT_LEVEL] - y_ts)))}
    for name, head, target in MLIPS:
        if target != "PBE+U/FERE":
            continue
        m = load_mlip(name, head=head)
        t1 = time.time()
        e_tr, e_ts = m.energies_per_atom(s_tr), m.energies_per_atom(s_ts)
        print(f"{m.fidelity}: {len(s_tr) + len(s_ts)} MP structures in {time.time() - t1:.0f}s", file=sys.stderr, flush=True)
        f = e_ts - X_ts @ _fit_mu(X_tr, e_tr, y_tr)
        res["mp"][m.fidelity] = float(np.mean(np.abs(f - y_ts)))
    res["seconds"] = time.time() - t0
    return res


MLIP_MEMBER_METHOD = "MLIP member: cokriging_AR1(CHGNet-PBE, CHGNet-r2SCAN, MF-ENNP PBE+U head)"


def mlip_member_rows(ref, validator_ckpt, structs_te, y_te, fere_t, X_te, lv_pred):
    """Structure-only rows for the ablation table from the fitted MLIP member (its only test evaluation)
    and the pure "MLIP energy + per-element chemical potentials" baselines, μ refitted here on the
    member's stored train+val arrays (never on test). Returns ({name: (errs all EXP test | None, errs
    FERE test | None, note)}, info)."""
    from qadb.models.validator import mlip_member as MM
    from qadb.models.validator import uncertainty as U
    from qadb.models.validator.baselines import CoKriging

    mm = MM.load_member(ref)
    MM.check_validator(mm, validator_ckpt)
    t = time.time()
    E_te = mm.energies(structs_te)
    secs = time.time() - t
    A = mm.arrays
    E_fit, X_fit, y_fit, fere_fit, used = A["e_mlip"], A["X"], A["y"], A["fere"], A["used"]
    pred, sd_raw = mm.predict(E_te, X_te, lv_pred, raw_std=True)
    sd = mm.sigma_scale * sd_raw
    k = len(mm.mlip_keys)
    d = mm.meta["design"]
    short = {"MLIP:CHGNet@0.3.0": "CHGNet-PBE", "MLIP:CHGNet-r2SCAN@0.4.2": "CHGNet-r2SCAN"}
    cols = ", ".join([short.get(f, f) for f in mm.fidelities] + [f"MF-ENNP {f} head" for f in d["features"]])
    name = f"MLIP member: cokriging_AR1({cols})"
    rows: dict = {}
    info = {"method": name, "design": d, "gp": mm.meta["gp"], "mu": mm.meta["mu"], "rows": mm.meta["rows"],
            "selection": mm.meta["selection"], "mlip_fidelities": mm.fidelities, "artifact": str(ref),
            "mlip_seconds_exp_test": round(secs, 1), "n_exp_test": int(len(y_te)),
            "ece_exp_test": U.ece(y_te, pred, sd), "ece_fere_test": U.ece(y_te[fere_t], pred[fere_t], sd[fere_t]),
            "ece_raw_exp_test": U.ece(y_te, pred, sd_raw), "sigma_scale": mm.sigma_scale,
            "mean_sigma_exp_test": float(np.mean(sd))}
    base_pbe = None
    for j, fid in enumerate(mm.fidelities):
        nm = short.get(fid, fid)
        mu = MM.fit_mu(X_fit[fere_fit], E_fit[fere_fit, j], y_fit[fere_fit])
        e = np.abs(E_te[:, j] - X_te @ mu - y_te)
        rows[f"{fid} + μ fitted to EXP (FERE fit, {int(fere_fit.sum())})"] = (
            None, e[fere_t], f"{nm} single-point energy − per-element μ (ridge) fitted to EXP on the FERE fit compounds")
        if j == 0:
            base_pbe = f"{fid} + μ fitted to EXP (FERE fit, {int(fere_fit.sum())})"
        mu = MM.fit_mu(X_fit, E_fit[:, j], y_fit)
        rows[f"{fid} + μ fitted to EXP (all EXP fit, {len(y_fit)})"] = (
            np.abs(E_te[:, j] - X_te @ mu - y_te), None, f"{nm} energy − μ fitted to EXP on every EXP train+val row")
    f_low = mm.f_low(E_te, X_te)
    for j, fid in enumerate(mm.fidelities):
        rows[f"{fid} + μ fitted to MP PBE+U (member input alone)"] = (
            np.abs(f_low[:, j] - y_te), None, "the low-fidelity member's formation energy, no correction to EXP")
    if d["features"]:
        lin = MM.LINEAR_RATIOS if d["linear"] else None
        ck = CoKriging().fit(A["F"][used][:, :k], X_fit[used], y_fit[used], linear=lin)
        rows[name.replace("MLIP member: ", "ablation, no MF-ENNP column: ").replace(
            ", " + ", ".join(f"MF-ENNP {f} head" for f in d["features"]), "")] = (
            np.abs(ck.predict(f_low, X_te) - y_te), None, "the selected design without the MF-ENNP mean column")
    # paired differences of the member vs the pure CHGNet + μ→EXP baseline and vs its own no-MF-ENNP ablation
    err = np.abs(pred - y_te)
    paired = lambda a, b: float(np.mean(a - b))  # noqa: E731
    info["delta_vs_baseline_pbe_mu_exp_fere"] = U.bootstrap_ci(paired, err[fere_t], rows[base_pbe][1])
    for nm, r in rows.items():
        if nm.startswith("ablation, no MF-ENNP"):
            info["delta_vs_no_mfennp_column_exp_test"] = U.bootstrap_ci(paired, err, r[0])
            info["delta_vs_no_mfennp_column_fere"] = U.bootstrap_ci(paired, err[fere_t], r[0][fere_t])
    rows[name] = (err, None, f"selected on EXP val ({mm.meta['selection']['criterion']}); "
                  f"rho {np.round(mm.meta['gp']['rho'], 3).tolist()}, GP lengthscale {mm.meta['gp']['lengthscale']:.2f}")
    info["baseline_pbe_mu_exp_fere"] = base_pbe
    return rows, info


def _mlip_member_throughput(structs, checkpoint, ref) -> dict:
    """predict() with the MLIP member (featurise + MF-ENNP + CHGNet models + GP), 1 torch thread."""
    import torch

    from qadb.models.validator.api import predict

    torch.set_num_threads(1)
    predict(structs[:8], checkpoint=checkpoint, proxy_checkpoint=False, mlip_member=ref)  # loads the MLIPs
    t = time.perf_counter()
    predict(structs, checkpoint=checkpoint, proxy_checkpoint=False, mlip_member=ref)
    dt = time.perf_counter() - t
    return {"per_s": len(structs) / dt, "n": len(structs), "seconds": round(dt, 2), "threads": 1}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "validator.json"))
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--proxy-checkpoint", default=None)
    ap.add_argument("--ablation", default=None, help="validator_ablation.pt (default: the committed one, if any)")
    ap.add_argument("--gpu-json", default=str(REPO / "bench" / "results" / "validator_gpu.json"),
                    help="GPU throughput recorded by gpu_run on the GPU machine")
    ap.add_argument("--cache", default=None, help="graph cache folder (speeds up featurisation)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mlip", type=int, default=0,
                    help="compute the MLIP baselines here on N MP test rows (+2N fit rows) and all FERE rows (slow)")
    ap.add_argument("--mlip-only", action="store_true", help="only the MLIP baselines, written to --out")
    ap.add_argument("--mlip-member", default="chgnet",
                    help="MLIP member to evaluate on the test rows (name or .npz artifact; 'none' to skip)")
    ap.add_argument("--mlip-json", default=str(REPO / "bench" / "results" / "validator_mlip.json"),
                    help="MLIP baselines computed earlier with --mlip-only (included when present)")
    a = ap.parse_args(argv)
    if a.mlip_only:
        from qadb.models.validator import data as D
        from qadb.models.validator.api import DEFAULT_CHECKPOINT

        res = mlip_baselines(D.staged_formation_records(), a.mlip or 100, 2 * (a.mlip or 100), a.seed,
                             Path(a.checkpoint) if a.checkpoint else DEFAULT_CHECKPOINT)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"mlip_baselines": res, "command": " ".join(sys.argv)}, indent=1, default=float))
        print(json.dumps(res, indent=1, default=float))
        return
    t0 = time.time()
    import torch

    from qadb import fidelity
    from qadb.models.proxy import api as P
    from qadb.models.validator import ablation as AB
    from qadb.models.validator import data as D
    from qadb.models.validator.api import ALL_LEVELS, DEFAULT_CHECKPOINT, evaluate, load_validator
    from qadb.models.validator.featurize import structure_from_any

    torch.set_num_threads(1)
    rng = np.random.default_rng(a.seed)
    ckpt = Path(a.checkpoint) if a.checkpoint else DEFAULT_CHECKPOINT
    pckpt = Path(a.proxy_checkpoint) if a.proxy_checkpoint else P.DEFAULT_CHECKPOINT
    abl = Path(a.ablation) if a.ablation else ckpt.with_name("validator_ablation.pt")
    members, cfg, extra = load_validator(ckpt)
    levels = list(cfg["levels"])
    all_recs = D.staged_formation_records()
    recs = [r for r in all_recs if D.split_of(r["formula"]) == "test"]
    exp_keys = {r["key"] for r in recs if r["level"] == "EXP"}
    root = [r for r in recs if r["level"] == D.ROOT_LEVEL]
    n_root = 300 if a.quick else len(root)
    keep_root = [r for r in root if r["key"] in exp_keys]
    rest = [r for r in root if r["key"] not in exp_keys]
    pick = rng.choice(len(rest), size=min(len(rest), max(0, n_root - len(keep_root))), replace=False)
    recs = [r for r in recs if r["level"] != D.ROOT_LEVEL] + keep_root + [rest[i] for i in sorted(pick)]
    graphs, gindex = D.featurize_records(recs, cache=a.cache, cutoff=cfg["cutoff"], max_neighbors=cfg["max_neighbors"])
    items = D.to_arrays(recs, gindex, ALL_LEVELS)
    scale = float(extra.get("calibration", {}).get("sigma_scale", 1.0))
    ev = evaluate(members, graphs, items, levels, sigma_scale=scale)
    m, x = ev["metrics"], ev["extra"]
    png = Path(a.out).with_name(Path(a.out).stem + "_reliability.png")
    if "exp_test_y" in x:
        from qadb.models.validator.uncertainty import reliability_plot

        png.parent.mkdir(parents=True, exist_ok=True)
        reliability_plot(x["exp_test_y"], x["exp_test_mu"], x["exp_test_sigma_raw"], png,
                         label=f"EXP test (n={len(x['exp_test_y'])})", sigma_scale=scale)
    M: dict[str, dict] = {}

    def put(name, value, unit, target=None, direction="min", **more):
        """One metric {"value", "unit", "target", "direction"} (direction "min" or "max") + extra keys."""
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            return
        direction = {"lower": "min", "higher": "max"}.get(direction, direction)
        if direction not in ("min", "max"):
            raise ValueError(f"metric direction must be 'min' or 'max', got {direction!r}")
        M[name] = {"value": float(value), "unit": unit, "target": None if target is None else float(target),
                   "direction": direction, **more}

    for lv in D.LEVEL_FIDELITY:
        k = f"mae_{D.level_slug(lv)}_ev_per_atom"
        put(k, m.get(k), "eV/atom", 0.1 if lv == D.ROOT_LEVEL else None)
    put("mae_pbe_u_mp20_ev_per_atom", m.get("mae_pbe_u_mp20_ev_per_atom"), "eV/atom", 0.1)
    r2_dft = m.get("dft_r2scan_vs_exp_mae_fere_test_ev_per_atom")
    put("mae_exp_fere_ev_per_atom", m.get("mae_exp_fere_ev_per_atom"), "eV/atom", r2_dft, "min")
    for lv in ("r2scan", "scan", "r2scan_u", "scan_u", "pbe_u_fere"):
        put(f"dft_{lv}_vs_exp_mae_fere_test_ev_per_atom", m.get(f"dft_{lv}_vs_exp_mae_fere_test_ev_per_atom"), "eV/atom")
    put("ece", m.get("ece"), "fraction", 0.05, "min")
    put("ece_raw", m.get("ece_raw"), "fraction", 0.05, "min")
    for suf in ("", "_mp"):
        for k in ("divergence_r2_abs", "divergence_r2_rel", "divergence_r2_sgn", "divergence_r2"):
            put(k + suf, m.get(k + suf), "R^2", 0.8 if k == "divergence_r2" and not suf else None, "max")
    # ablation / alternatives (bootstrap 95 % CIs) on every EXP row's structure
    # (the hierarchy ablation needs validator_ablation.pt; without it the table still has the default
    # checkpoint, the MLIP rows and the DFT rows)
    ab_rows, mm_extra, mm_info = {}, None, {}
    if "exp_test_keys" in x:
        exp_all = [r for r in all_recs if r["level"] == "EXP"]
        g_u, g_i = D.featurize_records(exp_all, cache=a.cache, cutoff=cfg["cutoff"], max_neighbors=cfg["max_neighbors"])
        g_exp = [g_u[g_i[r["key"]]] for r in exp_all]
        split_exp = np.array([D.split_of(r["formula"]) for r in exp_all])
        y_exp = np.array([r["value"] for r in exp_all])
        te = split_exp == "test"
        fere_t = np.array([r["source"] == "fere_exp" for r in exp_all])[te]
        form_t = np.array([r["formula"] for r in exp_all])[te]
        dft = {lv: {r["formula"]: r["value"] for r in all_recs if r["level"] == lv} for lv in ("r2SCAN", "SCAN", "PBE+U/FERE")}
        exp_fere = {r["formula"]: r["value"] for r in exp_all if r["source"] == "fere_exp"}
        # the default checkpoint's per-level predictions in the same row order
        order = {k: i for i, k in enumerate(x["exp_test_keys"])}
        keys_t = [r["key"] for r in exp_all if D.split_of(r["formula"]) == "test"]
        lv_pred = {l: np.asarray(v)[[order[k] for k in keys_t]] for l, v in x["exp_test_levels"].items()}
        models = AB.load_ablation(abl) if abl.exists() else {}
        models["default checkpoint (full, 300 s)"] = (members, cfg, extra)
        if a.mlip_member != "none":
            try:
                from qadb.models.validator.baselines import composition_features

                s_te = [structure_from_any(r["structure"]) for r, t in zip(exp_all, te) if t]
                mm_extra, mm_info = mlip_member_rows(a.mlip_member, ckpt, s_te, y_exp[te], fere_t,
                                                     composition_features([g for g, t in zip(g_exp, te) if t]), lv_pred)
            except Exception as exc:  # noqa: BLE001 - chgnet missing, artifact missing or stale: say so, go on
                mm_info = {"skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
                print(f"MLIP member skipped: {mm_info['skipped']}", file=sys.stderr)
        ab_rows = AB.ablation_rows(models, g_exp, y_exp, split_exp, fere_t, form_t, dft, exp_fere, lv_pred, seed=a.seed,
                                   extra_structure_only=mm_extra)
        put("ablation_full_mae_exp_ev_per_atom", ab_rows.get("full", {}).get("mae_exp_test", [None])[0], "eV/atom")
        for kind, flag in (("structure_only", True), ("dft_input", False)):
            best = min(((r["mae_fere_test"][0], n) for n, r in ab_rows.items()
                        if r["mae_fere_test"] and r["structure_only"] == flag and "itself" not in n), default=None)
            if best:
                put(f"best_{kind}_mae_exp_fere_ev_per_atom", best[0], "eV/atom", r2_dft, "min", method=best[1],
                    ci95=list(ab_rows[best[1]]["mae_fere_test"][1:]), input="structure" if flag else "structure + DFT")
        mm_name = mm_info.get("method")
        if mm_name in ab_rows:
            r, mmx = ab_rows[mm_name], mm_info
            put("mae_exp_fere_mlip_member_ev_per_atom", r["mae_fere_test"][0], "eV/atom", r2_dft, "min", method=mm_name,
                ci95=list(r["mae_fere_test"][1:]), input="structure")
            if r.get("delta_vs_r2scan_fere"):
                d = r["delta_vs_r2scan_fere"]
                put("delta_mlip_member_vs_r2scan_dft_mae_fere_ev_per_atom", d[0], "eV/atom", 0.0, "min", ci95=list(d[1:]))
            if r.get("mae_exp_test"):
                put("mae_exp_mlip_member_ev_per_atom", r["mae_exp_test"][0], "eV/atom", None, "min",
                    ci95=list(r["mae_exp_test"][1:]))
            dd = mmx.get("delta_vs_baseline_pbe_mu_exp_fere")
            if dd:
                put("delta_mlip_member_vs_chgnet_mu_exp_mae_fere_ev_per_atom", dd[0], "eV/atom", 0.0, "min",
                    ci95=list(dd[1:]), baseline=mmx.get("baseline_pbe_mu_exp_fere"))
            put("ece_mlip_member", mmx.get("ece_exp_test"), "fraction", 0.05, "min", sigma_scale=mmx.get("sigma_scale"))
            put("ece_raw_mlip_member", mmx.get("ece_raw_exp_test"), "fraction", 0.05, "min")
            bl = mmx.get("baseline_pbe_mu_exp_fere")
            if bl in ab_rows:
                put("mae_exp_fere_chgnet_mu_exp_ev_per_atom", ab_rows[bl]["mae_fere_test"][0], "eV/atom", r2_dft, "min",
                    method=bl, ci95=list(ab_rows[bl]["mae_fere_test"][1:]))
    # CPU throughput of predict() (featurisation + 5-member ensemble + Φ_Q) on MP structures
    structs = [structure_from_any(r["structure"]) for r in root[: (256 if a.quick else 1024)]]
    thr = {t: _throughput(structs, ckpt, pckpt if pckpt.exists() else False, t) for t in (1, 2)}
    put("cpu_throughput_per_s", max(thr.values()), "structures/s", 200, "max")
    if mm_info.get("method"):
        n_mm = 64 if a.quick else 256
        mm_info["cpu_throughput"] = _mlip_member_throughput(structs[:n_mm], ckpt, a.mlip_member)
        put("mlip_member_cpu_throughput_per_s", mm_info["cpu_throughput"]["per_s"], "structures/s", None, "max",
            threads=1, n=len(structs[:n_mm]))
    from qadb.models.validator.featurize import featurize

    t1 = time.perf_counter()
    for s in structs[:256]:
        featurize(s, cfg["cutoff"], cfg["max_neighbors"])
    feat_rate = min(256, len(structs)) / (time.perf_counter() - t1)
    mlip = {}
    if a.mlip > 0:
        mlip = mlip_baselines(all_recs, a.mlip, 2 * a.mlip, a.seed, ckpt)
    elif Path(a.mlip_json).exists():
        mlip = json.loads(Path(a.mlip_json).read_text())["mlip_baselines"]
        mlip["from_file"] = Path(a.mlip_json).name
    gpu = {}
    if Path(a.gpu_json).exists():
        gpu = json.loads(Path(a.gpu_json).read_text())
        put("gpu_throughput_per_s", gpu.get("per_s"), "structures/s", 10000, "max")
    # proxy
    n_proxy = 0
    if pckpt.exists():
        precs = [r for r in P.staged_gap_records() if D.split_of(r["formula"]) == "test"]
        if a.quick:
            rich = [r for r in precs if len(r["gaps"]) > 1 or "PBE" not in r["gaps"]]
            poor = [r for r in precs if not (len(r["gaps"]) > 1 or "PBE" not in r["gaps"])]
            sel = rng.choice(len(poor), size=min(len(poor), 400), replace=False)
            precs = rich[:600] + [poor[i] for i in sorted(sel)]
        pg, pidx = D.featurize_records(precs, cache=a.cache)
        from qadb.models.proxy.train import gap_metrics

        q, names = P.predict_q_graphs(None, pckpt, graphs=[pg[pidx[r["key"]]] for r in precs])
        y = np.array([[r["gaps"].get(lv, np.nan) for lv in P.GAP_LEVELS] for r in precs])
        for k, v in gap_metrics(q, y, P.GAP_LEVELS, fidelity.slug).items():
            if k.startswith("proxy_gap_mae"):
                put(k, v, "eV", None, "min")
            elif k == "proxy_metal_accuracy":
                put(k, v, "fraction", None, "max")
        n_proxy = int(np.isfinite(y[:, 0]).sum())
    env = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
           "machine": platform.machine(), "throughput_by_threads": {str(k): round(v, 1) for k, v in thr.items()},
           "featurise_per_s_1thread": round(feat_rate, 1), "gpu_throughput": gpu,
           "checkpoint": str(ckpt.relative_to(REPO)) if ckpt.is_relative_to(REPO) else str(ckpt),
           "levels": levels, "sigma_scale": scale, "divergence_low_level": x.get("divergence_low_level"),
           "n_test": {k: v for k, v in x.items() if k.startswith("n_")}, "n_proxy_test_pbe": n_proxy,
           "seconds": round(time.time() - t0, 1), "reliability_png": png.name,
           "mlip_member": {k: v for k, v in mm_info.items() if k not in ("pred", "sigma")},
           "note": ("MF-ENNP: structure-only predictions, DFT energies are not model inputs; divergence_r2_* on the "
                    "FERE test compounds (low = uncorrected PBE+U DFT, high = experiment), *_mp on MP compounds "
                    "with an MP2020 experimental value (low = MP corrected PBE+U). MLIP member (*mlip_member*): "
                    "structure-only as well: bundled CHGNet 0.3.0 and CHGNet-r2SCAN single-point energies of the "
                    "given structure (no relaxation) + the MF-ENNP PBE+U head, co-kriged to experiment; fitted on "
                    "EXP train+val rows only; no DFT value of the predicted compound is an input (the CHGNet models "
                    "were trained on MPtrj/MP r2SCAN DFT data, which include MP calculations of many of these "
                    "compounds). Rows marked 'structure + DFT' take the r2SCAN DFT value as input.")}
    # bootstrap 95 % CIs of the divergence R² (FERE test compounds)
    if "divergence" in x:
        dv = x["divergence"]
        from qadb.models.validator.uncertainty import bootstrap_ci, pearson_r2

        act = np.asarray(dv["actual"])
        env["divergence_r2_ci95"] = {
            "abs": bootstrap_ci(pearson_r2, np.asarray(dv["d_abs"]), np.abs(act), seed=a.seed),
            "rel": bootstrap_ci(pearson_r2, np.asarray(dv["d_rel"]), np.abs(act), seed=a.seed),
            "sgn": bootstrap_ci(pearson_r2, np.asarray(dv["d_sgn"]), act, seed=a.seed)}
    out = {"area": "validator", "quick": bool(a.quick), "env": env, "metrics": M, "mlip_baselines": mlip,
           "ablation": {k: {kk: vv for kk, vv in r.items()} for k, r in ab_rows.items()}}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print("| metric | value | unit | target | direction |\n|---|---|---|---|---|")
    for k, v in M.items():
        tgt = "" if v["target"] is None else f"{v['target']:.3g}"
        print(f"| {k} | {v['value']:.4g} | {v['unit']} | {tgt} | {v['direction']} |")
    if ab_rows:
        print("\n" + AB.format_table(ab_rows))
    if "divergence_r2_ci95" in env:
        print("\ndivergence R² 95% CI (FERE test): " + json.dumps({k: [round(v, 3) for v in t] for k, t in env["divergence_r2_ci95"].items()}))
    if mlip:
        print("\nMLIP baselines: " + json.dumps(mlip, default=float))
    print(f"\nn_test: {env['n_test']}; throughput by torch threads: {env['throughput_by_threads']}; "
          f"featurise {env['featurise_per_s_1thread']}/s; {env['seconds']} s; wrote {a.out}")


if __name__ == "__main__":
    main()
