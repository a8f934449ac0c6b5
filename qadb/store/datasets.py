"""Presets for the public datasets staged in ``shared/data``: columns, ids, labels and fidelities.

Each preset says how a staged file maps onto the store, so `qadb ingest --dataset NAME` needs no
column flags and the fidelity of every imported value is declared once, here, with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qadb import config
from qadb.errors import InputError
from qadb.store.readers import LabelSpec

_MP = {"source": "Materials Project", "scheme": "GGA/GGA+U mixing with MP corrections"}


def _mp_labels(fe: str = "formation_energy_per_atom", gap: str | None = "band_gap", ehull: str | None = None) -> list[LabelSpec]:
    out = [LabelSpec(fe, "formation_energy_per_atom", "PBE+U", "eV/atom", code="VASP", parameters=_MP)]
    if gap:
        out.append(LabelSpec(gap, "band_gap", "PBE+U", "eV", code="VASP", parameters=_MP))
    if ehull:
        out.append(LabelSpec(ehull, "energy_above_hull", "PBE+U", "eV/atom", code="VASP", parameters=_MP))
    return out


@dataclass(frozen=True)
class StructurePreset:
    name: str
    files: tuple[str, ...]
    labels: list[LabelSpec] = field(default_factory=list, hash=False)
    id_column: str | None = "material_id"
    id_prefix: str = ""
    theoretical_column: str | None = None
    note: str = ""

    def paths(self) -> list[Path]:
        root = config.shared_data_dir()
        return [root / f for f in self.files]


PRESETS: dict[str, StructurePreset] = {
    p.name: p
    for p in (
        StructurePreset("mp20-test", ("mp_20_mattergen_cache/test.csv.gz",), _mp_labels()),
        StructurePreset("mp20-val", ("mp_20_mattergen_cache/val.csv.gz",), _mp_labels()),
        StructurePreset(
            "mp20-subsets",
            tuple(f"mp_20_subsets/{n}.csv.gz" for n in ("biternary_test", "biternary_val", "pilot_test", "pilot_train", "pilot_val")),
            _mp_labels(ehull="e_above_hull"),
        ),
        StructurePreset(
            "mpts52", ("mpts_52/val.csv.gz", "mpts_52/test.csv.gz"),
            _mp_labels(gap=None, ehull="energy_above_hull"), theoretical_column="theoretical",
        ),
        StructurePreset(
            "perov5", ("perov_5/val.csv.gz", "perov_5/test.csv.gz"), [], id_prefix="perov5:",
            note="heats of formation are GPAW/RPBE-era values outside the fidelity taxonomy: structures only",
        ),
        StructurePreset(
            "carbon24", ("carbon_24/val.csv.gz", "carbon_24/test.csv.gz"), [], id_prefix="airss:",
            note="AIRSS energies at 10 GPa with undocumented settings: structures only",
        ),
        StructurePreset(
            "mp-elasticity", ("mp_elasticity_binaries/mp_binary_elasticity.csv.gz",),
            [
                LabelSpec("bulk_modulus_vrh_GPa", "bulk_modulus", "PBE", "GPa", code="VASP", parameters={"source": "Materials Project", "average": "VRH"}),
                LabelSpec("shear_modulus_vrh_GPa", "shear_modulus", "PBE", "GPa", code="VASP", parameters={"source": "Materials Project", "average": "VRH"}),
            ],
            id_column="mp_id",
        ),
        StructurePreset(
            "aflow-bulk", tuple(f"aflow_bulk_modulus/{n}.csv.gz" for n in ("train", "val", "test")),
            [LabelSpec("bulk_modulus", "bulk_modulus", "PBE", "GPa", code="VASP", parameters={"source": "AFLOW", "method": "AEL-AGL (not stated which)"})],
            id_column="Unnamed: 0", id_prefix="aflow-row:",
        ),
        StructurePreset("fuse-probes", ("pigen_fuse_spp/fuse2_probe_structures.csv.gz",), [], id_column="source_path", id_prefix="fuse:"),
    )
}

FERE = "fere"
LABEL_ONLY = ("megnet-bandgap", "mp2020-exp")
ALL_DATASETS = (*PRESETS, FERE, *LABEL_ONLY)

# megnet multi-fidelity band-gap file: its fidelity column -> our taxonomy
MEGNET_FIDELITY = {"pbe": "PBE", "hse": "HSE06", "gllb-sc": "GLLB-SC", "scan": "SCAN"}


def preset(name: str) -> StructurePreset:
    if name not in PRESETS:
        raise InputError(f"unknown dataset {name!r}; known: {', '.join(ALL_DATASETS)}")
    return PRESETS[name]


def fere_fidelity(functional: str, u_setting: str) -> str:
    """FERE setups: r2SCAN/SCAN with U=0 are plain meta-GGA; any U makes them +U; PBE rows are PBE+U."""
    func = {"r2scan": "r2SCAN", "scan": "SCAN", "pbe": "PBE"}[functional.strip().lower()]
    no_u = str(u_setting).strip().lower() in ("u=0", "0", "none", "nan", "")
    if func == "PBE":
        return "PBE+U"
    return func if no_u else f"{func}+U"
