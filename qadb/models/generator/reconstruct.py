"""Reconstruct MP-20 training crystals whose coordinates are missing, by prototype transfer (CPU side, pymatgen).

The staged MP-20 train split (27,136 rows, ``mp_20_mattergen_cache/train_no_coords``) keeps each crystal's
species in site order, its cell (a, b, c, α, β, γ) and its DFT formation energy, but not its atomic positions.
Most of these crystals share a prototype with a crystal of the training pool. For each row:

1. take the pool crystals with the same number of sites and the same element counts (anonymous formula) whose
   Niggli-reduced cell has the same shape (lengths over V^(1/3) within ``tol_length``, angles within
   ``tol_angle`` degrees); keep the ``k`` closest;
2. put each template's fractional coordinates into the row's own Niggli cell, with the row's elements assigned
   to the template's by element count and electronegativity rank, and every other assignment among elements of
   equal count as further candidates;
3. keep the candidate of lowest single-point MLIP energy (CHGNet);
4. drop the row if that candidate's formation energy (CHGNet energy minus elemental references fitted on the pool's
   real crystals) lies ``MAX_EF_RESIDUAL`` or more from the row's DFT formation energy.

The MP-20 test split is never read. ``validate`` measures the method on the 1,000 pilot-train rows, whose true
structures are staged: each is rebuilt with its own crystal left out of the templates and compared with
StructureMatcher (the CSP metric's tolerances), before and after step 4.

Usage::

    python -m qadb.models.generator.reconstruct --data .gen_scratch/dev/gen_data_m.pt --validate
    python -m qadb.models.generator.reconstruct --data .gen_scratch/dev/gen_data_m.pt \
        --out .gen_scratch/gen_data_recon.pt [--limit N]
    python -m qadb.models.generator.reconstruct --data OLD_EXTENDED.pt --check-only --out NEW.pt  # step 4 only
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from qadb.models.generator.conditions import PROPS
from qadb.models.generator.api import to_structures
from qadb.models.generator.prepare import (atomic_radii, data_root, fill_mled_rows, pack, snap_frac, split_rows,
                                          tensor_hash)
from qadb.models.generator.templates import element_roles

SOURCE = "mp20_train_recon"
MAX_EF_RESIDUAL = 0.1  # eV/atom between the CHGNet estimate and the row's DFT formation energy


def cell_shape(lattice):
    """The Niggli-reduced cell and its shape: lengths over V^(1/3), then the three angles (degrees)."""
    niggli = lattice.get_niggli_reduced_lattice()
    v = niggli.volume ** (1.0 / 3.0)
    return niggli, np.array([niggli.a / v, niggli.b / v, niggli.c / v, *niggli.angles])


@dataclass
class _Template:
    shape: np.ndarray
    types: np.ndarray
    frac: np.ndarray  # in the template's Niggli cell
    order: list[int]
    material_id: str


class TemplateIndex:
    """Pool crystals keyed by (number of sites, element counts), for prototype transfer."""

    def __init__(self, pool: dict, tol_length: float = 0.05, tol_angle: float = 4.0, k: int = 5,
                 max_assignments: int = 6):
        from pymatgen.core import Lattice

        self.tol_length, self.tol_angle, self.k, self.max_assignments = tol_length, tol_angle, k, max_assignments
        self.by_key: dict[tuple, list[_Template]] = defaultdict(list)
        for i, (zs, frac, matrix) in enumerate(split_rows(pool)):
            counts, order = element_roles(zs)
            lat = Lattice(matrix)
            niggli, shape = cell_shape(lat)
            f = (frac @ lat.matrix @ np.linalg.inv(niggli.matrix)) % 1.0
            self.by_key[(len(zs), counts)].append(_Template(shape, zs, f, order, pool["material_id"][i]))

    def candidates(self, species: list[str], abc, angles, exclude_id: str | None = None) -> list:
        """Candidate structures for one row (closest templates first), empty when no template fits."""
        from pymatgen.core import Element, Lattice, Structure

        zs = [Element(s).Z for s in species]
        counts, order = element_roles(zs)
        niggli, shape = cell_shape(Lattice.from_parameters(*abc, *angles))
        scored = []
        for t in self.by_key.get((len(zs), counts), []):
            if exclude_id is not None and t.material_id == exclude_id:
                continue
            dl = float(np.max(np.abs(t.shape[:3] - shape[:3]) / shape[:3]))
            da = float(np.max(np.abs(t.shape[3:] - shape[3:])))
            if dl <= self.tol_length and da <= self.tol_angle:
                scored.append((dl / self.tol_length + da / self.tol_angle, t))
        scored.sort(key=lambda p: p[0])
        groups: dict[int, list[int]] = defaultdict(list)  # element count -> role positions
        for j, c in enumerate(counts):
            groups[c].append(j)
        roles = [j for g in groups.values() for j in g]
        assignments = list(itertools.islice(
            itertools.product(*[itertools.permutations(g) for g in groups.values()]), self.max_assignments))
        out = []
        for _, t in scored[:self.k]:
            for a in assignments:
                new = {t.order[src]: order[dst] for src, dst in zip(roles, [j for p in a for j in p])}
                out.append(Structure(niggli, [new[int(z)] for z in t.types], t.frac))
        return out


def reconstruct_rows(rows: pd.DataFrame, index: TemplateIndex, exclude_self: bool = False,
                     chunk: int = 1000) -> list:
    """One structure (or None) per row: the candidate of lowest CHGNet energy. Works ``chunk`` rows at a time,
    so that the candidates of only one chunk are held in memory."""
    from qadb.models.validator.mlip_member import mlip_energy_per_atom

    out, t0, n_cand = [], time.time(), 0
    for lo in range(0, len(rows), chunk):
        cands, spans = [], []
        for _, r in rows.iloc[lo:lo + chunk].iterrows():
            c = index.candidates(ast.literal_eval(r.species), (r.a, r.b, r.c), (r.alpha, r.beta, r.gamma),
                                 r.material_id if exclude_self else None)
            spans.append((len(cands), len(c)))
            cands += c
        e = mlip_energy_per_atom(cands, batch_size=64)
        out += [cands[a + int(np.argmin(e[a:a + n]))] if n else None for a, n in spans]
        n_cand += len(cands)
        print(f"rows {len(out)}/{len(rows)}: {sum(s is not None for s in out)} rebuilt from {n_cand} candidates "
              f"({time.time() - t0:.0f}s)", flush=True)
    return out


def _structures(d: dict, rows) -> list:
    t = _take(d, np.asarray(rows, dtype=np.int64))
    return to_structures(t["types"].long(), t["frac"], t["lattice"], t["num_atoms"].long())


def formation_energy_model(pool: dict, n_real: int, exclude_ids=frozenset(), ridge: float = 1e-3):
    """A function giving each structure's formation energy on the DFT (MP) scale from its CHGNet energy.

    CHGNet's energy per atom minus a reference energy per element, fitted by ridge regression over the first
    ``n_real`` pool crystals (real coordinates) that carry a DFT formation energy, ``exclude_ids`` left out.
    A structure with an element the fit has not seen gets NaN."""
    from qadb.models.validator.mlip_member import mlip_energy_per_atom

    ef = pool["props"][:, PROPS.index("formation_energy")].numpy()
    rows = [i for i in range(n_real) if np.isfinite(ef[i]) and pool["material_id"][i] not in exclude_ids]
    structs = _structures(pool, rows)
    col = {z: k for k, z in enumerate(sorted({z for st in structs for z in st.atomic_numbers}))}

    def fractions(ss) -> np.ndarray:
        x = np.zeros((len(ss), len(col)))
        for i, st in enumerate(ss):
            if not set(st.atomic_numbers) <= col.keys():
                x[i] = np.nan
                continue
            for z in st.atomic_numbers:
                x[i, col[z]] += 1.0 / len(st)
        return x

    x = fractions(structs)
    y = mlip_energy_per_atom(structs, batch_size=64) - ef[rows]
    mu = np.linalg.solve(x.T @ x + ridge * np.eye(len(col)), x.T @ y)
    print(f"elemental references fitted on {len(rows)} crystals (MAE {np.mean(np.abs(y - x @ mu)):.3f} eV/atom)",
          flush=True)
    return lambda ss: mlip_energy_per_atom(ss, batch_size=64) - fractions(ss) @ mu


def _take(d: dict, rows: np.ndarray) -> dict:
    """The packed crystals ``rows`` of ``d``."""
    ptr = np.concatenate([[0], np.cumsum(d["num_atoms"].numpy().astype(np.int64))])
    sites = torch.from_numpy(np.concatenate([np.arange(ptr[i], ptr[i + 1]) for i in rows] + [np.zeros(0, np.int64)]))
    r = torch.from_numpy(rows.astype(np.int64))
    return {k: (v[sites] if k in ("types", "frac") else v if k == "radii" else v[r]
                if isinstance(v, torch.Tensor) else [v[i] for i in rows]) for k, v in d.items()}


def energy_check(blob: dict, max_residual: float = MAX_EF_RESIDUAL) -> dict:
    """``blob`` without the rebuilt rows whose CHGNet formation energy is ``max_residual`` eV/atom or more away
    from the row's DFT formation energy (or cannot be estimated): a wrong arrangement usually costs energy."""
    meta = json.loads(blob["meta_json"])
    train, n_real = blob["train"], int(meta["n_real_train"])
    n = len(train["num_atoms"])
    estimate = formation_energy_model(train, n_real)
    ef = train["props"][n_real:, PROPS.index("formation_energy")].numpy()
    residual = np.abs(estimate(_structures(train, range(n_real, n))) - ef)
    keep = np.concatenate([np.arange(n_real), n_real + np.flatnonzero(residual < max_residual)])
    train = _take(train, keep)
    meta["counts"][SOURCE].update(kept=len(keep) - n_real, removed_energy_check=n - len(keep),
                                  max_ef_residual_ev=max_residual)
    meta.update(n_train=len(keep), train_hash=tensor_hash(train))
    return {**blob, "train": train, "meta_json": json.dumps(meta)}


