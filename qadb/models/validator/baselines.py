"""Alternative multi-fidelity strategies (seed 000 Sec. 12.2) for comparison on the same split (numpy/scipy).

- `LinearCorrection`: f_high ≈ a f_low + b (f_low a low-fidelity model prediction, or a DFT value
  when the DFT energy is an input — say which when reporting).
- `CoKriging`: autoregressive (Kennedy-O'Hagan AR1) co-kriging f_high(x) = rho f_low(x) + delta(x),
  delta ~ GP(b, k_RBF) on element-fraction features; rho, b and the GP hyper-parameters maximise
  the (concentrated) marginal likelihood over a grid. f_low is the low-fidelity model's prediction (treated as known), the
  usual recursive simplification.
- `composition_features`: element-fraction vectors from graph atomic numbers.

External baseline hook: any per-structure PBE-level predictions (e.g. CHGNet 0.3.0 from
``qadb.drivers``, not wrapped yet) can be passed as ``f_low`` here or as ``baseline_e_pbe`` to
`qadb.models.validator.api.predict`.
"""

from __future__ import annotations

import numpy as np

N_SPECIES = 100


def composition_features(graphs) -> np.ndarray:
    X = np.zeros((len(graphs), N_SPECIES + 1))
    for i, g in enumerate(graphs):
        z = np.clip(np.asarray(g["z"]), 0, N_SPECIES)
        np.add.at(X[i], z, 1.0 / len(z))
    return X


class LinearCorrection:
    def fit(self, f_low, y):
        A = np.stack([np.asarray(f_low, float), np.ones(len(f_low))], 1)
        (self.a, self.b), *_ = np.linalg.lstsq(A, np.asarray(y, float), rcond=None)
        return self

    def predict(self, f_low):
        return self.a * np.asarray(f_low, float) + self.b


class CoKriging:
    """AR1 co-kriging; hyper-parameters by a grid over (lengthscale, noise ratio) with rho, b and the
    signal variance profiled out in closed form (generalised least squares, concentrated likelihood)."""

    def fit(self, f_low, X, y, lengthscales=(0.05, 0.1, 0.2, 0.4, 0.8), ratios=None):
        f_low, X, y = np.asarray(f_low, float), np.asarray(X, float), np.asarray(y, float)
        ratios = np.logspace(-3, 1, 9) if ratios is None else np.asarray(ratios)
        n = len(y)
        d2 = _sqdist(X, X)
        F = np.stack([f_low, np.ones(n)], 1)
        best = None
        for ls in lengthscales:
            lam, Q = np.linalg.eigh(np.exp(-0.5 * d2 / ls ** 2))
            lam = np.maximum(lam, 0.0)
            Qy, QF = Q.T @ y, Q.T @ F
            for r in ratios:
                w = 1.0 / (lam + r)
                beta = np.linalg.solve(QF.T @ (w[:, None] * QF), QF.T @ (w * Qy))
                res = Qy - QF @ beta
                s2 = float(res @ (w * res)) / n
                nll = 0.5 * n * np.log(s2) + 0.5 * np.log(lam + r).sum()
                if best is None or nll < best[0]:
                    best = (nll, ls, r, beta, s2)
        _, ls, r, beta, s2 = best
        self.rho, self.b = float(beta[0]), float(beta[1])
        self.l2, self.s2, self.n2 = ls ** 2, s2, s2 * r
        self.X, self.r = X, y - self.rho * f_low - self.b
        K = self.s2 * np.exp(-0.5 * d2 / self.l2) + self.n2 * np.eye(n)
        self.c = np.linalg.cholesky(K)
        self.alpha = np.linalg.solve(self.c.T, np.linalg.solve(self.c, self.r))
        return self

    def predict(self, f_low, X, return_std: bool = False):
        Ks = self.s2 * np.exp(-0.5 * _sqdist(np.asarray(X, float), self.X) / self.l2)
        mu = self.rho * np.asarray(f_low, float) + self.b + Ks @ self.alpha
        if not return_std:
            return mu
        v = np.linalg.solve(self.c, Ks.T)
        var = np.maximum(self.s2 - (v ** 2).sum(0), 0) + self.n2
        return mu, np.sqrt(var)


def _sqdist(A, B):
    return np.maximum((A ** 2).sum(1)[:, None] + (B ** 2).sum(1)[None, :] - 2 * A @ B.T, 0.0)
