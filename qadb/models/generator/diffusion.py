"""Noise processes of the crystal diffusion generator (torch only).

* lattice L (3x3, columns = lattice vectors, divided by N^(1/3)): DDPM with a cosine alpha-bar schedule, epsilon
  prediction;
* atom types (ab initio mode), ``type_process``: "gaussian", the one-hot vector under the same DDPM (epsilon
  prediction, as DiffCSP), or "mask", an absorbing-state discrete process (D3PM/MDLM style, as MatterGen): each
  atom's type is hidden (the zero vector) with probability 1 - alpha-bar_t and the network predicts the clean
  type's logits, so a sample draws each element from a categorical instead of an arg-max over a continuous vector;
* fractional coordinates F on the 3-torus: variance-exploding wrapped normal, sigma geometric from
  sigma_min to sigma_max, score matching of the wrapped-normal transition kernel (as in DiffCSP), target score
  divided by sqrt(E[score^2]) so that the network output has unit scale.
"""

from __future__ import annotations

import functools
import math

import torch

TYPE_PROCESSES = ("gaussian", "mask")
WN_IMAGES = 5  # images k = -5..5: exact to float precision for sigma <= 1


def _bcast(x: torch.Tensor, sigma) -> tuple[torch.Tensor, torch.Tensor]:
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return torch.broadcast_tensors(x, sigma)


def wrapped_normal_logp(x: torch.Tensor, sigma, n_images: int = WN_IMAGES) -> torch.Tensor:
    """log of the wrapped normal density WN(x; 0, sigma^2) with period 1, elementwise (sigma broadcasts)."""
    x, sigma = _bcast(x, sigma)
    k = torch.arange(-n_images, n_images + 1, device=x.device, dtype=x.dtype)
    y = x.unsqueeze(-1) + k
    s = sigma.unsqueeze(-1)
    return torch.logsumexp(-(y**2) / (2 * s**2), dim=-1) - torch.log(sigma) - 0.5 * math.log(2 * math.pi)


def wrapped_normal_score(x: torch.Tensor, sigma, n_images: int = WN_IMAGES) -> torch.Tensor:
    """d/dx log WN(x; 0, sigma^2) with period 1, elementwise (sigma broadcasts)."""
    x, sigma = _bcast(x, sigma)
    k = torch.arange(-n_images, n_images + 1, device=x.device, dtype=x.dtype)
    y = x.unsqueeze(-1) + k
    s = sigma.unsqueeze(-1)
    w = torch.softmax(-(y**2) / (2 * s**2), dim=-1)
    return (w * (-y / s**2)).sum(-1)


def score_norm(sigma: torch.Tensor, n_grid: int = 512, chunk: int = 250) -> torch.Tensor:
    """E_{x ~ WN(0, sigma)}[score(x)^2] per dimension, by periodic trapezoid quadrature on one period (spectrally
    accurate for a smooth periodic integrand: grid step 1/512 < sigma_min)."""
    x = torch.arange(n_grid, dtype=torch.float64) / n_grid - 0.5
    out = []
    for sc in sigma.double().split(chunk):
        s = sc[:, None]
        logp = wrapped_normal_logp(x[None, :], s)
        w = torch.softmax(logp, dim=-1)  # normalised quadrature weights of the density on the grid
        out.append((w * wrapped_normal_score(x[None, :], s) ** 2).sum(-1))
    return torch.cat(out).float()


@functools.lru_cache(maxsize=4)
def _cached_norm(T: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    return score_norm(torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), T)))


class Schedules(torch.nn.Module):
    """Discrete schedules, t = 1..T (index 0 is the clean state)."""

    def __init__(self, T: int = 1000, sigma_min: float = 0.005, sigma_max: float = 0.5, cosine_s: float = 0.008,
                 type_process: str = "gaussian"):
        super().__init__()
        if type_process not in TYPE_PROCESSES:
            raise ValueError(f"unknown type_process {type_process!r}; known: {', '.join(TYPE_PROCESSES)}")
        self.T = T
        self.type_process = type_process
        steps = torch.arange(T + 1, dtype=torch.float64)
        f = torch.cos((steps / T + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        abar = (f / f[0]).clamp(min=1e-8)
        betas = (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
        betas = torch.cat([torch.zeros(1, dtype=torch.float64), betas])
        alphas = 1 - betas
        abar = torch.cumprod(alphas, 0)
        self.register_buffer("betas", betas.float())
        self.register_buffer("alphas", alphas.float())
        self.register_buffer("abar", abar.float())
        sig = torch.cat([torch.zeros(1), torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), T))])
        self.register_buffer("sigmas", sig.float())
        norm = torch.cat([torch.ones(1), _cached_norm(T, sigma_min, sigma_max)])
        self.register_buffer("sigma_norm", norm.float())
        self.sigma_min = sigma_min


def fc_edges(num_atoms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs i != j inside each crystal; num_atoms: [B] long. Returns (src, dst) atom indices."""
    dev = num_atoms.device
    n = num_atoms.long()
    ptr = torch.cumsum(n, 0) - n
    n2 = n * n
    total = int(n2.sum())
    crystal = torch.repeat_interleave(torch.arange(len(n), device=dev), n2, output_size=total)
    local = torch.arange(total, device=dev) - torch.repeat_interleave(torch.cumsum(n2, 0) - n2, n2, output_size=total)
    nb = n[crystal]
    i = local // nb
    j = local % nb
    keep = i != j
    off = ptr[crystal]
    return (i + off)[keep], (j + off)[keep]
