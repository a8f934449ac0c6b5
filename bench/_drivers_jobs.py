"""A tracked job that does no science, for `bench/drivers.py`'s job-overhead metric."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from qadb.drivers import input_hash
from qadb.drivers.results import Label
from qadb.workflows import TrackedMaker


def trivial(structure, seed: int) -> Label:
    """A job body that does no science: what remains of a tracked job's time is tracking."""
    return Label(property="energy_per_atom", value=-1.0 - seed * 1e-3, units="eV/atom", fidelity="PBE", code="bench",
                 code_version="0", parameters={"seed": seed}, converged=True, wall_time_s=0.0,
                 input_hash=input_hash(structure, {"seed": seed}))


@dataclass
class TrivialMaker(TrackedMaker):
    """`trivial` as a tracked job; `settings` (an int) makes every job distinct."""

    kind: ClassVar[str] = "label"
    name: str = "trivial"
    settings: int = 0

    def compute(self, store, jid, structure, extra) -> Label:
        return trivial(structure, self.settings)
