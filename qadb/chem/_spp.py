"""Statistical proxy potential (SPP) score of seed 002 (filter A), with tables built from a reference set.

PIGEN's ICSD tables are not available, so tables are built here from a reference set of structures and
shipped as a versioned artifact (``qadb/data/spp_<version>.npz``, raw counts + JSON metadata, no pickle).

Distances: every atom pair i < j of the cell, minimum-image convention (as PIGEN's ASE call), in
0.05 Å bins up to 11 Å (the last bin takes everything beyond). For element pair ij with counts h_ij(r),
N_ij pairs, and the pooled distribution of all pairs P(r) (a 1e-3 pseudo-count per bin keeps it > 0):
    P_ij(r) = (h_ij(r) + k P(r)) / (N_ij + k)           (shrinkage to the pooled shape, k = PRIOR)
    U_ij(r) = -ln(P_ij(r) / P(r))                        (k_B T = 1; 0 where ij looks like any pair)
The pooled reference state cancels the minimum-image truncation that every pair shares. Below
min(shortest distance seen for the pair, 0.7 x its Pyykkö radius sum: seed 000's hard limit) a
hard-core wall of WALL applies, as PIGEN's tables rise to ~1e5 at contact. Score = mean of U over
pairs. Acceptance threshold = 95th percentile of the reference set's own scores, each computed
leave-one-out (tables without that structure's pairs): in-sample scores of sparse pairs are biased
low and gave a threshold that half of the unseen MP-20 test set failed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
from pymatgen.core import Element, Structure

from qadb.chem._elements import covalent_radius
from qadb.chem._geometry import mic_pair_distances
from qadb.errors import InputError

BIN_WIDTH = 0.05
R_MAX = 11.0
N_BINS = int(round(R_MAX / BIN_WIDTH)) + 1  # the last bin collects every distance >= R_MAX
PRIOR = 20.0
WALL = 100.0
DEFAULT_VERSION = "mp20val-v1"


def _pair_code(a: str, b: str) -> int:
    """Order-free integer key of an element pair (Z_low * 256 + Z_high)."""
    za, zb = sorted((Element(a).Z, Element(b).Z))
    return za * 256 + zb


def _code_name(code: int) -> str:
    """``A-B`` name of a pair code, symbols in alphabetical order (PIGEN's key convention)."""
    return "-".join(sorted((Element.from_Z(code // 256).symbol, Element.from_Z(code % 256).symbol)))


def _pair_codes_and_bins(structure: Structure) -> tuple[np.ndarray, np.ndarray]:
    """Pair code and distance bin of every atom pair i < j under the minimum-image convention."""
    z = np.array(structure.atomic_numbers)
    i, j, d = mic_pair_distances(structure)
    lo, hi = np.minimum(z[i], z[j]), np.maximum(z[i], z[j])
    return lo * 256 + hi, np.minimum((d / BIN_WIDTH).astype(np.int64), N_BINS - 1)


def _potentials(counts: np.ndarray, pooled: np.ndarray, pairs: tuple[str, ...]) -> np.ndarray:
    """U_ij rows for `pairs` from their counts and the pooled counts (module docstring)."""
    p_all = (pooled + 1e-3) / (pooled + 1e-3).sum()
    n = counts.sum(axis=1, keepdims=True).astype(float)
    u = -np.log(((counts + PRIOR * p_all) / (n + PRIOR)) / p_all)
    r_upper = (np.arange(N_BINS) + 1) * BIN_WIDTH  # a bin is walled when all of it is below the wall
    for k, pair in enumerate(pairs):
        a, b = pair.split("-")
        wall = 0.7 * (covalent_radius(a) + covalent_radius(b))
        seen = np.flatnonzero(counts[k])
        if len(seen):
            wall = min(wall, seen[0] * BIN_WIDTH)
        u[k, r_upper <= wall] = WALL
    return u


@dataclass
class SPPTable:
    """Pair potentials U_ij on a fixed grid, with the reference counts they were derived from."""

    version: str
    pairs: tuple[str, ...]
    counts: np.ndarray  # (P, N_BINS) int64
    threshold: float
    source: str
    n_structures: int

    def __post_init__(self) -> None:
        self.counts = np.asarray(self.counts, dtype=np.int64)
        self._pooled = self.counts.sum(axis=0)
        self.potentials = _potentials(self.counts, self._pooled, self.pairs)
        self._row = {_pair_code(*p.split("-")): k for k, p in enumerate(self.pairs)}

    def potential(self, pair: str) -> np.ndarray:
        """U on the grid for an ``A-B`` pair (an unseen pair: 0 behind its covalent wall)."""
        k = self._row.get(_pair_code(*pair.split("-")))
        if k is not None:
            return self.potentials[k]
        return _potentials(np.zeros((1, N_BINS), dtype=np.int64), self._pooled, (pair,))[0]

    def score(self, structure: Structure, exclude_self: bool = False) -> SPPScore:
        """Mean pair potential of one structure (0 for a one-atom cell, which has no pairs).

        `exclude_self` scores a member of the reference set against the tables without its own
        pairs (leave-one-out), so that the threshold is not biased by in-sample fitting.
        """
        codes, b = _pair_codes_and_bins(structure)
        if len(b) == 0:
            return SPPScore(0.0, 0, ())
        uniq, inverse = np.unique(codes, return_inverse=True)
        rows = [self._row.get(int(c)) for c in uniq]
        missing = tuple(_code_name(int(c)) for c, k in zip(uniq, rows) if k is None)
        if not exclude_self and not missing:
            u = self.potentials[np.array(rows)]
            return SPPScore(float(u[inverse, b].sum() / len(b)), len(b), ())
        own = np.zeros((len(uniq), N_BINS), dtype=np.int64)
        np.add.at(own, (inverse, b), 1)
        counts = np.array([self.counts[k] if k is not None else np.zeros(N_BINS, np.int64) for k in rows])
        pooled = self._pooled
        if exclude_self:
            counts, pooled = counts - own, pooled - own.sum(axis=0)
        u = _potentials(counts, pooled, tuple(_code_name(int(c)) for c in uniq))
        return SPPScore(float((u * own).sum() / len(b)), len(b), missing)

    def to_files(self, path: Path) -> None:
        """Write ``<path>.npz`` (counts) and ``<path>.json`` (metadata) deterministically."""
        path = Path(path)
        np.savez_compressed(path.with_suffix(".npz"), counts=self.counts.astype(np.int32))
        meta = {
            "version": self.version,
            "pairs": list(self.pairs),
            "threshold": self.threshold,
            "source": self.source,
            "n_structures": self.n_structures,
            "bin_width": BIN_WIDTH,
            "r_max": R_MAX,
            "prior": PRIOR,
            "wall": WALL,
        }
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")

    @classmethod
    def from_files(cls, path: Path) -> SPPTable:
        path = Path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        if (meta["bin_width"], meta["r_max"], meta["prior"], meta["wall"]) != (BIN_WIDTH, R_MAX, PRIOR, WALL):
            raise InputError(f"{path}: SPP table made with other grid/prior settings; rebuild it")
        with np.load(path.with_suffix(".npz")) as data:
            counts = data["counts"]
        return cls(meta["version"], tuple(meta["pairs"]), counts, meta["threshold"], meta["source"], meta["n_structures"])


@dataclass(frozen=True)
class SPPScore:
    value: float
    n_pairs: int
    missing_pairs: tuple[str, ...]  # element pairs absent from the reference set (scored as pooled)


def count_pairs(structures) -> tuple[tuple[str, ...], np.ndarray]:
    """Per element pair histogram of MIC distances over a reference set."""
    acc: dict[str, np.ndarray] = {}
    for s in structures:
        codes, b = _pair_codes_and_bins(s)
        for code in np.unique(codes):
            h = acc.setdefault(_code_name(int(code)), np.zeros(N_BINS, dtype=np.int64))
            np.add.at(h, b[codes == code], 1)
    pairs = tuple(sorted(acc))
    return pairs, np.array([acc[p] for p in pairs]).reshape(len(pairs), N_BINS)


def build_spp_table(structures, version: str, source: str, percentile: float = 95.0) -> SPPTable:
    """Tables from a reference set; threshold = `percentile` of the set's own scores."""
    structures = list(structures)
    if not structures:
        raise InputError("an SPP table needs at least one reference structure")
    pairs, counts = count_pairs(structures)
    table = SPPTable(version, pairs, counts, 0.0, source, len(structures))
    scores = [table.score(s, exclude_self=True).value for s in structures]
    table.threshold = float(np.percentile(scores, percentile))
    return table


def spp_artifact_path(version: str = DEFAULT_VERSION) -> Path:
    return Path(str(resources.files("qadb") / "data" / f"spp_{version}"))


@cache
def load_spp_table(version: str = DEFAULT_VERSION) -> SPPTable:
    """The shipped (or rebuilt) table of that version."""
    path = spp_artifact_path(version)
    if not path.with_suffix(".json").exists():
        raise InputError(f"no SPP table {version!r} at {path}.json: run `python -m qadb.chem.build_spp`")
    return SPPTable.from_files(path)


def spp_score(structure: Structure, table: SPPTable | None = None) -> SPPScore:
    """SPP score of a structure against `table` (default: the shipped MP-20 val table)."""
    return (table or load_spp_table()).score(structure)
