"""Conditional inverse design (seed 003): sample crystals conditioned on a target bulk modulus, screen them in
three stages, fine-tune the generator on what was validated, and measure how close its samples land.

Per cycle (= iteration; iteration 0 samples the committed generator, iteration k the checkpoint fine-tuned
after iteration k-1):

- generate: `candidates.n` crystals with K = target under classifier-free guidance, stored with their
  checkpoint (registered in GridFS);
- stage I (the engine's funnel hook): the bulk-modulus pre-filter (`qadb.models.bulk_modulus`) keeps
  |K_pred − target| ≤ `prefilter_tolerance` × target;
- stage II (same hook): CHGNet relaxation + E(V) bulk modulus as tracked `bulk_moduli` jobs for the survivors
  (at most `stage2_max`, closest predictions first), kept within `mlip_tolerance`; the same jobs run on a fixed
  random subset of `mape_samples` generated crystals, independent of any filter, whose mean
  |K_CHGNet − target| / target is the iteration's MAPE (it measures the generator, not the screens);
- stage III (the labeller, paid): the CHGNet-relaxed candidate matched to a known MP binary (same reduced
  formula + StructureMatcher) takes MP's DFT K_VRH, stored as a PBE label; otherwise a second, independent
  MLIP (SevenNet-0) computes K as a tracked job;
- fine-tune (at the start of the next cycle's generate): every stage-III-labelled crystal (its relaxed cell,
  conditioned on its stage-III K) plus a replay sample of the generator's K-labelled training data, bounded
  CPU steps (`qadb.models.generator.finetune`).

Resume: stage I is deterministic, stages II and III are tracked jobs or engine-keyed labels (never bought
twice), and a fine-tuned checkpoint is written atomically under a deterministic path and reused when present.
Each cycle's stage counts and MAPE are kept as one "inverse: {json}" note on the cycle document.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np

from qadb.campaign import state
from qadb.campaign.acquisition import Window, standardise
from qadb.campaign.engine import Parts
from qadb.campaign.parts import Prediction
from qadb.campaign.replay import HitRule
from qadb.errors import ConfigError
from qadb.store.documents import CycleDoc, LabelDoc

NOTE = "inverse: "
MP_FIDELITY = "PBE"


def settings(recipe: dict) -> dict:
    """The recipe's `inverse` block over its defaults, checked for the combinations the schema cannot express."""
    from qadb.campaign.recipe import INVERSE_DEFAULTS

    inv = {**INVERSE_DEFAULTS, **(recipe.get("inverse") or {})}
    inv["finetune"] = {**INVERSE_DEFAULTS["finetune"], **(recipe.get("inverse") or {}).get("finetune", {})}
    inv["relax"] = {**INVERSE_DEFAULTS["relax"], **(recipe.get("inverse") or {}).get("relax", {})}
    if inv["mlip"] == inv["second_mlip"]:
        raise ConfigError(f"inverse.second_mlip: must differ from inverse.mlip ({inv['mlip']}): "
                          "stage III needs an independent potential")
    if inv["mlip_tolerance"] > inv["prefilter_tolerance"]:
        raise ConfigError("inverse.mlip_tolerance: must not exceed inverse.prefilter_tolerance "
                          f"({inv['mlip_tolerance']} > {inv['prefilter_tolerance']})")
    return inv


def _bm_settings(inv: dict, model: str):
    from qadb.drivers import BulkModulusSettings, RelaxSettings

    return BulkModulusSettings(relax=RelaxSettings(model=model, **inv["relax"]), n_points=inv["eos_points"])


def _k_values(outcomes) -> list[float | None]:
    """The `bulk_modulus` label value of each job outcome (None where the job did not converge)."""
    ids = [lab for out in outcomes if out.ok for lab in out.labels]
    values = {d.id: d.value for d in LabelDoc.objects(id__in=ids, property="bulk_modulus").only("id", "value")}
    return [next((values[lab] for lab in out.labels if lab in values), None) if out.ok else None for out in outcomes]


