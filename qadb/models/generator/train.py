"""Training of the crystal diffusion generator (torch/numpy only: runs on the GPU machine from the source tree).

Resumable: each call loads the train-state file if present (model, EMA, optimiser, step, RNG), trains for a
wall-clock budget, saves the state (one file, overwritten), writes the inference checkpoint (EMA weights +
config) and appends one JSON line (config, data hash, seed, steps, losses, device, wall time) to a log file.

    PYTHONPATH=. python -m qadb.models.generator.train --data .gen_scratch/gen_data.pt \
        --state $OUT/generator_train_state.pt --ckpt $OUT/generator_default.pt --log $OUT/generator.jsonl \
        --minutes 8
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from qadb.errors import InputError, QadbError
from qadb.models.generator.checkpoint import STATE_KIND, FORMAT_VERSION, make_checkpoint, read_raw
from qadb.models.generator.conditions import N_TYPES, PROP_NORM, PROPS
from qadb.models.generator.diffusion import TYPE_PROCESSES, Schedules, wrapped_normal_score
from qadb.models.generator.network import CrystalDenoiser, grow_fourier

DEFAULTS = dict(hidden=256, layers=6, n_freq=16, T=1000, sigma_min=0.005, sigma_max=0.5, batch_size=256, lr=1e-3,
                warmup=500, weight_decay=0.0, ema=0.999, grad_clip=1.0, gen_frac=0.5, p_drop=0.3, p_uncond=0.1,
                p_chemsys=0.5, w_lattice=1.0, w_coord=1.0, w_type=20.0, lambda_c=0.0, val_frac=0.02, lr_decay="none",
                lr_min=0.0, dropout=0.0, type_process="gaussian", w_type_mask=1.0, grad_clip_mode="norm",
                proto_alpha=0.0, rows="all", amp="float32")
# type_process: "gaussian" (DDPM on the one-hot, loss weight w_type) or "mask" (absorbing-state discrete diffusion,
# cross-entropy weighted by w_type_mask); a resumed state may switch to "mask" (the type head then learns logits).
# grad_clip_mode: "norm" clips the global gradient norm to grad_clip; "value" clamps each gradient element to
# ±grad_clip, as DiffCSP trains (its gradient_clip_algorithm "value").
# proto_alpha: 0 draws every training crystal once per epoch; > 0 draws batches with replacement, crystal i with
# probability ∝ proto_count_i^-proto_alpha (`prepare --proto-counts`), so rare prototypes are seen more often.
# rows: which training crystals are drawn (validation rows never change): "all"; "mp20_like" leaves out AFLOW rows
# (another code and prototype set) and rows with a known E_hull above MP-20's 0.08 eV/atom cut; "mp20_only" keeps
# MP-20's own rows (validation split, pilot, rebuilt training crystals).
# amp: "bfloat16" runs the training forward pass under autocast (matrix products in bf16, losses and weights in fp32);
# "float32" (TF32 matrix products on the GPU) is what every run before session 27 used.
# lr_decay="cosine": within each call, lr goes from `lr` to `lr_min` along a half cosine over the call's budget
# (wall-clock fraction, or step fraction when --max-steps is given); warm-up applies to the first steps only.


def lr_at(cfg: dict, step: int, frac: float) -> float:
    """Learning rate `step` steps into the warm-up (from step 0, or from a slim state's resume), `frac` of the way
    through this call's budget (0..1)."""
    base = cfg["lr"]
    if cfg.get("lr_decay", "none") == "cosine":
        lo = float(cfg.get("lr_min", 0.0))
        base = lo + (base - lo) * 0.5 * (1.0 + math.cos(math.pi * min(max(frac, 0.0), 1.0)))
    return base * min(1.0, (step + 1) / cfg["warmup"])


GRAD_CLIP_MODES = ("norm", "value")
AMP_DTYPES = ("float32", "bfloat16")


def autocast(dev: torch.device, amp: str):
    """The forward pass's precision context: bf16 autocast for ``amp == "bfloat16"``, plain fp32 otherwise."""
    if amp not in AMP_DTYPES:
        raise InputError(f"amp {amp!r} is not one of {', '.join(AMP_DTYPES)}")
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp == "bfloat16")


