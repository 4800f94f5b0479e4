"""Task decomposition: keep only the tasks a device needs, and find what each task uses.

CUT step 1 (the paper; the released code does the same): task k's subnetwork is the backbone plus head k; heads of
tasks that were not selected are dropped for real (the released code only froze
them), so the compact model neither stores nor computes them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn

from cut_plugin.state import scoring_state
from cut_plugin.vocabulary import Inputs, check_tasks, run_model

__all__ = ["autograd_parameters", "select_tasks", "task_parameters"]


def select_tasks(
    model: nn.Module, tasks: Sequence[str], *, task_names: Sequence[str] | None = None
) -> nn.Module:
    """Return a copy of ``model`` that computes and returns only ``tasks``.

    The copy is a ``torch.fx.GraphModule``: the forward graph is traced, its output
    restricted to ``tasks``, dead code eliminated and every submodule that no
    selected task uses deleted, so parameter names of what remains are unchanged.
    Its forward returns ``{task: Tensor}`` (also for a model whose forward returns a
    tuple named by ``task_names``).

    When the model cannot be traced, falls back to a deep copy whose ``heads``
    ``nn.ModuleDict`` keeps only the selected entries (the forward must iterate over
    ``self.heads``). The caller's model is never changed.

    Raises:
        ValueError: unknown or empty ``tasks``, or an untraceable model without ``heads``.
        TypeError: a tuple output without ``task_names``, or ``model`` not a Module.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    try:
        traced = torch.fx.symbolic_trace(copy.deepcopy(model))
    except Exception as error:  # torch.fx raises many kinds for untraceable code
        return _select_heads(model, tasks, reason=f"{type(error).__name__}: {error}")
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
            model, tasks, reason="its output is not a dict or tuple literal in the graph"
        )
    selected = check_tasks(tasks, list(by_name))
    output_node.args = ({t: by_name[t] for t in selected},)
    traced.graph.eliminate_dead_code()
    traced.graph.lint()
    traced.recompile()
    traced.delete_all_unused_submodules()
    traced.training = model.training
    return traced


def _select_heads(model: nn.Module, tasks: Sequence[str], *, reason: str) -> nn.Module:
    heads = getattr(model, "heads", None)
    if not isinstance(heads, nn.ModuleDict):
        raise ValueError(
            f"cannot select tasks of {type(model).__name__}: torch.fx cannot trace it ({reason}) and it "
            "has no `heads` nn.ModuleDict to fall back on; make forward traceable (no data-dependent "
            "control flow) or keep the task heads in self.heads = nn.ModuleDict({task: head})"
        )
    selected = check_tasks(tasks, list(heads.keys()))
    result = copy.deepcopy(model)
    result_heads: nn.ModuleDict = result.heads  # type: ignore[assignment]
    for name in list(result_heads.keys()):
        if name not in selected:
            del result_heads[name]
    return result


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
