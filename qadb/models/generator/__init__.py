"""Crystal diffusion generator (issue #5): joint lattice / fractional-coordinate / atom-type diffusion with
classifier-free guidance on property columns and the chemical system.

Modules: ``network``, ``diffusion``, ``sampler``, ``train``, ``checkpoint``, ``conditions`` import only
torch/numpy (they run on the GPU machine from the source tree); ``prepare`` and the Structure conversion in
``api`` use pymatgen (imported lazily, CPU side).
"""

from qadb.models.generator.api import CSP_CHECKPOINT, DEFAULT_CHECKPOINT, default_checkpoint, sample, train
from qadb.models.generator.checkpoint import LoadedGenerator, load_checkpoint

__all__ = ["CSP_CHECKPOINT", "DEFAULT_CHECKPOINT", "LoadedGenerator", "default_checkpoint", "load_checkpoint", "sample",
           "train"]
