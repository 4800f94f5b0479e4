"""Attention under structured pruning: whole heads removed, head counts kept consistent.

Torch-Pruning's default treats a self-attention's query/key/value channels like any
others: it keeps the asked number drawn from all heads, and the forward then runs
them as fewer, wider heads (the attention silently changes). Told the head counts
(``num_heads={qkv_linear: n}``, ``prune_num_heads=True``, ``prune_head_dims=False``)
it removes whole heads instead; the module's own head count must then follow.

- Hugging Face-style self-attention is pruned by whole heads: a module with
  ``query``/``key``/``value`` ``nn.Linear`` children and ``num_attention_heads``/
  ``attention_head_size``/``all_head_size`` (BERT, RoBERTa; ViT in transformers 4),
  or with ``q_proj``/``k_proj``/``v_proj`` and ``num_attention_heads``/``head_dim``
  (ViT in transformers 5, Llama-style) where keys and values have as many heads as
  queries. :func:`sync_heads` updates the head count (and ``all_head_size``) after
  each step.
- Grouped-query attention (GQA/MQA: fewer key/value heads than query heads, as in
  Llama/Qwen/Mistral configs with ``num_key_value_heads < num_attention_heads``) is
  detected (:func:`find_grouped_query_attention`: ``query``/``key``/``value`` or
  ``q_proj``/``k_proj``/``v_proj`` with the key and value narrower than the query)
  and protected with a warning: its heads stay as they are, the rest of the model
  is pruned. Torch-Pruning 1.6.1 couples a query head to its key/value group only
  in global head pruning, and its GQA index arithmetic there is wrong
  (``head_pruning_indices_kv + kv_head_id * num_kv_heads``); left alone, its
  channel pruning cuts the key/value heads independently of the query heads.
- ``nn.MultiheadAttention`` is protected: its query/key/value width is its
  ``embed_dim``, which is also its input and output width, so Torch-Pruning 1.6.1
  can only shrink ``embed_dim`` (with the residual stream), which regroups the kept
  channels into different heads. No whole head can be removed without changing the
  residual width; its embedding group is left whole instead (:func:`protect_mha`).

Re-exported pieces are used by :class:`adapters.torch_pruning.CUTPruner`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = [
    "GroupedQueryAttention",
    "SelfAttention",
    "find_grouped_query_attention",
    "find_self_attention",
    "head_options",
    "kept_heads",
    "plan_head_step",
    "protect_mha",
    "sync_heads",
]


@dataclass(frozen=True)
class SelfAttention:
    """A Hugging Face-style self-attention module and its projections."""

    name: str
    module: nn.Module
    projections: tuple[nn.Linear, nn.Linear, nn.Linear]  # query, key, value
    size_attr: str  # "attention_head_size" or "head_dim"

    @property
    def num_heads(self) -> int:
        return int(self.module.num_attention_heads)  # type: ignore[arg-type]

    @property
    def head_size(self) -> int:
        return int(getattr(self.module, self.size_attr))


# (query, key, value, head size, total width or None): BERT-style, Llama-style.
STYLES = (
    ("query", "key", "value", "attention_head_size", "all_head_size"),
    ("q_proj", "k_proj", "v_proj", "head_dim", None),
)


def _candidates(model: nn.Module) -> list[SelfAttention]:
    """Modules shaped like Hugging Face self-attention, consistent or not."""
    found = []
    for name, m in model.named_modules():
        for *names, size_attr, width_attr in STYLES:
            counts = [getattr(m, a, None) for a in ("num_attention_heads", size_attr)]
            projections = [getattr(m, a, None) for a in names]
            if (
                all(isinstance(c, int) and c > 0 for c in counts)
                and (width_attr is None or isinstance(getattr(m, width_attr, None), int))
                and all(isinstance(p, nn.Linear) for p in projections)
            ):
                found.append(SelfAttention(name, m, tuple(projections), size_attr))  # type: ignore[arg-type]
                break
    return found


@dataclass(frozen=True)
class GroupedQueryAttention:
    """A self-attention whose key/value projections are narrower than its query's."""

    name: str
    module: nn.Module
    projections: tuple[nn.Linear, nn.Linear, nn.Linear]  # query, key, value

    @property
    def head_size(self) -> int | None:
        for attr in ("head_dim", "attention_head_size"):
            size = getattr(self.module, attr, None)
            if isinstance(size, int) and size > 0:
                return size
        heads = getattr(self.module, "num_attention_heads", None)
        if isinstance(heads, int) and heads > 0:
            return self.projections[0].out_features // heads
        return None

    def describe(self) -> str:
        """``'4 query heads sharing 2 key/value heads of size 8'`` (widths when no head size)."""
        query, key, _ = (p.out_features for p in self.projections)
        size = self.head_size
        if size is None or query % size or key % size:
            return f"query width {query}, key/value width {key}"
        return f"{query // size} query heads sharing {key // size} key/value heads of size {size}"


