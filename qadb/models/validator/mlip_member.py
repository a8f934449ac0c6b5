"""A bundled MLIP as a cheap low-fidelity member of the validator's multi-fidelity stack (structure only).

The member turns MLIP single-point energies into formation energies and co-krigs them with the MF-ENNP
up to experiment:

    f_k(x)    = E_k(x)/atom − Σ_e c_e(x) μ_k,e                     (one per MLIP k of the member)
    E_EXP(x)  = ρᵀ [f_k(x)..., MF-ENNP features(x)] + b + δ(c(x)),
    δ ~ GP(0, s²·(k_RBF(c, c') + a·c·c') + noise)

- ``E_k``: energies of the structure *as given* (no relaxation; bundled weights, CPU) from the
  ``chgnet`` wheel's two models: CHGNet 0.3.0 (MPtrj GGA/GGA+U) and CHGNet-r2SCAN (its r2SCAN
  transfer-learned model), i.e. an MLIP-PBE and an MLIP-r2SCAN fidelity member;
- ``c(x)``: element fractions; ``μ_k``: per-element chemical potentials fitted by ridge to MP PBE+U
  formation energies on a random subsample of the validator's MP train+val rows (they put each MLIP's
  energies on the formation-energy scale; f_0.3.0 is then a PBE+U-level formation energy);
- the MF-ENNP features are per-level ensemble means of the default checkpoint (candidates: none, the
  PBE+U root head, the EXP head);
- ``a·c·c'`` (optional): a per-element linear correction inside the GP, i.e. fitted elemental
  reference energies (FERE-style) with their strength chosen by the marginal likelihood.

No DFT value of the predicted compound is an input: everything comes from the structure. (The MLIP
itself was trained on ~1.5 M MPtrj DFT frames that include MP calculations of many of these compounds.)

Fitting (`build`, ``python -m qadb.models.validator.mlip_member``) only ever sees the EXP rows whose
formula is in the train or val split (`data.split_of`): each candidate design (which MLIPs × training
rows × MF-ENNP mean columns × linear term) is fitted on train and scored by its MAE on all EXP val rows; the winner is
refitted on train+val (GP hyper-parameters by marginal likelihood) and saved as a small ``.npz`` (no
pickle) holding μ, the hyper-parameters and the training arrays; loading re-conditions the GP on them.
Test rows are evaluated only by ``bench/validator.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from qadb.errors import CheckpointError, InputError
from qadb.models.validator.baselines import CoKriging

REPO_ROOT = Path(__file__).resolve().parents[3]
CHECKPOINT_DIR = REPO_ROOT / "qadb" / "data" / "checkpoints"
FORMAT = "qadb-validator-mlip-member/1"
N_SPECIES = 100

# member name -> the MLIPs it may use (qadb.drivers.mlip keys; single-head models)
MEMBERS: dict[str, tuple[str, ...]] = {"chgnet": ("chgnet-0.3.0", "chgnet-r2scan")}


def default_artifact(name: str = "chgnet") -> Path:
    return CHECKPOINT_DIR / f"validator_mlip_{name}.npz"


# candidate designs scored on EXP val (fit on train); the first of equal scores wins
CANDIDATES: list[dict] = [
    {"mlips": mlips, "train": train, "features": feats, "linear": lin}
    for mlips in ((0,), (1,), (0, 1))
    for train in ("fere", "all")
    for feats in ((), ("PBE+U",), ("EXP",))
    for lin in (False, True)
]
LINEAR_RATIOS = (0.1, 1.0, 10.0, 100.0)
MU_RIDGE = 1e-3


# ------------------------------------------------------------------ inputs

def mlip_energy_per_atom(structures, key: str = "chgnet-0.3.0", batch_size: int = 16) -> np.ndarray:
    """Single-point energy per atom (eV/atom) of each structure as given (no relaxation) from the
    `qadb.drivers.mlip` model ``key``."""
    from qadb.drivers.mlip import load_mlip
    from qadb.models.validator.featurize import structure_from_any

    structures = [structure_from_any(s) for s in structures]
    if not structures:
        return np.zeros(0)
    return load_mlip(key).energies_per_atom(structures, batch_size)


def mlip_fidelity(key: str) -> str:
    from qadb.drivers.mlip import load_mlip

    return load_mlip(key).fidelity


def element_fractions(structures_or_formulas) -> np.ndarray:
    """(n, 101) element-fraction rows from pymatgen Structures / Structure dicts / CIF text / formulas."""
    from pymatgen.core import Composition

    from qadb.models.validator.featurize import structure_from_any

    items = list(structures_or_formulas)
    X = np.zeros((len(items), N_SPECIES + 1))
    for i, s in enumerate(items):
        comp = Composition(s) if isinstance(s, str) and "\n" not in s else structure_from_any(s).composition
        for el, x in comp.fractional_composition.items():
            X[i, min(el.Z, N_SPECIES)] += x
    return X


def fit_mu(X, e, y, lam: float = MU_RIDGE) -> np.ndarray:
    """Per-element chemical potentials μ with y ≈ e − X μ (ridge least squares)."""
    X, e, y = np.asarray(X, float), np.asarray(e, float), np.asarray(y, float)
    return np.linalg.solve(X.T @ X + lam * np.eye(X.shape[1]), X.T @ (e - y))


def design_matrix(f_low, features: tuple | list, mf_levels: dict | None) -> np.ndarray:
    """Mean columns of the co-kriging: the MLIP formation energies (n, k), then the requested MF-ENNP
    level predictions."""
    f_low = np.asarray(f_low, float)
    cols = list(f_low.T) if f_low.ndim == 2 else [f_low]
    for lv in features:
        if mf_levels is None or lv not in mf_levels:
            raise InputError(f"the MLIP member needs the MF-ENNP {lv!r} head prediction")
        cols.append(np.asarray(mf_levels[lv], float))
    return np.stack(cols, 1)


# ------------------------------------------------------------------ the fitted member

class MLIPMember:
    """μ per MLIP + a conditioned `CoKriging` model; `predict` gives E_EXP and its GP standard deviation.

    ``mlip_keys``: the MLIPs the fitted design uses (energies are passed in this order)."""

    def __init__(self, meta: dict, mu: np.ndarray, arrays: dict):
        self.meta, self.mu, self.arrays = meta, np.atleast_2d(np.asarray(mu, float)), arrays
        h = meta["gp"]
        used = np.asarray(arrays["used"], bool)
        self.gp = CoKriging().set_params(h["lengthscale"], h["linear"], h["ratio"], h["beta"], h["s2"],
                                         arrays["F"][used], arrays["X"][used], arrays["y"][used])
        self.features = tuple(meta["design"]["features"])
        self.mlip_keys = tuple(meta["design"]["mlip_keys"])

    @property
    def name(self) -> str:
        return self.meta["member"]

    @property
    def fidelities(self) -> list[str]:
        return list(self.meta["mlip_fidelities"])

    def energies(self, structures, batch_size: int = 16) -> np.ndarray:
        """(n, k) MLIP energies per atom for the MLIPs this member uses."""
        return np.stack([mlip_energy_per_atom(structures, k, batch_size) for k in self.mlip_keys], 1)

    def f_low(self, e_mlip, X) -> np.ndarray:
        """(n, k) MLIP formation energies (energy per atom minus fitted chemical potentials)."""
        e = np.asarray(e_mlip, float)
        e = e[:, None] if e.ndim == 1 else e
        if e.shape[1] != len(self.mlip_keys):
            raise InputError(f"expected energies of {len(self.mlip_keys)} MLIPs ({', '.join(self.mlip_keys)}), "
                             f"got {e.shape[1]}")
        return e - np.asarray(X, float) @ self.mu.T

    @property
    def sigma_scale(self) -> float:
        return float(self.meta["gp"].get("sigma_scale", 1.0))

    def predict(self, e_mlip, X, mf_levels: dict | None = None, return_std: bool = True, raw_std: bool = False):
        """E_EXP and (unless ``return_std=False``) its GP standard deviation, scaled by the variance
        scale fitted on EXP val (``raw_std=True``: unscaled)."""
        X = np.asarray(X, float)
        F = design_matrix(self.f_low(e_mlip, X), self.features, mf_levels)
        if not return_std:
            return self.gp.predict(F, X)
        mu, sd = self.gp.predict(F, X, return_std=True)
        return mu, sd if raw_std else self.sigma_scale * sd

    def save(self, path) -> int:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            np.savez_compressed(f, format=np.array(FORMAT), meta=np.array(json.dumps(self.meta, default=float)),
                                mu=self.mu, **{k: np.asarray(v) for k, v in self.arrays.items()})
        return path.stat().st_size


ARRAY_KEYS = ("X", "F", "y", "e_mlip", "split", "fere", "used")
_CACHE: dict = {}


def load_member(ref: str | Path = "chgnet") -> MLIPMember:
    """A fitted member: a member name (its committed artifact) or an ``.npz`` path."""
    path = default_artifact(str(ref)) if str(ref) in MEMBERS else Path(ref)
    if not path.exists():
        if str(ref) not in MEMBERS and path.suffix != ".npz":
            raise InputError(f"unknown MLIP member {str(ref)!r}: a member name ({', '.join(MEMBERS)}) or an .npz file")
        raise CheckpointError(f"MLIP member artifact not found: {path} (build it with "
                              f"python -m qadb.models.validator.mlip_member)")
    key = (str(path), path.stat().st_mtime)
    if key not in _CACHE:
        try:
            with np.load(path, allow_pickle=False) as f:
                fmt = str(f["format"]) if "format" in f.files else None
                if fmt != FORMAT:
                    raise CheckpointError(f"{path}: not an MLIP-member artifact (format {fmt!r})")
                meta = json.loads(str(f["meta"]))
                mu = f["mu"]
                arrays = {k: f[k] for k in ARRAY_KEYS}
            member = MLIPMember(meta, mu, arrays)
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - one line naming the file
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
            raise CheckpointError(f"{path}: not a readable MLIP-member artifact ({first})") from None
        _CACHE[key] = member
    return _CACHE[key]


def file_sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def check_validator(member: MLIPMember, checkpoint_path) -> None:
    """A member with MF-ENNP mean columns is tied to the validator checkpoint it was fitted on."""
    if not member.features:
        return
    want = member.meta.get("validator_sha256")
    have = file_sha256(checkpoint_path)
    if want and want != have:
        raise InputError(f"MLIP member {member.name!r} was fitted on the MF-ENNP features of validator checkpoint "
                         f"{want} but this checkpoint is {have}: refit it with "
                         f"python -m qadb.models.validator.mlip_member --checkpoint {checkpoint_path}")


# ------------------------------------------------------------------ fitting (train/val only)

def _fit_one(cand: dict, F, X, y, rows) -> CoKriging:
    return CoKriging().fit(F[rows], X[rows], y[rows], linear=LINEAR_RATIOS if cand["linear"] else None)


def select_and_fit(e_mlip, X, y, split, fere, mf_levels: dict, mu, mlip_keys, candidates: list[dict] | None = None,
                   verbose: bool = False) -> tuple[dict, dict, list[dict]]:
    """Choose a design on val (each candidate fitted on train), refit it on train+val. Test rows are refused.

    ``e_mlip`` (n, m) energies per atom of the m MLIPs ``mlip_keys``, ``mu`` (m, 101). Returns (meta
    fragment: design + GP hyper-parameters, the winner's ``mu``, arrays for `MLIPMember`, selection table)."""
    e_mlip, X, y = np.asarray(e_mlip, float), np.asarray(X, float), np.asarray(y, float)
    e_mlip = e_mlip[:, None] if e_mlip.ndim == 1 else e_mlip
    mu = np.atleast_2d(np.asarray(mu, float))
    split, fere = np.asarray(split).astype(str), np.asarray(fere, bool)
    if (split == "test").any() or not np.isin(split, ["train", "val"]).all():
        raise InputError("the MLIP member is fitted on train/val rows only; got test (or unknown) split rows")
    candidates = CANDIDATES if candidates is None else candidates
    f_all = e_mlip - X @ mu.T
    tr, va = split == "train", split == "val"
    table, best = [], None
    for cand in candidates:
        if max(cand["mlips"]) >= e_mlip.shape[1]:
            continue
        F = design_matrix(f_all[:, list(cand["mlips"])], cand["features"], mf_levels)
        rows = tr & (fere if cand["train"] == "fere" else True)
        ck = _fit_one(cand, F, X, y, rows)
        err = np.abs(ck.predict(F[va], X[va]) - y[va])
        row = {"mlips": [mlip_keys[i] for i in cand["mlips"]], "train": cand["train"],
               "features": list(cand["features"]), "linear": bool(cand["linear"]),
               "mae_val": float(err.mean()), "n_val": int(va.sum()),
               "mae_val_fere": float(err[fere[va]].mean()) if fere[va].any() else None, "n_train": int(rows.sum())}
        table.append(row)
        if verbose:
            print(json.dumps(row), file=sys.stderr, flush=True)
        if best is None or row["mae_val"] < best[0]["mae_val"]:
            best = (row, cand, ck, F)
    if best is None:
        raise InputError("no candidate design fits the given MLIP energies")
    cand, ck_tr, F_tr = best[1], best[2], best[3]
    # σ recalibration (one variance scale minimising ECE on EXP val, from the train-only fit), as for E_MF
    from qadb.models.validator import uncertainty as U

    ev, sv = ck_tr.predict(F_tr[va], X[va], return_std=True)
    sigma_scale = U.fit_sigma_scale(y[va], ev, sv) if va.sum() >= 10 else 1.0
    sel = list(cand["mlips"])
    F = design_matrix(f_all[:, sel], cand["features"], mf_levels)
    used = (tr | va) & (fere if cand["train"] == "fere" else True)
    ck = _fit_one(cand, F, X, y, used)
    design = {"mlip_keys": [mlip_keys[i] for i in sel], "train": cand["train"], "features": list(cand["features"]),
              "linear": bool(cand["linear"])}
    gp = {"lengthscale": ck.ls, "linear": ck.lin, "ratio": ck.ratio, "s2": ck.s2, "beta": ck.beta.tolist(),
          "rho": np.atleast_1d(ck.rho).tolist(), "b": ck.b, "nll": float(ck.nll), "sigma_scale": sigma_scale}
    arrays = {"X": X, "F": F, "y": y, "e_mlip": e_mlip[:, sel], "split": split, "fere": fere, "used": used}
    return {"design": design, "gp": gp}, mu[sel], arrays, table


def _cached_energies(rows: list[dict], key: str, cache_dir, say) -> np.ndarray:
    """MLIP energies of records (by record key: the same key always means the same structure)."""
    cache: dict[str, float] = {}
    path = Path(cache_dir) / f"{key}.npz" if cache_dir else None
    if path and path.exists():
        with np.load(path, allow_pickle=False) as f:
            cache = dict(zip(f["keys"].tolist(), f["e"].tolist()))
    need = list({r["key"]: r for r in rows if r["key"] not in cache}.values())
    t0 = time.time()
    for s in range(0, len(need), 256):
        chunk = need[s:s + 256]
        cache.update(zip([r["key"] for r in chunk], mlip_energy_per_atom([r["structure"] for r in chunk], key).tolist()))
        say(f"{key}: {s + len(chunk)}/{len(need)} structures ({time.time() - t0:.0f}s)")
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, keys=np.array(list(cache)), e=np.array(list(cache.values())))
    return np.array([cache[r["key"]] for r in rows])


