"""The released PAM pruner: Taylor gate scores (pam_plugin.gates) and prune_merged_gates."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adapters.registry import build
from adapters.torch_pruning import prune_merged_gates, remove_neurons
from pam_plugin import MergedNetwork, build_merged, combination_costs, network_cost, retrain
from pam_plugin.gates import GateRecorder, gate_keep, pruned_groups_of
from tests.test_pam_costs import partly_shared, task_batches
from tests.test_pam_networks import assert_unchanged, snapshot
from tests.test_pam_pruning import pam_merged

Batches = list[tuple[Tensor, dict[str, Tensor]]]


def summed(merged: MergedNetwork) -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    return {t: F.cross_entropy for t in merged.tasks}


def reference_gates(
    merged: MergedNetwork, batches: Batches, gate_modules: dict[tuple[str, str], nn.Module]
) -> dict[tuple[str, str], Tensor]:
    """The released definition: a gate g = 1 multiplies each gate point; mean over batches of |∂L/∂g|."""
    totals: dict[tuple[str, str], Tensor] = {}
    for x, targets in batches:
        gates: dict[tuple[str, str], Tensor] = {}
        handles = []
        for key, module in gate_modules.items():

            def hook(
                _m: nn.Module,
                _a: object,
                out: Tensor,
                key: tuple[str, str] = key,
                gates: dict[tuple[str, str], Tensor] = gates,
            ) -> Tensor:
                shape = [1] * out.dim()
                shape[1] = out.shape[1]
                gates[key] = torch.ones(shape, dtype=out.dtype, requires_grad=True)
                return out * gates[key]

            handles.append(module.register_forward_hook(hook))
        outputs = merged(x)
        loss = sum(F.cross_entropy(outputs[t], y) for t, y in targets.items())
        keys = list(gates)
        grads = torch.autograd.grad(loss, [gates[k] for k in keys])  # type: ignore[arg-type]
        for handle in handles:
            handle.remove()
        for key, grad in zip(keys, grads, strict=True):
            term = grad.abs().flatten().double()
            totals[key] = totals[key] + term if key in totals else term
    return {k: v / len(batches) for k, v in totals.items()}


def recorded(merged: MergedNetwork, batches: Batches) -> dict[str, dict[str, Tensor]]:
    """Gate scores over ``batches`` without training (forward + backward per batch)."""
    with GateRecorder(merged) as gates:
        for x, targets in batches:
            outputs = merged(x)
            sum(F.cross_entropy(outputs[t], y) for t, y in targets.items()).backward()  # type: ignore[union-attr]
    merged.zero_grad(set_to_none=True)
    return gates.scores()


def test_gate_scores_at_batchnorm_outputs_equal_the_gate_gradients() -> None:
    merged, x = partly_shared()  # Linear → BatchNorm1d → ReLU: the gate sits after the BatchNorm
    batches = task_batches(x, merged)
    scores = recorded(merged, batches)
    assert set(scores) == {"0", "4"}  # hidden layers only, by module name
    bn = {"0": "1"}  # layer 0's BatchNorm is module "1"; layer 4 has none
    modules = {
        (layer, group): merged.groups(bn[layer])[group] if layer in bn else module
        for layer, groups in merged.layer_groups().items()
        if layer in scores
        for group, module in groups.items()
    }
    reference = reference_gates(merged, batches, modules)
    for (layer, group), expected in reference.items():
        assert torch.allclose(scores[layer][group], expected, rtol=1e-9, atol=1e-12)
    assert any(bool((s > 0).any()) for g in scores.values() for s in g.values())


def test_gate_scores_of_a_pam_lenet_equal_the_gate_gradients() -> None:
    merged, x, labels = pam_merged("lenet")  # conv → ReLU: the gate sits at the conv output
    batches = [(x[i : i + 8], {t: labels[t][i : i + 8] for t in "AB"}) for i in (0, 8, 16)]
    scores = recorded(merged, batches)
    modules = {
        (layer, group): module
        for layer, groups in merged.layer_groups().items()
        if layer not in merged.output_layer_names
        for group, module in groups.items()
    }
    reference = reference_gates(merged, batches, modules)
    assert set(reference) == {(layer, g) for layer in scores for g in scores[layer]}
    for (layer, group), expected in reference.items():
        assert torch.allclose(scores[layer][group], expected, rtol=1e-9, atol=1e-12)


class InPlace(nn.Module):
    """conv → in-place LeakyReLU (no BatchNorm) → linear: the recorded output must be the conv's."""

    def __init__(self, classes: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.fc = nn.Linear(4 * 16, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.act(self.conv(x)), 1))


