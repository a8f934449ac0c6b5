"""Typed driver results. Each is one label-like record (property, value, units, fidelity, provenance)
plus the detail that produced it; `to_dict` gives plain JSON types so the store can persist it as is.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pymatgen.core import Structure

from qadb.errors import QadbError


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Structure):
        return obj.as_dict()
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN/inf; a non-finite value is never a valid label anyway
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


@dataclass(kw_only=True)
class Label:
    """One property of one structure at one fidelity, with the provenance the `labels` collection keeps."""

    property: str
    value: float
    units: str
    fidelity: str
    code: str
    code_version: str
    parameters: dict[str, Any]
    converged: bool
    wall_time_s: float
    input_hash: str

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of every field (structures as pymatgen dicts, arrays as lists)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def labels(self) -> list[Label]:
        """The store labels this result yields (subclasses with several properties add theirs)."""
        return [self._label(self.property, self.value, self.units)]

    def _label(self, prop: str, value: float, units: str) -> Label:
        base = {f.name: getattr(self, f.name) for f in dataclasses.fields(Label)}
        return Label(**{**base, "property": prop, "value": value, "units": units})


@dataclass(kw_only=True)
class RelaxResult(Label):
    """MLIP relaxation: value is the relaxed energy per atom (eV/atom)."""

    energy_eV: float
    forces_eV_per_A: list[list[float]]
    stress_GPa: list[float]  # Voigt order xx, yy, zz, yz, xz, xy; ASE sign (positive = tensile)
    max_force_eV_per_A: float
    structure: Structure
    initial_structure: Structure
    steps: int
    structure_changed: bool  # StructureMatcher no longer matches the input (seed 003 MD filter)
    volume_change: float  # relaxed / initial volume - 1


@dataclass(kw_only=True)
class BulkModulusResult(Label):
    """Bulk modulus (GPa) from an equation-of-state fit to E(V) at the MLIP level."""

    eos: str
    volumes_A3: list[float]
    energies_eV: list[float]
    v0_A3: float
    e0_eV: float
    b_prime: float
    structure: Structure  # the relaxed structure the E(V) scan was built from


@dataclass(kw_only=True)
class ElasticResult(Label):
    """Elastic tensor from strain-stress; value is K_VRH (GPa), as seed 003 screens on."""

    elastic_tensor_GPa: list[list[float]]  # 6x6 Voigt
    g_vrh_GPa: float
    k_voigt_GPa: float
    k_reuss_GPa: float
    born_stable: bool  # all eigenvalues of C positive
    structure: Structure

    def labels(self) -> list[Label]:
        return [*super().labels(), self._label("shear_modulus_vrh", self.g_vrh_GPa, "GPa")]


@dataclass(kw_only=True)
class DFTResult(Label):
    """Electronic-structure label (PySCF or VASP): value is the total energy per atom (eV/atom)."""

    energy_eV: float
    natoms: int
    formula: str
    scf_cycles: int | None = None
    band_gap_eV: float | None = None
    formation_energy_per_atom_eV: float | None = None
    references_eV_per_atom: dict[str, float] = field(default_factory=dict)
    components_eV: dict[str, float] = field(default_factory=dict)  # e.g. HF, CCSD correlation, (T)
    structure: Structure | None = None  # final structure (relaxations) or the input cell
    forces_eV_per_A: list[list[float]] | None = None
    stress_GPa: list[float] | None = None
    ionic_steps: int | None = None

    def labels(self) -> list[Label]:
        out = super().labels()
        if self.formation_energy_per_atom_eV is not None:
            out.append(self._label("formation_energy_per_atom", self.formation_energy_per_atom_eV, "eV/atom"))
        if self.band_gap_eV is not None:
            out.append(self._label("band_gap", self.band_gap_eV, "eV"))
        return out


class ConvergenceError(QadbError):
    """A calculation did not converge; the flagged result rides along so it can be stored as such."""

    def __init__(self, message: str, result: Label):
        super().__init__(message)
        self.result = result
