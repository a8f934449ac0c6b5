"""Φ_Q descriptor proxy network (torch only): invariant message passing -> band gaps + metallicity.

Shares the building blocks of the validator (`RadialBasis`, `Interaction`). Outputs per graph:
``gaps`` (n, K) in eV (softplus, non-negative) for the K gap fidelities and ``metal_logit`` (n,).
"""

from __future__ import annotations

import torch
from torch import nn

from qadb.models.validator.net import N_SPECIES, Interaction, RadialBasis, collate, encode  # noqa: F401


def default_config(gap_levels: list[str]) -> dict:
    return {"gap_levels": list(gap_levels), "n_features": 64, "n_rbf": 24, "cutoff": 5.0,
            "max_neighbors": 16, "n_blocks": 3, "avg_neighbors": 16.0}


class PhiQ(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        c = self.config
        F = int(c["n_features"])
        self.k = len(c["gap_levels"])
        self.norm = float(c["avg_neighbors"])
        self.embed = nn.Embedding(N_SPECIES + 1, F)
        self.rbf = RadialBasis(int(c["n_rbf"]), float(c["cutoff"]))
        self.blocks = nn.ModuleList([Interaction(int(c["n_rbf"]), F) for _ in range(int(c["n_blocks"]))])
        self.head = nn.Sequential(nn.Linear(2 * F, F), nn.SiLU(), nn.Linear(F, self.k + 1))

    def forward(self, batch: dict):
        g, n = batch["batch"], int(batch["n_graphs"])
        h, _, _ = encode(self.embed, self.rbf, self.blocks, batch, self.norm)
        cnt = torch.zeros(n, dtype=h.dtype, device=h.device).index_add_(0, g, torch.ones_like(g, dtype=h.dtype)).clamp_min(1)
        mean = torch.zeros(n, h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, g, h) / cnt[:, None]
        mx = torch.full((n, h.shape[1]), -1e9, dtype=h.dtype, device=h.device).scatter_reduce(0, g[:, None].expand_as(h), h, "amax")
        o = self.head(torch.cat([mean, mx], 1))
        return torch.nn.functional.softplus(o[:, : self.k]), o[:, self.k]
