"""Every ```python block of README.md runs, on small fixtures, so the README cannot drift from the code.

Blocks are grouped by their ``##`` section and run in order in one namespace per
section, which starts from that section's fixtures (:data:`FIXTURES`) and runs
in a temporary working directory; a ```yaml block whose first line is
``# <file>`` is written to that file. A test case per Python block; after a block,
:data:`CHECKS` asserts what its comments promise.
"""

from __future__ import annotations

import itertools
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[ \t]*$")
Namespace = dict[str, Any]


@dataclass(frozen=True)
class Block:
    """One fenced code block of the README."""

    section: str
    lang: str
    code: str
    line: int


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of ``text`` with their ``##`` section (indented fences included)."""
    blocks: list[Block] = []
    section, lines = "", text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("## "):
            section = line[3:].strip()
        opening = FENCE.match(line)
        if opening is None:
            index += 1
            continue
        indent, start = opening["indent"], index + 1
        index = start
        while index < len(lines) and lines[index].strip() != "```":
            index += 1
        if index == len(lines):
            raise ValueError(f"README.md:{start}: a ``` block is never closed")
        body = [row[len(indent) :] if row.startswith(indent) else row for row in lines[start:index]]
        blocks.append(Block(section, opening["lang"], "\n".join(body) + "\n", start))
        index += 1
    return blocks


BLOCKS = readme_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
PYTHON = [b for b in BLOCKS if b.lang == "python"]


def block_id(block: Block) -> str:
    same = [b for b in PYTHON if b.section == block.section]
    slug = re.sub(r"[^a-z0-9]+", "-", block.section.lower()).strip("-")
    return f"{slug}-{same.index(block) + 1}"


# ------------------------------------------------------------------ fixtures


class MyNet(nn.Module):
    """A tiny pre-trained-looking multi-task CNN on (B, 1, 28, 28): a shared trunk, four heads."""

    CLASSES = {"digit": 10, "parity": 2, "ge5": 2, "mod3": 3}

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.heads = nn.ModuleDict({t: nn.Linear(16, k) for t, k in self.CLASSES.items()})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.trunk(x)
        return {task: head(features) for task, head in self.heads.items()}


def digits() -> Namespace:
    """``MyNet``, ``model``, ``x``, ``loader``/``batches`` of ``(x, {task: target})``, ``losses``."""
    torch.manual_seed(0)
    model = MyNet().eval()
    x = torch.randn(16, 1, 28, 28)
    digit = torch.randint(0, 10, (16,))
    targets = {"digit": digit, "parity": digit % 2, "ge5": (digit >= 5).long(), "mod3": digit % 3}
    loader = [(x[i : i + 8], {t: y[i : i + 8] for t, y in targets.items()}) for i in (0, 8)]
    losses = dict.fromkeys(MyNet.CLASSES, F.cross_entropy)
    return {"MyNet": MyNet, "model": model, "x": x, "loader": loader, "batches": loader,
            "losses": losses}  # fmt: skip


def lenet(classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(200, 32), nn.ReLU(), nn.Linear(32, classes),
    ).eval()  # fmt: skip


def lenets() -> Namespace:
    """Two LeNets (``lenet_a``, ``lenet_b``), merging ``inputs``, ``labels`` (their predictions), ``x``."""
    lenet_a, lenet_b = lenet(5, 1), lenet(5, 2)
    # ×5: activations well above the MI estimator's noise (σ² = 0.1), as trained networks' are
    inputs = 5 * torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        labels = {"A": lenet_a(inputs).argmax(1), "B": lenet_b(inputs).argmax(1)}
    return {"lenet_a": lenet_a, "lenet_b": lenet_b, "inputs": inputs, "labels": labels,
            "nets": {"A": lenet_a, "B": lenet_b}, "x": inputs[:16]}  # fmt: skip


