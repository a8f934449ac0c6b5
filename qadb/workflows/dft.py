"""DFT labelling jobs: periodic PySCF (with elemental references cached in the store) and VASP.

Formation energies are only meaningful against elemental references computed at the same settings,
so `PySCFLabelMaker` computes each reference as a tracked job of its own on the element's reference
cell (`qadb.drivers.reference_structure`), stored as an ordinary structure with an ordinary
`energy_per_atom` label. Every later compound at the same settings reads that label instead of
recomputing it, in this process or any other, and the compound's job record lists the reference
labels it used as inputs.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pymatgen.core import Structure

from qadb import config
from qadb.drivers import (
    PySCFSettings,
    VaspSettings,
    kmesh_for,
    parse_vasp_outputs,
    pyscf_label,
    reference_structure,
    write_vasp_inputs,
)
from qadb.drivers.pyscf_dft import CCSD_T, build_cell, hashed_settings
from qadb.drivers.references import reference_settings
from qadb.drivers.results import DFTResult, Label
from qadb.drivers.vasp import vasp_input_set
from qadb.errors import ConfigError, InputError, JobError
from qadb.store.connection import Store
from qadb.store.documents import Origin, Ref
from qadb.workflows.core import TrackedMaker
from qadb.workflows.persist import store_structure


def _dft_summary(maker: TrackedMaker, result: Label) -> dict:
    assert isinstance(result, DFTResult)
    return {**TrackedMaker.summarize(maker, result), "energy_per_atom": result.value,
            "formation_energy_per_atom": result.formation_energy_per_atom_eV, "band_gap": result.band_gap_eV,
            "scf_cycles": result.scf_cycles, "references": result.references_eV_per_atom or None}


@dataclass
class PySCFLabelMaker(TrackedMaker):
    """Periodic PySCF label: total energy, band gap and (by default) formation energy per atom.

    `settings` holds every number-changing choice (xc level, basis, pseudopotential, k-mesh or
    k-spacing, density fitting, smearing, convergence); all of it is hashed into the job id and
    recorded on each label. `spin`: unpaired electrons per cell (non-zero runs unrestricted).
    """

    kind: ClassVar[str] = "label"
    code_dists: ClassVar[tuple[str, ...]] = ("pyscf",)
    name: str = "pyscf label"
    settings: PySCFSettings = field(default_factory=PySCFSettings)
    formation_energy: bool = True
    spin: int = 0
    threads: int | None = None

    @property
    def category(self) -> str:
        return "dft"

    def hashed(self) -> Any:
        return {"settings": hashed_settings(self.settings, self.spin), "formation_energy": self.formation_energy}

    def check(self, structure: Structure) -> None:
        cell = build_cell(structure, self.settings, self.spin)  # basis, pseudo, odd electron count
        n_orb = cell.nao_nr() * int(np.prod(kmesh_for(structure, self.settings)))
        if self.settings.level == CCSD_T and n_orb > self.settings.cc_max_orbitals:
            raise InputError(f"CCSD(T) on {structure.formula}: {n_orb} orbitals x k-points exceeds "
                             f"cc_max_orbitals={self.settings.cc_max_orbitals}")
        if self.formation_energy:
            for element in structure.composition.elements:
                reference_structure(element)  # elements without a reference cell fail here, not after the SCF

    def compute(self, store: Store, jid: str, structure: Structure, extra: dict) -> Label:
        references = self.references(store, structure, extra) if self.formation_energy else None
        return pyscf_label(structure, self.settings, formation_energy=self.formation_energy, references=references,
                           threads=self.threads, spin=self.spin)

    def references(self, store: Store, structure: Structure, extra: dict) -> dict[str, float]:
        """Elemental energies per atom at these settings, from the store or computed (and stored) now."""
        energies: dict[str, float] = {}
        inputs: list[Ref] = extra.setdefault("inputs", [])
        for element in sorted({str(el) for el in structure.composition.elements}):
            cell, spin = reference_structure(element)
            maker = dataclasses.replace(self, settings=reference_settings(self.settings), formation_energy=False,
                                        spin=spin, rerun=False)
            sid = store_structure(cell, Origin(kind="computed", settings={"reference_for": element}))
            outcome = maker.run_on(store, sid, element, cell)
            if not outcome.ok:
                raise JobError(f"reference energy of {element} at {self.settings.level} ({outcome.job}) is "
                               f"{outcome.status}: {outcome.error or outcome.summary.get('reason', '')}".rstrip(": "))
            energies[element] = float(outcome.summary["value"])
            inputs.append(Ref(collection="labels", id=outcome.labels[0], role=f"reference:{element}"))
        return energies

    def summarize(self, result: Label) -> dict:
        return _dft_summary(self, result)


def vasp_command() -> list[str]:
    """The VASP command line: ``$QADB_VASP_CMD``, else ``$VASP_CMD``, else ``vasp_std``."""
    return shlex.split(os.environ.get("QADB_VASP_CMD") or os.environ.get("VASP_CMD") or "vasp_std")


@dataclass
class VaspMaker(TrackedMaker):
    """VASP relax/static at PBE, r2SCAN or HSE06 through atomate2's input sets.

    write (INCAR/KPOINTS/POSCAR/POTCAR in ``<run_dir>/<job id>``) → run (`vasp_cmd`) → parse
    (vasprun.xml) → decide (converged or recorded unconverged). Runs only where the VASP executable
    and POTCARs (pymatgen's ``PMG_VASP_PSP_DIR``) exist; elsewhere it stops with a `ConfigError`
    before anything is written. No custodian error handling: a failed run is a failed job.
    """

    kind: ClassVar[str] = "label"
    code_dists: ClassVar[tuple[str, ...]] = ("atomate2", "pymatgen")
    name: str = "vasp"
    settings: VaspSettings = field(default_factory=VaspSettings)
    vasp_cmd: str | None = None  # default: vasp_command()
    run_dir: str | None = None  # default: $QADB_HOME/runs

    @property
    def category(self) -> str:
        return "dft"

    def command(self) -> list[str]:
        return shlex.split(self.vasp_cmd) if self.vasp_cmd else vasp_command()

    def check(self, structure: Structure) -> None:
        cmd = self.command()
        if not cmd or shutil.which(cmd[0]) is None:
            raise ConfigError(f"VASP executable {cmd[0] if cmd else ''!r} not found; set QADB_VASP_CMD "
                              "(e.g. 'mpirun -n 16 vasp_std') on a machine with VASP")
        if vasp_input_set(structure, self.settings)[1] != "full":
            raise ConfigError("VASP POTCARs not found: set PMG_VASP_PSP_DIR (pymatgen config) to your POTCAR folder")

    def compute(self, store: Store, jid: str, structure: Structure, extra: dict) -> Label:
        directory = (Path(self.run_dir) if self.run_dir else config.qadb_home() / "runs") / jid
        if directory.exists():
            shutil.rmtree(directory)  # a killed earlier attempt of this very job
        info = write_vasp_inputs(structure, directory, self.settings)
        extra["run"] = {"directory": str(directory), "files": info["files"]}
        with open(directory / "vasp.out", "w") as log:
            code = subprocess.run(self.command(), cwd=directory, stdout=log, stderr=subprocess.STDOUT).returncode
        if code != 0:
            raise JobError(f"VASP exited with status {code}; see {directory / 'vasp.out'}")
        return parse_vasp_outputs(directory)

    def summarize(self, result: Label) -> dict:
        return _dft_summary(self, result)
