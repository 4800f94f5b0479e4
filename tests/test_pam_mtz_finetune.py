"""MTZ's fine-tuning after each zipped layer: when it runs, what it trains, what it keeps tied."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from pam_plugin import MergedNetwork, MTZFinetuning, MTZMerger, retrain
from tests.test_pam_networks import assert_unchanged, inputs_for, networks_for, snapshot


def data_for(name: str, tasks: str = "AB") -> tuple[Tensor, list, dict]:
    x = inputs_for(name, 16)
    generator = torch.Generator().manual_seed(7)
    targets = {t: torch.randint(0, 3, (16,), generator=generator) for t in tasks}
    return x, [(x, targets)], dict.fromkeys(tasks, F.cross_entropy)


class Recorder:
    """A ``finetune`` callback: trains with ``MTZFinetuning`` and records each call."""

    def __init__(self, train: MTZFinetuning | None, x: Tensor) -> None:
        self.train, self.x = train, x
        self.layers: list[str] = []
        self.changed: list[bool] = []
        self.outputs: dict[str, Tensor] = {}

    def __call__(self, network: MergedNetwork, layer: str) -> None:
        assert isinstance(network, MergedNetwork)
        before = [p.detach().clone() for p in network.parameters()]
        if self.train is not None:
            self.train(network, layer)
        after = list(network.parameters())
        self.changed.append(any(not torch.equal(b, a) for b, a in zip(before, after, strict=True)))
        self.layers.append(layer)
        with torch.no_grad():
            self.outputs = {t: v.clone() for t, v in network.eval()(self.x).items()}


@pytest.mark.parametrize("wiring", ["pam", "released"])
def test_finetune_runs_once_per_zipped_layer(wiring: str) -> None:
    networks = networks_for("lenet")
    x, batches, losses = data_for("lenet")
    recorder = Recorder(None, x)
    merger = MTZMerger(share={"0": 0.5, "3": 0.5}, wiring=wiring, finetune=recorder)  # type: ignore[arg-type]
    merger.merge(networks, x)
    assert recorder.layers == ["0", "3"]  # "7" is not zipped: no call
    recorder = Recorder(None, x)
    MTZMerger(share=0.5, wiring=wiring, finetune=recorder).merge(networks, x)  # type: ignore[arg-type]
    assert recorder.layers == ["0", "3", "7"]


@pytest.mark.parametrize("name", ["lenet", "mlp"])
def test_finetuned_weights_are_kept_and_zipped_weights_stay_tied(name: str) -> None:
    networks = networks_for(name)
    x, batches, losses = data_for(name)
    before = snapshot(networks)
    recorder = Recorder(MTZFinetuning(batches, losses, steps=3, lr=0.05), x)
    result = MTZMerger(share=0.5, wiring="released", finetune=recorder).zip(networks, x)
    assert_unchanged(networks, before)
    assert all(recorder.changed)  # each call trained something
    merged = result.network.eval()
    outputs = merged(x)
    for task in networks:  # the last fine-tuned network is the result (nothing zipped after it)
        assert torch.allclose(outputs[task], recorder.outputs[task], atol=1e-12, rtol=0)
    groups = merged.layer_groups()
    layers = list(result.zipped)
    for below, layer in zip(layers[:-1], layers[1:], strict=True):
        count, a, b = len(result.zipped[layer]), groups[layer]["A"], groups[layer]["B"]
        if "shared" in a.parts:  # the layer below has a shared group: that part is W_merged
            tied = [(a.parts["shared"].weight[:count], b.parts["shared"].weight[:count])]
            bias = (a.parts["shared"].bias[:count], b.parts["shared"].bias[:count])
            inter = (a.parts["A"].weight[:count], b.parts["B"].weight[:count])
        else:  # the layer below is per task: its zipped neurons are the first columns
            factor = a.parts["A"].weight.shape[1] // groups[below]["A"].width
            columns = len(result.zipped[below]) * factor
            tied = [(a.parts["A"].weight[:count, :columns], b.parts["B"].weight[:count, :columns])]
            bias = (a.parts["A"].bias[:count], b.parts["B"].bias[:count])
            inter = (a.parts["A"].weight[:count, columns:], b.parts["B"].weight[:count, columns:])
        for left, right in [*tied, bias]:
            assert torch.equal(left, right)
        assert not torch.equal(*inter)  # W_inter is each task's own


def test_finetune_may_return_a_trained_copy() -> None:
    networks = networks_for("mlp")
    x, batches, losses = data_for("mlp")
    kept: dict[str, MergedNetwork] = {}

    def finetune(network: MergedNetwork, layer: str) -> MergedNetwork:
        kept[layer] = retrain(network, batches, losses, max_steps=2, progress=False)
        return kept[layer]

    merged = MTZMerger(share=0.5, wiring="released", finetune=finetune).merge(networks, x).eval()
    last = kept["4"].eval()
    for task, value in merged(x).items():
        assert torch.allclose(value, last(x)[task], atol=1e-12, rtol=0)
    with pytest.raises(TypeError, match="return None, or return the trained MergedNetwork"):
        MTZMerger(share=0.5, finetune=lambda n, layer: 1).merge(networks, x)  # type: ignore[arg-type,return-value]


def test_finetuning_steps_per_layer() -> None:
    networks = networks_for("lenet")
    x, batches, losses = data_for("lenet")
    recorder = Recorder(MTZFinetuning(batches, losses, steps={"3": 2}, lr=0.05), x)
    MTZMerger(share=0.5, wiring="released", finetune=recorder).merge(networks, x)  # type: ignore[arg-type]
    assert recorder.layers == ["0", "3", "7"] and recorder.changed == [False, True, False]
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['conv9'\]; the mergeable layers"):
        bad = MTZFinetuning(batches, losses, steps={"conv9": 2})
        MTZMerger(share=0.5, finetune=bad).merge(networks, x)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        MTZFinetuning(batches, losses, optimizer="lbfgs")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"steps\['3'\] must be an int >= 0"):
        MTZFinetuning(batches, losses, steps={"3": -1})
