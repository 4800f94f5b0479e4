"""score_tasks' element scores equal the plain loop's on random architectures (to 1e-5 relative).

The reference is the loop a user writes by hand (the benchmark's baseline): one
forward per batch, one ``torch.autograd.grad`` per task over every parameter, and
``Σ_b |w·∂L_t^b/∂w|`` (taylor) or ``½ w² Σ_b (∂L_t^b/∂w)²`` (fisher). Any faster
route inside score_tasks must keep these scores.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cut_plugin import score_tasks
from tests.random_models import SPECS, RandomNet, batches_for, cross_entropy_losses


def looped_scores(model, batches, losses, criterion):
    named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    params = [p for _, p in named]
    scores: dict[str, dict[str, torch.Tensor]] = {t: {} for t in losses}
    for inputs, targets in batches:
        outputs = model(inputs)
        for i, task in enumerate(losses):
            loss = losses[task](outputs[task], targets[task])
            grads = torch.autograd.grad(
                loss, params, retain_graph=i < len(losses) - 1, allow_unused=True
            )
            for (name, p), g in zip(named, grads, strict=True):
                if g is None:
                    continue
                term = (p * g).abs() if criterion == "taylor" else g.square()
                scores[task][name] = scores[task].get(name, 0) + term.detach()
    if criterion == "fisher":
        params_of = dict(named)
        return {
            t: {n: 0.5 * params_of[n].detach().square() * v for n, v in s.items()}
            for t, s in scores.items()
        }
    return scores


@settings(max_examples=3, deadline=None)
@given(SPECS, st.sampled_from(["taylor", "fisher"]))
def test_score_tasks_equals_the_plain_loop(spec, criterion):
    torch.manual_seed(spec.seed)
    model = RandomNet(spec)
    batches = batches_for(model, count=2)
    losses = cross_entropy_losses(model)
    scores = score_tasks(model, batches, losses, criterion=criterion, progress=False)
    expected = looped_scores(model, batches, losses, criterion)
    assert scores.keys() == expected.keys()
    for task in expected:
        assert scores[task].keys() == expected[task].keys(), task
        for name, value in expected[task].items():
            torch.testing.assert_close(scores[task][name], value, rtol=1e-5, atol=1e-12)
    assert any(bool(v.abs().sum() > 0) for s in scores.values() for v in s.values())
