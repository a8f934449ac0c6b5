"""Structure science as pure functions over pymatgen structures, compositions and plain entries.

Validity checks (typed results with reasons), descriptors (compactness C, SPP, M_LED, symmetry and
crystallographic complexity), the seed-002 A-E funnel with the seed-000 constraint set, per-fidelity
convex hulls with decomposition energies and stability classes, and uniqueness / novelty /
prototype matching. Nothing here touches the store: `describe` and `PhaseHull.to_dict` give the
store layer plain dicts to persist. Definitions and measured speeds: docs/chem.md.
"""

from qadb.chem._composition import as_amounts, chemsys, reduced_formula
from qadb.chem._descriptors import COMPACTNESS_WINDOW, SymmetryInfo, compactness, symmetry_info
from qadb.chem._describe import describe
from qadb.chem._fingerprint import FINGERPRINT_NAMES, FINGERPRINT_VERSION, composition_fingerprint, fingerprint
from qadb.chem._funnel import (
    ConstraintConfig,
    FunnelReport,
    Stage,
    compactness_stage,
    composition_novelty_stage,
    constraints_stage,
    default_stages,
    ehull_stage,
    mled_stage,
    run_funnel,
    seed000_checks,
    spp_stage,
)
from qadb.chem._hull import (
    HullEntry,
    HullResult,
    PhaseHull,
    build_hull,
    build_hulls,
    stability_class,
)
from qadb.chem._mled import MLEDResult, mled, mled_reference
from qadb.chem._novelty import (
    Framework,
    ReferenceSet,
    aflow_prototype,
    assign_framework,
    framework_prototypes,
    unique_indices,
)
from qadb.chem._oxidation import OxidationAssignment, assign_oxidation_states, is_intermetallic
from qadb.chem._spp import SPPScore, SPPTable, build_spp_table, load_spp_table, spp_score
from qadb.chem._validity import (
    CheckResult,
    check_bond_valence,
    check_charge_neutrality,
    check_covalent_distance,
    check_electronegativity,
    check_min_distance,
    check_pauling_electrostatic,
    check_symmetry,
    check_volume,
)

__all__ = [
    "COMPACTNESS_WINDOW", "CheckResult", "ConstraintConfig", "FINGERPRINT_NAMES", "FINGERPRINT_VERSION", "Framework", "FunnelReport", "HullEntry",
    "HullResult", "MLEDResult", "OxidationAssignment", "PhaseHull", "ReferenceSet", "SPPScore", "SPPTable",
    "Stage", "SymmetryInfo", "aflow_prototype", "as_amounts", "assign_framework", "assign_oxidation_states",
    "build_hull", "build_hulls", "build_spp_table", "check_bond_valence", "check_charge_neutrality",
    "check_covalent_distance", "check_electronegativity", "check_min_distance", "check_pauling_electrostatic",
    "check_symmetry", "check_volume", "chemsys", "compactness", "composition_fingerprint", "compactness_stage", "composition_novelty_stage",
    "constraints_stage", "default_stages", "describe", "ehull_stage", "fingerprint", "framework_prototypes", "is_intermetallic",
    "load_spp_table", "mled", "mled_reference", "mled_stage", "reduced_formula", "run_funnel", "seed000_checks",
    "spp_score", "spp_stage", "stability_class", "symmetry_info", "unique_indices",
]  # fmt: skip
