"""Stand-in for torch-scatter (no wheel for every torch) with the reductions DiffCSP's CSPNet calls.

Used only by `bench/_diffcsp_ref.py`, which puts this folder on the path.
"""

import torch

_REDUCE = {"sum": "sum", "add": "sum", "mean": "mean", "max": "amax", "min": "amin"}


def scatter(src: torch.Tensor, index: torch.Tensor, dim: int = 0, out=None, dim_size: int | None = None,
            reduce: str = "sum") -> torch.Tensor:
    """Reduce rows of `src` into `dim_size` groups given by `index` (dim 0 only, as CSPNet uses it)."""
    if dim != 0 or out is not None:
        raise NotImplementedError("only dim=0 without out= is provided")
    n = int(index.max()) + 1 if dim_size is None else dim_size
    idx = index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)
    res = torch.zeros((n, *src.shape[1:]), dtype=src.dtype, device=src.device)
    return res.scatter_reduce(0, idx, src, reduce=_REDUCE[reduce], include_self=False)


def segment_coo(*args, **kwargs):
    """Imported by torch_geometric when torch-scatter is present; DiffCSP's path never calls it."""
    raise NotImplementedError("segment_coo is not provided by the torch-scatter stand-in")


segment_csr = segment_coo
