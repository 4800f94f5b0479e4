"""PAM/MTZ merging, then an NNI config_list on the merged network, then speedup: still a
MergedNetwork whose for_tasks works, with exactly the configured widths, computing what the
masked network computes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("nni")

from nni.compression.pruning import L1NormPruner  # noqa: E402

from adapters.nni import CUTPruner, param_masks, plain_copy, speedup  # noqa: E402
from pam_plugin import MergedNetwork, MTZMerger, PAMMerger  # noqa: E402
from tests.test_nni_helpers import masked_reference, max_difference, outputs, parameter_count  # noqa: E402
from tests.toy_models import same_state, state_snapshot  # noqa: E402

TASKS = ("a", "b")
RATIO = 0.5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    )


def lenet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 3),
    )  # fmt: skip


def single_task(factory: Callable[[], nn.Module], shape: tuple[int, ...]):
    """Two networks of one architecture, 64 shared inputs, and labels each network predicts."""
    torch.manual_seed(0)
    networks = {t: factory().eval() for t in TASKS}
    x = torch.randn(64, *shape)
    with torch.no_grad():  # three equally frequent classes from each network's first logit
        labels = {t: n(x)[:, 0].argsort().argsort() * 3 // 64 for t, n in networks.items()}
    return networks, x, labels


@pytest.fixture(scope="module")
def merged_networks():
    """``{case: (merged network, inputs, labels)}``, each merged once for the module."""
    networks, x, labels = single_task(mlp, (12,))
    conv_networks, conv_x, conv_labels = single_task(lenet, (1, 16, 16))
    return {
        "pam-mlp": (PAMMerger().merge(networks, x, labels), x, labels),
        "mtz-mlp": (MTZMerger(share=0.5).merge(networks, x), x, labels),
        # the first linear layer reads several groups of a flattened conv layer
        "mtz-lenet": (MTZMerger(share=0.5).merge(conv_networks, conv_x), conv_x, conv_labels),
    }


def group_configs(
    merged: MergedNetwork, shared_only: bool
) -> tuple[list[dict], dict[tuple[str, str], int]]:
    """One NNI config per hidden group (its parts share one channel mask), and the widths expected."""
    names = {id(m): n for n, m in merged.named_modules()}
    outputs_ = {id(m) for layers in merged.output_layers().values() for m in layers}
    configs, widths = [], {}
    for layer, groups in merged.layer_groups().items():
        for group, module in groups.items():
            if id(module) in outputs_ or (shared_only and len(merged.group_tasks[group]) < 2):
                continue
            configs.append({
                "op_names": [names[id(part)] for part in module.parts.values()],
                "sparse_ratio": RATIO, "granularity": "out_channel", "dependency_group_id": f"{layer}/{group}",
            })  # fmt: skip
            widths[(layer, group)] = module.width - int(module.width * RATIO)
    return configs, widths


def l1(merged, batches, config_list):
    return L1NormPruner(plain_copy(merged), config_list)


def cut(merged, batches, config_list):
    losses = {t: F.cross_entropy for t in TASKS}
    return CUTPruner(merged, config_list, losses=losses, data=batches, progress=False)


@pytest.mark.parametrize("case", ["pam-mlp", "mtz-mlp", "mtz-lenet"])
@pytest.mark.parametrize("make_pruner", [l1, cut], ids=["l1", "cut"])
@pytest.mark.parametrize("shared_only", [True, False], ids=["shared-groups", "all-hidden-groups"])
def test_merged_then_nni_pruned_then_sped_up_keeps_for_tasks(
    merged_networks, case, make_pruner, shared_only
):
    merged, x, labels = merged_networks[case]
    exclusive = [
        g
        for sizes in list(merged.group_sizes().values())[:-1]
        for g in sizes
        if len(merged.group_tasks[g]) == 1
    ]
    assert exclusive, f"{case} merged nothing task-exclusive: {merged.group_sizes()}"
    snapshot = state_snapshot(merged)
    batches = [(x[i : i + 16], {t: labels[t][i : i + 16] for t in TASKS}) for i in range(0, 64, 32)]
    config_list, widths = group_configs(merged, shared_only)

    wrapped, masks = make_pruner(merged, batches, config_list).compress()
    compact = speedup(wrapped, masks, x[:8])
    assert isinstance(compact, MergedNetwork)
    sizes = compact.layer_groups()
    assert {key: sizes[key[0]][key[1]].width for key in widths} == widths
    reference = masked_reference(plain_copy(wrapped), param_masks(masks), x[:8])
    full = outputs(compact, x[:8])
    assert max_difference(outputs(reference, x[:8]), full) < 1e-5
    assert parameter_count(compact) < parameter_count(merged)
    for task in TASKS:
        alone = compact.for_tasks([task])
        assert max_difference({task: full[task]}, outputs(alone, x[:8])) < 1e-5
        assert parameter_count(alone) < parameter_count(compact)  # the other task's groups are gone
    assert same_state(merged, snapshot)