class Head(nn.Module):
    def __init__(self, channels: int, outputs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.out = nn.Conv2d(channels, outputs, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(F.relu(self.conv(x)))


class SegDepthNet(nn.Module):
    """Dense multi-task model on (B, 3, 8, 8): ``seg`` (4 classes per pixel) and ``depth``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.heads = nn.ModuleDict({"seg": Head(8, 4), "depth": Head(8, 1)})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.backbone(x)
        return {task: head(features) for task, head in self.heads.items()}


def seg_depth() -> Namespace:
    """``model``, ``batches``, ``example_inputs`` and ``training_func`` (your NNI training loop)."""
    pytest.importorskip("nni")
    torch.manual_seed(0)
    model = SegDepthNet().eval()
    x = torch.randn(8, 3, 8, 8)
    targets = {"seg": torch.randint(0, 4, (8, 8, 8)), "depth": torch.rand(8, 1, 8, 8)}
    batches = [(x[i : i + 4], {t: y[i : i + 4] for t, y in targets.items()}) for i in (0, 4)]

    def training_func(model, optimizer, training_step, lr_schedulers=None, max_steps=None,
                      max_epochs=None):  # fmt: skip
        model.train()
        for batch in itertools.islice(itertools.cycle(batches), max_steps or len(batches)):
            optimizer.zero_grad()
            training_step(batch, model).backward()
            optimizer.step()

    return {"model": model, "batches": batches, "example_inputs": x[:2],
            "training_func": training_func}  # fmt: skip


def shipping() -> Namespace:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from cut_plugin import select_tasks

    namespace = digits()
    namespace["compact"] = select_tasks(namespace["model"], ["digit", "parity"])
    return namespace


def distributed() -> Namespace:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    patch = pytest.MonkeyPatch()
    for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0",
                        "WORLD_SIZE": "1"}.items():  # fmt: skip
        patch.setenv(name, value)
    return {**digits(), "_undo": patch.undo}


def adding_a_method() -> Namespace:
    return {**lenets(), **digits()}  # the same (B, 1, 28, 28) inputs for both


FIXTURES: dict[str, Callable[[], Namespace]] = {
    "Two commands": dict,  # the scenes example needs nothing
    "CUT with Torch-Pruning": digits,
    "PAM and MTZ": lenets,
    "NNI": seg_depth,
    "Shipping to a device": shipping,
    "Scoring on several machines": distributed,
    "Adding a method": adding_a_method,
}


# ------------------------------------------------------------------ checks


def outputs_of(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    with torch.no_grad():
        return dict(model.eval()(x))


def check_cut(ns: Namespace) -> None:
    x = ns["x"]
    assert set(outputs_of(ns["compact"], x)) == {"digit", "parity"}
    assert set(outputs_of(ns["model"], x)) == set(MyNet.CLASSES)  # `model` is untouched
    same, compact = outputs_of(ns["same"], x), outputs_of(ns["compact"], x)
    assert all(torch.allclose(same[t], compact[t], atol=1e-6) for t in compact)


def check_step_by_step(ns: Namespace) -> None:
    from adapters.torch_pruning import count_macs
    from cut_plugin import mask_sparsity

    assert 0.6 < mask_sparsity(ns["masks"]) < 0.8  # pruning_ratio=0.7
    assert count_macs(ns["compact"], ns["x"][:1])[0] < count_macs(ns["model"], ns["x"][:1])[0]
    assert ns["imp"].scores and set(ns["imp"].scores) <= set(MyNet.CLASSES)


def check_pam(ns: Namespace) -> None:
    tasks = frozenset({"A", "B"})
    assert set(outputs_of(ns["merged"], ns["x"])) == tasks
    assert set(outputs_of(ns["only_a"], ns["x"])) == {"A"}
    assert ns["costs"][frozenset({"A"})].macs < ns["costs"][tasks].macs
    from pam_plugin import combination_costs

    assert combination_costs(ns["small"], ns["x"][:1])[tasks].macs < ns["costs"][tasks].macs
    assert list(ns["merged"].group_sizes()) == ["0", "3", "7", "9"]  # module names


def check_gates(ns: Namespace) -> None:
    merged, thinned = ns["merged"].group_sizes(), ns["thinned"].group_sizes()
    assert list(thinned) == list(merged)
    shared = [(layer, g) for layer, groups in merged.items() for g in groups
              if len(ns["merged"].group_tasks[g]) >= 2]  # fmt: skip
    assert sum(thinned[layer][g] for layer, g in shared) < sum(
        merged[layer][g] for layer, g in shared
    )
    assert all(thinned[layer][g] == merged[layer][g]  # exclusive groups are not thinned
               for layer, groups in merged.items() for g in groups if (layer, g) not in shared)  # fmt: skip


def check_nni(ns: Namespace) -> None:
    outputs = outputs_of(ns["compact"], ns["example_inputs"])
    assert set(outputs) == {"seg", "depth"}
    assert sum(p.numel() for p in ns["compact"].parameters()) < sum(
        p.numel() for p in ns["model"].parameters()
    )


def check_shipping(ns: Namespace) -> None:
    assert list(ns["names"]) == ["digit", "parity"]
    assert Path("compact.onnx").is_file() and Path("compact.pt").is_file()


def check_scoring(ns: Namespace) -> None:
    assert ns["dist"].get_world_size() == 1 and len(ns["shard"]) == len(ns["batches"])
    assert set(ns["scores"]) == set(MyNet.CLASSES)


def check_agp(ns: Namespace) -> None:
    assert ns["masks"] and set(outputs_of(ns["pruned"], ns["example_inputs"])) == {"seg", "depth"}


CHECKS: dict[str, Callable[[Namespace], None]] = {
    "cut-with-torch-pruning-1": check_cut,
    "cut-with-torch-pruning-2": check_step_by_step,
    "pam-and-mtz-1": check_pam,
    "pam-and-mtz-2": check_gates,
    "nni-1": check_nni,
    "nni-2": check_agp,
    "shipping-to-a-device-1": check_shipping,
    "scoring-on-several-machines-1": check_scoring,
}


# ------------------------------------------------------------------ runner

FAST: dict[str, list[tuple[str, str]]] = {
    "cut-with-torch-pruning-1": [("steps=1000", "steps=3")],
    "nni-2": [("interval_steps=100, total_times=10", "interval_steps=2, total_times=2"),
              ("max_steps=1000", "max_steps=4")],
}  # fmt: skip
"""Training lengths sized for real models, shortened for the fixtures (each must still be there)."""

_DONE: dict[str, tuple[int, Namespace, Path]] = {}
"""``{section: (blocks run, namespace, working directory)}``, shared by the cases in order."""


def run_block(block: Block, namespace: Namespace) -> None:
    """Run ``block`` in ``namespace`` (tracebacks point at README.md lines), one CPU thread."""
    source = block.code
    for long, short in FAST.get(block_id(block), []):
        assert long in source, f"README block {block_id(block)} no longer has {long!r}: update FAST"
        source = source.replace(long, short)
    code = compile("\n" * (block.line - 1) + source, str(ROOT / "README.md"), "exec")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(code, namespace)
    finally:
        torch.set_num_threads(threads)


def write_files(section: str, before_line: int, after_line: int) -> None:
    """Write the section's ``# <file>`` yaml blocks between two README lines."""
    for block in BLOCKS:
        first = block.code.splitlines()[0] if block.code.strip() else ""
        if (
            block.section == section
            and block.lang in ("yaml", "yml", "json")
            and before_line < block.line < after_line
            and first.startswith("# ")
        ):
            Path(first[2:].strip()).write_text(block.code, encoding="utf-8")


def finish_section(namespace: Namespace) -> None:
    """Undo what a section's blocks set up globally (environment, a process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    undo = namespace.get("_undo")
    if undo is not None:
        undo()


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names a README block registers vanish after the test."""
    from adapters import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


@pytest.mark.parametrize("block", PYTHON, ids=block_id)
def test_readme_block_runs(
    block: Block, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    if block.section not in FIXTURES:
        pytest.fail(f"README section {block.section!r} has Python code but no fixtures in FIXTURES")
    same = [b for b in PYTHON if b.section == block.section]
    position = same.index(block)
    done, namespace, folder = _DONE.get(block.section, (-1, {}, Path()))
    if done != position:  # the first block, run alone, or an earlier one failed: start again
        done, namespace = 0, FIXTURES[block.section]()
        folder = tmp_path_factory.mktemp(block_id(block))
    monkeypatch.chdir(folder)
    _DONE.pop(block.section, None)
    previous = same[done - 1].line if done else 0
    last = position == len(same) - 1
    try:
        for earlier in same[done:position]:
            write_files(block.section, previous, earlier.line)
            run_block(earlier, namespace)
            previous = earlier.line
        write_files(block.section, previous, block.line)
        run_block(block, namespace)
        CHECKS.get(block_id(block), lambda ns: None)(namespace)
    except BaseException:
        finish_section(namespace)
        raise
    if last:
        finish_section(namespace)
    else:
        _DONE[block.section] = (position + 1, namespace, folder)


def test_every_section_with_code_has_fixtures_and_the_blocks_parse() -> None:
    assert {b.section for b in PYTHON} == set(FIXTURES)
    assert len(PYTHON) >= 10
    for block in PYTHON:
        compile(block.code, f"README.md:{block.line}", "exec")
