"""PAM and MTZ in plain PyTorch: merge single-task networks into one multitask network.

``PAMMerger(...).merge(networks, inputs, labels)`` (pruning-aware merging) and
``MTZMerger(share=...).merge(networks, inputs)`` (multi-task zipping, the
baseline) return a :class:`MergedNetwork`; :func:`combination_costs` gives the
MACs and parameters of every task combination; :func:`retrain` trains a merged
network jointly; :class:`GateRecorder` reads the released pruner's Taylor gate
scores. Pruning with Torch-Pruning lives in ``adapters`` (``prune_merged``,
``prune_merged_gates``). This package imports neither Torch-Pruning nor NNI.
"""

from pam_plugin.architecture import Architecture, Space
from pam_plugin.construction import build_merged
from pam_plugin.costs import Cost, combination_costs, network_cost
from pam_plugin.deletion import delete_groups, group_deletions
from pam_plugin.gates import GATE_GROUPS, GateRecorder, gate_keep, pruned_groups_of
from pam_plugin.grouping import SHARED, GroupKey, Neuron, relevance_groups
from pam_plugin.information import label_entropy, mutual_information
from pam_plugin.merged import MergedNetwork
from pam_plugin.mtz import MTZMerger, MTZResult, zip_costs
from pam_plugin.mtz_finetuning import MTZFinetuning
from pam_plugin.pam import PAM_PRESETS, PAMMerger
from pam_plugin.relevance import neuron_relevance
from pam_plugin.search import irrelevant_path, irrelevant_set
from pam_plugin.tracing import parse_architecture
from pam_plugin.training import retrain

__all__ = [
    "GATE_GROUPS",
    "PAM_PRESETS",
    "SHARED",
    "Architecture",
    "Cost",
    "GateRecorder",
    "GroupKey",
    "MTZFinetuning",
    "MTZMerger",
    "MTZResult",
    "MergedNetwork",
    "Neuron",
    "PAMMerger",
    "Space",
    "build_merged",
    "combination_costs",
    "delete_groups",
    "gate_keep",
    "group_deletions",
    "irrelevant_path",
    "irrelevant_set",
    "label_entropy",
    "mutual_information",
    "network_cost",
    "neuron_relevance",
    "parse_architecture",
    "pruned_groups_of",
    "relevance_groups",
    "retrain",
    "zip_costs",
]
