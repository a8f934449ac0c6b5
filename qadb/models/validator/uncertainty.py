"""Ensemble aggregation (seed 000 Sec. 2.3.1), divergence (Eqs. 3-5), ECE and recalibration (numpy only)."""

from __future__ import annotations

import math

import numpy as np

# Nominal central-interval coverages at which ECE is evaluated: 10 Gaussian quantile levels.
ECE_LEVELS = np.arange(1, 11) / 10.0 - 0.05  # 0.05, 0.15, ..., 0.95


def aggregate(means, sigmas):
    """E_MF and sigma_MF of a deep ensemble (seed 000 Sec. 2.3.1).

    ``means``, ``sigmas``: arrays of shape (M, ...) with member i's E_i(x) and sigma_i(x).
    E_MF = (1/M) sum_i E_i; sigma_MF = sqrt((1/M) sum_i sigma_i^2 + Var({E_i})), where Var is the
    population variance (1/M) sum_i (E_i - E_MF)^2, the same 1/M normalisation as the paper's mean.
    """
    e = np.asarray(means, dtype=np.float64)
    s = np.asarray(sigmas, dtype=np.float64)
    if e.shape != s.shape or e.ndim < 1 or e.shape[0] < 1:
        raise ValueError("means and sigmas must have the same shape (n_members, ...)")
    e_mf = e.mean(axis=0)
    var_between = ((e - e_mf) ** 2).mean(axis=0)
    sigma_mf = np.sqrt((s ** 2).mean(axis=0) + var_between)
    return e_mf, sigma_mf


def divergence(e_pbe, e_mf, sigma_mf):
    """(D_abs, D_rel, D_sgn) of seed 000 Eqs. 3-5.

    D_abs = |E_PBE - E_MF|; D_rel = D_abs / sigma_MF; D_sgn = sign(E_PBE - E_MF) * D_abs
    (so D_sgn = E_PBE - E_MF).
    """
    e_pbe = np.asarray(e_pbe, dtype=np.float64)
    e_mf = np.asarray(e_mf, dtype=np.float64)
    sigma_mf = np.asarray(sigma_mf, dtype=np.float64)
    diff = e_pbe - e_mf
    d_abs = np.abs(diff)
    with np.errstate(divide="ignore", invalid="ignore"):
        d_rel = np.where(sigma_mf > 0, d_abs / sigma_mf, np.inf)
    d_sgn = np.sign(diff) * d_abs
    return d_abs, d_rel, d_sgn


def _z(p):
    from statistics import NormalDist

    return np.array([NormalDist().inv_cdf(0.5 + 0.5 * float(q)) for q in np.atleast_1d(p)])


def coverage(y, mu, sigma, levels=ECE_LEVELS):
    """Empirical coverage of the central Gaussian intervals mu ± z_p sigma at each nominal level p."""
    y, mu, sigma = (np.asarray(a, dtype=np.float64).ravel() for a in (y, mu, sigma))
    if len(y) == 0:
        raise ValueError("coverage needs at least one held-out point")
    r = np.abs(y - mu) / np.maximum(sigma, 1e-12)
    return np.array([(r <= z).mean() for z in _z(levels)])


def ece(y, mu, sigma, levels=ECE_LEVELS) -> float:
    """Expected calibration error: mean over the 10 quantile levels of |empirical - nominal| coverage."""
    levels = np.asarray(levels, dtype=np.float64)
    return float(np.mean(np.abs(coverage(y, mu, sigma, levels) - levels)))


def fit_sigma_scale(y, mu, sigma, grid=None) -> float:
    """Variance-scaling recalibration: the factor s (sigma -> s*sigma) minimising ECE on a validation split."""
    grid = np.exp(np.linspace(math.log(0.1), math.log(10.0), 241)) if grid is None else np.asarray(grid)
    scores = [ece(y, mu, s * np.asarray(sigma)) for s in grid]
    best = int(np.argmin(scores))
    return float(grid[best])


def pearson_r2(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1] ** 2)


def bootstrap_ci(fn, *arrays, n: int = 1000, seed: int = 0, alpha: float = 0.05):
    """Point value and (lo, hi) percentile bootstrap CI of ``fn(*arrays)`` resampling rows."""
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(a) for a in arrays]
    m = len(arrays[0])
    vals = []
    for _ in range(n):
        i = rng.integers(0, m, m)
        vals.append(fn(*[a[i] for a in arrays]))
    vals = np.array(vals, dtype=np.float64)
    return float(fn(*arrays)), float(np.nanpercentile(vals, 100 * alpha / 2)), float(np.nanpercentile(vals, 100 * (1 - alpha / 2)))


def reliability_plot(y, mu, sigma, path, label: str = "", sigma_scale: float | None = None):
    """Save a reliability diagram (nominal vs empirical coverage) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lv = ECE_LEVELS
    fig, ax = plt.subplots(figsize=(4, 4), dpi=120)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="ideal")
    cov = coverage(y, mu, sigma)
    ax.plot(lv, cov, "o-", label=f"raw (ECE {ece(y, mu, sigma):.3f})")
    if sigma_scale is not None:
        s2 = sigma_scale * np.asarray(sigma)
        ax.plot(lv, coverage(y, mu, s2), "s-", label=f"scaled x{sigma_scale:.2f} (ECE {ece(y, mu, s2):.3f})")
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("empirical coverage")
    ax.set_title(label or "reliability")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
