"""Campaign benchmarks: python bench/campaign.py [--quick] [--out FILE] [--skip-quickstart].

(1) Replay benchmarks on real multi-fidelity data (seed 000 Tables 7/8 analogues): each strategy
runs the full campaign engine (state in a temporary embedded store) against a replay oracle that
reveals held-out high-fidelity labels; hits per high-fidelity call over 5 seeds, bootstrap 95 %
CIs of the ratios (resampling seeds) and Welch t-tests (seed 000 Sec. 4.5). Every campaign starts
from the same random seed set (`init` calls, excluded from hits per call) and then takes a fixed
batch of `top_k` per cycle until the budget is spent.
(2) The quickstart campaign's wall time (`qadb launch campaign quickstart`), unless skipped.
(3) With --inverse-only: flows/inverse_bulk_modulus.yaml on a fresh store (seed 003), merging
`inverse_mape_iter<k>` (CHGNet K of random relaxed samples vs the 350 GPa target) and per-stage counts.
(4) With --pyscf-only: the PySCF two-level campaign.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qadb.campaign import build, recipe as recipes, replay  # noqa: E402
from qadb.campaign.engine import Engine  # noqa: E402
from qadb.store import connect  # noqa: E402

STRATEGIES = {  # name -> recipe overrides
    "random": {"select": {"strategy": "random"}},
    "pbe_only": {"select": {"strategy": "low_fidelity"}},
    "uncertainty_only": {"select": {"strategy": "uncertainty"}},
    "divergence": {"select": {"strategy": "divergence"}},
}
ABLATIONS = {
    "no_multi_fidelity": {"select": {"strategy": "divergence"}, "predict": {"multi_fidelity": False}},
    "no_active_learning": {"select": {"strategy": "divergence"}, "retrain": {"validator_every": 0}},
    "no_q": {"select": {"strategy": "divergence"}, "predict": {"descriptors": False}},
}


def _recipe(task: replay.ReplayTask, name: str, seed: int, budget: int, init: int, top_k: int, over: dict) -> dict:
    rec = {"name": f"bench-{task.name}-{name}", "kind": "replay", "seed": seed, "budget": budget,
           "max_cycles": 1000, "patience": 1000,
           "candidates": {"source": "replay", "task": task.name, "init": init},
           "predict": {"validator": "delta_ensemble"},
           "select": {"top_k": top_k, "budget_fraction": 1.0, "divergence": task.divergence},
           "validate": {"labeller": "replay"}}
    for key, value in over.items():
        rec[key] = {**rec.get(key, {}), **value}
    return recipes.validate(rec)


def run_one(task, name, seed, budget, init, top_k, over) -> dict:
    rec = _recipe(task, name, seed, budget, init, top_k, over)
    doc = Engine(recipes.campaign_id(rec), rec, build.replay_parts(rec, task)).run()
    return doc.summary


def bootstrap_ratio(a: np.ndarray, b: np.ndarray, n: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile CI of mean(a)/mean(b), resampling the seeds of each arm independently."""
    rng = np.random.default_rng(seed)
    ra = a[rng.integers(0, len(a), (n, len(a)))].mean(1)
    rb = b[rng.integers(0, len(b), (n, len(b)))].mean(1)
    ratio = ra / np.where(rb > 0, rb, np.nan)
    ratio = ratio[np.isfinite(ratio)]
    return (float(np.percentile(ratio, 2.5)), float(np.percentile(ratio, 97.5))) if ratio.size else (float("nan"),) * 2


def welch_p(a, b) -> float:
    from scipy.stats import ttest_ind

    if np.std(a) == 0 and np.std(b) == 0:
        return 0.0 if np.mean(a) != np.mean(b) else 1.0
    return float(ttest_ind(a, b, equal_var=False).pvalue)


def replay_bench(task, seeds, budget, init, top_k, arms) -> dict:
    per_arm = {}
    for name, over in arms.items():
        t = time.time()
        res = [run_one(task, name, s, budget, init, top_k, over) for s in seeds]
        per_arm[name] = {"hits_per_call": np.array([r["hits_per_call"] for r in res]),
                         "hits": [r["hits"] for r in res], "calls": res[0]["calls"], "seconds": time.time() - t}
        print(f"  {task.name:9s} {name:20s} hits/call {per_arm[name]['hits_per_call'].mean():.3f} "
              f"({time.time() - t:.0f} s)", file=sys.stderr)
    return per_arm


def metric(value, unit, target=None, direction="max") -> dict:
    return {"value": value, "unit": unit, "target": target, "direction": direction}


