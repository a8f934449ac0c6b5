"""`scatter_softmax` for the torch-scatter stand-in."""

import torch

from torch_scatter import scatter


def scatter_softmax(src: torch.Tensor, index: torch.Tensor, dim: int = 0, dim_size: int | None = None) -> torch.Tensor:
    """Softmax of `src` within each group of `index` (max subtracted for stability)."""
    e = (src - scatter(src, index, dim, dim_size=dim_size, reduce="max")[index]).exp()
    return e / scatter(e, index, dim, dim_size=dim_size, reduce="sum")[index]