def build(out: str | Path | None = None, name: str = "chgnet", n_mu: int = 4000, seed: int = 0,
          checkpoint: str | Path | None = None, energy_cache: str | Path | None = None,
          graph_cache: str | Path | None = None, verbose: bool = True) -> dict:
    """Fit the member on the staged data (EXP train+val rows; μ on MP PBE+U train+val rows) and save it."""
    import torch

    from qadb.models.validator import data as D
    from qadb.models.validator import uncertainty as U
    from qadb.models.validator.api import DEFAULT_CHECKPOINT, load_validator
    from qadb.models.validator.train import predict_ensemble

    if name not in MEMBERS:
        raise InputError(f"unknown MLIP member {name!r}; known: {', '.join(MEMBERS)}")
    torch.set_num_threads(1)
    t0 = time.time()
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if verbose else (lambda m: None)
    out = Path(out) if out else default_artifact(name)
    ckpt = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
    keys = MEMBERS[name]
    recs = D.staged_formation_records()
    exp = [r for r in recs if r["level"] == "EXP" and D.split_of(r["formula"]) != "test"]
    root = [r for r in recs if r["level"] == D.ROOT_LEVEL and D.split_of(r["formula"]) != "test"]
    rng = np.random.default_rng(seed)
    mu_rows = [root[i] for i in sorted(rng.permutation(len(root))[:n_mu])]
    # μ per MLIP: energy -> MP PBE+U formation energy on train+val MP rows
    Xm = element_fractions([r["structure"] for r in mu_rows])
    ym = np.array([r["value"] for r in mu_rows])
    mus, mu_mae, e_exp = [], {}, []
    for k in keys:
        em = _cached_energies(mu_rows, k, energy_cache, say)
        mus.append(fit_mu(Xm, em, ym))
        mu_mae[k] = float(np.mean(np.abs(em - Xm @ mus[-1] - ym)))
        e_exp.append(_cached_energies(exp, k, energy_cache, say))
    # MF-ENNP per-level predictions of the EXP fit rows
    members, cfg, _ = load_validator(ckpt)
    g, gi = D.featurize_records(exp, cache=graph_cache, cutoff=cfg["cutoff"], max_neighbors=cfg["max_neighbors"])
    m_, s_ = predict_ensemble(members, [g[gi[r["key"]]] for r in exp])
    mf = {lv: U.aggregate(m_[:, :, li], s_[:, :, li])[0] for li, lv in enumerate(cfg["levels"])}
    X = element_fractions([r["structure"] for r in exp])
    y = np.array([r["value"] for r in exp])
    split = np.array([D.split_of(r["formula"]) for r in exp])
    fere = np.array([r["source"] == "fere_exp" for r in exp])
    sel, mu, arrays, table = select_and_fit(np.stack(e_exp, 1), X, y, split, fere, mf, np.stack(mus), keys,
                                            verbose=verbose)
    fids = {k: mlip_fidelity(k) for k in keys}
    meta = {
        "member": name, "mlip_fidelities": [fids[k] for k in sel["design"]["mlip_keys"]], **sel,
        "validator_checkpoint": ckpt.name, "validator_sha256": file_sha256(ckpt),
        "mu": {"target_level": D.ROOT_LEVEL, "n_rows": len(mu_rows), "split": "train+val", "ridge": MU_RIDGE,
               "seed": seed, "fit_mae_ev_per_atom": {fids[k]: v for k, v in mu_mae.items()}},
        "rows": {"exp_fit": int(len(y)), "train": int((split == "train").sum()), "val": int((split == "val").sum()),
                 "fere": int(fere.sum()), "used_in_gp": int(arrays["used"].sum())},
        "selection": {"criterion": "MAE on all EXP val rows, each candidate fitted on EXP train rows",
                      "candidates": table},
        "keys_sha256": hashlib.sha256("|".join(r["key"] for r in exp).encode()).hexdigest()[:16],
        "command": "python -m qadb.models.validator.mlip_member" + (f" --checkpoint {checkpoint}" if checkpoint else ""),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.time() - t0, 1),
    }
    nbytes = MLIPMember(meta, mu, arrays).save(out)
    say(f"wrote {out} ({nbytes / 1e3:.0f} kB): design {sel['design']}, val MAE "
        f"{min(r['mae_val'] for r in table):.4f} ({time.time() - t0:.0f}s)")
    return {"path": str(out), "bytes": nbytes, **meta}


def main(argv=None):
    ap = argparse.ArgumentParser(description="Fit the MLIP low-fidelity member of the validator (train/val rows only).")
    ap.add_argument("--member", default="chgnet", choices=list(MEMBERS))
    ap.add_argument("--out", default=None, help="default: qadb/data/checkpoints/validator_mlip_<member>.npz")
    ap.add_argument("--n-mu", type=int, default=4000, help="MP PBE+U train+val rows for the chemical potentials")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default=None, help="validator checkpoint whose heads feed the mean (default: bundled)")
    ap.add_argument("--energy-cache", default=None, help="folder caching MLIP energies by record key (<mlip>.npz)")
    ap.add_argument("--graph-cache", default=None, help="graph cache folder (see data.featurize_records)")
    a = ap.parse_args(argv)
    res = build(a.out, a.member, a.n_mu, a.seed, a.checkpoint, a.energy_cache, a.graph_cache)
    print(json.dumps({k: res[k] for k in ("path", "bytes", "design", "gp", "mu", "rows")}, indent=1, default=float))


if __name__ == "__main__":
    main()
