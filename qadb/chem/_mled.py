"""M_LED, PIGEN's local-environment diversity (seed 002 Eqs. 4-6), exactly as PIGEN's evaluation computes it.

Per site whose element is in PIGEN's element list (periodic order up to Rn WITHOUT Te: PIGEN's list
omits it, so Te sites are skipped and Te neighbours not counted; kept here so that values match):
- motif = argmax of matminer ``OPSiteFingerprint`` (37 types), counted at slot 2 x motif of a 74-slot block;
- chemistry = +1 for the central element and +1 per distinct neighbouring element from pymatgen
  ``CrystalNN(distance_cutoffs=None, x_diff_weight=0, porous_adjustment=False, search_cutoff=12)``,
  in an 85-slot block at the element's position in PIGEN's list.
A site whose fingerprint raises, or has a NaN, or where pymatgen emits a RuntimeWarning, is skipped
(CrystalNN failures count as no neighbours). Summed over sites: a 159-vector v.
positional entropy = H2(mean over non-zero indices k of exp(-(x - k)^2 / (2 sigma^2))), sigma = 10;
polyhedral entropy = H2(v[:74]); H2 normalises, clips at 1e-10 and renormalises (scipy ``entropy``, base 2).
Both are rounded to 4 decimals as PIGEN reports them; M_LED = their sum.

`mled_reference` does this site by site. `mled` gives the same numbers faster: symmetry-equivalent sites
(spglib orbits at a tight tolerance) have identical environments, so each orbit is computed once and
counted |orbit| times; `mled_reference` is the check (bench: mled_max_abs_diff_fast_vs_reference).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cache

import numpy as np
import spglib
from pymatgen.core import Structure
from scipy.stats import entropy

from qadb.errors import InputError

_PERIODIC = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
    "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm "
    "Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra"
).split()
PIGEN_ELEMENTS: tuple[str, ...] = tuple(el for el in _PERIODIC if el != "Te")[:85]
N_MOTIFS = 37
DIM = 2 * N_MOTIFS + len(PIGEN_ELEMENTS)  # 159
SIGMA = 10.0
_INDEX = {el: k for k, el in enumerate(PIGEN_ELEMENTS)}
ORBIT_SYMPREC = 1e-4  # Å; only sites equivalent to numerical precision share one computation


@dataclass(frozen=True)
class MLEDResult:
    value: float  # M_LED = positional + polyhedral (each rounded to 4 decimals, as PIGEN)
    positional: float
    polyhedral: float
    vector: tuple[float, ...]  # the 159-long site-summed vector
    skipped_sites: int

    def as_dict(self) -> dict:
        return {"value": self.value, "positional": self.positional, "polyhedral": self.polyhedral,
                "skipped_sites": self.skipped_sites}  # fmt: skip


@cache
def _featurizers():
    from matminer.featurizers.site.fingerprint import OPSiteFingerprint
    from pymatgen.analysis.local_env import CrystalNN

    cnn = CrystalNN(distance_cutoffs=None, x_diff_weight=0, porous_adjustment=False, search_cutoff=12)
    return OPSiteFingerprint(), cnn


def _site_vector(structure: Structure, idx: int) -> np.ndarray | None:
    """One site's 159-slot contribution, None when PIGEN would skip the site."""
    symbol = structure[idx].specie.symbol
    if symbol not in _INDEX:
        return None
    op, cnn = _featurizers()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", category=RuntimeWarning, module="pymatgen")
            fingerprint = op.featurize(structure, idx)
        if np.any(np.isnan(fingerprint)):
            return None
    except (Exception, RuntimeWarning):
        return None
    vec = np.zeros(DIM)
    vec[2 * int(np.argmax(fingerprint))] += 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            neighbours = cnn.get_cn_dict(structure, idx)
    except Exception:
        neighbours = {}
    vec[2 * N_MOTIFS + _INDEX[symbol]] += 1
    for el in neighbours:
        if el in _INDEX:
            vec[2 * N_MOTIFS + _INDEX[el]] += 1
    return vec


def _entropy2(vector: np.ndarray) -> float:
    p = np.clip(vector / np.sum(vector), 1e-10, 1.0)
    return float(entropy(p, base=2))


def _result(vector: np.ndarray, skipped: int) -> MLEDResult:
    nonzero = np.flatnonzero(vector)
    x = np.arange(DIM)
    smooth = np.exp(-((x[None, :] - nonzero[:, None]) ** 2) / (2 * SIGMA**2)).sum(axis=0) / max(len(nonzero), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        positional = round(_entropy2(smooth), 4)
        polyhedral = round(_entropy2(vector[: 2 * N_MOTIFS]), 4)
    return MLEDResult(positional + polyhedral, positional, polyhedral, tuple(vector.tolist()), skipped)


def _check(structure: Structure) -> None:
    if not isinstance(structure, Structure) or not structure.is_ordered or len(structure) == 0:
        raise InputError("M_LED needs an ordered pymatgen Structure with at least one site")


def mled_reference(structure: Structure) -> MLEDResult:
    """PIGEN's M_LED, site by site (slow: ~50 ms OPSiteFingerprint + ~30 ms CrystalNN per site here)."""
    _check(structure)
    total, skipped = np.zeros(DIM), 0
    for idx in range(len(structure)):
        vec = _site_vector(structure, idx)
        if vec is None:
            skipped += 1
        else:
            total += vec
    return _result(total, skipped)


def mled(structure: Structure) -> MLEDResult:
    """Same value as `mled_reference`, computing one site per symmetry orbit."""
    _check(structure)
    cell = (structure.lattice.matrix, structure.frac_coords, structure.atomic_numbers)
    dataset = spglib.get_symmetry_dataset(cell, symprec=ORBIT_SYMPREC)
    orbits = dataset.equivalent_atoms if dataset is not None else np.arange(len(structure))
    reps, sizes = np.unique(orbits, return_counts=True)
    total, skipped = np.zeros(DIM), 0
    for rep, size in zip(reps.tolist(), sizes.tolist()):
        vec = _site_vector(structure, rep)
        if vec is None:
            skipped += size
        else:
            total += size * vec
    return _result(total, skipped)
