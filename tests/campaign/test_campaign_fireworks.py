"""Campaigns with `--runner fireworks`: the validate phase queues its paid jobs on a LaunchPad, a worker
runs them, the campaign reads the labels back; the labels equal a local run's, a resumed campaign
queues nothing twice, and a fizzled job becomes a failed entry.

The LaunchPad runs in-process on mongomock (no server on this machine can host FireWorks; see
tests/workflows/conftest.py), or on QADB_TEST_MONGO_URI when given. The worker runs in this process:
either in place of the campaign's poll sleep (one `rapidfire` round per poll, deterministic) or in a
thread of its own while the campaign waits (on a server store: the embedded one is single-threaded).
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
from ase.build import bulk
from jobflow import Flow
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from qadb.campaign import recipe as recipes, state
from qadb.campaign.acquisition import Window
from qadb.campaign.engine import Engine, Parts
from qadb.campaign.generative import MLIPLabeller, _Structures
from qadb.campaign.parts import Prediction
from qadb.campaign.remote import JOB_KEY
from qadb.campaign.replay import HitRule
from qadb.store import connect
from qadb.store.documents import Activity, StructureDoc
from qadb.workflows import fireworks as fw
from qadb.workflows.persist import store_structure
from tests.conftest import EXTERNAL_URI, mongomock_launchpad

RECIPE = {"name": "fw-test", "kind": "qa_genai", "seed": 5, "budget": 4, "max_cycles": 2, "patience": 5,
          "candidates": {"source": "generator", "n": 4}, "predict": {"validator": "mfennp"},
          "select": {"strategy": "random", "top_k": 2, "budget_fraction": 1.0},
          "validate": {"labeller": "mlip", "settings": {"model": "chgnet", "fmax": 0.1, "steps": 150}},
          "hit": {"max": -0.5}}


def _pool() -> list[Structure]:
    """Four 2-atom cells of two chemical systems: cheap CHGNet relaxations, three elemental references."""
    def rocksalt(a: float) -> Structure:
        return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"],
                                         [[0, 0, 0], [0.5] * 3]).get_primitive_structure()

    silicon = [AseAtomsAdaptor.get_structure(bulk("Si", a=5.43 * f)) for f in (0.96, 1.04)]
    return silicon + [rocksalt(5.4), rocksalt(5.9)]


class PoolSource:
    """The stored pool, minus what the campaign already labelled (no generator: the labeller is under test)."""

    def __init__(self, structures: _Structures):
        self.structures = structures
        self.ids = sorted(store_structure(s, _origin()) for s in _pool())

    def candidates(self, cycle: int, exclude: set[str], n: int, seed: int) -> list[str]:
        return [i for i in self.ids if i not in exclude][:n]

    def features(self, ids: list[str]) -> np.ndarray:
        return self.structures.fingerprints(ids)


class FlatModel:
    def fit(self, labelled: dict[str, float]) -> None:
        """Nothing to learn: selection is random in this test."""

    def predict(self, ids: list[str]) -> Prediction:
        return Prediction(np.zeros(len(ids)), np.zeros(len(ids)), np.ones(len(ids)))


def _origin():
    from qadb.store.documents import Origin

    return Origin(kind="generated", settings={"test": "fireworks campaign"})


def _engine(runner: str, lp=None, **kw) -> Engine:
    rec = recipes.validate(RECIPE)
    cid = recipes.campaign_id(rec)
    structures = _Structures()
    labeller = MLIPLabeller(rec["validate"]["settings"], cid)
    parts = Parts(source=PoolSource(structures), model=FlatModel(), labeller=labeller, target=Window(None, None),
                  hit=HitRule(max=-0.5))
    return Engine(cid, rec, parts, runner=runner, launchpad=lp, poll_s=0.0, **kw)


def _outcome(cid: str) -> list[tuple]:
    return [(c.index, list(c.selected), {k: round(v, 6) for k, v in c.labels.items()}, sorted(c.failed), list(c.hits))
            for c in state.cycles(cid)]


@pytest.fixture
def lp(monkeypatch):
    """A LaunchPad in-process on mongomock (or on the server of QADB_TEST_MONGO_URI)."""
    if EXTERNAL_URI:
        pad = fw.launchpad(EXTERNAL_URI.split("?")[0].rsplit("/", 1)[0] + "/qadb_campaign_fw_test")
    else:
        pad = mongomock_launchpad(monkeypatch, "qadb_campaign_fw_test")
    yield pad
    for name in ("fireworks", "launches", "workflows", "fw_id_assigner", "offline_runs"):
        pad.db.drop_collection(name)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class Worker:
    """What `qadb worker` on another machine does, one polling round per call; `busy` while it runs."""

    def __init__(self, lp, store, tmp_path):
        self.lp, self.store, self.folder, self.busy = lp, store, tmp_path / "launches", False

    def __call__(self, _seconds: float) -> None:
        self.busy = True
        try:
            fw.run_worker(self.lp, self.store, fw.fworker(["cpu"]), sleep_s=0.01, max_loops=1, launch_dir=self.folder)
        finally:
            self.busy = False


def _jobs_per_key(lp) -> Counter:
    return Counter(d["spec"][JOB_KEY] for d in lp.fireworks.find({}, {f"spec.{JOB_KEY}": 1}))


@pytest.mark.slow
def test_fireworks_labels_equal_local_and_resume_queues_nothing_twice(embedded_uri, lp, tmp_path, monkeypatch):
    with connect(str(tmp_path / "reference")):
        local = _engine("local").run()
        assert local.state == "completed"
        expected = _outcome(local.id)
    assert sum(len(c[2]) for c in expected) == 4 and any(c[4] for c in expected)  # NaCl cells are hits

    with connect(embedded_uri) as store:
        # first launch: no worker anywhere, so the wait times out at once; the jobs stay queued
        first = _engine("fireworks", lp, wait_timeout_s=0.0).run()
        assert first.state == "stopped" and "qadb campaign resume" in first.stop_reason
        assert (first.cycle, first.phase) == (0, "validate")
        cyc = state.cycle(first.id, 0)
        elements = {el for d in StructureDoc.objects(id__in=cyc.selected) for el in d.elements}
        assert len(_jobs_per_key(lp)) == 2 + len(elements)  # the two candidates and their elemental references
        assert sorted(cyc.counts["fireworks"]) == sorted(map(state.key, cyc.selected)) and not cyc.labels

        # a crash between add_wf and the cycle's save: the cycle forgot, the LaunchPad did not
        cyc.counts = {k: v for k, v in cyc.counts.items() if k != "fireworks"}
        cyc.save()

        from qadb.workflows.mlip import RelaxMaker

        worker, compute = Worker(lp, store, tmp_path), RelaxMaker.compute

        def only_on_the_worker(self, *args):
            assert worker.busy, "the campaign process ran a paid relaxation itself"
            return compute(self, *args)

        monkeypatch.setattr(RelaxMaker, "compute", only_on_the_worker)
        events: list[str] = []
        resumed = _engine("fireworks", lp, on_event=events.append)
        resumed.remote.sleep = worker
        done = resumed.run()
        assert done.state == "completed" and done.runner == "fireworks"
        assert _outcome(done.id) == expected
        assert all(n == 1 for n in _jobs_per_key(lp).values()), "a job was queued twice"
        assert fw.fw_states(lp) == {"COMPLETED": sum(_jobs_per_key(lp).values())}
        relaxations = Activity.objects(kind="relax")
        assert all(a.attempts == 1 and a.status == "completed" for a in relaxations)  # each paid for once
        assert any("waiting on the LaunchPad" in e for e in events)
        assert any("sent to the LaunchPad" in e for e in events)


def test_fizzled_jobs_become_failed_entries(embedded_uri, lp, tmp_path, monkeypatch):
    from qadb.workflows.mlip import RelaxMaker

    def broken(self, store, jid, structure, extra):
        raise RuntimeError("node lost its scratch disk")

    with connect(embedded_uri) as store:
        engine = _engine("fireworks", lp)
        engine.remote.sleep = Worker(lp, store, tmp_path)
        monkeypatch.setattr(RelaxMaker, "compute", broken)  # on the worker: every relaxation raises
        done = engine.run()
        cycles = state.cycles(done.id)
        assert done.state == "completed" and done.stop_reason == "budget spent"
        assert [len(c.failed) for c in cycles] == [2, 2] and not any(c.labels for c in cycles)
        notes = [n for c in cycles for n in c.notes]
        assert len(notes) >= 4 and all("fizzled" in n and "node lost its scratch disk" in n for n in notes)
        assert set(fw.fw_states(lp)) == {"FIZZLED"}
        assert all(n == 1 for n in _jobs_per_key(lp).values())


def test_embedded_store_cannot_host_a_launchpad(embedded_uri):
    from qadb.errors import ConfigError

    if EXTERNAL_URI:
        pytest.skip("the external store is a server")
    with connect(embedded_uri), pytest.raises(ConfigError, match="FireWorks needs a MongoDB server"):
        _engine("fireworks")


def test_replay_campaign_under_fireworks_runs_its_oracle_here_and_says_so(embedded_uri):
    from qadb.campaign import launch
    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / "megnet_multifidelity_bandgap").exists():
        pytest.skip("needs the staged datasets in ../shared/data")
    rec = {"name": "fw-replay", "kind": "replay", "seed": 1, "budget": 30, "max_cycles": 3, "patience": 3,
           "candidates": {"source": "replay", "task": "bandgap", "init": 20},
           "predict": {"validator": "delta_ensemble"}, "select": {"strategy": "divergence", "top_k": 10},
           "validate": {"labeller": "replay"}}
    events: list[str] = []
    with connect(embedded_uri):  # no LaunchPad is opened: the embedded store could not host one
        doc = launch(rec, runner="fireworks", on_event=events.append)
    assert doc.state == "completed" and doc.runner == "fireworks" and doc.summary["calls_total"] > 20
    assert "replay oracle in this process" in events[0]


def test_dft_labeller_queues_one_dft_job_per_level(embedded_uri):
    from qadb.campaign.generative import DFTLabeller
    from qadb.workflows import label_maker
    from qadb.workflows.core import load_structure

    lab = DFTLabeller("pyscf", {"level": "PBE0", "basis": "gth-szv"}, low_level="PBE")
    h2 = Structure(Lattice.cubic(8.0), ["H", "H"], [[0, 0, 0], [0, 0, 0.74]], coords_are_cartesian=True)
    with connect(embedded_uri):
        sid = store_structure(h2, _origin())
        jobs = lab.jobs(sid)
        structure = load_structure(sid)[1]
        assert [jid for jid, _ in jobs] == [label_maker("pyscf", s).job_id(sid, structure) for s in (lab.low, lab.settings)]
        wf, _ = fw.to_workflow(Flow([j for _, j in jobs]))
        assert {f.spec["_category"] for f in wf.fws} == {"dft"}  # label jobs reach dft workers only


@pytest.mark.slow
def test_campaign_waits_while_a_worker_thread_runs_its_jobs(store_uri, lp, tmp_path):
    """The campaign blocks in its poll loop while a worker thread (another machine's `qadb worker`) pulls jobs."""
    import threading

    if not store_uri.startswith("mongodb"):
        pytest.skip("the embedded store's SQLite connection belongs to one thread; workers use a server store")
    with connect(store_uri) as store:
        stop = threading.Event()

        def worker() -> None:
            while not stop.is_set():
                fw.run_worker(lp, store, fw.fworker(["cpu"]), sleep_s=0.05, max_loops=1,
                              launch_dir=tmp_path / "launches")
                stop.wait(0.2)

        thread = threading.Thread(target=worker, daemon=True)
        thread.start()
        try:
            done = _engine("fireworks", lp, wait_timeout_s=300.0).run()
        finally:
            stop.set()
            thread.join(timeout=60)
        assert done.state == "completed", done.stop_reason
        assert sum(len(c.labels) + len(c.failed) for c in state.cycles(done.id)) == 4
        assert set(fw.fw_states(lp)) == {"COMPLETED"} and all(n == 1 for n in _jobs_per_key(lp).values())