def bulk_moduli(ids: list[str], inv: dict, model: str) -> list[float | None]:
    """K (GPa) of each structure by `model` as tracked jobs (a job already in the store is read back); None
    where the job did not converge or the driver refuses the cell (a generated cell can overlap its images)."""
    from qadb import workflows as wf
    from qadb.errors import InputError

    settings_ = _bm_settings(inv, model)
    out: list[float | None] = []
    for i in ids:
        try:
            out += _k_values(wf.bulk_moduli([i], settings_))
        except InputError:
            out.append(None)
    return out


class InverseSource:
    """Samples K-conditioned crystals from this cycle's generator (fine-tuning it first when due)."""

    def __init__(self, recipe: dict, cid: str, inv: dict, structures):
        self.recipe, self.cid, self.inv, self.structures = recipe, cid, inv, structures
        self.cand = recipe["candidates"]
        self.cycle: int | None = None  # the cycle last sampled (and its checkpoint): the screen hook runs right
        self.used: Path | None = None  # after `candidates`

    def base_checkpoint(self) -> Path:
        from qadb.models.generator import DEFAULT_CHECKPOINT

        return Path(self.cand.get("checkpoint") or DEFAULT_CHECKPOINT)

    def checkpoint_path(self, cycle: int) -> Path:
        from qadb.config import qadb_home

        if cycle == 0:
            return self.base_checkpoint()
        return qadb_home() / "campaigns" / self.cid / f"generator_c{cycle:03d}.pt"

    def checkpoint(self, cycle: int) -> Path:
        """This cycle's generator: the base one, or the previous one fine-tuned on the labels bought so far."""
        path = self.checkpoint_path(cycle)
        if cycle == 0 or path.is_file():
            return path
        parent = self.checkpoint(cycle - 1)
        labelled = finetune_set(self.cid, cycle - 1)
        if not labelled:  # nothing validated yet: the generator carries over unchanged
            return parent
        from qadb.models.generator.finetune import crystals_from_structures, finetune

        ft = self.inv["finetune"]
        relaxed = [relaxed_id(i, self.inv) for i in sorted(labelled)]
        pairs = [(r, labelled[i]) for i, r in zip(sorted(labelled), relaxed) if r is not None]
        if not pairs:
            return parent
        new = crystals_from_structures(self.structures.get([r for r, _ in pairs]), "bulk_modulus",
                                       [v for _, v in pairs])
        replay = replay_crystals(ft["replay"], seed=self.recipe["seed"] + cycle)
        finetune(parent, path, new, replay, steps=ft["steps"], batch_size=ft["batch_size"], lr=ft["lr"],
                 new_fraction=ft["new_fraction"], seed=self.recipe["seed"] * 1000 + cycle, threads=1)
        state.fault_point("finetune", cycle)
        return path

    def candidates(self, cycle: int, exclude: set[str], n: int, seed: int) -> list[str]:
        from qadb.models.generator import sample
        from qadb.models.generator.store_samples import checkpoint_id, store_samples
        from qadb.store.connection import current

        self.cycle = cycle
        path = self.checkpoint(cycle)
        previous = self.checkpoint(cycle - 1) if cycle else path
        parent = checkpoint_id(current(), previous) if previous != path else None
        ckpt = checkpoint_id(current(), path, parent=parent)
        self.used = path
        cycle_seed = int(np.random.default_rng([seed, cycle, 3]).integers(2**31))
        cond = {"K": self.inv["target"]}
        guidance = {"K": self.inv["guidance"]}
        # one torch thread: the default (the cores idle right now) changes the floating-point reductions with the
        # machine's load, so a generate phase redone after a crash would sample different crystals
        crystals = sample(path, n=n, conditions=cond, guidance=guidance, steps=self.cand.get("steps"),
                          num_atoms=self.cand.get("num_atoms"), chemsys=self.cand.get("chemsys"), seed=cycle_seed,
                          threads=1)
        cfg = {"mode": "gen", "conditions": cond, "guidance": guidance, "steps": self.cand.get("steps"),
               "num_atoms": self.cand.get("num_atoms"), "chemsys": self.cand.get("chemsys"), "seed": cycle_seed}
        settings_ = {k: v for k, v in cfg.items() if v is not None}
        ids = store_samples(crystals, checkpoint=ckpt, settings=settings_, campaign=self.cid, cycle=cycle)["ids"]
        state.fault_point("sample", cycle)
        return [i for i in dict.fromkeys(ids) if i not in exclude]

    def features(self, ids: list[str]) -> np.ndarray:
        return standardise(self.structures.fingerprints(ids))