def clip_gradients(model: nn.Module, cfg: dict) -> torch.Tensor:
    """Clip the gradients as ``cfg`` says (`train` checks the mode); returns the global norm before clipping, so that
    a step with a non-finite gradient can be skipped in either mode (clamping by value turns an inf finite)."""
    if cfg.get("grad_clip_mode", "norm") != "value":
        return torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
    norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    torch.nn.utils.clip_grad_value_(model.parameters(), cfg["grad_clip"])
    return norm


def diffusion_config(cfg: dict) -> dict:
    """The `Schedules` settings of a training config (the part an inference checkpoint keeps)."""
    if cfg["type_process"] not in TYPE_PROCESSES:
        raise InputError(f"type_process {cfg['type_process']!r} is not one of {', '.join(TYPE_PROCESSES)}")
    return dict(T=cfg["T"], sigma_min=cfg["sigma_min"], sigma_max=cfg["sigma_max"], type_process=cfg["type_process"])


# ----------------------------------------------------------------------------------------------- data
class CrystalData:
    """All crystals of one split on one device, with fast batch gathering."""

    def __init__(self, d: dict, device):
        self.num_atoms = d["num_atoms"].long().to(device)
        self.ptr = torch.cumsum(self.num_atoms, 0) - self.num_atoms
        self.types = d["types"].long().to(device)
        self.frac = d["frac"].float().to(device)
        self.lattice = d["lattice"].float().to(device)  # rows = lattice vectors (pymatgen)
        raw = d["props"].float()
        norm = torch.tensor([PROP_NORM[k] for k in PROPS], dtype=torch.float32)
        self.props_raw = raw.to(device)
        self.props = ((raw - norm[:, 0]) / norm[:, 1]).to(device)  # NaN where missing
        self.n = len(self.num_atoms)

    def batch(self, idx: torch.Tensor) -> dict:
        na = self.num_atoms[idx]
        tot = int(na.sum())
        start = torch.repeat_interleave(self.ptr[idx], na, output_size=tot)
        local = torch.arange(tot, device=idx.device) - torch.repeat_interleave(torch.cumsum(na, 0) - na, na,
                                                                               output_size=tot)
        a = start + local
        return dict(num_atoms=na, types=self.types[a], frac=self.frac[a], lattice=self.lattice[idx],
                    props=self.props[idx], props_raw=self.props_raw[idx])


