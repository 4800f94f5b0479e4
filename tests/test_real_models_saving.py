"""``save_pruned(..., example_inputs=...)`` stores the saved model's output shapes and
``load_pruned`` checks the rebuilt model against them; older files (v1, v2 without
shapes) still load."""

from __future__ import annotations

import pytest
import torch

import adapters.torch_pruning as atp
from cut_plugin.record import read_record
from tests.toy_models import ResidualNet, example_input, init_nontrivial, losses_for, make_batches


@pytest.fixture(scope="module")
def pruned() -> tuple[torch.nn.Module, torch.Tensor]:
    model = init_nontrivial(ResidualNet())
    x = example_input(model, 2)
    compact = atp.cut_prune(
        model, x[:1], tasks=["a", "seg"], losses=losses_for(model), data=make_batches(model, 1),
        pruning_ratio=0.4, progress=False,
    )  # fmt: skip
    return compact.eval(), x


def _same(loaded: torch.nn.Module, compact: torch.nn.Module, x: torch.Tensor) -> None:
    out, ref = loaded.eval()(x), compact(x)
    assert list(out) == list(ref) == ["a", "seg"]
    for task in ref:
        torch.testing.assert_close(out[task], ref[task], rtol=0, atol=0)


def test_saved_output_shapes_are_checked_on_load(tmp_path, pruned):
    compact, x = pruned
    path = tmp_path / "m.pt"
    atp.save_pruned(compact, path, example_inputs=x[:1])
    state = torch.load(path, weights_only=True)
    assert state["input_shapes"] == [[1, 1, 16, 16]]
    assert state["output_shapes"] == {t: list(v.shape) for t, v in compact(x[:1]).items()}
    _same(atp.load_pruned(path, ResidualNet, x[:1]), compact, x)
    _same(atp.load_pruned(path, ResidualNet, x), compact, x)  # another batch size: checked too

    state["output_shapes"]["seg"][1] += 1  # a file whose model computed something else
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"load_pruned.*'seg'.*saved computing"):
        atp.load_pruned(tmp_path / "bad.pt", ResidualNet, x)
    atp.load_pruned(tmp_path / "bad.pt", ResidualNet, x, check=False)  # the opt-out
    # Other input sizes give no shape to predict: the saved shapes are not used.
    state["output_shapes"]["seg"][1] -= 1
    state["output_shapes"]["a"][1] += 1
    torch.save(state, tmp_path / "bad.pt")
    atp.load_pruned(tmp_path / "bad.pt", ResidualNet, torch.randn(1, 1, 24, 24))


def test_older_files_still_load(tmp_path, pruned):
    compact, x = pruned
    atp.save_pruned(compact, tmp_path / "v2.pt")  # no example inputs: a v2 file without shapes
    assert "output_shapes" not in torch.load(tmp_path / "v2.pt", weights_only=True)
    _same(atp.load_pruned(tmp_path / "v2.pt", ResidualNet, x), compact, x)

    record = read_record(compact)
    v1 = {  # the first format: history and tasks at the top level, a traced graph on load
        "format": "cut-pam/pruned-v1",
        "tasks": record.tasks,
        "task_names": None,
        "history": record.history,
        "state_dict": compact.state_dict(),
    }
    torch.save(v1, tmp_path / "v1.pt")
    loaded = atp.load_pruned(tmp_path / "v1.pt", ResidualNet, x)
    assert isinstance(loaded, torch.fx.GraphModule)
    _same(loaded, compact, x)
