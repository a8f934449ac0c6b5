"""Property-conditioned fine-tuning of the generator on a handful of labelled crystals (seed 003's loop).

Each inverse-design iteration teaches the conditional generator the crystals it has just had validated, each
conditioned on its measured property, mixed with a replay sample of the generator's original labelled training
data so a few dozen new crystals do not make it forget the rest. Same loss as training (`train.diffusion_loss`,
with its condition dropout, so classifier-free guidance keeps working); a bounded number of CPU steps; the
result is an ordinary inference checkpoint whose meta names its parent. torch/numpy only: the caller converts
pymatgen structures with `crystals_from_structures`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from qadb.models.generator.checkpoint import make_checkpoint, read_raw
from qadb.models.generator.conditions import PROPS, canonical
from qadb.models.generator.diffusion import Schedules
from qadb.models.generator.network import CrystalDenoiser
from qadb.models.generator.train import DEFAULTS, CrystalData, clip_gradients, diffusion_loss


def crystals_from_structures(structures: list, prop: str, values: list[float]) -> dict:
    """Pack pymatgen structures and one property value each into the tensor dict `CrystalData` reads."""
    col = PROPS.index(canonical(prop))
    num_atoms, types, frac, lattice = [], [], [], []
    props = torch.full((len(structures), len(PROPS)), float("nan"))
    for i, (s, v) in enumerate(zip(structures, values)):
        num_atoms.append(len(s))
        types += [site.specie.Z for site in s]
        frac.append(torch.tensor(np.mod(s.frac_coords, 1.0), dtype=torch.float32))
        lattice.append(torch.tensor(s.lattice.matrix, dtype=torch.float32))
        props[i, col] = float(v)
    return {"num_atoms": torch.tensor(num_atoms), "types": torch.tensor(types), "frac": torch.cat(frac),
            "lattice": torch.stack(lattice), "props": props}


def _concat(a: dict, b: dict) -> dict:
    return {k: torch.cat([a[k], b[k]]) for k in ("num_atoms", "types", "frac", "lattice", "props")}


def _digest(d: dict) -> str:
    h = hashlib.sha256()
    for k in ("num_atoms", "types", "frac", "lattice", "props"):
        h.update(d[k].numpy().tobytes())
    return h.hexdigest()[:16]


def finetune(parent: str | Path, out: str | Path, new: dict, replay: dict | None = None, *, steps: int = 40,
             batch_size: int = 32, new_fraction: float = 0.5, lr: float = 5e-5, seed: int = 0,
             threads: int | None = None) -> dict:
    """Fine-tune the checkpoint `parent` for `steps` optimiser steps and write `out`; returns its meta.

    Each batch draws `new_fraction` of its crystals from `new` (the validated crystals, with replacement)
    and the rest from `replay`. All crystals are trained in ab initio mode (the mode campaigns sample).
    """
    if steps < 1 or int(new["num_atoms"].numel()) == 0:
        raise ValueError("fine-tuning needs steps >= 1 and at least one new crystal")
    raw = read_raw(parent)
    parent_meta = json.loads(raw.get("meta_json", "{}"))
    cfg = {**DEFAULTS, **parent_meta.get("config", {}), "gen_frac": 1.0}
    prev_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        model = CrystalDenoiser(**raw["model_config"])
        model.load_state_dict({k: v.float() for k, v in raw["state_dict"].items()})
        sched = Schedules(**raw["diffusion_config"])
        data_new = CrystalData(new, "cpu")
        data_old = CrystalData(replay, "cpu") if replay is not None and int(replay["num_atoms"].numel()) else None
        n_new = batch_size if data_old is None else max(1, round(new_fraction * batch_size))
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        model.train()
        losses = []
        for _ in range(steps):
            parts = [data_new.batch(torch.randint(0, data_new.n, (n_new,), generator=g))]
            if data_old is not None:
                parts.append(data_old.batch(torch.randint(0, data_old.n, (batch_size - n_new,), generator=g)))
            b = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
            loss, _ = diffusion_loss(model, sched, b, cfg, raw["radii"].float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(model, cfg)
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        torch.set_num_threads(prev_threads)
    model.eval()
    meta = {**{k: v for k, v in parent_meta.items() if k not in ("finetune",)},
            "data_hash": _digest(new if replay is None else _concat(new, replay)),
            "finetune": {"parent": str(parent), "parent_data_hash": parent_meta.get("data_hash"), "steps": steps,
                         "batch_size": batch_size, "new_fraction": new_fraction, "lr": lr, "seed": seed,
                         "n_new": int(new["num_atoms"].numel()),
                         "n_replay": int(replay["num_atoms"].numel()) if replay is not None else 0,
                         "loss_first": round(float(np.mean(losses[:5])), 4),
                         "loss_last": round(float(np.mean(losses[-5:])), 4)}}
    sampler = json.loads(raw.get("sampler_json", "{}"))
    ck = make_checkpoint(raw["model_config"], raw["diffusion_config"], model.state_dict(), raw["radii"],
                         raw["num_atoms_hist"], json.loads(raw.get("prop_norm_json", "{}")), meta, sampler=sampler,
                         elements=None if raw.get("elements") is None else
                         torch.cat([raw["elements"], new["types"].long()]).tolist())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.save(ck, tmp)
    os.replace(tmp, out)  # a killed fine-tune leaves no half-written checkpoint behind
    return meta
