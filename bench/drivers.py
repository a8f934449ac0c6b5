"""Drivers benchmark: job-tracking overhead, MLIP relaxation throughput and PySCF labelling times on CPU.

    python bench/drivers.py [--quick] [--out FILE]

Prints a markdown table and writes {"area": "drivers", "quick", "env", "metrics"} JSON
(default bench/results/drivers.json). --quick (< 60 s on 2 idle cores): 20 tracked trivial jobs, one CHGNet
run per size, PySCF PBE on a Γ-point 2-atom cell. Full: 200 tracked jobs; CHGNet and SevenNet-0; PySCF
PBE/r2SCAN/PBE0/HSE06 on 2-atom Si with the default kspacing (2x2x2), PBE and PBE0 on 4- and 8-atom Si,
CCSD(T) at Γ on 2 and 8 atoms, and the PBE formation energy of MgO (3x3x3 k) against experiment. Targets are
this project's working goals, not published numbers. `--mlip-only --device cuda` times only the MLIP relaxations
(what the GPU machine, which has no jobflow or PySCF, can run).

`job_overhead_ms`: per job, (a trivial job run as a tracked jobflow job on the embedded store) minus
(the same function called bare). The tracked path is what `qadb.workflows.run_makers` does per
structure: jobflow `run_locally`, claim of the job record, the result blob in GridFS, one label,
conflict check, finishing the record. `job_cached_ms` is asking again for a job already completed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

warnings.filterwarnings("ignore")

from ase.build import bulk  # noqa: E402
from pymatgen.io.ase import AseAtomsAdaptor  # noqa: E402

from qadb.drivers import PySCFSettings, RelaxSettings, input_hash, kmesh_for, load_mlip, pyscf_label, relax  # noqa: E402
from qadb.fidelity import slug  # noqa: E402

# Working goals: screening ~500 candidates per campaign cycle on a workstation; DFT labels within minutes.
RELAX_TARGET_PER_MIN = {8: 20.0, 16: 10.0}
PYSCF_TARGET_S = {2: 60.0, 4: 300.0, 8: 900.0}
JOB_OVERHEAD_TARGET_MS = 50.0


def job_overhead(n: int) -> tuple[float, float]:
    """(ms per job of tracking, ms per cached re-ask) on a fresh embedded store."""
    from _drivers_jobs import TrivialMaker, trivial  # jobflow-based; the GPU machine runs --mlip-only without it

    from qadb.workflows import run_makers
    from qadb.store import connect, ingest_records
    from qadb.store.readers import RawRecord

    with tempfile.TemporaryDirectory() as folder, connect(folder) as store:
        ingest_records(store, [RawRecord(where="bench:0", fmt="dict", payload=si_cell(2).as_dict(), source="bench")])
        from qadb.store.documents import StructureDoc

        sid = StructureDoc.objects.first().id
        run_makers(TrivialMaker(settings=-1), [sid], store=store)  # warm-up: imports, indexes, jobflow
        structure = si_cell(2)
        start = time.perf_counter()
        for seed in range(n):
            trivial(structure, seed)
        bare = time.perf_counter() - start
        start = time.perf_counter()
        for seed in range(n):
            (out,) = run_makers(TrivialMaker(settings=seed), [sid], store=store)
            assert out.ok and not out.cached
        tracked = time.perf_counter() - start
        start = time.perf_counter()
        for seed in range(n):
            assert run_makers(TrivialMaker(settings=seed), [sid], store=store)[0].cached
        cached = time.perf_counter() - start
    return (tracked - bare) / n * 1000, cached / n * 1000


def si_cell(natoms: int, seed: int = 0):
    """Si cell with `natoms` (2 primitive, 4 = 2x1x1 primitive, 8 cubic, 16 = 2x1x1 cubic), rattled and squeezed 3 %."""
    atoms = {2: bulk("Si"), 4: bulk("Si") * (2, 1, 1), 8: bulk("Si", cubic=True), 16: bulk("Si", cubic=True) * (2, 1, 1)}[natoms]
    atoms.set_cell(atoms.cell * 0.97, scale_atoms=True)
    atoms.rattle(0.05, seed=seed)
    return AseAtomsAdaptor.get_structure(atoms)


def relax_rate(model: str, natoms: int, n: int, device: str = "cpu") -> float:
    """Converged relaxations per minute (fmax 0.05 eV/Å, FIRE + FrechetCellFilter, 1 CPU thread)."""
    settings = RelaxSettings(model=model)
    load_mlip(model, device=device)  # loading is a once-per-process cost, not part of the rate
    relax(si_cell(natoms, seed=99), settings, device=device)  # warm-up (first-call compilation, CUDA context)
    start = time.perf_counter()
    for seed in range(n):
        relax(si_cell(natoms, seed), settings, device=device)
    return n / ((time.perf_counter() - start) / 60)


def pyscf_time(level: str, natoms: int, settings: PySCFSettings) -> tuple[float, list[int]]:
    structure = si_cell(natoms) if natoms != 2 else AseAtomsAdaptor.get_structure(bulk("Si"))
    result = pyscf_label(structure, settings)
    return result.wall_time_s, list(kmesh_for(structure, settings))


MGO_EXP_EV_PER_ATOM = -3.11  # ΔH_f(MgO) = -601.6 kJ/mol (NIST-JANAF), per atom


def mgo_formation(settings: PySCFSettings) -> tuple[float, float]:
    """(E_f in eV/atom, wall s) of rock-salt MgO against Mg (hcp) and O2 references at the same level."""
    from pymatgen.core import Lattice, Structure

    from qadb.drivers.references import formation_energy_per_atom, reference_energy

    mgo = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.212), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    mgo = mgo.get_primitive_structure()
    start = time.perf_counter()
    result = pyscf_label(mgo, settings)
    # the metal needs smearing; the insulator and the (triplet) molecule are run without
    refs = {"Mg": reference_energy("Mg", replace(settings, smearing_eV=0.1)).value,
            "O": reference_energy("O", settings).value}
    return formation_energy_per_atom(result.energy_eV, mgo.composition, refs), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="bench/results/drivers.json")
    parser.add_argument("--mlip-only", action="store_true",
                        help="only the MLIP relaxation rates (what the GPU machine, without jobflow/pyscf, can run)")
    parser.add_argument("--device", default="cpu", help="torch device of the MLIPs, e.g. cuda")
    parser.add_argument("--models", nargs="+", help="MLIPs to time (default: chgnet, plus sevennet-0 unless --quick)")
    args = parser.parse_args()
    suffix = "" if args.device == "cpu" else f"_{args.device.split(':')[0]}"

    metrics: dict[str, dict] = {}
    notes: dict[str, str] = {}

    def put(name: str, value: float, unit: str, target: float, direction: str, note: str) -> None:
        metrics[name] = {"value": round(value, 3), "unit": unit, "target": target, "direction": direction}
        notes[name] = note
        print(f"  {name}: {value:.3f} {unit}  ({note})", file=sys.stderr, flush=True)

    n_jobs = 20 if args.quick else 200
    if not args.mlip_only:
        overhead_ms, cached_ms = job_overhead(n_jobs)
        put("job_overhead_ms", overhead_ms, "ms", JOB_OVERHEAD_TARGET_MS, "min", f"tracked trivial job minus bare call, "
            f"embedded store, {n_jobs} jobs (jobflow run_locally + record + blob + label)")
        put("job_cached_ms", cached_ms, "ms", JOB_OVERHEAD_TARGET_MS, "min",
            f"asking again for a completed job, embedded store, {n_jobs} jobs")

    models = args.models or (["chgnet"] if args.quick else ["chgnet", "sevennet-0"])
    for model in models:
        for natoms in (8, 16):
            name = f"mlip_relax_per_min_{natoms}atoms" + ("" if model == "chgnet" else f"_{slug(model)}") + suffix
            n = 1 if args.quick else 5
            put(name, relax_rate(model, natoms, n, args.device), "relaxations/min", RELAX_TARGET_PER_MIN[natoms],
                "max", f"{load_mlip(model).fidelity}, Si{natoms} squeezed 3 % + rattled, {n} runs, {args.device}")

    if args.mlip_only:
        plan = []
    elif args.quick:
        plan = [("PBE", 2, PySCFSettings(level="PBE", kmesh=(1, 1, 1)))]
    else:
        plan = [(lvl, 2, PySCFSettings(level=lvl)) for lvl in ("PBE", "r2SCAN", "PBE0", "HSE06")]
        plan += [(lvl, n, PySCFSettings(level=lvl)) for n in (4, 8) for lvl in ("PBE", "PBE0")]
        plan += [("CCSD(T)", n, PySCFSettings(level="CCSD(T)", kmesh=(1, 1, 1))) for n in (2, 8)]
    for level, natoms, settings in plan:
        seconds, kmesh = pyscf_time(level, natoms, settings)
        put(f"pyscf_{slug(level)}_{natoms}atom_s", seconds, "s", PYSCF_TARGET_S[natoms], "min",
            f"Si{natoms} {settings.basis}/{settings.pseudo} {settings.density_fit} k={'x'.join(map(str, kmesh))}")

    if not args.quick and not args.mlip_only:
        mgo = PySCFSettings(level="PBE", kmesh=(3, 3, 3))
        e_f, seconds = mgo_formation(mgo)
        setup = (f"MgO {mgo.basis}/{mgo.pseudo} k=3x3x3 vs Mg hcp (kspacing, 0.1 eV smearing) and O2; "
                 f"{seconds:.0f} s")
        put("pyscf_pbe_mgo_formation_ev_per_atom", e_f, "eV/atom", None, "min", setup)
        put("pyscf_pbe_mgo_formation_abs_err_vs_exp_ev_per_atom", abs(e_f - MGO_EXP_EV_PER_ATOM), "eV/atom", 0.5,
            "min", f"abs(E_f - ({MGO_EXP_EV_PER_ATOM})), experiment NIST-JANAF")

    env = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
           "load_avg_1min_at_end": round(os.getloadavg()[0], 2), "threads": 1,
           **{pkg: _version(pkg) for pkg in ("torch", "chgnet", "sevenn", "pyscf", "ase", "pymatgen", "jobflow",
                                               "fireworks", "litemongo")},
           "notes": notes}
    if args.device != "cpu":
        import torch

        env["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else args.device
    out = {"area": "drivers", "quick": args.quick, "env": env, "metrics": metrics}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print("| metric | value | unit | target | direction | setup |\n|---|---|---|---|---|---|")
    for name, m in metrics.items():
        print(f"| {name} | {m['value']} | {m['unit']} | {m['target']} | {m['direction']} | {notes[name]} |")


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
