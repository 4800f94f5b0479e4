"""Each bad input of issue 10's list gets an error that names it and the fix."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adapters.torch_pruning as atp
from cut_plugin import apply_masks, check_onnx, export_onnx, finetune, fuse, score_tasks
from tests.toy_models import MLPNet, example_input, losses_for, make_batches


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    model = MLPNet().eval()
    return model, make_batches(model, 3), losses_for(model)


def test_score_tasks_pulls_no_batch_past_max_batches(mlp):
    model, batches, losses = mlp
    source = iter(batches)
    score_tasks(model, source, losses, max_batches=2, progress=False)
    assert next(source) is batches[2]  # the third batch is still there


def test_a_consumed_generator_says_so(mlp):
    model, batches, losses = mlp
    source = (b for b in batches)
    score_tasks(model, source, losses, progress=False)
    with pytest.raises(ValueError, match="already consumed; pass a list or a DataLoader"):
        score_tasks(model, source, losses, progress=False)


def test_iterative_pruning_with_a_one_shot_generator_says_consumed(mlp):
    model, batches, losses = mlp
    with pytest.raises(ValueError, match="already consumed"):
        atp.cut_prune(
            model, example_input(model), tasks=["p", "q"], losses=losses,
            data=(b for b in batches), pruning_ratio=0.5, iterative_steps=2, progress=False,
        )  # fmt: skip


class _WithText(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Linear(12, 3)

    def forward(self, x):
        return {"p": self.p(x), "note": "hello"}


def test_a_non_tensor_output_is_named():
    model = _WithText()
    batch = (torch.randn(2, 12), {"p": torch.tensor([0, 1])})
    with pytest.raises(TypeError, match="output 'note' is a str, not a Tensor"):
        score_tasks(model, [batch], {"p": F.cross_entropy}, tasks=["p"], progress=False)


def test_finetune_refuses_a_loss_that_does_not_require_grad(mlp):
    model, batches, losses = mlp
    detached = {**losses, "q": lambda out, target: F.cross_entropy(out.detach(), target)}
    with pytest.raises(ValueError, match="loss of task 'q' does not require grad"):
        finetune(model, batches, detached, steps=1, lr=0.01, progress=False)


def test_apply_masks_refuses_float_tensors(mlp):
    model, _, _ = mlp
    scores = {"trunk.0.weight": torch.rand(24, 12)}
    with pytest.raises(TypeError, match="masks must be bool"):
        apply_masks(model, scores)


def test_fuse_refuses_zero_dim_scores():
    with pytest.raises(ValueError, match="0-dim"):
        fuse({"a": torch.tensor(1.0), "b": torch.tensor(2.0)}, keep_ratio=0.5)


class _Large(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Linear(12, 4)

    def forward(self, x):
        return {"p": self.p(x) * 1e4}  # logits ~ 1e4: float32 rounding alone is ~1e-3


def test_check_onnx_takes_a_relative_tolerance(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = _Large().eval()
    x = torch.randn(3, 12)
    path = tmp_path / "large.onnx"
    export_onnx(model, x, path, exporter="torchscript")
    assert check_onnx(model, path, x, atol=1e-5, rtol=1e-5) < 1.0
    with pytest.raises(ValueError, match="rtol"):
        check_onnx(model, path, x, rtol=-1.0)
    exact = nn.Linear(12, 4).eval()
    wrong = tmp_path / "wrong.onnx"
    export_onnx(_Wrap(exact), x, wrong, exporter="torchscript")
    with torch.no_grad():
        exact.weight.add_(0.1)
    with pytest.raises(ValueError, match="beyond atol"):
        check_onnx(_Wrap(exact), wrong, x, rtol=1e-5)


class _Wrap(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return {"output": self.inner(x)}


def test_an_endless_iterator_without_max_batches_is_refused(mlp):
    pytest.importorskip("nni")
    from adapters.nni import CUTPruner

    model, batches, losses = mlp
    with pytest.raises(ValueError, match="max_batches"):
        CUTPruner(
            model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}], losses=losses,
            data=itertools.cycle(batches), progress=False,
        )  # fmt: skip
    pruner = CUTPruner(
        model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}], losses=losses,
        data=itertools.cycle(batches), max_batches=2, progress=False,
    )  # fmt: skip
    assert len(pruner.data) == 2
