"""CUT as an NNI 3.0 pruner, and NNI masks → a physically smaller model.

:class:`CUTPruner` is an ``nni.compression`` ``Pruner``: NNI's ``config_list`` picks
the layers and ratios, CUT decides which blocks (elements or output channels) go —
each selected task scores the pre-trained weights with its own loss
(``cut_plugin.score_tasks``) and the tasks' verdicts are fused by a rule (``vote``:
CUT; ``any``: DiSparse). It runs alone or inside NNI's ``LinearPruner`` /
``AGPPruner``. :func:`speedup` turns masks of any NNI pruner into a smaller model
through Torch-Pruning (NNI's own ``ModelSpeedup`` fails on torch >= 2.2)::

    from adapters.nni import CUTPruner, speedup
    config_list = [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5, "granularity": "out_channel"}]
    pruner = CUTPruner(model, config_list, losses=losses, data=batches, tasks=["seg", "depth"])
    pruned, masks = pruner.compress()
    compact = speedup(pruned, masks, example_inputs)

Needs ``pip install "cut-pam[nni]"``.
"""

from __future__ import annotations

import warnings

try:
    with warnings.catch_warnings():
        # NNI 3.0 on current torch/numpy warns at import about its own internals.
        warnings.simplefilter("ignore")
        import nni.compression.base.compressor  # noqa: F401
except ImportError as error:
    raise ImportError(
        f'adapters.nni needs NNI 3.0, which failed to import ({error}); pip install "cut-pam[nni]"'
    ) from error

from adapters.nni.config import GRANULARITIES, check_config_list
from adapters.nni.masks import param_masks, plain_copy, unwrapped
from adapters.nni.pruner import CUTPruner
from adapters.nni.speedup import speedup

__all__ = [
    "GRANULARITIES",
    "CUTPruner",
    "check_config_list",
    "param_masks",
    "plain_copy",
    "speedup",
    "unwrapped",
]
