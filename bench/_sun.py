"""S.U.N. rate of generated crystals (MatterGen's definition) against the store, in three steps.

1. `prepare` (CPU, needs the store): the first n generated samples, and the reference phases of every chemical
   system they touch: each stored structure whose elements lie inside a sample's system and whose stored DFT
   formation energy (PBE+U) is within `ref_window` eV/atom of that system's DFT hull, i.e. every phase that can
   define the MLIP hull there, plus every labelled elemental phase of those elements (every stored one where
   none is labelled) and ASE's reference crystal structure of each element (`ase.build.bulk`): the lowest MLIP
   energy per element sets mu. With `--unlabelled`, every stored structure of those systems that has no
   formation-energy label (Carbon-24, Perov-5, FUSE probes, elastic-only MP entries such as SmF3) is relaxed
   as a reference too; without it they are left out and their number is reported (E_hull then only a lower bound).
2. `relax` (CPU or GPU, needs chgnet/ase/pymatgen only): every sample and every reference phase relaxed by the
   same MLIP with the same settings, in parallel processes; one JSON line per structure, so a run cut short by a
   time limit keeps what it finished and a second run skips it.
3. `score` (CPU, needs the store): MLIP formation energies against the lowest relaxed elemental phase of each
   element, the MLIP hull of each system from the reference phases, E_hull of each sample; stable = E_hull ≤ 0.1
   eV/atom, unique = first of its StructureMatcher class among the samples, novel = no stored structure of the
   same reduced formula matches (nor ASE's structure of an element). sun_rate = S.U.N. samples / all n samples (invalid and unscored ones count as
   failures).

    qadb --store DIR ingest --dataset all --skip-bad            # the reference set: every staged structure
    python -m qadb.models.generator.gpu_eval --device cpu --ckpt qadb/data/checkpoints/generator_default.pt \
        --data .gen_scratch/gen_data.pt --gen-n 200 --steps 100 --no-corrector --type-noise 0.7 --out gen.npz
    python bench/_sun.py prepare --npz gen.npz --n 100 --store DIR --ref-window 0.0 --unlabelled --out sun_in.json
    python bench/_sun.py relax --inp sun_in.json --out sun_relaxed.jsonl --procs 2   # or --device cuda --procs 12
    python bench/_sun.py score --inp sun_in.json --relaxed sun_relaxed.jsonl --store DIR --out sun.json
    python bench/generator.py --sun sun.json --update                 # merge sun_rate into the bench JSON

`--ref-window 0.0` relaxes only the phases on the DFT hull (plus the elemental phases): 0.1 eV/atom would add
three times as many structures (2,319 for 200 samples), beyond what 2 CPU cores relax in a session.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STABLE_EV = 0.1  # MatterGen: E_hull <= 0.1 eV/atom
DFT_FIDELITY = "PBE+U"
FORMATION = "formation_energy_per_atom"


def _subsystems(elements: list[str]) -> list[str]:
    els = sorted(elements)
    return ["-".join(c) for k in range(1, len(els) + 1) for c in itertools.combinations(els, k)]


def prepare(npz: str, n: int, store: str, out: str, ref_window: float = 0.1, unlabelled: bool = False) -> dict:
    import numpy as np

    from bench.generator import _structs, struct_valid
    from qadb.chem import HullEntry, build_hull
    from qadb.store import connect
    from qadb.store.documents import LabelDoc, StructureDoc

    connect(store)
    samples = _structs(np.load(npz), "gen", n)
    systems = sorted({"-".join(sorted({sp.symbol for sp in s.species})) for s in samples if struct_valid(s)})
    needed = sorted({sub for cs in systems for sub in _subsystems(cs.split("-"))})
    docs = {d.id: d for d in StructureDoc.objects(chemsys__in=needed).only("id", "structure", "chemsys",
                                                                             "formula_pretty")}
    energy: dict[str, float] = {}
    for lab in LabelDoc.objects(structure__in=list(docs), property=FORMATION, fidelity=DFT_FIDELITY,
                                status="ok").only("structure", "value"):
        energy[lab.structure] = min(lab.value, energy.get(lab.structure, np.inf))
    refs: set[str] = set()
    for cs in systems:
        members = [d for d in docs.values() if set(d.chemsys.split("-")) <= set(cs.split("-")) and d.id in energy]
        if not members:
            continue
        from pymatgen.core import Composition

        entries = [HullEntry.make(d.id, Composition(d.formula_pretty), energy[d.id]) for d in members]
        hull = build_hull(entries, elements=cs.split("-"))
        e_above = hull.e_above_hull([e.composition for e in entries], [e.energy_per_atom for e in entries])
        refs.update(e.id for e, x in zip(entries, e_above) if x <= ref_window + 1e-6)  # on-hull phases read ~1e-12
    # elemental chemical potentials: the store's elemental phases are often metastable polymorphs (MP-20 keeps few
    # ground states: Al only as a phase 0.09 eV/atom above fcc), so every labelled elemental phase of each element
    # (every stored one where none is labelled) and ASE's reference crystal structure of the element (fcc Al, bcc Na,
    # hcp Zn, ...; where ASE has one) are relaxed; the lowest MLIP energy per element sets mu
    labelled_el = {d.chemsys for d in docs.values() if "-" not in d.chemsys and d.id in energy}
    elemental = {d.id for d in docs.values() if "-" not in d.chemsys and (d.id in energy or d.chemsys not in labelled_el)}
    refs |= elemental
    no_label = {d.id for d in docs.values() if d.id not in energy}
    if unlabelled:
        refs |= no_label
    extra = {}
    for el in sorted({e for cs in systems for e in cs.split("-")}):
        try:
            from ase.build import bulk
            from pymatgen.io.ase import AseAtomsAdaptor

            extra[f"ase-{el}"] = AseAtomsAdaptor.get_structure(bulk(el)).as_dict()
        except Exception:  # noqa: BLE001 - molecular or complex ground states (Cl, S, Mn, ...) have none
            continue
    payload = {
        "npz": npz, "n": n, "ref_window_ev": ref_window, "dft_fidelity": DFT_FIDELITY, "unlabelled_relaxed": unlabelled,
        "samples": [s.as_dict() if struct_valid(s) else None for s in samples],
        # relaxed in this order, so a run cut short by a time limit has the phases most likely to define a hull:
        # labelled phases and ASE's elements, then unlabelled compounds, then unlabelled elemental phases (Carbon-24)
        "references": {i: docs[i].structure for i in sorted(refs - no_label)} | extra
                      | {i: docs[i].structure for i in sorted(refs & no_label, key=lambda i: ("-" not in docs[i].chemsys, i))},
        "reference_dft_ef": {i: energy[i] for i in sorted(refs) if i in energy},
        "elemental_phases": len(elemental), "ase_elemental_phases": sorted(extra),
        "store_structures": StructureDoc.objects.count(),
        "subsystem_structures": len(docs), "subsystem_unlabelled": len(no_label), "systems": systems,
    }
    Path(out).write_text(json.dumps(payload))
    return {k: v for k, v in payload.items() if k not in ("samples", "references", "reference_dft_ef", "systems")} | {
        "valid_samples": sum(s is not None for s in payload["samples"]), "references": len(payload["references"]),
        "systems": len(systems)}


def _relax_chunk(args) -> list[dict]:
    items, device, settings, out = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from pymatgen.core import Structure

    from qadb.drivers.relax import RelaxSettings, relax

    rs = RelaxSettings(**settings)
    rows = []
    for key, sdict in items:
        t0 = time.time()
        try:
            r = relax(Structure.from_dict(sdict), rs, device=device, threads=1, allow_unconverged=True)
            row = {"key": key, "energy_per_atom": r.value, "converged": bool(r.converged), "steps": r.steps,
                   "structure": r.structure.as_dict(), "s": round(time.time() - t0, 2)}
        except Exception as exc:  # a run-away or failed relaxation is a recorded failure, not a crash
            row = {"key": key, "error": f"{type(exc).__name__}: {exc}"[:300], "s": round(time.time() - t0, 2)}
        with open(out, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        rows.append(row)
    return rows


def relax_all(inp: str, out: str, device: str = "cpu", procs: int = 2, fmax: float = 0.1, steps: int = 300) -> dict:
    payload = json.loads(Path(inp).read_text())
    done = set()
    if Path(out).exists():
        done = {json.loads(line)["key"] for line in Path(out).read_text().splitlines() if line.strip()}
    todo = [(f"s{i}", s) for i, s in enumerate(payload["samples"]) if s is not None]
    todo += [(f"r:{i}", s) for i, s in payload["references"].items()]
    todo = [t for t in todo if t[0] not in done]
    settings = {"model": "chgnet", "fmax": fmax, "steps": steps}
    t0 = time.time()
    chunks = [todo[k:k + 4] for k in range(0, len(todo), 4)]  # small and in order: a cut-short run keeps the first
    with ProcessPoolExecutor(procs) as pool:
        n = sum(len(rows) for rows in pool.map(_relax_chunk, [(c, device, settings, out) for c in chunks if c]))
    return {"relaxed_now": n, "skipped_done": len(done), "wall_s": round(time.time() - t0, 1), "settings": settings,
            "device": device, "procs": procs}


def score(inp: str, relaxed: str, store: str, out: str | None = None) -> dict:
    import numpy as np
    from pymatgen.core import Composition, Structure

    from bench.generator import wilson_ci
    from qadb.chem import HullEntry, ReferenceSet, build_hull, unique_indices
    from qadb.store import connect
    from qadb.store.documents import StructureDoc

    payload = json.loads(Path(inp).read_text())
    rows = {}
    for line in Path(relaxed).read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows[r["key"]] = r
    ok = {k: r for k, r in rows.items() if "energy_per_atom" in r}
    # only this payload's references: a relaxed file reused from another run may hold phases of other systems
    own_refs = [k for k in rows if k.startswith("r:") and k[2:] in payload["references"]]
    ref_keys = [k for k in own_refs if k in ok]
    # elemental chemical potentials: the lowest relaxed elemental phase of each element
    mu: dict[str, float] = {}
    for k in ref_keys:
        comp = Structure.from_dict(ok[k]["structure"]).composition
        if len(comp.elements) == 1:
            el = comp.elements[0].symbol
            mu[el] = min(mu.get(el, np.inf), ok[k]["energy_per_atom"])

    def formation(r: dict) -> tuple[Composition, float] | None:
        comp = Structure.from_dict(r["structure"]).composition
        if any(el.symbol not in mu for el in comp.elements):
            return None
        ef = r["energy_per_atom"] - sum(comp.get_atomic_fraction(el) * mu[el.symbol] for el in comp.elements)
        return comp, ef

    ref_entries = []
    for k in ref_keys:
        f = formation(ok[k])
        if f is not None:
            ref_entries.append(HullEntry.make(k, f[0], f[1]))
    labelled = payload["reference_dft_ef"]
    n_unlabelled = sum(1 for k in ref_keys if not k.startswith("r:ase-") and k[2:] not in labelled)
    n = payload["n"]
    structures, e_hull, status = {}, {}, {}
    for i, sdict in enumerate(payload["samples"]):
        key = f"s{i}"
        if sdict is None:
            status[i] = "invalid"
            continue
        r = ok.get(key)
        if r is None:
            status[i] = "relax_failed" if key in rows else "not_relaxed"
            continue
        f = formation(r)
        if f is None:
            status[i] = "no_elemental_reference"
            continue
        els = sorted(el.symbol for el in f[0].elements)
        hull = build_hull([e for e in ref_entries if set(e.composition) <= set(els)], elements=els)
        e_hull[i] = float(hull.e_above_hull([f[0]], [f[1]])[0])
        structures[i] = Structure.from_dict(r["structure"])
        status[i] = "scored"
    stable = [i for i, e in e_hull.items() if e <= STABLE_EV]
    order = sorted(structures)
    uniq = {order[j] for j in unique_indices([structures[i] for i in order])}
    connect(store)
    formulas = sorted({structures[i].composition.reduced_formula for i in stable})
    # known = the store's structures of those formulas, and the ASE elemental structures used as references
    # (the store lacks many elemental ground states, e.g. fcc Al: a sample equal to one is not novel)
    ase_known = [Structure.from_dict(sd) for k, sd in payload["references"].items() if k.startswith("ase-")]
    known = ReferenceSet.from_structures(
        [Structure.from_dict(d.structure) for d in StructureDoc.objects(formula_pretty__in=formulas).only("structure")]
        + [s for s in ase_known if s.composition.reduced_formula in formulas])
    novel = {i for i in stable if known.is_novel(structures[i])}
    sun = [i for i in stable if i in uniq and i in novel]
    counts = {s: sum(1 for v in status.values() if v == s) for s in sorted(set(status.values()))}
    res = {
        "sun_rate": round(100.0 * len(sun) / n, 2),
        "sun_rate_ci95": wilson_ci(len(sun), n),
        "sun_n": n, "sun_count": len(sun), "sun_stable_rate": round(100.0 * len(stable) / n, 2),
        "sun_stable_unique_rate": round(100.0 * len([i for i in stable if i in uniq]) / n, 2),
        "sun_status_counts": counts,
        "sun_e_hull_median_ev": round(float(np.median(list(e_hull.values()))), 4) if e_hull else None,
        "sun_reference_phases_relaxed": len(ref_keys), "sun_reference_failed": len(own_refs) - len(ref_keys),
        "sun_store_structures": payload["store_structures"],
        "sun_subsystem_structures": payload["subsystem_structures"],
        "sun_subsystem_unlabelled": payload["subsystem_unlabelled"],
        "sun_unlabelled_relaxed": n_unlabelled,
        "sun_references_not_relaxed": len(payload["references"]) - len(ref_keys),
        "sun_note": (f"first {n} ab initio samples of {payload['npz']}; CHGNet relaxation of samples and of the "
                     f"{len(ref_keys)} reference phases: those within {payload['ref_window_ev']} eV/atom of the "
                     f"{payload['dft_fidelity']} hull of every touched system, labelled elemental phases and ASE's "
                     f"elemental crystals, and {n_unlabelled} of the {payload['subsystem_unlabelled']} stored "
                     f"structures of those systems without a formation-energy label"
                     + f"; reference set = the {payload['store_structures']} structures in the store"),
    }
    res["sun_caveat"] = ("each MLIP hull is built only from the store's phases of that system, and the store lacks many "
                         "known phases (MP-20-derived: few elemental ground states, sparse quaternary and higher "
                         "systems), so E_hull is a lower bound and the rate is higher than against a full reference "
                         "such as MatterGen's Alex-MP-ICSD; CHGNet energies, not DFT")
    if n_unlabelled < payload["subsystem_unlabelled"]:
        res["sun_caveat"] += (f"; {payload['subsystem_unlabelled'] - n_unlabelled} structures of the touched systems "
                              "without a formation-energy label were not relaxed, which can only lower E_hull further")
    if out:
        Path(out).write_text(json.dumps(res, indent=1))
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--npz", required=True)
    p.add_argument("--n", type=int, default=250)
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--ref-window", type=float, default=0.1,
                   help="eV/atom above the DFT hull for a stored phase to be relaxed as a reference")
    p.add_argument("--unlabelled", action="store_true",
                   help="also relax every stored structure of the touched systems without a formation-energy label")
    r = sub.add_parser("relax")
    r.add_argument("--inp", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--device", default="cpu")
    r.add_argument("--procs", type=int, default=2)
    r.add_argument("--fmax", type=float, default=0.1)
    r.add_argument("--steps", type=int, default=300)
    s = sub.add_parser("score")
    s.add_argument("--inp", required=True)
    s.add_argument("--relaxed", required=True)
    s.add_argument("--store", required=True)
    s.add_argument("--out")
    a = ap.parse_args(argv)
    if a.cmd == "prepare":
        res = prepare(a.npz, a.n, a.store, a.out, a.ref_window, a.unlabelled)
    elif a.cmd == "relax":
        res = relax_all(a.inp, a.out, a.device, a.procs, a.fmax, a.steps)
    else:
        res = score(a.inp, a.relaxed, a.store, a.out)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