def quickstart_wall() -> float:
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "QADB_HOME": home, "QADB_MONGO_URI": ""}
        t = time.time()
        subprocess.run([sys.executable, "-m", "qadb.cli", "launch", "campaign", "quickstart"], env=env, check=True,
                       cwd=ROOT)
        return time.time() - t


def pyscf_campaign(home: str | None = None) -> tuple[dict, list[dict]]:
    """Run (or, given `home`, score an earlier run of) flows/pyscf_two_level.yaml; metrics and one row per paid label.

    A hit counts as new and stable only if (1) it has two or more elements, (2) its structure matches nothing of
    the same reduced formula in the staged MP-20 val/test sets (StructureMatcher), and (3) its high-level formation
    energy is below minus the campaign's own error bar: an elemental candidate must come out at E_f >= 0 against
    its ground-state reference, so the most negative elemental E_f measures how far these settings are from
    converged, and no compound hit closer to zero than that is significant.
    """
    from pymatgen.core import Structure

    from qadb.chem import ReferenceSet
    from qadb.chem._datasets import mp20_structures
    from qadb.store.documents import CampaignDoc, LabelDoc, StructureDoc

    wall = None
    home = home or tempfile.mkdtemp(prefix="qadb-bench-pyscf-")
    env = {**os.environ, "QADB_HOME": home, "QADB_MONGO_URI": ""}
    if not (Path(home) / "store").exists():
        t = time.time()
        subprocess.run([sys.executable, "-m", "qadb.cli", "launch", "campaign", "pyscf_two_level"], env=env,
                       check=True, cwd=ROOT)
        wall = time.time() - t
    reference = ReferenceSet.from_structures(mp20_structures("val")[1] + mp20_structures("test")[1])
    with connect(str(Path(home) / "store")):
        camp = CampaignDoc.objects(name="pyscf_two_level").first()
        rows = []
        for sid in sorted({lab.structure for lab in LabelDoc.objects(property="formation_energy_per_atom")}):
            doc = StructureDoc.objects(id=sid).first()
            e = {lab.fidelity: lab.value for lab in LabelDoc.objects(structure=sid, property="formation_energy_per_atom")}
            s = Structure.from_dict(doc.structure)
            rows.append({"id": sid, "formula": doc.formula_pretty, "spacegroup": doc.spacegroup_symbol,
                         "nelements": doc.nelements, "E_f_PBE": e.get("PBE"), "E_f_PBE0": e.get("PBE0"),
                         "novel": reference.is_novel(s)})
        cpu_s = sum(j.get("summary", {}).get("wall_time_s") or 0 for j in
                    CampaignDoc._get_db()["activities"].find({"kind": "label"}))
    elemental = [r["E_f_PBE0"] for r in rows if r["nelements"] == 1 and r["E_f_PBE0"] is not None]
    error_bar = max([0.0] + [-e for e in elemental])
    new_stable = [r for r in rows if r["nelements"] >= 2 and r["novel"] and r["E_f_PBE0"] is not None
                  and r["E_f_PBE0"] < -error_bar]
    metrics = {
        "pyscf_campaign_new_stable": metric(len(new_stable), "structures", None, "max"),
        "pyscf_campaign_hits": metric(camp.summary.get("hits", 0), "structures", None, "max"),
        "pyscf_campaign_calls": metric(camp.summary.get("calls", 0), "PBE0 labels", None, "min"),
        "pyscf_campaign_error_bar_ev_per_atom": metric(error_bar, "eV/atom", None, "min"),
        "pyscf_campaign_label_seconds": metric(cpu_s, "s", None, "min"),
    }
    if wall is not None:
        metrics["pyscf_campaign_wall_s"] = metric(wall, "s", None, "min")
    return metrics, rows


