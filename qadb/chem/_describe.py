"""`describe`: everything chem knows about one structure, as a JSON-serialisable dict for the store.

It names the versions of every reference artifact it used, so that a stored descriptor can be
recomputed or invalidated when a table changes.
"""

from __future__ import annotations

from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version

from pymatgen.core import Structure

from qadb.chem._descriptors import compactness, symmetry_info
from qadb.chem._elements import PYMATGEN_ATOMIC_RADIUS, PYYKKO_2009
from qadb.chem._funnel import ConstraintConfig, seed000_checks
from qadb.chem._mled import mled
from qadb.chem._spp import SPPTable, load_spp_table
from qadb.chem._validity import check_electronegativity, check_min_distance, check_volume, symmetry_result

DESCRIBE_SCHEMA = "qadb.chem.describe/1"


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def describe(
    structure: Structure,
    *,
    spp_table: SPPTable | None = None,
    with_mled: bool = True,
    constraints: ConstraintConfig = ConstraintConfig(),
) -> dict:
    """Descriptors (C, SPP, M_LED, symmetry, complexity), validity flags with reasons, artifact versions."""
    table = spp_table or load_spp_table()
    spp = table.score(structure)
    sym = symmetry_info(structure, constraints.symprec)
    checks = [check_min_distance(structure), check_volume(structure), check_electronegativity(structure)]
    checks += seed000_checks(structure, replace(constraints, symmetry=False))
    if constraints.symmetry:
        checks.append(symmetry_result(sym, constraints.symprec))
    comp = structure.composition
    out = {
        "schema": DESCRIBE_SCHEMA,
        "formula": comp.formula.replace(" ", ""),
        "reduced_formula": comp.reduced_formula,
        "chemsys": comp.chemical_system,
        "nsites": len(structure),
        "volume_per_atom": structure.volume / len(structure),
        "density": float(structure.density),
        "spacegroup": None if sym is None else {"number": sym.number, "symbol": sym.symbol},
        "complexity_per_atom": None if sym is None else sym.complexity_per_atom,
        "complexity_total": None if sym is None else sym.complexity_total,
        "compactness": compactness(structure),
        "spp": {"score": spp.value, "threshold": table.threshold, "passed": spp.value <= table.threshold,
                "missing_pairs": list(spp.missing_pairs)},  # fmt: skip
        "mled": mled(structure).as_dict() if with_mled else None,
        "validity": {c.name: c.as_dict() for c in checks},
        "valid_structure": checks[0].passed,
        "seed000_pass": all(c.passed for c in checks[3:]),
        "artifacts": {
            "spp_table": table.version,
            "compactness_radii": PYMATGEN_ATOMIC_RADIUS,
            "covalent_radii": PYYKKO_2009,
            "oxidation_tables": {"neutrality": constraints.neutrality_table, "ionic": constraints.ionic_table},
            "mled": f"pigen-compute_mled/matminer-{_version('matminer')}" if with_mled else None,
            "pymatgen": _version("pymatgen"),
            "spglib": _version("spglib"),
        },
    }
    return out
