"""Batch sampling for evaluation (torch only: runs on the GPU machine). Writes raw samples to an .npz that
``bench/generator.py`` turns into metrics with pymatgen on the CPU side.

    PYTHONPATH=. python -m qadb.models.generator.gpu_eval --ckpt CKPT --data .gen_scratch/gen_data.pt \
        --out $OUT/eval.npz --csp-n 9046 --gen-n 1000 --cfg-n 500
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from qadb.models.generator.checkpoint import load_checkpoint
from qadb.models.generator.sampler import sample_tensors


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run(ckpt, data, out, csp_n=0, gen_n=0, cfg_n=0, steps=1000, chunk=3000, seed=0, device=None,
        cfg_targets=(0.45, 0.75), step_lr_csp=1e-5, step_lr_gen=1e-5):
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    g = load_checkpoint(ckpt, device=dev)
    res, timing = {}, {}
    if csp_n:
        te = torch.load(data, map_location="cpu", weights_only=True)["test"]
        na = te["num_atoms"].long()[:csp_n]
        types = te["types"].long()[: int(na.sum())]
        ptr = torch.cumsum(na, 0) - na
        zs, fs, ls = [], [], []
        _sync()
        t0 = time.time()
        for i in range(0, len(na), chunk):
            nb = na[i:i + chunk]
            ty = types[int(ptr[i]): int(ptr[i]) + int(nb.sum())]
            z, f, lat = sample_tensors(g.model, g.schedules, nb, ty, steps=steps, step_lr=step_lr_csp, seed=seed + i,
                                       device=dev)
            zs.append(z), fs.append(f), ls.append(lat)
        _sync()
        timing["csp_s"] = round(time.time() - t0, 2)
        res.update(csp_z=torch.cat(zs).numpy().astype(np.int16), csp_frac=torch.cat(fs).numpy(),
                   csp_lattice=torch.cat(ls).numpy(), csp_num_atoms=na.numpy().astype(np.int16))
        print(f"csp {len(na)} structures in {timing['csp_s']} s", flush=True)

    def gen(n, props=None, guidance=None, tag="gen", sd=seed):
        hist = g.num_atoms_hist.float()
        rng = torch.Generator().manual_seed(sd)
        na = torch.multinomial(hist / hist.sum(), n, replacement=True, generator=rng)
        _sync()
        t0 = time.time()
        z, f, lat = sample_tensors(g.model, g.schedules, na, None, props=props, guidance=guidance, steps=steps,
                                   step_lr=step_lr_gen, seed=sd, device=dev)
        _sync()
        timing[f"{tag}_s"] = round(time.time() - t0, 2)
        res.update({f"{tag}_z": z.numpy().astype(np.int16), f"{tag}_frac": f.numpy(), f"{tag}_lattice": lat.numpy(),
                    f"{tag}_num_atoms": na.numpy().astype(np.int16)})
        vpa = (torch.linalg.det(lat.double()).abs() / na.double()).median().item()
        print(f"{tag} {n} structures in {timing[f'{tag}_s']} s; median volume/atom {vpa:.2f} A^3", flush=True)

    if gen_n:
        gen(gen_n, tag="gen", sd=seed + 1)
    if cfg_n:
        mean, scale = g.prop_norm["compactness"]
        for k, c in enumerate(cfg_targets):
            gen(cfg_n, props={"compactness": (c - mean) / scale}, guidance={"compactness": 1.0}, tag=f"cfgc{k}",
                sd=seed + 2 + k)
    res["meta_json"] = np.array(json.dumps({"timing": timing, "steps": steps, "ckpt_meta": g.meta,
                                            "cfg_targets": list(cfg_targets), "device": str(
                                                torch.cuda.get_device_name() if dev == "cuda" else dev)}))
    np.savez_compressed(out, **res)
    return timing


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--csp-n", type=int, default=0)
    ap.add_argument("--gen-n", type=int, default=0)
    ap.add_argument("--cfg-n", type=int, default=0)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--chunk", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device")
    a = ap.parse_args(argv)
    print(run(a.ckpt, a.data, a.out, a.csp_n, a.gen_n, a.cfg_n, a.steps, a.chunk, a.seed, a.device))


if __name__ == "__main__":
    main()
