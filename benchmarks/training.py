"""Training, evaluation and a disk cache of pretrained benchmark models.

``pretrained`` trains a zoo model once on a benchmark dataset and stores its
state dict under ``cache_dir``, keyed by a hash of everything that determines
the weights: model config, data config, task, seed, training config and
``CODE_VERSION`` (bump it when models, data or training change).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.data import IGNORE_INDEX, Split, TaskData, batches, load_data
from benchmarks.devices import forward, host, model_device, on_host
from benchmarks.models import build_model
from cut_plugin import train_tasks
from cut_plugin.vocabulary import Loss, check_int

CODE_VERSION = "zoo-1"
"""Part of every cache key: change it when a model, dataset or training detail changes."""

Batch = tuple[Tensor, Mapping[str, Tensor]]


def _as_dict(output: Any, tasks: Iterable[str]) -> dict[str, Tensor]:
    if isinstance(output, Mapping):
        return dict(output)
    names = list(tasks)
    if isinstance(output, Tensor) and len(names) == 1:
        return {names[0]: output}
    raise TypeError(
        f"the model returned {type(output).__name__}; a single-task model (Tensor output) needs "
        f"exactly one task, got {names}"
    )


def train(
    model: nn.Module,
    train_batches_fn: Callable[[int], Iterable[Batch]],
    losses: Mapping[str, Loss],
    *,
    epochs: int,
    lr: float = 1e-3,
    seed: int = 0,
    weight_decay: float = 0.0,
    progress: bool = True,
) -> list[float]:
    """Train ``model`` in place (Adam, cosine-annealed ``lr``); return the mean loss of each epoch.

    ``train_batches_fn(epoch)`` returns that epoch's ``(inputs, {task: target})``
    batches; the loss is the sum of ``losses[task]`` over tasks. A task whose
    targets in a batch are all ``IGNORE_INDEX`` adds nothing for that batch. The
    model is left in eval mode. The loop is ``cut_plugin.train_tasks``.
    """
    check_int("epochs", epochs)
    torch.manual_seed(seed)
    history = train_tasks(
        model,
        train_batches_fn,
        losses,
        epochs=epochs,
        optimizer=lambda params: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay),
        scheduler=lambda optimizer: torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=epochs
        ),
        ignore_index=IGNORE_INDEX,
        task_names=list(losses) if isinstance(losses, Mapping) and len(losses) == 1 else None,
        progress=progress,
        desc="train",
    )
    model.eval()
    return history.epoch_losses()


@torch.no_grad()
def evaluate(
    model: nn.Module, data: TaskData | Split | Iterable[Batch], *, batch_size: int = 512
) -> dict[str, float]:
    """Accuracy per task on ``data`` (a ``TaskData`` means its test split).

    Class-index targets: top-1 accuracy over samples whose target is not
    ``IGNORE_INDEX``. Multi-label 0/1 float targets: accuracy of ``logit > 0``
    over all labels. The model's train/eval mode is restored afterwards.
    """
    if isinstance(data, TaskData):
        data = data.test
    source = batches(data, batch_size, shuffle=False) if isinstance(data, Split) else data
    was_training = model.training
    model.eval()
    correct: dict[str, float] = {}
    total: dict[str, float] = {}
    try:
        for inputs, targets in source:
            outputs = on_host(_as_dict(forward(model, inputs), targets))
            for task, target in targets.items():
                if task not in outputs:
                    continue
                if target.is_floating_point():
                    hits = float(((outputs[task] > 0) == (target > 0.5)).sum())
                    n = float(target.numel())
                else:
                    valid = target != IGNORE_INDEX
                    hits = float((outputs[task].argmax(-1) == target)[valid].sum())
                    n = float(valid.sum())
                correct[task] = correct.get(task, 0.0) + hits
                total[task] = total.get(task, 0.0) + n
    finally:
        model.train(was_training)
    return {t: correct[t] / total[t] for t in total if total[t] > 0}


def cache_key(config: Mapping[str, Any]) -> str:
    """The hex SHA-256 of ``config`` as canonical JSON (sorted keys)."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _save_atomic(path: Path, write: Callable[[Path], object]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(temporary)
    os.replace(temporary, path)


@dataclass(frozen=True)
class _Plan:
    """What ``pretrained`` builds and where it caches it."""

    data: TaskData
    options: dict[str, Any]
    config: dict[str, Any]
    weights: Path

    @property
    def record(self) -> Path:
        return self.weights.with_suffix(".json")


