"""Reading a network's torch.fx graph into an :class:`~pam_plugin.architecture.Architecture`.

Each fx node becomes a step: conv/linear modules are layers (a new channel
space), per-channel modules and functions keep their input's space, a Flatten
multiplies the elements per channel, an addition joins its operands' spaces
(union-find). Unsupported nodes raise a ``TypeError`` that names the node, the
layer and what is supported.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from pam_plugin.architecture import Architecture, Space, SpaceRole, Step, StepKind, layer_width

__all__ = ["SUPPORTED", "parse_architecture", "trace_network"]

LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)
"""Layers whose neurons are merged: each opens a channel space."""
ACTIVATION_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus,
)  # fmt: skip
POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
NORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d)

ACTIVATION_FUNCTIONS: dict[Any, Callable[..., Tensor]] = {
    f: f
    for f in (
        F.relu,
        torch.relu,
        F.relu6,
        F.leaky_relu,
        F.elu,
        F.gelu,
        F.silu,
        F.mish,
        F.hardswish,
        F.hardtanh,
        F.softplus,
        torch.sigmoid,
        torch.tanh,
        F.sigmoid,
        F.tanh,
    )  # fmt: skip
}
ACTIVATION_METHODS: dict[str, Callable[..., Tensor]] = {
    "relu": torch.relu, "relu_": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
}  # fmt: skip
_MAX = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVG = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
POOL_FUNCTIONS: dict[Any, tuple[type[nn.Module], tuple[str, ...]]] = {
    F.max_pool1d: (nn.MaxPool1d, _MAX), F.max_pool2d: (nn.MaxPool2d, _MAX),
    F.avg_pool1d: (nn.AvgPool1d, _AVG[:5]), F.avg_pool2d: (nn.AvgPool2d, _AVG),
    F.adaptive_avg_pool1d: (nn.AdaptiveAvgPool1d, ("output_size",)),
    F.adaptive_avg_pool2d: (nn.AdaptiveAvgPool2d, ("output_size",)),
    F.adaptive_max_pool1d: (nn.AdaptiveMaxPool1d, ("output_size", "return_indices")),
    F.adaptive_max_pool2d: (nn.AdaptiveMaxPool2d, ("output_size", "return_indices")),
}  # fmt: skip
"""Pooling functions → the module replacing them in a merged network, and their argument names."""
DROPOUT_FUNCTIONS: dict[Any, type[nn.Module]] = {
    F.dropout: nn.Dropout, F.dropout1d: nn.Dropout1d, F.dropout2d: nn.Dropout2d,
    F.alpha_dropout: nn.AlphaDropout,
}  # fmt: skip
ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
ADD_METHODS = ("add", "add_", "__add__", "__iadd__")
FLATTEN_METHODS = ("flatten", "view", "reshape")
PASS_METHODS = ("contiguous",)

SUPPORTED = (
    "Conv1d/Conv2d (groups=1 or depthwise), Linear, BatchNorm1d/2d, element-wise activations, "
    "max/avg/adaptive pooling, Flatten(start_dim=1), Dropout, Identity and residual additions"
)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        self.parent[max(ra, rb)] = min(ra, rb)
        return min(ra, rb)


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def trace_network(
    network: nn.Module, example_inputs: Tensor, *, name: str = "network"
) -> tuple[Architecture, fx.GraphModule]:
    """Trace ``network`` (used as is: pass a copy in eval mode) → (architecture, graph module).

    ``example_inputs``: ``(B, ...)``, the network's single input (B >= 1).
    """
    if not isinstance(network, nn.Module):
        raise TypeError(f"network {name!r} must be a torch.nn.Module, got {type(network).__name__}")
    try:
        graph_module = fx.symbolic_trace(network)
    except Exception as error:  # fx raises many types; all mean "not traceable"
        raise TypeError(
            f"network {name!r} cannot be traced by torch.fx ({type(error).__name__}: {error}); "
            "PAM reads the architecture from the fx graph: remove data-dependent Python control "
            "flow from its forward"
        ) from error
    with torch.no_grad():
        ShapeProp(graph_module).propagate(example_inputs)
    return _GraphReader(graph_module, name).read(), graph_module


def parse_architecture(network: nn.Module, example_inputs: Tensor) -> Architecture:
    """The :class:`Architecture` of ``network`` (traced on an eval-mode copy; the network is untouched)."""
    return trace_network(copy.deepcopy(network).eval(), example_inputs)[0]


class _GraphReader:
    """One pass over an fx graph (with shapes) that collects steps, spaces and a signature."""

    def __init__(self, graph_module: fx.GraphModule, network: str) -> None:
        self.graph_module = graph_module
        self.network = network
        self.modules = dict(graph_module.named_modules())
        self.spaces = _UnionFind()
        self.steps: list[dict[str, Any]] = []
        self.space_of: dict[str, int] = {}
        self.factor_of: dict[str, int] = {}
        self.alias: dict[str, str] = {}
        self.signature: list[str] = []
        self.used_targets: set[str] = set()
        self.input_node = self.output_node = ""

    def unsupported(self, node: fx.Node, what: str) -> TypeError:
        return TypeError(
            f"network {self.network!r}: {what} at node {node.name!r} is not supported by PAM "
            f"merging; supported: {SUPPORTED}. Replace it by a supported layer, or keep it outside "
            "the networks given to merge (e.g. apply it to the merged network's outputs)"
        )

    def source(self, node: fx.Node, arg: Any) -> str:
        if not isinstance(arg, fx.Node) or (
            arg.name not in self.space_of and arg.name not in self.alias
        ):
            raise self.unsupported(node, f"an input that is not a tensor of the network ({arg!r})")
        return self.alias.get(arg.name, arg.name)

    def add_step(
        self, node: fx.Node, kind: StepKind, src: str, *, new_space: bool = False, **extra: Any
    ) -> None:
        factor = extra.pop("factor", self.factor_of[src])
        space = self.spaces.add() if new_space else self.space_of[src]
        self.space_of[node.name] = space
        self.factor_of[node.name] = factor
        self.steps.append(
            dict(node=node.name, kind=kind, inputs=(src,), space=space, factor=factor, **extra)
        )
        shape = _shape(node)
        module = self.modules[extra["target"]] if extra.get("target") else extra.get("replacement")
        if module is not None:
            what = repr(module)
        else:
            function = extra.get("function")
            what = f"{getattr(function, '__name__', kind)}{extra.get('args', ())}{extra.get('kwargs', ())}"
        self.signature.append(f"{kind} {what} {shape[1:] if shape else ''}")

    def read(self) -> Architecture:
        for node in self.graph_module.graph.nodes:
            if node.op == "placeholder":
                if self.input_node:
                    raise self.unsupported(node, "a second input")
                self.input_node = node.name
                self.space_of[node.name] = self.spaces.add()
                self.factor_of[node.name] = 1
            elif node.op == "output":
                result = node.args[0]
                if _shape(result) is None:
                    raise self.unsupported(
                        node, f"an output that is not a single tensor ({result!r})"
                    )
                self.output_node = self.alias.get(result.name, result.name)
            elif node.op == "get_attr":
                raise self.unsupported(node, f"a direct use of the parameter {node.target!r}")
            elif _shape(node) is not None:  # else a shape query such as x.size(0), feeding a view
                self.read_call(node)
        if not self.output_node or self.output_node == self.input_node:
            raise TypeError(
                f"network {self.network!r} has no layer between its input and its output"
            )
        return self.finish()

    def read_call(self, node: fx.Node) -> None:
        inputs = [a for a in (*node.args, *node.kwargs.values()) if _shape(a) is not None]
        if node.target in ADD_FUNCTIONS or (
            node.op == "call_method" and node.target in ADD_METHODS
        ):
            self.read_add(node, inputs)
            return
        src = self.source(node, node.args[0] if node.args else None)
        if len(inputs) != 1:
            raise self.unsupported(
                node, f"{node.op} {node.target!r} with {len(inputs)} tensor inputs"
            )
        if node.op == "call_module":
            self.read_module(node, self.modules[str(node.target)], src)
        elif node.op == "call_function":
            self.read_function(node, src)
        else:
            self.read_method(node, src)

    def read_module(self, node: fx.Node, module: nn.Module, src: str) -> None:
        target = str(node.target)
        if target in self.used_targets and any(True for _ in module.parameters()):
            raise self.unsupported(node, f"module {target!r} called twice (shared weights)")
        self.used_targets.add(target)
        factor = self.factor_of[src]
        if isinstance(module, nn.Identity):
            self.alias[node.name] = src
        elif isinstance(module, nn.Conv1d | nn.Conv2d):
            if factor != 1:
                raise self.unsupported(node, f"conv {target!r} after a Flatten")
            if module.groups == 1:
                self.add_step(node, "layer", src, new_space=True, target=target, factor=1)
            elif module.groups == module.in_channels == module.out_channels:
                self.add_step(node, "module", src, target=target, per_channel=True)
            else:
                raise self.unsupported(node, f"grouped conv {target!r} (groups={module.groups})")
        elif isinstance(module, nn.Linear):
            source_shape = _shape(node.args[0]) or ()
            if len(source_shape) != 2 or source_shape[1] % max(1, factor) != 0:
                raise self.unsupported(
                    node, f"Linear {target!r} on a tensor that is not (batch, features)"
                )
            self.add_step(node, "layer", src, new_space=True, target=target, factor=1)
        elif isinstance(module, NORM_MODULES):
            self.add_step(node, "module", src, target=target, per_channel=True)
        elif isinstance(module, ACTIVATION_MODULES):
            self.add_step(node, "module", src, target=target, records=True)
        elif isinstance(module, (*POOL_MODULES, *DROPOUT_MODULES)):
            self.add_step(node, "module", src, target=target)
        elif isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1:
            self.add_step(node, "module", src, target=target, factor=self.flat_factor(node, factor))
        else:
            raise self.unsupported(node, f"layer {target!r} ({type(module).__name__})")

    def flat_factor(self, node: fx.Node, factor: int) -> int:
        source_shape, out = _shape(node.args[0]), _shape(node)
        if source_shape is None or out is None or len(out) != 2 or out[0] != source_shape[0]:
            raise self.unsupported(node, f"a reshape to {out} (only (batch, features) is)")
        spatial = 1
        for side in source_shape[2:]:
            spatial *= side
        return factor * spatial

    def read_function(self, node: fx.Node, src: str) -> None:
        target = node.target
        kwargs = tuple(sorted((k, v) for k, v in node.kwargs.items() if k != "inplace"))
        if target in ACTIVATION_FUNCTIONS:
            self.add_step(
                node,
                "function",
                src,
                function=target,
                args=node.args[1:],
                kwargs=kwargs,
                records=True,
            )
        elif target in POOL_FUNCTIONS:  # as a module: the functional max-pools do not pickle
            module, names = POOL_FUNCTIONS[target]
            options = {**dict(zip(names, node.args[1:], strict=False)), **dict(kwargs)}
            self.add_step(node, "module", src, replacement=module(**options))
        elif target in DROPOUT_FUNCTIONS:
            p = node.args[1] if len(node.args) > 1 else node.kwargs.get("p", 0.5)
            self.add_step(node, "module", src, replacement=DROPOUT_FUNCTIONS[target](p))
        elif target is torch.flatten:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            if start != 1 or end != -1:
                raise self.unsupported(node, "torch.flatten with start_dim != 1 or end_dim != -1")
            self.read_flatten(node, src)
        else:
            raise self.unsupported(node, f"function {getattr(target, '__name__', target)}")

    def read_flatten(self, node: fx.Node, src: str) -> None:
        factor = self.flat_factor(node, self.factor_of[src])
        self.add_step(node, "function", src, function=torch.flatten, args=(1,), factor=factor)

    def read_method(self, node: fx.Node, src: str) -> None:
        method = str(node.target)
        if method in PASS_METHODS:
            self.alias[node.name] = src
        elif method in ACTIVATION_METHODS:
            self.add_step(node, "function", src, function=ACTIVATION_METHODS[method], records=True)
        elif method in FLATTEN_METHODS and (method != "flatten" or node.args[1:2] == (1,)):
            self.read_flatten(node, src)
        else:
            raise self.unsupported(node, f"method .{method}()")

    def read_add(self, node: fx.Node, inputs: Sequence[Any]) -> None:
        if len(inputs) != 2 or len(node.args) != 2 or node.kwargs:
            raise self.unsupported(node, "an addition that is not `a + b` of two tensors")
        a, b = (self.source(node, arg) for arg in node.args)
        if _shape(node.args[0]) != _shape(node.args[1]) or self.factor_of[a] != self.factor_of[b]:
            raise self.unsupported(
                node, "an addition of tensors of different shapes (broadcasting)"
            )
        space = self.spaces.union(self.space_of[a], self.space_of[b])
        self.space_of[node.name] = space
        self.factor_of[node.name] = self.factor_of[a]
        self.steps.append(
            dict(node=node.name, kind="add", inputs=(a, b), space=space, factor=self.factor_of[a])
        )
        self.signature.append(f"add {_shape(node)}")

    def finish(self) -> Architecture:
        """Number the spaces 0 (input), 1, 2, ... in order of appearance; describe each."""
        find = self.spaces.find
        number: dict[int, int] = {find(self.space_of[self.input_node]): 0}
        for raw in self.steps:
            number.setdefault(find(raw["space"]), len(number))
        steps = tuple(Step(**{**raw, "space": number[find(raw["space"])]}) for raw in self.steps)
        output_space = number[find(self.space_of[self.output_node])]
        input_shape = (
            _shape(next(n for n in self.graph_module.graph.nodes if n.op == "placeholder")) or ()
        )
        if output_space == 0 or len(input_shape) < 2:
            raise TypeError(
                f"network {self.network!r}: its input must be (batch, channels or features, ...) and its "
                "output must come from a layer (not an addition with the input)"
            )
        spaces = [Space(0, input_shape[1], "input", "input", "input", (), ())]
        for index in range(1, len(number)):
            producers = [s for s in steps if s.space == index and s.kind == "layer"]
            if not producers:  # only when an addition joins the input space
                raise TypeError(
                    f"network {self.network!r}: a residual addition of the network input is not supported"
                )
            linear = all(isinstance(self.modules[s.target], nn.Linear) for s in producers)
            role: SpaceRole = "output" if index == output_space else "hidden"
            spaces.append(Space(
                index, layer_width(self.modules[producers[0].target]), role, producers[0].target,
                "linear" if linear else "conv", tuple(s.node for s in producers),
                tuple(s.node for s in steps if s.space == index and s.records),
            ))  # fmt: skip
        # Output layers may differ in width between tasks (their groups are never merged).
        signature = [
            f"{step.kind} output {type(self.modules[step.target]).__name__ if step.target else step.kind}"
            if step.space == output_space
            else line
            for step, line in zip(steps, self.signature, strict=True)
        ]
        return Architecture(
            self.input_node, self.output_node, steps, tuple(spaces), tuple(signature)
        )
