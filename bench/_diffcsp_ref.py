"""The reference DiffCSP run on qadb's split (issue #5, "Must show"): train and sample jiaor17/DiffCSP unmodified.

DiffCSP's code is read from an ignored checkout and never committed; this file is qadb's harness around it. It
feeds DiffCSP our training pool and the MP-20 test compositions, trains with the settings of DiffCSP's Lightning
configs restated as a plain loop (so it runs where Lightning's trainer and hydra's launcher are not installed), and
writes CSP samples in the npz layout that `bench/generator.py --npz-csp` scores.

Setup (ignored folder `.gen_scratch/diffcsp_ref/`):
    git clone https://github.com/jiaor17/DiffCSP .gen_scratch/diffcsp_ref/src && git -C .gen_scratch/diffcsp_ref/src checkout 7121d15
    pip download --no-deps -d .gen_scratch/diffcsp_ref/wheels pytorch-lightning==2.5.1 hydra-core==1.3.2 \
        omegaconf==2.3.0 torchmetrics==1.7.1 einops==0.8.2 lightning-utilities==0.15.3 python-dotenv==1.2.4 \
        antlr4-python3-runtime==4.9.3
    pip install --no-deps --target .gen_scratch/diffcsp_ref/site .gen_scratch/diffcsp_ref/wheels/*.whl

Run:
    python bench/_diffcsp_ref.py prepare --data .gen_scratch/gen_data.pt --out ref_data.pt   # pymatgen: Niggli cells
    python bench/_diffcsp_ref.py train --data ref_data.pt --state S --log L --minutes 8      # GPU; resumes from S
    python bench/_diffcsp_ref.py weights --state S --out W       # weights only: carried to resume with a fresh Adam
    python bench/_diffcsp_ref.py sample --data ref_data.pt --state S --n 1000 --out csp.npz
    python bench/generator.py --data .gen_scratch/gen_data.pt --npz-csp csp.npz --out ref.json

Settings restated from DiffCSP's conf/ (optim/default.yaml, train/default.yaml, model/diffusion.yaml): Adam 1e-3,
ReduceLROnPlateau(factor 0.6, patience 30, min 1e-4) on the validation loss every 5 epochs, gradient clipping by
value 0.5, batch 256; CSPNet hidden 512, 6 layers, 128 frequencies, fully connected edges (12.3M parameters).
torch-scatter has no wheel for every torch, so `_diffcsp_shim/torch_scatter` provides the two reductions CSPNet
calls. Modules DiffCSP imports only for CIF processing (pymatgen, pyxtal, ...) are stubbed where absent, as on the
GPU machine; `REF_FORCE_STUB=1` stubs them everywhere, to check that path on a CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.machinery
import json
import os
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF = os.environ.get("DIFFCSP_DIR", os.path.join(ROOT, ".gen_scratch", "diffcsp_ref"))
SRC = os.path.join(REF, "src")
sys.path[:0] = [SRC, os.path.join(os.path.dirname(os.path.abspath(__file__)), "_diffcsp_shim")]
sys.path.insert(2, os.environ.get("REF_SITE", os.path.join(REF, "site")))
os.environ.setdefault("PROJECT_ROOT", SRC)

# imported by DiffCSP at module level, used only by its CIF preprocessing, which this harness replaces
_DATA_ONLY_MODULES = (
    "p_tqdm", "pyxtal.symmetry", "pathos.pools", "sklearn.metrics", "networkx.algorithms.components",
    "pymatgen.core.structure", "pymatgen.core.lattice", "pymatgen.analysis.graphs", "pymatgen.analysis.local_env",
    "pymatgen.symmetry.analyzer", "pandas")


def _placeholder(attr: str):
    """Any name looked up on a stub module: a class that accepts any arguments (DiffCSP builds a CrystalNN)."""
    if attr.startswith("__"):
        raise AttributeError(attr)
    return type(attr, (), {"__init__": lambda self, *a, **k: None})


def _stub(name: str) -> None:
    if not os.environ.get("REF_FORCE_STUB"):
        try:
            importlib.import_module(name)
            return
        except ImportError:
            pass
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        full = ".".join(parts[:i])
        if full in sys.modules:
            continue
        mod = types.ModuleType(full)
        mod.__getattr__ = _placeholder
        mod.__path__ = []
        mod.__spec__ = importlib.machinery.ModuleSpec(full, None, is_package=True)  # torch._dynamo asks for it
        sys.modules[full] = mod
        if i > 1:  # `from a import b` must find the module b, not a placeholder class
            setattr(sys.modules[".".join(parts[:i - 1])], parts[i - 1], mod)


for _name in _DATA_ONLY_MODULES:
    _stub(_name)
try:
    import tqdm  # noqa: F401
except ImportError:  # DiffCSP's sampler only wraps its step range in tqdm
    sys.modules["tqdm"] = types.ModuleType("tqdm")
    sys.modules["tqdm"].tqdm = lambda it, *a, **k: it

import numpy as np  # noqa: E402
import torch  # noqa: E402


def prepare(data: str, out: str) -> None:
    """qadb's generator tensors -> DiffCSP's inputs: Niggli-reduced cells as lengths/angles, as DiffCSP builds them."""
    from pymatgen.core import Lattice, Structure

    blob = torch.load(data, weights_only=True)
    res: dict = {}
    for split in ("train", "test"):
        d = blob[split]
        na = d["num_atoms"].tolist()
        off = np.concatenate([[0], np.cumsum(na)])
        frac, z, lengths, angles = [], [], [], []
        for i in range(len(na)):
            s = Structure(Lattice(d["lattice"][i].numpy()), d["types"][off[i]:off[i + 1]].tolist(),
                          d["frac"][off[i]:off[i + 1]].numpy()).get_reduced_structure()
            frac.append(torch.tensor(s.frac_coords % 1.0, dtype=torch.float32))
            z.append(torch.tensor([site.specie.Z for site in s], dtype=torch.long))
            lengths.append(s.lattice.parameters[:3])
            angles.append(s.lattice.parameters[3:])
        res[split] = {"frac": torch.cat(frac), "types": torch.cat(z), "num_atoms": torch.tensor(na),
                      "lengths": torch.tensor(lengths, dtype=torch.float32),
                      "angles": torch.tensor(angles, dtype=torch.float32)}
    with open(data, "rb") as fh:
        res["source"] = f"{os.path.basename(data)} sha256[:16]={hashlib.sha256(fh.read()).hexdigest()[:16]}"
    torch.save(res, out)
    print({k: len(v["num_atoms"]) for k, v in res.items() if isinstance(v, dict)})


def _graphs(d: dict, idx) -> list:
    from torch_geometric.data import Data

    na = d["num_atoms"].tolist()
    off = np.concatenate([[0], np.cumsum(na)])
    return [Data(frac_coords=d["frac"][off[i]:off[i + 1]], atom_types=d["types"][off[i]:off[i + 1]],
                 lengths=d["lengths"][i:i + 1], angles=d["angles"][i:i + 1], num_atoms=torch.tensor([na[i]]),
                 num_nodes=na[i]) for i in idx]


def build_model():
    """CSPDiffusion from DiffCSP's own YAML files (model, decoder, schedulers, optimiser)."""
    from omegaconf import OmegaConf

    conf = os.path.join(SRC, "conf")
    m = OmegaConf.load(f"{conf}/model/diffusion.yaml")
    m.pop("defaults", None)
    m.decoder = OmegaConf.load(f"{conf}/model/decoder/cspnet.yaml")
    m.beta_scheduler = OmegaConf.load(f"{conf}/model/beta_scheduler/cosine.yaml")
    m.sigma_scheduler = OmegaConf.load(f"{conf}/model/sigma_scheduler/wrapped.yaml")
    root = OmegaConf.create({"model": m, "optim": OmegaConf.load(f"{conf}/optim/default.yaml")})
    OmegaConf.resolve(root)
    from diffcsp.pl_modules.diffusion import CSPDiffusion

    return CSPDiffusion(**root.model, optim=root.optim, data={}, logging={}), OmegaConf.to_container(root)


