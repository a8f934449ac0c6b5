"""Periodic PySCF labelling with GTH pseudopotentials: PBE, SCAN, r2SCAN, PBE0, HSE06 and CCSD(T).

Every setting that changes the number is a field of `PySCFSettings` and is recorded in the result.
An SCF (or CCSD) that does not converge in `max_cycle` iterations is never returned as a converged
value: it raises `ConvergenceError` carrying the result flagged `converged=False`, or is returned so
flagged when the caller passes `allow_unconverged=True` (seed 000 Sec. 12.3).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from ase.units import Hartree
from pymatgen.core import Structure

from qadb import fidelity as fid
from qadb.drivers.hashing import input_hash
from qadb.drivers.results import ConvergenceError, DFTResult
from qadb.drivers.structures import checked
from qadb.drivers.threads import limit_threads
from qadb.errors import InputError

# Canonical fidelity -> PySCF xc string (r2SCAN by its libxc components: PySCF has no short alias)
_XC = {"PBE": "PBE", "SCAN": "SCAN", "r2SCAN": "MGGA_X_R2SCAN,MGGA_C_R2SCAN", "PBE0": "PBE0", "HSE06": "HSE06"}
CCSD_T = "CCSD(T)"
LEVELS: tuple[str, ...] = (*_XC, CCSD_T)
_DENSITY_FIT = ("GDF", "FFT")


@dataclass(frozen=True)
class PySCFSettings:
    """Level of theory and numerical settings; `input_hash(structure, settings)` keys the calculation."""

    level: str = "PBE"  # a fidelity name or alias: PBE, SCAN, r2SCAN, PBE0, HSE06 (hse), CCSD(T)
    basis: str = "gth-szv"  # gth-szv is the smallest; gth-dzvp for production numbers
    pseudo: str | None = None  # None: gth-hf-rev for CCSD(T) (HF-consistent), gth-pbe otherwise
    kmesh: tuple[int, int, int] | None = None  # None: from kspacing
    kspacing: float = 1.2  # 1/Å (2π included): n_i = ceil(|b_i| / kspacing)
    density_fit: str = "GDF"  # GDF (Gaussian density fitting) or FFT; hybrids on MgO need GDF
    smearing_eV: float | None = None  # Fermi-Dirac width for metals; energies are extrapolated to sigma -> 0
    conv_tol: float = 1e-8  # Hartree, SCF energy
    max_cycle: int = 100  # SCF (and CCSD) iterations; seed 000 flags runs needing >= 100 as unconverged
    cc_max_orbitals: int = 32  # CCSD(T) refused above nao x n_kpoints (see docs/drivers.md for timings)

    def __post_init__(self) -> None:
        level = fid.canonical(self.level)
        if level not in LEVELS:
            raise InputError(f"PySCF driver does not do {level!r}; levels: {', '.join(LEVELS)}")
        object.__setattr__(self, "level", level)
        if self.pseudo is None:
            object.__setattr__(self, "pseudo", "gth-hf-rev" if level == CCSD_T else "gth-pbe")
        fit = self.density_fit.upper()
        if fit not in _DENSITY_FIT:
            raise InputError(f"density_fit must be one of {', '.join(_DENSITY_FIT)}, got {self.density_fit!r}")
        object.__setattr__(self, "density_fit", fit)
        if self.kmesh is not None:
            if len(self.kmesh) != 3 or any(int(n) != n or n < 1 for n in self.kmesh):
                raise InputError(f"kmesh must be three positive integers, got {self.kmesh!r}")
            object.__setattr__(self, "kmesh", tuple(int(n) for n in self.kmesh))
        if not self.kspacing > 0 or not self.conv_tol > 0 or self.max_cycle < 1:
            raise InputError("kspacing and conv_tol must be > 0 and max_cycle >= 1")
        if self.smearing_eV is not None and (not self.smearing_eV > 0 or level == CCSD_T):
            raise InputError("smearing_eV must be > 0, and CCSD(T) takes no smearing")

    @property
    def xc(self) -> str | None:
        return _XC.get(self.level)


def kmesh_for(structure: Structure, settings: PySCFSettings) -> tuple[int, int, int]:
    """The k-mesh a calculation uses: `settings.kmesh`, else derived from `settings.kspacing`."""
    if settings.kmesh is not None:
        return settings.kmesh
    lengths = structure.lattice.reciprocal_lattice.abc  # includes 2π
    return tuple(max(1, math.ceil(b / settings.kspacing - 1e-9)) for b in lengths)  # type: ignore[return-value]


def build_cell(structure: Structure, settings: PySCFSettings, spin: int = 0) -> Any:
    """PySCF Cell for `structure`; a missing basis/pseudopotential for an element is an `InputError`."""
    from pyscf.pbc import gto

    cell = gto.Cell()
    matrix = structure.lattice.matrix
    # PySCF's lattice sums assume a right-handed cell; -L spans the same lattice, atoms stay where they are
    cell.a = -matrix if np.linalg.det(matrix) < 0 else matrix
    cell.atom = [(site.specie.symbol, site.coords) for site in structure]
    cell.unit = "Angstrom"
    cell.basis = settings.basis
    cell.pseudo = settings.pseudo
    cell.spin = spin
    cell.verbose = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # odd electron counts warn; handled below
            cell.build()
    except Exception as exc:  # PySCF raises KeyError/RuntimeError/ValueError for unknown basis or pseudo
        raise InputError(f"PySCF cannot build {structure.formula} with basis {settings.basis!r}, "
                         f"pseudo {settings.pseudo!r}: {exc}") from None
    if (cell.nelectron - spin) % 2 and settings.smearing_eV is None:
        raise InputError(f"{structure.formula} has {cell.nelectron} valence electrons per cell (odd): "
                         "set smearing_eV (metal) or give a supercell")
    return cell


def _band_gap_eV(mo_energy: Any, mo_occ: Any) -> float:
    """Gap from occupations over all k (and spins): lowest empty minus highest filled state, >= 0."""
    energies = np.concatenate([np.ravel(e) for e in _flatten(mo_energy)])
    occ = np.concatenate([np.ravel(o) for o in _flatten(mo_occ)])
    filled = occ > 0.5 * occ.max()
    if filled.all() or not filled.any():
        return float("nan")
    return max(0.0, float(energies[~filled].min() - energies[filled].max())) * Hartree


def _flatten(obj: Any) -> list[np.ndarray]:
    if isinstance(obj, np.ndarray) and obj.dtype != object:
        return [obj]
    return [a for item in obj for a in _flatten(item)]


def mean_field(cell: Any, kmesh: tuple[int, int, int], settings: PySCFSettings) -> tuple[Any, int]:
    """Run the SCF (KS-DFT, or HF as the CCSD(T) reference); return (mean-field object, SCF cycles)."""
    from pyscf.pbc import dft, scf

    kpts = cell.make_kpts(kmesh)
    restricted = cell.spin == 0
    if settings.xc is None and kmesh == (1, 1, 1) and restricted:
        mf = scf.RHF(cell)  # gamma-point RCCSD needs the molecular-style reference
    elif settings.xc is None:
        mf = scf.KRHF(cell, kpts) if restricted else scf.KUHF(cell, kpts)
    else:
        mf = dft.KRKS(cell, kpts) if restricted else dft.KUKS(cell, kpts)
        mf.xc = settings.xc
    if settings.density_fit == "GDF":
        mf = mf.density_fit()
    if settings.smearing_eV is not None:
        mf = scf.addons.smearing_(mf, sigma=settings.smearing_eV / Hartree, method="fermi")
    mf.conv_tol = settings.conv_tol
    mf.max_cycle = settings.max_cycle
    mf.kernel()
    return mf, int(mf.cycles)


def _energy_Ha(mf: Any) -> float:
    """Total energy per cell; with smearing the sigma -> 0 extrapolation, as VASP reports for metals."""
    return float(mf.e_zero) if getattr(mf, "sigma", None) else float(mf.e_tot)


def compute_energy(structure: Structure, settings: PySCFSettings, spin: int = 0) -> tuple[float, dict, bool, int,
                                                                                              float | None, dict]:
    """(energy eV/cell, components eV, converged, SCF cycles, band gap eV or None, numerical parameters)."""
    from qadb.drivers.pyscf_cc import ccsd_t

    kmesh = kmesh_for(structure, settings)
    cell = build_cell(structure, settings, spin)
    n_orb = cell.nao_nr() * int(np.prod(kmesh))
    if settings.level == CCSD_T and spin:
        raise InputError("CCSD(T) here is closed-shell only (spin=0)")
    if settings.level == CCSD_T and n_orb > settings.cc_max_orbitals:
        raise InputError(f"CCSD(T) on {structure.formula}: {n_orb} orbitals x k-points exceeds "
                         f"cc_max_orbitals={settings.cc_max_orbitals}; use a smaller cell, basis or k-mesh")
    mf, cycles = mean_field(cell, kmesh, settings)
    numerics = {"kmesh": list(kmesh), "nao": int(cell.nao_nr()), "nelectron": int(cell.nelectron), "spin": spin,
                "fft_mesh": [int(n) for n in cell.mesh], "exxdiv": getattr(mf, "exxdiv", None)}
    if settings.level == CCSD_T:
        e_ha, components, converged = ccsd_t(mf, kmesh, settings.max_cycle)
        return e_ha * Hartree, components, converged, cycles, None, numerics
    e_ha = _energy_Ha(mf)
    return e_ha * Hartree, {}, bool(mf.converged), cycles, _band_gap_eV(mf.mo_energy, mf.mo_occ), numerics


def pyscf_label(structure: Any, settings: PySCFSettings = PySCFSettings(), *, formation_energy: bool = False,
                references: Mapping[str, float] | None = None, threads: int | None = None,
                allow_unconverged: bool = False, spin: int = 0) -> DFTResult:
    """Total energy per atom (and band gap; formation energy per atom if asked) of `structure`.

    `references`: elemental energies (eV/atom) at the same settings, e.g. persisted by the store;
    missing elements are computed with `reference_energy` (cached per process). `spin`: unpaired
    electrons per cell (non-zero runs spin-unrestricted).
    """
    from qadb.drivers.references import formation_energy_per_atom, reference_energies

    s = checked(structure)
    start = time.perf_counter()
    with limit_threads(threads):
        energy, components, converged, cycles, gap, numerics = compute_energy(s, settings, spin)
    wall = time.perf_counter() - start
    result = DFTResult(
        property="energy_per_atom", value=energy / len(s), units="eV/atom", fidelity=settings.level,
        code="pyscf", code_version=_pyscf_version(),
        parameters={**asdict(settings), "xc": settings.xc, **numerics,
                    "energy": "e_zero (sigma->0)" if settings.smearing_eV else "e_tot"},
        converged=converged, wall_time_s=wall, input_hash=input_hash(s, hashed_settings(settings, spin)),
        energy_eV=energy, natoms=len(s), formula=s.composition.formula, scf_cycles=cycles,
        band_gap_eV=None if gap is None or math.isnan(gap) else gap, components_eV=components, structure=s,
    )
    if not converged and not allow_unconverged:
        raise ConvergenceError(f"PySCF {settings.level} on {s.composition.reduced_formula} not converged in "
                               f"{settings.max_cycle} cycles (conv_tol={settings.conv_tol} Ha)", result)
    if formation_energy:
        refs = reference_energies(s.composition.elements, settings, known=references, threads=threads)
        result.references_eV_per_atom = refs
        result.formation_energy_per_atom_eV = formation_energy_per_atom(energy, s.composition, refs)
    return result


def hashed_settings(settings: PySCFSettings, spin: int) -> Any:
    """What `input_hash` covers for a PySCF run: the settings, plus the spin when it is not 0."""
    return settings if spin == 0 else {"settings": settings, "spin": spin}


def _pyscf_version() -> str:
    import pyscf

    return pyscf.__version__