def find_grouped_query_attention(model: nn.Module) -> list[GroupedQueryAttention]:
    """Every grouped-query (or multi-query) self-attention of ``model``, in module order.

    A module counts when it has query/key/value ``nn.Linear`` children (either naming
    style of the module docstring) reading the same width, with key and value equally
    wide, narrower than the query, and a whole fraction of it.
    """
    found = []
    for name, m in model.named_modules():
        for style in STYLES:
            layers = [getattr(m, a, None) for a in style[:3]]
            if not all(isinstance(p, nn.Linear) for p in layers):
                continue
            query, key, value = layers
            if (
                len({p.in_features for p in layers}) == 1  # type: ignore[union-attr]
                and key.out_features == value.out_features < query.out_features  # type: ignore[union-attr]
                and query.out_features % key.out_features == 0  # type: ignore[union-attr]
            ):
                found.append(GroupedQueryAttention(name, m, tuple(layers)))  # type: ignore[arg-type]
                break
    return found


def find_self_attention(model: nn.Module) -> list[SelfAttention]:
    """Every Hugging Face-style self-attention module of ``model``, in module order.

    A module counts when its query/key/value ``nn.Linear`` children (see the module
    docstring for the names) are all ``num_attention_heads`` heads wide.
    """
    return [
        b
        for b in _candidates(model)
        if all(p.out_features == b.num_heads * b.head_size for p in b.projections)
    ]


def head_options(
    model: nn.Module, pruning_ratio: float, tp_kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """Torch-Pruning options that prune ``model``'s self-attention by whole heads.

    Returns the keywords to add to ``tp_kwargs`` (none when the model has no
    self-attention or the caller passed ``num_heads`` themselves): ``num_heads``
    for every query/key/value layer, ``prune_num_heads=True``,
    ``prune_head_dims=False`` and ``head_pruning_ratio=pruning_ratio``, each
    unless given.
    """
    blocks = find_self_attention(model)
    if not blocks or "num_heads" in tp_kwargs:
        return {}
    defaults: dict[str, Any] = {
        "num_heads": {p: b.num_heads for b in blocks for p in b.projections},
        "prune_num_heads": True,
        "prune_head_dims": False,
        "head_pruning_ratio": pruning_ratio,
    }
    return {k: v for k, v in defaults.items() if k not in tp_kwargs}


def protect_mha(pruner: Any) -> None:
    """Leave whole every group that would regroup heads of an attention Torch-Pruning cannot
    prune by whole heads: ``nn.MultiheadAttention`` and grouped-query attention.

    Adds to ``pruner.ignored_layers`` every root whose group reaches an
    ``nn.MultiheadAttention`` (Torch-Pruning prunes it through its ``embed_dim``,
    shared with the residual stream, and regroups the kept channels into heads), and
    every root whose group prunes a grouped-query attention's query/key/value outputs
    or the inputs of its other layers (the output projection); the residual stream
    into and out of such an attention is still pruned. Warns once per grouped-query
    attention, naming it (see the module docstring).
    """
    gqa = find_grouped_query_attention(pruner.model)
    has_mha = any(isinstance(m, nn.MultiheadAttention) for m in pruner.model.modules())
    if not has_mha and not gqa:
        return
    for block in gqa:
        warnings.warn(
            f"grouped-query attention {block.name or 'model'!r} ({block.describe()}) is left "
            "unpruned: Torch-Pruning 1.6.1 cannot remove a key/value group together with its "
            "query heads (its channel pruning would cut them independently); the rest of the "
            "model is pruned",
            UserWarning,
            stacklevel=3,
        )
    graph = pruner.DG
    ignored = pruner.ignored_layers
    roots = tuple(pruner.root_module_types)
    projections = {id(p) for b in gqa for p in b.projections}
    inner = {id(m) for b in gqa for m in b.module.modules() if isinstance(m, nn.Linear)}

    def touches_gqa(dep: Any) -> bool:
        module = dep.target.module
        if graph.is_out_channel_pruning_fn(dep.handler):
            return id(module) in projections
        return id(module) in inner and id(module) not in projections

    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=roots):
        if not any(
            isinstance(dep.target.module, nn.MultiheadAttention) or touches_gqa(dep)
            for dep, _ in group
        ):
            continue
        for dep, _ in group:
            module = dep.target.module
            out = graph.is_out_channel_pruning_fn(dep.handler)
            if isinstance(module, roots) and out and all(module is not k for k in ignored):
                ignored.append(module)
    ignored.extend(
        m for m in pruner.model.modules()
        if isinstance(m, nn.MultiheadAttention) and all(m is not k for k in ignored)
    )  # fmt: skip
    ignored.extend(
        p for b in gqa for p in b.projections if all(p is not k for k in ignored)
    )  # fmt: skip


