"""Uniqueness, novelty and prototype assignment with pymatgen's StructureMatcher.

Matching is only ever attempted between structures with the same reduced formula (uniqueness,
novelty) or the same number of sites in the primitive cell (species-agnostic frameworks), so the cost
grows with the size of each bucket, not with the reference set. Tolerances default to the CDVAE/
DiffCSP metric settings (stol 0.5, ltol 0.3, angle_tol 10); frameworks use seed 002's stol 0.3.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache

import pandas as pd
from pymatgen.core import Structure
from pymatgen.core.structure_matcher import FrameworkComparator, StructureMatcher

from qadb.chem._composition import reduced_formula

MATCH_TOLERANCES = {"stol": 0.5, "ltol": 0.3, "angle_tol": 10.0}


def _matcher(**overrides) -> StructureMatcher:
    return StructureMatcher(**{**MATCH_TOLERANCES, **overrides})


def unique_indices(structures: Sequence[Structure], matcher: StructureMatcher | None = None) -> list[int]:
    """Indices of the first member of each class of matching structures (uniqueness = len / total)."""
    matcher = matcher or _matcher()
    kept: dict[str, list[int]] = defaultdict(list)
    out = []
    for k, s in enumerate(structures):
        bucket = kept[s.composition.reduced_formula]
        if not any(matcher.fit(structures[j], s) for j in bucket):
            bucket.append(k)
            out.append(k)
    return out


@dataclass
class ReferenceSet:
    """Known structures indexed by reduced formula: compositional and structural novelty lookups."""

    by_formula: dict[str, list[Structure]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def from_structures(cls, structures: Iterable[Structure]) -> ReferenceSet:
        ref = cls()
        for s in structures:
            ref.by_formula[s.composition.reduced_formula].append(s)
        return ref

    @classmethod
    def from_formulas(cls, formulas: Iterable[str]) -> ReferenceSet:
        """Composition-only reference (e.g. a training set without coordinates): structural novelty
        then falls back to compositional novelty."""
        ref = cls()
        for f in formulas:
            ref.by_formula.setdefault(reduced_formula(f), [])
        return ref

    @property
    def formulas(self) -> frozenset[str]:
        return frozenset(self.by_formula)

    def is_novel_composition(self, structure_or_formula) -> bool:
        """Seed 002 filter B: the reduced formula is absent from the reference set."""
        formula = (
            structure_or_formula.composition.reduced_formula
            if isinstance(structure_or_formula, Structure)
            else reduced_formula(structure_or_formula)
        )
        return formula not in self.by_formula

    def is_novel(self, structure: Structure, matcher: StructureMatcher | None = None) -> bool:
        """No reference structure of the same reduced formula matches (CDVAE/MatterGen novelty)."""
        matcher = matcher or _matcher()
        candidates = self.by_formula.get(structure.composition.reduced_formula, [])
        return not any(matcher.fit(ref, structure) for ref in candidates)


@dataclass(frozen=True)
class Framework:
    """A species-agnostic framework of the reference set: its rank by frequency and the primitive cell of one
    member."""

    rank: int
    count: int
    example: Structure
    label: str


def _framework_matcher(stol: float) -> StructureMatcher:
    # inputs are primitive cells already: reducing them again inside every fit() dominated the cost
    return StructureMatcher(stol=stol, comparator=FrameworkComparator(), primitive_cell=False)


def framework_prototypes(structures: Iterable[Structure], top_n: int = 100, stol: float = 0.3) -> list[Framework]:
    """The `top_n` most frequent frameworks of a reference set (seed 002's "top-N prototypes")."""
    matcher = _framework_matcher(stol)
    groups: dict[int, list[list[Structure]]] = defaultdict(list)
    for s in structures:
        prim = s.get_primitive_structure()
        classes = groups[len(prim)]
        for members in classes:
            if matcher.fit(members[0], prim):
                members.append(prim)
                break
        else:
            classes.append([prim])
        classes.sort(key=lambda m: -len(m))  # frequent frameworks first: most structures stop early
    ranked = sorted((m for cls in groups.values() for m in cls), key=lambda m: -len(m))[:top_n]
    return [
        Framework(k + 1, len(m), m[0], f"{m[0].composition.reduced_formula}-type #{k + 1}")
        for k, m in enumerate(ranked)
    ]


def assign_framework(structure: Structure, frameworks: Sequence[Framework], stol: float = 0.3) -> Framework | None:
    """The most frequent framework the structure matches, species ignored; None when it matches none."""
    matcher = _framework_matcher(stol)
    prim = structure.get_primitive_structure()
    for fw in frameworks:
        if len(fw.example) == len(prim) and matcher.fit(fw.example, prim):
            return fw
    return None


@cache
def _aflow_matcher():
    from pymatgen.analysis.prototypes.matcher import AFLOW_PROTOTYPE_LIBRARY, PrototypeDatabaseMatcher

    return PrototypeDatabaseMatcher(pd.DataFrame(AFLOW_PROTOTYPE_LIBRARY))


def aflow_prototype(structure: Structure) -> dict | None:
    """AFLOW prototype tags (aflow label, Pearson symbol, Strukturbericht, mineral) bundled with pymatgen."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tags = _aflow_matcher().get_prototypes(structure)
    return dict(tags[0]["tags"]) if tags else None
