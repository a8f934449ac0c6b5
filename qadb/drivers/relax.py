"""MLIP relaxation with an ASE optimiser (FIRE or BFGS) and the Frechet cell filter.

Convergence means max force (including the cell's virial term when the cell relaxes) ≤ fmax within
`steps`; an unconverged run raises `ConvergenceError` carrying the flagged result unless the caller
asks for it back. A relaxed structure that StructureMatcher no longer matches to the input is
flagged `structure_changed` (the MD filter of seed 003 Sec. II.C drops such candidates).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS, FIRE
from ase.units import GPa
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from qadb.drivers.hashing import input_hash
from qadb.drivers.mlip import MLIP, load_mlip
from qadb.drivers.threads import limit_threads
from qadb.drivers.results import ConvergenceError, RelaxResult
from qadb.drivers.structures import checked
from qadb.errors import InputError

_OPTIMIZERS = {"FIRE": FIRE, "BFGS": BFGS}


@dataclass(frozen=True)
class RelaxSettings:
    """Everything that determines a relaxation's outcome (so `input_hash(structure, settings)` is its key)."""

    model: str = "chgnet"
    head: str | None = None  # multi-fidelity MLIPs (SevenNet-MF-0: "PBE" or "R2SCAN")
    checkpoint: str | None = None  # MACE model file
    optimizer: str = "FIRE"
    fmax: float = 0.05  # eV/Å
    steps: int = 500
    relax_cell: bool = True
    # StructureMatcher tolerances for "changed too much": pymatgen defaults, as seed 003 uses
    ltol: float = 0.2
    stol: float = 0.3
    angle_tol: float = 5.0

    def __post_init__(self) -> None:
        if self.optimizer.upper() not in _OPTIMIZERS:
            raise InputError(f"unknown optimizer {self.optimizer!r}; known: {', '.join(_OPTIMIZERS)}")
        object.__setattr__(self, "optimizer", self.optimizer.upper())
        if self.head is not None:
            object.__setattr__(self, "head", self.head.upper())  # one spelling, one input hash
        if not self.fmax > 0 or self.steps < 0:
            raise InputError(f"fmax must be > 0 and steps >= 0, got fmax={self.fmax}, steps={self.steps}")

    def mlip(self, device: str = "cpu") -> MLIP:
        return load_mlip(self.model, head=self.head, checkpoint=self.checkpoint, device=device)


def optimize(atoms: Atoms, optimizer: str, fmax: float, steps: int, relax_cell: bool) -> tuple[bool, int]:
    """Run the optimiser in place on `atoms` (calculator attached); return (converged, steps taken)."""
    target = FrechetCellFilter(atoms) if relax_cell else atoms
    opt = _OPTIMIZERS[optimizer](target, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    return converged, int(opt.nsteps)


def evaluate(atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
    """Energy (eV), forces (eV/Å) and Voigt stress (GPa) of `atoms`; non-finite output is an error."""
    energy = float(atoms.get_potential_energy())
    forces = np.asarray(atoms.get_forces(), dtype=float)
    stress = np.asarray(atoms.get_stress(voigt=True), dtype=float) / GPa
    if not (np.isfinite(energy) and np.isfinite(forces).all() and np.isfinite(stress).all()):
        raise InputError(f"MLIP returned non-finite energy/forces/stress for {atoms.get_chemical_formula()}")
    return energy, forces, stress


def structure_changed(initial: Structure, final: Structure, settings: RelaxSettings) -> bool:
    """True when StructureMatcher (tolerances from `settings`) no longer matches final to initial."""
    matcher = StructureMatcher(ltol=settings.ltol, stol=settings.stol, angle_tol=settings.angle_tol)
    return not matcher.fit(initial, final)


def relax(structure: Any, settings: RelaxSettings = RelaxSettings(), *, device: str = "cpu", threads: int | None = 1,
          allow_unconverged: bool = False) -> RelaxResult:
    """Relax positions (and the cell unless `relax_cell=False`) with the MLIP named in `settings`.

    `threads`: BLAS/OpenMP/torch threads during the run (see `limit_threads`); `allow_unconverged`
    returns an unconverged result (flagged `converged=False`) instead of raising `ConvergenceError`.
    """
    initial = checked(structure)
    mlip = settings.mlip(device)
    atoms = AseAtomsAdaptor.get_atoms(initial)
    atoms.calc = mlip.calculator()
    start = time.perf_counter()
    with limit_threads(threads):
        converged, steps = optimize(atoms, settings.optimizer, settings.fmax, settings.steps, settings.relax_cell)
        energy, forces, stress = evaluate(atoms)
    wall = time.perf_counter() - start
    atoms.calc = None
    final = AseAtomsAdaptor.get_structure(atoms)
    result = RelaxResult(
        property="energy_per_atom",
        value=energy / len(atoms),
        units="eV/atom",
        fidelity=mlip.fidelity,
        code=mlip.code,
        code_version=mlip.code_version,
        parameters={"model": mlip.name, "weights_version": mlip.version, "head": settings.head,
                    "optimizer": settings.optimizer, "cell_filter": "FrechetCellFilter" if settings.relax_cell else None,
                    "fmax_eV_per_A": settings.fmax, "max_steps": settings.steps},
        converged=converged,
        wall_time_s=wall,
        input_hash=input_hash(initial, settings),
        energy_eV=energy,
        forces_eV_per_A=forces.tolist(),
        stress_GPa=stress.tolist(),
        max_force_eV_per_A=float(np.linalg.norm(forces, axis=1).max()),
        structure=final,
        initial_structure=initial,
        steps=steps,
        structure_changed=structure_changed(initial, final, settings),
        volume_change=final.volume / initial.volume - 1.0,
    )
    if not converged and not allow_unconverged:
        raise ConvergenceError(
            f"relaxation of {initial.composition.reduced_formula} with {mlip.fidelity} not converged to "
            f"fmax={settings.fmax} eV/Å in {settings.steps} steps", result)
    return result

