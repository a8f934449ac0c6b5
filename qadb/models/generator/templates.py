"""Prototype guesses for structure prediction: known crystals of the same anonymous formula, elements substituted.

MP-20's test crystals mostly repeat prototypes of its training crystals, so a composition's first guess can come
from them: the training crystals with the same number of sites and the same element counts (anonymous formula),
ranked by how alike their elements are to the target's once each is put on the other's role (count, then
electronegativity). The best guess, its cell scaled isotropically to the target's atomic volumes, is the
structure that ``sample_tensors(init=..., t_start=...)`` refines (``api.sample(prior=index)``). Composition
only: no target cell, energy or symmetry is used. CPU side (pymatgen for the element data).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice

import numpy as np

from qadb.models.generator.prepare import atomic_radii, split_rows

RADIUS_WEIGHT = 2.0  # Å of radius difference count as much as this many Pauling units
DEFAULT_RADIUS = 1.5  # Å, where pymatgen has no atomic radius


@lru_cache(maxsize=None)
def _pauling(z: int) -> float:
    import warnings

    from pymatgen.core import Element

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for the noble gases, which have no Pauling value
        x = Element.from_Z(int(z)).X
    return 4.0 if np.isnan(x) else float(x)  # noble gases: most electronegative


@lru_cache(maxsize=1)
def _radii() -> np.ndarray:
    r = atomic_radii()
    return np.where(r > 0, r, DEFAULT_RADIUS)


def element_roles(zs) -> tuple[tuple[int, ...], list[int]]:
    """Element counts in ascending order and the elements in that order (ties: by electronegativity, then Z).

    The counts are the anonymous formula of the cell; the order is how one crystal's elements are put on
    another's sites."""
    count: dict[int, int] = defaultdict(int)
    for z in zs:
        count[int(z)] += 1
    order = sorted(count, key=lambda z: (count[z], _pauling(z), z))
    return tuple(count[z] for z in order), order


def element_distance(a: list[int], b: list[int]) -> float:
    """How unlike two role-aligned element lists are: |ΔX| (Pauling) + RADIUS_WEIGHT·|Δr| (Å), summed."""
    r = _radii()
    return float(sum(abs(_pauling(x) - _pauling(y)) + RADIUS_WEIGHT * abs(r[x - 1] - r[y - 1]) for x, y in zip(a, b)))


@dataclass(frozen=True)
class Guess:
    """One prototype guess: the target's types on the template's sites, fractional coordinates, lattice rows (Å)."""

    types: np.ndarray
    frac: np.ndarray
    lattice: np.ndarray
    distance: float
    source: str


class PrototypeIndex:
    """Known crystals keyed by (number of sites, anonymous formula)."""

    def __init__(self, crystals, ids: list[str] | None = None):
        """crystals: iterable of (types [n], frac [n,3], lattice rows [3,3] Å)."""
        self.by_key: dict[tuple, list[tuple]] = defaultdict(list)
        for i, (zs, frac, lattice) in enumerate(crystals):
            zs = np.asarray(zs, dtype=int)
            counts, order = element_roles(zs)
            self.by_key[(len(zs), counts)].append(
                (zs, np.asarray(frac, dtype=float), np.asarray(lattice, dtype=float), order,
                 ids[i] if ids else str(i)))

    @classmethod
    def from_packed(cls, d: dict) -> "PrototypeIndex":
        """From a packed crystal set (``prepare.pack``: num_atoms, types, frac, lattice, material_id)."""
        return cls(split_rows(d), list(d.get("material_id") or []) or None)

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_key.values())

    def guesses(self, zs, k: int = 1) -> list[Guess]:
        """The k closest prototype guesses for a cell with these atomic numbers (site order kept); [] if none."""
        zs = np.asarray(zs, dtype=int)
        counts, order = element_roles(zs)
        scored = sorted(((element_distance(t[3], order), j, t)
                         for j, t in enumerate(self.by_key.get((len(zs), counts), []))), key=lambda p: p[:2])
        r = _radii()
        out = []
        for dist, _, (tz, tfrac, tlat, torder, source) in scored[:k]:
            role = dict(zip(torder, order))
            sub = np.array([role[int(z)] for z in tz])
            # put the target's own site list on the template's sites: the i-th atom of element e takes the i-th
            # template site of the element playing e's role, so the returned types are the target's order
            sites = {e: list(np.nonzero(sub == e)[0]) for e in order}
            perm = np.array([sites[int(z)].pop(0) for z in zs])
            scale = (np.sum(r[zs - 1] ** 3) / np.sum(r[tz - 1] ** 3)) ** (1.0 / 3.0)
            out.append(Guess(zs.copy(), tfrac[perm], tlat * scale, dist, source))
        return out

    @classmethod
    def from_structures(cls, structures, ids: list[str] | None = None) -> "PrototypeIndex":
        """From pymatgen Structures (ordered ones; a disordered site has no single element to substitute)."""
        ok = [(i, s) for i, s in enumerate(structures) if s.is_ordered]
        return cls([([sp.Z for sp in s.species], s.frac_coords % 1.0, s.lattice.matrix) for _, s in ok],
                   [ids[i] for i, _ in ok] if ids else None)


