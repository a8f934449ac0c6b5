"""Parts of generative campaigns: generator samples stored as structures, MF-ENNP predictions with a
per-campaign correction, the chemistry funnel, and labellers that run real calculations as tracked jobs.

Candidates are written to the store (origin = generator checkpoint + settings + campaign + cycle),
so every label a campaign buys hangs off a stored structure with its lineage.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from qadb.campaign.acquisition import Window, standardise
from qadb.campaign.build import hit_rule, target_window
from qadb.campaign.engine import Parts
from qadb.campaign.parts import Prediction
from qadb.campaign.replay import HitRule
from qadb.campaign.surrogate import DeltaEnsemble
from qadb.chem import fingerprint
from qadb.errors import ConfigError
from qadb.store.documents import LabelDoc, Origin, StructureDoc


def _settings(cls, given: dict, where: str = "validate.settings"):
    """Build a drivers settings dataclass, naming unknown fields instead of a TypeError."""
    unknown = sorted(set(given) - set(cls.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)} for {cls.__name__} "
                          f"(known: {', '.join(cls.__dataclass_fields__)})")
    return cls(**given)


class _Structures:
    """Stored structures by id, parsed once."""

    def __init__(self):
        self._cache: dict = {}

    def get(self, ids: list[str]) -> list:
        from pymatgen.core import Structure

        missing = [i for i in ids if i not in self._cache]
        for doc in StructureDoc.objects(id__in=missing).only("id", "structure", "spacegroup"):
            self._cache[doc.id] = (Structure.from_dict(doc.structure), doc.spacegroup)
        return [self._cache[i][0] for i in ids]

    def fingerprints(self, ids: list[str]) -> np.ndarray:
        structures = self.get(ids)
        return np.stack([fingerprint(s, spacegroup=self._cache[i][1]) for i, s in zip(ids, structures)])


class GeneratorSource:
    """Samples n crystals per cycle with the diffusion generator and stores them; every `generator_every` cycles
    (recipe `retrain`) the generator is fine-tuned on the crystals labelled so far (`finetune_after`)."""

    # CPU fine-tune budget (seed 000 fine-tunes every 5 cycles; these are the inverse loop's settings, without
    # replay: the conditioning column is the labelled formation energy)
    FINETUNE = {"steps": 40, "batch_size": 16, "lr": 5e-5}

    def __init__(self, recipe: dict, cid: str, structures: _Structures):
        self.settings = {k: v for k, v in recipe["candidates"].items() if k not in ("source", "init", "task")}
        self.cid, self.structures, self.seed = cid, structures, int(recipe["seed"])
        self._loaded: tuple[Path, object] | None = None

    def base_checkpoint(self) -> Path:
        from qadb.models.generator import default_checkpoint

        return Path(self.settings.get("checkpoint") or default_checkpoint(self.settings.get("mode", "gen")))

    def finetuned_path(self, cycle: int) -> Path:
        """Where the generator fine-tuned after `cycle` is written (atomically; reused on resume)."""
        from qadb.config import qadb_home

        return qadb_home() / "campaigns" / self.cid / f"generator_after_c{cycle:03d}.pt"

    def checkpoint(self, cycle: int) -> Path:
        """The generator that samples `cycle`: the newest one fine-tuned after an earlier cycle, else the base."""
        for c in range(cycle - 1, 0, -1):
            if self.finetuned_path(c).is_file():
                return self.finetuned_path(c)
        return self.base_checkpoint()

    def finetune_after(self, cycle: int, labelled: dict[str, float]) -> list[str]:
        """Fine-tune the current generator on every crystal labelled so far, conditioned on its label (a
        formation energy per atom); the result samples from cycle + 1 on. Returns the cycle notes."""
        out = self.finetuned_path(cycle)
        if out.is_file():
            return [f"cycle {cycle}: generator fine-tuned after this cycle ({out.name})"]
        ids = sorted(i for i, v in labelled.items() if np.isfinite(v))
        if not ids:
            return [f"cycle {cycle}: generator fine-tune skipped (no labelled crystal yet)"]
        from qadb.models.generator.finetune import crystals_from_structures, finetune

        parent = self.checkpoint(cycle + 1)
        new = crystals_from_structures(self.structures.get(ids), "formation_energy", [labelled[i] for i in ids])
        out.parent.mkdir(parents=True, exist_ok=True)
        ft = self.FINETUNE
        finetune(parent, out, new, None, steps=ft["steps"], batch_size=ft["batch_size"], new_fraction=1.0, lr=ft["lr"],
                 seed=self.seed * 1000 + cycle, threads=1)
        return [f"cycle {cycle}: generator fine-tuned on {len(ids)} labelled crystals ({ft['steps']} CPU steps, "
                f"{out.name})"]

    def _generator(self, path: Path):
        from qadb.models.generator import load_checkpoint

        if self._loaded is None or self._loaded[0] != path:
            self._loaded = (path, load_checkpoint(path))
        return self._loaded[1]

    def candidates(self, cycle: int, exclude: set[str], n: int, seed: int) -> list[str]:
        from qadb.models.generator import sample
        from qadb.models.generator.store_samples import checkpoint_id, store_samples
        from qadb.store.connection import current

        s = self.settings
        path = self.checkpoint(cycle)
        previous = self.checkpoint(cycle - 1) if cycle > 0 else path
        parent = checkpoint_id(current(), previous) if previous != path else None
        ckpt = checkpoint_id(current(), path, parent=parent)
        cycle_seed = int(np.random.default_rng([seed, cycle, 3]).integers(2**31))
        crystals = sample(self._generator(path), n=n, mode=s.get("mode", "gen"), composition=s.get("composition"),
                          chemsys=s.get("chemsys"), num_atoms=s.get("num_atoms"), conditions=s.get("conditions") or None,
                          guidance=s.get("guidance") or None, steps=s.get("steps"), seed=cycle_seed)
        settings = {**{k: v for k, v in s.items() if v not in (None, {})}, "seed": cycle_seed}
        ids = store_samples(crystals, checkpoint=ckpt, settings=settings, campaign=self.cid, cycle=cycle)["ids"]
        return [i for i in dict.fromkeys(ids) if i not in exclude]

    def features(self, ids: list[str]) -> np.ndarray:
        return standardise(self.structures.fingerprints(ids))


def funnel(names: list[str], structures: _Structures, accepts=None):
    """A filter over candidate ids built from `qadb.chem` stages (seed 000 constraints, SPP, C, M_LED)."""
    from qadb.chem import compactness_stage, constraints_stage, mled_stage, run_funnel, spp_stage

    makers = {"constraints": constraints_stage, "spp": spp_stage, "compactness": compactness_stage, "mled": mled_stage}
    unknown = [n for n in names if n not in makers]
    if unknown:
        raise ConfigError(f"filter.funnel: {', '.join(unknown)} cannot run inside a campaign here "
                          f"(available: {', '.join(makers)})")
    stages = [makers[n]() for n in names]

    def apply(ids: list[str]) -> list[str]:
        if accepts is not None:  # the labeller must be able to label what is selected
            ids = [i for i, s in zip(ids, structures.get(ids)) if accepts(s)]
        if not stages or not ids:
            return ids
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rep = run_funnel(structures.get(ids), stages)
        return [ids[i] for i in rep.survivors]

    return apply


class ValidatorModel:
    """MF-ENNP's E_PBE, E_MF and σ_MF, plus a Δ-ensemble correction fitted to the campaign's own labels.

    The correction is how the validator is fine-tuned every cycle on a CPU: MF-ENNP's weights stay
    fixed and a small ensemble learns (label − E_MF) from fingerprints, so the labels bought at the
    campaign's high fidelity move the next cycle's predictions. σ adds the correction's spread.
    """

    def __init__(self, recipe: dict, structures: _Structures):
        self.checkpoint = recipe["predict"].get("checkpoint")
        self.structures = structures
        self.delta = DeltaEnsemble(multi_fidelity=True, seed=recipe["seed"])
        self._cache: dict[str, tuple[float, float, float]] = {}
        self._fitted = False

    def _base(self, ids: list[str]) -> np.ndarray:
        from qadb.models.validator import predict

        missing = [i for i in ids if i not in self._cache]
        if missing:
            out = predict(self.structures.get(missing), checkpoint=self.checkpoint, proxy_checkpoint=False)
            for i, k in enumerate(missing):
                self._cache[k] = (float(out["E_PBE"][i]), float(out["E_MF"][i]), float(out["sigma_MF"][i]))
        return np.array([self._cache[i] for i in ids]).reshape(len(ids), 3)

    def fit(self, labelled: dict[str, float]) -> None:
        ids = sorted(labelled)
        self._fitted = len(ids) >= 2
        if self._fitted:
            base = self._base(ids)
            self.delta.fit(self.structures.fingerprints(ids), base[:, 1], np.array([labelled[i] for i in ids]))

    def predict(self, ids: list[str]) -> Prediction:
        base = self._base(ids)
        y_mf, sigma = base[:, 1], base[:, 2]
        if self._fitted:
            corr, s2 = self.delta.predict(self.structures.fingerprints(ids), y_mf)
            y_mf, sigma = corr, np.sqrt(sigma**2 + s2**2)
        return Prediction(base[:, 0], y_mf, sigma)


class _ReferencedLabeller:
    """Formation energies need an elemental reference for every element of a candidate."""

    def accepts(self, structure) -> bool:
        from qadb.drivers import reference_structure
        from qadb.errors import InputError

        try:
            for el in structure.composition.elements:
                reference_structure(str(el))
        except InputError:
            return False
        return True


class MLIPLabeller(_ReferencedLabeller):
    """Formation energy per atom at an MLIP level: relax the candidate and the elemental references
    with the same potential (tracked jobs, cached in the store), then E_f = (E − Σ nᵢμᵢ)/N."""

    def __init__(self, settings: dict, cid: str):
        from qadb.drivers import RelaxSettings

        self.relax = _settings(RelaxSettings, settings)
        self.cid = cid
        mlip = self.relax.mlip()
        self.fidelity = mlip.fidelity
        self._mu: dict[str, float] = {}

    def _energy(self, sid: str) -> tuple[str, float] | None:
        from qadb import workflows as wf

        out = wf.relax_structures([sid], self.relax)[0]
        if not out.ok:
            return None
        lab = LabelDoc.objects(id__in=out.labels, property="energy_per_atom").first()
        return (out.new_structure, lab.value) if lab else None

    @staticmethod
    def _reference_id(element: str) -> str:
        from qadb.drivers import reference_structure
        from qadb.workflows.persist import store_structure

        cell, _ = reference_structure(element)
        return store_structure(cell, Origin(kind="computed", settings={"reference_state": element}))

    def jobs(self, doc_id: str) -> list[tuple[str, Any]]:
        """The tracked relaxations this label needs (the candidate's, then its elemental references'),
        as (job id, jobflow Job): what the fireworks runner sends to workers."""
        from qadb.workflows import RelaxMaker
        from qadb.workflows.core import load_structure

        maker = RelaxMaker(settings=self.relax)
        structure = load_structure(doc_id)[1]
        ids = [doc_id, *(self._reference_id(el) for el in sorted({str(e) for e in structure.composition.elements}))]
        return [(maker.job_id(sid, load_structure(sid)[1]), maker.make(sid)) for sid in ids]

    def _reference(self, element: str) -> float:
        if element not in self._mu:
            sid = self._reference_id(element)
            got = self._energy(sid)
            if got is None:
                raise ConfigError(f"the {self.fidelity} relaxation of the {element} reference did not converge")
            self._mu[element] = got[1]
        return self._mu[element]

    def label(self, doc_id: str) -> float | None:
        from qadb.drivers import Label, formation_energy_per_atom, input_hash
        from qadb.workflows.persist import label_docs, write_labels

        got = self._energy(doc_id)
        if got is None:
            return None
        relaxed_id, e_atom = got
        relaxed = StructureDoc.objects(id=relaxed_id).only("structure", "chemsys", "nsites").first()
        from pymatgen.core import Structure

        comp = Structure.from_dict(relaxed.structure).composition
        refs = {str(el): self._reference(str(el)) for el in comp.elements}
        value = formation_energy_per_atom(e_atom * comp.num_atoms, comp, refs)
        params = {"relax": {k: getattr(self.relax, k) for k in ("model", "fmax", "steps")}, "references": refs}
        lab = Label(property="formation_energy_per_atom", value=value, units="eV/atom", fidelity=self.fidelity,
                    code="qadb.campaign.MLIPLabeller", code_version="1", parameters=params, converged=True,
                    wall_time_s=0.0, input_hash=input_hash(Structure.from_dict(relaxed.structure), params))
        write_labels(label_docs([lab], relaxed_id, relaxed.chemsys, f"campaign-{self.cid}", [doc_id]))
        return float(value)


class DFTLabeller(_ReferencedLabeller):
    """Formation energy per atom from PySCF or VASP labelling jobs (qadb.workflows)."""

    def __init__(self, method: str, settings: dict, low_level: str | None = None):
        from dataclasses import replace

        from qadb.drivers import PySCFSettings, VaspSettings

        cls = PySCFSettings if method == "pyscf" else VaspSettings
        self.method = method
        self.settings = _settings(cls, settings)
        self.fidelity = self.settings.level
        self.low = replace(self.settings, level=low_level) if low_level else None

    def accepts(self, structure) -> bool:
        """Only candidates every level's job can run (references, basis and pseudopotential for each element);
        an environment problem (no VASP, no POTCARs) is still raised, not filtered away."""
        from qadb import workflows as wf
        from qadb.errors import InputError

        try:
            for settings in (self.settings, self.low):
                if settings is not None:
                    wf.label_maker(self.method, settings).check(structure)
        except InputError:
            return False
        return True

    def jobs(self, doc_id: str) -> list[tuple[str, Any]]:
        """The tracked label jobs (low level first, if any), as (job id, jobflow Job); each computes or
        reads its elemental references itself."""
        from qadb import workflows as wf
        from qadb.workflows.core import load_structure

        structure = load_structure(doc_id)[1]
        makers = [wf.label_maker(self.method, s) for s in (self.low, self.settings) if s is not None]
        return [(m.job_id(doc_id, structure), m.make(doc_id)) for m in makers]

    def label(self, doc_id: str) -> float | None:
        from qadb import workflows as wf

        if self.low is not None:  # stored with its provenance; the campaign decides on the high level only
            wf.label_structures([doc_id], self.method, self.low)
        out = wf.label_structures([doc_id], self.method, self.settings)[0]
        if not out.ok:
            return None
        lab = LabelDoc.objects(id__in=out.labels, property="formation_energy_per_atom").first()
        return lab.value if lab else None


def generative_parts(recipe: dict, cid: str) -> Parts:
    structures = _Structures()
    if recipe["predict"]["validator"] != "mfennp":
        raise ConfigError("generative campaigns use predict.validator: mfennp")
    labeller_kind = recipe["validate"]["labeller"]
    settings = recipe["validate"].get("settings") or {}
    labeller = (MLIPLabeller(settings, cid) if labeller_kind == "mlip"
                else DFTLabeller(labeller_kind, settings, recipe["validate"].get("low_level")))
    target = target_window(recipe, Window(None, 0.0))
    source = GeneratorSource(recipe, cid, structures)
    return Parts(source=source, model=ValidatorModel(recipe, structures),
                 labeller=labeller, target=target, hit=hit_rule(recipe, HitRule(min=target.min, max=target.max)),
                 filters=funnel(recipe["filter"]["funnel"], structures, labeller.accepts),
                 after_retrain=source.finetune_after)
