"""CUT in plain PyTorch: prune a pre-trained multi-task model for the tasks a device needs.

Pipeline (the CUT paper; README, "How CUT differs from the paper"): :func:`select_tasks` drops the other tasks' parts,
:func:`score_tasks` scores every parameter per task on the pre-trained weights
(:func:`score_channels`: an opt-in, faster channel criterion for structured pruning),
:func:`fuse` merges the tasks' verdicts on shared parameters, :func:`cut_masks`
gives the paper's unstructured masks, :func:`finetune` recovers accuracy with
the masks fixed. Structured (channel) pruning lives in ``adapters.torch_pruning``.
This package imports neither Torch-Pruning nor NNI.
"""

from cut_plugin.channel_scoring import score_channels
from cut_plugin.config import CUTConfig
from cut_plugin.decomposition import select_tasks, task_parameters
from cut_plugin.export import EXPORTERS, check_onnx, export_onnx, export_torchscript
from cut_plugin.finetuning import finetune
from cut_plugin.fusion import RULES, fuse, normalise, rank_channels
from cut_plugin.masks import PRUNABLE_TYPES, apply_masks, cut_masks, mask_sparsity, prunable_weights
from cut_plugin.record import PruningRecord, read_record, write_record
from cut_plugin.scoring import CHANNEL_CRITERIA, CRITERIA, score_tasks
from cut_plugin.training import TrainingHistory, train_tasks
from cut_plugin.vocabulary import as_task_outputs, run_model

__all__ = [
    "CUTConfig",
    "PruningRecord",
    "TrainingHistory",
    "read_record",
    "write_record",
    "CHANNEL_CRITERIA",
    "CRITERIA",
    "EXPORTERS",
    "PRUNABLE_TYPES",
    "RULES",
    "apply_masks",
    "as_task_outputs",
    "check_onnx",
    "cut_masks",
    "export_onnx",
    "export_torchscript",
    "finetune",
    "fuse",
    "mask_sparsity",
    "normalise",
    "prunable_weights",
    "rank_channels",
    "run_model",
    "score_channels",
    "score_tasks",
    "select_tasks",
    "task_parameters",
    "train_tasks",
]
__version__ = "0.1.0"
