"""Replay tasks: real multi-fidelity data with the high-fidelity labels held out behind an oracle.

The standard way to benchmark acquisition strategies without paying for DFT: every candidate
already has a high-fidelity value, but the campaign sees it only when it "calls" the oracle, and
each call is counted. Tasks are built from the staged datasets (`../shared/data`) or from labels in
the store; each states its pool, fidelities, hit rule and prevalence of hits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import Composition

from qadb import config
from qadb.campaign.acquisition import Window
from qadb.chem import fingerprint
from qadb.errors import ConfigError


@dataclass(frozen=True)
class HitRule:
    """Hit = high-fidelity value in [min, max], low-fidelity value in [low_min, low_max] and
    (high − low) in [delta_min, delta_max]; every bound is optional."""

    min: float | None = None
    max: float | None = None
    low_min: float | None = None
    low_max: float | None = None
    delta_min: float | None = None
    delta_max: float | None = None

    def __call__(self, y_high, y_low) -> np.ndarray:
        y_high, y_low = np.asarray(y_high, float), np.asarray(y_low, float)
        return (Window(self.min, self.max).contains(y_high) & Window(self.low_min, self.low_max).contains(y_low)
                & Window(self.delta_min, self.delta_max).contains(y_high - y_low))

    def describe(self, prop: str, low: str, high: str) -> str:
        parts = []
        for lo, hi, name in ((self.min, self.max, f"{prop}@{high}"), (self.low_min, self.low_max, f"{prop}@{low}"),
                             (self.delta_min, self.delta_max, f"{prop}@{high} − {prop}@{low}")):
            if lo is not None or hi is not None:
                parts.append(f"{'' if lo is None else f'{lo} ≤ '}{name}{'' if hi is None else f' ≤ {hi}'}")
        return " and ".join(parts) or "any"


@dataclass
class ReplayTask:
    """A pool of candidates with fingerprints, descriptors q, low- and (hidden) high-fidelity values."""

    name: str
    property: str
    units: str
    low_fidelity: str
    high_fidelity: str
    ids: list[str]
    formulas: list[str]
    x: np.ndarray
    q: np.ndarray
    q_names: list[str]
    y_low: np.ndarray
    y_high: np.ndarray = field(repr=False)
    target: Window
    hit: HitRule
    source: str
    divergence: str = "abs"  # the D variant that matches the hit rule: sgn when hits lie on one side of low

    def __post_init__(self) -> None:
        self.index = {k: i for i, k in enumerate(self.ids)}

    @property
    def hits(self) -> np.ndarray:
        return self.hit(self.y_high, self.y_low)

    @property
    def prevalence(self) -> float:
        return float(self.hits.mean())

    def subset(self, rows: np.ndarray) -> "ReplayTask":
        pick = lambda a: a[rows]  # noqa: E731
        return ReplayTask(self.name, self.property, self.units, self.low_fidelity, self.high_fidelity,
                          [self.ids[i] for i in rows], [self.formulas[i] for i in rows], pick(self.x), pick(self.q),
                          self.q_names, pick(self.y_low), pick(self.y_high), self.target, self.hit, self.source,
                          self.divergence)

    def summary(self) -> dict:
        return {"task": self.name, "pool": len(self.ids), "property": self.property, "units": self.units,
                "low_fidelity": self.low_fidelity, "high_fidelity": self.high_fidelity,
                "hit": self.hit.describe(self.property, self.low_fidelity, self.high_fidelity),
                "prevalence": round(self.prevalence, 4), "hits_in_pool": int(self.hits.sum()), "source": self.source,
                "divergence": self.divergence}


_CELL = re.compile(r"_cell_(length_[abc]|angle_(?:alpha|beta|gamma))\s+([-0-9.]+)")
_FORMULA_SUM = re.compile(r"_chemical_formula_sum\s+'?([^'\n]+)'?")


def _cell_volume(a, b, c, alpha, beta, gamma) -> float:
    ca, cb, cg = (np.cos(np.radians(v)) for v in (alpha, beta, gamma))
    return float(a * b * c * np.sqrt(max(1 - ca**2 - cb**2 - cg**2 + 2 * ca * cb * cg, 0.0)))


def _cif_summary(cif: str) -> tuple[str, float] | None:
    """(cell formula, volume) read from a CIF's header lines without parsing its sites."""
    cell = dict(_CELL.findall(cif))
    formula = _FORMULA_SUM.search(cif)
    if len(cell) < 6 or not formula:
        return None
    v = _cell_volume(*(float(cell[k]) for k in ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma")))
    return formula.group(1).strip(), v


@lru_cache(maxsize=4)
def _mp_structure_table(data_dir: str) -> pd.DataFrame:
    """mp-id -> cell formula, volume, nsites, space group, PBE formation energy, from every staged MP table."""
    root = Path(data_dir)
    rows: dict[str, dict] = {}
    cache = root / "mp_20_mattergen_cache"
    for split in ("test", "val"):
        df = pd.read_csv(cache / f"{split}.csv.gz", usecols=["material_id", "formation_energy_per_atom", "num_sites", "cif", "spacegroup_number_derived"])
        for r in df.itertuples(index=False):
            summ = _cif_summary(r.cif)
            if summ:
                rows.setdefault(r.material_id, {"formula": summ[0], "volume": summ[1], "nsites": int(r.num_sites),
                                                "spacegroup": int(r.spacegroup_number_derived), "e_form": r.formation_energy_per_atom})
    train = pd.read_csv(cache / "train_no_coords.csv.gz", usecols=["material_id", "formation_energy_per_atom", "num_sites", "a", "b", "c", "alpha", "beta", "gamma", "species"])
    for r in train.itertuples(index=False):
        if r.material_id in rows:
            continue
        species = re.findall(r"[A-Z][a-z]?", str(r.species))
        if len(species) != r.num_sites:
            continue
        rows[r.material_id] = {"formula": " ".join(species), "volume": _cell_volume(r.a, r.b, r.c, r.alpha, r.beta, r.gamma),
                               "nsites": int(r.num_sites), "spacegroup": None, "e_form": r.formation_energy_per_atom}
    for split in ("val", "test"):
        df = pd.read_csv(root / "mpts_52" / f"{split}.csv.gz", usecols=["material_id", "formation_energy_per_atom", "cif"])
        for r in df.itertuples(index=False):
            if r.material_id in rows:
                continue
            summ = _cif_summary(r.cif)
            if summ:
                rows[r.material_id] = {"formula": summ[0], "volume": summ[1],
                                       "nsites": int(round(Composition(summ[0]).num_atoms)),
                                       "spacegroup": None, "e_form": r.formation_energy_per_atom}
    return pd.DataFrame.from_dict(rows, orient="index")


def _features(table: pd.DataFrame) -> np.ndarray:
    return np.stack([fingerprint(composition=r.formula, nsites=r.nsites, volume=r.volume,
                                 spacegroup=None if pd.isna(r.spacegroup) else int(r.spacegroup))
                     for r in table.itertuples()])


def _data_dir(data_dir) -> Path:
    root = Path(data_dir) if data_dir else config.shared_data_dir()
    if not (root / "megnet_multifidelity_bandgap").exists():
        raise ConfigError(f"replay tasks need the staged datasets; {root} has no megnet_multifidelity_bandgap "
                          "(set QADB_SHARED_DATA)")
    return root


def bandgap_task(data_dir=None, window: tuple[float, float] = (1.0, 1.8)) -> ReplayTask:
    """PBE → HSE06 band gaps (MEGNet multi-fidelity set) for materials with a staged MP structure.

    Hit: HSE06 gap inside `window` (default 1.0-1.8 eV, a single-junction absorber range). The
    low-fidelity screen is the PBE gap; q = PBE formation energy per atom (MP).
    """
    root = _data_dir(data_dir)
    gaps = pd.read_csv(root / "megnet_multifidelity_bandgap" / "bandgaps_long.csv.gz")
    pbe = gaps[gaps.fidelity == "pbe"].set_index("id").band_gap_eV
    hse = gaps[gaps.fidelity == "hse"].set_index("id").band_gap_eV
    both = pd.concat([pbe.rename("low"), hse.rename("high")], axis=1).dropna()
    table = _mp_structure_table(str(root)).join(both, how="inner").sort_index()
    return ReplayTask(
        name="bandgap", property="band_gap", units="eV", low_fidelity="PBE", high_fidelity="HSE06",
        ids=list(table.index), formulas=list(table.formula), x=_features(table),
        q=table[["e_form"]].to_numpy(float), q_names=["formation_energy_per_atom@PBE+U"],
        y_low=table.low.to_numpy(float), y_high=table.high.to_numpy(float), target=Window(*window),
        hit=HitRule(min=window[0], max=window[1]),
        source="megnet_multifidelity_bandgap (PBE, HSE) joined by mp-id to mp_20_mattergen_cache and mpts_52",
    )


def enthalpy_task(data_dir=None, delta: float = -0.15) -> ReplayTask:
    """MP PBE/GGA+U (MP2020-corrected) → experimental formation enthalpies, joined by mp-id.

    Pool: the pymatgen MP2020 experimental set rows whose mp-id has a staged MP structure (1,304).
    Hit: experiment more stable than MP says by more than |delta| eV/atom (default 0.15, which
    keeps the prevalence at 7 %; 0.08 would give 16 %). Caveat: the MP2020 corrections were fitted
    to these experimental values, so the low fidelity is not independent of the high one; the
    residuals are what remains. q = PBE band gap where the MEGNet set has one (NaN otherwise).
    """
    root = _data_dir(data_dir)
    exp = pd.read_csv(root / "mp2020_fit_exp_vs_gga" / "exp_formation_enthalpies.csv.gz").dropna(subset=["mpid"])
    exp = exp.drop_duplicates("mpid").set_index("mpid")[["exp_dHf_eV_per_atom"]]
    table = _mp_structure_table(str(root)).join(exp, how="inner").dropna(subset=["e_form"]).sort_index()
    gaps = pd.read_csv(root / "megnet_multifidelity_bandgap" / "bandgaps_long.csv.gz")
    pbe_gap = gaps[gaps.fidelity == "pbe"].set_index("id").band_gap_eV
    return ReplayTask(
        name="enthalpy", property="formation_energy_per_atom", units="eV/atom", low_fidelity="PBE+U", high_fidelity="EXP",
        ids=list(table.index), formulas=list(table.formula), x=_features(table),
        q=np.array([[pbe_gap.get(m, np.nan)] for m in table.index], float), q_names=["band_gap@PBE"],
        y_low=table.e_form.to_numpy(float), y_high=table.exp_dHf_eV_per_atom.to_numpy(float),
        target=Window(None, 0.0), hit=HitRule(delta_max=delta),
        source="mp2020_fit_exp_vs_gga/exp_formation_enthalpies joined by mp-id to the staged MP tables",
        divergence="sgn",  # hits are one-sided (high below low), so the signed divergence (Eq. 5) is the matching signal
    )


TASKS = {"bandgap": bandgap_task, "enthalpy": enthalpy_task}


def task(name: str, data_dir=None) -> ReplayTask:
    if name not in TASKS:
        raise ConfigError(f"unknown replay task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name](data_dir)
