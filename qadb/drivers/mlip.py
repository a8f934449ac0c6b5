"""Machine-learned interatomic potentials behind one interface.

`load_mlip(name)` returns an `MLIP` whose `.calculator()` is an ASE calculator; every model loads
offline from weights its wheel bundles (CHGNet, SevenNet) or from a checkpoint file the user gives
(MACE: mace-torch ships no weights and `mace_mp()` downloads them). Loading takes seconds, so each
(name, head, checkpoint, device) is loaded once per process.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from qadb import fidelity as fid
from qadb.errors import CheckpointError, ConfigError, InputError


@dataclass(frozen=True, eq=False)
class MLIP:
    """A loaded potential: identity for provenance plus its (shared, not thread-safe) ASE calculator."""

    name: str  # model name used in the fidelity, e.g. "CHGNet", "SevenNet-MF-0-PBE"
    version: str  # weights version (or the bundling package's version where the weights have none)
    code: str  # the Python distribution that evaluates it
    code_version: str
    _calculator: Any

    @property
    def fidelity(self) -> str:
        return fid.mlip(self.name, self.version)

    def calculator(self) -> Any:
        return self._calculator

    def energies_per_atom(self, structures: list, batch_size: int = 64) -> np.ndarray:
        """Single-point energy per atom (eV/atom) of each pymatgen Structure, in order.

        CHGNet evaluates batches of graphs in one pass (about 100 small cells/s on one CPU core); other
        potentials go through their ASE calculator one cell at a time.
        """
        if not structures:
            return np.zeros(0)
        model = getattr(self._calculator, "model", None)
        if self.code == "chgnet" and model is not None:
            with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # chgnet's own tensor-construction warnings
                preds = model.predict_structure(list(structures), task="e", batch_size=batch_size)
            preds = [preds] if isinstance(preds, dict) else preds
            return np.array([float(p["e"]) for p in preds])
        from pymatgen.io.ase import AseAtomsAdaptor

        out = []
        for s in structures:
            atoms = AseAtomsAdaptor.get_atoms(s)
            atoms.calc = self._calculator
            out.append(float(atoms.get_potential_energy()) / len(atoms))
            atoms.calc = None
        return np.array(out)


def _pkg_version(dist: str) -> str:
    return importlib.metadata.version(dist)


def _require(module: str, dist: str, model: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise ConfigError(f"MLIP {model!r} needs the '{dist}' package: pip install {dist}") from None


# CHGNet weights bundled in the chgnet wheel: key -> (chgnet model_name, fidelity name, weights version)
# (None: the weights carry no version of their own; the bundling package's version stands in)
_CHGNET = {
    "chgnet-0.3.0": ("0.3.0", "CHGNet", "0.3.0"),
    "chgnet-0.2.0": ("0.2.0", "CHGNet", "0.2.0"),
    "chgnet-r2scan": ("r2scan", "CHGNet-r2SCAN", None),
}


def _chgnet(key: str, device: str) -> MLIP:
    _require("chgnet", "chgnet", key)
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    weights, label, version = _CHGNET[key]
    model = CHGNet.load(model_name=weights, use_device=device, verbose=False)
    calc = CHGNetCalculator(model=model, use_device=device)
    return MLIP(label, version or _pkg_version("chgnet"), "chgnet", _pkg_version("chgnet"), calc)


# SevenNet weights bundled in the sevenn wheel: key -> (sevenn model id, fidelity name, weights version, heads)
_SEVENNET = {
    "sevennet-0": ("7net-0", "SevenNet-0", "11Jul2024", ()),
    "sevennet-l3i5": ("7net-l3i5", "SevenNet-l3i5", None, ()),
    "sevennet-mf-0": ("7net-mf-0", "SevenNet-MF-0", None, ("PBE", "R2SCAN")),
}


def _sevennet(key: str, head: str | None, device: str) -> MLIP:
    model_id, label, version, heads = _SEVENNET[key]
    if heads and head is None:
        raise InputError(f"MLIP {key!r} is multi-fidelity: pass head= one of {', '.join(heads)}")
    if head is not None:
        if head not in heads:
            raise InputError(f"MLIP {key!r} has no head {head!r}; heads: {', '.join(heads)}")
        label = f"{label}-{'r2SCAN' if head == 'R2SCAN' else head}"
    _require("sevenn", "sevenn", key)
    from sevenn.calculator import SevenNetCalculator

    calc = SevenNetCalculator(model_id, device=device, modal=head)
    return MLIP(label, version or _pkg_version("sevenn"), "sevenn", _pkg_version("sevenn"), calc)


def _mace(checkpoint: str | None, device: str) -> MLIP:
    if checkpoint is None:
        raise InputError("MLIP 'mace' needs checkpoint=PATH to a MACE model file (no weights are bundled)")
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"MACE checkpoint not found: {path}")
    _require("mace", "mace-torch", "mace")
    from mace.calculators import MACECalculator

    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    try:
        calc = MACECalculator(model_paths=str(path), device=device, default_dtype="float64")
    except Exception as exc:  # torch.load raises many types on a corrupt/foreign file
        raise CheckpointError(f"cannot load MACE checkpoint {path}: {exc}") from None
    return MLIP("MACE", digest, "mace-torch", _pkg_version("mace-torch"), calc)


_LOADERS: dict[str, Callable[[str, str | None, str | None, str], MLIP]] = {
    **{key: lambda key, head, ckpt, dev: _chgnet(key, dev) for key in _CHGNET},
    **{key: lambda key, head, ckpt, dev: _sevennet(key, head, dev) for key in _SEVENNET},
    "mace": lambda key, head, ckpt, dev: _mace(ckpt, dev),
}
_ALIASES = {"chgnet": "chgnet-0.3.0", "sevennet": "sevennet-0", "7net-0": "sevennet-0", "7net-mf-0": "sevennet-mf-0"}

MODELS: tuple[str, ...] = tuple(_LOADERS)


def load_mlip(name: str, *, head: str | None = None, checkpoint: str | None = None, device: str = "cpu") -> MLIP:
    """Load a potential by name (see `MODELS`), once per process per (name, head, checkpoint, device)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _LOADERS:
        raise InputError(f"unknown MLIP {name!r}; known: {', '.join(MODELS)}")
    if checkpoint is not None and key != "mace":
        raise InputError(f"MLIP {name!r} uses bundled weights; checkpoint= is only for 'mace'")
    if head is not None and not (key in _SEVENNET and _SEVENNET[key][3]):
        raise InputError(f"MLIP {name!r} has a single head; head= is only for multi-fidelity models")
    ckpt = str(Path(checkpoint).resolve()) if checkpoint is not None else None
    return _load_cached(key, head.upper() if head else None, ckpt, device)


@functools.lru_cache(maxsize=None)
def _load_cached(key: str, head: str | None, checkpoint: str | None, device: str) -> MLIP:
    # the MLIP packages warn about optional accelerators and print banners: keep stdout for results
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        return _LOADERS[key](key, head, checkpoint, device)

