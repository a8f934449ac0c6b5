"""Batch sampling for evaluation (torch only: runs on the GPU machine). Writes raw samples to an .npz that
``bench/generator.py`` turns into metrics with pymatgen on the CPU side.

    PYTHONPATH=. python -m qadb.models.generator.gpu_eval --ckpt CKPT --data .gen_scratch/gen_data.pt \
        --out $OUT/eval.npz --csp-n 9046 --gen-n 1000 --cfg-n 500

``--csp-init GUESSES --t-start T`` runs structure prediction from prototype guesses (the file of
``python -m qadb.models.generator.templates``), each noised to step T, instead of from noise; a composition without a
guess is sampled from noise.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from qadb.models.generator.checkpoint import load_checkpoint
from qadb.models.generator.conditions import ALIASES
from qadb.models.generator.sampler import sample_tensors


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# sampler settings compared by `--sweep N --sweep-set NAME` (CSP on the first N test compositions, one .npz per set;
# docs/generator_log.md has the scores): "steps" is session 2's (steps and corrector step size), "noise" session 18's
# (corrector step size, predictor noise of the coordinates and of the lattice at 1,000 steps; "base_s1" is the base
# setting with another seed, to show the sampling noise of a single figure)
SWEEPS = {
    "steps": {"l1e-5": dict(steps=1000, step_lr=1e-5), "l3e-5": dict(steps=1000, step_lr=3e-5),
              "l1e-4": dict(steps=1000, step_lr=1e-4), "l3e-4": dict(steps=1000, step_lr=3e-4),
              "l3e-5c2": dict(steps=1000, step_lr=3e-5, n_corrector=2),
              "s100l1e-5": dict(steps=100, step_lr=1e-5), "s100l1e-4": dict(steps=100, step_lr=1e-4),
              "s100l1e-3": dict(steps=100, step_lr=1e-3), "s100l3e-4": dict(steps=100, step_lr=3e-4),
              "s200l1e-4": dict(steps=200, step_lr=1e-4), "s50l3e-4": dict(steps=50, step_lr=3e-4),
              "s100nc": dict(steps=100, corrector=False)},
    "noise": {"base": dict(steps=1000), "base_s1": dict(steps=1000, seed=1),
              "l5e-6": dict(steps=1000, step_lr=5e-6), "l2e-6": dict(steps=1000, step_lr=2e-6),
              "l5e-6c2": dict(steps=1000, step_lr=5e-6, n_corrector=2), "nc": dict(steps=1000, corrector=False),
              "cn0.5": dict(steps=1000, coord_noise=0.5), "ln0.5": dict(steps=1000, lattice_noise=0.5),
              "ln0": dict(steps=1000, lattice_noise=0.0),
              "cn0.5ln0.5": dict(steps=1000, coord_noise=0.5, lattice_noise=0.5)},
}


def sweep(ckpt, data, out, n=1000, device=None, seed=0, sweep_set="steps"):
    """CSP samples of the first ``n`` test compositions under each sampler setting of ``SWEEPS[sweep_set]``."""
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    g = load_checkpoint(ckpt, device=dev)
    te = torch.load(data, map_location="cpu", weights_only=True)["test"]
    na = te["num_atoms"].long()[:n]
    ty = te["types"].long()[: int(na.sum())]
    variants = SWEEPS[sweep_set]
    res, timing = {"num_atoms": na.numpy().astype(np.int16)}, {}
    for k, kw in variants.items():
        _sync()
        t0 = time.time()
        _, f, lat = sample_tensors(g.model, g.schedules, na, ty, device=dev, **{"seed": seed, **kw})
        _sync()
        timing[k] = round(time.time() - t0, 2)
        res[k + "_frac"], res[k + "_lattice"] = f.numpy(), lat.numpy()
        print(k, timing[k], flush=True)
    res["meta_json"] = np.array(json.dumps({"variants": variants, "timing": timing, "ckpt_meta": g.meta, "N": n,
                                            "seed": seed, "device": str(torch.cuda.get_device_name()
                                                                        if dev == "cuda" else dev)}))
    np.savez_compressed(out, **res)
    return timing


def parse(spec: str) -> dict:
    """"M_LED=9,C=0.7" -> {prop: value} (ValueError on a pair without a number)"""
    return {ALIASES.get(n, n): float(v) for n, v in (p.split("=") for p in spec.split(",") if p)}


def run(ckpt, data, out, csp_n=0, gen_n=0, cfg_n=0, steps=1000, chunk=3000, seed=0, device=None,
        cfg_targets=(0.45, 0.75), step_lr_csp=1e-5, step_lr_gen=1e-5, csp_k_n=0, csp_k=20,
        corrector=True, type_noise=1.0, cond=(), cond_guidance: float | str = 1.0, coord_noise=1.0, csp_cond="",
        csp_guidance=1.0, lattice_noise=1.0, csp_resume=None, csp_init=None, t_start=None):
    """`cond`: ("name=value", ...) each sampled `gen_n` times under CFG with `cond_guidance` (tag ``cond_<name>``),
    to compare with the unconditioned ``gen`` samples of the same size (cfg_shift_<name>). `cond_guidance` is one
    strength for every property or "NAME=G[,NAME=G]" per property (others 1.0): under joint guidance one property's
    branch can drown the other's. `csp_resume`: an earlier file of this run cut short (fewer than `csp_n`
    compositions); its samples are kept and the rest drawn, so the result equals one uninterrupted run (a CPU run
    over the whole test set takes hours). `out` is rewritten after every CSP chunk, so a run killed part-way (a
    device call's time limit) leaves a file that `csp_resume` continues. `csp_init` + `t_start`: start each CSP
    sample from its composition's prototype guess (a `templates` guesses file), noised to step `t_start`."""
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    if dev == "cpu":
        from qadb.models.generator.api import cpu_threads

        torch.set_num_threads(cpu_threads())
    g = load_checkpoint(ckpt, device=dev)
    res, timing = {}, {}

    def normalised(pairs: dict) -> dict:
        return {p: (v - g.prop_norm[p][0]) / g.prop_norm[p][1] for p, v in pairs.items()}

    per_prop = parse(str(cond_guidance)) if "=" in str(cond_guidance) else {}
    base_guidance = 1.0 if per_prop else float(cond_guidance)
    cp = normalised(parse(csp_cond))
    csp_settings = {"steps": steps, "corrector": corrector, "coord_noise": coord_noise, "lattice_noise": lattice_noise,
                    "step_lr_csp": step_lr_csp, "csp_cond": csp_cond, "csp_guidance": csp_guidance, "seed": seed,
                    "chunk": chunk, "device": str(torch.cuda.get_device_name() if dev == "cuda" else dev)}
    if (csp_init is None) != (t_start is None):
        raise ValueError("--csp-init and --t-start go together")
    if csp_init is not None:
        csp_settings.update(csp_init=os.path.basename(csp_init), t_start=int(t_start))
    csp_props = {"props": cp, "guidance": {p: csp_guidance for p in cp}} if cp else {}
    conds, joint = {}, {}

    def save():
        res["meta_json"] = np.array(json.dumps({
            **csp_settings, "timing": timing, "cond": conds, "cond_joint": joint, "cond_guidance": cond_guidance,
            "type_noise": type_noise, "step_lr": [step_lr_csp, step_lr_gen], "ckpt_meta": g.meta,
            "cfg_targets": list(cfg_targets)}))
        _write_npz(out, res)

    if csp_n:
        te = torch.load(data, map_location="cpu", weights_only=True)["test"]
        na = te["num_atoms"].long()[:csp_n]
        types = te["types"].long()[: int(na.sum())]
        ptr = torch.cumsum(na, 0) - na
        zs, fs, ls, spent = [], [], [], 0.0
        guess = _read_guesses(csp_init, na, types) if csp_init is not None else None
        if csp_resume:
            zs, fs, ls, spent = _resumed_csp(csp_resume, na, types, chunk, csp_settings, g.meta)
        _sync()
        t0 = time.time()

        def record_csp():  # the compositions drawn so far (a prefix of the test set) and the time they took
            timing["csp_s"] = round(time.time() - t0 + spent, 2)
            res.update(csp_z=torch.cat(zs).numpy().astype(np.int16), csp_frac=torch.cat(fs).numpy(),
                       csp_lattice=torch.cat(ls).numpy(),
                       csp_num_atoms=na[:sum(len(x) for x in ls)].numpy().astype(np.int16))

        for i in range(sum(len(x) for x in ls), len(na), chunk):
            nb = na[i:i + chunk]
            ty = types[int(ptr[i]): int(ptr[i]) + int(nb.sum())]
            kw = dict(steps=steps, step_lr=step_lr_csp, seed=seed + i, corrector=corrector, coord_noise=coord_noise,
                      lattice_noise=lattice_noise, device=dev, **csp_props)
            if guess is None:
                z, f, lat = sample_tensors(g.model, g.schedules, nb, ty, **kw)
            else:
                z, f, lat = _from_guesses(g, nb, ty, guess, i, int(t_start), kw)
            zs.append(z), fs.append(f), ls.append(lat)
            _sync()
            record_csp()
            save()
        record_csp()  # also when a resumed file was already whole and nothing was left to draw
        if csp_resume:
            timing["csp_s_resumed"] = round(spent, 2)
        print(f"csp {len(na)} structures in {timing['csp_s']} s", flush=True)

    if csp_k_n:
        # csp_match_rate_k: k samples for each of the first csp_k_n test compositions, stored sample-major
        te = torch.load(data, map_location="cpu", weights_only=True)["test"]
        na = te["num_atoms"].long()[:csp_k_n]
        types = te["types"].long()[: int(na.sum())]
        fs, ls = [], []
        _sync()
        t0 = time.time()
        for j in range(csp_k):
            _, f, lat = sample_tensors(g.model, g.schedules, na, types, steps=steps, step_lr=step_lr_csp,
                                       corrector=corrector, coord_noise=coord_noise, lattice_noise=lattice_noise,
                                       seed=seed + 1000 + j, device=dev, **csp_props)
            fs.append(f), ls.append(lat)
        _sync()
        timing["csp_k_s"] = round(time.time() - t0, 2)
        res.update(cspk_frac=torch.stack(fs).numpy(), cspk_lattice=torch.stack(ls).numpy(),
                   cspk_num_atoms=na.numpy().astype(np.int16), cspk_k=np.array(csp_k))
        print(f"csp x{csp_k} for {len(na)} compositions in {timing['csp_k_s']} s", flush=True)

    def gen(n, props=None, guidance=None, tag="gen", sd=seed):
        hist = g.num_atoms_hist.float()
        rng = torch.Generator().manual_seed(sd)
        na = torch.multinomial(hist / hist.sum(), n, replacement=True, generator=rng)
        _sync()
        t0 = time.time()
        z, f, lat = sample_tensors(g.model, g.schedules, na, None, props=props, guidance=guidance, steps=steps,
                                   step_lr=step_lr_gen, corrector=corrector, type_noise=type_noise,
                                   coord_noise=coord_noise, lattice_noise=lattice_noise, seed=sd,
                                   device=dev, elements=g.elements)
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
    for k, spec in enumerate(cond):
        # "M_LED=9" samples one condition (tag cond_mled); "M_LED=9,C=0.7" guides both at once (cond_joint)
        pairs = parse(spec)
        tag = "cond_joint" if len(pairs) > 1 else f"cond_{next(iter(pairs))}"
        gen(gen_n, props=normalised(pairs), guidance={p: per_prop.get(p, base_guidance) for p in pairs}, tag=tag,
            sd=seed + 10 + k)
        (joint if len(pairs) > 1 else conds).update(pairs)
    save()
    return timing


def _write_npz(path, arrays: dict) -> None:
    """Write through a temporary file and rename, so a kill mid-write leaves the previous file whole."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    os.replace(tmp, path)


def _resumed_csp(path, na: torch.Tensor, types: torch.Tensor, chunk: int, settings: dict, ckpt_meta: dict):
    """The CSP samples of an earlier, shorter file of the same run, as per-chunk lists (z, frac, lattice) and its
    sampling seconds; ValueError, naming the difference, unless its compositions, sampler settings, checkpoint and
    chunk boundaries are this run's (then seeds, which follow the chunk's first index, line up too)."""
    try:
        d = np.load(path)
        meta = json.loads(str(d["meta_json"]))
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot resume from {path}: not a readable gpu_eval file ({e})") from None
    n = len(d["csp_num_atoms"]) if "csp_num_atoms" in d else 0
    n_at = int(na[:n].sum())
    diff = [k for k, v in settings.items() if meta.get(k) != v]
    if meta.get("ckpt_meta") != json.loads(json.dumps(ckpt_meta)):
        diff.append("checkpoint")
    if not n or n > len(na) or not np.array_equal(d["csp_num_atoms"], na[:n].numpy()) \
            or not np.array_equal(d["csp_z"], types[:n_at].numpy()):
        diff.append("test compositions")
    if diff:
        raise ValueError(f"cannot resume from {path}: its {', '.join(diff)} differ from this run's")
    if n % chunk and n != len(na):
        raise ValueError(f"cannot resume from {path}: its {n} compositions end inside a chunk of {chunk}")
    ptr = np.concatenate([[0], np.cumsum(d["csp_num_atoms"].astype(np.int64))])
    cut = [(i, min(i + chunk, n)) for i in range(0, n, chunk)]
    zs = [torch.as_tensor(d["csp_z"][ptr[a]:ptr[b]]).long() for a, b in cut]
    fs = [torch.as_tensor(d["csp_frac"][ptr[a]:ptr[b]]) for a, b in cut]
    ls = [torch.as_tensor(d["csp_lattice"][a:b]) for a, b in cut]
    return zs, fs, ls, float(meta["timing"].get("csp_s", 0.0))


def _read_guesses(path, na: torch.Tensor, types: torch.Tensor) -> dict:
    """A `templates` guesses file for these test compositions: per-atom frac and lattice rows as tensors, ``found``
    per composition; ValueError, naming the file, if it is unreadable or made for other compositions."""
    try:
        d = np.load(path)
        found = torch.as_tensor(d["guess_found"]).bool()
        num = d["csp_num_atoms"]
        z = d["csp_z"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"--csp-init {path}: not a guesses file of qadb.models.generator.templates ({e})") from None
    n_at = int(na.sum())
    if len(num) < len(na) or not np.array_equal(num[:len(na)], na.numpy()) \
            or not np.array_equal(z[:n_at], types.numpy()):
        raise ValueError(f"--csp-init {path}: its compositions are not the test compositions of --data")
    return {"found": found[:len(na)], "frac": torch.as_tensor(d["csp_frac"][:n_at]).float(),
            "lattice": torch.as_tensor(d["csp_lattice"][:len(na)]).float(),
            "ptr": torch.cumsum(na, 0) - na}


def _from_guesses(g, nb: torch.Tensor, ty: torch.Tensor, guess: dict, first: int, t_start: int, kw: dict):
    """CSP samples of the compositions first..first+len(nb): those with a guess refined from it (noised to
    ``t_start``), the others from noise; returned in the compositions' order."""
    found = guess["found"][first:first + len(nb)]
    atom_found = found[torch.repeat_interleave(torch.arange(len(nb)), nb)]
    f, lat = torch.zeros(int(nb.sum()), 3), torch.zeros(len(nb), 3, 3)
    first_atom = int(guess["ptr"][first])
    for refine in (True, False):
        rows = torch.nonzero(found == refine)[:, 0]
        atoms = torch.nonzero(atom_found == refine)[:, 0]
        if not len(rows):
            continue
        start = {"init": (guess["frac"][first_atom + atoms], guess["lattice"][first + rows]),
                 "t_start": t_start} if refine else {}
        _, fp, lp = sample_tensors(g.model, g.schedules, nb[rows], ty[atoms], **kw, **start)
        f[atoms], lat[rows] = fp.cpu(), lp.cpu()
    return ty.clone(), f, lat