def inverse_campaign(home: str | None = None) -> tuple[dict, list[dict]]:
    """Run (or, given `home`, score an earlier run of) flows/inverse_bulk_modulus.yaml; metrics and cycle records."""
    from qadb.campaign import inverse
    from qadb.models.bulk_modulus import BulkModulusPrefilter
    from qadb.store.documents import CampaignDoc

    wall = None
    home = home or tempfile.mkdtemp(prefix="qadb-bench-inverse-")
    env = {**os.environ, "QADB_HOME": home, "QADB_MONGO_URI": ""}
    if not (Path(home) / "store").exists():
        t = time.time()
        subprocess.run([sys.executable, "-m", "qadb.cli", "launch", "campaign", "flows/inverse_bulk_modulus.yaml"],
                       env=env, check=True, cwd=ROOT)
        wall = time.time() - t
        (Path(home) / "inverse_wall_s.json").write_text(json.dumps(wall))
    elif (Path(home) / "inverse_wall_s.json").exists():  # scoring a run this function made
        wall = json.loads((Path(home) / "inverse_wall_s.json").read_text())
    rec = recipes.load(ROOT / "flows" / "inverse_bulk_modulus.yaml")
    target = rec["inverse"]["target"]
    with connect(str(Path(home) / "store")):
        camp = CampaignDoc.objects(name=rec["name"]).first()
        cycles = inverse.records(camp.id)
    metrics: dict[str, dict] = {}
    for c in cycles:
        k = c["cycle"]
        last = k == cycles[-1]["cycle"]
        metrics[f"inverse_mape_iter{k}"] = metric(c["mape"], "fraction", 0.14 if last else None, "min")
        if c.get("probe_k"):  # bootstrap 95 % CI of the probe MAPE (resampling the converged probe crystals)
            lo, hi = bootstrap_mape(np.array(c["probe_k"]), target)
            metrics[f"inverse_mape_iter{k}_ci_low"] = metric(lo, "fraction", None, "min")
            metrics[f"inverse_mape_iter{k}_ci_high"] = metric(hi, "fraction", None, "min")
        metrics[f"inverse_mape_samples_iter{k}"] = metric(c["mape_samples"], "structures", None, "max")
        metrics[f"inverse_median_k_gpa_iter{k}"] = metric(c["median_k_gpa"], "GPa", None, None)
        metrics[f"inverse_mape_screened_iter{k}"] = metric(c["mape_screened"], "fraction", None, "min")
        metrics[f"inverse_mape_stage3_iter{k}"] = metric(c["mape_stage3"], "fraction", None, "min")
        rel = abs(c["median_k_gpa"] - target) / target if c["median_k_gpa"] is not None else None
        metrics[f"inverse_median_k_rel_error_iter{k}"] = metric(rel, "fraction", None, "min")
        for name in ("generated", "stage1_passed", "stage2_run", "stage2_passed", "stage3_labelled", "stage3_hits",
                     "mape_converged"):
            metrics[f"inverse_{name}_iter{k}"] = metric(c[name], "structures", None, "max")
    test = BulkModulusPrefilter().meta["test"]
    metrics["inverse_prefilter_test_mae_gpa"] = metric(test["mae_gpa"], "GPa", None, "min")
    metrics["inverse_prefilter_test_mape"] = metric(test["mape"], "fraction", None, "min")
    if wall is not None:
        metrics["inverse_campaign_wall_s"] = metric(wall, "s", 1500, "min")
    return metrics, cycles


