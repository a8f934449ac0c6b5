"""Alternative multi-fidelity strategies (seed 000 Sec. 12.2) for comparison on the same split (numpy/scipy).

- `LinearCorrection`: f_high ≈ a f_low + b (f_low a low-fidelity model prediction, or a DFT value
  when the DFT energy is an input — say which when reporting).
- `CoKriging`: autoregressive (Kennedy-O'Hagan AR1) co-kriging f_high(x) = rho f_low(x) + delta(x),
  delta ~ GP(b, k_RBF) on element-fraction features; rho, b and the GP hyper-parameters maximise
  the (concentrated) marginal likelihood over a grid. f_low is the low-fidelity model's prediction (treated as known), the
  usual recursive simplification.
- `composition_features`: element-fraction vectors from graph atomic numbers.

MLIP member: `qadb.models.validator.mlip_member` uses `CoKriging` with f_low = a bundled MLIP's
(CHGNet 0.3.0) formation energy and the MF-ENNP's PBE+U head as a second mean column
(``predict(..., mlip_member="chgnet")``). Any other per-structure PBE-level predictions can be passed
as ``f_low`` here or as ``baseline_e_pbe`` to `qadb.models.validator.api.predict`.
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
    """AR1 co-kriging; hyper-parameters by a grid over (lengthscale, noise ratio[, linear-kernel ratio])
    with rho, b and the signal variance profiled out in closed form (generalised least squares,
    concentrated likelihood).

    ``f_low`` may be one column (classic AR1: f_high = rho f_low + b + delta) or several (n, k): then
    ``rho`` is a vector and the mean is rhoᵀ f_low + b (several low-fidelity members / features).
    ``linear`` (ratios a): adds a linear kernel a·x·x' on the features to the RBF, so delta carries a
    per-feature linear term (on element fractions: a per-element correction, like fitted elemental
    reference energies) with its strength chosen by the same likelihood. ``None`` keeps the pure RBF."""

    def fit(self, f_low, X, y, lengthscales=(0.05, 0.1, 0.2, 0.4, 0.8), ratios=None, linear=None):
        f_low, X, y = np.asarray(f_low, float), np.asarray(X, float), np.asarray(y, float)
        self.multi = f_low.ndim == 2
        f2 = f_low if self.multi else f_low[:, None]
        ratios = np.logspace(-3, 1, 9) if ratios is None else np.asarray(ratios)
        lin = (0.0,) if linear is None else tuple(float(a) for a in linear)
        n = len(y)
        d2 = _sqdist(X, X)
        G = X @ X.T
        F = np.concatenate([f2, np.ones((n, 1))], 1)
        best = None
        for ls in lengthscales:
            R = np.exp(-0.5 * d2 / ls ** 2)
            for a in lin:
                lam, Q = np.linalg.eigh(R + a * G if a else R)
                lam = np.maximum(lam, 0.0)
                Qy, QF = Q.T @ y, Q.T @ F
                for r in ratios:
                    w = 1.0 / (lam + r)
                    beta = np.linalg.solve(QF.T @ (w[:, None] * QF), QF.T @ (w * Qy))
                    res = Qy - QF @ beta
                    s2 = float(res @ (w * res)) / n
                    nll = 0.5 * n * np.log(s2) + 0.5 * np.log(lam + r).sum()
                    if best is None or nll < best[0]:
                        best = (nll, ls, a, r, beta, s2)
        self.nll, ls, a, r, beta, s2 = best
        self.set_params(ls, a, r, beta, s2, f_low, X, y)
        return self

    def set_params(self, lengthscale, linear, ratio, beta, s2, f_low, X, y):
        """Condition on training data with given hyper-parameters (used by `fit` and to rebuild a
        stored model from its training arrays without pickling)."""
        f_low, X, y = np.asarray(f_low, float), np.asarray(X, float), np.asarray(y, float)
        self.multi = f_low.ndim == 2
        f2 = f_low if self.multi else f_low[:, None]
        beta = np.asarray(beta, float).reshape(-1)
        self.beta = beta
        self.rho = beta[:-1].copy() if self.multi else float(beta[0])
        self.b = float(beta[-1])
        self.ls, self.lin, self.ratio = float(lengthscale), float(linear), float(ratio)
        self.l2, self.s2, self.n2 = self.ls ** 2, float(s2), float(s2) * self.ratio
        self.X, self.r = X, y - f2 @ beta[:-1] - self.b
        K = self._k(X, X) + self.n2 * np.eye(len(y))
        self.c = np.linalg.cholesky(K)
        self.alpha = np.linalg.solve(self.c.T, np.linalg.solve(self.c, self.r))
        return self

    def _k(self, A, B):
        K = np.exp(-0.5 * _sqdist(A, B) / self.l2)
        if self.lin:
            K = K + self.lin * (A @ B.T)
        return self.s2 * K

    def predict(self, f_low, X, return_std: bool = False):
        X = np.asarray(X, float)
        f2 = np.asarray(f_low, float)
        f2 = f2 if self.multi else f2[:, None]
        Ks = self._k(X, self.X)
        mu = f2 @ self.beta[:-1] + self.b + Ks @ self.alpha
        if not return_std:
            return mu
        v = np.linalg.solve(self.c, Ks.T)
        prior = self.s2 * (1.0 + self.lin * (X ** 2).sum(1))
        var = np.maximum(prior - (v ** 2).sum(0), 0) + self.n2
        return mu, np.sqrt(var)


def _sqdist(A, B):
    return np.maximum((A ** 2).sum(1)[:, None] + (B ** 2).sum(1)[None, :] - 2 * A @ B.T, 0.0)