def kept_heads(initial: int, ratio: float) -> int:
    """Heads left of ``initial`` at cumulative ``ratio`` (rounded half up, at least one)."""
    return max(1, initial - int(ratio * initial + 0.5))


def plan_head_step(pruner: Any, step: int) -> dict[nn.Module, int]:
    """Make local step ``step`` leave ``kept_heads(initial, r_step)`` heads per attention.

    Torch-Pruning's local head pruning removes ``ceil(r_k · current)`` heads at step
    k, with ``r_k`` a fraction of the *initial* count: two steps of 0.5 on two heads
    remove both. Here each query/key/value layer gets the one-step ratio that removes
    exactly the heads the cumulative schedule asks for. Returns ``{layer: heads to
    keep}`` for :class:`CUTImportance`, so CUT's head vote keeps that many. Under
    ``global_pruning`` Torch-Pruning's schedule (over the initial total) is already
    cumulative: nothing is changed and ``{}`` returned.
    """
    counts: dict[nn.Module, int] = getattr(pruner, "num_heads", None) or {}
    if not counts or not getattr(pruner, "prune_num_heads", False) or pruner.global_pruning:
        return {}
    initial: dict[nn.Module, int] = getattr(pruner, "init_num_heads", None) or {}
    schedule = pruner.per_step_head_pruning_ratio
    ratio = float(schedule[min(step, len(schedule) - 1)])
    targets: dict[nn.Module, int] = {}
    for layer, current in counts.items():
        target = min(current, kept_heads(initial.get(layer, current), ratio))
        removal = current - target
        # Torch-Pruning removes ceil(share * current) heads: exactly `removal`.
        share = (removal - 0.5) / current if removal > 0 else 0.0
        pruner.head_pruning_ratio_dict[layer] = [share] * (len(schedule) + 1)
        targets[layer] = target
    return targets


def _whole_groups(block: SelfAttention) -> bool:
    """The query is ``num_attention_heads`` heads and key/value its declared key/value heads."""
    query, key, value = (p.out_features for p in block.projections)
    heads, size = block.num_heads, block.head_size
    kv = getattr(block.module, "num_key_value_heads", None)
    groups = getattr(block.module, "num_key_value_groups", None)
    if not isinstance(kv, int) and isinstance(groups, int) and groups > 0:
        kv = heads // groups
    return query == heads * size and isinstance(kv, int) and key == value == kv * size


def sync_heads(model: nn.Module) -> None:
    """Set each self-attention's head count (and ``all_head_size``) from its pruned layers.

    Whole heads removed: ``num_attention_heads`` follows the width. When the caller
    chose head-dimension pruning (their own ``num_heads`` with ``prune_head_dims``),
    the head count stays and the head size follows instead.

    Raises:
        RuntimeError: query, key and value widths disagree or are not a whole
            number of heads (a pruning that split a head).
    """
    grouped = {id(b.module) for b in find_grouped_query_attention(model)}
    for block in _candidates(model):
        module, size, heads = block.module, block.head_size, block.num_heads
        if id(module) in grouped and _whole_groups(block):
            continue  # grouped-query attention, protected and whole
        widths = {p.out_features for p in block.projections}
        width = widths.pop()
        if not widths and width == heads * size:
            continue
        if widths or (width % size and width % heads):
            raise RuntimeError(
                f"self-attention {block.name!r}: query/key/value widths "
                f"{[p.out_features for p in block.projections]} are not whole heads of size {size}; "
                "prune it by heads (num_heads=..., prune_num_heads=True, prune_head_dims=False)"
            )
        if width % size == 0:
            setattr(module, "num_attention_heads", width // size)  # noqa: B010 (plain ints)
        else:
            setattr(module, block.size_attr, width // heads)
        if isinstance(getattr(module, "all_head_size", None), int):
            setattr(module, "all_head_size", width)  # noqa: B010
