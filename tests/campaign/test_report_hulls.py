"""Hull diagrams in campaign reports (seed 000 Fig. 11): the systems with hits are traced from the
cycle's values to the stored labels, and a binary or ternary hull is drawn as PNG and embedded in the HTML."""

from __future__ import annotations

import warnings

import pytest
from pymatgen.core import Lattice, Structure

from qadb.campaign import state
from qadb.campaign.report import build_report, hit_systems, hull_figure
from qadb.chem import HullEntry, build_hull
from qadb.store.documents import CampaignDoc, CycleDoc, Origin
from tests.workflows.conftest import add, formation, rocksalt

PNG = b"\x89PNG"


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # matplotlib font cache, pymatgen
        yield


def test_binary_and_ternary_hulls_are_drawn(tmp_path):
    binary = build_hull([HullEntry.make("a", "NaCl", -2.1, "PBE"), HullEntry.make("b", "Na3Cl", -0.9, "PBE"),
                         HullEntry.make("c", "NaCl3", -0.2, "PBE")], fidelity="PBE")
    path = hull_figure(binary, tmp_path / "b.png", candidates={"b"}, hits={"a"})
    assert open(path, "rb").read(4) == PNG
    ternary = build_hull([HullEntry.make("x", "Li2O", -2.0, "PBE"), HullEntry.make("y", "FeO", -1.4, "PBE"),
                          HullEntry.make("z", "LiFeO2", -1.9, "PBE"), HullEntry.make("w", "Li5FeO4", -1.5, "PBE")],
                         fidelity="PBE")
    path = hull_figure(ternary, tmp_path / "t.png", hits={"z"})
    assert open(path, "rb").read(4) == PNG and (tmp_path / "t.png").stat().st_size > 5000
    with pytest.raises(ValueError, match="binary and ternary"):
        hull_figure(build_hull([HullEntry.make("s", "Si", -0.1, "PBE")]), tmp_path / "u.png")


def _relaxed_child_label(parent: str, structure: Structure, value: float, fidelity: str) -> str:
    """What the MLIP labeller writes: a relaxed child structure carrying the formation energy."""
    from qadb.drivers.results import Label
    from qadb.workflows.persist import label_docs, store_structure, write_labels

    child = store_structure(structure, Origin(kind="relaxed", parents=[parent]))
    lab = Label(property="formation_energy_per_atom", value=value, units="eV/atom", fidelity=fidelity, code="test",
                code_version="1", parameters={}, converged=True, wall_time_s=0.0, input_hash=f"h-{child}")
    write_labels(label_docs([lab], child, "Cl-Na", "campaign-test", [parent]))
    return child


def test_report_of_a_small_campaign_writes_and_embeds_the_hull(store, tmp_path):
    cscl = Structure(Lattice.cubic(3.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    zincblende = Structure.from_spacegroup("F-43m", Lattice.cubic(6.1), ["Na", "Cl"], [[0, 0, 0], [0.25] * 3])
    stored, dft_candidate = add(store, rocksalt(5.64), cscl, labels=[[formation(-2.1)], [formation(-1.9)]])
    (mlip_candidate,) = add(store, zincblende)  # unlabelled generated cell: its label sits on the relaxed child
    child = _relaxed_child_label(mlip_candidate, zincblende.copy().scale_lattice(zincblende.volume * 1.1), -1.0, "PBE")
    cid = "hull-report"
    CampaignDoc(id=cid, recipe={"validate": {"cost": 1.0}}, kind="qa_genai", state="completed", name=cid).save()
    picked = [dft_candidate, mlip_candidate]
    CycleDoc(id=f"{cid}-c000", campaign=cid, index=0, selected=picked, validated=picked, hits=picked,
             labels={state.key(dft_candidate): -1.9, state.key(mlip_candidate): -1.0},
             counts={"generated": 8, "passed_funnel": 4, "selected": 2, "validated": 2, "hits": 2}).save()

    (system,) = hit_systems(cid)
    assert (system.chemsys, system.fidelity) == ("Cl-Na", "PBE")
    assert system.candidates == system.hits == {dft_candidate, child}  # the stored NaCl is a reference phase
    rep = build_report(CampaignDoc.objects(id=cid).first(), tmp_path)
    png = rep.files["hull Cl-Na (PBE)"]
    assert png.endswith("hull_Cl-Na_pbe.png") and open(png, "rb").read(4) == PNG
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "hull Cl-Na (PBE)" in page  # hits, funnel, hull
    assert stored not in system.candidates
