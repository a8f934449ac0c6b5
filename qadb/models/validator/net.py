"""MF-ENNP network: invariant message passing with fidelity-modulated messages (torch only).

Imports only torch and numpy so it runs from the source tree on the GPU machine.

Architecture (one ensemble member):

1. Atom embedding ``h_i = Emb(Z_i)``; Gaussian radial basis of the interatomic distance times a
   cosine cutoff envelope.
2. ``n_shared`` continuous-filter interaction blocks shared by every fidelity (the trunk):
   ``h_i += MLP( sum_j W(r_ij) * (A h_j) / k )``.
3. One fidelity-modulated interaction block evaluated for all L levels at once: the filter of
   level l is ``W(r) * (1 + gamma_l)`` and the aggregated message is shifted by ``beta_l``
   (``gamma_l``, ``beta_l`` are the level's own embedding vectors).
4. Per-level readout MLP (own weights per level) -> per-atom delta; a second per-level MLP on the
   *detached* features -> per-atom s (so the variance NLL never reshapes the trunk); graph value =
   mean over atoms (energies are per atom).
5. Hierarchy: ``mu_l = delta_l + stopgrad(mu_parent(l))`` (the root adds a per-element reference
   energy). Gradient stopping: no loss on level l reaches the parameters of any other level's
   embedding/readout (the high-fidelity loss cannot move the low head, and the low-fidelity loss
   never touches the high-fidelity ``gamma``, ``beta``, readout).
6. Variance: ``sigma_l = softplus(s_l - 2) + 1e-3`` (eV/atom), ``var = sigma_l**2``.

Only distances enter, so outputs are invariant to rotations, translations, reflections and
permutations of the atoms.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

N_SPECIES = 100


def default_config(levels: list[str], parents: list[int]) -> dict:
    return {
        "levels": list(levels),
        "parents": [int(p) for p in parents],
        "n_features": 64,
        "n_rbf": 24,
        "cutoff": 5.0,
        "max_neighbors": 16,
        "n_shared": 2,
        "hidden": 32,
        "avg_neighbors": 16.0,
        "stop_grad": True,
    }


class RadialBasis(nn.Module):
    def __init__(self, n_rbf: int, cutoff: float):
        super().__init__()
        self.cutoff = float(cutoff)
        self.register_buffer("centers", torch.linspace(0.0, cutoff, n_rbf))
        self.gamma = 1.0 / (cutoff / (n_rbf - 1)) ** 2

    def forward(self, d: torch.Tensor):
        rbf = torch.exp(-self.gamma * (d[:, None] - self.centers[None, :]) ** 2)
        env = 0.5 * (torch.cos(math.pi * d / self.cutoff) + 1.0) * (d < self.cutoff)
        return rbf, env


class Interaction(nn.Module):
    def __init__(self, n_rbf: int, f: int):
        super().__init__()
        self.filt = nn.Sequential(nn.Linear(n_rbf, f), nn.SiLU(), nn.Linear(f, f))
        self.lin = nn.Linear(f, f, bias=False)
        self.out = nn.Sequential(nn.Linear(f, f), nn.SiLU(), nn.Linear(f, f))

    def forward(self, h, rbf, env, src, dst, norm):
        w = self.filt(rbf) * env[:, None]
        m = w * self.lin(h)[src]
        agg = torch.zeros_like(h).index_add_(0, dst, m) / norm
        return h + self.out(agg)


def encode(embed: nn.Embedding, rbf: RadialBasis, blocks: nn.ModuleList, batch: dict, norm: float):
    """The shared trunk: embed species, expand distances, run interaction blocks.

    Returns node features and the radial basis with its envelope (heads reuse them)."""
    h = embed(batch["z"])
    basis, env = rbf(batch["dist"])
    for blk in blocks:
        h = blk(h, basis, env, batch["src"], batch["dst"], norm)
    return h, basis, env


class MFENNP(nn.Module):
    """One ensemble member. ``forward`` returns (mean, var), each of shape (n_graphs, n_levels)."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        c = self.config
        L, F, H = len(c["levels"]), int(c["n_features"]), int(c["hidden"])
        parents = [int(p) for p in c["parents"]]
        if len(parents) != L or any(p >= i for i, p in enumerate(parents)):
            raise ValueError("parents must list, per level, the index of an earlier level or -1")
        self.parents = parents
        self.n_levels = L
        self.norm = float(c["avg_neighbors"])
        self.stop_grad = bool(c.get("stop_grad", True))
        self.trunk_from_root = bool(c.get("trunk_from_root", False))
        self.embed = nn.Embedding(N_SPECIES + 1, F)
        self.rbf = RadialBasis(int(c["n_rbf"]), float(c["cutoff"]))
        self.shared = nn.ModuleList([Interaction(int(c["n_rbf"]), F) for _ in range(int(c["n_shared"]))])
        # fidelity-modulated block: shared filter/update, per-level modulation vectors
        self.fid_filt = nn.Sequential(nn.Linear(int(c["n_rbf"]), F), nn.SiLU(), nn.Linear(F, F))
        self.fid_lin = nn.Linear(F, F, bias=False)
        self.fid_out = nn.Sequential(nn.Linear(F, F), nn.SiLU(), nn.Linear(F, F))
        self.fid_gamma = nn.Parameter(torch.zeros(L, F))
        self.fid_beta = nn.Parameter(torch.zeros(L, F))
        # per-level readout heads (batched weights)
        self.head_w1 = nn.Parameter(torch.randn(L, F, H) / math.sqrt(F))
        self.head_b1 = nn.Parameter(torch.zeros(L, H))
        self.head_w2 = nn.Parameter(torch.randn(L, H, 2) * 0.01 / math.sqrt(H))
        self.head_b2 = nn.Parameter(torch.zeros(L, 2))
        # per-level variance readout on detached features: the NLL trains only these, never the trunk
        self.var_w1 = nn.Parameter(torch.randn(L, F, H) / math.sqrt(F))
        self.var_b1 = nn.Parameter(torch.zeros(L, H))
        self.var_w2 = nn.Parameter(torch.randn(L, H) * 0.01 / math.sqrt(H))
        self.var_b2 = nn.Parameter(torch.zeros(L))
        # per-element reference energy of the root level (fit by least squares before training)
        self.elem_ref = nn.Parameter(torch.zeros(N_SPECIES + 1))

    def level_parameters(self, level: int) -> list[torch.Tensor]:
        """Tensors whose row ``level`` belongs to that level alone (for gradient-stopping checks)."""
        return [self.fid_gamma, self.fid_beta, self.head_w1, self.head_b1, self.head_w2, self.head_b2,
                self.var_w1, self.var_b1, self.var_w2, self.var_b2]

    def forward(self, batch: dict):
        src, dst = batch["src"], batch["dst"]
        gidx, n_graphs = batch["batch"], int(batch["n_graphs"])
        h, rbf, env = encode(self.embed, self.rbf, self.shared, batch, self.norm)
        w = self.fid_filt(rbf) * env[:, None]  # (E, F)
        m = w * self.fid_lin(h)[src]  # (E, F)
        agg = torch.zeros_like(h).index_add_(0, dst, m) / self.norm  # (N, F)
        if self.trunk_from_root:
            # non-root levels read the trunk through a stop-gradient: only the abundant root data
            # shape the shared representation; small high-fidelity sets train their own parameters
            root_mask = torch.tensor([p < 0 for p in self.parents], device=h.device)[None, :, None]
            agg_b = torch.where(root_mask, agg[:, None, :], agg.detach()[:, None, :])
            h_b = torch.where(root_mask, h[:, None, :], h.detach()[:, None, :])
        else:
            agg_b, h_b = agg[:, None, :], h[:, None, :]
        # level l's filter is W(r) * (1 + gamma_l); the scatter is linear, so the modulation is applied
        # after aggregation (identical result, N*L*F instead of E*L*F work)
        agg_l = agg_b * (1.0 + self.fid_gamma)[None] + self.fid_beta[None]  # (N, L, F)
        hl = h_b + self.fid_out(agg_l)  # (N, L, F)
        a = torch.nn.functional.silu(torch.einsum("nlf,lfh->nlh", hl, self.head_w1) + self.head_b1)
        o = torch.einsum("nlh,lhk->nlk", a, self.head_w2) + self.head_b2  # (N, L, 2)
        av = torch.nn.functional.silu(torch.einsum("nlf,lfh->nlh", hl.detach(), self.var_w1) + self.var_b1)
        sv = torch.einsum("nlh,lh->nl", av, self.var_w2) + self.var_b2  # (N, L)
        o = torch.stack([o[..., 0], sv], dim=-1)
        counts = torch.zeros(n_graphs, dtype=h.dtype, device=h.device).index_add_(
            0, gidx, torch.ones_like(gidx, dtype=h.dtype)).clamp_min(1.0)
        pooled = torch.zeros(n_graphs, self.n_levels, 2, dtype=h.dtype, device=h.device).index_add_(0, gidx, o)
        pooled = pooled / counts[:, None, None]
        ref = torch.zeros(n_graphs, dtype=h.dtype, device=h.device).index_add_(0, gidx, self.elem_ref[batch["z"]]) / counts
        delta, s = pooled[..., 0], pooled[..., 1]
        mus = []
        for lvl, p in enumerate(self.parents):
            if p < 0:
                mus.append(delta[:, lvl] + ref)
            else:
                base = mus[p].detach() if self.stop_grad else mus[p]
                mus.append(delta[:, lvl] + base)
        mu = torch.stack(mus, dim=1)
        sigma = torch.nn.functional.softplus(s - 2.0) + 1e-3
        return mu, sigma ** 2


