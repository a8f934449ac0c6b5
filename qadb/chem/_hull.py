"""Convex hulls of formation energy per chemical system (seed 000, Eq. 6 and Algorithm 2; Table 2).

A `PhaseHull` is the lower convex envelope of formation energy per atom over the composition simplex of
one chemical system, built from the phases of ONE fidelity. Formation energies are relative to the
elements, so every element of the system enters with an implicit reference at 0 eV/atom (an elemental
entry given by the caller, e.g. a polymorph, is added on top). Queries are exact linear algebra on the
hull facets: the facet that contains the composition gives the competing phases and their atom
fractions (the LP solution of Algorithm 2), so a query costs one small batched solve and no LP.

Decomposition energy (the quantity Table 2 is applied to, so that stable phases get a negative value):
E_d(x) = E(x) - E_hull_of_all_other_phases(c(x)). "Other" excludes only x itself: a polymorph above a
known ground state keeps its positive distance (pymatgen's ``get_decomp_and_phase_separation_energy``
instead drops every entry of the same composition; for entries without polymorphs both agree).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from qadb.chem._composition import CompositionLike, as_amounts
from qadb.errors import InputError

HULL_SCHEMA = "qadb.chem.hull/1"
REF_PREFIX = "ref:"
_OUTSIDE_TOL = 1e-6  # a composition whose best facet weight is below -this is outside the simplex
_CHUNK = 256  # candidates per batched facet solve (bounds memory at F x 256 x n)
_FRACTION_TOL = 1e-10  # phase fractions below this are dropped from a decomposition

# Table 2 of seed 000, bounds in meV/atom, applied to the decomposition energy.
STABLE, METASTABLE, MARGINAL, UNSTABLE = "stable", "metastable", "marginally_metastable", "unstable"


def stability_class(decomposition_energy_ev: float) -> str:
    """Seed-000 Table 2 class: < 0 stable, [0, 50) metastable, [50, 100] marginal, > 100 unstable (meV/atom)."""
    mev = round(1000.0 * float(decomposition_energy_ev), 6)  # 0.1 eV computed as 0.1000...01 stays marginal
    if not np.isfinite(mev):
        raise InputError(f"decomposition energy must be finite, got {decomposition_energy_ev!r}")
    if mev < 0:
        return STABLE
    if mev < 50:
        return METASTABLE
    if mev <= 100:
        return MARGINAL
    return UNSTABLE


@dataclass(frozen=True)
class HullEntry:
    """One phase: an id, its composition and formation energy per atom (eV/atom) at one fidelity."""

    id: str
    composition: Mapping[str, float]
    energy_per_atom: float
    fidelity: str | None = None

    @classmethod
    def make(cls, id: str, composition: CompositionLike, energy_per_atom: float, fidelity: str | None = None):
        energy = float(energy_per_atom)
        if not np.isfinite(energy):
            raise InputError(f"entry {id!r}: formation energy must be finite, got {energy_per_atom!r}")
        return cls(str(id), as_amounts(composition), energy, fidelity)


@dataclass(frozen=True)
class HullResult:
    """Algorithm 2 output for one candidate, plus its Table 2 class."""

    e_above_hull: float  # eV/atom against every phase in the hull (0 for a phase on it)
    decomposition_energy: float  # eV/atom against every phase except the candidate itself
    hull_energy: float  # eV/atom of the competing-phase mixture
    decomposition: dict[str, float]  # competing phase id -> atom fraction
    stability: str

    def as_dict(self) -> dict:
        return {
            "e_above_hull": self.e_above_hull,
            "decomposition_energy": self.decomposition_energy,
            "hull_energy": self.hull_energy,
            "decomposition": dict(self.decomposition),
            "stability": self.stability,
        }


@dataclass
class PhaseHull:
    """Lower hull of one chemical system at one fidelity; cheap to query, serialisable to a plain dict."""

    elements: tuple[str, ...]
    entries: tuple[HullEntry, ...]  # includes the implicit elemental references
    facets: np.ndarray  # (F, n) indices into `entries`
    fidelity: str | None = None
    _fractions: np.ndarray = field(init=False, repr=False)
    _energies: np.ndarray = field(init=False, repr=False)
    _inverse: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._fractions = _fraction_matrix(self.entries, self.elements)
        self._energies = np.array([e.energy_per_atom for e in self.entries])
        self.facets = np.asarray(self.facets, dtype=np.int64).reshape(-1, len(self.elements))
        # Column k of M_f is the composition of vertex k: weights w = M_f^-1 x are the phase fractions.
        self._inverse = np.linalg.inv(np.transpose(self._fractions[self.facets], (0, 2, 1)))

    @property
    def chemsys(self) -> str:
        return "-".join(self.elements)

    @property
    def stable_ids(self) -> list[str]:
        """Ids of the phases at hull vertices (elemental references included)."""
        return [self.entries[i].id for i in sorted(set(self.facets.ravel().tolist()))]

    def fractions(self, composition: CompositionLike) -> np.ndarray:
        """Atom fractions over `elements`; raises `InputError` for elements outside the system."""
        amounts = as_amounts(composition)
        extra = sorted(set(amounts) - set(self.elements))
        if extra:
            raise InputError(f"composition has {', '.join(extra)}, outside the hull's system {self.chemsys}")
        vec = np.array([amounts.get(el, 0.0) for el in self.elements])
        return vec / vec.sum()

    def hull_energies(self, fractions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hull energy, containing facet and its vertex weights for rows of atom fractions (Q, n)."""
        x = np.atleast_2d(np.asarray(fractions, dtype=float))
        energy, facets, weights = [], [], []
        for start in range(0, len(x), _CHUNK):
            w_all = np.einsum("fij,qj->qfi", self._inverse, x[start : start + _CHUNK])  # (q, F, n)
            facet = w_all.min(axis=2).argmax(axis=1)
            w = w_all[np.arange(len(facet)), facet]
            if np.any(w.min(axis=1) < -_OUTSIDE_TOL):
                raise InputError("composition lies outside the hull's composition simplex")
            energy.append(np.einsum("qi,qi->q", w, self._energies[self.facets[facet]]))
            facets.append(facet)
            weights.append(w)
        return np.concatenate(energy), np.concatenate(facets), np.concatenate(weights)

    def analyse(self, composition: CompositionLike, energy_per_atom: float, entry_id: str | None = None) -> HullResult:
        """E_hull, decomposition products/fractions and Table 2 class of one phase (Algorithm 2).

        With `entry_id` naming a phase of this hull, the decomposition energy is measured against the
        hull without that phase; a candidate not in the hull needs no rebuild.
        """
        return self.analyse_many([composition], [energy_per_atom], [entry_id])[0]

    def analyse_many(
        self,
        compositions: Sequence[CompositionLike],
        energies: Sequence[float],
        entry_ids: Sequence[str | None] | None = None,
    ) -> list[HullResult]:
        """`analyse` for a batch of candidates in one vectorised hull query (the warm-cache path)."""
        x = np.array([self.fractions(c) for c in compositions]).reshape(-1, len(self.elements))
        energies = np.asarray(energies, dtype=float)
        if energies.shape != (len(x),):
            raise InputError(f"got {len(x)} compositions but {energies.size} energies")
        e_hull, facets, weights = self.hull_energies(x)
        results = []
        for q, (energy, facet) in enumerate(zip(energies.tolist(), facets.tolist())):
            e_above = energy - float(e_hull[q])
            e_decomp, decomposition = e_above, self._decomposition(facet, weights[q])
            entry_id = entry_ids[q] if entry_ids is not None else None
            if entry_id is not None and entry_id in {self.entries[i].id for i in self.facets[facet]}:
                others = self.without(entry_id)  # a vertex competes with the rest of the system
                e_other, f2, w2 = others.hull_energies(x[q])
                e_decomp = energy - float(e_other[0])
                decomposition = others._decomposition(int(f2[0]), w2[0])
            results.append(HullResult(e_above, e_decomp, float(e_hull[q]), decomposition, stability_class(e_decomp)))
        return results

    def e_above_hull(self, compositions: Sequence[CompositionLike], energies: Sequence[float]) -> np.ndarray:
        """Vectorised E_hull (eV/atom) of many candidates against this hull."""
        x = np.array([self.fractions(c) for c in compositions]).reshape(-1, len(self.elements))
        return np.asarray(energies, dtype=float) - self.hull_energies(x)[0]

    def without(self, entry_id: str) -> PhaseHull:
        """The hull rebuilt without one phase (elemental references cannot be removed)."""
        if entry_id.startswith(REF_PREFIX):
            raise InputError(f"cannot remove the elemental reference {entry_id!r}")
        kept = [e for e in self.entries if e.id != entry_id and not e.id.startswith(REF_PREFIX)]
        if len(kept) == len(self.entries) - len(self.elements):
            raise InputError(f"no phase {entry_id!r} in hull {self.chemsys}")
        return build_hull(kept, elements=self.elements, fidelity=self.fidelity)

    def _decomposition(self, facet: int, weights: np.ndarray) -> dict[str, float]:
        out: dict[str, float] = {}
        for idx, wt in zip(self.facets[facet], weights):
            if wt > _FRACTION_TOL:
                key = self.entries[idx].id
                out[key] = out.get(key, 0.0) + float(wt)
        return out

    def to_dict(self) -> dict:
        """Plain JSON-serialisable form (what the store persists per chemsys and fidelity)."""
        return {
            "schema": HULL_SCHEMA,
            "fidelity": self.fidelity,
            "elements": list(self.elements),
            "entries": [
                {"id": e.id, "composition": dict(e.composition), "energy_per_atom": e.energy_per_atom}
                for e in self.entries
                if not e.id.startswith(REF_PREFIX)
            ],
            "facets": self.facets.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> PhaseHull:
        """Inverse of `to_dict`, without re-running qhull."""
        if data.get("schema") != HULL_SCHEMA:
            raise InputError(f"not a hull document (schema {data.get('schema')!r}, expected {HULL_SCHEMA!r})")
        elements = tuple(data["elements"])
        fidelity = data.get("fidelity")
        entries = _references(elements, fidelity) + tuple(
            HullEntry.make(e["id"], e["composition"], e["energy_per_atom"], fidelity) for e in data["entries"]
        )
        return cls(elements, entries, np.asarray(data["facets"], dtype=np.int64), fidelity)


def _references(elements: Sequence[str], fidelity: str | None) -> tuple[HullEntry, ...]:
    return tuple(HullEntry(REF_PREFIX + el, {el: 1.0}, 0.0, fidelity) for el in elements)


def _fraction_matrix(entries: Sequence[HullEntry], elements: Sequence[str]) -> np.ndarray:
    mat = np.array([[e.composition.get(el, 0.0) for el in elements] for e in entries], dtype=float)
    return mat / mat.sum(axis=1, keepdims=True)


def build_hull(
    entries: Iterable[HullEntry], *, elements: Sequence[str] | None = None, fidelity: str | None = None
) -> PhaseHull:
    """Hull of the phases whose elements lie inside `elements` (default: all elements of the entries).

    Entries outside the system are skipped (Algorithm 2, step 2); entries of another fidelity than
    `fidelity` (when both are set) are an `InputError`, since mixing levels of theory corrupts a hull.
    """
    entries = list(entries)
    fids = {e.fidelity for e in entries if e.fidelity is not None}
    if fidelity is None and len(fids) > 1:
        raise InputError(f"entries mix fidelities {sorted(fids)}; build one hull per fidelity (build_hulls)")
    if fidelity is not None and fids - {fidelity}:
        raise InputError(f"entries of fidelity {sorted(fids - {fidelity})} given for a {fidelity} hull")
    fidelity = fidelity if fidelity is not None else (fids.pop() if fids else None)
    if elements is None:
        elements = sorted({el for e in entries for el in e.composition})
    elements = tuple(sorted(elements))
    if not elements:
        raise InputError("a hull needs at least one element")
    system = set(elements)
    members = _references(elements, fidelity) + tuple(e for e in entries if set(e.composition) <= system)
    return PhaseHull(elements, members, _lower_facets(members, elements), fidelity)


def build_hulls(entries: Iterable[HullEntry], elements: Sequence[str] | None = None) -> dict[str | None, PhaseHull]:
    """One hull per fidelity present in `entries` (the per-fidelity hulls of DESIGN.md)."""
    groups: dict[str | None, list[HullEntry]] = {}
    for e in entries:
        groups.setdefault(e.fidelity, []).append(e)
    if elements is None:
        elements = sorted({el for e in sum(groups.values(), []) for el in e.composition})
    return {fid: build_hull(group, elements=elements, fidelity=fid) for fid, group in groups.items()}


def _lower_facets(entries: Sequence[HullEntry], elements: Sequence[str]) -> np.ndarray:
    """Simplices of the lower hull in (fractions[1:], E) space, as indices into `entries`."""
    n = len(elements)
    fractions = _fraction_matrix(entries, elements)
    energies = np.array([e.energy_per_atom for e in entries])
    # Only the lowest phase at each composition can touch the lower hull: dedupe before qhull.
    keys = np.round(fractions, 12)
    order = np.lexsort((np.arange(len(entries)), energies))
    _, first = np.unique(keys[order], axis=0, return_index=True)
    candidates = order[first]
    if n == 1:
        return np.array([[candidates[np.argmin(energies[candidates])]]])
    points = np.column_stack([fractions[candidates, 1:], energies[candidates]])
    # A point above the centroid keeps the input full-dimensional when every phase lies on one plane.
    top = np.append(np.full(n - 1, 1.0 / n), max(points[:, -1].max(), 0.0) + 1.0)
    try:
        hull = ConvexHull(np.vstack([points, top]), qhull_options="Qt i")
    except QhullError as exc:
        raise InputError(f"cannot build hull of {'-'.join(elements)}: {str(exc).splitlines()[0]}") from None
    lower = (hull.equations[:, -2] < -1e-12) & np.all(hull.simplices < len(points), axis=1)
    simplices = hull.simplices[lower]
    # Drop facets that are degenerate in composition space (zero-volume slivers from coplanar input).
    mats = fractions[candidates[simplices]]
    keep = np.abs(np.linalg.det(mats)) > 1e-12
    return candidates[simplices[keep]]
