"""Groups of neurons per layer (PAM step 4): dropped, task-exclusive, shared, or one per task subset.

A neuron is a tuple of ``(task, index)`` members: the neuron ``index`` of task
``task``'s network (one member for PAM; every task's member for a neuron MTZ
zipped). A group is keyed by the set of tasks it serves. With ``R(i) = {t : i
∉ S_t}`` the tasks neuron ``i`` is relevant to (``S_t`` its irrelevant sets):

- ``R(i) = ∅``: dropped (``P = ∩_t S_t``);
- ``grouping="paper"``: ``|R(i)| = 1`` → exclusive group ``E_t = (∩_{s≠t} S_s) \\ P``
  (key ``{t}``); ``|R(i)| >= 2`` → the shared group ``C`` (key: all tasks);
- ``grouping="subsets"`` (beyond the paper): the group keyed ``R(i)``.

Wiring (``pam_plugin.merged``): a group keyed ``K`` reads the groups of the
previous layer whose key is a superset of ``K``. Running the tasks ``Q`` then
needs exactly the groups whose key meets ``Q``, and every group they read
also meets ``Q`` (a superset of a set meeting ``Q`` meets ``Q``): the set is
closed, so ``for_tasks`` can drop the rest. In ``paper`` mode this is the
paper's rule (``C`` reads ``C``; ``E_t`` reads ``E_t`` and ``C``), and with one
group per subset a neuron shared by A and B does not wait for A-only neurons
when B runs alone.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Literal

from cut_plugin.vocabulary import check_choice, check_tasks

__all__ = [
    "SHARED",
    "GroupKey",
    "Grouping",
    "Neuron",
    "check_task_names",
    "exclusive_groups",
    "group_name",
    "order_groups",
    "relevance_groups",
]

GroupKey = frozenset[str]
Neuron = tuple[tuple[str, int], ...]
Grouping = Literal["paper", "subsets"]
GROUPINGS: tuple[Grouping, ...] = ("paper", "subsets")
SHARED = "shared"
"""Name of the group that serves every task (also the network input's group)."""


def check_task_names(tasks: Sequence[object]) -> list[str]:
    """Return task names that can name modules (non-empty, no '.' or '&', not 'shared'), or raise.

    A task list first (``cut_plugin.vocabulary.check_tasks``), then the rule of
    the merged network's group names.
    """
    result = check_tasks(tasks, name="task names")
    for task in result:
        if not task or "." in task or "&" in task or task == SHARED:
            raise ValueError(
                f"task name {task!r} cannot name a group of the merged network: use a non-empty "
                f"string without '.' or '&', other than {SHARED!r}"
            )
    return result


def group_name(key: GroupKey, tasks: Sequence[str]) -> str:
    """``shared`` for the group of every task, else its tasks joined by ``&`` in task order."""
    if key == frozenset(tasks):
        return SHARED
    return "&".join(t for t in tasks if t in key)


def order_groups(keys: Collection[GroupKey], tasks: Sequence[str]) -> list[GroupKey]:
    """Keys from the widest (shared) to the exclusive ones, ties in task order."""
    return sorted(keys, key=lambda k: (-len(k), [tasks.index(t) for t in tasks if t in k]))


def exclusive_groups(
    size: int | Mapping[str, int], tasks: Sequence[str]
) -> dict[GroupKey, list[Neuron]]:
    """Every neuron of every network in its own task's group (no merging: the networks side by side).

    ``size``: the layer's width, or ``{task: width}`` when it differs (output layers).
    """
    sizes = size if isinstance(size, Mapping) else dict.fromkeys(tasks, size)
    return {frozenset({t}): [((t, index),) for index in range(sizes[t])] for t in tasks}


def relevance_groups(
    irrelevant: Mapping[str, Collection[int]],
    size: int,
    tasks: Sequence[str],
    *,
    grouping: Grouping = "paper",
) -> dict[GroupKey, list[Neuron]]:
    """Groups of the pooled neurons of one layer from each task's irrelevant set.

    ``irrelevant[t]``: indices into the pooled neurons ``tasks[k]·size + i``
    (neuron ``i`` of task ``tasks[k]``'s network).
    """
    check_choice("grouping", grouping, GROUPINGS)
    sets = {t: set(irrelevant[t]) for t in tasks}
    everyone = frozenset(tasks)
    groups: dict[GroupKey, list[Neuron]] = {}
    for owner_index, owner in enumerate(tasks):
        for index in range(size):
            pooled = owner_index * size + index
            relevant = frozenset(t for t in tasks if pooled not in sets[t])
            if not relevant:
                continue
            key = relevant if grouping == "subsets" or len(relevant) == 1 else everyone
            groups.setdefault(key, []).append(((owner, index),))
    return {key: groups[key] for key in order_groups(groups, tasks)}
