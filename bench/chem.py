"""Benchmark of qadb.chem: python bench/chem.py [--quick] [--out FILE].

Rates are structures per CPU-second of this one process (time.process_time), i.e. per core, so that
other load on the machine does not count against them. Inputs: the first N structures of the staged
MP-20 test split; hulls from random entries (seeded) compared with pymatgen's PhaseDiagram.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition

from qadb.chem import (
    HullEntry,
    ReferenceSet,
    build_hull,
    check_bond_valence,
    check_charge_neutrality,
    check_covalent_distance,
    check_electronegativity,
    check_min_distance,
    check_pauling_electrostatic,
    check_symmetry,
    check_volume,
    compactness,
    default_stages,
    load_spp_table,
    mled,
    mled_reference,
    run_funnel,
    seed000_checks,
)
from qadb.chem._datasets import mp20_structures
from qadb.config import shared_data_dir

warnings.filterwarnings("ignore")


def _cpu(fn, items) -> tuple[list, float]:
    start = time.process_time()
    out = [fn(x) for x in items]
    return out, max(time.process_time() - start, 1e-9)


def _random_entries(elements, n, rng):
    entries = []
    for k in range(n):
        chosen = rng.choice(elements, rng.integers(2, len(elements) + 1), replace=False)
        amounts = {el: int(rng.integers(1, 7)) for el in chosen}
        entries.append(HullEntry.make(f"e{k}", amounts, float(rng.normal(-0.8, 0.6))))
    return entries


def bench_hulls(quick: bool, metrics: dict) -> None:
    rng = np.random.default_rng(0)
    systems = {"binary": (["Li", "O"], 100), "ternary": (["Li", "Co", "O"], 300), "quaternary": (["Li", "Fe", "P", "O"], 500)}
    worst = 0.0
    for name, (elements, n) in systems.items():
        entries = _random_entries(elements, n, rng)
        start = time.process_time()
        reps = 3 if quick else 10
        for _ in range(reps):
            hull = build_hull(entries)
        build_ms = (time.process_time() - start) / reps * 1e3
        candidates = _random_entries(elements, 2000 if quick else 20000, rng)
        comps = [c.composition for c in candidates]
        energies = [c.energy_per_atom for c in candidates]
        start = time.process_time()
        hull.analyse_many(comps, energies)
        per = (time.process_time() - start) / len(candidates) * 1e3
        metrics[f"hull_ms_per_candidate_{name}"] = (per, "ms", 0.1, "min")
        metrics[f"hull_rebuild_ms_{name}_{n}"] = (build_ms, "ms", 100.0 if name == "quaternary" else None, "min")
        # Exactness against pymatgen on every entry (and the decomposition energy of hull vertices).
        pd_entries = [PDEntry(Composition(e.composition), e.energy_per_atom * sum(e.composition.values())) for e in entries]
        pd_entries += [PDEntry(Composition(el), 0.0) for el in elements]
        diagram = PhaseDiagram(pd_entries)
        checked = entries if not quick else entries[:60]
        for pe, e in zip(pd_entries, checked):
            res = hull.analyse(e.composition, e.energy_per_atom, entry_id=e.id)
            worst = max(worst, abs(res.e_above_hull - diagram.get_e_above_hull(pe)))
            if res.e_above_hull < 1e-9:
                others = PhaseDiagram([x for x in pd_entries if x is not pe])
                worst = max(worst, abs(res.decomposition_energy - others.get_decomp_and_e_above_hull(pe, allow_negative=True)[1]))
    metrics["hull_max_abs_diff_vs_pymatgen"] = (worst, "eV/atom", 1e-6, "min")


def _mled_diff(a, b) -> float:
    """Largest difference between two MLEDResults (value and 159-vector; inf if they skip different sites)."""
    if a.skipped_sites != b.skipped_sites or np.isnan(a.value) != np.isnan(b.value):
        return float("inf")
    value = 0.0 if np.isnan(a.value) else abs(a.value - b.value)
    return max(value, float(np.max(np.abs(np.array(a.vector) - np.array(b.vector)))))


def bench_structures(quick: bool, metrics: dict, notes: dict) -> None:
    n = 100 if quick else 1000
    _, structures = mp20_structures("test", n)
    table = load_spp_table()

    def spp_c(s):
        return table.score(s).value, compactness(s)

    results, t = _cpu(spp_c, structures)
    metrics["spp_c_per_s"] = (n / t, "structures/s", 1000.0, "max")
    spp = np.array([r[0] for r in results])
    c = np.array([r[1] for r in results])
    metrics["spp_pass_fraction_mp20_test"] = (float((spp <= table.threshold).mean()), "fraction", None, "max")
    metrics["c_window_pass_fraction_mp20_test"] = (float(((c >= 0.55) & (c <= 0.85)).mean()), "fraction", None, "max")

    checks = {
        "min_distance": check_min_distance,
        "covalent_distance_0.8": lambda s: check_covalent_distance(s, 0.8),
        "volume": check_volume,
        "charge_neutrality": check_charge_neutrality,
        "electronegativity": check_electronegativity,
        "pauling_electrostatic": check_pauling_electrostatic,
        "bond_valence": check_bond_valence,
        "symmetry": check_symmetry,
    }
    for name, fn in checks.items():
        res, t = _cpu(fn, structures)
        metrics[f"check_per_s_{name}"] = (n / t, "structures/s", None, "max")
        metrics[f"check_pass_fraction_{name}"] = (float(np.mean([r.passed for r in res])), "fraction", None, "max")

    mled(structures[0])  # loads matminer (seconds) outside the timing
    fast, t_fast = _cpu(mled, structures)
    metrics["mled_fast_per_s"] = (n / t_fast, "structures/s", None, "max")
    n_sites = sum(len(s) for s in structures)
    fallback = sum(r.fallback_sites for r in fast)
    metrics["mled_fallback_site_fraction"] = (fallback / n_sites, "fraction", None, "min")
    notes["mled_fallback_sites"] = f"{fallback} of {n_sites} sites of {n} structures handed to matminer/pymatgen"
    # The reference costs ~1 s per structure: compared on as many as the run affords.
    m = 10 if quick else 300
    ref, t_ref = _cpu(mled_reference, structures[:m])
    worst = max(_mled_diff(a, b) for a, b in zip(fast, ref))
    metrics["mled_max_abs_diff_fast_vs_reference"] = (worst, "bits", 1e-6, "min")
    metrics["mled_compared_structures"] = (m, "structures", None, "max")
    metrics["mled_reference_per_s"] = (m / t_ref, "structures/s", None, "max")
    notes["mled_verified_subset"] = f"first {m} MP-20 test structures (value, 159-vector, skipped sites)"

    # Funnel: seed-000 constraint set, then A (SPP), B (novel vs MP-20 train formulas), C, D (M_LED > 9).
    train = pd.read_csv(shared_data_dir() / "mp_20_mattergen_cache" / "train_no_coords.csv.gz", usecols=["pretty_formula_derived"])
    reference = ReferenceSet.from_formulas(train["pretty_formula_derived"])
    funnel_n = 50 if quick else n
    start = time.process_time()
    report = run_funnel(structures[:funnel_n], default_stages(reference=reference, spp_table=table))
    t = max(time.process_time() - start, 1e-9)
    metrics["funnel_per_s"] = (funnel_n / t, "structures/s", 50.0, "max")
    notes["funnel_survivors"] = {"input": funnel_n, **dict(report.counts)}
    # Same funnel without D (M_LED), to show where the time goes.
    start = time.process_time()
    run_funnel(structures[:funnel_n], default_stages(reference=reference, spp_table=table)[:-1])
    metrics["funnel_without_mled_per_s"] = (funnel_n / max(time.process_time() - start, 1e-9), "structures/s", None, "max")


def bench_known(quick: bool, metrics: dict, notes: dict) -> None:
    n = 300 if quick else None
    _, structures = mp20_structures("test", n)
    passed, failures = 0, {}
    for s in structures:
        bad = [r.name for r in seed000_checks(s) if not r.passed]
        passed += not bad
        for name in bad:
            failures[name] = failures.get(name, 0) + 1
    metrics["known_pass_fraction"] = (passed / len(structures), "fraction", 0.9, "max")
    notes["known_set"] = f"MP-20 test, {len(structures)} structures"
    notes["known_failures_by_check"] = failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "chem.json"))
    args = parser.parse_args(argv)
    raw: dict = {}
    notes: dict = {}
    wall = time.perf_counter()
    bench_hulls(args.quick, raw)
    bench_structures(args.quick, raw, notes)
    bench_known(args.quick, raw, notes)
    metrics = {k: {"value": float(v), "unit": u, "target": tgt, "direction": d} for k, (v, u, tgt, d) in raw.items()}
    result = {
        "area": "chem",
        "quick": args.quick,
        "env": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pymatgen": version("pymatgen"),
            "spglib": version("spglib"),
            "matminer": version("matminer"),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
        },
        "metrics": metrics,
        "notes": notes,
        "wall_s": time.perf_counter() - wall,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print("| metric | value | unit | target | ok |\n|---|---|---|---|---|")
    for name, m in metrics.items():
        tgt = m["target"]
        ok = "" if tgt is None else ("yes" if (m["value"] >= tgt if m["direction"] == "max" else m["value"] <= tgt) else "NO")
        print(f"| {name} | {m['value']:.4g} | {m['unit']} | {'' if tgt is None else f'{tgt:g}'} | {ok} |")
    print(f"\nnotes: {json.dumps(notes)}\nwritten {out} ({result['wall_s']:.0f} s wall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