def collate(graphs: list[dict], idx) -> dict:
    """Batch graph dicts (numpy arrays) into one disjoint graph of torch tensors."""
    zs, srcs, dsts, ds, bs = [], [], [], [], []
    off = 0
    for k, i in enumerate(idx):
        g = graphs[int(i)]
        n = len(g["z"])
        zs.append(g["z"])
        srcs.append(g["src"] + off)
        dsts.append(g["dst"] + off)
        ds.append(g["dist"])
        bs.append(np.full(n, k, dtype=np.int64))
        off += n
    return {
        "z": torch.from_numpy(np.concatenate(zs)).clamp(0, N_SPECIES),
        "src": torch.from_numpy(np.concatenate(srcs)),
        "dst": torch.from_numpy(np.concatenate(dsts)),
        "dist": torch.from_numpy(np.concatenate(ds).astype(np.float32)),
        "batch": torch.from_numpy(np.concatenate(bs)),
        "n_graphs": len(idx),
    }


@torch.no_grad()
def predict_member(model: MFENNP, graphs: list[dict], batch_size: int = 256):
    model.eval()
    mus, vs = [], []
    for s in range(0, len(graphs), batch_size):
        b = collate(graphs, range(s, min(s + batch_size, len(graphs))))
        mu, var = model(b)
        mus.append(mu.numpy())
        vs.append(var.numpy())
    L = model.n_levels
    if not mus:
        return np.zeros((0, L), np.float32), np.zeros((0, L), np.float32)
    return np.concatenate(mus), np.concatenate(vs)