def finetune_set(cid: str, through: int) -> dict[str, float]:
    """The crystals the generator learns after cycle `through`, each with the K it is conditioned on: every
    stage-III-labelled one (its stage-III K) and every stage-II survivor not bought at stage III (within the
    MLIP tolerance of the target by its stage-II K, which it is conditioned on). A handful of stage-III labels
    per iteration is too few to move the generator; the survivors passed the same two screens."""
    out: dict[str, float] = {}
    k_mlip = {state.unkey(k): v for rec in records(cid) if rec["cycle"] <= through for k, v in rec["k_mlip"].items()}
    for cyc in state.cycles(cid):
        if cyc.index <= through:
            out.update({i: float(k_mlip[i]) for i in cyc.generated if i in k_mlip})
    out.update(state.labelled(cid, through=through))  # the stage-III value wins where there is one
    return out


def replay_crystals(n: int, seed: int) -> dict | None:
    """`n` K-labelled crystals (≤ 20 sites, primitive cells) from the data the generator was trained on."""
    if n <= 0:
        return None
    import pandas as pd
    from pymatgen.core import Structure

    from qadb.models.generator.finetune import crystals_from_structures
    from qadb.models.generator.prepare import data_root

    root = data_root()
    mp = pd.read_csv(root / "mp_elasticity_binaries/mp_binary_elasticity.csv.gz", keep_default_na=False)
    aflow = pd.read_csv(root / "aflow_bulk_modulus/train.csv.gz")
    pool = list(zip(mp.cif, mp.bulk_modulus_vrh_GPa)) + list(zip(aflow.cif, aflow.bulk_modulus))
    rng = np.random.default_rng(seed)
    structures, values = [], []
    for i in rng.permutation(len(pool)):
        s = Structure.from_str(pool[i][0], fmt="cif").get_primitive_structure()
        if len(s) <= 20:
            structures.append(s)
            values.append(float(pool[i][1]))
        if len(structures) == n:
            break
    return crystals_from_structures(structures, "bulk_modulus", values)


def relaxed_id(doc_id: str, inv: dict) -> str | None:
    """The stage-II MLIP relaxation of a candidate (a tracked job: run once, then read back)."""
    from qadb import workflows as wf
    from qadb.drivers import RelaxSettings
    from qadb.errors import InputError

    try:
        out = wf.relax_structures([doc_id], RelaxSettings(model=inv["mlip"], **inv["relax"]))[0]
    except InputError:
        return None
    return out.new_structure if out.ok else None


def mape_subset(ids: list[str], n: int, seed: int, cycle: int) -> list[str]:
    """A fixed-size random subset of the generated crystals, drawn before any screen looks at them."""
    rng = np.random.default_rng([seed, cycle, 7])
    return [ids[i] for i in sorted(rng.choice(len(ids), size=min(n, len(ids)), replace=False))]


