"""Task decomposition: keep only the tasks a device needs, and find what each task uses.

CUT step 1 (the paper; the released code does the same): task k's subnetwork is the backbone plus head k; heads of
tasks that were not selected are dropped for real (the released code only froze
them), so the compact model neither stores nor computes them.

Implementation notes:
- The user's class is kept where it can be: with example inputs, the entries of
  the unselected tasks are deleted from a heads ``nn.ModuleDict`` of a deep copy,
  and the copy is kept when its forward then returns exactly the selected tasks,
  equal to the original's. Otherwise the forward is traced with torch.fx.
- torch.fx's dead-code elimination deletes in-place ops whose result is unused
  (``h.relu_()``, ``nn.ReLU(inplace=True)``...). Here an in-place op is kept when
  the tensor it mutates (or a view it aliases, a model input or a module
  attribute) is still needed; one on a dropped head's own tensors goes with it.
"""

from __future__ import annotations

import copy
import inspect
import operator
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn

from cut_plugin.checks import check_outputs, outputs_of, unwrap_model
from cut_plugin.state import scoring_state
from cut_plugin.vocabulary import Inputs, as_example_inputs, check_tasks, run_model

__all__ = ["autograd_parameters", "select_tasks", "task_parameters"]

_INPLACE_OPERATORS = {
    operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv,
    operator.ifloordiv, operator.imod, operator.ipow, operator.iand, operator.ior,
    operator.ixor, operator.ilshift, operator.irshift, operator.imatmul,
}  # fmt: skip
# Ops whose result may share memory with their first argument: an in-place op on the
# result mutates the argument too.
_VIEW_NAMES = {
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "squeeze", "unsqueeze",
    "transpose", "t", "permute", "expand", "expand_as", "narrow", "select", "split", "chunk",
    "unbind", "movedim", "moveaxis", "swapaxes", "swapdims", "as_strided", "detach", "contiguous",
    "diagonal", "unfold", "getitem", "__getitem__", "getattr", "to", "type", "type_as", "float",
    "double", "half", "bfloat16", "cpu", "cuda", "real", "imag", "view_as_real", "view_as_complex",
}  # fmt: skip
_ALIAS_MODULES = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                  nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)  # fmt: skip


def select_tasks(
    model: nn.Module,
    tasks: Sequence[str],
    *,
    task_names: Sequence[str] | None = None,
    example_inputs: Inputs | None = None,
) -> nn.Module:
    """Return a copy of ``model`` that computes and returns only ``tasks``.

    With ``example_inputs``: when deleting the other tasks' entries of a heads
    ``nn.ModuleDict`` (e.g. ``self.heads``) leaves a forward that returns exactly
    ``tasks``, equal to the original's, the copy is your class (``isinstance`` and
    ``compact.heads["digit"]`` work; its forward re-reads layer attributes after
    pruning). Otherwise, and always without ``example_inputs``, the copy is a
    ``torch.fx.GraphModule``: the forward graph traced, its output restricted to
    ``tasks``, dead code eliminated (in-place ops kept where their effect is used),
    and every submodule that no selected task uses deleted; it returns
    ``{task: Tensor}`` (also for a tuple-output model named by ``task_names``).
    Parameter names are unchanged either way. With ``example_inputs`` the result
    is checked: it must equal the original on the selected tasks.

    When the model cannot be traced, falls back to a deep copy whose ``heads``
    ``nn.ModuleDict`` keeps only the selected entries (with a warning). A
    ``torch.compile``'d or ``DataParallel``-wrapped model is unwrapped (warning).
    The caller's model is never changed.

    Raises:
        ValueError: unknown or empty ``tasks``, or an untraceable model without ``heads``.
        TypeError: a tuple output without ``task_names``, or ``model`` not a Module.
        cut_plugin.checks.TransformCheckError: the copy does not compute the original's
            selected outputs on ``example_inputs``.
    """
    model = unwrap_model(model, operation="select_tasks")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if example_inputs is None:
        return _select_graph(model, tasks, task_names, checked=None)
    example = as_example_inputs(example_inputs, model)
    reference = outputs_of(model, example, task_names)
    selected = check_tasks(tasks, list(reference))
    expected = {task: reference[task] for task in selected}
    kept, why = _keep_class(model, selected, example, expected)
    if kept is not None:
        return kept
    result = _select_graph(model, selected, task_names, checked=why)
    check_outputs(
        "select_tasks",
        result,
        example,
        expected,
        promise="the original model",
        fix=(
            f"the traced graph computes something else (the class could not be kept: {why}); "
            "return {task: head(h) for task, head in self.heads.items()} over an nn.ModuleDict "
            "self.heads so the copy stays your class, or report the op"
        ),
    )
    return result


