"""VASP through atomate2's input-set generators (inputs only: VASP runs where it is installed) and
parsing of finished runs into label-like results.

POTCARs are licensed and absent on most machines: when pymatgen cannot find them the input set is
written with a POTCAR.spec (one symbol per line) instead, and the result says so (`potcar="spec"`),
so that a cluster with POTCARs can regenerate the full set from the same settings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qadb import fidelity as fid
from qadb.drivers.hashing import input_hash
from qadb.drivers.results import ConvergenceError, DFTResult
from qadb.drivers.structures import checked
from qadb.errors import ConfigError, InputError

CALCS = ("relax", "static")
# Level -> INCAR overrides on top of atomate2's base set (which defaults to PBEsol, GGA = PS)
_LEVEL_INCAR: dict[str, dict[str, Any]] = {
    "PBE": {"GGA": "PE", "METAGGA": None, "LDAU": False},
    "r2SCAN": {"METAGGA": "R2SCAN", "GGA": None, "LDAU": False},
    "HSE06": {"LDAU": False},  # the HSE generators set LHFCALC, HFSCREEN = 0.2, GGA = PE
}
LEVELS: tuple[str, ...] = tuple(_LEVEL_INCAR)


@dataclass(frozen=True)
class VaspSettings:
    """Calculation kind and level; `incar`/`kpoints` are atomate2 user_incar/user_kpoints settings."""

    calc: str = "static"
    level: str = "PBE"
    incar: Mapping[str, Any] = field(default_factory=dict)
    kpoints: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"reciprocal_density": 100}

    def __post_init__(self) -> None:
        level = fid.canonical(self.level)
        if level not in LEVELS:
            raise InputError(f"VASP input sets here cover {', '.join(LEVELS)}, not {level!r}")
        if self.calc not in CALCS:
            raise InputError(f"calc must be one of {', '.join(CALCS)}, got {self.calc!r}")
        object.__setattr__(self, "level", level)


def _generator(settings: VaspSettings) -> Any:
    try:
        from atomate2.vasp.sets import core
    except ImportError:
        raise ConfigError("VASP input sets need atomate2: pip install --no-deps atomate2 (see docs/drivers.md)") from None
    hse = settings.level == "HSE06"
    cls = {("relax", False): core.RelaxSetGenerator, ("static", False): core.StaticSetGenerator,
           ("relax", True): core.HSERelaxSetGenerator, ("static", True): core.HSEStaticSetGenerator}[settings.calc, hse]
    return cls(user_incar_settings={**_LEVEL_INCAR[settings.level], **settings.incar},
               user_kpoints_settings=dict(settings.kpoints))


def vasp_input_set(structure: Any, settings: VaspSettings = VaspSettings()) -> tuple[Any, str]:
    """(pymatgen VaspInput, "full" or "spec"): full POTCARs where pymatgen finds them, else POTCAR.spec."""
    from pymatgen.io.vasp.inputs import PmgVaspPspDirError

    s = checked(structure)
    gen = _generator(settings)
    try:
        return gen.get_input_set(s, potcar_spec=False), "full"
    except (PmgVaspPspDirError, OSError):
        return gen.get_input_set(s, potcar_spec=True), "spec"


def write_vasp_inputs(structure: Any, directory: str | Path, settings: VaspSettings = VaspSettings()) -> dict[str, Any]:
    """Write INCAR/KPOINTS/POSCAR/POTCAR(.spec) into `directory`; return what was written and the input hash."""
    vasp_input, potcar = vasp_input_set(structure, settings)
    out = Path(directory)
    vasp_input.write_input(out)
    return {"directory": str(out), "files": sorted(vasp_input), "potcar": potcar,
            "input_hash": input_hash(checked(structure), settings), "level": settings.level, "calc": settings.calc}


def level_from_incar(params: Mapping[str, Any]) -> str:
    """Fidelity of a VASP run from its (full) parameters: hybrid, meta-GGA, GGA flavour, +U."""
    if params.get("LHFCALC"):
        screen = float(params.get("HFSCREEN") or 0.0)
        aexx = float(params.get("AEXX", 0.25))
        if math.isclose(aexx, 0.25) and math.isclose(screen, 0.2, abs_tol=0.01):
            return "HSE06"
        if math.isclose(aexx, 0.25) and screen == 0.0:
            return "PBE0"
        raise InputError(f"unrecognised hybrid (AEXX={aexx}, HFSCREEN={screen})")
    plus_u = "+U" if params.get("LDAU") else ""
    meta = str(params.get("METAGGA") or "").strip().upper()
    if meta in ("R2SCAN", "SCAN"):
        return ("r2SCAN" if meta == "R2SCAN" else "SCAN") + plus_u
    if meta not in ("", "NONE", "--"):
        raise InputError(f"unrecognised METAGGA {meta!r}")
    gga = str(params.get("GGA") or "PE").strip().upper()
    if gga in ("PE", "--"):
        return "PBE" + plus_u
    if gga == "PS" and not plus_u:
        return "PBEsol"
    raise InputError(f"unrecognised GGA {gga!r}{' with +U' if plus_u else ''}")


def _elapsed_s(directory: Path) -> float:
    """Wall time from OUTCAR's run statistics (NaN, stored as null, when OUTCAR is absent or cut short)."""
    outcar = directory / "OUTCAR"
    if not outcar.is_file():
        return float("nan")
    match = re.search(r"Elapsed time \(sec\):\s*([0-9.]+)", outcar.read_text(errors="replace"))
    return float(match.group(1)) if match else float("nan")


