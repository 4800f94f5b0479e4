"""Attention under structured CUT pruning: whole heads removed, heads stay heads.

Tiny BERT and ViT encoders are built offline from configs (no download); a
hand-written ``nn.MultiheadAttention`` model and a hand-written grouped-query
attention check the protected routes; a tiny Llama config (random init) checks that
grouped-query attention is detected in Hugging Face models.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import adapters.torch_pruning as atp
from adapters.torch_pruning.attention import (
    find_grouped_query_attention,
    find_self_attention,
    kept_heads,
)

transformers = pytest.importorskip("transformers")

LOSSES = {"a": F.cross_entropy, "b": F.cross_entropy}
BATCH = 4


class Encoder(nn.Module):
    """A Hugging Face encoder with two task heads on the first token."""

    def __init__(self, encoder: nn.Module, width: int, key: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.key = key
        self.heads = nn.ModuleDict({"a": nn.Linear(width, 3), "b": nn.Linear(width, 2)})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.encoder(**{self.key: x}).last_hidden_state[:, 0]
        return {name: head(h) for name, head in self.heads.items()}


def _randomise(model: nn.Module) -> nn.Module:
    # HF initialises biases to zero; random ones let the tests see which rows are kept.
    torch.manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.normal_(module.bias)
    return model.eval()


def bert(heads: int) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=32, num_attention_heads=heads, num_hidden_layers=2, intermediate_size=64,
        vocab_size=100, max_position_embeddings=32,
    )  # fmt: skip
    model = Encoder(transformers.BertModel(config, add_pooling_layer=False), 32, "input_ids")
    return _randomise(model), torch.randint(0, 100, (BATCH, 12))


def vit(heads: int) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=32, num_attention_heads=heads, num_hidden_layers=2, intermediate_size=64,
        image_size=16, patch_size=8, num_channels=3,
    )  # fmt: skip
    model = Encoder(transformers.ViTModel(config, add_pooling_layer=False), 32, "pixel_values")
    return _randomise(model), torch.randn(BATCH, 3, 16, 16)


class MHANet(nn.Module):
    """Projection, ``nn.MultiheadAttention`` with a residual, a feed-forward block, two heads."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.norm = nn.LayerNorm(32)
        self.ffn = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.heads = nn.ModuleDict({"a": nn.Linear(32, 3), "b": nn.Linear(32, 2)})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.embed(x)
        h = self.norm(h + self.attn(h, h, h, need_weights=False)[0])
        h = (h + self.ffn(h)).mean(1)
        return {name: head(h) for name, head in self.heads.items()}


def mha() -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    return MHANet().eval(), torch.randn(BATCH, 6, 8)


Factory = Callable[[int], tuple[nn.Module, Tensor]]
ENCODERS: list[tuple[str, Factory]] = [("bert", bert), ("vit", vit)]


def _data(x: Tensor) -> list[tuple[Tensor, dict[str, Tensor]]]:
    torch.manual_seed(2)
    return [(x, {"a": torch.randint(0, 3, (BATCH,)), "b": torch.randint(0, 2, (BATCH,))})]


def _prune(model: nn.Module, x: Tensor, ratio: float, steps: int = 1) -> nn.Module:
    return atp.cut_prune(
        model, (x,), tasks=["a", "b"], losses=LOSSES, data=_data(x), pruning_ratio=ratio,
        iterative_steps=steps, progress=False,
    )  # fmt: skip


def _check_heads(original: nn.Module, compact: nn.Module, expected: int) -> None:
    """Every attention has ``expected`` whole heads of the original size, in original rows."""
    before = {b.name: b for b in find_self_attention(original)}
    after = find_self_attention(compact)
    assert len(after) == 2 and [b.name for b in after] == list(before)
    for block in after:
        old, size = before[block.name], block.head_size
        assert size == old.head_size
        assert block.num_heads == expected
        assert getattr(block.module, "all_head_size", expected * size) == expected * size
        for new_layer, old_layer in zip(block.projections, old.projections, strict=True):
            assert new_layer.out_features == expected * size
            # Kept rows are whole original heads: each block of `size` biases is one old head.
            old_heads = old_layer.bias.detach().view(-1, size)
            for head in new_layer.bias.detach().view(-1, size):
                assert any(torch.equal(head, h) for h in old_heads)


@pytest.mark.parametrize(("name", "factory"), ENCODERS)
def test_half_the_heads_are_removed(name: str, factory: Factory) -> None:
    model, x = factory(4)
    compact = _prune(model, x, 0.5)
    _check_heads(model, compact, expected=2)
    out, ref = compact(x), model(x)
    assert {t: v.shape for t, v in out.items()} == {t: v.shape for t, v in ref.items()}
    assert find_self_attention(model)[0].num_heads == 4  # the caller's model is untouched


@pytest.mark.parametrize(("name", "factory"), ENCODERS)
def test_ratio_zero_keeps_outputs(name: str, factory: Factory) -> None:
    model, x = factory(2)
    compact = _prune(model, x, 0.0)
    _check_heads(model, compact, expected=2)
    for task, value in model(x).items():
        assert torch.allclose(compact(x)[task], value, atol=1e-5)


@pytest.mark.parametrize(("name", "factory"), ENCODERS)
@pytest.mark.parametrize("heads", [2, 4])
def test_two_iterative_steps(name: str, factory: Factory, heads: int) -> None:
    model, x = factory(heads)
    compact = _prune(model, x, 0.5, steps=2)
    _check_heads(model, compact, expected=kept_heads(heads, 0.5))
    assert compact(x)["a"].shape == (BATCH, 3)