def _keep_class(
    model: nn.Module, selected: list[str], example: Inputs, expected: Mapping[str, Tensor]
) -> tuple[nn.Module | None, str]:
    """A deep copy without the unselected entries of a task-keyed ModuleDict, if it checks."""
    containers = [
        name
        for name, child in model.named_children()
        if isinstance(child, nn.ModuleDict) and set(selected) <= set(child.keys())
    ]
    if not containers:
        return None, f"{type(model).__name__} has no nn.ModuleDict attribute keyed by the tasks"
    why = ""
    for name in containers:
        result = copy.deepcopy(model)
        heads: nn.ModuleDict = getattr(result, name)
        for key in [k for k in heads if k not in selected]:
            del heads[key]
        try:
            check_outputs("select_tasks", result, example, expected, promise="the original", fix="")
        except Exception as error:  # this container cannot be dropped from: try the next
            text = str(error).removeprefix("select_tasks: the resulting model ").rstrip("; ")
            why = f"without the other entries of self.{name} the forward {text}"
            continue
        return result, ""
    return None, why


def _select_graph(
    model: nn.Module, tasks: Sequence[str], task_names: Sequence[str] | None, *, checked: str | None
) -> nn.Module:
    """The traced route; ``checked``: why the class could not be kept (None: not tried)."""
    try:
        traced = torch.fx.symbolic_trace(copy.deepcopy(model))
    except Exception as error:  # torch.fx raises many kinds for untraceable code
        reason = f"{type(error).__name__}: {error}"
        return _select_heads(model, tasks, reason=reason, checked=checked)
    output_node = next(node for node in traced.graph.nodes if node.op == "output")
    value = output_node.args[0]
    if isinstance(value, dict):
        by_name: dict[str, Any] = {str(k): v for k, v in value.items()}
    elif isinstance(value, tuple | list):
        if task_names is None:
            raise TypeError(
                f"{type(model).__name__} returns a {type(value).__name__} of {len(value)} outputs; "
                "pass task_names=[...] naming them in order, or return a dict {task: output}"
            )
        names = check_tasks(task_names, name="task_names")
        if len(names) != len(value):
            raise ValueError(
                f"task_names has {len(names)} names but the model returns {len(value)} outputs"
            )
        by_name = dict(zip(names, value, strict=True))
    else:
        return _select_heads(
            model,
            tasks,
            reason="its output is not a dict or tuple literal in the graph",
            checked=checked,
        )
    selected = check_tasks(tasks, list(by_name))
    output_node.args = ({t: by_name[t] for t in selected},)
    live = _live_nodes(traced)
    traced.graph.eliminate_dead_code(is_impure_node=lambda node: node in live)
    traced.graph.lint()
    traced.recompile()
    traced.delete_all_unused_submodules()
    traced.training = model.training
    return traced


def _select_heads(
    model: nn.Module, tasks: Sequence[str], *, reason: str, checked: str | None
) -> nn.Module:
    heads = getattr(model, "heads", None)
    if not isinstance(heads, nn.ModuleDict):
        raise ValueError(
            f"cannot select tasks of {type(model).__name__}: torch.fx cannot trace it ({reason}) and it "
            "has no `heads` nn.ModuleDict to fall back on; make forward traceable (no data-dependent "
            "control flow) or keep the task heads in self.heads = nn.ModuleDict({task: head})"
        )
    selected = check_tasks(tasks, list(heads.keys()))
    if checked is not None:  # the same copy already failed on the example inputs
        raise ValueError(
            f"cannot select tasks of {type(model).__name__}: torch.fx cannot trace it ({reason}), "
            f"and {checked}; make forward traceable (no data-dependent control flow, no "
            "unpacking of tensor shapes) or return {task: head(h) for task, head in "
            "self.heads.items()}"
        )
    if checked is None:
        warnings.warn(
            f"select_tasks: torch.fx cannot trace {type(model).__name__} ({reason}); returning a "
            "copy with the other entries of self.heads deleted, not checked: pass example_inputs "
            "to check it (inputs that take another branch of the forward stay unchecked)",
            UserWarning,
            stacklevel=3,
        )
    result = copy.deepcopy(model)
    result_heads: nn.ModuleDict = result.heads  # type: ignore[assignment]
    for name in list(result_heads.keys()):
        if name not in selected:
            del result_heads[name]
    return result


