"""MF-ENNP network: invariant message passing with fidelity-modulated messages (torch only).

Imports only torch and numpy so it runs from the source tree on the GPU machine.

The deep ensemble is one module: every weight has a leading member axis ``M`` and every activation
is laid out ``(M, nodes|edges|graphs, ...)``. Members never share a parameter and never exchange
information (no op mixes the member axis), so this is exactly M independent networks evaluated in
one pass -- M times fewer kernel launches on the GPU and M times less Python overhead on the CPU.

Architecture (per member):

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
   never touches the high-fidelity ``gamma``, ``beta``, readout). With ``trunk_from_root`` the
   non-root levels also read the trunk through a stop-gradient (only the root data shape it).
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
        "n_members": 5,
        "n_features": 64,
        "n_rbf": 24,
        "cutoff": 5.0,
        "max_neighbors": 16,
        "n_shared": 3,
        "hidden": 32,
        "avg_neighbors": 16.0,
        "stop_grad": True,
        "trunk_from_root": True,
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


# ------------------------------------------------------------------ single network (used by Φ_Q)

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
    """Trunk of a single network: embed species, expand distances, run interaction blocks."""
    h = embed(batch["z"])
    basis, env = rbf(batch["dist"])
    for blk in blocks:
        h = blk(h, basis, env, batch["src"], batch["dst"], norm)
    return h, basis, env


# ------------------------------------------------------------------ member-stacked building blocks

class MLinear(nn.Module):
    """M independent linear maps on member-interleaved rows: ``(N, M, i) -> (N, M, o)``."""

    def __init__(self, m: int, i: int, o: int, bias: bool = True, scale: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(m, i, o) * (scale / math.sqrt(i)))
        self.bias = nn.Parameter(torch.zeros(m, o)) if bias else None

    def forward(self, x):
        shp = x.shape  # (..., M, i)
        xt = x.reshape(-1, shp[-2], shp[-1]).transpose(0, 1)  # (M, rows, i)
        y = torch.bmm(xt, self.weight).transpose(0, 1)  # (rows, M, o)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shp[:-1], y.shape[-1])


class MInteraction(nn.Module):
    """Continuous-filter interaction of M members. Node features are ``(N, M, F)``, edge tensors
    ``(E, M*F)``; the filter is linear in the enveloped radial basis, ``W(r) = env(r) rbf(r) @ A``,
    computed for all members in one matrix product."""

    def __init__(self, m: int, n_rbf: int, f: int):
        super().__init__()
        self.m, self.f = m, f
        self.filt = nn.Parameter(torch.randn(m, n_rbf, f) / math.sqrt(n_rbf))
        self.lin = MLinear(m, f, f, bias=False)
        self.o1, self.o2 = MLinear(m, f, f), MLinear(m, f, f)

    def message(self, h, rbf_env, src, dst, norm):
        """Aggregated continuous-filter messages (N, M, F)."""
        n, m, f = h.shape
        w = rbf_env @ self.filt.transpose(0, 1).reshape(rbf_env.shape[1], m * f)  # (E, M*F)
        msg = self.lin(h).reshape(n, m * f)[src] * w
        agg = torch.zeros(n, m * f, dtype=h.dtype, device=h.device).index_add_(0, dst, msg)
        return (agg / norm).view(n, m, f)

    def update(self, agg):
        return self.o2(torch.nn.functional.silu(self.o1(agg)))

    def forward(self, h, rbf_env, src, dst, norm):
        return h + self.update(self.message(h, rbf_env, src, dst, norm))


class MFENNP(nn.Module):
    """The M-member ensemble. ``forward`` returns (mean, var), each of shape (M, n_graphs, n_levels)."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        c = self.config
        M = int(c.get("n_members", 1))
        L, F, H, R = len(c["levels"]), int(c["n_features"]), int(c["hidden"]), int(c["n_rbf"])
        parents = [int(p) for p in c["parents"]]
        if len(parents) != L or any(p >= i for i, p in enumerate(parents)) or parents[0] != -1:
            raise ValueError("parents must list, per level, the index of an earlier level or -1 (root first)")
        self.parents = parents
        self.n_members, self.n_levels = M, L
        self.norm = float(c["avg_neighbors"])
        self.stop_grad = bool(c.get("stop_grad", True))
        self.trunk_from_root = bool(c.get("trunk_from_root", False))
        self.embed = nn.Parameter(torch.randn(N_SPECIES + 1, M, F))
        self.rbf = RadialBasis(R, float(c["cutoff"]))
        self.shared = nn.ModuleList([MInteraction(M, R, F) for _ in range(int(c["n_shared"]))])
        # fidelity-modulated block: shared filter/update, per-level modulation vectors
        self.fid = MInteraction(M, R, F)
        self.fid_gamma = nn.Parameter(torch.zeros(M, L, F))
        self.fid_beta = nn.Parameter(torch.zeros(M, L, F))
        # per-level readout heads (mean) and per-level variance heads on detached features
        self.head_w1 = nn.Parameter(torch.randn(M, L, F, H) / math.sqrt(F))
        self.head_b1 = nn.Parameter(torch.zeros(M, L, 1, H))
        self.head_w2 = nn.Parameter(torch.randn(M, L, H, 1) * 0.01 / math.sqrt(H))
        self.head_b2 = nn.Parameter(torch.zeros(M, L, 1, 1))
        self.var_w1 = nn.Parameter(torch.randn(M, L, F, H) / math.sqrt(F))
        self.var_b1 = nn.Parameter(torch.zeros(M, L, 1, H))
        self.var_w2 = nn.Parameter(torch.randn(M, L, H, 1) * 0.01 / math.sqrt(H))
        self.var_b2 = nn.Parameter(torch.zeros(M, L, 1, 1))
        # per-element reference energy of the root level (fit by least squares before training)
        self.elem_ref = nn.Parameter(torch.zeros(M, N_SPECIES + 1))

    def member_axis(self, p: torch.Tensor) -> int:
        """The axis of ``p`` that indexes ensemble members (1 for the embedding, else 0)."""
        return 1 if p is self.embed else 0

    def level_parameters(self, level: int) -> list[torch.Tensor]:
        """Tensors whose index ``[:, level]`` belongs to that level alone (gradient-stopping checks)."""
        return [self.fid_gamma, self.fid_beta, self.head_w1, self.head_b1, self.head_w2, self.head_b2,
                self.var_w1, self.var_b1, self.var_w2, self.var_b2]

    def _heads(self, x, w1, b1, w2, b2):
        """Per-(member, level) 2-layer MLP: x (N, L, M, F) -> (N, M, L)."""
        N, L, M, F = x.shape
        xt = x.reshape(N, L * M, F).transpose(0, 1)  # (L*M, N, F)
        lm = lambda t: t.transpose(0, 1).reshape(L * M, *t.shape[2:])  # noqa: E731  (M, L, ...) -> (L*M, ...)
        a = torch.nn.functional.silu(torch.baddbmm(lm(b1), xt, lm(w1)))
        o = torch.baddbmm(lm(b2), a, lm(w2))  # (L*M, N, 1)
        return o.reshape(L, M, N).permute(2, 1, 0)

    def forward(self, batch: dict):
        src, dst, z = batch["src"], batch["dst"], batch["z"]
        gidx, n_graphs = batch["batch"], int(batch["n_graphs"])
        M, L = self.n_members, self.n_levels
        h = self.embed[z]  # (N, M, F)
        rbf, env = self.rbf(batch["dist"])
        rbf_env = rbf * env[:, None]  # (E, R)
        for blk in self.shared:
            h = blk(h, rbf_env, src, dst, self.norm)
        agg = self.fid.message(h, rbf_env, src, dst, self.norm)  # (N, M, F)
        # level l's filter is W(r) * (1 + gamma_l); the scatter is linear, so the modulation is applied
        # after aggregation (identical result, N*L*F instead of E*L*F work)
        if self.trunk_from_root:
            root = torch.tensor([p < 0 for p in self.parents], device=h.device)[None, :, None, None]
            agg_b = torch.where(root, agg[:, None], agg.detach()[:, None])
            h_b = torch.where(root, h[:, None], h.detach()[:, None])
        else:
            agg_b, h_b = agg[:, None], h[:, None]
        agg_l = agg_b * (1.0 + self.fid_gamma.transpose(0, 1)) + self.fid_beta.transpose(0, 1)  # (N, L, M, F)
        hl = h_b + self.fid.update(agg_l)  # (N, L, M, F)
        d_node = self._heads(hl, self.head_w1, self.head_b1, self.head_w2, self.head_b2)  # (N, M, L)
        s_node = self._heads(hl.detach(), self.var_w1, self.var_b1, self.var_w2, self.var_b2)
        ref_node = self.elem_ref.t()[z]  # (N, M)
        node = torch.cat([d_node, s_node, ref_node[..., None]], dim=2)  # (N, M, 2L+1)
        counts = torch.zeros(n_graphs, dtype=h.dtype, device=h.device).index_add_(
            0, gidx, torch.ones_like(gidx, dtype=h.dtype)).clamp_min(1.0)
        pooled = torch.zeros(n_graphs, M, node.shape[-1], dtype=h.dtype, device=h.device).index_add_(0, gidx, node)
        pooled = (pooled / counts[:, None, None]).transpose(0, 1)  # (M, G, 2L+1)
        delta, s, ref = pooled[..., :L], pooled[..., L:2 * L], pooled[..., 2 * L]
        mus = []
        for lvl, p in enumerate(self.parents):
            if p < 0:
                mus.append(delta[..., lvl] + ref)
            else:
                base = mus[p].detach() if self.stop_grad else mus[p]
                mus.append(delta[..., lvl] + base)
        mu = torch.stack(mus, dim=-1)
        sigma = torch.nn.functional.softplus(s - 2.0) + 1e-3
        return mu, sigma ** 2


