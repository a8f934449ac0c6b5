"""Train the validator ensembles (default + hierarchy ablation) and Φ_Q from a bundle (torch/numpy only).

Runs where pymatgen is absent (the GPU machine): the structures were featurised beforehand into
`data.export_bundle`'s ``.npz``. ::

    python -m qadb.models.validator.data  # (CPU side) writes .val_scratch/bundle/validator_bundle.npz
    python -m qadb.models.validator.gpu_run --bundle .val_scratch/bundle/validator_bundle.npz \\
        --out OUTDIR --jobs default:240,direct:60 --proxy 60 --device cuda

Writes into OUTDIR: ``validator_mfennp.pt`` (job ``default``), ``validator_train_state.pt`` (its
resumable state), ``validator_ablation.pt`` (every other job's checkpoint payload, keyed by job),
``proxy_phiq.pt``, ``validator.jsonl`` / ``proxy.jsonl`` (one line per run: config, data hash,
seed, steps, losses, metrics), ``gpu_run.json`` (per-job metrics and held-out predictions for the
ablation table, throughput).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from qadb import fidelity
from qadb.models.validator import api as A
from qadb.models.validator import data as D
from qadb.models.validator.train import _plain, save_checkpoint

JOBS = {
    # name: (hierarchy, model overrides)
    "default": ("full", {}),
    "full": ("full", {}),
    "full_shared_trunk": ("full", {"trunk_from_root": False}),
    "skip_metagga": ("skip_metagga", {}),
    "skip_metagga_shared_trunk": ("skip_metagga", {"trunk_from_root": False}),
    "direct": ("direct", {}),
    "direct_shared_trunk": ("direct", {"trunk_from_root": False}),
    "low_only": ("low_only", {}),
}


def gpu_throughput(model, bank, n: int = 20000, batch: int = 4096, reps: int = 3) -> dict:
    """Structures per second of the stacked ensemble on pre-featurised graphs (median of reps)."""
    from qadb.models.validator.train import _Sub

    dev = bank.device
    ids = np.arange(min(n, len(bank)))
    model = model.to(dev).eval()
    sub = _Sub(bank, ids)
    times = []
    with torch.no_grad():
        for r in range(reps + 1):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for s in range(0, len(ids), batch):
                model(sub.batch(list(range(s, min(s + batch, len(ids))))))
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if r:
                times.append(time.perf_counter() - t)
    model.cpu()
    return {"structures": int(len(ids)), "batch": batch, "seconds_median": float(np.median(times)),
            "per_s": float(len(ids) / np.median(times))}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--jobs", default="default:240")
    ap.add_argument("--proxy", type=float, default=0.0, help="Φ_Q time budget in seconds (0: skip)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", default="{}", help="JSON train-config overrides for every job")
    ap.add_argument("--model", default="{}", help="JSON model-config overrides for every job")
    ap.add_argument("--throughput-n", type=int, default=20000)
    ap.add_argument("--resume", default=None, help="a validator_train_state.pt to resume job 'default' from")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    t0 = time.time()
    bank, items, gaps, meta = D.load_bundle(a.bundle, a.device)
    print(f"bundle: {len(bank)} graphs, {len(items['y'])} formation rows, {len(gaps['y'])} gap rows, "
          f"hash {meta['data_hash']} ({time.time() - t0:.1f}s)", flush=True)
    summary = {"device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu", "torch": torch.__version__,
               "data_hash": meta["data_hash"], "jobs": {}}
    ablation = {}
    tr_over, mo_over = json.loads(a.train), json.loads(a.model)
    for spec in a.jobs.split(","):
        name, _, budget = spec.partition(":")
        hierarchy, over = JOBS[name]
        tj = time.time()
        state = out / "validator_train_state.pt" if name == "default" else None
        if state is not None and a.resume and Path(a.resume).exists():
            state.write_bytes(Path(a.resume).read_bytes())
        res = A.fit_arrays(bank, items, hierarchy=hierarchy, n_members=a.members, steps=10 ** 7,
                           time_budget_s=float(budget), seed=a.seed, device=a.device,
                           model_overrides={**over, **mo_over}, train_overrides=tr_over, state_path=state)
        res["data_hash"], res["seconds"] = meta["data_hash"], time.time() - tj
        extra = A.checkpoint_extra(res, hierarchy)
        if name == "default":
            res["checkpoint"] = "qadb/data/checkpoints/validator_mfennp.pt"
            save_checkpoint(out / "validator_mfennp.pt", A.KIND, res["config"], res["members"], extra)
            summary["gpu_throughput"] = gpu_throughput(res["members"][0], bank, n=a.throughput_n)
            print(f"gpu throughput {summary['gpu_throughput']}", flush=True)
        else:
            m = res["members"][0]
            ablation[name] = {"config": _plain(res["config"]),
                              "members": [{k: v.detach().cpu().clone() for k, v in m.state_dict().items()}],
                              "extra": _plain(extra)}
        entry = A.log_entry(res, f"gpu_{name}", hierarchy, a.seed)
        entry["device"] = summary["device"]
        with open(out / "validator.jsonl", "a") as f:
            f.write(json.dumps(entry, default=float) + "\n")
        ev = res.get("extra", {})
        summary["jobs"][name] = {"hierarchy": hierarchy, "overrides": over, "metrics": res["metrics"],
                                 "calibration": res["calibration"], "steps": res["history"].get("steps_done"),
                                 "seconds": res["seconds"], "extra": ev}
        mt = res["metrics"]
        print(f"== {name}: " + " ".join(f"{k}={v:.4f}" for k, v in mt.items() if isinstance(v, float)), flush=True)
    if ablation:
        torch.save(ablation, out / "validator_ablation.pt")
    if a.proxy > 0:
        summary["proxy"] = run_proxy(bank, gaps, meta, out, a)
    summary["seconds"] = time.time() - t0
    (out / "gpu_run.json").write_text(json.dumps(_plain(summary), default=float))
    print(f"done in {summary['seconds']:.0f}s", flush=True)


def run_proxy(bank, gaps, meta, out: Path, a) -> dict:
    from qadb.models.proxy.net import default_config
    from qadb.models.proxy.train import gap_metrics, predict_phiq, train_phiq
    from qadb.models.validator.train import _Sub

    levels = meta["gap_levels"]
    cfg = default_config(levels)
    t = time.time()
    model, losses, secs, steps = train_phiq(bank, gaps, cfg, steps=10 ** 7, batch=256, lr=2e-3, seed=a.seed,
                                            time_budget_s=a.proxy, device=a.device)
    te = np.where(gaps["split"] == "test")[0]
    q = predict_phiq(model.to(bank.device), _Sub(bank, gaps["graph"][te]))
    model.cpu()
    metrics = gap_metrics(q, gaps["y"][te], levels, fidelity.slug)
    q_names = [f"gap_{fidelity.slug(l)}_ev" for l in levels] + ["p_metal"]
    save_checkpoint(out / "proxy_phiq.pt", "proxy", cfg, [model],
                    {"q_names": q_names, "metrics": metrics, "data_hash": meta["data_hash"]})
    entry = {"run": "gpu_proxy", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": cfg,
             "train_config": {"batch": 256, "lr": 2e-3, "time_budget_s": a.proxy}, "seed": a.seed,
             "data_hash": meta["data_hash"], "n_train": int((gaps["split"] == "train").sum()), "steps": steps,
             "losses": losses, "metrics": metrics, "checkpoint": "qadb/data/checkpoints/proxy_phiq.pt",
             "env": A._env(), "seconds": time.time() - t}
    with open(out / "proxy.jsonl", "a") as f:
        f.write(json.dumps(entry, default=float) + "\n")
    print("== proxy: " + json.dumps(metrics), flush=True)
    return {"metrics": metrics, "steps": steps, "seconds": secs}


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
