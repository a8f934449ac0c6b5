"""FireWorks runner: workflows on a LaunchPad run to COMPLETED with rapidfire, GPU jobs reach only GPU
workers, lost runs are detected and re-run. The LaunchPad is in-process mongomock here, or the real
server of QADB_TEST_MONGO_URI (see conftest.py for why no local server can host FireWorks)."""

from pathlib import Path

import pytest
from jobflow import Flow

from qadb.drivers import PySCFSettings, RelaxSettings
from qadb.store.documents import Activity, HullCacheDoc, LabelDoc
from qadb.workflows import HullUpdateMaker, PySCFLabelMaker, RelaxMaker, run_flow, screening_flow
from qadb.workflows import fireworks as fw
from tests.workflows.conftest import add, formation, h2_box, rocksalt, si2_compressed


def _work(lp, store, tmp_path, *categories, **kw):
    return fw.run_worker(lp, store, fw.fworker(categories), sleep_s=0.01, max_loops=kw.pop("max_loops", 1),
                         launch_dir=tmp_path / "launches", **kw)


def test_rapidfire_runs_workflow_to_completed(store, launchpad, tmp_path):
    add(store, rocksalt(5.64), labels=[[formation(-2.1)]])
    first = HullUpdateMaker().make("Na-Cl", "PBE")
    second = HullUpdateMaker().make("Na-Cl-O", "PBE", after=first.output["job"])  # waits for the first
    ids = run_flow(Flow([first, second]), "fireworks", launchpad=launchpad)
    assert sorted(ids) == sorted([first.uuid, second.uuid])
    assert launchpad.get_fw_by_id(ids[second.uuid]).state == "WAITING"
    assert {launchpad.get_fw_by_id(i).spec["_category"] for i in ids.values()} == {"cpu"}
    report = _work(launchpad, store, tmp_path, "cpu")
    assert report["after"] == {"COMPLETED": 2}
    assert HullCacheDoc.objects.count() == 2 and Activity.objects(kind="hull", status="completed").count() == 2
    # jobflow outputs live in the qadb store, where the second job resolved its reference
    assert store.db["job_outputs"].count_documents({}) == 2


def test_gpu_jobs_go_only_to_gpu_workers(store, launchpad, tmp_path):
    (sid,) = add(store, si2_compressed())
    gpu = RelaxMaker(device="cuda").make(sid)
    cpu = HullUpdateMaker().make("Si", "PBE")
    ids = fw.submit(Flow([gpu, cpu]), launchpad)
    assert launchpad.get_fw_by_id(ids[gpu.uuid]).spec["_category"] == "gpu"
    report = _work(launchpad, store, tmp_path, "cpu", "dft")
    assert launchpad.get_fw_by_id(ids[cpu.uuid]).state == "COMPLETED"
    assert launchpad.get_fw_by_id(ids[gpu.uuid]).state == "READY"  # waits for a GPU worker
    assert report["after"] == {"COMPLETED": 1, "READY": 1} and Activity.objects(kind="relax").count() == 0


def test_lost_run_is_detected_and_rerun(store, launchpad, tmp_path):
    add(store, rocksalt(5.64), labels=[[formation(-2.1)]])
    (fw_id,) = fw.submit(HullUpdateMaker().make("Na-Cl", "PBE"), launchpad).values()
    # a worker takes the firework and dies without a word: it stays RUNNING, its launch stops pinging
    launchpad.checkout_fw(fw.fworker(["cpu"], "doomed"), str(tmp_path), fw_id=fw_id)
    assert launchpad.get_fw_by_id(fw_id).state == "RUNNING"
    assert _work(launchpad, store, tmp_path, "cpu")["after"] == {"RUNNING": 1}  # nothing to pull
    assert fw.lost_runs(launchpad, 3600)["fireworks"] == []  # not silent long enough yet
    assert fw.lost_runs(launchpad, 0)["fireworks"] == [fw_id]
    report = _work(launchpad, store, tmp_path, "cpu", rerun_lost_after_s=0)
    assert report["lost"]["fireworks"] == [fw_id] and report["after"] == {"COMPLETED": 1}
    assert HullCacheDoc.objects(id="Cl-Na@PBE").count() == 1


def test_credentials_never_go_into_the_launchpad(launchpad):
    from qadb.errors import ConfigError

    job = HullUpdateMaker().make("Na-Cl", "PBE", store_uri="mongodb://user:secret@db.example/qadb")
    with pytest.raises(ConfigError, match="credentials"):
        fw.submit(job, launchpad)
    assert fw.fw_states(launchpad) == {}


@pytest.mark.slow
def test_screening_flow_relax_label_hull_on_fireworks(store, launchpad, tmp_path):
    (sid,) = add(store, h2_box(0.80))
    flow = screening_flow([sid], RelaxMaker(settings=RelaxSettings(relax_cell=False)),
                          PySCFLabelMaker(settings=PySCFSettings(level="PBE")), store=store)
    ids = run_flow(flow, "fireworks", launchpad=launchpad)
    cats = sorted(launchpad.get_fw_by_id(i).spec["_category"] for i in ids.values())
    assert cats == ["cpu", "cpu", "dft"]
    _work(launchpad, store, tmp_path, "cpu")  # the relaxation; the label waits for a dft worker
    assert fw.fw_states(launchpad) == {"COMPLETED": 1, "READY": 1, "WAITING": 1}
    report = _work(launchpad, store, tmp_path, "dft", "cpu", max_loops=2)
    assert report["after"] == {"COMPLETED": 3}
    relaxed = Activity.objects(kind="relax").first().outputs
    new_id = next(r.id for r in relaxed if r.role == "relaxed")
    assert LabelDoc.objects(structure=new_id, property="formation_energy_per_atom", fidelity="PBE").count() == 1
    assert HullCacheDoc.objects(id="H@PBE").first().n_entries == 1


def test_launcher_templates_load_and_keep_credentials_out(monkeypatch, tmp_path):
    from fireworks.utilities.fw_serializers import load_object

    from qadb.errors import ConfigError

    root = Path(__file__).resolve().parents[2] / "launchers"
    monkeypatch.setenv("QADB_MONGO_URI", "mongodb://alice:s3cret@db.example:27017/qadb")
    assert fw.load_yaml(root / "my_launchpad.yaml")["host"].endswith("@db.example:27017/qadb")
    assert "s3cret" not in (root / "my_launchpad.yaml").read_text()
    worker = fw.fworker(config_file=root / "my_fworker.yaml")
    assert worker.category == ["cpu", "dft"] and worker.name == "my-cluster-cpu-node"
    assert fw.fworker(["gpu"], config_file=root / "my_fworker.yaml").category == ["gpu"]
    for path, marker in [("slurm/my_qadapter.yaml", "#SBATCH --ntasks=16"), ("slurm/my_qadapter_gpu.yaml", "--gres=gpu:1"),
                         ("pbs/my_qadapter.yaml", "#PBS -V")]:
        script = load_object(fw.load_yaml(root / path)).get_script_str(str(tmp_path))
        assert marker in script and "qadb worker --category" in script and "s3cret" not in script
    monkeypatch.delenv("QADB_MONGO_URI")
    with pytest.raises(ConfigError, match="environment variable QADB_MONGO_URI is not set"):
        fw.load_yaml(root / "my_launchpad.yaml")