def parse_vasp_outputs(directory: str | Path, *, allow_unconverged: bool = False) -> DFTResult:
    """Final energy, forces, stress, gap and provenance of a finished VASP run (vasprun.xml[.gz], OUTCAR timing)."""
    from pymatgen.io.vasp import Vasprun

    d = Path(directory)
    path = next((p for p in (d / "vasprun.xml", d / "vasprun.xml.gz") if p.is_file()), None)
    if path is None:
        raise InputError(f"no vasprun.xml in {d}")
    try:
        vr = Vasprun(str(path), parse_potcar_file=False, parse_dos=False, parse_eigen=True)
    except Exception as exc:  # truncated/garbled XML from a killed run
        raise InputError(f"cannot parse {path}: {exc}") from None
    params = {**vr.parameters, **vr.incar}
    level = level_from_incar(params)
    final = vr.ionic_steps[-1]
    structure = vr.final_structure
    stress = -0.1 * np.asarray(final["stress"], dtype=float)  # kBar, VASP sign -> GPa, positive = tensile
    voigt = [stress[0, 0], stress[1, 1], stress[2, 2], stress[1, 2], stress[0, 2], stress[0, 1]]
    energy = float(vr.final_energy)
    gap = float(vr.eigenvalue_band_properties[0]) if vr.eigenvalues else None
    result = DFTResult(
        property="energy_per_atom", value=energy / len(structure), units="eV/atom", fidelity=level,
        code="vasp", code_version=str(vr.vasp_version or "unknown"),
        parameters={"level": level, "ENCUT": params.get("ENCUT"), "EDIFF": params.get("EDIFF"),
                    "ISMEAR": params.get("ISMEAR"), "SIGMA": params.get("SIGMA"), "NELM": params.get("NELM"),
                    "kpoints": [list(map(int, k)) for k in vr.kpoints.kpts] if vr.kpoints else None,
                    "kpoints_style": str(vr.kpoints.style) if vr.kpoints else None,
                    "potcar_symbols": list(vr.potcar_symbols)},
        converged=bool(vr.converged), wall_time_s=_elapsed_s(d),
        input_hash=input_hash(vr.initial_structure, {"vasp_incar": dict(vr.incar), "level": level}),
        energy_eV=energy, natoms=len(structure), formula=structure.composition.formula,
        scf_cycles=len(final.get("electronic_steps", [])), band_gap_eV=gap, structure=structure,
        forces_eV_per_A=np.asarray(final["forces"], dtype=float).tolist(), stress_GPa=voigt,
        ionic_steps=len(vr.ionic_steps),
    )
    if not result.converged and not allow_unconverged:
        part = "electronic" if not vr.converged_electronic else "ionic"
        raise ConvergenceError(f"VASP run in {d} not converged ({part})", result)
    return result
