"""Thread limits for small calculations.

Measured here on a loaded 2-core machine: one FIRE+FrechetCellFilter relaxation of 8 Si atoms took
38 s, 34 s of it in OpenBLAS solving 3x3 systems (14 ms each, threads spinning against other
processes), and a CHGNet force call took 5.2 s with torch's 2 threads vs 0.09 s with 1. Small cells
gain nothing from intra-op threads, so drivers run them single-threaded and parallelise over
structures instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def limit_threads(n: int | None) -> Iterator[None]:
    """Cap BLAS/OpenMP (threadpoolctl) and torch intra-op threads at `n`, restoring after (None: no cap)."""
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    try:
        import torch
    except ImportError:  # PySCF-only installs have no torch
        torch = None
    before = torch.get_num_threads() if torch is not None else None
    with threadpool_limits(limits=n):
        if torch is not None:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            if torch is not None:
                torch.set_num_threads(before)