def _plan(
    name: str,
    data_key: str | TaskData,
    *,
    seed: int,
    task: str | None,
    data_kwargs: Mapping[str, Any] | None,
    model_kwargs: Mapping[str, Any] | None,
    training: dict[str, Any],
    cache_dir: str | os.PathLike[str],
) -> _Plan:
    if isinstance(data_key, TaskData):
        if data_kwargs:
            raise TypeError("data_kwargs apply to a data key; a TaskData is already built")
        data = data_key
    elif isinstance(data_key, str):
        data = load_data(data_key, **dict(data_kwargs or {}))
    else:
        raise TypeError(
            f"data_key must be a data key string or a TaskData, got {type(data_key).__name__}"
        )
    if task is not None:
        data = data.for_task(task)
    shape = data.input_shape
    options = {"in_channels": shape[0], "input_size": list(shape[1:]), **dict(model_kwargs or {})}
    if task is None:
        options["tasks"] = dict(data.num_classes)
    else:
        options["num_classes"] = data.num_classes[task]
    config = {
        "model": {"name": name, **options},
        "data": data.config,
        "task": task,
        "seed": seed,
        "train": training,
        "version": CODE_VERSION,
    }
    stem = "-".join(part for part in (name, data.name, task, cache_key(config)[:16]) if part)
    return _Plan(data, options, config, Path(cache_dir) / f"{stem}.pt")


def pretrained(
    name: str,
    data_key: str | TaskData,
    *,
    seed: int = 0,
    task: str | None = None,
    data_kwargs: Mapping[str, Any] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    cache_dir: str | os.PathLike[str] = ".cache/cut-pam",
    retrain: bool = False,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """A zoo model ``name`` trained on ``data_key``, from the disk cache when it is there.

    ``data_key`` is a key of ``benchmarks.data.DATASETS`` (built with
    ``data_kwargs``) or a ``TaskData``. Without ``task`` the model is multi-task
    (one head per task, returns ``{task: logits}``); with ``task`` it is a
    single-task network trained on ``data.for_task(task)`` only (returns a
    Tensor), like the networks PAM merges. ``model_kwargs`` go to
    ``build_model``. The result is in eval mode. ``retrain=True`` ignores and
    overwrites the cache. :func:`pretrained_record` gives the training record.

    ``device``: where the model trains and is returned. It is built on the host
    first (the same initial weights on every device) and cached as CPU tensors,
    so a cached model serves every device; the cache key does not name one.
    """
    training = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "weight_decay": weight_decay}
    plan = _plan(
        name,
        data_key,
        seed=seed,
        task=task,
        data_kwargs=data_kwargs,
        model_kwargs=model_kwargs,
        training=training,
        cache_dir=cache_dir,
    )
    torch.manual_seed(seed)
    with host():
        model = build_model(name, **plan.options)
    model.to(device)
    if plan.weights.is_file() and not retrain:
        state = torch.load(plan.weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        return model.eval()
    data = plan.data
    start, cpu_start = time.perf_counter(), time.process_time()
    history = train(
        model,
        lambda epoch: batches(data.train, batch_size, seed=seed * 1000 + epoch, shuffle=True),
        data.losses(),
        epochs=epochs,
        lr=lr,
        seed=seed,
        weight_decay=weight_decay,
        progress=progress,
    )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    record = {
        "config": plan.config,
        "key": cache_key(plan.config),
        **_test_scores(model, data),
        "train_seconds": seconds,
        "seconds_per_epoch": seconds / epochs,
        "cpu_seconds_per_epoch": cpu_seconds / epochs,  # all threads; robust to a busy machine
        "loss_history": history,
        "torch": torch.__version__,
        "device": str(model_device(model)),
        "threads": torch.get_num_threads(),  # CPU training is reproducible at a fixed count only
    }
    plan.weights.parent.mkdir(parents=True, exist_ok=True)
    _save_atomic(plan.weights, lambda p: torch.save(on_host(model.state_dict()), p))
    _save_atomic(plan.record, lambda p: p.write_text(json.dumps(record, indent=2, default=str)))
    return model.eval()


def _test_scores(model: nn.Module, data: TaskData) -> dict[str, Any]:
    """``test_accuracy`` per task, or for dense data every metric per task (``test_scores``)."""
    if data.is_dense:
        from benchmarks.dense import dense_scores

        return {"test_scores": dense_scores(model, data)}
    return {"test_accuracy": evaluate(model, data)}


def pretrained_record(name: str, data_key: str | TaskData, **kwargs: Any) -> dict[str, Any]:
    """The training record of ``pretrained(name, data_key, **kwargs)`` (trains it if not cached).

    Keys: ``config``, ``key``, ``test_accuracy`` ``{task: float}`` (dense data:
    ``test_scores`` ``{task: {metric: float}}``),
    ``train_seconds``, ``seconds_per_epoch``, ``cpu_seconds_per_epoch``, ``loss_history``,
    ``torch``.
    """
    bound = inspect.signature(pretrained).bind(name, data_key, **kwargs)
    bound.apply_defaults()
    args = dict(bound.arguments)
    training = {k: args[k] for k in ("epochs", "lr", "batch_size", "weight_decay")}
    keys = ("seed", "task", "data_kwargs", "model_kwargs", "cache_dir")
    plan = _plan(name, data_key, training=training, **{k: args[k] for k in keys})
    if not plan.record.is_file():
        args["retrain"] = True
    pretrained(**args)
    return json.loads(plan.record.read_text())
