"""Property tests on random architectures (tests/random_models.py): CUT structured and
unstructured and NNI speedup keep outputs' keys and widths, masked == physical, outputs are
finite, the caller's model is untouched, save/load is identical.

The number of generated cases is set by the hypothesis profile: ``ci`` (default, ~200 cases
in all) or ``long`` (``HYPOTHESIS_PROFILE=long``, 10x more)."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adapters.torch_pruning as atp
from cut_plugin import apply_masks, mask_sparsity, select_tasks
from cut_plugin.checks import TransformCheckError
from tests.random_models import (
    ALL_SPECS,
    ATTRIBUTE_SIZED,
    SPECS,
    RandomNet,
    batches_for,
    cross_entropy_losses,
    kinds,
)
from tests.toy_models import same_state, state_snapshot

settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("long", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
SCALE = 10 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 1


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead on a shared 2-core machine
    yield
    torch.set_num_threads(threads)


def _subset(model: RandomNet, draw_bits: int) -> list[str]:
    tasks = list(model.heads.keys())
    chosen = [t for i, t in enumerate(tasks) if draw_bits >> i & 1]
    return chosen or tasks[:1]


@settings(max_examples=90 * SCALE)
@given(spec=SPECS, bits=st.integers(1, 15), ratio=st.floats(0.1, 0.7))
def test_cut_structured(tmp_path_factory, spec, bits, ratio):
    model = RandomNet(spec)
    snapshot = state_snapshot(model)
    tasks = _subset(model, bits)
    data = batches_for(model)
    x = data[0][0]
    reference = model(x)
    compact = atp.cut_prune(
        model,
        x[:1],
        tasks=tasks,
        losses=cross_entropy_losses(model),
        data=data,
        pruning_ratio=ratio,
        progress=False,
    )
    out = compact(x)
    assert list(out) == tasks
    for task in tasks:
        assert out[task].shape == reference[task].shape
        assert torch.isfinite(out[task]).all()
    assert same_state(model, snapshot)
    path = tmp_path_factory.mktemp("pruned") / "m.pt"
    atp.save_pruned(compact, path)
    loaded = atp.load_pruned(path, lambda: RandomNet(spec), x[:1]).eval()
    for task, value in compact.eval()(x).items():
        torch.testing.assert_close(loaded(x)[task], value, rtol=0, atol=0)


@settings(max_examples=40 * SCALE)
@given(spec=SPECS, bits=st.integers(1, 15), explicit=st.booleans())
def test_ratio_zero_equals_original(spec, bits, explicit):
    """In-place ops, attribute-sized splits, heads containers: nothing removed, same outputs;
    the user's class kept when the heads can be dropped; the caller's model untouched."""
    model = RandomNet(spec)
    model.explicit = explicit
    snapshot = state_snapshot(model)
    tasks = _subset(model, bits)
    data = batches_for(model)
    x = data[0][0]
    reference = model(x)
    selected = select_tasks(model, tasks, example_inputs=x[:1])
    assert explicit or isinstance(selected, RandomNet)  # all tasks selected: kept too
    compact = atp.cut_prune(
        model, x[:1], tasks=tasks, losses=cross_entropy_losses(model), data=data,
        pruning_ratio=0.0, progress=False,
    )  # fmt: skip
    for result in (selected, compact):
        out = result(x)
        assert sorted(out) == sorted(tasks)
        for task in tasks:
            torch.testing.assert_close(out[task], reference[task], rtol=0, atol=1e-6)
    assert same_state(model, snapshot)


@settings(max_examples=50 * SCALE)
@given(spec=SPECS, bits=st.integers(1, 15), ratio=st.floats(0.1, 0.9))
def test_cut_unstructured(spec, bits, ratio):
    model = RandomNet(spec)
    snapshot = state_snapshot(model)
    tasks = _subset(model, bits)
    data = batches_for(model)
    pruned = atp.cut_prune(
        model,
        data[0][0][:1],
        tasks=tasks,
        losses=cross_entropy_losses(model),
        data=data,
        pruning_ratio=ratio,
        granularity="weight",
        progress=False,
    )
    masks = pruned.cut_pam_masks
    total = sum(m.numel() for m in masks.values())
    assert abs(mask_sparsity(masks) - ratio) <= max(0.01, 2 / total)
    params = dict(pruned.named_parameters())
    assert all((params[n][~m] == 0).all() for n, m in masks.items())
    assert all(torch.isfinite(v).all() for v in pruned(data[0][0]).values())
    assert same_state(model, snapshot)


@settings(max_examples=60 * SCALE)
@given(spec=SPECS, seed=st.integers(0, 1000), keep=st.floats(0.2, 0.9))
def test_masked_equals_physical(spec, seed, keep):
    model = RandomNet(spec)
    snapshot = state_snapshot(model)
    g = torch.Generator().manual_seed(seed)
    masks = {
        name: torch.rand(p.shape[0], *[1] * (p.dim() - 1), generator=g) < keep
        for name, p in model.named_parameters()
        if p.dim() > 1 and name.startswith("trunk.")
    }
    x = batches_for(model)[0][0]
    compact = atp.prune_by_masks(model, masks, x[:1])
    masked = apply_masks(model, atp.align_masks(model, masks, x[:1]))
    out_c, out_m = compact(x), masked(x)
    assert out_c.keys() == out_m.keys()
    for task in out_m:
        torch.testing.assert_close(out_c[task], out_m[task], atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in compact.parameters()) <= sum(
        p.numel() for p in model.parameters()
    )
    assert same_state(model, snapshot)


@settings(max_examples=30 * SCALE)
@given(spec=SPECS, ratio=st.floats(0.2, 0.7))
def test_nni_speedup(spec, ratio):
    pytest.importorskip("nni")
    from nni.compression.pruning import L1NormPruner

    from adapters.nni import param_masks, speedup

    model = RandomNet(spec)
    snapshot = state_snapshot(model)
    x = batches_for(model)[0][0]
    protected = set(atp.output_layers(model, x[:1]).values())
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Conv2d) and m not in protected and m.groups == 1
    ]
    if not names:
        return
    work = copy.deepcopy(model)
    pruner = L1NormPruner(
        work, [{"op_names": names, "sparse_ratio": ratio, "granularity": "out_channel"}]
    )
    _, masks = pruner.compress()
    pruner.unwrap_model()
    compact = speedup(work, masks, x[:1])
    masked = apply_masks(work, atp.align_masks(work, param_masks(masks), x[:1]))
    out_c, out_m = compact(x), masked(x)
    assert out_c.keys() == model(x).keys()
    for task in out_m:
        assert out_c[task].shape == out_m[task].shape
        torch.testing.assert_close(out_c[task], out_m[task], atol=1e-5, rtol=1e-4)
    assert same_state(model, snapshot)


# Every form users write (tests/random_models.py ALL_SPECS): in-place activations, sizes
# read from layer attributes (views, splits, Hugging Face-style attention), nn.MultiheadAttention,
# heads iterated or named explicitly. A supported form gives a correct model; an unsupported
# one (attribute-sized ops on the traced route; an uneven split after pruning, which
# Torch-Pruning 1.6.1 mis-indexes) a clear error, never a wrong model.
# Known gap: on split models MACs can grow with the ratio (measured: split(7)+view(6) at
# 0.3/0.6/0.9 gave 16068/4700/6030 MACs), so monotonicity is asserted without them.
RATIOS = (0.3, 0.6, 0.9)


def _allowed_error(spec, explicit: bool, error: Exception) -> bool:
    """Whether ``error`` is the clear error this spec may raise instead of a model."""
    text = str(error)
    found = kinds(spec)
    frozen = explicit and bool(found & set(ATTRIBUTE_SIZED)) and "self.heads" in text
    # After a split, prune_by_masks may refuse through its own check (masked != compact).
    split = "split" in found and ("torch.split" in text or isinstance(error, TransformCheckError))
    return isinstance(error, RuntimeError) and (frozen or split)


@settings(max_examples=8 * SCALE)
@given(spec=ALL_SPECS, bits=st.integers(1, 7), explicit=st.booleans())
def test_all_forms_ratio_zero_equals_original(spec, bits, explicit):
    model = RandomNet(spec)
    model.explicit = explicit
    snapshot = state_snapshot(model)
    tasks = _subset(model, bits)
    data = batches_for(model)
    x = data[0][0]
    reference = model(x)
    selected = select_tasks(model, tasks, example_inputs=x[:1])
    compact = atp.cut_prune(
        model, x[:1], tasks=tasks, losses=cross_entropy_losses(model), data=data,
        pruning_ratio=0.0, progress=False,
    )  # fmt: skip
    for result in (selected, compact):
        out = result(x)
        assert sorted(out) == sorted(tasks)
        for task in tasks:
            torch.testing.assert_close(out[task], reference[task], rtol=0, atol=1e-6)
    assert same_state(model, snapshot)
    after = model(x)  # the caller's forward is unchanged too
    assert all(torch.equal(after[t], reference[t]) for t in reference)


@settings(max_examples=8 * SCALE)
@given(spec=ALL_SPECS, bits=st.integers(1, 7), explicit=st.booleans())
def test_all_forms_prune_or_refuse_clearly(tmp_path_factory, spec, bits, explicit):
    """Each ratio: a correct compact model (shapes, finite, save/load identical) or the
    clear error; MACs and parameters never grow with the ratio; the caller untouched."""
    model = RandomNet(spec)
    model.explicit = explicit
    snapshot = state_snapshot(model)
    tasks = _subset(model, bits)
    data = batches_for(model)
    x = data[0][0]
    reference = model(x)
    costs = []
    for ratio in RATIOS:
        try:
            compact = atp.cut_prune(
                model, x[:1], tasks=tasks, losses=cross_entropy_losses(model), data=data,
                pruning_ratio=ratio, progress=False,
            )  # fmt: skip
        except Exception as error:
            assert _allowed_error(spec, explicit, error), error
            continue
        out = compact.eval()(x)
        assert sorted(out) == sorted(tasks)
        for task in tasks:
            assert out[task].shape == reference[task].shape
            assert torch.isfinite(out[task]).all()
        costs.append(atp.count_macs(compact, x[:1]))
        if ratio == RATIOS[0]:
            path = tmp_path_factory.mktemp("pruned") / "m.pt"
            atp.save_pruned(compact, path, example_inputs=x[:1])
            loaded = atp.load_pruned(path, lambda: RandomNet(spec), x[:1]).eval()
            for task, value in out.items():
                torch.testing.assert_close(loaded(x)[task], value, rtol=0, atol=0)
    if "split" not in kinds(spec):  # split models: not monotone yet (measured, see below)
        pairs = list(zip(costs, costs[1:], strict=False))  # (MACs, parameters) per ratio
        assert all(a[0] >= b[0] and a[1] >= b[1] for a, b in pairs), costs
    assert same_state(model, snapshot)


@settings(max_examples=8 * SCALE)
@given(spec=ALL_SPECS, seed=st.integers(0, 1000), keep=st.floats(0.3, 0.9))
def test_all_forms_masked_equals_physical(spec, seed, keep):
    """Random channel masks outside the attention blocks (their heads are the pruner's)."""
    model = RandomNet(spec)
    snapshot = state_snapshot(model)
    g = torch.Generator().manual_seed(seed)
    masks = {
        name: torch.rand(p.shape[0], *[1] * (p.dim() - 1), generator=g) < keep
        for name, p in model.named_parameters()
        if p.dim() > 1 and name.startswith("trunk.") and ".attn." not in name
        and ".inp." not in name
    }  # fmt: skip
    x = batches_for(model)[0][0]
    try:
        compact = atp.prune_by_masks(model, masks, x[:1])
    except Exception as error:
        assert _allowed_error(spec, False, error), error
        return
    masked = apply_masks(model, atp.align_masks(model, masks, x[:1]))
    out_c, out_m = compact(x), masked(x)
    assert out_c.keys() == out_m.keys()
    # the tolerance of the library's own check (cut_plugin.checks.check_outputs): atol scales
    # with the largest output magnitude, since removed channels change the summation order
    scale = max(1.0, max(float(v.abs().max()) for v in out_m.values()))
    for task in out_m:
        torch.testing.assert_close(out_c[task], out_m[task], atol=1e-5 * scale, rtol=1e-4)
    assert same_state(model, snapshot)
