"""Charge-neutral oxidation-state assignment (seed 000 Sec. 3.1.1; SMACT-style neutrality + Pauling ordering).

Search over one state per element (SMACT convention) and, with ``mixed_valence``, over splits of an
element's atoms between two states of the same sign (Fe3O4 = Fe2+ + 2 Fe3+, which the one-state rule
rejects). With ``en_order`` the cations must all be less electronegative than the anions. The search is a
depth-first walk over elements in electronegativity order with bounds pruning and memoised dead ends,
so it stays cheap even with the large ``all`` table. The first assignment in preference order (single
states before splits, tables' most common states first) is returned, as average state per element.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from pymatgen.core import Composition

from qadb.chem._composition import CompositionLike, as_amounts
from qadb.chem._elements import (
    DEFAULT_OXIDATION_TABLE,
    electronegativity,
    is_metal,
    is_metalloid,
    oxidation_states,
)
from qadb.errors import InputError

_DIGITS = 6  # partial charges are compared after rounding to this many decimals


@dataclass(frozen=True)
class OxidationAssignment:
    """Average oxidation state per element of a neutral assignment (per reduced formula unit)."""

    states: dict[str, float]
    residual: float  # |sum of charges| per formula unit
    mixed_valence: bool


def _options(symbol: str, n: float, table: str, mixed_valence: bool) -> tuple[tuple[float, float], ...]:
    """(average state, total charge) choices for n atoms of one element, preferred first."""
    states = oxidation_states(symbol, table)
    opts = [(float(q), n * q) for q in states]
    integral = abs(n - round(n)) < 1e-8 and round(n) >= 2
    if mixed_valence and integral:
        m = round(n)
        for i, a in enumerate(states):
            for b in states[i + 1 :]:
                if a * b > 0:
                    for k in range(1, m):
                        total = m * a + k * (b - a)
                        opts.append((total / m, float(total)))
    return tuple(opts)


def assign_oxidation_states(
    composition: CompositionLike,
    *,
    tol: float = 0.1,
    table: str = DEFAULT_OXIDATION_TABLE,
    mixed_valence: bool = True,
    en_order: bool = False,
) -> OxidationAssignment | None:
    """A neutral assignment within `tol` |e| per formula unit, or None if none exists."""
    if tol < 0:
        raise InputError(f"charge tolerance must be >= 0, got {tol}")
    amounts = as_amounts(composition)
    key = tuple(sorted(amounts.items()))
    return _search(key, float(tol), table, bool(mixed_valence), bool(en_order))


@lru_cache(maxsize=65536)
def _search(key, tol, table, mixed_valence, en_order) -> OxidationAssignment | None:
    amounts = dict(key)
    # Reduce to one formula unit so that `tol` is per formula unit.
    reduced, _ = Composition(amounts).get_reduced_composition_and_factor()
    counts = {el.symbol: float(n) for el, n in reduced.items()}
    ens = {el: electronegativity(el) for el in counts}
    if en_order and any(x is None for x in ens.values()):
        return None
    order = sorted(counts, key=lambda el: (ens[el] if ens[el] is not None else 99.0, el))
    options = [_options(el, counts[el], table, mixed_valence) for el in order]
    if any(not o for o in options):
        return None
    lo = [min(t for _, t in o) for o in options]
    hi = [max(t for _, t in o) for o in options]
    suffix_lo = [sum(lo[i:]) for i in range(len(order) + 1)]
    suffix_hi = [sum(hi[i:]) for i in range(len(order) + 1)]
    dead: set[tuple[int, float, bool]] = set()
    chosen: list[float] = []

    def walk(i: int, partial: float, anions_started: bool) -> float | None:
        if i == len(order):
            return abs(partial) if abs(partial) <= tol + 1e-9 else None
        if partial + suffix_lo[i] > tol + 1e-9 or partial + suffix_hi[i] < -tol - 1e-9:
            return None
        memo = (i, round(partial, _DIGITS), anions_started)
        if memo in dead:
            return None
        for avg, total in options[i]:
            is_anion = avg < 0
            if en_order and anions_started and not is_anion:
                continue
            chosen.append(avg)
            found = walk(i + 1, partial + total, anions_started or is_anion)
            if found is not None:
                return found
            chosen.pop()
        dead.add(memo)
        return None

    residual = walk(0, 0.0, False)
    if residual is None:
        return None
    states = dict(zip(order, chosen))
    mixed = any(abs(q - round(q)) > 1e-9 for q in states.values())
    return OxidationAssignment(states, residual, mixed)


def is_intermetallic(composition: CompositionLike) -> bool:
    """Only metals and metalloids: neutrality and Pauling rules do not apply.

    CDVAE/SMACT exempt all-metal compositions; metalloids (B, Si, Ge, As, Sb, Te) are exempted too,
    since MP-20 holds many real silicides, germanides and arsenides no ionic picture describes.
    """
    return all(is_metal(el) or is_metalloid(el) for el in as_amounts(composition))
