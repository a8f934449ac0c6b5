"""Generator checkpoints: plain dicts of tensors/numbers/strings, read with ``torch.load(weights_only=True)``.

Never unpickles arbitrary objects. Two kinds share the loader's checks:
``qadb.generator`` (inference: EMA weights + config, small) and ``qadb.generator.train_state`` (resumable
training state: weights, EMA, optimiser moments, step, RNG).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qadb.errors import CheckpointError
from qadb.models.generator.diffusion import Schedules
from qadb.models.generator.network import CrystalDenoiser

KIND = "qadb.generator"
STATE_KIND = "qadb.generator.train_state"
FORMAT_VERSION = 1


@dataclass
class LoadedGenerator:
    model: CrystalDenoiser
    schedules: Schedules
    meta: dict = field(default_factory=dict)
    radii: torch.Tensor | None = None
    num_atoms_hist: torch.Tensor | None = None
    prop_norm: dict = field(default_factory=dict)
    path: str = ""
    sampler: dict = field(default_factory=dict)  # default sampler settings: steps, step_lr, corrector
    elements: torch.Tensor | None = None  # atomic numbers of the training crystals: what ab initio decoding may emit

    def to(self, device):
        self.model.to(device)
        self.schedules.to(device)
        return self


def read_raw(path, kind: str = KIND) -> dict:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"generator checkpoint not found: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a corrupt checkpoint
        raise CheckpointError(f"generator checkpoint {p} is corrupt or not a torch file ({type(e).__name__})") from None
    if not isinstance(obj, dict) or obj.get("kind") != kind:
        got = obj.get("kind") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{p} is not a {kind} checkpoint (kind: {got!r})")
    if int(obj.get("format_version", -1)) != FORMAT_VERSION:
        raise CheckpointError(f"{p}: unsupported generator checkpoint format {obj.get('format_version')!r}")
    return obj


def load_checkpoint(path, device: str = "cpu") -> LoadedGenerator:
    """Load an inference checkpoint; raises `CheckpointError` (one line) if missing, corrupt or of another kind."""
    obj = read_raw(path, KIND)
    try:
        model = CrystalDenoiser(**obj["model_config"])
        model.load_state_dict(obj["state_dict"])
        sched = Schedules(**obj["diffusion_config"])
        meta = json.loads(obj.get("meta_json", "{}"))
        prop_norm = json.loads(obj.get("prop_norm_json", "{}"))
        sampler = json.loads(obj.get("sampler_json", "{}"))
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: generator checkpoint does not fit the model ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120]})") from None
    model.eval()
    g = LoadedGenerator(model=model, schedules=sched, meta=meta, radii=obj.get("radii"),
                        num_atoms_hist=obj.get("num_atoms_hist"), prop_norm=prop_norm, path=str(path),
                        sampler=sampler, elements=obj.get("elements"))
    return g.to(device)


def make_checkpoint(model_config: dict, diffusion_config: dict, state_dict: dict, radii, num_atoms_hist,
                    prop_norm: dict, meta: dict, dtype: str = "float32", sampler: dict | None = None,
                    elements=None) -> dict:
    """An inference checkpoint; ``sampler`` holds the default sampler settings (steps, step_lr, corrector) that
    `qadb sample` and `api.sample` use when the caller gives none; ``elements`` (atomic numbers of the training
    crystals) keeps ab initio samples to elements the model has seen (an untrained type such as Cf, which no
    MLIP takes, can otherwise win the final argmax)."""
    extra = {} if elements is None else {"elements": torch.as_tensor(sorted(set(int(z) for z in elements)),
                                                                     dtype=torch.long)}
    return {**extra, "sampler_json": json.dumps(sampler or {}), "kind": KIND, "format_version": FORMAT_VERSION,
            "model_config": dict(model_config),
            "diffusion_config": dict(diffusion_config),
            "state_dict": {k: v.detach().to(getattr(torch, dtype)).cpu().clone() for k, v in state_dict.items()},
            "radii": radii.float().cpu(), "num_atoms_hist": num_atoms_hist.cpu(),
            "prop_norm_json": json.dumps(prop_norm), "meta_json": json.dumps(meta)}