def train(data: str, state: str, log: str, minutes: float, seed: int, batch_size: int = 256,
          val_frac: float = 0.02, device: str = "cuda") -> None:
    """Train for a wall-clock budget, resuming from `state`; one JSON line per call in `log`."""
    from torch_geometric.loader import DataLoader

    t_start = time.time()
    torch.manual_seed(seed)
    blob = torch.load(data, weights_only=True)
    d = blob["train"]
    n = len(d["num_atoms"])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    n_val = int(round(val_frac * n))
    val, tr = _graphs(d, perm[:n_val]), _graphs(d, perm[n_val:])
    model, cfg = build_model()
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.6, patience=30, min_lr=1e-4)
    epoch, step, hist, adam_restart = 0, 0, [], False
    if os.path.exists(state):
        st = torch.load(state, map_location=device, weights_only=True)
        model.load_state_dict({k: v.float() for k, v in st["model"].items()})
        epoch, step = st["epoch"], st["step"]
        if "opt" in st:
            opt.load_state_dict(st["opt"])
            sched.load_state_dict(st["sched"])
        else:  # weights only (a full state is too large to carry to a cold GPU machine): fresh Adam and LR plateau
            adam_restart = True
    start_step = step
    loader = DataLoader(tr, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed),
                        num_workers=4 if device == "cuda" else 0, persistent_workers=device == "cuda")
    vloader = DataLoader(val, batch_size=512)
    print(f"params {sum(p.numel() for p in model.parameters()):,}; train {len(tr)} val {len(val)}; "
          f"resume epoch {epoch} step {step}{' (fresh optimiser)' if adam_restart else ''}", flush=True)
    budget = minutes * 60 - (time.time() - t_start)
    t0 = time.time()
    while time.time() - t0 < budget:
        model.train()
        tot = 0.0
        for batch in loader:
            out = model(batch.to(device))
            opt.zero_grad(set_to_none=True)
            if not out["loss"].isnan():
                out["loss"].backward()
                torch.nn.utils.clip_grad_value_(model.parameters(), 0.5)
                opt.step()
            tot += float(out["loss"].detach())
            step += 1
            if time.time() - t0 > budget:  # a partial last epoch; the next call starts a new one
                break
        epoch += 1
        if epoch % 5 == 0:
            model.eval()
            with torch.no_grad():
                torch.manual_seed(1234)
                vl = [model(b.to(device)) for b in vloader]
            v = {k: float(np.mean([float(o[k]) for o in vl])) for k in ("loss", "loss_lattice", "loss_coord")}
            sched.step(v["loss"])
            hist.append({"epoch": epoch, "step": step, "train_loss": round(tot / len(loader), 5),
                         **{f"val_{k}": round(x, 5) for k, x in v.items()}, "lr": opt.param_groups[0]["lr"]})
            print(hist[-1], flush=True)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "epoch": epoch,
                "step": step}, state)
    rec = {"run": "diffcsp-ref", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": cfg, "seed": seed,
           "data": blob["source"], "steps": [start_step, step], "epoch": epoch, "adam_restart": adam_restart,
           "wall_s": round(time.time() - t_start, 1),
           "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
           "history": hist}
    with open(log, "a") as fh:
        fh.write(json.dumps(rec) + "\n")
    print(f"epoch {epoch} step {step} ({step - start_step} this call, "
          f"{(step - start_step) / (time.time() - t0):.1f} it/s)", flush=True)