def guidance_arg(value: str) -> float | str:
    """--cond-guidance: a number, or NAME=G[,NAME=G] with numeric G (argparse reports anything else in one line)."""
    if "=" in value:
        parse(value)  # only to check it
        return value
    return float(value)


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
    ap.add_argument("--step-lr", type=float, default=1e-5)
    ap.add_argument("--csp-k-n", type=int, default=0, help="compositions for csp_match_rate_k (first N of test)")
    ap.add_argument("--csp-k", type=int, default=20)
    ap.add_argument("--corrector", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--type-noise", type=float, default=1.0,
                    help="ab initio: scale of the reverse type noise (masked type process: temperature)")
    ap.add_argument("--coord-noise", type=float, default=1.0, help="scale of the reverse coordinate-predictor noise")
    ap.add_argument("--lattice-noise", type=float, default=1.0, help="scale of the reverse lattice-step noise")
    ap.add_argument("--csp-cond", default="", help="NAME=V[,NAME=V]: condition the CSP samples (e.g. E_hull=0)")
    ap.add_argument("--csp-guidance", type=float, default=1.0)
    ap.add_argument("--cond", nargs="*", default=[],
                    help="NAME=VALUE conditions, each sampled --gen-n times; NAME=V,NAME=V guides several at once "
                         "(tag cond_joint)")
    ap.add_argument("--cond-guidance", type=guidance_arg, default=1.0,
                    help="G for every --cond property, or NAME=G[,NAME=G] per property (others 1.0)")
    ap.add_argument("--csp-init", help="CSP from the prototype guesses of this file (python -m "
                    "qadb.models.generator.templates), each noised to --t-start")
    ap.add_argument("--t-start", type=int, help="with --csp-init: the diffusion step the guesses are noised to")
    ap.add_argument("--csp-resume", help="an earlier --out of this CSP run cut short: keep its samples, draw the rest")
    ap.add_argument("--sweep", type=int, default=0, help="only the sampler sweep on the first N test compositions")
    ap.add_argument("--sweep-set", choices=sorted(SWEEPS), default="steps", help="which settings --sweep compares")
    a = ap.parse_args(argv)
    if a.cond and a.gen_n <= 0:
        ap.error("--cond samples --gen-n structures per condition: give --gen-n N (N > 0)")
    if a.sweep:
        print(sweep(a.ckpt, a.data, a.out, a.sweep, a.device, a.seed, a.sweep_set))
        return
    try:
        timing = run(a.ckpt, a.data, a.out, a.csp_n, a.gen_n, a.cfg_n, a.steps, a.chunk, a.seed, a.device,
                     step_lr_csp=a.step_lr, step_lr_gen=a.step_lr, csp_k_n=a.csp_k_n, csp_k=a.csp_k,
                     corrector=a.corrector, type_noise=a.type_noise, cond=a.cond, cond_guidance=a.cond_guidance,
                     coord_noise=a.coord_noise, csp_cond=a.csp_cond, csp_guidance=a.csp_guidance,
                     lattice_noise=a.lattice_noise, csp_resume=a.csp_resume, csp_init=a.csp_init,
                     t_start=a.t_start)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(timing)


if __name__ == "__main__":
    main()