def test_heads_follow_cut_head_vote() -> None:
    """The importance is constant over each head, and the kept heads are its top ones."""
    model, x = bert(4)
    pruner = atp.CUTPruner(
        model, (x,), tasks=["a", "b"], losses=LOSSES, data=_data(x), pruning_ratio=0.5,
        progress=False,
    )  # fmt: skip
    block = find_self_attention(pruner.model)[0]
    query = block.projections[0]
    rows = {}
    for group in pruner.DG.get_all_groups(
        ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
    ):
        if any(dep.target.module is query for dep, _ in group):
            attention_group = pruner._downstream_node_as_root_if_attention(group)
            if attention_group is not None:
                with pruner.importance.keeping(0.5):
                    rows[query] = pruner.importance(attention_group)
    imp = rows[query].view(4, -1)
    assert torch.equal(imp, imp[:, :1].expand_as(imp))  # one value per head
    size = block.head_size
    old_bias = query.bias.detach().clone().view(4, size)
    pruner.step()
    kept = [
        next(i for i in range(4) if torch.equal(old_bias[i], head))
        for head in query.bias.detach().view(-1, size)
    ]
    assert sorted(kept) == sorted(imp[:, 0].topk(2).indices.tolist())


def test_head_options_respect_the_callers_num_heads() -> None:
    model, _ = bert(2)
    options = atp.attention.head_options(model, 0.5, {})
    assert options["prune_num_heads"] is True and options["prune_head_dims"] is False
    assert len(options["num_heads"]) == 6  # query, key, value of two layers
    assert atp.attention.head_options(model, 0.5, {"num_heads": {}}) == {}
    assert atp.attention.head_options(mha()[0], 0.5, {}) == {}


def test_multihead_attention_is_protected() -> None:
    model, x = mha()
    compact = _prune(model, x, 0.5)
    attn = next(m for m in compact.modules() if isinstance(m, nn.MultiheadAttention))
    assert (attn.num_heads, attn.embed_dim, attn.head_dim) == (4, 32, 8)
    assert torch.equal(attn.in_proj_weight, model.attn.in_proj_weight)
    hidden = [m for m in compact.modules() if isinstance(m, nn.Linear) and m.in_features == 32]
    assert any(m.out_features < 64 for m in hidden)  # the feed-forward block was pruned
    assert {t: v.shape for t, v in compact(x).items()} == {"a": (BATCH, 3), "b": (BATCH, 2)}


def test_multihead_attention_ratio_zero_keeps_outputs() -> None:
    model, x = mha()
    compact = _prune(model, x, 0.0, steps=2)
    for task, value in model(x).items():
        assert torch.allclose(compact(x)[task], value, atol=1e-5)


class GQABlock(nn.Module):
    """Grouped-query self-attention written as Llama does: 4 query heads, 2 key/value heads."""

    def __init__(self, width: int = 32, heads: int = 4, kv_heads: int = 2) -> None:
        super().__init__()
        self.num_attention_heads, self.num_key_value_heads = heads, kv_heads
        self.head_dim = width // heads
        self.q_proj = nn.Linear(width, heads * self.head_dim)
        self.k_proj = nn.Linear(width, kv_heads * self.head_dim)
        self.v_proj = nn.Linear(width, kv_heads * self.head_dim)
        self.o_proj = nn.Linear(heads * self.head_dim, width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q, k, v = (
            p(x).view(b, t, -1, self.head_dim).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        a = F.scaled_dot_product_attention(q, k, v)
        return self.o_proj(a.transpose(1, 2).reshape(b, t, -1))


class GQANet(MHANet):
    def __init__(self) -> None:
        super().__init__()
        self.attn = GQABlock()  # type: ignore[assignment]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.embed(x)
        h = self.norm(h + self.attn(h))
        h = (h + self.ffn(h)).mean(1)
        return {name: head(h) for name, head in self.heads.items()}


def test_grouped_query_attention_is_detected_in_llama() -> None:
    config = transformers.LlamaConfig(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
        intermediate_size=64, vocab_size=100, max_position_embeddings=32, head_dim=8,
    )  # fmt: skip
    model = transformers.LlamaModel(config)
    found = find_grouped_query_attention(model)
    assert [b.name for b in found] == ["layers.0.self_attn", "layers.1.self_attn"]
    assert found[0].describe() == "4 query heads sharing 2 key/value heads of size 8"
    assert find_self_attention(model) == []  # never pruned by (wrong) whole query heads
    assert find_grouped_query_attention(bert(4)[0]) == []


@pytest.mark.parametrize("ratio", [0.0, 0.5])
def test_grouped_query_attention_is_protected(ratio: float) -> None:
    torch.manual_seed(0)
    model, x = GQANet().eval(), torch.randn(BATCH, 6, 8)
    with pytest.warns(UserWarning, match=r"grouped-query attention 'attn' \(4 query heads "):
        compact = _prune(model, x, ratio, steps=2)
    attn = compact.attn  # every head whole; the residual stream around it may shrink
    widths = (attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features)
    assert widths == (32, 16, 16) and attn.o_proj.in_features == 32
    out, ref = compact(x), model(x)
    assert {t: v.shape for t, v in out.items()} == {"a": (BATCH, 3), "b": (BATCH, 2)}
    if ratio == 0.0:
        for task, value in ref.items():
            torch.testing.assert_close(out[task], value, rtol=0, atol=1e-6)
    else:
        assert compact.ffn[0].out_features < 64  # the rest of the model was pruned
