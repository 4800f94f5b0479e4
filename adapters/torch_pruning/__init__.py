"""CUT as a Torch-Pruning importance and pruner: structured pruning with a real speed-up.

The paper's masks are unstructured (no dense speed-up). Here CUT's per-task
scores are reduced to channels over every coupled layer of a Torch-Pruning
group, and the tasks' verdicts on each channel are fused, so Torch-Pruning's
dependency graph removes whole channels physically::

    import adapters.torch_pruning as atp
    compact = atp.cut_prune(model, (x,), tasks=["seg", "depth"], losses=losses,
                            data=loader, pruning_ratio=0.5)
"""

from adapters.torch_pruning.baselines import BASELINES, baseline_prune, count_macs
from adapters.torch_pruning.budget import search_ratio
from adapters.torch_pruning.compaction import align_masks, prune_by_masks
from adapters.torch_pruning.importance import CUTImportance
from adapters.torch_pruning.merged import PRUNED_GROUPS, prune_merged
from adapters.torch_pruning.merged_gates import prune_merged_gates, remove_neurons
from adapters.torch_pruning.protection import output_layers
from adapters.torch_pruning.pruner import CUTPruner, cut_prune
from adapters.torch_pruning.serialization import load_pruned, pruning_history, save_pruned

__all__ = [
    "BASELINES",
    "PRUNED_GROUPS",
    "CUTImportance",
    "CUTPruner",
    "align_masks",
    "baseline_prune",
    "count_macs",
    "cut_prune",
    "load_pruned",
    "output_layers",
    "prune_by_masks",
    "prune_merged",
    "prune_merged_gates",
    "pruning_history",
    "remove_neurons",
    "save_pruned",
    "search_ratio",
]