# ----------------------------------------------------------------------------------------------- loss
def diffusion_loss(model, sched: Schedules, b: dict, cfg: dict, radii: torch.Tensor | None = None,
                   t_int: torch.Tensor | None = None, mode: torch.Tensor | None = None):
    """Joint loss (lattice eps-MSE, wrapped-normal score matching, type eps-MSE, optional compactness Eq. 3)."""
    dev = b["frac"].device
    na = b["num_atoms"]
    B, Na = len(na), b["frac"].shape[0]
    crystal = torch.repeat_interleave(torch.arange(B, device=dev), na, output_size=Na)
    if t_int is None:
        t_int = torch.randint(1, sched.T + 1, (B,), device=dev)
    if mode is None:
        mode = (torch.rand(B, device=dev) < cfg["gen_frac"]).long()
    ab = sched.abar[t_int]
    scale = na.float().pow(1 / 3)
    L0 = b["lattice"].transpose(1, 2) / scale[:, None, None]
    eps_l = torch.randn_like(L0)
    Lt = ab.sqrt()[:, None, None] * L0 + (1 - ab).sqrt()[:, None, None] * eps_l
    sig = sched.sigmas[t_int][crystal][:, None]
    eps_f = torch.randn_like(b["frac"])
    Ft = (b["frac"] + sig * eps_f) % 1.0
    tgt_f = wrapped_normal_score(sig * eps_f, sig) / sched.sigma_norm[t_int][crystal].sqrt()[:, None]
    A0 = F.one_hot(b["types"] - 1, N_TYPES).float()
    ab_a = ab[crystal][:, None]
    gen_atom = mode[crystal].bool()
    masking = sched.type_process == "mask"
    if masking:  # absorbing state: hidden with probability 1 - abar_t, shown as the zero vector
        hidden = gen_atom & (torch.rand(Na, device=dev) >= ab_a[:, 0])
        At = torch.where(hidden[:, None], torch.zeros_like(A0), A0)
    else:
        eps_a = torch.randn_like(A0)
        At = ab_a.sqrt() * A0 + (1 - ab_a).sqrt() * eps_a
    A_in = torch.where(gen_atom[:, None], At, A0)
    # conditions: per-sample, per-property dropout (+ all dropped together), missing values always masked
    avail = ~torch.isnan(b["props"])
    keep = torch.rand_like(b["props"]) > cfg["p_drop"]
    uncond = torch.rand(B, device=dev) < cfg["p_uncond"]
    pmask = avail & keep & ~uncond[:, None]
    pvals = torch.nan_to_num(b["props"], nan=0.0)
    chemsys = torch.zeros(B, N_TYPES, device=dev).index_put_((crystal, b["types"] - 1),
                                                             torch.ones(Na, device=dev))
    cmask = (torch.rand(B, device=dev) > cfg["p_chemsys"]) & ~uncond
    eps_l_hat, s_hat, eps_a_hat = model(A_in, Ft, Lt, na, t_int.float() / sched.T, pvals, pmask, chemsys, cmask,
                                        mode)
    l_lat = F.mse_loss(eps_l_hat, eps_l)
    l_coord = F.mse_loss(s_hat, tgt_f)
    if masking:  # cross-entropy of the clean type's logits on the hidden atoms
        scored = hidden.float()
        per_atom = F.cross_entropy(eps_a_hat, b["types"] - 1, reduction="none")
        w_type = cfg["w_type_mask"]
    else:
        scored = gen_atom.float()
        per_atom = ((eps_a_hat - eps_a) ** 2).mean(-1)
        w_type = cfg["w_type"]
    l_type = (per_atom * scored).sum() / scored.sum().clamp(min=1)
    loss = cfg["w_lattice"] * l_lat + cfg["w_coord"] * l_coord + w_type * l_type
    out = {"lattice": l_lat.detach(), "coord": l_coord.detach(), "type": l_type.detach()}
    if cfg.get("lambda_c", 0.0) > 0 and radii is not None:
        # PIGEN Eq. 3: lambda_C |C(A_t, F_t, L_t) - C_0|^2, C from the predicted clean lattice (and, in ab initio
        # mode, arg-max predicted types, not differentiable, as PIGEN); weighted by abar_t to tame t -> T.
        L0_hat = (Lt - (1 - ab).sqrt()[:, None, None] * eps_l_hat) / ab.sqrt()[:, None, None]
        vol = torch.linalg.det(L0_hat).abs() * na.float()
        if masking:
            z_pred = torch.where(hidden, eps_a_hat.argmax(-1), b["types"] - 1)
        else:
            A0_hat = (At - (1 - ab_a).sqrt() * eps_a_hat) / ab_a.sqrt()
            z_pred = torch.where(gen_atom, A0_hat.argmax(-1), b["types"] - 1)
        r3 = radii.to(dev)[z_pred] ** 3
        atom_vol = torch.zeros(B, device=dev).index_add_(0, crystal, r3) * (4.0 / 3.0 * math.pi)
        c_hat = (atom_vol / vol.clamp(min=1e-3)).clamp(max=3.0)
        c0 = b["props_raw"][:, PROPS.index("compactness")]
        l_c = (ab * (c_hat - c0) ** 2).mean()
        loss = loss + cfg["lambda_c"] * l_c
        out["compactness"] = l_c.detach()
    out["total"] = loss.detach()
    return loss, out


