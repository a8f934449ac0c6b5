"""The validation funnel: seed 002 filters A-E and the seed 000 constraint set, as composable stages.

A stage is a name and a function (structure, index) -> CheckResult. `run_funnel` applies stages in
order to the survivors of the previous ones (as seed 002 Fig. 4) and reports survival counts per stage
and the first failing reason of every rejected structure; expensive stages (M_LED, E_hull) therefore
only see what cheap ones let through.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pymatgen.core import Structure

from qadb.chem._descriptors import COMPACTNESS_WINDOW, compactness
from qadb.chem._elements import DEFAULT_OXIDATION_TABLE
from qadb.chem._mled import mled
from qadb.chem._novelty import ReferenceSet
from qadb.chem._spp import SPPTable, load_spp_table
from qadb.chem._validity import (
    CheckResult,
    check_bond_valence,
    check_charge_neutrality,
    check_covalent_distance,
    check_pauling_electrostatic,
    check_symmetry,
)
from qadb.errors import InputError

StageFn = Callable[[Structure, int], CheckResult]


@dataclass(frozen=True)
class Stage:
    name: str
    fn: StageFn


@dataclass(frozen=True)
class ConstraintConfig:
    """Seed 000 Table 1 set, with the defaults that keep known materials passing (docs/chem.md)."""

    alpha: float = 0.8
    charge_tol: float = 0.1
    # Neutrality may use any known state (the common-state tables reject ~6 % of MP-20 test); the ionic
    # checks judge only compounds that are ionic with common states, so that exotic states do not
    # send borides or Zintl phases into bond-valence sums with generic parameters.
    neutrality_table: str = "all"
    ionic_table: str = DEFAULT_OXIDATION_TABLE
    pauling_max_rms: float = 0.5
    bvs_max_dev: float = 0.5
    symprec: float = 0.1
    symmetry: bool = True


def seed000_checks(structure: Structure, config: ConstraintConfig = ConstraintConfig()) -> list[CheckResult]:
    """Every check of the seed 000 constraint set (distances, neutrality, Pauling, BVS, symmetry)."""
    tol, table = config.charge_tol, config.ionic_table
    checks = [
        check_covalent_distance(structure, config.alpha),
        check_charge_neutrality(structure, tol=tol, table=config.neutrality_table),
        check_pauling_electrostatic(structure, max_rms=config.pauling_max_rms, tol=tol, table=table),
        check_bond_valence(structure, max_dev=config.bvs_max_dev, tol=tol, table=table),
    ]
    if config.symmetry:
        checks.append(check_symmetry(structure, config.symprec))
    return checks


def constraints_stage(config: ConstraintConfig = ConstraintConfig()) -> Stage:
    def fn(structure: Structure, _: int) -> CheckResult:
        for result in seed000_checks(structure, config):
            if not result.passed:
                return CheckResult("seed000", False, f"{result.name}: {result.reason}", result.value)
        return CheckResult("seed000", True, "all seed-000 constraints hold")

    return Stage("seed000", fn)


def spp_stage(table: SPPTable | None = None, threshold: float | None = None) -> Stage:
    """Filter A: SPP score <= threshold (default: the table's 95th-percentile threshold)."""

    def fn(structure: Structure, _: int) -> CheckResult:
        t = table or load_spp_table()
        limit = t.threshold if threshold is None else threshold
        score = t.score(structure).value
        return CheckResult("A_spp", score <= limit, f"SPP {score:.4f} vs threshold {limit:.4f} ({t.version})", score)

    return Stage("A_spp", fn)


def composition_novelty_stage(reference: ReferenceSet) -> Stage:
    """Filter B: reduced formula absent from the reference set."""

    def fn(structure: Structure, _: int) -> CheckResult:
        novel = reference.is_novel_composition(structure)
        formula = structure.composition.reduced_formula
        return CheckResult("B_novel_composition", novel, f"{formula} {'new' if novel else 'in reference set'}")

    return Stage("B_novel_composition", fn)


def compactness_stage(window: tuple[float, float] = COMPACTNESS_WINDOW) -> Stage:
    """Filter C: compactness inside `window` (seed 002: 0.55-0.85)."""

    def fn(structure: Structure, _: int) -> CheckResult:
        c = compactness(structure)
        ok = window[0] <= c <= window[1]
        return CheckResult("C_compactness", ok, f"C = {c:.3f} vs [{window[0]}, {window[1]}]", c)

    return Stage("C_compactness", fn)


def mled_stage(minimum: float = 9.0) -> Stage:
    """Filter D: M_LED > `minimum` (seed 002 uses 9)."""

    def fn(structure: Structure, _: int) -> CheckResult:
        value = mled(structure).value
        return CheckResult("D_mled", value > minimum, f"M_LED = {value:.4f} vs > {minimum}", value)

    return Stage("D_mled", fn)


def ehull_stage(e_hull: Sequence[float], maximum: float = 0.05) -> Stage:
    """Filter E: E_hull (eV/atom, given per input structure, e.g. from `PhaseHull`) below `maximum`."""

    def fn(_: Structure, index: int) -> CheckResult:
        value = float(e_hull[index])
        return CheckResult("E_hull", value < maximum, f"E_hull = {1000 * value:.1f} meV/atom vs < {1000 * maximum:g}", value)

    return Stage("E_hull", fn)


def default_stages(
    reference: ReferenceSet | None = None,
    e_hull: Sequence[float] | None = None,
    constraints: ConstraintConfig | None = ConstraintConfig(),
    spp_table: SPPTable | None = None,
    mled_min: float = 9.0,
) -> list[Stage]:
    """seed-000 constraints, then A (SPP), B (needs `reference`), C, D, E (needs `e_hull`)."""
    stages = [constraints_stage(constraints)] if constraints is not None else []
    stages.append(spp_stage(spp_table))
    if reference is not None:
        stages.append(composition_novelty_stage(reference))
    stages += [compactness_stage(), mled_stage(mled_min)]
    if e_hull is not None:
        stages.append(ehull_stage(e_hull))
    return stages


@dataclass
class FunnelReport:
    """Survival per stage (n_in -> n_out), surviving indices, and why each rejected one failed."""

    n_input: int
    counts: list[tuple[str, int]] = field(default_factory=list)  # (stage, survivors after it)
    survivors: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "n_input": self.n_input,
            "stages": [{"stage": name, "survivors": n} for name, n in self.counts],
            "survivors": list(self.survivors),
            "rejected": {str(k): v for k, v in self.rejected.items()},
        }


def run_funnel(structures: Sequence[Structure], stages: Sequence[Stage]) -> FunnelReport:
    """Apply `stages` sequentially; a structure leaves at its first failing stage."""
    if not stages:
        raise InputError("a funnel needs at least one stage")
    alive = list(range(len(structures)))
    report = FunnelReport(len(structures))
    for stage in stages:
        kept = []
        for idx in alive:
            result = stage.fn(structures[idx], idx)
            if result.passed:
                kept.append(idx)
            else:
                report.rejected[idx] = f"{stage.name}: {result.reason}"
        alive = kept
        report.counts.append((stage.name, len(alive)))
    report.survivors = alive
    return report
