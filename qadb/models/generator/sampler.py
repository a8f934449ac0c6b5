"""Reverse diffusion with classifier-free guidance (torch only; runs on CPU or GPU).

Guidance (seed 002 Eq. 7, generalised to several properties with a strength each, composable form):
    eps* = eps(0) + sum_k w_k [eps(c_k) - eps(0)],   w_k = 1 + g_k
With one property this is exactly (1 + g) eps(c) - g eps(0). Each branch is one copy of the batch in a single
forward pass. The chemical system, when given, is both a guidance branch and a hard mask on the decoded types.
"""

from __future__ import annotations

import math

import torch

from qadb.models.generator.conditions import N_TYPES, PROPS
from qadb.models.generator.diffusion import fc_edges


def _timesteps(T: int, steps: int) -> list[int]:
    if steps >= T:
        return list(range(T, 0, -1))
    ts = torch.linspace(T, 1, steps).round().long().unique_consecutive().tolist()
    return ts


@torch.inference_mode()
def sample_tensors(model, sched, num_atoms: torch.Tensor, types: torch.Tensor | None = None, *,
                   props: dict | None = None, guidance: dict | None = None, chemsys: torch.Tensor | None = None,
                   chemsys_guidance: float = 0.0, steps: int | None = None, step_lr: float = 1e-5,
                   corrector: bool = True, n_corrector: int = 1, type_noise: float = 1.0, coord_noise: float = 1.0,
                   lattice_noise: float = 1.0, seed: int = 0,
                   device: str = "cpu", elements: torch.Tensor | None = None,
                   init: tuple[torch.Tensor, torch.Tensor] | None = None, t_start: int | None = None):
    """Sample B crystals.

    num_atoms: [B] long. types: [Na] atomic numbers (structure prediction) or None (ab initio).
    props: {name: normalised value} (applies to all B) or {name: [B] tensor}. guidance: {name: g}.
    chemsys: [B, N_TYPES] multi-hot (ab initio only). type_noise scales the noise of the reverse type steps
    (1 = the DDPM posterior; below 1 samples the types at a lower temperature); with a masked type process
    (``sched.type_process == "mask"``) it is the temperature of each element's categorical draw. coord_noise scales
    the noise of the reverse-VE coordinate predictor in the same way (0: each predictor step only follows the score;
    the corrector, when on, still adds its Langevin noise), and lattice_noise that of the reverse lattice steps.
    elements: atomic numbers the final type decoding may choose when no chemsys is given (the checkpoint's training
    elements; None: any).
    init, t_start (structure prediction only): start the reverse process at step t_start (1..T) from a given
    structure (frac [Na,3], lattice rows [B,3,3] Å), noised to that step by the forward process, instead of from
    pure noise at T; only the steps of the schedule at or below t_start run. This refines a prototype guess
    (SDEdit): a small t_start keeps the guess, t_start = T forgets it.
    Returns (Z [Na], frac [Na,3], lattice rows [B,3,3] Å).
    """
    dev = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(dev)

    model = model.to(dev).eval()
    sched = sched.to(dev)
    T = sched.T
    ts = _timesteps(T, steps or T)
    num_atoms = num_atoms.to(dev).long()
    B, Na = len(num_atoms), int(num_atoms.sum())
    crystal = torch.repeat_interleave(torch.arange(B, device=dev), num_atoms)
    csp = types is not None
    if (init is None) != (t_start is None):
        raise ValueError("init and t_start go together")
    if init is not None:
        if not csp:
            raise ValueError("init (a starting structure) is for structure prediction: give the types")
        if not 1 <= int(t_start) <= T:
            raise ValueError(f"t_start must lie in 1..{T}, got {t_start}")
        ts = [t for t in ts if t <= int(t_start)]
        ts = ts if ts and ts[0] == int(t_start) else [int(t_start), *ts]
    mode = torch.full((B,), 0 if csp else 1, device=dev, dtype=torch.long)
    if csp:
        a_fixed = torch.nn.functional.one_hot(types.to(dev).long() - 1, N_TYPES).float()
    allowed = None
    if chemsys is not None:
        chemsys = chemsys.to(dev).float()
        allowed = chemsys[crystal] > 0
    elif elements is not None and not csp:
        known = torch.zeros(N_TYPES, dtype=torch.bool, device=dev)
        known[elements.to(dev).long() - 1] = True
        allowed = known.expand(Na, N_TYPES)

    # guidance branches: 0 = unconditional; then one per guided property; then chemsys
    props = props or {}
    guidance = guidance or {}
    P = len(PROPS)
    branches = [(torch.zeros(B, P, dtype=torch.bool, device=dev), torch.zeros(B, P, device=dev), False, 0.0)]
    for name, val in props.items():
        j = PROPS.index(name)
        v = torch.as_tensor(val, dtype=torch.float32, device=dev).expand(B)
        m = torch.zeros(B, P, dtype=torch.bool, device=dev)
        m[:, j] = True
        pv = torch.zeros(B, P, device=dev)
        pv[:, j] = v
        branches.append((m, pv, False, 1.0 + float(guidance.get(name, 0.0))))
    if chemsys is not None and not csp:
        branches.append((torch.zeros(B, P, dtype=torch.bool, device=dev), torch.zeros(B, P, device=dev), True,
                         1.0 + float(chemsys_guidance)))
    nb = len(branches)
    if nb == 1:
        weights = None
    else:
        weights = [w for (_, _, _, w) in branches[1:]]
    pm = torch.cat([b[0] for b in branches])
    pv = torch.cat([b[1] for b in branches])
    cs_mask = torch.cat([torch.full((B,), b[2], device=dev, dtype=torch.bool) for b in branches])
    cs = chemsys.repeat(nb, 1) if chemsys is not None else torch.zeros(nb * B, N_TYPES, device=dev)
    na_rep = num_atoms.repeat(nb)
    mode_rep = mode.repeat(nb)
    edges = fc_edges(na_rep)

    def predict(a_in, f, l, t):
        tt = torch.full((nb * B,), t / T, device=dev)
        el, sf, ea = model(a_in.repeat(nb, 1), f.repeat(nb, 1), l.repeat(nb, 1, 1), na_rep, tt, pv, pm, cs,
                           cs_mask, mode_rep, edges=edges)
        if weights is None:
            return el, sf, ea
        el, sf, ea = el.view(nb, B, 3, 3), sf.view(nb, Na, 3), ea.view(nb, Na, -1)
        out = [el[0].clone(), sf[0].clone(), ea[0].clone()]
        for k, w in enumerate(weights, start=1):
            out[0] += w * (el[k] - el[0])
            out[1] += w * (sf[k] - sf[0])
            out[2] += w * (ea[k] - ea[0])
        return tuple(out)

    lat = randn(B, 3, 3)
    frac = torch.rand(Na, 3, generator=gen).to(dev)
    if init is not None:  # the forward process at t_start applied to the given structure
        f0, rows0 = init[0].to(dev).float(), init[1].to(dev).float()
        l0 = rows0.transpose(1, 2) / num_atoms.float().pow(1 / 3)[:, None, None]
        ab0 = sched.abar[int(t_start)]
        lat = ab0.sqrt() * l0 + (1 - ab0).sqrt() * lat
        frac = (f0 + sched.sigmas[int(t_start)] * randn(Na, 3)) % 1.0
    masking = not csp and sched.type_process == "mask"
    if masking:  # every type starts hidden (zero vector) and is drawn once, at the step where it is revealed
        a = torch.zeros(Na, N_TYPES, device=dev)
        hidden = torch.ones(Na, dtype=torch.bool, device=dev)
    else:
        a = a_fixed if csp else randn(Na, N_TYPES)
    abar, sig, norm = sched.abar, sched.sigmas, sched.sigma_norm
    for i, t in enumerate(ts):
        s = ts[i + 1] if i + 1 < len(ts) else 0
        sig_t, sig_s = sig[t], sig[s]
        for _ in range(n_corrector if corrector else 0):
            _, sf, _ = predict(a, frac, lat, t)
            score = sf * norm[t].sqrt()
            step = step_lr * (sig_t / sched.sigma_min) ** 2
            frac = (frac + step * score + (2 * step).sqrt() * randn(Na, 3)) % 1.0
        el, sf, ea = predict(a, frac, lat, t)
        score = sf * norm[t].sqrt()
        dvar = sig_t**2 - sig_s**2
        frac = frac + dvar * score
        if s > 0:
            frac = frac + coord_noise * (dvar * sig_s**2 / sig_t**2).sqrt() * randn(Na, 3)
        frac = frac % 1.0
        ab_t, ab_s = abar[t], abar[s]
        alpha = ab_t / ab_s
        beta = 1 - alpha
        lat = (lat - beta / (1 - ab_t).sqrt() * el) / alpha.sqrt()
        if masking:
            # reveal each hidden atom with probability (abar_s - abar_t) / (1 - abar_t) (all of them at s = 0), its
            # element drawn from the predicted logits at temperature type_noise (Gumbel-max; 0 is the arg-max)
            reveal = hidden & (torch.rand(Na, generator=gen).to(dev) < (ab_s - ab_t) / (1 - ab_t))
            idx = reveal.nonzero().squeeze(1)
            logits = ea[idx] if allowed is None else ea[idx].masked_fill(~allowed[idx], -math.inf)
            u = torch.rand(len(idx), N_TYPES, generator=gen).clamp(1e-20, 1 - 1e-7).to(dev)
            z_new = (logits - type_noise * torch.log(-torch.log(u))).argmax(-1)
            a[idx] = torch.nn.functional.one_hot(z_new, N_TYPES).float()
            hidden[idx] = False
        elif not csp:
            a = (a - beta / (1 - ab_t).sqrt() * ea) / alpha.sqrt()
        if s > 0:
            std = (beta * (1 - ab_s) / (1 - ab_t)).sqrt()
            lat = lat + lattice_noise * std * randn(B, 3, 3)
            if not csp and not masking:
                a = a + type_noise * std * randn(Na, N_TYPES)
    if csp:
        z = types.to(dev).long()
    else:
        logits = a if allowed is None else a.masked_fill(~allowed, -math.inf)
        z = logits.argmax(-1) + 1
    lat_rows = (lat * num_atoms.float().pow(1 / 3)[:, None, None]).transpose(1, 2)
    return z.cpu(), frac.cpu(), lat_rows.cpu()