class Screen:
    """Stages I and II as the engine's funnel hook; records the cycle's stage counts and MAPE."""

    def __init__(self, recipe: dict, cid: str, inv: dict, source: InverseSource, structures):
        self.recipe, self.cid, self.inv, self.source, self.structures = recipe, cid, inv, source, structures
        self.k_mlip: dict[str, float] = {}

    @cached_property
    def prefilter(self):
        from qadb.models.bulk_modulus import DEFAULT_CHECKPOINT, BulkModulusPrefilter

        return BulkModulusPrefilter(self.inv.get("prefilter_checkpoint") or DEFAULT_CHECKPOINT)

    def __call__(self, ids: list[str]) -> list[str]:
        inv, target, cycle = self.inv, self.inv["target"], self.source.cycle
        k_pred = self.prefilter.predict(self.structures.get(ids)) if ids else np.zeros(0)
        stage1 = [i for i, k in zip(ids, k_pred) if abs(k - target) <= inv["prefilter_tolerance"] * target]
        order = sorted(stage1, key=lambda i: abs(k_pred[ids.index(i)] - target))[: inv["stage2_max"]]
        probe = mape_subset(ids, inv["mape_samples"], self.recipe["seed"], cycle)
        todo = list(dict.fromkeys(probe + order))
        k_mlip: dict[str, float | None] = {}
        for n, i in enumerate(todo):  # probe first, then the stage-II candidates not already in the probe
            k_mlip[i] = bulk_moduli([i], inv, inv["mlip"])[0]
            if n == 0 or n == len(probe):
                state.fault_point("probe-mid" if n < len(probe) else "stage2-mid", cycle)
        self.k_mlip.update({i: v for i, v in k_mlip.items() if v is not None})
        stage2 = [i for i in order if k_mlip[i] is not None and abs(k_mlip[i] - target) <= inv["mlip_tolerance"] * target]
        probe_k = np.array([k_mlip[i] for i in probe if k_mlip[i] is not None])
        screened_k = np.array([k_mlip[i] for i in order if k_mlip[i] is not None])
        record = {"cycle": cycle, "checkpoint": str(self.source.used),
                  "generated": len(ids), "stage1_passed": len(stage1), "stage2_run": len(order),
                  "stage2_converged": int(len(screened_k)), "stage2_passed": len(stage2),
                  "mape_samples": len(probe), "mape_converged": int(len(probe_k)),
                  "mape": _mape(probe_k, target), "median_k_gpa": _median(probe_k),
                  "probe_k": [round(float(k), 2) for k in probe_k],
                  "mape_screened": _mape(screened_k, target), "prefilter_median_k_gpa": _median(k_pred),
                  "k_mlip": {state.key(i): round(float(k_mlip[i]), 2) for i in todo if k_mlip[i] is not None}}
        _set_note(self.cid, cycle, record)
        state.fault_point("screened", cycle)
        return stage2


def _mape(k: np.ndarray, target: float) -> float | None:
    return round(float(np.mean(np.abs(k - target) / target)), 4) if len(k) else None


def _median(k: np.ndarray) -> float | None:
    return round(float(np.median(k)), 1) if len(k) else None


def _set_note(cid: str, cycle: int, record: dict) -> None:
    """Replace this cycle's inverse note (a redone generate phase writes it again, once)."""
    cyc = state.cycle(cid, cycle)
    notes = [n for n in cyc.notes if not n.startswith(NOTE)] + [NOTE + json.dumps(record, sort_keys=True)]
    CycleDoc.objects(id=cyc.id).update_one(set__notes=notes)


def records(cid: str) -> list[dict]:
    """Each cycle's stage record with its stage-III outcome (labelled, hits, label values)."""
    from qadb.store.documents import CampaignDoc

    camp = CampaignDoc.objects(id=cid).only("recipe").first()
    target = ((camp.recipe or {}).get("inverse") or {}).get("target") if camp else None
    out = []
    for cyc in state.cycles(cid):
        rec = next((json.loads(n[len(NOTE):]) for n in cyc.notes if n.startswith(NOTE)), None)
        if rec is None:
            continue
        k3 = np.array(list(cyc.labels.values()), dtype=float)
        rec.update(stage3_selected=len(cyc.selected), stage3_labelled=len(cyc.labels), stage3_failed=len(cyc.failed),
                   stage3_hits=len(cyc.hits), stage3_k={k: round(v, 2) for k, v in cyc.labels.items()},
                   mape_stage3=_mape(k3, target) if target else None)
        out.append(rec)
    return out


class StageIIModel:
    """The engine's predictor: the stage-II MLIP K of each surviving candidate (no learned correction)."""

    def __init__(self, screen: Screen):
        self.screen = screen

    def fit(self, labelled: dict[str, float]) -> None:
        return None  # the generator is what learns here (fine-tuned each cycle), not the screen

    def predict(self, ids: list[str]) -> Prediction:
        known = self.screen.k_mlip
        missing = [i for i in ids if i not in known]
        if missing:  # after a resume the hook did not run in this process: read its stored values back
            for rec in records(self.screen.cid):
                known.update({state.unkey(k): v for k, v in rec["k_mlip"].items()})
        k = np.array([known.get(i, np.nan) for i in ids], dtype=float)
        return Prediction(k, k, np.zeros(len(ids)))


