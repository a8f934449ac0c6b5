"""Compute drivers: pure functions from (structure, settings) to typed, JSON-ready results.

No store or jobflow here: the workflows layer wraps these in Makers and persists `result.to_dict()`
(or `result.labels()`), keyed by `input_hash(structure, settings)` for idempotency.
Optional packages (chgnet, sevenn, mace-torch, atomate2) are imported only when used.
"""

from qadb.drivers.elastic import BulkModulusSettings, ElasticSettings, bulk_modulus, elastic_moduli
from qadb.drivers.hashing import canonical_structure, input_hash
from qadb.drivers.mlip import MLIP, MODELS, load_mlip
from qadb.drivers.pyscf_dft import LEVELS as PYSCF_LEVELS
from qadb.drivers.pyscf_dft import PySCFSettings, kmesh_for, pyscf_label
from qadb.drivers.references import (
    formation_energy_per_atom,
    reference_energies,
    reference_energy,
    reference_key,
    reference_structure,
)
from qadb.drivers.rank import Ranking, RankSettings, rank_by_energy
from qadb.drivers.relax import RelaxSettings, relax, structure_changed
from qadb.drivers.results import (
    BulkModulusResult,
    ConvergenceError,
    DFTResult,
    ElasticResult,
    Label,
    RelaxResult,
)
from qadb.drivers.structures import as_structure, check_structure
from qadb.drivers.vasp import VaspSettings, parse_vasp_outputs, vasp_input_set, write_vasp_inputs

__all__ = [
    "MLIP", "MODELS", "PYSCF_LEVELS", "BulkModulusResult", "BulkModulusSettings", "ConvergenceError", "DFTResult",
    "ElasticResult", "ElasticSettings", "Label", "PySCFSettings", "RankSettings", "Ranking", "RelaxResult",
    "RelaxSettings", "VaspSettings", "rank_by_energy",
    "as_structure", "bulk_modulus", "canonical_structure", "check_structure", "elastic_moduli",
    "formation_energy_per_atom", "input_hash", "kmesh_for", "load_mlip", "parse_vasp_outputs", "pyscf_label",
    "reference_energies", "reference_energy", "reference_key", "reference_structure", "relax", "structure_changed",
    "vasp_input_set",
    "write_vasp_inputs",
]
