"""The architecture of a network as PAM sees it, found by torch.fx: layers, channel spaces, steps.

A network is traced once (``torch.fx.symbolic_trace``, see
``pam_plugin.tracing``) and its graph is read as a list of :class:`Step` s over **channel spaces**. A space is a set of neurons
(conv channels or linear features) that every tensor computed from them shares:
a conv/linear layer opens a new space; BatchNorm, element-wise activations,
pooling, Flatten, Dropout and depthwise convs keep their input's space; a
residual addition joins its two operands' spaces into one (the neurons of a
ResNet stage are one space, produced by several layers). Merging groups the
neurons of each hidden space; every step of the merged network then runs once
per group.

Supported: Conv1d/Conv2d (``groups=1``, or depthwise), Linear, BatchNorm1d/2d,
element-wise activations (modules or functions), max/avg/adaptive pooling,
Flatten (``start_dim=1``; also ``x.view(x.size(0), -1)``), Dropout, Identity,
residual additions. Anything else raises a ``TypeError`` naming the layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from torch import Tensor, nn

__all__ = [
    "Architecture",
    "Space",
    "Step",
    "check_same_architecture",
    "layer_width",
    "tensor_attribute",
]

StepKind = Literal["layer", "module", "function", "add"]
SpaceRole = Literal["input", "hidden", "output"]


def tensor_attribute(module: nn.Module, name: str) -> Tensor:
    """``module.<name>`` as a Tensor (a parameter or buffer), for type checkers."""
    value = getattr(module, name)
    if not isinstance(value, Tensor):
        raise TypeError(f"{type(module).__name__}.{name} is not a tensor")
    return value


def layer_width(module: nn.Module) -> int:
    """Output channels of a conv, output features of a linear layer."""
    width = module.out_features if isinstance(module, nn.Linear) else module.out_channels
    return int(cast(int, width))


@dataclass(frozen=True)
class Step:
    """One operation of the traced network, applied per group in a merged network.

    ``kind``: ``layer`` (conv/linear: reads groups, writes the groups of a new
    space), ``module`` (a per-channel module: BatchNorm, depthwise conv,
    activation, pooling, dropout, flatten), ``function`` (a functional op of the
    same kinds), ``add`` (residual addition, group by group). ``factor`` is the
    number of elements per channel along dim 1 of the output (``H·W`` after a
    Flatten of a conv map, else 1).
    """

    node: str
    kind: StepKind
    inputs: tuple[str, ...]
    space: int
    factor: int = 1
    target: str = ""
    function: Callable[..., Tensor] | None = None
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    replacement: nn.Module | None = None
    records: bool = False
    per_channel: bool = False


@dataclass(frozen=True)
class Space:
    """A channel space: ``size`` neurons shared by every tensor computed from them.

    ``role`` is ``input`` (the network input, never merged), ``output`` (task
    outputs, task groups only) or ``hidden`` (merged). ``producers`` are the
    layer steps writing it (several in a ResNet stage); ``name`` is the module
    name of the first; ``recorders`` are the activation steps whose outputs
    PAM measures; ``layer_type`` picks ``alpha_conv`` or ``alpha_fc``.
    """

    index: int
    size: int
    role: SpaceRole
    name: str
    layer_type: Literal["conv", "linear", "input"]
    producers: tuple[str, ...]
    recorders: tuple[str, ...]


@dataclass(frozen=True)
class Architecture:
    """A traced network: its steps in execution order and its channel spaces."""

    input_node: str
    output_node: str
    steps: tuple[Step, ...]
    spaces: tuple[Space, ...]
    signature: tuple[str, ...]
    _by_node: dict[str, Step] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_node", {s.node: s for s in self.steps})

    def step(self, node: str) -> Step:
        """The step that computes ``node``."""
        return self._by_node[node]

    def space_of(self, node: str) -> Space:
        """The channel space of ``node``'s output."""
        if node == self.input_node:
            return self.spaces[0]
        return self.spaces[self.step(node).space]

    def factor(self, node: str) -> int:
        """Elements per channel along dim 1 of ``node``'s output (``H·W`` after a Flatten)."""
        return 1 if node == self.input_node else self.step(node).factor

    @property
    def hidden_spaces(self) -> tuple[Space, ...]:
        """The spaces whose neurons are merged, in execution order."""
        return tuple(s for s in self.spaces if s.role == "hidden")

    @property
    def output_space(self) -> Space:
        """The space of the task output."""
        return self.space_of(self.output_node)


def check_same_architecture(architectures: Sequence[tuple[str, Architecture]]) -> Architecture:
    """Return the common architecture, or raise ``ValueError`` naming the first difference."""
    (first_name, first), *rest = architectures
    for name, other in rest:
        if other.signature == first.signature:
            continue
        for index, (a, b) in enumerate(zip(first.signature, other.signature, strict=False)):
            if a != b:
                raise ValueError(
                    f"networks {first_name!r} and {name!r} have different architectures: step {index} "
                    f"is `{a}` in {first_name!r} but `{b}` in {name!r}; PAM/MTZ merge networks of "
                    "one architecture (same layers, widths and input size)"
                )
        raise ValueError(
            f"networks {first_name!r} and {name!r} have different architectures: {len(first.signature)} "
            f"vs {len(other.signature)} steps; PAM/MTZ merge networks of one architecture"
        )
    return first
