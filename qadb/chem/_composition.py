"""Composition parsing shared by the hull, funnel and validity code.

Every public function accepts a formula string, a pymatgen `Composition` or a plain ``{element: amount}``
dict; this module turns any of them into a plain dict once, with a one-line `InputError` otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping

from pymatgen.core import Composition, Element

from qadb.errors import InputError

CompositionLike = str | Mapping[str, float] | Composition


def as_amounts(composition: CompositionLike) -> dict[str, float]:
    """``{symbol: amount}`` with positive amounts only; raises `InputError` on anything unusable."""
    if isinstance(composition, Composition):
        amounts = {el.symbol: float(n) for el, n in composition.items()}
    elif isinstance(composition, str):
        try:
            amounts = {el.symbol: float(n) for el, n in Composition(composition).items()}
        except (ValueError, KeyError) as exc:
            raise InputError(f"cannot parse formula {composition!r}: {exc}") from None
    elif isinstance(composition, Mapping):
        amounts = {}
        for key, value in composition.items():
            symbol = str(key)
            if not Element.is_valid_symbol(symbol):
                raise InputError(f"unknown element {symbol!r} in composition {dict(composition)!r}")
            try:
                amount = float(value)
            except (TypeError, ValueError):
                raise InputError(f"amount of {symbol} must be a number, got {value!r}") from None
            if amount < 0:
                raise InputError(f"amount of {symbol} must be >= 0, got {amount}")
            if amount > 0:
                amounts[symbol] = amounts.get(symbol, 0.0) + amount
    else:
        raise InputError(f"composition must be a formula, Composition or dict, got {type(composition).__name__}")
    amounts = {el: n for el, n in amounts.items() if n > 0}
    if not amounts:
        raise InputError(f"composition {composition!r} has no atoms")
    return amounts


def reduced_formula(composition: CompositionLike) -> str:
    """pymatgen's reduced formula (the key for formula-level novelty and pre-filtering)."""
    return Composition(as_amounts(composition)).reduced_formula


def chemsys(composition: CompositionLike) -> str:
    """Sorted element symbols joined by '-', e.g. ``Co-Li-O``."""
    return "-".join(sorted(as_amounts(composition)))
