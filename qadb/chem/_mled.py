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

`mled_reference` does this site by site with matminer and pymatgen (~80 ms per site). `mled` gives the same
numbers ~55x faster (bench/chem.py): M_LED only needs the arg-max of the fingerprint and the set of neighbour elements, which
`_opmotif` (all order parameters of all sites as array operations) and `_crystalnn` (one small convex hull
per site instead of a 12 Å Voronoi tessellation) compute without approximating any decision; a site where
either cannot rule out that last-bit noise flips a decision is handed to matminer/pymatgen
(`MLEDResult.fallback_sites`). `mled_reference` is the check (bench: mled_max_abs_diff_fast_vs_reference).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import cache

import numpy as np
from pymatgen.core import Structure
from scipy.stats import entropy

from qadb.chem._crystalnn import crystalnn_elements
from qadb.chem._opmotif import matminer_neighbours, motif_indices
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


@dataclass(frozen=True)
class MLEDResult:
    value: float  # M_LED = positional + polyhedral (each rounded to 4 decimals, as PIGEN)
    positional: float
    polyhedral: float
    vector: tuple[float, ...]  # the 159-long site-summed vector
    skipped_sites: int
    fallback_sites: int = field(default=0, compare=False)  # `mled` only: sites decided by matminer/pymatgen

    def as_dict(self) -> dict:
        return {"value": self.value, "positional": self.positional, "polyhedral": self.polyhedral,
                "skipped_sites": self.skipped_sites}  # fmt: skip


@cache
def _featurizers():
    from matminer.featurizers.site.fingerprint import OPSiteFingerprint
    from pymatgen.analysis.local_env import CrystalNN

    cnn = CrystalNN(distance_cutoffs=None, x_diff_weight=0, porous_adjustment=False, search_cutoff=12)
    return OPSiteFingerprint(), cnn


def _reference_motif(structure: Structure, idx: int) -> int | None:
    """Arg-max of matminer's OPSiteFingerprint, None when PIGEN would skip the site."""
    op, _ = _featurizers()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", category=RuntimeWarning, module="pymatgen")
            fingerprint = op.featurize(structure, idx)
        if np.any(np.isnan(fingerprint)):
            return None
    except (Exception, RuntimeWarning):
        return None
    return int(np.argmax(fingerprint))


def _reference_elements(structure: Structure, idx: int) -> Iterable[str]:
    """Neighbour species strings from CrystalNN (none when it fails)."""
    _, cnn = _featurizers()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cnn.get_cn_dict(structure, idx)
    except Exception:
        return {}


def _vector(symbol: str, motif: int, neighbours: Iterable[str]) -> np.ndarray:
    vec = np.zeros(DIM)
    vec[2 * motif] += 1
    vec[2 * N_MOTIFS + _INDEX[symbol]] += 1
    for el in neighbours:
        if el in _INDEX:
            vec[2 * N_MOTIFS + _INDEX[el]] += 1
    return vec


def _site_vector(structure: Structure, idx: int) -> np.ndarray | None:
    """One site's 159-slot contribution, None when PIGEN would skip the site."""
    symbol = structure[idx].specie.symbol
    if symbol not in _INDEX:
        return None
    motif = _reference_motif(structure, idx)
    if motif is None:
        return None
    return _vector(symbol, motif, _reference_elements(structure, idx))


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
    """Same value as `mled_reference`: motifs and neighbour elements of all sites from the fast paths,
    matminer/pymatgen only for the sites those leave undecided (counted in `fallback_sites`)."""
    _check(structure)
    counted = [i for i, site in enumerate(structure) if site.specie.symbol in _INDEX]
    neighbours = {i: matminer_neighbours(structure, i) for i in counted}
    motifs = motif_indices(structure, neighbours)
    elements = crystalnn_elements(structure, {i: neighbours[i] for i in counted if motifs[i] is not None})
    total, skipped, fallback = np.zeros(DIM), len(structure) - len(counted), 0
    for i in counted:
        motif, neighbour_elements = motifs[i], elements.get(i)
        fallback += motif is None or neighbour_elements is None
        if motif is None:
            motif = _reference_motif(structure, i)
            if motif is None:
                skipped += 1
                continue
        if neighbour_elements is None:
            neighbour_elements = _reference_elements(structure, i)
        total += _vector(structure[i].specie.symbol, motif, neighbour_elements)
    return replace(_result(total, skipped), fallback_sites=fallback)
