"""Acquisition: which candidates to send to the high-fidelity labeller (pure functions).

Seed 000 Algorithm 1, step 5: a stability (target) filter on the multi-fidelity prediction,
k-means diversity clusters, and the hybrid score S = w_D·D + w_U·U, where D is a divergence
(normalised to [0, 1] over the candidates) and U is the normalised fingerprint distance to what is
already labelled or selected. The same machinery with the signal swapped gives the baselines the
benchmarks compare against (uncertainty-only, low-fidelity-only, random).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRATEGIES = ("divergence", "uncertainty", "low_fidelity", "random", "exploit")
DIVERGENCES = ("abs", "rel", "sgn")


@dataclass(frozen=True)
class Window:
    """A target range on a property (either bound may be None = open)."""

    min: float | None = None
    max: float | None = None

    def contains(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=float)
        ok = np.isfinite(y)
        if self.min is not None:
            ok &= y >= self.min
        if self.max is not None:
            ok &= y <= self.max
        return ok

    def distance(self, y: np.ndarray) -> np.ndarray:
        """0 inside the window, the distance to its nearest edge outside (inf for NaN)."""
        y = np.asarray(y, dtype=float)
        d = np.zeros_like(y)
        if self.min is not None:
            d = np.maximum(d, self.min - y)
        if self.max is not None:
            d = np.maximum(d, y - self.max)
        return np.where(np.isfinite(y), d, np.inf)


def divergence(y_low: np.ndarray, y_mf: np.ndarray, sigma: np.ndarray, kind: str = "abs") -> np.ndarray:
    """Seed 000 Eqs. 3-5: D_abs = |E_low − E_MF|, D_rel = D_abs / σ_MF, D_sgn = sign(E_low − E_MF)·D_abs."""
    diff = np.asarray(y_low, float) - np.asarray(y_mf, float)
    if kind == "abs":
        return np.abs(diff)
    if kind == "rel":
        return np.abs(diff) / np.maximum(np.asarray(sigma, float), 1e-6)
    if kind == "sgn":
        return np.sign(diff) * np.abs(diff)
    raise ValueError(f"unknown divergence {kind!r}; choose from {', '.join(DIVERGENCES)}")


def standardise(x: np.ndarray, ref: np.ndarray | None = None) -> np.ndarray:
    """Z-score each column with the mean/std of `ref` (default: x itself); NaN becomes 0."""
    ref = x if ref is None else ref
    mu = np.nanmean(ref, axis=0)
    sd = np.nanstd(ref, axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    z = (x - np.nan_to_num(mu)) / sd
    return np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)


def _unit(v: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by min-max over the candidates (constant -> zeros)."""
    v = np.nan_to_num(np.asarray(v, float), nan=0.0)
    lo, hi = v.min(initial=0.0), v.max(initial=0.0)
    return (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)


def min_distances(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Euclidean distance from each row of x to its nearest row of ref (inf when ref is empty)."""
    if len(ref) == 0:
        return np.full(len(x), np.inf)
    d2 = (x * x).sum(1)[:, None] - 2 * x @ ref.T + (ref * ref).sum(1)[None, :]
    return np.sqrt(np.maximum(d2.min(1), 0.0))


def kmeans_labels(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means cluster labels (k capped at the number of points), deterministic for a seed."""
    from sklearn.cluster import KMeans

    k = max(1, min(k, len(x)))
    if k == len(x):
        return np.arange(len(x))
    return KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(x)


def hybrid_select(signal: np.ndarray, x: np.ndarray, known: np.ndarray, k: int, *, w_signal: float = 0.7,
                  w_diversity: float = 0.3, clusters: int = 50, seed: int = 0) -> list[int]:
    """Pick k indices maximising S = w_signal·signal' + w_diversity·U greedily.

    `signal'` is the signal min-max scaled over the candidates. Candidates are first grouped into
    k-means clusters and each cluster offers only its best-scoring member per round, so a batch
    spreads across clusters before it takes a second member of any. U is recomputed after each pick
    (distance to everything known or already picked, scaled by the largest such distance).
    """
    n = len(signal)
    if n == 0 or k <= 0:
        return []
    s_sig = _unit(signal)
    labels = kmeans_labels(x, clusters, seed)
    chosen: list[int] = []
    ref = known.copy()
    taken = np.zeros(n, bool)
    used_clusters: set[int] = set()
    dist = min_distances(x, ref)
    while len(chosen) < min(k, n):
        finite = dist[np.isfinite(dist)]
        scale = finite.max() if finite.size and finite.max() > 0 else 1.0
        u = np.where(np.isfinite(dist), dist / scale, 1.0)
        score = w_signal * s_sig + w_diversity * u
        allowed = ~taken
        fresh = allowed & ~np.isin(labels, list(used_clusters))
        pool = fresh if fresh.any() else allowed
        if not fresh.any():
            used_clusters.clear()
        i = int(np.flatnonzero(pool)[np.argmax(score[pool])])
        chosen.append(i)
        taken[i] = True
        used_clusters.add(int(labels[i]))
        dist = np.minimum(dist, min_distances(x, x[i : i + 1]))
    return chosen


def select(strategy: str, *, k: int, x: np.ndarray, known_x: np.ndarray, y_low: np.ndarray, y_mf: np.ndarray,
           sigma: np.ndarray, target: Window, divergence_kind: str = "abs", w_signal: float = 0.7,
           w_diversity: float = 0.3, clusters: int = 50, seed: int = 0) -> list[int]:
    """Indices of the k candidates a strategy sends to the high-fidelity labeller.

    - divergence: keep candidates whose E_MF lies in the target window (the stability filter), then
      hybrid score with D (seed 000 Algorithm 1);
    - uncertainty: the same with σ_MF as the signal;
    - exploit: the same with closeness of E_MF to the window as the signal (no divergence);
    - low_fidelity: the low-fidelity screen alone: closest low-fidelity value to the window first;
    - random: uniform.
    When the filter leaves fewer than k, the rest are taken by closeness of E_MF to the window.
    """
    rng = np.random.default_rng(seed)
    n = len(y_low)
    k = min(k, n)
    if strategy == "random":
        return [int(i) for i in rng.choice(n, size=k, replace=False)]
    if strategy == "low_fidelity":
        order = np.lexsort((rng.random(n), target.distance(y_low)))
        return [int(i) for i in order[:k]]
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    if strategy == "divergence":
        signal = divergence(y_low, y_mf, sigma, divergence_kind)
    elif strategy == "uncertainty":
        signal = np.asarray(sigma, float)
    else:
        signal = -target.distance(y_mf)
    inside = np.flatnonzero(target.contains(y_mf))
    xs = x[inside]
    picked = [int(inside[i]) for i in hybrid_select(signal[inside], xs, known_x, k, w_signal=w_signal,
                                                      w_diversity=w_diversity, clusters=clusters, seed=seed)]
    if len(picked) < k:
        rest = np.setdiff1d(np.arange(n), picked)
        order = rest[np.lexsort((rng.random(len(rest)), target.distance(np.asarray(y_mf)[rest])))]
        picked += [int(i) for i in order[: k - len(picked)]]
    return picked
