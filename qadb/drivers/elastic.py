"""Bulk modulus and elastic tensor at the MLIP level (seed 003 stage II screens on K_VRH).

Two routes over the same relaxed cell: an E(V) scan fitted by an equation of state (pymatgen EOS,
Birch-Murnaghan by default), and finite strains -> stresses fitted to the 6x6 elastic tensor
(pymatgen ElasticTensor) with Voigt-Reuss-Hill averages. Ions relax at every fixed strained cell.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pymatgen.analysis.elasticity import ElasticTensor, Strain
from pymatgen.analysis.eos import EOS
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from qadb.drivers.hashing import input_hash
from qadb.drivers.mlip import MLIP
from qadb.drivers.relax import RelaxSettings, evaluate, optimize, relax
from qadb.drivers.results import BulkModulusResult, ConvergenceError, ElasticResult, RelaxResult
from qadb.drivers.threads import limit_threads
from qadb.errors import InputError

_EOS_NAMES = ("birch_murnaghan", "murnaghan", "vinet", "pourier_tarantola")


@dataclass(frozen=True)
class BulkModulusSettings:
    """E(V) scan: `n_points` volumes spread ±`max_volume_strain` around the relaxed volume."""

    relax: RelaxSettings = field(default_factory=RelaxSettings)
    eos: str = "birch_murnaghan"
    max_volume_strain: float = 0.06
    n_points: int = 7

    def __post_init__(self) -> None:
        if self.eos not in _EOS_NAMES:
            raise InputError(f"unknown EOS {self.eos!r}; known: {', '.join(_EOS_NAMES)}")
        if self.n_points < 5 or not 0 < self.max_volume_strain < 0.3:
            raise InputError("E(V) scan needs n_points >= 5 and 0 < max_volume_strain < 0.3")


@dataclass(frozen=True)
class ElasticSettings:
    """Strain-stress: each of the 6 Voigt strains applied at every magnitude in `strains`."""

    relax: RelaxSettings = field(default_factory=RelaxSettings)
    strains: tuple[float, ...] = (-0.01, -0.005, 0.005, 0.01)

    def __post_init__(self) -> None:
        if len(self.strains) < 2 or any(abs(s) == 0 or abs(s) > 0.05 for s in self.strains):
            raise InputError("strains need >= 2 non-zero magnitudes within ±0.05")


def _relaxed(structure: Any, settings: RelaxSettings, device: str, threads: int | None) -> tuple[RelaxResult, MLIP]:
    result = relax(structure, settings, device=device, threads=threads)
    return result, settings.mlip(device)


def _fixed_cell(structure: Structure, mlip: MLIP, settings: RelaxSettings) -> tuple[float, np.ndarray, bool]:
    """Relax ions inside a fixed cell; return energy (eV), Voigt stress (GPa), converged."""
    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = mlip.calculator()
    converged, _, _ = optimize(atoms, settings.optimizer, settings.fmax, settings.steps, relax_cell=False)
    energy, _, stress = evaluate(atoms)
    return energy, stress, converged


def _finish(result: Any, allow_unconverged: bool, what: str) -> Any:
    if not result.converged and not allow_unconverged:
        raise ConvergenceError(f"{what} of {result.structure.composition.reduced_formula} did not converge", result)
    return result


def _ev_scan(base: Structure, v_centre: float, settings: BulkModulusSettings, mlip: MLIP,
             threads: int | None) -> tuple[list[float], list[float], bool]:
    """E(V) at `n_points` volumes spread ±`max_volume_strain` around `v_centre`, ions relaxed in each cell."""
    volumes, energies, converged = [], [], True
    with limit_threads(threads):
        for x in np.linspace(-settings.max_volume_strain, settings.max_volume_strain, settings.n_points):
            cell = base.copy()
            cell.scale_lattice(v_centre * (1 + x))
            energy, _, ok = _fixed_cell(cell, mlip, settings.relax)
            volumes.append(cell.volume)
            energies.append(energy)
            converged &= ok
    return volumes, energies, converged


def _eos_fit(settings: BulkModulusSettings, volumes: list[float], energies: list[float], base: RelaxResult):
    try:
        fit = EOS(settings.eos).fit(volumes, energies)
        return float(fit.b0_GPa), float(fit.v0), float(fit.e0), float(fit.b1)
    except Exception as exc:  # pymatgen raises EOSError or numpy errors on a non-convex scan
        raise ConvergenceError(f"EOS fit failed for {base.structure.formula}: {exc}", base) from None


# a relaxation converged to fmax leaves a residual stress of about fmax / (volume per atom) (the cell filter
# scales the virial by the number of atoms): ~2 GPa at fmax 0.1 eV/Å, so a soft cell (K ≲ 30 GPa) can sit more
# than the scan's half-width away from its E(V) minimum. Such a scan is redone once, centred on the first fit's
# minimum (at most this many half-widths away); the E(V) curve, not the relaxation's stress, decides the minimum.
MAX_RECENTRE = 3.0


def bulk_modulus(structure: Any, settings: BulkModulusSettings = BulkModulusSettings(), *, device: str = "cpu",
                 threads: int | None = 1, allow_unconverged: bool = False) -> BulkModulusResult:
    """Bulk modulus (GPa) from an EOS fit to E(V) of the MLIP-relaxed structure.

    The scan spans ±`max_volume_strain` around the relaxed volume; when the fitted minimum falls outside it,
    the scan is repeated once around that minimum (within `MAX_RECENTRE` half-widths) and all points are fitted.
    """
    start = time.perf_counter()
    base, mlip = _relaxed(structure, settings.relax, device, threads)
    v_ref = base.structure.volume
    volumes, energies, converged = _ev_scan(base.structure, v_ref, settings, mlip, threads)
    converged &= base.converged
    b0, v0, e0, b1 = _eos_fit(settings, volumes, energies, base)
    recentred = False
    if converged and not min(volumes) < v0 < max(volumes):
        shift = settings.max_volume_strain * MAX_RECENTRE
        centre = float(np.clip(v0, v_ref * (1 - shift), v_ref * (1 + shift))) if np.isfinite(v0) else v_ref
        more_v, more_e, ok = _ev_scan(base.structure, centre, settings, mlip, threads)
        volumes, energies, converged, recentred = volumes + more_v, energies + more_e, converged & ok, True
        order = np.argsort(volumes)
        volumes, energies = [volumes[i] for i in order], [energies[i] for i in order]
        b0, v0, e0, b1 = _eos_fit(settings, volumes, energies, base)
    # a minimum outside the scanned range is an extrapolation, not a fit
    converged &= bool(min(volumes) < v0 < max(volumes)) and b0 > 0
    result = BulkModulusResult(
        property="bulk_modulus", value=b0, units="GPa", fidelity=mlip.fidelity, code=mlip.code,
        code_version=mlip.code_version,
        parameters={**base.parameters, "method": f"eos:{settings.eos}", "max_volume_strain": settings.max_volume_strain,
                    "n_points": settings.n_points, "recentred": recentred},
        converged=converged, wall_time_s=time.perf_counter() - start,
        input_hash=input_hash(base.initial_structure, settings),
        eos=settings.eos, volumes_A3=volumes, energies_eV=energies, v0_A3=v0, e0_eV=e0, b_prime=b1,
        structure=base.structure,
    )
    return _finish(result, allow_unconverged, "E(V) bulk modulus")


def elastic_moduli(structure: Any, settings: ElasticSettings = ElasticSettings(), *, device: str = "cpu",
                   threads: int | None = 1, allow_unconverged: bool = False) -> ElasticResult:
    """Elastic tensor (GPa) from finite strains of the MLIP-relaxed cell; value is K_VRH."""
    start = time.perf_counter()
    base, mlip = _relaxed(structure, settings.relax, device, threads)
    strains, stresses, converged = [], [], base.converged
    with limit_threads(threads):
        for component in range(6):
            for magnitude in settings.strains:
                voigt = np.zeros(6)
                voigt[component] = magnitude
                strain = Strain.from_voigt(voigt)
                cell = strain.get_deformation_matrix().apply_to_structure(base.structure)
                _, stress, ok = _fixed_cell(cell, mlip, settings.relax)
                strains.append(strain)
                stresses.append(_voigt_to_matrix(stress))
                converged &= ok
    _, eq_stress, _ = _fixed_cell(base.structure, mlip, settings.relax)
    tensor = ElasticTensor.from_independent_strains(strains, stresses, eq_stress=_voigt_to_matrix(eq_stress))
    cij = np.asarray(tensor.voigt)
    result = ElasticResult(
        property="bulk_modulus_vrh", value=float(tensor.k_vrh), units="GPa", fidelity=mlip.fidelity, code=mlip.code,
        code_version=mlip.code_version,
        parameters={**base.parameters, "method": "strain-stress", "strains": list(settings.strains)},
        converged=converged, wall_time_s=time.perf_counter() - start,
        input_hash=input_hash(base.initial_structure, settings),
        elastic_tensor_GPa=cij.tolist(), g_vrh_GPa=float(tensor.g_vrh), k_voigt_GPa=float(tensor.k_voigt),
        k_reuss_GPa=float(tensor.k_reuss), born_stable=bool(np.linalg.eigvalsh(cij).min() > 0),
        structure=base.structure,
    )
    return _finish(result, allow_unconverged, "strain-stress elastic tensor")


def _voigt_to_matrix(v: np.ndarray) -> np.ndarray:
    xx, yy, zz, yz, xz, xy = v
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