class HighFidelityLabeller:
    """Stage III: MP DFT K_VRH where the relaxed candidate is a known binary, else a second MLIP's K."""

    def __init__(self, inv: dict, cid: str, structures):
        self.inv, self.cid, self.structures = inv, cid, structures
        self.fidelity = f"{MP_FIDELITY} (MP elasticity) or {inv['second_mlip']}"

    @cached_property
    def mp(self) -> dict[str, list[tuple[str, object, float]]]:
        """MP elasticity binaries by reduced formula: (mp_id, structure, K_VRH)."""
        import gzip

        from pymatgen.core import Structure

        from qadb.models.generator.prepare import data_root

        rows = json.loads(gzip.open(data_root() / "mp_elasticity_binaries/mp-binary-pbe-elasticity-2025.1.json.gz").read())
        out: dict[str, list] = {}
        for r in rows:
            s = Structure.from_dict(r["structure"])
            out.setdefault(s.composition.reduced_formula, []).append((r["mp_id"], s, float(r["bulk_modulus_vrh"])))
        return out

    def match(self, structure) -> tuple[str, float] | None:
        """(mp_id, K_VRH) of a known MP binary this structure matches, if any."""
        from pymatgen.analysis.structure_matcher import StructureMatcher

        known = self.mp.get(structure.composition.reduced_formula, [])
        if not known:
            return None
        sm = StructureMatcher()
        return next(((mid, k) for mid, s, k in known if sm.fit(structure, s)), None)

    def label(self, doc_id: str) -> float | None:
        rid = relaxed_id(doc_id, self.inv)
        if rid is None:
            return None
        relaxed = self.structures.get([rid])[0]
        hit = self.match(relaxed)
        if hit is None:
            return bulk_moduli([rid], self.inv, self.inv["second_mlip"])[0]
        return self._store_mp(rid, relaxed, doc_id, *hit)

    def _store_mp(self, rid: str, relaxed, doc_id: str, mp_id: str, k: float) -> float:
        from qadb.drivers import Label, input_hash
        from qadb.store.documents import StructureDoc
        from qadb.workflows.persist import label_docs, write_labels

        params = {"source": "mp_elasticity_binaries", "mp_id": mp_id, "match": "reduced formula + StructureMatcher()"}
        lab = Label(property="bulk_modulus", value=k, units="GPa", fidelity=MP_FIDELITY,
                    code="materialsproject-elasticity", code_version="2025.1", parameters=params, converged=True,
                    wall_time_s=0.0, input_hash=input_hash(relaxed, params))
        chemsys = StructureDoc.objects(id=rid).only("chemsys").first().chemsys
        write_labels(label_docs([lab], rid, chemsys, f"campaign-{self.cid}", [doc_id]))
        return k


def inverse_parts(recipe: dict, cid: str) -> Parts:
    from qadb.campaign.generative import _Structures

    inv = settings(recipe)
    structures = _Structures()
    source = InverseSource(recipe, cid, inv, structures)
    screen = Screen(recipe, cid, inv, source, structures)
    t = inv["target"]
    window = Window(t * (1 - inv["mlip_tolerance"]), t * (1 + inv["mlip_tolerance"]))
    return Parts(source=source, model=StageIIModel(screen), labeller=HighFidelityLabeller(inv, cid, structures),
                 target=window, hit=HitRule(min=window.min, max=window.max), filters=screen)


def mape_metrics(cid: str) -> dict[str, float]:
    """`inverse_mape_iter<k>` and companions from the stored cycle records."""
    out: dict[str, float] = {}
    for rec in records(cid):
        k = rec["cycle"]
        for name in ("mape", "mape_screened", "median_k_gpa", "generated", "stage1_passed", "stage2_run",
                     "stage2_passed", "mape_converged", "stage3_labelled", "stage3_hits"):
            if rec.get(name) is not None:
                out[f"inverse_{name}_iter{k}"] = rec[name]
    return out

