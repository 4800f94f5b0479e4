"""CUT's NNI pruner protects task output layers and masks BatchNorm with its conv (masked ==
compact); speedup reports the BatchNorm difference of other NNI pruners and names what failed."""

from __future__ import annotations

import sys

import pytest
import torch

pytest.importorskip("nni")

from nni.compression.pruning import L1NormPruner  # noqa: E402

from adapters.nni import CUTPruner, plain_copy, speedup  # noqa: E402
from tests.test_nni_helpers import masked_blocks, max_difference, outputs  # noqa: E402
from tests.toy_models import (  # noqa: E402
    ResidualNet,
    example_input,
    init_nontrivial,
    losses_for,
    make_batches,
)


@pytest.fixture(scope="module")
def residual():
    torch.manual_seed(0)
    model = init_nontrivial(ResidualNet())
    return model, make_batches(model, 2), losses_for(model), example_input(model)


def cut(model, config_list, batches, losses, **kw):
    return CUTPruner(model, config_list, losses=losses, data=batches, progress=False, **kw)


def test_task_output_layers_are_protected_by_default(residual):
    """The README's cut.yaml (op_types Conv2d) used to mask seg logits to a constant 0."""
    from adapters.registry import build

    model, batches, losses, x = residual
    spec = {
        "pruner": "cut", "framework": "nni", "rule": "vote", "votes": 2,
        "config_list": [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "granularity": "out_channel"}],
    }  # fmt: skip
    pruner = build(spec, model=model, losses=losses, data=batches, progress=False)
    wrapped, masks = pruner.compress()
    assert "heads.seg.0" not in masks
    seg = outputs(speedup(wrapped, masks, x), x)["seg"]
    assert (seg.flatten(2).abs().amax(2) > 0).all()  # no logit is constantly 0
    opted_out = cut(model, spec["config_list"], batches, losses, protect_outputs=False)
    _, unprotected = opted_out.compress()
    assert masked_blocks(unprotected["heads.seg.0"]["weight"], "out_channel") == (2, 4)


def test_cut_masks_cover_batchnorm_so_masked_equals_compact():
    torch.manual_seed(0)
    model = init_nontrivial(_ConvBNNet())
    batches, losses = make_batches(model, 2), losses_for(model)
    x = example_input(model)
    config_list = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "granularity": "out_channel"}]
    wrapped, masks = cut(model, config_list, batches, losses).compress()
    assert {"bn1", "bn2"} <= set(masks)
    assert torch.equal(masks["bn1"]["weight"], masks["conv1"]["bias"])
    masked = outputs(wrapped, x)
    compact = speedup(wrapped, masks, x)
    assert compact.conv1.out_channels == 4 and compact.bn1.num_features == 4
    assert max_difference(masked, outputs(compact, x)) < 1e-5


def test_speedup_reports_the_batchnorm_difference_of_other_nni_pruners():
    torch.manual_seed(0)
    model = init_nontrivial(_ConvBNNet())
    x = example_input(model)
    pruner = L1NormPruner(
        plain_copy(model), [{"op_names": ["conv1", "conv2"], "sparse_ratio": 0.5}]
    )
    wrapped, masks = pruner.compress()
    masked = outputs(wrapped, x)
    with pytest.warns(UserWarning, match=r"differs from the masked model by up to") as record:
        compact = speedup(wrapped, masks, x)
    measured = float(str(record[0].message).split("up to ")[1].split(":")[0])
    assert measured == pytest.approx(max_difference(masked, outputs(compact, x)), rel=1e-2)


def test_speedup_errors_name_what_failed(residual, monkeypatch):
    model, _, _, x = residual
    pruner = L1NormPruner(plain_copy(model), [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}])
    wrapped, masks = pruner.compress()

    def failing(*args, **kwargs):
        raise IndexError("index 7 is out of bounds")

    monkeypatch.setattr(sys.modules["adapters.nni.speedup"], "prune_by_masks", failing)
    with pytest.raises(RuntimeError, match="dependency graph raised IndexError: index 7") as error:
        speedup(wrapped, masks, x)
    assert "torch.cat" not in str(error.value)


class _ConvBNNet(torch.nn.Module):
    """conv-BN-ReLU twice, then two heads."""

    tasks = ("a", "b")

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(8)
        self.heads = torch.nn.ModuleDict({"a": torch.nn.Linear(8, 3), "b": torch.nn.Linear(8, 2)})

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h))).mean((2, 3))
        return {name: head(h) for name, head in self.heads.items()}