def from_store(zs, include_generated: bool = False) -> PrototypeIndex:
    """The connected store's crystals that can be templates for a cell with atomic numbers ``zs``: as many
    elements, and a cell of as many sites once a stored supercell is reduced to its primitive cell or a smaller
    stored cell is repeated along a. Structures the generator made are left out unless asked for: a guess should
    come from a known crystal."""
    from qadb.models.generator.store_data import read_stored
    from qadb.store.documents import StructureDoc

    n, k = len(zs), len({int(z) for z in zs})
    sizes = sorted({m for m in range(1, n + 1) if n % m == 0} | {n * m for m in range(2, 5)})
    docs = StructureDoc.objects(nelements=k, nsites__in=sizes).only("id", "structure", "origin")
    structs, ids = [], []
    for doc in docs:
        if not include_generated and doc.origin is not None and doc.origin.kind == "generated":
            continue
        s = read_stored(doc.structure, n)
        if s is None:  # an unreadable stored structure is no template
            continue
        if len(s) < n and n % len(s) == 0:
            s.make_supercell([n // len(s), 1, 1])
        if len(s) == n:
            structs.append(s), ids.append(doc.id)
    return PrototypeIndex.from_structures(structs, ids)


def nearest_guesses(blob: dict, n: int = 0) -> dict:
    """The nearest prototype guess for each of the first ``n`` (0: all) held-out test compositions of a generator
    tensor file, its training crystals the templates: a CSP sample file as `gpu_eval` writes one (``csp_*``) plus
    ``guess_found`` and ``guess_distance``. A composition without a template gets a placeholder (random positions in
    a cube of its atoms' volume at packing 0.5), which `gpu_eval --csp-init` samples from noise instead."""
    index = PrototypeIndex.from_packed(blob["train"])
    test = blob["test"]
    na = test["num_atoms"].long()
    n = n or len(na)
    rng = np.random.default_rng(0)
    r = _radii()
    zs_all, frac, lattice, found, dist = [], [], [], [], []
    for zs, _, _ in islice(split_rows(test), n):
        got = index.guesses(zs, k=1)
        if got:
            frac.append(got[0].frac), lattice.append(got[0].lattice)
        else:
            frac.append(rng.random((len(zs), 3)))
            lattice.append(np.eye(3) * (np.sum(4.0 / 3.0 * np.pi * r[zs - 1] ** 3) / 0.5) ** (1.0 / 3.0))
        zs_all.append(zs), found.append(bool(got)), dist.append(got[0].distance if got else np.nan)
    meta = json.loads(blob["meta_json"])
    return dict(csp_z=np.concatenate(zs_all).astype(np.int16), csp_frac=np.concatenate(frac).astype(np.float32),
                csp_lattice=np.stack(lattice).astype(np.float32), csp_num_atoms=na[:n].numpy().astype(np.int16),
                guess_found=np.array(found), guess_distance=np.array(dist, dtype=np.float32),
                meta_json=np.array(json.dumps({"kind": "prototype guesses", "templates": len(index),
                                               "train_hash": meta.get("train_hash"), "timing": {"csp_s": 0.0},
                                               "found": int(sum(found)), "n": n})))


def main(argv=None) -> None:
    import argparse
    import sys

    import torch

    ap = argparse.ArgumentParser(description="nearest prototype guesses for a tensor file's held-out test set")
    ap.add_argument("--data", required=True, help="generator tensor file (prepare / reconstruct)")
    ap.add_argument("--out", required=True, help="guesses file (.npz): gpu_eval --csp-init, bench --npz-csp")
    ap.add_argument("--n", type=int, default=0, help="first N test compositions (0: all)")
    a = ap.parse_args(argv)
    try:
        blob = torch.load(a.data, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable or foreign file is the same one-line error
        sys.exit(f"error: {a.data} is not a generator tensor file ({type(e).__name__})")
    if not isinstance(blob, dict) or not {"train", "test", "meta_json"} <= set(blob):
        sys.exit(f"error: {a.data} is not a generator tensor file (no 'train', 'test' or 'meta_json')")
    res = nearest_guesses(blob, a.n)
    np.savez_compressed(a.out, **res)
    m = json.loads(str(res["meta_json"]))
    print(f"{m['found']} of {m['n']} compositions have a guess ({m['templates']} templates); wrote {a.out}")


if __name__ == "__main__":
    main()
