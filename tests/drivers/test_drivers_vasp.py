"""VASP input sets through atomate2 (POTCAR.spec where POTCARs are absent) and parsing of a tiny run."""

from pathlib import Path

import pytest

from qadb.drivers import ConvergenceError, VaspSettings, input_hash, parse_vasp_outputs, write_vasp_inputs
from qadb.drivers.vasp import level_from_incar
from qadb.errors import InputError

DATA = Path(__file__).parent / "data" / "vasp_si_static"


@pytest.fixture
def no_potcars(monkeypatch):
    """Make sure pymatgen cannot find POTCARs, whatever the machine's .pmgrc.yaml says."""
    from pymatgen.core import SETTINGS

    monkeypatch.setitem(SETTINGS, "PMG_VASP_PSP_DIR", None)


@pytest.mark.parametrize("calc", ["relax", "static"])
@pytest.mark.parametrize(("level", "expect"), [
    ("PBE", {"GGA": "Pe"}),
    ("r2SCAN", {"METAGGA": "R2scan"}),
    ("hse06", {"LHFCALC": True, "HFSCREEN": 0.2}),
])
def test_input_sets_written_with_potcar_spec(tmp_path, si2, no_potcars, calc, level, expect):
    settings = VaspSettings(calc=calc, level=level)
    info = write_vasp_inputs(si2, tmp_path, settings)
    assert info["potcar"] == "spec" and info["files"] == ["INCAR", "KPOINTS", "POSCAR", "POTCAR.spec"]
    assert info["input_hash"] == input_hash(si2, settings)
    from pymatgen.io.vasp import Incar

    incar = Incar.from_file(tmp_path / "INCAR")
    for key, value in expect.items():
        assert incar[key] == value
    assert incar["NSW"] == (99 if calc == "relax" else 0) and incar.get("LDAU", False) is False
    assert "METAGGA" not in incar or level == "r2SCAN"
    assert (tmp_path / "POTCAR.spec").read_text().split() == ["Si"]
    assert not (tmp_path / "POTCAR").exists()


def test_bad_vasp_settings():
    with pytest.raises(InputError, match="VASP input sets here cover PBE, r2SCAN, HSE06"):
        VaspSettings(level="CCSD(T)")
    with pytest.raises(InputError, match="calc must be one of"):
        VaspSettings(calc="md")


def test_parse_vasprun_fixture():
    result = parse_vasp_outputs(DATA)
    assert result.converged and result.fidelity == "PBE" and result.code == "vasp" and result.code_version == "6.4.2"
    assert result.energy_eV == pytest.approx(-10.84) and result.value == pytest.approx(-5.42)
    assert result.band_gap_eV == pytest.approx(2.5) and result.scf_cycles == 2 and result.ionic_steps == 1
    assert result.stress_GPa[:3] == pytest.approx([1.2, 1.2, 1.2])  # -12 kBar (VASP sign) = +1.2 GPa tensile
    assert result.wall_time_s == pytest.approx(13.5)  # OUTCAR "Elapsed time"
    assert result.parameters["ENCUT"] == 520 and result.parameters["potcar_symbols"] == ["PAW_PBE Si 05Jan2001"]


def test_unconverged_vasprun_flagged(tmp_path):
    text = (DATA / "vasprun.xml").read_text().replace('name="NELM">   100', 'name="NELM">     2')
    (tmp_path / "vasprun.xml").write_text(text)
    with pytest.raises(ConvergenceError, match="not converged \\(electronic\\)") as err:
        parse_vasp_outputs(tmp_path)
    assert err.value.result.converged is False
    assert parse_vasp_outputs(tmp_path, allow_unconverged=True).converged is False


def test_missing_or_truncated_output(tmp_path):
    with pytest.raises(InputError, match="no vasprun.xml"):
        parse_vasp_outputs(tmp_path)
    (tmp_path / "vasprun.xml").write_text((DATA / "vasprun.xml").read_text()[:3000])
    with pytest.raises(InputError, match="cannot parse"):
        parse_vasp_outputs(tmp_path)


@pytest.mark.parametrize(("params", "level"), [
    ({"GGA": "PE"}, "PBE"), ({"GGA": "PE", "LDAU": True}, "PBE+U"), ({"GGA": "PS"}, "PBEsol"),
    ({"METAGGA": "R2SCAN"}, "r2SCAN"), ({"METAGGA": "SCAN", "LDAU": True}, "SCAN+U"),
    ({"LHFCALC": True, "HFSCREEN": 0.2, "AEXX": 0.25}, "HSE06"), ({"LHFCALC": True, "HFSCREEN": 0.0}, "PBE0"),
])
def test_level_from_incar(params, level):
    assert level_from_incar(params) == level
