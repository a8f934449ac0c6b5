"""Stable input hashes: the idempotency key of a calculation (same structure + same settings = same hash).

The structure is canonicalised (lattice and wrapped fractional coordinates rounded to 1e-6, sites
sorted) so that site order, coordinate wrapping and float noise below 1e-6 do not change the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from qadb.drivers.structures import as_structure

_DECIMALS = 6


def _round(values: Any) -> list:
    arr = np.round(np.asarray(values, dtype=float), _DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0
    return arr.tolist()


def canonical_structure(structure: Any) -> dict:
    """JSON-ready canonical form of a structure: rounded lattice + sorted (species, wrapped frac coords)."""
    s = as_structure(structure)
    sites = []
    for site in s:
        frac = np.round(np.mod(site.frac_coords, 1.0), _DECIMALS) % 1.0  # 0.9999999 -> 0.0 after rounding
        sites.append((str(site.species), _round(frac)))
    sites.sort()
    return {"lattice": _round(s.lattice.matrix), "sites": sites}


def _plain(obj: Any) -> Any:
    """Settings to plain JSON types (dataclasses, mappings, tuples, numpy scalars)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float):
        return round(obj, 12)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    raise TypeError(f"cannot hash settings value of type {type(obj).__name__}")


def input_hash(structure: Any, settings: Any) -> str:
    """sha256 hex digest of the canonical structure + settings (a dataclass or a mapping)."""
    payload = {"structure": canonical_structure(structure), "settings": _plain(settings)}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
