"""Rank candidate cells of one composition by MLIP energy per atom.

Structure prediction by diffusion proposes many cells for a composition; the one to report is the most
stable. A universal MLIP's single-point energy ranks the raw samples well enough: on 100 MP-20 test
compositions with 20 samples each, relaxing the three lowest before re-ranking changed the match rate by
1 point (docs/generator_log.md, "Session 7"), at 20× the cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pymatgen.core import Structure

from qadb.drivers.mlip import load_mlip
from qadb.drivers.structures import check_structure
from qadb.drivers.threads import limit_threads
from qadb.errors import InputError


@dataclass(frozen=True)
class RankSettings:
    """Which potential ranks the candidates (see `qadb.drivers.MODELS`)."""

    model: str = "chgnet"
    head: str | None = None
    checkpoint: str | None = None
    batch_size: int = 64


@dataclass(frozen=True)
class Ranked:
    index: int  # position in the candidate list
    energy_per_atom: float  # eV/atom; inf when the cell was not evaluated
    reason: str | None = None  # why it was not evaluated (overlapping atoms, non-finite energy)


@dataclass(frozen=True)
class Ranking:
    order: list[Ranked]  # lowest energy first; unevaluated cells last, in input order
    fidelity: str  # the MLIP that ranked them, e.g. "MLIP:CHGNet@0.3.0"

    def best(self, n: int = 1) -> list[int]:
        """Indices of the `n` lowest-energy evaluated candidates (fewer when fewer could be evaluated)."""
        return [r.index for r in self.order if math.isfinite(r.energy_per_atom)][:n]


def rank_by_energy(structures: list[Structure], settings: RankSettings = RankSettings(), *, device: str = "cpu",
                   threads: int | None = 1) -> Ranking:
    """Single-point energies of `structures`; cells a driver would reject are ranked last, with the reason."""
    reasons: dict[int, str] = {}
    valid: list[int] = []
    for i, s in enumerate(structures):
        try:
            check_structure(s)
        except InputError as e:
            reasons[i] = str(e)
        else:
            valid.append(i)
    mlip = load_mlip(settings.model, head=settings.head, checkpoint=settings.checkpoint, device=device)
    with limit_threads(threads):
        energies = mlip.energies_per_atom([structures[i] for i in valid], batch_size=settings.batch_size)
    e_of = {}
    for i, e in zip(valid, energies):
        if np.isfinite(e):
            e_of[i] = float(e)
        else:
            reasons[i] = f"{mlip.fidelity} returned a non-finite energy"
    order = [Ranked(i, e_of.get(i, math.inf), reasons.get(i)) for i in range(len(structures))]
    order.sort(key=lambda r: (r.energy_per_atom, r.index))
    return Ranking(order, mlip.fidelity)