def sample(data: str, state: str, n: int, out: str, chunk: int = 2000, seed: int = 0, step_lr: float = 1e-5,
           device: str = "cuda") -> None:
    """One CSP sample for each of the first n test compositions, DiffCSP's sampler (1,000 steps, predictor-corrector)."""
    from torch_geometric.loader import DataLoader

    d = torch.load(data, weights_only=True)["test"]
    st = torch.load(state, map_location="cpu", weights_only=True)
    model, _ = build_model()
    model.load_state_dict({k: v.float() for k, v in st["model"].items()})
    model = model.to(device).eval()
    torch.manual_seed(seed)
    zs, fr, lat, na = [], [], [], []
    t0 = time.time()
    for batch in DataLoader(_graphs(d, range(n)), batch_size=chunk):
        res, _ = model.sample(batch.to(device), step_lr=step_lr)
        zs.append(res["atom_types"].cpu())
        fr.append(res["frac_coords"].cpu())
        lat.append(res["lattices"].cpu())
        na.append(res["num_atoms"].cpu())
    meta = {"model": "DiffCSP reference (jiaor17/DiffCSP @7121d15)", "steps": 1000, "step_lr": step_lr,
            "sample_s": round(time.time() - t0, 1), "n": n, "state_epoch": st["epoch"], "state_step": st["step"]}
    np.savez(out, csp_z=torch.cat(zs).numpy(), csp_frac=torch.cat(fr).numpy(), csp_lattice=torch.cat(lat).numpy(),
             csp_num_atoms=torch.cat(na).numpy(), meta_json=json.dumps(meta))
    print(meta, flush=True)


def weights(state: str, out: str) -> None:
    """The model weights of a training state (a third of its size): enough to sample or to resume with a new Adam."""
    st = torch.load(state, map_location="cpu", weights_only=True)
    torch.save({k: st[k] for k in ("model", "epoch", "step")}, out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cmd", choices=["prepare", "train", "sample", "weights"])
    ap.add_argument("--data")
    ap.add_argument("--out")
    ap.add_argument("--state")
    ap.add_argument("--log")
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=9046)
    ap.add_argument("--chunk", type=int, default=2000)
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args(argv)
    for attr in ("data", "out", "state", "log"):  # DiffCSP's common/utils.py changes directory when imported
        if getattr(a, attr):
            setattr(a, attr, os.path.abspath(getattr(a, attr)))
    for path in (a.state,) if a.cmd == "weights" else (a.data,):
        if not path or not os.path.isfile(path):
            sys.exit(f"error: input file not found: {path}")
    if a.cmd in ("train", "sample") and not os.path.isdir(os.path.join(SRC, "diffcsp")):
        sys.exit(f"error: DiffCSP's code not found in {SRC} (see this file's docstring for the setup)")
    if a.cmd == "weights":
        weights(a.state, a.out)
    elif a.cmd == "prepare":
        prepare(a.data, a.out)
    elif a.cmd == "train":
        train(a.data, a.state, a.log, a.minutes, a.seed, device=a.device)
    else:
        sample(a.data, a.state, a.n, a.out, a.chunk, a.seed, device=a.device)


if __name__ == "__main__":
    main()
