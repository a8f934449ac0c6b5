"""Periodic E(3)-equivariant denoiser for crystals (torch only).

Inputs per crystal: lattice L (3x3, columns are lattice vectors), fractional coordinates F, atom-type vectors A,
time step t, conditions. Symmetries (as in DiffCSP's CSPNet, implemented independently here):

* permutation: fully connected message passing with mean aggregation, per-atom outputs;
* periodic translation: only fractional differences F_j - F_i enter, through Fourier features sin/cos(2 pi k d),
  which are also invariant to the choice of periodic image;
* O(3): the lattice enters only through the Gram matrix G = L^T L (invariant under L -> Q L); the coordinate score
  (fractional, invariant) and type outputs are invariant; the lattice noise prediction is L @ M(invariants), so it
  rotates with L.

Conditioning: a time embedding plus, for each property column, mask * MLP(value) + (1 - mask) * null vector, plus a
chemical-system (multi-hot element set) embedding, plus a mode embedding (0 = structure prediction with known
types, 1 = ab initio generation). Everything is added to the node features and used as FiLM shift in every layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from qadb.models.generator.conditions import N_TYPES, PROPS
from qadb.models.generator.diffusion import fc_edges


def sinusoidal(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    dt = t.dtype if t.is_floating_point() else torch.float32
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=dt) / half)
    a = t.to(dt)[:, None] * 1000.0 * freqs[None]
    return torch.cat([a.sin(), a.cos()], -1)


def scatter_mean(x: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros(n, x.shape[-1], device=x.device, dtype=x.dtype).index_add_(0, index, x)
    cnt = torch.zeros(n, device=x.device, dtype=x.dtype).index_add_(0, index, torch.ones_like(index, dtype=x.dtype))
    return out / cnt.clamp(min=1)[:, None]


def fourier_columns(old: int, new: int) -> torch.Tensor:
    """Where each geometric input of a layer built with `old` Fourier frequencies sits with `new` >= `old`.

    Inputs are laid out per fractional axis as [sin k=1..n, cos k=1..n], then the six Gram invariants.
    """
    if new < old:
        raise ValueError(f"cannot shrink the Fourier features from {old} to {new} frequencies")
    cols = [a * 2 * new + part * new + j for a in range(3) for part in range(2) for j in range(old)]
    return torch.tensor(cols + [6 * new + g for g in range(6)])


def grow_fourier(tensors: dict, old: int, new: int) -> dict:
    """Copy of a state dict (or same-keyed moments) for `new` frequencies; the added inputs get zero weight.

    A denoiser grown this way computes exactly what the old one did, so training can resume from a trained
    state and learn to use the finer frequencies instead of starting from scratch.
    """
    cols = fourier_columns(old, new)
    out = dict(tensors)
    for key, w in tensors.items():
        if key.endswith("w_geo.weight"):
            grown = w.new_zeros(w.shape[0], 6 * new + 6)
            grown[:, cols] = w
            out[key] = grown
    return out


class Layer(nn.Module):
    def __init__(self, h: int, n_fourier: int, dropout: float = 0.0):
        super().__init__()
        self.ln = nn.LayerNorm(h)
        self.w_src = nn.Linear(h, h)
        self.w_dst = nn.Linear(h, h, bias=False)
        self.w_geo = nn.Linear(n_fourier + 6, h, bias=False)
        self.edge_out = nn.Sequential(nn.SiLU(), nn.Linear(h, h), nn.SiLU())
        self.node = nn.Sequential(nn.Linear(2 * h, h), nn.SiLU(), nn.Linear(h, h))
        self.film = nn.Linear(h, h)
        self.drop = nn.Dropout(dropout)  # on the residual update: a regulariser against over-fitting small data

    def forward(self, h, src, dst, geo_e, gram_e, cond_node):
        x = self.ln(h) + self.film(cond_node)
        m = self.w_src(x)[src] + self.w_dst(x)[dst] + self.w_geo(torch.cat([geo_e, gram_e], -1))
        m = self.edge_out(m)
        agg = scatter_mean(m, src, h.shape[0])
        return h + self.drop(self.node(torch.cat([x, agg], -1)))


class CrystalDenoiser(nn.Module):
    def __init__(self, hidden: int = 256, layers: int = 6, n_freq: int = 16, n_types: int = N_TYPES,
                 n_props: int = len(PROPS), time_dim: int = 128, dropout: float = 0.0):
        super().__init__()
        self.config = dict(hidden=hidden, layers=layers, n_freq=n_freq, n_types=n_types, n_props=n_props,
                           time_dim=time_dim, dropout=dropout)
        h = hidden
        self.n_freq = n_freq
        self.type_in = nn.Linear(n_types, h)
        self.time = nn.Sequential(nn.Linear(time_dim, h), nn.SiLU(), nn.Linear(h, h))
        self.time_dim = time_dim
        self.prop_mlp = nn.ModuleList([nn.Sequential(nn.Linear(1, 64), nn.SiLU(), nn.Linear(64, h))
                                       for _ in range(n_props)])
        self.prop_null = nn.Parameter(torch.zeros(n_props, h))
        self.chemsys = nn.Sequential(nn.Linear(n_types, h), nn.SiLU(), nn.Linear(h, h))
        self.chemsys_null = nn.Parameter(torch.zeros(h))
        self.mode = nn.Embedding(2, h)
        self.cond_mix = nn.Sequential(nn.SiLU(), nn.Linear(h, h))
        self.layers = nn.ModuleList([Layer(h, 6 * n_freq, dropout) for _ in range(layers)])
        self.ln_out = nn.LayerNorm(h)
        self.out_f = nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 3))
        self.out_a = nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Linear(h, n_types))
        self.out_l = nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 9))

    def cond_embedding(self, t, props, prop_mask, chemsys, chemsys_mask, mode):
        c = self.time(sinusoidal(t, self.time_dim)) + self.mode(mode.long())
        pm = prop_mask.to(props.dtype)
        for k, mlp in enumerate(self.prop_mlp):
            v = torch.where(prop_mask[:, k], props[:, k], torch.zeros_like(props[:, k]))
            c = c + pm[:, k:k + 1] * mlp(v[:, None]) + (1 - pm[:, k:k + 1]) * self.prop_null[k]
        cm = chemsys_mask.to(props.dtype)[:, None]
        c = c + cm * self.chemsys(chemsys.to(props.dtype)) + (1 - cm) * self.chemsys_null
        return self.cond_mix(c)

    def forward(self, types, frac, lattice, num_atoms, t, props, prop_mask, chemsys, chemsys_mask, mode,
                edges=None):
        """types [Na, K] float, frac [Na, 3], lattice [B, 3, 3] (columns), num_atoms [B], t [B] in [0, 1].

        Returns eps_lattice [B, 3, 3], score_frac [Na, 3] (normalised), eps_types [Na, K].
        """
        B = lattice.shape[0]
        crystal = torch.repeat_interleave(torch.arange(B, device=frac.device), num_atoms.long(),
                                          output_size=frac.shape[0])
        src, dst = fc_edges(num_atoms) if edges is None else edges
        cond = self.cond_embedding(t, props, prop_mask, chemsys, chemsys_mask, mode)
        h = self.type_in(types) + cond[crystal]
        # geometry: Fourier features of fractional differences, Gram-matrix invariants of the lattice
        d = frac[dst] - frac[src]
        k = torch.arange(1, self.n_freq + 1, device=frac.device, dtype=frac.dtype)
        ang = 2 * math.pi * d[:, :, None] * k
        geo = torch.cat([ang.sin(), ang.cos()], -1).reshape(d.shape[0], -1)
        gram = lattice.transpose(1, 2) @ lattice
        iu = torch.triu_indices(3, 3, device=frac.device)
        g6 = gram[:, iu[0], iu[1]]
        g6 = torch.sign(g6) * torch.log1p(g6.abs())
        gram_e = g6[crystal][src]
        cond_node = cond[crystal]
        for layer in self.layers:
            h = layer(h, src, dst, geo, gram_e, cond_node)
        h = self.ln_out(h)
        score_f = self.out_f(h)
        eps_a = self.out_a(h)
        m = self.out_l(scatter_mean(h, crystal, B)).reshape(B, 3, 3)
        eps_l = lattice @ m
        return eps_l, score_f, eps_a