def test_an_in_place_activation_after_the_layer_neither_changes_outputs_nor_scores() -> None:
    networks = {"A": InPlace(3, 0).double().eval(), "B": InPlace(2, 1).double().eval()}
    x = torch.randn(12, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    merged = build_merged(networks, x)
    batches = task_batches(x, merged)
    plain = merged(x)
    with GateRecorder(merged):
        hooked = merged(x)
    for t in merged.tasks:
        assert torch.equal(plain[t], hooked[t])
    scores = recorded(merged, batches)
    modules = {("conv", g): m for g, m in merged.layer_groups()["conv"].items()}
    for (layer, group), expected in reference_gates(merged, batches, modules).items():
        assert torch.allclose(scores[layer][group], expected, rtol=1e-9, atol=1e-12)


def test_two_batches_accumulate_as_their_mean_and_evaluation_is_not_counted() -> None:
    merged, x = partly_shared()
    batches = task_batches(x, merged)
    one = [recorded(merged, [b]) for b in batches[:2]]
    with GateRecorder(merged) as gates:
        with torch.no_grad():
            merged(x)  # an evaluation inside the block: not a batch
        for inputs, targets in batches[:2]:
            outputs = merged(inputs)
            sum(F.cross_entropy(outputs[t], y) for t, y in targets.items()).backward()  # type: ignore[union-attr]
    assert gates.batches == 2
    both = gates.scores()
    for layer, groups in both.items():
        for group, value in groups.items():
            mean = (one[0][layer][group] + one[1][layer][group]) / 2
            assert torch.allclose(value, mean, rtol=1e-12, atol=1e-15)


def test_recording_while_training_leaves_hooks_off_afterwards() -> None:
    merged, x = partly_shared()
    batches = task_batches(x, merged)
    with GateRecorder(merged) as gates:
        retrain(merged, batches, summed(merged), optimizer="sgd", lr=0.01, nesterov=True,
                inplace=True, progress=False)  # fmt: skip
    assert gates.batches == len(batches)
    assert not any(m._forward_hooks for m in merged.modules())
    assert not merged._forward_pre_hooks


def test_no_recorded_batch_is_a_clear_error() -> None:
    merged, x = partly_shared()
    with GateRecorder(merged) as gates, torch.no_grad():
        merged(x)
    with pytest.raises(RuntimeError, match="saw no forward with gradients"):
        gates.scores()
    with pytest.raises(TypeError, match="MergedNetwork"):
        GateRecorder(nn.Linear(2, 2))  # type: ignore[arg-type]


# ------------------------------------------------------------------ the global threshold


def hand_scores(merged: MergedNetwork) -> dict[str, dict[str, Tensor]]:
    """Layer "0" scores 0..n, layer "4" scores 100.. : a global threshold takes layer 0 first."""
    sizes = merged.group_sizes()
    scores: dict[str, dict[str, Tensor]] = {}
    offset = {"0": 0.0, "4": 100.0}
    start = 0.0
    for layer in ("0", "4"):
        scores[layer] = {}
        for group, width in sizes[layer].items():
            scores[layer][group] = offset[layer] + start + torch.arange(width, dtype=torch.float64)
            start += width
    return scores


def test_one_threshold_across_layers_over_the_shared_groups_only() -> None:
    merged, _ = partly_shared()  # one shared group per hidden layer (12 and 9 neurons)
    chosen = pruned_groups_of(merged, "shared")
    assert all(len(merged.group_tasks[g]) >= 2 for groups in chosen.values() for g in groups)
    shared_total = sum(merged.group_sizes()[layer][g] for layer, gs in chosen.items() for g in gs)
    keep = gate_keep(merged, hand_scores(merged), 0.5, pruned_groups="shared")
    assert set(keep) == set(chosen)
    removed = {layer: sum(int((~k).sum()) for k in g.values()) for layer, g in keep.items()}
    # ranked globally: the lowest half of all shared neurons go, all from layer "0" first
    threshold_index = int(shared_total * 0.5)
    assert sum(removed.values()) == threshold_index + 1  # ties at the threshold go too
    assert removed["4"] <= removed["0"]
    everything = gate_keep(merged, hand_scores(merged), 0.5, pruned_groups="all")
    assert {g for groups in everything.values() for g in groups} > {
        g for groups in keep.values() for g in groups
    }


def test_a_group_left_empty_keeps_its_best_neuron_and_zero_keeps_all() -> None:
    merged, _ = partly_shared()
    scores = {layer: {g: torch.zeros_like(s) for g, s in groups.items()}
              for layer, groups in hand_scores(merged).items()}  # fmt: skip
    keep = gate_keep(merged, scores, 0.2, pruned_groups="all")  # every score ties: all go
    assert all(int(k.sum()) == 1 for groups in keep.values() for k in groups.values())
    untouched = gate_keep(merged, hand_scores(merged), 0.0, pruned_groups="all")
    assert all(bool(k.all()) for groups in untouched.values() for k in groups.values())


def test_gate_keep_rejects_bad_arguments() -> None:
    merged, _ = partly_shared()
    scores = hand_scores(merged)
    for fraction in (1.0, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match="fraction"):
            gate_keep(merged, scores, fraction)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pruned_groups"):
        gate_keep(merged, scores, 0.1, pruned_groups="exclusive")
    broken = {"0": scores["0"], "4": {g: s[:-1] for g, s in scores["4"].items()}}
    with pytest.raises(ValueError, match="layer '4'"):
        gate_keep(merged, broken, 0.1, pruned_groups="all")


# ------------------------------------------------------------------ physical pruning


@pytest.mark.parametrize("name", ["lenet", "resnet", "functional"])
def test_prune_merged_gates_removes_shared_neurons_and_keeps_exclusive_ones(name: str) -> None:
    merged, x, labels = pam_merged(name)
    batches = [(x[i : i + 8], {t: labels[t][i : i + 8] for t in "AB"}) for i in (0, 8, 16)]
    before = snapshot({"m": merged})
    pruned = prune_merged_gates(merged, x[:2], data=batches, losses=summed(merged),
                                pruning_ratio=0.3)  # fmt: skip
    assert_unchanged({"m": merged}, before)
    assert network_cost(pruned, x[:1]).macs < network_cost(merged, x[:1]).macs
    old, new = merged.group_sizes(), pruned.group_sizes()
    assert list(new) == list(old)
    for layer in old:
        for group in old[layer]:
            if len(merged.group_tasks[group]) < 2:  # exclusive groups and outputs: untouched
                assert new[layer][group] == old[layer][group], (layer, group)
    pruned.eval()
    full = pruned(x)
    for task in pruned.tasks:
        assert torch.allclose(pruned.for_tasks([task])(x)[task], full[task], atol=1e-12)


def test_pruned_copy_computes_the_masked_network() -> None:
    merged, x = partly_shared()
    merged.eval()
    keep = {"0": {g: torch.arange(w) % 2 == 0 for g, w in merged.group_sizes()["0"].items()}}
    compact = remove_neurons(merged, x[:2], keep)
    assert all(compact.group_sizes()["0"][g] == (w + 1) // 2
               for g, w in merged.group_sizes()["0"].items())  # fmt: skip
    reference = copy.deepcopy(merged)  # the removed neurons' rows, bias and BN affine zeroed
    with torch.no_grad():
        for group, kept in keep["0"].items():
            for part in reference.layer_groups()["0"][group].parts.values():
                part.weight[~kept] = 0.0
                if part.bias is not None:
                    part.bias[~kept] = 0.0
            bn = reference.groups("1")[group]
            bn.weight[~kept] = 0.0
            bn.bias[~kept] = 0.0
    expected, got = reference(x), compact.eval()(x)
    for task in merged.tasks:
        assert torch.allclose(got[task], expected[task], atol=1e-10)


def test_a_single_network_is_pruned_everywhere_through_the_registry() -> None:
    merged, x = partly_shared()
    single = merged.for_tasks(["A"])
    batches = [(xb, {"A": y["A"]}) for xb, y in task_batches(x, merged)]
    assert pruned_groups_of(single, "shared") == pruned_groups_of(single, "all")
    pruned = build({"prune": "merged-gates", "framework": "torch_pruning"}, model=single,
                   example_inputs=x[:2], data=batches, losses={"A": F.cross_entropy},
                   pruning_ratio=0.25)  # fmt: skip
    old, new = single.group_sizes(), pruned.group_sizes()
    hidden = [layer for layer in old if layer not in single.output_layer_names]
    assert sum(sum(new[layer].values()) for layer in hidden) < sum(
        sum(old[layer].values()) for layer in hidden
    )
    costs = combination_costs(pruned, x[:1])
    assert list(costs) == [frozenset("A")]


def test_accept_deletes_whole_groups_afterwards() -> None:
    merged, x = partly_shared()
    batches = task_batches(x, merged)
    pruned = prune_merged_gates(merged, x[:2], data=batches, losses=summed(merged),
                                pruning_ratio=0.1, accept=lambda m: True)  # fmt: skip
    assert sum(len(g) for g in pruned.group_sizes().values()) < sum(
        len(g) for g in merged.group_sizes().values()
    )


def test_bad_inputs_name_the_problem() -> None:
    merged, x = partly_shared()
    with pytest.raises(TypeError, match="MergedNetwork"):
        prune_merged_gates(nn.Linear(2, 2), x[:2], data=[], losses={})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pruning_ratio"):
        prune_merged_gates(merged, x[:2], data=[], losses={}, pruning_ratio=1.0)  # before training
    with pytest.raises(ValueError, match="pruned_groups"):
        prune_merged_gates(merged, x[:2], data=[], losses={}, pruned_groups="exclusive")
    with pytest.raises(ValueError, match="not a hidden layer"):
        remove_neurons(merged, x[:2], {"6": {}})
    with pytest.raises(ValueError, match="keeps no neuron"):
        remove_neurons(merged, x[:2], {"0": {"shared": torch.zeros(12, dtype=torch.bool)}})
    with pytest.raises(ValueError, match="bool tensor of shape"):
        remove_neurons(merged, x[:2], {"0": {g: torch.ones(2) for g in merged.group_sizes()["0"]}})
    with pytest.raises(ValueError, match="nesterov=True needs optimizer='sgd'"):
        retrain(merged, task_batches(x, merged), summed(merged), nesterov=True, progress=False)
    with pytest.raises(TypeError, match="nesterov must be a bool"):
        retrain(merged, task_batches(x, merged), summed(merged), optimizer="sgd",
                nesterov=1, progress=False)  # type: ignore[arg-type]  # fmt: skip