def train_rows() -> pd.DataFrame:
    return pd.read_csv(data_root() / "mp_20_mattergen_cache/train_no_coords.csv.gz")


def validate(pool: dict) -> dict:
    """Coverage and precision on the pilot-train rows, each rebuilt without its own crystal, before and after
    the energy check (whose elemental references are then fitted without the pilot crystals)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    pilot = pd.read_csv(data_root() / "mp_20_subsets/pilot_train.csv.gz")
    truth = {m: Structure.from_str(c, fmt="cif") for m, c in zip(pilot.material_id, pilot.cif)}
    rows = train_rows()
    rows = rows[rows.material_id.isin(truth)]
    got = reconstruct_rows(rows, TemplateIndex(pool), exclude_self=True)
    sm = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    built = [(m, s, ef) for m, s, ef in zip(rows.material_id, got, rows.formation_energy_per_atom) if s is not None]
    ok = np.array([sm.fit(s, truth[m]) for m, s, _ in built])
    estimate = formation_energy_model(pool, len(pool["num_atoms"]), exclude_ids=set(truth))
    passed = np.abs(estimate([s for _, s, _ in built]) - np.array([ef for *_, ef in built])) < MAX_EF_RESIDUAL
    return {"rows": len(rows), "rebuilt": len(built), "matched": int(ok.sum()),
            "precision": round(float(ok.mean()), 4), "after_energy_check": int(passed.sum()),
            "matched_after_energy_check": int(ok[passed].sum()), "precision_after_energy_check":
            round(float(ok[passed].mean()), 4)}


def extend(blob: dict, limit: int = 0, workers: int = 2) -> dict:
    """``blob`` with the reconstructed MP-20 train rows that pass the energy check appended to its training pool
    (ids already there skipped)."""
    pool = blob["train"]
    index = TemplateIndex(pool)
    rows = train_rows()
    rows = rows[~rows.material_id.isin(set(pool["material_id"]))]
    if limit:
        rows = rows.head(limit)
    got = reconstruct_rows(rows, index)
    records = []
    for (_, r), s in zip(rows.iterrows(), got):
        if s is None:
            continue
        props = {"formation_energy": float(r.formation_energy_per_atom), "band_gap": float(r.band_gap)}
        records.append(dict(source=SOURCE, material_id=r.material_id, types=np.array(s.atomic_numbers, np.int16),
                            frac=snap_frac(s.frac_coords), lattice=s.lattice.matrix.astype(np.float32),
                            formula=s.composition.reduced_formula, props=props))
    new = pack(records, atomic_radii())
    fill_mled_rows(new, workers)
    train = {k: (torch.cat([pool[k], new[k]]) if isinstance(pool[k], torch.Tensor) and k != "radii"
                 else pool[k] + new[k] if isinstance(pool[k], list) else pool[k]) for k in pool}
    meta = json.loads(blob["meta_json"])
    meta["counts"][SOURCE] = {"rows": int(len(rows)), "rebuilt": len(records), "kept": len(records)}
    meta.update(n_train=len(train["num_atoms"]), train_hash=tensor_hash(train), recon_from=meta["train_hash"],
                n_real_train=len(pool["num_atoms"]))
    return energy_check({**blob, "train": train, "meta_json": json.dumps(meta)})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="tensor file from qadb.models.generator.prepare")
    ap.add_argument("--out", help="write the extended tensor file here")
    ap.add_argument("--validate", action="store_true", help="measure coverage and precision on pilot-train rows")
    ap.add_argument("--check-only", action="store_true",
                    help="--data is already extended: only apply the energy check (files written before it existed)")
    ap.add_argument("--limit", type=int, default=0, help="first N train rows only (debug)")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    if not Path(a.data).is_file():
        sys.exit(f"error: tensor file not found: {a.data}")
    blob = torch.load(a.data, map_location="cpu", weights_only=True)
    if a.check_only and "n_real_train" not in json.loads(blob["meta_json"]):
        sys.exit(f"error: {a.data} has no rebuilt rows to check; run without --check-only")
    if a.validate:
        print(json.dumps(validate(blob["train"])))
    if a.out:
        t0 = time.time()
        out = energy_check(blob) if a.check_only else extend(blob, a.limit, a.workers)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, a.out)
        meta = json.loads(out["meta_json"])
        print(json.dumps({k: meta[k] for k in ("n_train", "n_real_train", "train_hash")} | meta["counts"][SOURCE]))
        print(f"wrote {a.out} in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