def member_grad_clip_(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip each member's gradient to ``max_norm`` separately (members stay independent)."""
    ps = [p for p in model.parameters() if p.grad is not None]
    axes = [model.member_axis(p) for p in ps]
    sq = torch.stack([p.grad.pow(2).movedim(a, 0).reshape(p.shape[a], -1).sum(1) for p, a in zip(ps, axes)]).sum(0)
    norm = sq.sqrt()  # (M,)
    factor = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for p, a in zip(ps, axes):
        shape = [1] * p.dim()
        shape[a] = -1
        p.grad.mul_(factor.reshape(shape))
    return norm


# ------------------------------------------------------------------ batching

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
        "z": torch.from_numpy(np.concatenate(zs).astype(np.int64)).clamp(0, N_SPECIES),
        "src": torch.from_numpy(np.concatenate(srcs).astype(np.int64)),
        "dst": torch.from_numpy(np.concatenate(dsts).astype(np.int64)),
        "dist": torch.from_numpy(np.concatenate(ds).astype(np.float32)),
        "batch": torch.from_numpy(np.concatenate(bs)),
        "n_graphs": len(idx),
    }


class GraphBank:
    """All graphs as flat tensors on one device; ``batch(ids)`` gathers a disjoint batch without a
    Python loop (used for GPU training and throughput). Graph g owns atoms
    ``atom_start[g]:atom_start[g+1]`` and edges ``edge_start[g]:edge_start[g+1]``; ``src``/``dst``
    are local atom indices."""

    def __init__(self, z, n_atoms, src, dst, dist, n_edges, device="cpu"):
        self.device = torch.device(device)
        self.n_atoms = np.asarray(n_atoms, np.int64)
        self.n_edges = np.asarray(n_edges, np.int64)
        t = lambda a, dt: torch.as_tensor(np.asarray(a), dtype=dt, device=self.device)  # noqa: E731
        self.z = t(np.clip(z, 0, N_SPECIES), torch.int64)
        self.src, self.dst = t(src, torch.int64), t(dst, torch.int64)
        self.dist = t(dist, torch.float32)
        self.na_t, self.ne_t = t(self.n_atoms, torch.int64), t(self.n_edges, torch.int64)
        self.atom_start = t(np.concatenate([[0], np.cumsum(self.n_atoms)[:-1]]), torch.int64)
        self.edge_start = t(np.concatenate([[0], np.cumsum(self.n_edges)[:-1]]), torch.int64)

    @classmethod
    def from_graphs(cls, graphs: list[dict], device="cpu"):
        cat = lambda k, dt: np.concatenate([g[k] for g in graphs]).astype(dt) if graphs else np.zeros(0, dt)  # noqa: E731
        return cls(cat("z", np.int64), [len(g["z"]) for g in graphs], cat("src", np.int64), cat("dst", np.int64),
                   cat("dist", np.float32), [len(g["dist"]) for g in graphs], device)

    def __len__(self):
        return len(self.n_atoms)

    def batch(self, ids) -> dict:
        ids_np = np.asarray(ids, np.int64)
        n_tot, e_tot = int(self.n_atoms[ids_np].sum()), int(self.n_edges[ids_np].sum())
        g = torch.as_tensor(ids_np, device=self.device)
        B = len(ids_np)
        na, ne = self.na_t[g], self.ne_t[g]
        ar = torch.arange(B, device=self.device)
        nb = torch.repeat_interleave(ar, na, output_size=n_tot)
        eb = torch.repeat_interleave(ar, ne, output_size=e_tot)
        noff = torch.cumsum(na, 0) - na
        eoff = torch.cumsum(ne, 0) - ne
        aidx = self.atom_start[g][nb] + torch.arange(n_tot, device=self.device) - noff[nb]
        eidx = self.edge_start[g][eb] + torch.arange(e_tot, device=self.device) - eoff[eb]
        return {"z": self.z[aidx], "src": self.src[eidx] + noff[eb], "dst": self.dst[eidx] + noff[eb],
                "dist": self.dist[eidx], "batch": nb, "n_graphs": B}


@torch.no_grad()
def predict_graphs(model: MFENNP, graphs, batch_size: int = 256):
    """(mu, var) arrays of shape (M, n_graphs, L) for a list of graph dicts or a GraphBank."""
    model.eval()
    dev = next(model.parameters()).device
    n = len(graphs)
    mus, vs = [], []
    for s in range(0, n, batch_size):
        idx = range(s, min(s + batch_size, n))
        b = graphs.batch(list(idx)) if hasattr(graphs, "batch") else collate(graphs, idx)
        b = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in b.items()}
        mu, var = model(b)
        mus.append(mu.float().cpu().numpy())
        vs.append(var.float().cpu().numpy())
    M, L = model.n_members, model.n_levels
    if not mus:
        return np.zeros((M, 0, L), np.float32), np.zeros((M, 0, L), np.float32)
    return np.concatenate(mus, axis=1), np.concatenate(vs, axis=1)
