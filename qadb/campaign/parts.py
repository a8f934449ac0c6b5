"""The pluggable parts of a campaign: where candidates come from, what predicts them, who labels them.

Each part is a small class with one job; `qadb.campaign.build` picks them from a recipe. Replay
parts work on a `ReplayTask`; generative parts on structures stored in the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from qadb.campaign.acquisition import standardise
from qadb.campaign.replay import ReplayTask
from qadb.campaign.surrogate import DeltaEnsemble


@dataclass
class Prediction:
    """Aligned with the candidate ids: low-fidelity value, multi-fidelity prediction, its σ."""

    y_low: np.ndarray
    y_mf: np.ndarray
    sigma: np.ndarray


class Source(Protocol):
    def candidates(self, cycle: int, exclude: set[str], n: int, seed: int) -> list[str]: ...
    def features(self, ids: list[str]) -> np.ndarray: ...


class Model(Protocol):
    def fit(self, labelled: dict[str, float]) -> None: ...
    def predict(self, ids: list[str]) -> Prediction: ...


class Labeller(Protocol):
    fidelity: str

    def label(self, doc_id: str) -> float | None: ...


class ReplaySource:
    """Candidates are the pool members not yet labelled (a random n of them when n is smaller)."""

    def __init__(self, task: ReplayTask):
        self.task = task
        self._z = standardise(task.x)

    def candidates(self, cycle: int, exclude: set[str], n: int, seed: int) -> list[str]:
        free = [i for i in self.task.ids if i not in exclude]
        if n >= len(free):
            return free
        rng = np.random.default_rng([seed, cycle, 1])
        return [free[i] for i in sorted(rng.choice(len(free), size=n, replace=False))]

    def features(self, ids: list[str]) -> np.ndarray:
        return self._z[[self.task.index[i] for i in ids]]


class ReplayModel:
    """The Δ-ensemble surrogate over fingerprint (+ q) and the low-fidelity value."""

    def __init__(self, task: ReplayTask, *, multi_fidelity: bool = True, descriptors: bool = True, seed: int = 0):
        self.task = task
        x = task.x if not descriptors else np.column_stack([task.x, task.q])
        self._x = np.nan_to_num(x, nan=-1.0)
        self.model = DeltaEnsemble(multi_fidelity=multi_fidelity, seed=seed)
        self.model.fit(self._x[:0], task.y_low[:0], task.y_low[:0])

    def _rows(self, ids):
        return np.array([self.task.index[i] for i in ids], dtype=int)

    def fit(self, labelled: dict[str, float]) -> None:
        ids = sorted(labelled)
        rows = self._rows(ids)
        self.model.fit(self._x[rows], self.task.y_low[rows], np.array([labelled[i] for i in ids]))

    def predict(self, ids: list[str]) -> Prediction:
        rows = self._rows(ids)
        y_mf, sigma = self.model.predict(self._x[rows], self.task.y_low[rows])
        return Prediction(self.task.y_low[rows], y_mf, sigma)

    def low(self, ids: list[str]) -> np.ndarray:
        return self.task.y_low[self._rows(ids)]


class ReplayOracle:
    """Reveals a held-out high-fidelity value; each reveal is one paid call."""

    def __init__(self, task: ReplayTask):
        self.task = task
        self.fidelity = task.high_fidelity

    def label(self, doc_id: str) -> float | None:
        return float(self.task.y_high[self.task.index[doc_id]])
