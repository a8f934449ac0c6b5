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


class _Runaway(Exception):
    """Raised inside the optimiser when a relaxation runs away (see `optimize`)."""


# a cell filter can drive a bad prediction into a collapsing cell whose neighbour lists exhaust memory
# (seen: a generated Zr2Ni cell shrinking 60 -> 6 Å^3 with CHGNet while its energy rose by 12 eV/atom)
MIN_VOLUME_FRACTION = 0.35  # of the starting volume
MIN_VOLUME_PER_ATOM = 2.0  # Å^3; no solid is denser
MAX_ENERGY_RISE = 1.0  # eV/atom above the starting energy: the optimiser is climbing, not relaxing


def optimize(atoms: Atoms, optimizer: str, fmax: float, steps: int, relax_cell: bool,
             trajectory: list[dict] | None = None) -> tuple[bool, int, str | None]:
    """Run the optimiser in place on `atoms` (calculator attached); return (converged, steps taken, why not).

    A run whose cell collapses or whose energy climbs is stopped early and reported unconverged
    with the reason. `trajectory`, when given, receives one frame per step (energy, cell, positions).
    """
    target = FrechetCellFilter(atoms) if relax_cell else atoms
    opt = _OPTIMIZERS[optimizer](target, logfile=None)
    n = len(atoms)
    v0, e0 = atoms.get_volume(), atoms.get_potential_energy() / n

    def guard() -> None:
        v, e = atoms.get_volume(), atoms.get_potential_energy() / n
        if v < MIN_VOLUME_FRACTION * v0 or v / n < MIN_VOLUME_PER_ATOM:
            raise _Runaway(f"cell collapsed ({v0:.1f} -> {v:.1f} Å^3)")
        if e > e0 + MAX_ENERGY_RISE:
            raise _Runaway(f"energy rose by {e - e0:.2f} eV/atom")

    opt.attach(guard, interval=1)
    if trajectory is not None:
        opt.attach(lambda: trajectory.append(_frame(atoms)), interval=1)
    try:
        converged = bool(opt.run(fmax=fmax, steps=steps))
    except _Runaway as exc:
        return False, int(opt.nsteps), str(exc)
    return converged, int(opt.nsteps), None


def _frame(atoms: Atoms) -> dict:
    """One trajectory frame from the calculator's cached results (no extra evaluation)."""
    return {"energy_eV": float(atoms.get_potential_energy()), "cell": atoms.cell.array.tolist(),
            "positions": atoms.positions.tolist()}


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


def right_handed(structure: Structure) -> Structure:
    """The same crystal (same Cartesian positions) on a right-handed cell: a left-handed lattice (det < 0) has its
    three vectors negated, and the fractional coordinates with them.

    CHGNet's stress is dE/dε divided by the *signed* cell volume, so on a left-handed cell it has the wrong sign:
    the cell filter then compresses a cell that wants to expand (and vice versa), the energy climbs and the
    relaxation runs away (seen: 22 of 48 cells sampled from the generator for K = 350 GPa are left-handed; the
    runaway guard stopped their relaxations with "energy rose by > 1 eV/atom" while CHGNet's stress said
    +0.206 eV/Å^3 where dE/dV was -0.206).
    """
    if np.linalg.det(structure.lattice.matrix) >= 0:
        return structure
    from pymatgen.core import Lattice

    return Structure(Lattice(-structure.lattice.matrix), [site.species for site in structure],
                     -structure.frac_coords, site_properties=structure.site_properties or None)


def relax(structure: Any, settings: RelaxSettings = RelaxSettings(), *, device: str = "cpu", threads: int | None = 1,
          allow_unconverged: bool = False, trajectory: list[dict] | None = None) -> RelaxResult:
    """Relax positions (and the cell unless `relax_cell=False`) with the MLIP named in `settings`.

    `threads`: BLAS/OpenMP/torch threads during the run (see `limit_threads`); `allow_unconverged`
    returns an unconverged result (flagged `converged=False`) instead of raising `ConvergenceError`;
    `trajectory`: a list that receives one frame per optimiser step (the workflows store it in GridFS).
    """
    initial = right_handed(checked(structure))
    mlip = settings.mlip(device)
    atoms = AseAtomsAdaptor.get_atoms(initial)
    atoms.calc = mlip.calculator()
    start = time.perf_counter()
    with limit_threads(threads):
        converged, steps, runaway = optimize(atoms, settings.optimizer, settings.fmax, settings.steps,
                                             settings.relax_cell, trajectory)
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
            f"relaxation of {initial.composition.reduced_formula} with {mlip.fidelity} "
            + (f"stopped: {runaway}" if runaway else
               f"not converged to fmax={settings.fmax} eV/Å in {settings.steps} steps"), result)
    return result

