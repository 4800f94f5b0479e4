"""The same seed and data give identical masks and identical compact models."""

from __future__ import annotations

import torch

import adapters.torch_pruning as atp
from tests.toy_models import ResidualNet, init_nontrivial, losses_for, make_batches


def _run(granularity: str):
    torch.manual_seed(0)
    model = init_nontrivial(ResidualNet())
    batches = make_batches(model, 2, seed=5)
    return atp.cut_prune(model, batches[0][0][:1], tasks=["a", "b"], losses=losses_for(model), data=batches,
                         pruning_ratio=0.4, granularity=granularity, progress=False)  # fmt: skip


def test_same_seed_same_compact_model():
    first, second = _run("channel"), _run("channel")
    assert atp.pruning_history(first) == atp.pruning_history(second)
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_masks():
    first, second = _run("weight"), _run("weight")
    assert first.cut_pam_masks.keys() == second.cut_pam_masks.keys()
    assert all(
        torch.equal(first.cut_pam_masks[n], second.cut_pam_masks[n]) for n in first.cut_pam_masks
    )
