"""Structure -> graph arrays (CPU side; the only validator module that imports pymatgen).

A graph is a plain dict of numpy arrays, so that the torch-only network modules never see pymatgen:

- ``z``     (n,)   int64 atomic numbers
- ``src``   (e,)   int64 neighbour index (message sender)
- ``dst``   (e,)   int64 centre index (message receiver)
- ``dist``  (e,)   float32 interatomic distance in Å (periodic images included)

Only distances enter the network, so predicted energies are invariant to rotation, translation and
permutation of the atoms by construction. Each atom keeps at most ``max_neighbors`` nearest
neighbours inside ``cutoff`` (ties broken by index) to bound the cost per atom.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np

from qadb.errors import InputError

DEFAULT_CUTOFF = 5.0
DEFAULT_MAX_NEIGHBORS = 16


def structure_from_any(obj):
    """A pymatgen Structure from a Structure, a Structure dict, or CIF text."""
    from pymatgen.core import Structure

    if isinstance(obj, Structure):
        return obj
    if isinstance(obj, dict):
        try:
            return Structure.from_dict(obj)
        except Exception as exc:  # noqa: BLE001 - one-line error for the user
            raise InputError(f"not a pymatgen Structure dict: {exc}") from None
    if isinstance(obj, str):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return Structure.from_str(obj, fmt="cif")
            except Exception as exc:  # noqa: BLE001
                raise InputError(f"CIF text could not be parsed: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    raise InputError(f"expected a pymatgen Structure, Structure dict or CIF string, got {type(obj).__name__}")


def featurize(structure, cutoff: float = DEFAULT_CUTOFF, max_neighbors: int = DEFAULT_MAX_NEIGHBORS) -> dict:
    """Graph arrays of one structure (see module docstring)."""
    s = structure_from_any(structure)
    if len(s) == 0:
        raise InputError("structure has no sites")
    if not s.is_ordered:
        raise InputError(f"{s.composition.reduced_formula}: disordered structures are not supported")
    z = np.array([site.specie.Z for site in s], dtype=np.int64)
    centre, nbr, _, dist = s.get_neighbor_list(cutoff)
    keep = dist > 1e-6
    centre, nbr, dist = centre[keep], nbr[keep], dist[keep]
    if max_neighbors and len(centre):
        order = np.lexsort((dist, centre))
        centre, nbr, dist = centre[order], nbr[order], dist[order]
        start = np.searchsorted(centre, centre, side="left")
        rank = np.arange(len(centre)) - start
        keep = rank < max_neighbors
        centre, nbr, dist = centre[keep], nbr[keep], dist[keep]
    return {
        "z": z,
        "src": nbr.astype(np.int64),
        "dst": centre.astype(np.int64),
        "dist": dist.astype(np.float32),
    }


def featurize_many(structures, cutoff: float = DEFAULT_CUTOFF, max_neighbors: int = DEFAULT_MAX_NEIGHBORS) -> list[dict]:
    return [featurize(s, cutoff, max_neighbors) for s in structures]


def pack(graphs: list[dict]) -> dict:
    """Concatenate graphs into flat arrays with per-graph counts (compact on-disk form)."""
    return {
        "z": np.concatenate([g["z"] for g in graphs]) if graphs else np.zeros(0, np.int64),
        "n_atoms": np.array([len(g["z"]) for g in graphs], dtype=np.int64),
        "src": np.concatenate([g["src"] for g in graphs]) if graphs else np.zeros(0, np.int64),
        "dst": np.concatenate([g["dst"] for g in graphs]) if graphs else np.zeros(0, np.int64),
        "dist": np.concatenate([g["dist"] for g in graphs]) if graphs else np.zeros(0, np.float32),
        "n_edges": np.array([len(g["dist"]) for g in graphs], dtype=np.int64),
    }


def unpack(packed: dict) -> list[dict]:
    out = []
    na = np.asarray(packed["n_atoms"])
    ne = np.asarray(packed["n_edges"])
    ao = np.concatenate([[0], np.cumsum(na)])
    eo = np.concatenate([[0], np.cumsum(ne)])
    for i in range(len(na)):
        out.append({
            "z": packed["z"][ao[i]:ao[i + 1]],
            "src": packed["src"][eo[i]:eo[i + 1]],
            "dst": packed["dst"][eo[i]:eo[i + 1]],
            "dist": packed["dist"][eo[i]:eo[i + 1]],
        })
    return out


def composition_key(structure) -> str:
    return structure_from_any(structure).composition.reduced_formula


def content_hash(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]
