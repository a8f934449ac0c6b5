"""MLIP jobs: relaxation (new structure + energy/force/stress labels) and the E(V) bulk modulus."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from pymatgen.core import Structure

from qadb.drivers import BulkModulusSettings, RelaxSettings, bulk_modulus, relax
from qadb.drivers.results import Label, RelaxResult
from qadb.store.connection import Store
from qadb.store.documents import Origin, Ref
from qadb.workflows.core import TrackedMaker
from qadb.workflows.persist import label_docs, plain, store_structure, write_labels

CHANGED_FLAG = "changed_on_relax"  # StructureMatcher no longer matches the parent (seed 003 MD filter)
_MLIP_DISTS = ("chgnet", "sevenn", "mace-torch", "torch", "ase")


@dataclass
class _MLIPMaker(TrackedMaker):
    """Shared fields of MLIP jobs: where the model runs (not part of the job id)."""

    code_dists: ClassVar[tuple[str, ...]] = _MLIP_DISTS
    device: str = "cpu"  # "cuda" sends the job to GPU workers
    threads: int | None = 1  # BLAS/torch threads inside one job; parallelise over jobs instead

    @property
    def category(self) -> str:
        return "gpu" if self.device.startswith("cuda") else "cpu"

    def check(self, structure: Structure) -> None:
        relax_settings = getattr(self.settings, "relax", self.settings)
        relax_settings.mlip(self.device)  # unknown model, missing checkpoint or head: fail before any write


@dataclass
class RelaxMaker(_MLIPMaker):
    """MLIP relaxation (ASE FIRE/BFGS + Frechet cell filter).

    Stores the relaxed cell as a new structure whose origin names the parent and this job, with
    `energy_per_atom`, `max_force` and `pressure` labels at ``MLIP:<name>@<version>`` on it; the
    forces, stress and trajectory go to GridFS. A relaxed cell that StructureMatcher no longer
    matches to its parent is flagged ``changed_on_relax`` (summary `structure_changed`).
    """

    kind: ClassVar[str] = "relax"
    name: str = "mlip relax"
    settings: RelaxSettings = field(default_factory=RelaxSettings)

    def compute(self, store: Store, jid: str, structure: Structure, extra: dict) -> Label:
        extra["trajectory"] = []
        return relax(structure, self.settings, device=self.device, threads=self.threads,
                     trajectory=extra["trajectory"])

    def persist(self, store: Store, jid: str, structure_id: str, chemsys: str, result: Label) -> list[Ref]:
        assert isinstance(result, RelaxResult)
        origin = Origin(kind="relaxed", activity=jid, parents=[structure_id], settings=plain(self.settings))
        new_id = store_structure(result.structure, origin, [CHANGED_FLAG] if result.structure_changed else [])
        energy = result.labels()[0]
        labels = [energy,
                  dataclasses.replace(energy, property="max_force", units="eV/Å", value=result.max_force_eV_per_A),
                  dataclasses.replace(energy, property="pressure", units="GPa",
                                      value=float(-np.mean(result.stress_GPa[:3])))]
        refs = write_labels(label_docs(labels, new_id, chemsys, jid, [structure_id]))
        return [Ref(collection="structures", id=new_id, role="relaxed"), *refs]

    def summarize(self, result: Label) -> dict:
        assert isinstance(result, RelaxResult)
        return {**super().summarize(result), "steps": result.steps, "max_force": result.max_force_eV_per_A,
                "structure_changed": result.structure_changed, "volume_change": result.volume_change}


@dataclass
class BulkModulusMaker(_MLIPMaker):
    """Bulk modulus (GPa) from an equation-of-state fit to E(V) of the MLIP-relaxed cell.

    One `bulk_modulus` label on the input structure; volumes, energies and the fit in GridFS.
    """

    kind: ClassVar[str] = "bulk_modulus"
    name: str = "mlip bulk modulus"
    settings: BulkModulusSettings = field(default_factory=BulkModulusSettings)

    def compute(self, store: Store, jid: str, structure: Structure, extra: dict) -> Label:
        return bulk_modulus(structure, self.settings, device=self.device, threads=self.threads)