# ----------------------------------------------------------------------------------------------- state
def _bf16(sd):
    return {k: (v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in sd.items()}


def opt_state_compact(opt):
    sd = opt.state_dict()
    return {"state": {str(k): _bf16(v) for k, v in sd["state"].items()}, "param_groups_json": json.dumps(
        sd["param_groups"])}


def opt_state_restore(opt, comp, model: nn.Module, old_freq: int, new_freq: int):
    """AdamW moments back in fp32; those of grown Fourier weights grown like the weights (zeros for new inputs)."""
    names = [name for name, _ in model.named_parameters()]
    state = {}
    for k, v in comp["state"].items():
        moments = {kk: (vv.float() if torch.is_tensor(vv) and vv.dtype == torch.bfloat16 else vv) for kk, vv in v.items()}
        if names[int(k)].endswith("w_geo.weight"):
            moments = {kk: grow_fourier({"w_geo.weight": vv}, old_freq, new_freq)["w_geo.weight"] if kk != "step"
                       else vv for kk, vv in moments.items()}
        state[int(k)] = moments
    opt.load_state_dict({"state": state, "param_groups": json.loads(comp["param_groups_json"])})


def num_atoms_hist(num_atoms: torch.Tensor, max_atoms: int = 20) -> torch.Tensor:
    return torch.bincount(num_atoms.long().cpu(), minlength=max_atoms + 1)[: max_atoms + 1].float()


# ----------------------------------------------------------------------------------------------- loop
def load_training_data(data: str) -> dict:
    """The tensor file written by `prepare` or `store_data` (plain tensors, so `weights_only`); anything else is an
    `InputError` naming the file, not a traceback from deep inside torch."""
    try:
        blob = torch.load(data, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"training data {data} not found") from None
    except Exception as e:  # noqa: BLE001 - torch raises many kinds on a foreign file
        raise InputError(f"training data {data} is not a generator tensor file ({type(e).__name__})") from None
    if not isinstance(blob, dict) or not {"train", "meta_json"} <= set(blob) or "num_atoms" not in blob["train"]:
        raise InputError(f"training data {data} is not a generator tensor file (no 'train' crystals or 'meta_json')")
    return blob


def split_indices(n: int, n_real: int, val_frac: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed validation rows (for a loss curve only; the MP-20 test set is never used here) and training rows.

    Validation is drawn from the first ``n_real`` rows, the crystals with real coordinates; reconstructed rows
    (`qadb.models.generator.reconstruct`) come after them and are only trained on. With ``n_real == n`` this is
    the split every earlier run used."""
    perm = torch.randperm(n_real, generator=torch.Generator().manual_seed(1234))
    n_val = max(1, int(val_frac * n_real))
    return perm[:n_val], torch.cat([perm[n_val:], torch.arange(n_real, n)])


def draw_weights(train_rows: dict, tr_idx: torch.Tensor, alpha: float) -> torch.Tensor | None:
    """Per-row draw weights proto_count^-alpha of the training rows ``tr_idx`` (None for alpha 0: epochs)."""
    if alpha < 0:
        raise InputError(f"proto_alpha must be >= 0, got {alpha}")
    if alpha == 0:
        return None
    if "proto_count" not in train_rows:
        raise InputError("proto_alpha > 0 needs prototype counts in the training data: "
                         "python -m qadb.models.generator.prepare --proto-counts DATA --out NEW")
    counts = train_rows["proto_count"].double().clamp(min=1).to(tr_idx.device)
    return counts[tr_idx].pow(-alpha)


ROW_SETS = ("all", "mp20_like", "mp20_only")
MP20_E_HULL_MAX = 0.08  # eV/atom: MP-20's stability cut (CDVAE)


def select_rows(train_rows: dict, tr_idx: torch.Tensor, rows: str) -> torch.Tensor:
    """The training rows of ``tr_idx`` that the row set ``rows`` (see ROW_SETS) keeps, so a run can be trained on
    the part of the pool that looks like MP-20 without a new data file or a new validation split."""
    if rows not in ROW_SETS:
        raise InputError(f"rows {rows!r} is not one of {', '.join(ROW_SETS)}")
    if rows == "all":
        return tr_idx
    if "source" not in train_rows:
        raise InputError(f"rows {rows!r} needs the 'source' column of the training data")
    src = train_rows["source"]
    if rows == "mp20_only":
        keep = [s.startswith("mp20_") for s in src]
    else:
        e_hull = train_rows["props"][:, PROPS.index("e_hull")].tolist()
        keep = [not s.startswith("aflow") and not (e == e and e > MP20_E_HULL_MAX) for s, e in zip(src, e_hull)]
    mask = torch.tensor(keep, dtype=torch.bool, device=tr_idx.device)
    out = tr_idx[mask[tr_idx]]
    if len(out) == 0:
        raise InputError(f"rows {rows!r} keeps no training crystal of this file")
    return out


def train(data: str, state: str, ckpt: str | None = None, log: str | None = None, minutes: float = 8.0,
          max_steps: int = 0, seed: int = 0, device: str | None = None, run_name: str = "",
          ckpt_dtype: str = "float32", **overrides) -> dict:
    """Train (or resume) and return the run record that is also appended to ``log``."""
    t_start = time.time()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    blob = load_training_data(data)
    meta = json.loads(blob["meta_json"])
    cfg = dict(DEFAULTS)
    resumed = None
    if Path(state).is_file():
        resumed = read_raw(state, STATE_KIND)
        cfg.update(json.loads(resumed["config_json"]))
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if cfg["grad_clip_mode"] not in GRAD_CLIP_MODES:
        raise InputError(f"grad_clip_mode {cfg['grad_clip_mode']!r} is not one of {', '.join(GRAD_CLIP_MODES)}")
    autocast(dev, cfg["amp"])  # an unknown precision fails here, before any state is written
    torch.manual_seed(seed)
    tr_all = blob["train"]
    n = len(tr_all["num_atoms"])
    val_idx, tr_idx = split_indices(n, int(meta.get("n_real_train", n)), cfg["val_frac"])
    val_idx, n_val = val_idx.to(dev), len(val_idx)
    tr_idx = select_rows(tr_all, tr_idx.to(dev), cfg["rows"])
    data_all = CrystalData(tr_all, dev)
    radii = tr_all["radii"].float().to(dev)
    mcfg = dict(hidden=cfg["hidden"], layers=cfg["layers"], n_freq=cfg["n_freq"], dropout=cfg["dropout"])
    dcfg = diffusion_config(cfg)
    model = CrystalDenoiser(**mcfg).to(dev)
    sched = Schedules(**dcfg).to(dev)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    step, warm_from = 0, 0
    if resumed is not None:
        old_freq = json.loads(resumed["config_json"])["n_freq"]
        slim = "opt" not in resumed  # `slim_state`: the raw weights start from the EMA ones, Adam and warm-up afresh
        model.load_state_dict(grow_fourier(resumed["ema" if slim else "model"], old_freq, cfg["n_freq"]))
        ema.load_state_dict(grow_fourier(resumed["ema"], old_freq, cfg["n_freq"]))
        if not slim:
            opt_state_restore(opt, resumed["opt"], model, old_freq, cfg["n_freq"])
        step = int(resumed["step"])
        warm_from = step if slim else 0
        torch.set_rng_state(resumed["rng_cpu"])
        if dev.type == "cuda" and "rng_cuda" in resumed:
            try:
                torch.cuda.set_rng_state(resumed["rng_cuda"])
            except Exception:  # noqa: BLE001
                torch.cuda.manual_seed(seed + step)
    else:
        torch.manual_seed(seed)
    for gparam in opt.param_groups:
        gparam["lr"] = cfg["lr"]
    step0 = step
    n_params = sum(p.numel() for p in model.parameters())
    print(f"device={dev} params={n_params} train={len(tr_idx)} val={n_val} resume_step={step} cfg={cfg}", flush=True)

    run = run_name or time.strftime("%Y%m%dT%H%M%S")

    def run_meta(result: dict | None = None) -> dict:
        """One meta for the state and the checkpoint, so an export carries what the training-time checkpoint does;
        `result`: the EMA validation loss, at the end."""
        return {"step": step, "data_hash": meta["train_hash"], "config": cfg, **(result or {}),
                "n_train": len(tr_idx), "run": run}

    def save_state(result: dict | None = None):
        st = {"kind": STATE_KIND, "format_version": FORMAT_VERSION, "config_json": json.dumps(cfg),
              "model": {k: v.cpu() for k, v in model.state_dict().items()},
              "ema": {k: v.cpu() for k, v in ema.state_dict().items()}, "opt": opt_state_compact(opt),
              "step": step, "rng_cpu": torch.get_rng_state(), "data_hash": meta["train_hash"],
              "radii": radii.cpu(), "num_atoms_hist": num_atoms_hist(tr_all["num_atoms"]),
              "meta_json": json.dumps(run_meta(result))}
        if dev.type == "cuda":
            st["rng_cuda"] = torch.cuda.get_rng_state()
        tmp = str(state) + ".tmp"
        torch.save(st, tmp)
        os.replace(tmp, state)

    @torch.no_grad()
    def val_loss(net):
        gv = torch.Generator(device="cpu").manual_seed(7)
        tot, cnt = {}, 0
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state() if dev.type == "cuda" else None
        torch.manual_seed(99)
        for i in range(0, len(val_idx), 512):
            idx = val_idx[i:i + 512]
            b = data_all.batch(idx)
            t_int = torch.randint(1, sched.T + 1, (len(idx),), generator=gv).to(dev)
            mode = (torch.arange(len(idx), device=dev) % 2)
            _, o = diffusion_loss(net, sched, b, cfg, radii, t_int=t_int, mode=mode)
            for k, v in o.items():
                tot[k] = tot.get(k, 0.0) + float(v) * len(idx)
            cnt += len(idx)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng)
        return {k: round(v / cnt, 5) for k, v in tot.items()}

    ema_params, model_params = list(ema.parameters()), list(model.parameters())
    budget = minutes * 60.0
    bs = int(cfg["batch_size"])
    hist, n_hist, last_save, curve = {}, 0, time.time(), []
    ptr_ep, order = 0, tr_idx[torch.randperm(len(tr_idx), device=dev)]
    weights = draw_weights(tr_all, tr_idx, float(cfg["proto_alpha"]))
    model.train()
    t_loop = time.time()
    while True:
        if max_steps and step - step0 >= max_steps:
            break
        if time.time() - t_start > budget:
            break
        if weights is not None:
            idx = tr_idx[torch.multinomial(weights, bs, replacement=True)]
        else:
            if ptr_ep + bs > len(order):
                order = tr_idx[torch.randperm(len(tr_idx), device=dev)]
                ptr_ep = 0
            idx = order[ptr_ep:ptr_ep + bs]
            ptr_ep += bs
        b = data_all.batch(idx)
        frac = (step - step0) / max_steps if max_steps else (time.time() - t_start) / budget
        lr = lr_at(cfg, step - warm_from, frac)
        for gparam in opt.param_groups:
            gparam["lr"] = lr
        with autocast(dev, cfg["amp"]):
            loss, o = diffusion_loss(model, sched, b, cfg, radii)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = clip_gradients(model, cfg)
        if torch.isfinite(gn):
            opt.step()
        with torch.no_grad():
            d = min(cfg["ema"], (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, model_params, 1 - d)
        step += 1
        for k, v in o.items():
            hist[k] = hist.get(k, 0.0) + v
        n_hist += 1
        if step % 500 == 0:
            # a resumed run's first window holds fewer than 500 steps
            avg = {k: round(float(v) / n_hist, 5) for k, v in hist.items()}
            hist, n_hist = {}, 0
            el = time.time() - t_loop
            print(f"step {step} {avg} {(step - step0) / el:.1f} it/s", flush=True)
            curve.append({"step": step, **avg})
            if time.time() - last_save > 180:
                save_state()
                last_save = time.time()
    train_s = time.time() - t_loop
    model.eval()
    vl = val_loss(ema)
    print("val (EMA)", vl, flush=True)
    save_state({"val_loss_ema": vl})
    record = {"run": run, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "config": cfg, "data_hash": meta["train_hash"], "data_counts": meta["counts"], "seed": seed,
              "step_start": step0, "step_end": step, "steps_per_s": round((step - step0) / max(train_s, 1e-9), 2),
              "train_curve": curve[-8:], "val_loss_ema": vl, "n_params": n_params,
              "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "wall_s": round(time.time() - t_start, 1)}
    if ckpt:
        ck = make_checkpoint(mcfg, dcfg, ema.state_dict(), radii, num_atoms_hist(tr_all["num_atoms"]),
                             {k: list(v) for k, v in PROP_NORM.items()},
                             run_meta({"val_loss_ema": vl}), dtype=ckpt_dtype,
                             elements=torch.unique(tr_all["types"]).tolist())
        torch.save(ck, ckpt)
    if log:
        with open(log, "a") as fh:
            fh.write(json.dumps(record) + "\n")
    return record


def probe_throughput(data: str, sizes=(256, 1024, 2048), steps: int = 25, device: str | None = None,
                     hidden: int | None = None, amp: str | None = None) -> dict:
    """Training-step time of a fresh model of width ``hidden`` at several batch sizes (5 warm-up steps, then
    ``steps`` timed), with the forward pass at precision ``amp``. At width 256 on the H100 a step is bound by
    kernel launches, not arithmetic, so larger batches cost almost no more time."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    blob = load_training_data(data)
    d = CrystalData(blob["train"], dev)
    model = CrystalDenoiser(hidden=hidden or DEFAULTS["hidden"]).to(dev)
    sched, amp = Schedules().to(dev), amp or DEFAULTS["amp"]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    res = {}
    for bs in sizes:
        for i in range(steps + 5):
            if i == 5:
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.time()
            with autocast(dev, amp):
                loss, _ = diffusion_loss(model, sched, d.batch(torch.randint(0, d.n, (bs,), device=dev)), DEFAULTS)
            opt.zero_grad()
            loss.backward()
            clip_gradients(model, DEFAULTS)
            opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.time() - t0) / steps
        res[bs] = {"step_ms": round(1000 * dt, 1), "samples_per_s": round(bs / dt)}
    return res


def training_elements(data: str) -> list[int]:
    """Atomic numbers present in the training crystals of a tensor file."""
    blob = load_training_data(data)
    return torch.unique(blob["train"]["types"]).tolist()


def slim_state(state: str, out: str, dtype: str = "float32") -> int:
    """Write ``state`` without its raw weights and Adam moments (a third of the size), so that a long run's state can
    be committed; `train` resumes it from the EMA weights with a fresh optimiser and a new warm-up. ``bfloat16``
    halves it again (the EMA weights rounded once, as a bf16 checkpoint's are; training goes on in fp32).
    Returns the step."""
    st = read_raw(state, STATE_KIND)
    slim = {k: v for k, v in st.items() if k not in ("model", "opt")}
    if dtype == "bfloat16":
        slim["ema"] = _bf16(slim["ema"])
    tmp = str(out) + ".tmp"
    torch.save(slim, tmp)
    os.replace(tmp, out)
    return int(st["step"])


def export_checkpoint(state: str, ckpt: str, dtype: str = "float32", sampler: dict | None = None,
                      data: str | None = None) -> dict:
    """Write the inference checkpoint (EMA weights + config) from a train-state file; ``sampler`` sets the
    checkpoint's default sampler settings (steps, step_lr, corrector); ``data`` (the training tensor file)
    gives the elements ab initio sampling may emit."""
    st = read_raw(state, STATE_KIND)
    cfg = {**DEFAULTS, **json.loads(st["config_json"])}  # states written before an option existed lack its key
    mcfg = dict(hidden=cfg["hidden"], layers=cfg["layers"], n_freq=cfg["n_freq"], dropout=cfg["dropout"])
    dcfg = diffusion_config(cfg)
    meta = json.loads(st["meta_json"])
    ck = make_checkpoint(mcfg, dcfg, st["ema"], st["radii"], st["num_atoms_hist"],
                         {k: list(v) for k, v in PROP_NORM.items()}, meta, dtype=dtype, sampler=sampler,
                         elements=None if data is None else training_elements(data))
    torch.save(ck, ckpt)
    return meta


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", help="training tensor file (training, --probe, --export)")
    ap.add_argument("--state", help="train-state file, created or resumed (training)")
    ap.add_argument("--ckpt")
    ap.add_argument("--log")
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device")
    ap.add_argument("--run-name", default="")
    ap.add_argument("--ckpt-dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--export", nargs=2, metavar=("STATE", "CKPT"), help="only write CKPT from STATE")
    ap.add_argument("--slim", nargs=2, metavar=("STATE", "OUT"),
                    help="only write OUT: STATE without raw weights and Adam moments (resumes from the EMA weights); "
                         "--ckpt-dtype bfloat16 stores the EMA weights in bf16")
    ap.add_argument("--probe", action="store_true", help="only time training steps at batch 256/1024/2048")
    ap.add_argument("--sampler", default=None,
                    help='with --export: default sampler settings as JSON, e.g. \'{"steps": 100, "corrector": false}\'')
    for k, v in DEFAULTS.items():
        ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=None)
    a = vars(ap.parse_args(argv))
    sampler, slim, export = a.pop("sampler"), a.pop("slim"), a.pop("export")
    if slim is not None:
        print("slim state at step", slim_state(*slim, dtype=a["ckpt_dtype"]))
        return
    if a["data"] is None:
        ap.error("--data is required (the training tensor file)")
    if a.pop("probe"):
        print("probe", json.dumps(probe_throughput(a["data"], device=a["device"], hidden=a["hidden"], amp=a["amp"])))
        return
    if export is not None:
        try:
            settings = json.loads(sampler) if sampler else None
        except json.JSONDecodeError as e:
            ap.error(f"--sampler is not valid JSON ({e})")
        print(export_checkpoint(*export, dtype=a["ckpt_dtype"], sampler=settings, data=a["data"]))
        return
    if a["state"] is None:
        ap.error("--state is required for training (the file is created or resumed)")
    base = {k: a.pop(k) for k in ("data", "state", "ckpt", "log", "minutes", "max_steps", "seed", "device",
                                   "run_name", "ckpt_dtype")}
    train(**base, **a)


if __name__ == "__main__":
    try:
        main()
    except QadbError as e:  # bad input or a corrupt state: one line and a non-zero exit, as the qadb CLI does
        raise SystemExit(f"error: {e}") from None
