"""MTZ as released: the ``W_inter`` wiring against a literal port of the authors' code, share tables."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from pam_plugin import MergedNetwork, MTZMerger, MTZResult, network_cost
from tests.test_pam_networks import assert_unchanged, inputs_for, networks_for, snapshot

WIDTHS = (4, 6, 5, 4)
"""The tiny chain: input 4, hidden 6, 5, 4 (ReLU), then the task head."""


def chain(classes: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for cin, cout in zip(WIDTHS[:-1], WIDTHS[1:], strict=True):
        layers += [nn.Linear(cin, cout), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(WIDTHS[-1], classes)).double().eval()


def chain_networks() -> dict[str, nn.Module]:
    return {"A": chain(3, 0), "B": chain(4, 1)}


def chain_inputs(count: int = 40) -> Tensor:
    return torch.randn(count, WIDTHS[0], generator=torch.Generator().manual_seed(3)).double()


# ---------------------------------------------------------------- a literal port of the released code


def _greedy(costs: Tensor) -> list[tuple[int, int]]:
    """``Final_merge_Exp1.py``: sorted costs, a pair kept when neither index is used yet."""
    pairs: list[tuple[int, int]] = []
    width = costs.shape[1]
    for flat in torch.argsort(costs.flatten()).tolist():
        i, j = divmod(flat, width)
        if all(i != a and j != b for a, b in pairs):
            pairs.append((i, j))
    return pairs


def released_port(networks: dict[str, nn.Module], x: Tensor, counts: list[int]):
    """The authors' two-network procedure on a chain of linear layers, and its forward.

    Per layer: ``H`` from the merged part of the layer input of each task's
    current network (``layer_inputs``); ``H_hat = (H_A⁻¹ + H_B⁻¹)⁻¹``; cost
    ``½ dᵀ H_hat d`` and merged vector ``Wb_A + H_A⁻¹ H_hat (Wb_B − Wb_A)`` on the
    first ``last_kernel_nb`` input columns; ``W_inter`` = each network's own
    weights from its unmerged inputs; the next layer's columns reordered
    ``[merged; unmerged]``. Forward (``models_merged_construct_dropout.py``):
    ``y_t = [relu(y_t W_mi_t + b_merged); relu(y_t W_t + b_t)]``.
    """
    tasks = ["A", "B"]
    linears = {t: [m for m in networks[t] if isinstance(m, nn.Linear)] for t in tasks}
    weights = {t: [m.weight.detach().clone() for m in linears[t]] for t in tasks}
    biases = {t: [m.bias.detach().clone() for m in linears[t]] for t in tasks}
    merged_in = {t: x for t in tasks}  # layer_inputs: the merged part of each task's input
    y = {t: x for t in tasks}  # the whole input, [merged; task-specific]
    last = x.shape[1]
    all_pairs = []
    for layer, count in enumerate(counts):
        h = {}
        for t in tasks:
            a = torch.cat([merged_in[t], torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
            h[t] = a.T @ a / x.shape[0]
        inv = {t: torch.linalg.inv(h[t]) for t in tasks}
        h_hat = torch.linalg.inv(inv["A"] + inv["B"])
        mtx_a = inv["A"] @ h_hat
        wb = {
            t: torch.cat([weights[t][layer][:, :last], biases[t][layer][:, None]], 1) for t in tasks
        }
        size = wb["A"].shape[0]
        costs = torch.zeros(size, size, dtype=x.dtype)
        vectors = {}
        for i in range(size):
            for j in range(size):
                d = wb["A"][i] - wb["B"][j]
                costs[i, j] = 0.5 * d @ h_hat @ d
                vectors[i, j] = wb["A"][i] + mtx_a @ (wb["B"][j] - wb["A"][i])
        pairs = _greedy(costs)[:count]
        all_pairs.append(pairs)
        merged = torch.stack([vectors[p] for p in pairs])
        w_merged, b_merged = merged[:, :-1], merged[:, -1]
        for position, t in enumerate(tasks):
            rows = [p[position] for p in pairs]
            rest = [i for i in range(size) if i not in rows]
            w_inter = weights[t][layer][rows, last:]
            w_mi = torch.cat([w_merged, w_inter], dim=1)
            merged_out = torch.relu(y[t] @ w_mi.T + b_merged)
            own = torch.relu(y[t] @ weights[t][layer][rest].T + biases[t][layer][rest])
            merged_in[t], y[t] = merged_out, torch.cat([merged_out, own], dim=1)
            order = rows + rest  # index_Face / index_imageNet: the next layer's columns
            weights[t][layer + 1] = weights[t][layer + 1][:, order]
        last = count
    outputs = {t: y[t] @ weights[t][-1].T + biases[t][-1] for t in tasks}
    return all_pairs, outputs


def test_released_wiring_equals_a_literal_port_of_the_authors_code() -> None:
    networks, x = chain_networks(), chain_inputs()
    shares = {"0": 0.5, "2": 0.4, "4": 0.5}  # 3 of 6, 2 of 5, 2 of 4: every later layer per task
    before = snapshot(networks)
    result = MTZMerger(share=shares, wiring="released", damping=0.0).zip(networks, x)
    assert_unchanged(networks, before)
    pairs, expected = released_port(networks, x, [3, 2, 2])
    for layer, layer_pairs in zip(shares, pairs, strict=True):
        assert [(dict(n)["A"], dict(n)["B"]) for n in result.zipped[layer]] == layer_pairs
    outputs = result.network.eval()(x)
    for task in networks:
        assert torch.allclose(outputs[task], expected[task], atol=1e-9, rtol=1e-9)
        assert not torch.allclose(outputs[task], networks[task](x), atol=1e-3)  # it zipped
    pam = MTZMerger(share=shares, damping=0.0).merge(networks, x).eval()(x)
    assert not torch.allclose(pam["A"], outputs["A"], atol=1e-3)  # the wirings differ


def test_released_wiring_groups_zipped_neurons_by_what_they_read() -> None:
    networks, x = networks_for("lenet"), inputs_for("lenet", 16)
    sizes = MTZMerger(share=0.5, wiring="released").merge(networks, x).group_sizes()
    assert sizes["0"] == {"shared": 2, "A": 2, "B": 2}  # reads the input: one shared group
    assert sizes["3"] == {"A": 6, "B": 6}  # reads task-specific inputs: one copy per task
    assert sizes["7"] == {"A": 16, "B": 16}
    full = MTZMerger(share={"0": 1.0, "3": 0.5, "7": 0.5}, wiring="released").merge(networks, x)
    assert full.group_sizes()["3"] == {"shared": 3, "A": 3, "B": 3}  # all its inputs shared


@pytest.mark.parametrize("name", ["lenet", "mlp", "functional"])
def test_released_wiring_zips_identical_networks_exactly(name: str) -> None:
    networks, x = networks_for(name, same=True), inputs_for(name, 16)
    reference = networks["A"](x)
    released = MTZMerger(share=0.5, wiring="released").merge(networks, x).eval()(x)
    pam = MTZMerger(share=0.5).merge(networks, x).eval()(x)
    for task in networks:
        assert torch.allclose(released[task], reference, atol=1e-9, rtol=0)
    assert not torch.allclose(pam["A"], reference, atol=1e-3)  # PAM's wiring cuts W_inter


@pytest.mark.parametrize("wiring", ["pam", "released"])
@pytest.mark.parametrize("name", ["lenet", "mlp"])
def test_share_zero_is_the_original_networks(wiring: str, name: str) -> None:
    networks, x = networks_for(name, ("A", "B", "C")), inputs_for(name, 16)
    called: list[str] = []

    def record(network: MergedNetwork, layer: str) -> None:
        called.append(layer)

    for share in (0.0, {}, (0.0,) * (3 if name == "lenet" else 2)):
        result = MTZMerger(share=share, wiring=wiring, finetune=record).zip(networks, x)  # type: ignore[arg-type]
        outputs = result.network.eval()(x)
        assert all(not zipped for zipped in result.zipped.values())
        for task, network in networks.items():
            assert torch.allclose(outputs[task], network(x), atol=1e-10, rtol=0)
    assert called == []


def test_released_network_runs_task_subsets_alone() -> None:
    networks, x = networks_for("lenet", ("A", "B", "C")), inputs_for("lenet", 16)
    merged = MTZMerger(share=0.5, wiring="released").merge(networks, x).eval()
    outputs = merged(x)
    alone = merged.for_tasks(["B"])
    assert torch.allclose(alone(x)["B"], outputs["B"], atol=1e-12)
    assert network_cost(alone, x).macs < network_cost(merged, x).macs


# ---------------------------------------------------------------- the share table


def test_share_table_is_honoured_per_layer() -> None:
    networks, x = networks_for("lenet"), inputs_for("lenet", 16)
    table = {"0": 0.5, "3": 1 / 3, "7": 0.25}  # 2 of 4, 2 of 6, 4 of 16
    expected = {"0": 2, "3": 2, "7": 4}
    for wiring in ("pam", "released"):
        for share in (table, tuple(table.values())):
            result = MTZMerger(share=share, wiring=wiring).zip(networks, x)  # type: ignore[arg-type]
            assert isinstance(result, MTZResult)
            assert {layer: len(n) for layer, n in result.zipped.items()} == expected
            for neurons in result.zipped.values():  # one-to-one: each neuron zipped at most once
                for position in range(2):
                    members = [n[position] for n in neurons]
                    assert len(set(members)) == len(members)
            if wiring == "pam":
                sizes = result.network.group_sizes()
                assert {layer: sizes[layer]["shared"] for layer in expected} == expected
    sizes = MTZMerger(share={"3": 0.5}).merge(networks, x).group_sizes()  # nothing below "3"
    assert sizes["3"] == {"A": 6, "B": 6}


@pytest.mark.parametrize(
    ("share", "error", "match"),
    [
        (
            {"conv9": 0.5},
            ValueError,
            r"unknown layer.*'conv9'.*mergeable layers are \['0', '3', '7'\]",
        ),
        ({"9": 0.5}, ValueError, r"'9'\] write the task outputs"),
        ((0.5, 0.5), ValueError, r"2 entries but .* 3 mergeable layers \['0', '3', '7'\]"),
        ({"0": 0.0, "3": 0.5}, ValueError, r"none of '0'.*give '0' a share of at least 1/4"),
        ({"0": 0.1, "3": 0.5}, ValueError, r"none of '0'"),  # round(0.1 · 4) = 0
    ],
)
def test_bad_share_tables_name_the_fix(share: object, error: type, match: str) -> None:
    networks, x = networks_for("lenet"), inputs_for("lenet", 16)
    with pytest.raises(error, match=match):
        MTZMerger(share=share, wiring="released").merge(networks, x)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"share": 1.5}, ValueError, r"share must be in \[0.0, 1.0\]"),
        ({"share": {"0": -0.1}}, ValueError, r"share\['0'\] must be in"),
        ({"share": (0.5, "half")}, TypeError, r"share\[1\] must be a float"),
        ({"share": {0: 0.5}}, TypeError, r"layer module names \(str\)"),
        ({"share": "0.5"}, TypeError, r"got the string '0.5'"),
        ({"wiring": "official"}, ValueError, r"wiring must be one of \['pam', 'released'\]"),
        ({"fc_cost": "l2"}, ValueError, r"fc_cost must be one of \['hessian', 'euclidean'\]"),
        ({"finetune": 100}, TypeError, r"MTZFinetuning\(batches, losses"),
    ],
)
def test_bad_options_are_clear_errors(options: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        MTZMerger(**options)


def test_released_wiring_rejects_residual_stages() -> None:
    networks, x = networks_for("resnet"), inputs_for("resnet", 8)
    with pytest.raises(TypeError, match="use wiring='pam' without finetune"):
        MTZMerger(share=0.5, wiring="released").merge(networks, x)
    assert isinstance(MTZMerger(share=0.5).merge(networks, x), MergedNetwork)


# ---------------------------------------------------------------- the released FC rule


def test_euclidean_fc_cost_pairs_by_distance() -> None:
    networks, x = chain_networks(), chain_inputs()
    rows = {
        t: torch.cat([n[0].weight, n[0].bias[:, None]], 1).detach() for t, n in networks.items()
    }
    expected = _greedy(torch.cdist(rows["A"], rows["B"]))[:3]
    hessian = MTZMerger(share={"0": 0.5}).zip(networks, x).zipped["0"]
    for wiring in ("pam", "released"):
        merger = MTZMerger(share={"0": 0.5}, fc_cost="euclidean", wiring=wiring)  # type: ignore[arg-type]
        zipped = merger.zip(networks, x).zipped["0"]
        assert [(dict(n)["A"], dict(n)["B"]) for n in zipped] == expected
    assert [(dict(n)["A"], dict(n)["B"]) for n in hessian] != expected  # the rules differ here


def test_euclidean_fc_cost_averages_the_layer_after_a_flatten() -> None:
    networks, x = networks_for("lenet"), inputs_for("lenet", 16)
    result = MTZMerger(share=1.0, fc_cost="euclidean").zip(networks, x)
    part = result.network.layer_groups()["7"]["shared"].parts["shared"]
    inputs = [dict(n) for n in result.zipped["3"]]
    weights = {t: n[7].weight.detach().reshape(16, 6, 4) for t, n in networks.items()}
    for row, neuron in enumerate(result.zipped["7"]):
        i, j = dict(neuron)["A"], dict(neuron)["B"]
        a = weights["A"][i][[m["A"] for m in inputs]]
        b = weights["B"][j][[m["B"] for m in inputs]]
        assert torch.allclose(part.weight[row].reshape(6, 4), (a + b) / 2, atol=1e-12)
        expected_bias = (networks["A"][7].bias[i] + networks["B"][7].bias[j]) / 2
        assert torch.allclose(part.bias[row], expected_bias, atol=1e-12)
