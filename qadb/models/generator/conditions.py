"""Conditioning columns of the generator (torch/numpy only).

Each property is one scalar column with its own availability mask, so that a new descriptor (M_LED from
``qadb.chem`` once it exists) is added by filling its column in the data file: the network has an embedding
slot for every name in `PROPS` from the start and learns it from the rows where it is present.
The chemical system is a multi-hot vector over the N_TYPES elements, with its own mask.
"""

from __future__ import annotations

N_TYPES = 100  # elements Z = 1..100, index Z-1

# order is part of the checkpoint format: append only
PROPS = ("compactness", "mled", "formation_energy", "e_hull", "band_gap", "bulk_modulus")

# fixed affine normalisation (value - mean) / scale, chosen from the MP-like training pool; plain numbers so a
# checkpoint does not depend on the data file
PROP_NORM = {
    "compactness": (0.55, 0.20),
    "mled": (8.0, 2.0),
    "formation_energy": (-1.5, 1.0),
    "e_hull": (0.05, 0.1),
    "band_gap": (1.0, 1.5),
    "bulk_modulus": (100.0, 70.0),
}

# user-facing aliases accepted by `sample(conditions=...)`
ALIASES = {"C": "compactness", "c": "compactness", "M_LED": "mled", "m_led": "mled", "e_form": "formation_energy",
           "E_hull": "e_hull", "ehull": "e_hull", "gap": "band_gap", "K": "bulk_modulus", "bulk": "bulk_modulus"}


def canonical(name: str) -> str:
    n = ALIASES.get(name, name)
    if n not in PROPS:
        raise KeyError(f"unknown condition {name!r}; known: {', '.join(PROPS)} and chemsys")
    return n