def bootstrap_mape(k: np.ndarray, target: float, n: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of mean |k - target| / target."""
    err = np.abs(k - target) / target
    rng = np.random.default_rng(seed)
    means = err[rng.integers(0, len(err), size=(n, len(err)))].mean(axis=1)
    return round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)


def env_info() -> dict:
    from importlib.metadata import version

    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "numpy": np.__version__, "scikit-learn": version("scikit-learn"), "platform": platform.platform()}


def _update_results(out: Path, metrics: dict, env_key: str, extra: dict, drop_prefix: str = "") -> dict:
    """Merge one part's metrics (and its extra fields and environment) into an existing results file, so a part
    can be re-measured without re-running the others; metrics starting with ``drop_prefix`` are replaced whole."""
    result = json.loads(out.read_text())
    if drop_prefix:
        result["metrics"] = {k: v for k, v in result["metrics"].items() if not k.startswith(drop_prefix)}
    result["metrics"].update(metrics)
    result.update(extra)
    result[env_key] = env_info()
    out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print("| metric | value | unit |\n|---|---|---|")
    for k, m in metrics.items():
        print(f"| {k} | {m['value']:.4g} | {m['unit']} |")
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "campaign.json")
    ap.add_argument("--skip-quickstart", action="store_true")
    ap.add_argument("--quickstart-only", action="store_true",
                    help="Time the quickstart campaign alone and update that metric in --out.")
    ap.add_argument("--pyscf-only", action="store_true",
                    help="Run flows/pyscf_two_level.yaml on a fresh store (about 25 min) and merge its metrics into --out.")
    ap.add_argument("--pyscf-home", default=None, help="With --pyscf-only: score the run in this QADB_HOME instead.")
    ap.add_argument("--inverse-only", action="store_true",
                    help="Run flows/inverse_bulk_modulus.yaml on a fresh store and merge its metrics into --out.")
    ap.add_argument("--inverse-home", default=None, help="With --inverse-only: score the run in this QADB_HOME instead.")
    args = ap.parse_args(argv)
    if args.inverse_only:
        metrics, cycles = inverse_campaign(args.inverse_home)
        # one run's inverse metrics only: nothing left over from an earlier run with more cycles or other fields
        return _update_results(args.out, metrics, "env_inverse", {"inverse_cycles": cycles}, drop_prefix="inverse_")
    if args.pyscf_only:
        metrics, rows = pyscf_campaign(args.pyscf_home)
        result = _update_results(args.out, metrics, "env_pyscf", {"pyscf_campaign_labels": rows})
        for r in rows:
            print(r)
        return result
    if args.quickstart_only:
        metrics = {"quickstart_wall_s": metric(quickstart_wall(), "s", 300, "min")}
        return _update_results(args.out, metrics, "env_quickstart", {})

    seeds = [0, 1] if args.quick else [0, 1, 2, 3, 4]
    budget, init, top_k = (80, 20, 20) if args.quick else (150, 20, 20)
    task_names = ["bandgap"] if args.quick else ["bandgap", "enthalpy"]
    metrics: dict[str, dict] = {}
    rows = []
    tmp = tempfile.mkdtemp(prefix="qadb-bench-campaign-")
    store = connect(tmp)
    try:
        for tname in task_names:
            task = replay.task(tname)
            info = task.summary()
            arms = dict(STRATEGIES) if not args.quick else {k: STRATEGIES[k] for k in ("random", "pbe_only", "divergence")}
            if not args.quick:
                arms.update(ABLATIONS)
            res = replay_bench(task, seeds, budget, init, top_k, arms)
            full, rnd, pbe = (res[k]["hits_per_call"] for k in ("divergence", "random", "pbe_only"))
            sfx = "" if tname == "bandgap" else f"_{tname}"
            r_rand = full.mean() / rnd.mean() if rnd.mean() > 0 else float("inf")
            r_pbe = full.mean() / pbe.mean() if pbe.mean() > 0 else float("inf")
            lo, hi = bootstrap_ratio(full, rnd)
            plo, phi = bootstrap_ratio(full, pbe)
            metrics[f"replay_prevalence{sfx}"] = metric(info["prevalence"], "fraction", 0.10, "min")
            metrics[f"replay_hits_per_call_ratio_vs_random{sfx}"] = metric(r_rand, "ratio", 3.0)
            metrics[f"replay_hits_per_call_ratio_vs_random{sfx}_ci_low"] = metric(lo, "ratio", 3.0)
            metrics[f"replay_hits_per_call_ratio_vs_random{sfx}_ci_high"] = metric(hi, "ratio")
            metrics[f"replay_hits_per_call_ratio_vs_pbe_only{sfx}"] = metric(r_pbe, "ratio", 1.5)
            metrics[f"replay_hits_per_call_ratio_vs_pbe_only{sfx}_ci_low"] = metric(plo, "ratio", 1.5)
            metrics[f"replay_welch_p_vs_random{sfx}"] = metric(welch_p(full, rnd), "p", 0.05, "min")
            metrics[f"replay_welch_p_vs_pbe_only{sfx}"] = metric(welch_p(full, pbe), "p", 0.05, "min")
            for name, r in res.items():
                metrics[f"replay_hit_rate_{name}{sfx}"] = metric(float(r["hits_per_call"].mean()), "hits/call")
                rows.append((tname, name, r["hits_per_call"].mean(), r["hits_per_call"].std(ddof=1) if len(seeds) > 1 else 0.0,
                             r["hits_per_call"].mean() / rnd.mean() if rnd.mean() else float("inf"),
                             welch_p(r["hits_per_call"], rnd) if name != "random" else float("nan"), r["calls"]))
            metrics[f"replay_task{sfx}"] = {**metric(info["pool"], "candidates in pool", None), "info": info}
        if not args.quick and not args.skip_quickstart:
            metrics["quickstart_wall_s"] = metric(quickstart_wall(), "s", 300, "min")
    finally:
        store.close()
    print("| task | strategy | hits per HF call (mean over seeds) | sd | × random | Welch p vs random | calls per seed |")
    print("|---|---|---|---|---|---|---|")
    for t, n, m, sd, ratio, p, calls in rows:
        print(f"| {t} | {n} | {m:.3f} | {sd:.3f} | {ratio:.2f} | {p:.2g} | {calls} |")
    print()
    print("| metric | value | target |")
    print("|---|---|---|")
    for k, v in metrics.items():
        val = v["value"]
        print(f"| {k} | {val:.4g} | {v['target'] if v['target'] is not None else ''} |" if isinstance(val, float)
              else f"| {k} | {val} | {v['target'] if v['target'] is not None else ''} |")
    result = {"area": "campaign", "quick": args.quick, "env": env_info(),
              "settings": {"seeds": seeds, "budget": budget, "init": init, "top_k": top_k}, "metrics": metrics}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    return result


if __name__ == "__main__":
    main()
