"""Bad inputs give one clear error and change nothing; the CLI commands of the job layer; VASP jobs."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from qadb.drivers import PySCFSettings, VaspSettings
from qadb.errors import ConfigError, InputError
from qadb.store import connect
from qadb.store.documents import LabelDoc, Origin, StructureDoc
from qadb.workflows import VaspMaker, label_structures, relax_structures
from tests.workflows.conftest import add, counts, formation, h2_box, rocksalt, si2_compressed

ROOT = Path(__file__).resolve().parents[2]
VASP_RUN = ROOT / "tests" / "drivers" / "data" / "vasp_si_static"


def _overlapping_doc() -> str:
    """A structure document as a generator might write it, with two atoms 0.2 Å apart."""
    from qadb.store.identity import analyse

    s = si2_compressed()
    ident = analyse(s)
    fields = ident.document_fields()
    fields["structure"]["sites"][1]["xyz"] = [0.2, 0.0, 0.0]
    fields["structure"]["sites"][1]["abc"] = list(s.lattice.get_fractional_coords([0.2, 0.0, 0.0]))
    StructureDoc(id="qadb-overlapping", **fields, origin=Origin(kind="generated")).save()
    return "qadb-overlapping"


def test_overlapping_atoms_refused_before_any_write(store):
    good = add(store, si2_compressed())[0]
    bad = _overlapping_doc()
    before = counts()
    with pytest.raises(InputError, match="qadb-overlapping: overlapping atoms in Si2: sites 0 and 1 are 0.200 Å"):
        relax_structures([good, bad], store=store)
    assert counts() == before  # not even the good structure's job started


def test_unknown_functional_and_method():
    with pytest.raises(InputError, match="unknown fidelity 'B3LYP'"):
        PySCFSettings(level="B3LYP")
    with pytest.raises(InputError, match="PySCF driver does not do 'PBE\\+U'"):
        PySCFSettings(level="PBE+U")
    with pytest.raises(InputError, match="unknown labelling method 'gaussian'"):
        label_structures(["x"], method="gaussian")


def _fake_vasp(tmp_path: Path) -> Path:
    """A stand-in for the VASP executable that 'runs' by writing a finished Si static run."""
    exe = tmp_path / "bin" / "vasp_std"
    exe.parent.mkdir()
    exe.write_text(f"#!/bin/sh\ncp {VASP_RUN}/vasprun.xml {VASP_RUN}/OUTCAR .\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def test_vasp_needs_vasp_and_potcars(store, tmp_path, monkeypatch):
    from pymatgen.core import SETTINGS

    monkeypatch.setitem(SETTINGS, "PMG_VASP_PSP_DIR", None)
    (sid,) = add(store, si2_compressed())
    before = counts()
    with pytest.raises(ConfigError, match="VASP executable 'no-such-vasp' not found"):
        label_structures([sid], "vasp", VaspSettings(), vasp_cmd="no-such-vasp", store=store)
    with pytest.raises(ConfigError, match="POTCARs not found"):
        label_structures([sid], "vasp", VaspSettings(), vasp_cmd=str(_fake_vasp(tmp_path)), store=store)
    assert counts() == before


def test_vasp_job_writes_runs_parses_and_labels(store, tmp_path, monkeypatch):
    """write → run → parse → decide with a stand-in executable (the POTCAR check is what is skipped)."""
    monkeypatch.setattr(VaspMaker, "check", lambda self, structure: None)
    (sid,) = add(store, si2_compressed())
    maker = VaspMaker(settings=VaspSettings(level="PBE"), vasp_cmd=str(_fake_vasp(tmp_path)), run_dir=str(tmp_path / "runs"))
    out = maker.run(sid, store)
    assert out.status == "completed" and out.summary["fidelity"] == "PBE" and out.summary["band_gap"] == pytest.approx(2.5)
    run = tmp_path / "runs" / out.job
    assert {"INCAR", "KPOINTS", "POSCAR", "vasprun.xml", "vasp.out"} <= {p.name for p in run.iterdir()}
    labels = {lab.property: lab for lab in LabelDoc.objects(structure=sid)}
    assert labels["energy_per_atom"].value == pytest.approx(-5.42) and labels["energy_per_atom"].code == "vasp"
    assert labels["energy_per_atom"].code_version == "6.4.2" and labels["band_gap"].fidelity == "PBE"


def _qadb(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "QADB_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("QADB_MONGO_URI", None)
    return subprocess.run([sys.executable, "-m", "qadb.cli.__main__", *args], capture_output=True, text=True, env=env,
                          cwd=home, timeout=600)


def _error_line(res: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_cli_bad_inputs_one_line_nonzero_store_unchanged(tmp_path):
    with connect(str(tmp_path / "store")) as s:
        add(s, rocksalt(5.64), labels=[[formation(-2.1)]])
    bad = tmp_path / "overlap.json"
    s = si2_compressed()
    s.replace(1, "Si", [0.2, 0, 0], coords_are_cartesian=True)
    bad.write_text(json.dumps(s.as_dict()))
    assert "overlapping atoms" in _error_line(_qadb(tmp_path, "relax", str(bad)))
    assert "unknown fidelity 'b3lyp'" in _error_line(_qadb(tmp_path, "label", "--xc", "b3lyp", str(bad)))
    assert "--kmesh must look like" in _error_line(_qadb(tmp_path, "label", "--kmesh", "a,b", "qadb-x"))
    assert "no structure 'qadb-missing'" in _error_line(_qadb(tmp_path, "relax", "qadb-missing"))
    res = _qadb(tmp_path, "--store", "mongodb://127.0.0.1:1/x", "jobs")
    assert res.returncode == 3 and _error_line(res).startswith("error: cannot reach MongoDB")
    assert "FireWorks needs a MongoDB server" in _error_line(_qadb(tmp_path, "worker", "--category", "cpu"))
    with connect(str(tmp_path / "store"), read_only=True):
        assert StructureDoc.objects.count() == 1 and LabelDoc.objects.count() == 1


def test_cli_hull_and_jobs(tmp_path):
    with connect(str(tmp_path / "store")) as s:
        nacl, _ = add(s, rocksalt(5.64), rocksalt(5.0), labels=[[formation(-2.1)], [formation(-1.9)]])
    res = _qadb(tmp_path, "hull", "--chemsys", "Cl-Na", "--fidelity", "pbe", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert [p["structure"] for p in data["phases"]][0] == nacl and data["phases"][1]["e_above_hull"] == pytest.approx(0.2)
    assert data["phases"][0]["stability"] == "stable" and data["outcome"]["status"] == "completed"
    res = _qadb(tmp_path, "jobs", "--json")
    jobs = json.loads(res.stdout)
    assert res.returncode == 0 and jobs["counts"] == {"hull": {"completed": 1}} and jobs["jobs"][0]["kind"] == "hull"
    res = _qadb(tmp_path, "jobs", "--lost")
    assert res.returncode == 0 and "hull: 1 completed" in res.stderr
    res = _qadb(tmp_path, "jobs", "--lost", "--rerun", "--json")
    assert res.returncode == 0 and res.stdout == ""  # nothing was lost, nothing re-run


@pytest.mark.slow
def test_cli_relax_and_divergent_label(tmp_path):
    si = tmp_path / "si.json"
    si.write_text(json.dumps(si2_compressed().as_dict()))
    res = _qadb(tmp_path, "relax", str(si), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["status"] == "completed"
    h2 = tmp_path / "h2.json"
    h2.write_text(json.dumps(h2_box().as_dict()))
    res = _qadb(tmp_path, "label", "--method", "pyscf", "--xc", "pbe", "--max-cycle", "1", "--no-formation-energy", str(h2))
    assert "1 of 1 job(s) did not complete" in _error_line(res) and "unconverged" in res.stderr
    with connect(str(tmp_path / "store"), read_only=True):
        assert LabelDoc.objects(fidelity="PBE").count() == 0  # recorded as unconverged, never stored
    res = _qadb(tmp_path, "jobs", "--status", "unconverged", "--json")
    assert json.loads(res.stdout)["jobs"][0]["summary"]["converged"] is False
