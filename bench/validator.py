"""Benchmark of the MF-ENNP validator and the Φ_Q proxy on the held-out split of the staged data.

    python bench/validator.py [--quick] [--out FILE] [--checkpoint PT] [--proxy-checkpoint PT]

Prints a markdown table and writes JSON (default bench/results/validator.json):
{"area": "validator", "quick", "env", "metrics": {name: {"value", "unit", "target", "direction"}}}.

Held-out split = formulas hashed to "test" (qadb.models.validator.data.split_of), shared by every
level; the committed checkpoints never saw these formulas. DFT energies are NOT model inputs: the
model predicts every level (and experiment) from the structure alone; the DFT-vs-experiment MAEs on
the same FERE test compounds are listed for comparison (a DFT number needs a DFT calculation).
--quick subsamples the MP (PBE+U) test rows and the proxy test rows.
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


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "validator.json"))
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--proxy-checkpoint", default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    t0 = time.time()
    import torch

    from qadb import fidelity
    from qadb.models.proxy import api as P
    from qadb.models.validator import data as D
    from qadb.models.validator.api import DEFAULT_CHECKPOINT, evaluate, load_validator
    from qadb.models.validator.featurize import structure_from_any

    torch.set_num_threads(1)
    rng = np.random.default_rng(a.seed)
    ckpt = Path(a.checkpoint) if a.checkpoint else DEFAULT_CHECKPOINT
    pckpt = Path(a.proxy_checkpoint) if a.proxy_checkpoint else P.DEFAULT_CHECKPOINT
    members, cfg, extra = load_validator(ckpt)
    levels = list(cfg["levels"])
    recs = [r for r in D.staged_formation_records() if D.split_of(r["formula"]) == "test"]
    exp_keys = {r["key"] for r in recs if r["level"] == "EXP"}
    root = [r for r in recs if r["level"] == D.ROOT_LEVEL]
    n_root = 300 if a.quick else len(root)
    keep_root = [r for r in root if r["key"] in exp_keys]
    rest = [r for r in root if r["key"] not in exp_keys]
    pick = rng.choice(len(rest), size=min(len(rest), max(0, n_root - len(keep_root))), replace=False)
    recs = [r for r in recs if r["level"] != D.ROOT_LEVEL] + keep_root + [rest[i] for i in sorted(pick)]
    graphs, gindex = D.featurize_records(recs, cutoff=cfg["cutoff"], max_neighbors=cfg["max_neighbors"])
    items = D.to_arrays(recs, gindex, list(D.LEVEL_FIDELITY))
    scale = float(extra.get("calibration", {}).get("sigma_scale", 1.0))
    ev = evaluate(members, graphs, items, levels, records=recs,
                  sigma_scale=scale)
    m = ev["metrics"]
    png = Path(a.out).with_name(Path(a.out).stem + "_reliability.png")
    if "exp_test_y" in ev["extra"]:
        from qadb.models.validator.uncertainty import reliability_plot

        png.parent.mkdir(parents=True, exist_ok=True)
        x = ev["extra"]
        reliability_plot(x["exp_test_y"], x["exp_test_mu"], x["exp_test_sigma_raw"], png,
                         label=f"EXP test (n={len(x['exp_test_y'])})", sigma_scale=scale)
    M: dict[str, dict] = {}

    def put(name, value, unit, target=None, direction="lower"):
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            return
        M[name] = {"value": float(value), "unit": unit, "target": target, "direction": direction}

    for lv in D.LEVEL_FIDELITY:
        k = f"mae_{D.level_slug(lv)}_ev_per_atom"
        put(k, m.get(k), "eV/atom")
    r2_dft = m.get("dft_r2scan_vs_exp_mae_fere_test_ev_per_atom")
    put("mae_exp_fere_ev_per_atom", m.get("mae_exp_fere_ev_per_atom"), "eV/atom", r2_dft, "lower")
    for lv in ("r2scan", "scan", "pbe_u_fere"):
        put(f"dft_{lv}_vs_exp_mae_fere_test_ev_per_atom", m.get(f"dft_{lv}_vs_exp_mae_fere_test_ev_per_atom"), "eV/atom")
    put("ece", m.get("ece"), "fraction", 0.05, "lower")
    put("ece_raw", m.get("ece_raw"), "fraction", 0.05, "lower")
    for k in ("divergence_r2_abs", "divergence_r2_rel", "divergence_r2_sgn", "divergence_r2"):
        put(k, m.get(k), "R^2", None, "higher")
    # CPU throughput of predict() (featurisation + 5-member ensemble + proxy) on MP structures
    structs = [structure_from_any(r["structure"]) for r in root[: (256 if a.quick else 1024)]]
    thr = {t: _throughput(structs, ckpt, pckpt if pckpt.exists() else False, t) for t in (1, 2)}
    put("cpu_throughput_per_s", max(thr.values()), "structures/s", 200, "higher")
    # proxy
    if pckpt.exists():
        precs = [r for r in P.staged_gap_records() if D.split_of(r["formula"]) == "test"]
        if a.quick:
            rich = [r for r in precs if len(r["gaps"]) > 1 or "PBE" not in r["gaps"]]
            poor = [r for r in precs if not (len(r["gaps"]) > 1 or "PBE" not in r["gaps"])]
            sel = rng.choice(len(poor), size=min(len(poor), 400), replace=False)
            precs = rich[:600] + [poor[i] for i in sorted(sel)]
        q, names = P.predict_q_graphs([r["structure"] for r in precs], pckpt)
        for k, lv in enumerate(P.GAP_LEVELS):
            y = np.array([r["gaps"].get(lv, np.nan) for r in precs])
            ok = np.isfinite(y)
            put(f"proxy_gap_mae_{fidelity.slug(lv)}_ev", float(np.mean(np.abs(q[ok, k] - y[ok]))), "eV",
                None, "lower")
        y = np.array([r["gaps"].get("PBE", np.nan) for r in precs])
        ok = np.isfinite(y)
        put("proxy_metal_accuracy", float(np.mean((q[ok, -1] > 0.5) == (y[ok] <= 1e-6))), "fraction", None, "higher")
        n_proxy = int(ok.sum())
    else:
        n_proxy = 0
    env = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
           "machine": platform.machine(), "throughput_by_threads": {str(k): round(v, 1) for k, v in thr.items()},
           "checkpoint": str(ckpt.relative_to(REPO)) if ckpt.is_relative_to(REPO) else str(ckpt),
           "levels": levels, "sigma_scale": scale,
           "n_test": {k: v for k, v in ev["extra"].items() if k.startswith("n_")}, "n_proxy_test_pbe": n_proxy,
           "seconds": round(time.time() - t0, 1), "reliability_png": png.name,
           "note": "structure-only predictions; DFT energies are not model inputs"}
    out = {"area": "validator", "quick": bool(a.quick), "env": env, "metrics": M}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print("| metric | value | unit | target | direction |\n|---|---|---|---|---|")
    for k, v in M.items():
        tgt = "" if v["target"] is None else f"{v['target']:.3g}"
        print(f"| {k} | {v['value']:.4g} | {v['unit']} | {tgt} | {v['direction']} |")
    print(f"\nn_test: {env['n_test']}; throughput by torch threads: {env['throughput_by_threads']}; "
          f"{env['seconds']} s; wrote {a.out}")


if __name__ == "__main__":
    main()
