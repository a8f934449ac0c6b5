"""CCSD(T) on top of a converged periodic HF reference: gamma-point RCCSD or k-point KRCCSD.

GTH pseudopotentials already remove the core, so no orbitals are frozen. The cost grows as
orbitals^7, hence the `cc_max_orbitals` guard in `PySCFSettings`.
"""

from __future__ import annotations

from typing import Any

from ase.units import Hartree


def ccsd_t(mf: Any, kmesh: tuple[int, int, int], max_cycle: int) -> tuple[float, dict[str, float], bool]:
    """(total energy Ha per cell, components eV, converged) for the HF reference `mf` (RHF at Γ, else KRHF)."""
    from pyscf.pbc import cc

    if not mf.converged:  # correlating an unconverged reference would hide the failure
        return float(mf.e_tot), {"hf": float(mf.e_tot) * Hartree}, False
    gamma = tuple(kmesh) == (1, 1, 1)
    mycc = cc.RCCSD(mf) if gamma else cc.KRCCSD(mf)
    mycc.max_cycle = max_cycle
    mycc.verbose = 0
    mycc.kernel()
    if not mycc.converged:
        return float(mf.e_tot + mycc.e_corr), {"hf": mf.e_tot * Hartree, "ccsd": mycc.e_corr * Hartree}, False
    if gamma:
        e_t = float(mycc.ccsd_t())
    else:
        from pyscf.pbc.cc import kccsd_t_rhf

        e_t = float(kccsd_t_rhf.kernel(mycc, mycc.ao2mo()).real)
    total = float(mf.e_tot + mycc.e_corr + e_t)
    parts = {"hf": float(mf.e_tot) * Hartree, "ccsd": float(mycc.e_corr) * Hartree, "triples": e_t * Hartree}
    return total, parts, True

