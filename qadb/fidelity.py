"""The fidelity taxonomy: the one place that names levels of theory.

Every label in the store names exactly one fidelity from this module. Names are canonical
(``PBE+U``, ``r2SCAN``, ``CCSD(T)``, ``MLIP:CHGNet@0.3.0``); `parse` accepts the common spellings
users and datasets write (``GGA+U``, ``r2scan``, ``hse``, ``experiment``) and rejects anything else
with a one-line error. `slug` gives the form used inside metric names (``PBE+U`` -> ``pbe_u``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qadb.errors import InputError

# Canonical names with their rung on the accuracy ladder used for multi-fidelity weighting.
# The rung orders levels of theory by typical accuracy for formation energies and gaps; it is a
# modelling default (seed 000 Eq. 2 weights rise with fidelity), not a physical law.
_LEVELS: dict[str, int] = {
    "PBE": 1,
    "PBE+U": 1,
    "PBEsol": 1,
    "SCAN": 2,
    "SCAN+U": 2,
    "r2SCAN": 2,
    "r2SCAN+U": 2,
    "GLLB-SC": 2,
    "HSE06": 3,
    "PBE0": 3,
    "CCSD(T)": 4,
    "EXP": 5,
}

_ALIASES: dict[str, str] = {
    "gga": "PBE",
    "gga+u": "PBE+U",
    "gga/gga+u": "PBE+U",
    "pbe_u": "PBE+U",
    "pbesol": "PBEsol",
    "scan_u": "SCAN+U",
    "r2scan_u": "r2SCAN+U",
    "gllb": "GLLB-SC",
    "gllb_sc": "GLLB-SC",
    "hse": "HSE06",
    "hse06": "HSE06",
    "ccsd_t": "CCSD(T)",
    "exp": "EXP",
    "expt": "EXP",
    "experiment": "EXP",
    "experimental": "EXP",
}

MLIP_PREFIX = "MLIP:"
_MLIP_RE = re.compile(r"^MLIP:([A-Za-z0-9][A-Za-z0-9_.\-]*)@([A-Za-z0-9][A-Za-z0-9_.+\-]*)$")
MLIP_RUNG = 0

CANONICAL: tuple[str, ...] = tuple(_LEVELS)


@dataclass(frozen=True)
class Fidelity:
    """A parsed fidelity: canonical name and accuracy rung (MLIPs sit below DFT)."""

    name: str
    rung: int

    @property
    def is_mlip(self) -> bool:
        return self.name.startswith(MLIP_PREFIX)

    @property
    def is_experiment(self) -> bool:
        return self.name == "EXP"


def slug(name: str) -> str:
    """Lower-case, every run of non-alphanumerics replaced by one '_', no trailing '_'."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def mlip(model: str, version: str) -> str:
    """Canonical fidelity name of a machine-learned potential, e.g. ``MLIP:CHGNet@0.3.0``."""
    return canonical(f"{MLIP_PREFIX}{model}@{version}")


def parse(name: str) -> Fidelity:
    """Parse a fidelity name or alias; raise `InputError` naming the bad value otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"fidelity must be a non-empty name, got {name!r}")
    text = name.strip()
    if text.upper().startswith(MLIP_PREFIX):
        text = MLIP_PREFIX + text[len(MLIP_PREFIX):]
        if not _MLIP_RE.match(text):
            raise InputError(f"MLIP fidelity must look like 'MLIP:<name>@<version>', got {name!r}")
        return Fidelity(text, MLIP_RUNG)
    for canon in _LEVELS:
        if text == canon or text.lower() == canon.lower():
            return Fidelity(canon, _LEVELS[canon])
    alias = _ALIASES.get(slug(text)) or _ALIASES.get(text.lower())
    if alias:
        return Fidelity(alias, _LEVELS[alias])
    known = ", ".join(CANONICAL)
    raise InputError(f"unknown fidelity {name!r}; known: {known}, MLIP:<name>@<version>")


def canonical(name: str) -> str:
    """Canonical spelling of a fidelity name (raises `InputError` if unknown)."""
    return parse(name).name


def rung(name: str) -> int:
    """Accuracy rung of a fidelity (0 = MLIP, 1 = GGA, ... 5 = experiment)."""
    return parse(name).rung