def _first_input(node: torch.fx.Node) -> torch.fx.Node | None:
    first = node.args[0] if node.args else None
    return first if isinstance(first, torch.fx.Node) else None


def _mutates(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    """Whether ``node`` writes into its first argument (an in-place op)."""
    if node.op == "call_module":
        return bool(getattr(modules.get(str(node.target)), "inplace", False))
    if node.op not in ("call_method", "call_function"):
        return False
    if node.kwargs.get("inplace") is True:
        return True
    if node.op == "call_method":
        name = str(node.target)
        return name.endswith("_") and not name.startswith("_")
    target: Any = node.target
    if target in _INPLACE_OPERATORS:
        return True
    if getattr(getattr(target, "_schema", None), "is_mutable", False):
        return True
    name = getattr(target, "__name__", "")
    if name.endswith("_") and not name.startswith("_"):
        return True
    try:
        bound = inspect.signature(target).bind(*node.args, **node.kwargs)
    except (TypeError, ValueError):  # builtins without a signature, or not bindable
        return False
    return bound.arguments.get("inplace") is True


def _may_alias(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    """Whether ``node``'s result may share memory with its first argument."""
    if _mutates(node, modules):
        return True
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), _ALIAS_MODULES)
    if node.op == "call_method":
        return str(node.target) in _VIEW_NAMES
    if node.op == "call_function":
        return getattr(node.target, "__name__", "") in _VIEW_NAMES
    return False


def _live_nodes(traced: torch.fx.GraphModule) -> set[torch.fx.Node]:
    """Nodes the restricted output needs: its inputs' closure, impure ops, and every in-place
    op whose target (through views) is needed, a model input or a module attribute."""
    modules = dict(traced.named_modules())
    live: set[torch.fx.Node] = set()

    def mark(node: torch.fx.Node) -> None:
        stack = [node]
        while stack:
            current = stack.pop()
            if current not in live:
                live.add(current)
                stack.extend(current.all_input_nodes)

    mutating = []
    for node in traced.graph.nodes:
        if node.op in ("output", "placeholder"):
            mark(node)
        elif _mutates(node, modules):
            mutating.append(node)
        elif node.op != "get_attr" and node.is_impure():
            mark(node)

    def needed(node: torch.fx.Node) -> bool:
        base = _first_input(node)
        while base is not None:
            if base in live or base.op in ("placeholder", "get_attr"):
                return True
            if not _may_alias(base, modules):
                return False
            base = _first_input(base)
        return False

    changed = True
    while changed:
        changed = False
        for node in mutating:
            if node not in live and needed(node):
                mark(node)
                changed = True
    return live


def autograd_parameters(output: Tensor, parameters: dict[int, str]) -> set[str]:
    """Names of the parameters (``{id(param): name}``) that ``output``'s autograd graph reaches."""
    found: set[str] = set()
    if output.grad_fn is None:
        return found
    stack = [output.grad_fn]
    seen = {id(output.grad_fn)}
    while stack:
        node = stack.pop()
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) in parameters:
            found.add(parameters[id(variable)])
        for parent, _ in node.next_functions:
            if parent is not None and id(parent) not in seen:
                seen.add(id(parent))
                stack.append(parent)
    return found


def task_parameters(
    model: nn.Module,
    example_inputs: Inputs,
    *,
    tasks: Sequence[str] | None = None,
    task_names: Sequence[str] | None = None,
) -> dict[str, set[str]]:
    """Return ``{task: names of the parameters its output depends on}``.

    One forward pass in eval mode with gradients recorded, then a walk of each
    output's autograd graph. A parameter in two or more tasks' sets is shared.
    The model's mode and ``requires_grad`` flags are restored afterwards.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    ids = {id(p): name for name, p in model.named_parameters() if p.is_floating_point()}
    with scoring_state(model), torch.enable_grad():
        outputs = run_model(model, example_inputs, task_names)
        selected = check_tasks(tasks, list(outputs)) if tasks is not None else list(outputs)
        return {t: autograd_parameters(outputs[t], ids) for t in selected}
