"""Store benchmark: ingest rate with deduplication, query latency, re-ingest, embedded vs wire server.

    python bench/store.py [--quick] [--out FILE] [--keep DIR]

Full: every structure-bearing staged dataset pooled (~71k records, ~44k after deduplication) into
the embedded store, queries at 10k and at the full size, and a 10k ingest + queries on an
nx-27017 wire server. Quick (< 60 s on 2 cores): 1,500 MP-20 val records on both backends.
Ingest is timed from file text to committed documents: reading the CSV files (charged pro rata
when only part of what was read is ingested), parsing every CIF, symmetry, deduplication, writes.
Wall-clock rates depend on the cores and on whatever else runs, so the JSON also records the
cores and workers used, the load average around the run and the CPU seconds the ingest consumed
(this process and its workers), which do not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qadb.store import Query, connect, find, ingest_records, records_from_dataset  # noqa: E402
from qadb.store.documents import LabelDoc, StructureDoc  # noqa: E402
from qadb.store.ingest import default_workers  # noqa: E402

STRUCTURE_DATASETS = ("mp20-val", "mp20-test", "mp20-subsets", "mpts52", "perov5", "carbon24", "mp-elasticity", "aflow-bulk", "fere", "fuse-probes")


def _records(names, limit=None) -> tuple[list, float]:
    """The pooled records and the seconds reading them took, pro rata for the `limit` kept."""
    t = time.perf_counter()
    recs = []
    for name in names:
        recs.extend(records_from_dataset(name))
    seconds = time.perf_counter() - t
    kept = recs[:limit] if limit else recs
    return kept, seconds * len(kept) / len(recs)


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the ingest's worker processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _query_latencies(n_queries: int, seed: int = 0, engine_compare: bool = False) -> dict[str, list[float]]:
    """Wall ms per query kind; the CPU ms of the same calls under ``cpu_<kind>``.

    chemsys, chemsys + property range and formula are equality lookups; ``elements`` is "contains
    A and B" for two elements that occur together in some stored structure (the whole result);
    ``elements_limit`` "contains X" for one element, first 100; ``property_only`` a property
    range with no chemsys, first 100. ``*_engine`` repeats the last three, a few times, the way
    the engine plans them without the SQL indexes (what these queries cost before).
    """
    rng = random.Random(seed)
    coll = StructureDoc._get_collection()
    systems = [d["chemsys"] for d in coll.find({}, {"chemsys": 1})]
    formulas = [d["formula_pretty"] for d in coll.find({}, {"formula_pretty": 1})]
    pairs = sorted({tuple(rng.sample(els, 2)) for els in (s.split("-") for s in systems) if len(els) >= 2})
    singles = sorted({el for s in systems for el in s.split("-")})
    find(Query(chemsys=systems[0]))  # first query builds the engine's in-process indexes
    kinds = {
        "chemsys": lambda: Query(chemsys=rng.choice(systems)),
        "chemsys_property": lambda: Query(chemsys=rng.choice(systems), property="formation_energy_per_atom", value_range=(-5.0, 0.0)),
        "formula": lambda: Query(formula=rng.choice(formulas)),
        "elements": lambda: Query(elements=list(rng.choice(pairs))),
        "elements_limit": lambda: Query(elements=[rng.choice(singles)], limit=100),
        "property_only": lambda: _property_window(rng),
    }
    out: dict[str, list[float]] = {}
    for _ in range(n_queries):
        for kind, make in kinds.items():
            q = make()
            c, t = time.process_time(), time.perf_counter()
            find(q)
            out.setdefault(kind, []).append((time.perf_counter() - t) * 1000)
            out.setdefault("cpu_" + kind, []).append((time.process_time() - c) * 1000)
    for kind in ("elements", "elements_limit", "property_only") if engine_compare else ():
        for _ in range(3):
            q = kinds[kind]()
            c, t = time.process_time(), time.perf_counter()
            find(q, use_index=False)
            out.setdefault(kind + "_engine", []).append((time.perf_counter() - t) * 1000)
            out.setdefault("cpu_" + kind + "_engine", []).append((time.process_time() - c) * 1000)
    return out


def _property_window(rng: random.Random) -> Query:
    prop, lo, hi = rng.choice([("band_gap", 0.0, 6.0), ("formation_energy_per_atom", -4.0, 0.5)])
    a = rng.uniform(lo, hi)
    return Query(property=prop, value_range=(round(a, 2), round(a + (hi - lo) * 0.1, 2)), limit=100)


def _first_query_in_new_process(uri: str) -> dict:
    """A fresh process (as `qadb query --elements Li,O` is): connect read-only, time the first query."""
    code = ("import json,sys,time; from qadb.store import connect, find, Query; s=connect(sys.argv[1], read_only=True); "
            "c,t=time.process_time(),time.perf_counter(); n=len(find(Query(elements=['Li','O']))); "
            "print(json.dumps({'wall_ms':(time.perf_counter()-t)*1000,'cpu_ms':(time.process_time()-c)*1000,'n':n}))")
    res = subprocess.run([sys.executable, "-c", code, uri], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _ingest(uri: str, records, read_s: float, engine_compare: bool = False) -> dict:
    stages: dict[str, float] = {}

    def progress(stage: str, done: int, total: int) -> None:
        stages.setdefault(stage, time.perf_counter())

    with connect(uri) as s:
        load0, cpu0 = os.getloadavg()[0], _cpu_seconds()
        t = time.perf_counter()
        rep = ingest_records(s, records, progress=progress)
        end = time.perf_counter()
        dt = end - t + read_s
        cpu = _cpu_seconds() - cpu0
        load1 = os.getloadavg()[0]
        marks = sorted(stages.items(), key=lambda kv: kv[1]) + [("end", end)]
        phases = {"read": read_s, **{a[0]: b[1] - a[1] for a, b in zip(marks, marks[1:])}}
        n_struct = StructureDoc.objects.count()
        n_labels = LabelDoc.objects.count()
        t = time.perf_counter()
        again = ingest_records(s, records)
        dt_re = time.perf_counter() - t
        load_q = os.getloadavg()[0]
        lat = _query_latencies(20 if len(records) < 5000 else 50, engine_compare=engine_compare)
    first = _first_query_in_new_process(uri) if not uri.startswith("mongodb") else None
    return {"first_query": first, "load_queries": load_q, "seconds": dt, "records": len(records), "structures": n_struct, "labels": n_labels,
            "merged": rep.merged, "reingest_added": again.new_structures + again.new_labels,
            "reingest_s": dt_re, "latency": lat, "cpu_s": cpu + read_s, "phases": phases, "load": (load0, load1)}


def _start_wire(folder: Path) -> tuple[str, list[str]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = shutil.which("nx-27017")
    folder.mkdir(parents=True, exist_ok=True)
    pid = folder / "pid"
    subprocess.run([exe, "-d", "--data-dir", str(folder / "data"), "--host", "127.0.0.1", "--port", str(port),
                    "--pid-file", str(pid), "--log-file", str(folder / "log")], check=True)
    import pymongo

    for _ in range(100):
        try:
            pymongo.MongoClient(f"mongodb://127.0.0.1:{port}", serverSelectionTimeoutMS=300).admin.command("ping")
            break
        except pymongo.errors.PyMongoError:
            time.sleep(0.2)
    return f"mongodb://127.0.0.1:{port}/qadb_bench", [exe, "--stop", "--pid-file", str(pid)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "store.json")
    ap.add_argument("--keep", type=Path, default=None, help="keep the full embedded store here (to compare dedupe outcomes)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="qadb-bench-"))
    metrics: dict[str, dict] = {}

    def put(name, value, unit, target=None, direction="max"):
        metrics[name] = {"value": round(float(value), 4), "unit": unit, "target": target, "direction": direction}

    try:
        if args.quick:
            recs, read_s = _records(["mp20-val"], 1500)
            big = _ingest(str(tmp / "embedded"), recs, read_s)
            label = f"{len(recs)} records"
        else:
            recs, read_s = _records(STRUCTURE_DATASETS)
            small = _ingest(str(tmp / "embedded10k"), recs[:10000], read_s * 10000 / len(recs))
            for kind in ("chemsys", "chemsys_property"):
                put(f"query_p50_ms_10k_{kind}", np.percentile(small["latency"][kind], 50), "ms", 20, "min")
            big = _ingest(str(tmp / "embedded"), recs, read_s, engine_compare=True)
            label = f"{len(recs)} records"
        rate = big["records"] / big["seconds"]
        put("ingest_per_s", rate, "structures/s", 500, "max")
        put("ingest_seconds", big["seconds"], "s", None, "min")
        put("ingest_cpu_ms_per_record", 1000 * big["cpu_s"] / big["records"], "ms", None, "min")
        for phase, seconds in big["phases"].items():
            put(f"ingest_phase_{phase}_s", seconds, "s", None, "min")
        put("ingest_structures_after_dedupe", big["structures"], "count", None, "max")
        put("ingest_records", big["records"], "count", None, "max")
        put("dedupe_merged", big["merged"], "count", None, "max")
        put("reingest_added", big["reingest_added"], "count", 0, "min")
        put("reingest_per_s", big["records"] / big["reingest_s"], "records/s", None, "max")
        both = big["latency"]["chemsys"] + big["latency"]["chemsys_property"]
        put("query_p50_ms", np.percentile(both, 50), "ms", 20, "min")
        put("query_p95_ms", np.percentile(both, 95), "ms", None, "min")
        for kind, vals in big["latency"].items():
            if kind.startswith("cpu_"):
                put(f"query_{kind[4:]}_cpu_p50_ms", np.percentile(vals, 50), "ms", None, "min")
            else:
                put(f"query_{kind}_p50_ms", np.percentile(vals, 50), "ms", 50 if kind in ("elements", "elements_limit", "property_only") else None, "min")
        put("query_elements_first_in_new_process_ms", big["first_query"]["wall_ms"], "ms", None, "min")
        put("query_elements_first_in_new_process_cpu_ms", big["first_query"]["cpu_ms"], "ms", None, "min")
        wire_recs = recs[:1500] if args.quick else recs[:10000]
        if shutil.which("nx-27017"):
            uri, stop = _start_wire(tmp / "wire")
            try:
                w = _ingest(uri, wire_recs, read_s * len(wire_recs) / len(recs))
            finally:
                subprocess.run(stop, capture_output=True)
            put("wire_ingest_per_s", w["records"] / w["seconds"], "structures/s", None, "max")
            wboth = w["latency"]["chemsys"] + w["latency"]["chemsys_property"]
            put("wire_query_p50_ms", np.percentile(wboth, 50), "ms", None, "min")
            put("wire_query_p95_ms", np.percentile(wboth, 95), "ms", None, "min")
            for kind in ("elements", "elements_limit", "property_only"):
                put(f"wire_query_{kind}_p50_ms", np.percentile(w["latency"][kind], 50), "ms", None, "min")
            put("wire_reingest_added", w["reingest_added"], "count", 0, "min")
    finally:
        if args.keep and (tmp / "embedded").exists():
            shutil.copytree(tmp / "embedded", args.keep, dirs_exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    env = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
           "ingest_workers": default_workers(), "load_avg_1m": os.getloadavg()[0],
           "load_avg_1m_ingest_start_end": [round(x, 2) for x in big["load"]],
           "load_avg_1m_queries_start": round(big["load_queries"], 2), "workload": label}
    result = {"area": "store", "quick": args.quick, "env": env, "metrics": metrics}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"| metric | value | unit | target |\n|---|---|---|---|")
    for name, m in metrics.items():
        print(f"| {name} | {m['value']} | {m['unit']} | {m['target'] if m['target'] is not None else ''} |")
    print(f"\n{label}; {env['ingest_workers']} ingest workers on {env['cpus']} cores; load average "
          f"{env['load_avg_1m']:.1f} at the end, {big['load'][0]:.1f} / {big['load'][1]:.1f} at ingest start / end, "
          f"{big['load_queries']:.1f} at query start; "
          f"written to {args.out}")


if __name__ == "__main__":
    main()
