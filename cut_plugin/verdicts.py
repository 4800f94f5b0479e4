"""The fused verdict of ``fuse_blocks``' verdict rules, calibrated or not, from one ranking per task.

``cut_plugin.fusion.fuse_blocks`` searches (by bisection) the per-task keep fraction
``f`` at which the fused verdict keeps the asked share: task ``t`` keeps its ranks
``r < round(f·count_t)`` (ties by position) and a block is kept when at least
``needed`` of its users keep it. :func:`search_verdict` runs that search exactly:

- a task ranks its blocks once (:class:`TaskOrder`). On CPU nothing is sorted: each
  block gets a distinct int64 key and the rank ``round(f·count_t)`` is placed by a lazy
  quickselect (numpy's partition of only the segment between the ranks already
  placed), about two passes over the keys for the whole search; elsewhere one stable
  sort per task;
- one vote count follows the fractions visited: moving from ``f`` to ``f'`` adds or
  removes one vote on the blocks ranked between ``round(f·count_t)`` and
  ``round(f'·count_t)`` only, and the kept size changes by the blocks that cross their
  threshold, so a step costs the blocks whose task verdicts change, not a re-count.

It replaced a float ladder per rank fused by an order statistic (with rounding
corrections); the verdicts are the same (``tests/test_masks_calibration.py``).
"""

from __future__ import annotations

import bisect
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "TaskOrder",
    "descending_keys",
    "needed_votes",
    "search_verdict",
]


def needed_votes(users: Tensor, rule: str, votes: int) -> Tensor:
    """How many keep-verdicts each block needs: ``min(votes, #users)``, 1 (any) or #users (all)."""
    if rule == "any":
        return torch.ones_like(users)
    if rule == "all":
        return users
    return users.clamp(max=min(votes, torch.iinfo(users.dtype).max))


def descending_keys(row: Tensor) -> Tensor:
    """Integer keys whose ascending order is ``row``'s descending order (equal values tie).

    The IEEE bit pattern of a float, with the magnitude bits flipped for negative
    numbers, orders like the float; a stable sort of these keys (int32 for float32,
    about 2.5× faster than a stable float argsort on CPU) ranks ties by position.
    """
    if row.dtype == torch.float64:
        bits, mask = (row + 0.0).view(torch.int64), 0x7FFFFFFFFFFFFFFF
    else:
        bits, mask = (row.float() + 0.0).view(torch.int32), 0x7FFFFFFF  # + 0.0: -0.0 ties 0.0
    return ~(bits ^ ((bits >> (bits.element_size() * 8 - 1)) & mask))


def _on_numpy(device: torch.device) -> bool:
    """Whether the search runs on numpy arrays (CPU, where numpy's selection, compaction
    and indexing are much faster than torch's) rather than on torch tensors."""
    return device.type == "cpu"


class _Scratch:
    """Buffers one worker computes CPU keys in."""

    def __init__(self, num_blocks: int, positions: np.ndarray) -> None:
        self.floats = np.empty(num_blocks, dtype=np.float32)
        self.ints = np.empty(num_blocks, dtype=np.int32)
        self.positions = positions


class TaskOrder:
    """One task's used blocks in its ranking (0 = the largest value, ties by position).

    :meth:`blocks` gives the blocks of ranks ``[start, stop)`` once both ends are placed
    (:meth:`place`); the task's top ``L`` blocks are ``blocks(0, L)``.

    With ``scratch`` (CPU, float32 or narrower values) nothing is sorted: a used block's
    key is the order bits of ``-value`` above its position, distinct int64s whose
    ascending order is the ranking, and :meth:`place` partitions (numpy's introselect)
    only the segment between the ranks already placed. Otherwise one stable sort
    places every rank.
    """

    def __init__(self, row: Tensor, used: Tensor, scratch: _Scratch | None = None) -> None:
        self._known: list[int] = []
        self._keys: np.ndarray | None = None
        self._order: Any = None
        if scratch is not None:
            bits = np.subtract(0.0, row.float().numpy(), out=scratch.floats).view(np.int32)
            high = np.right_shift(bits, 31, out=scratch.ints)  # 0.0 - v: -0.0 ties 0.0
            high &= 0x7FFFFFFF
            high ^= bits  # the floats -v in ascending integer order
            mask = used.numpy()
            if mask.all():
                index, keys = scratch.positions, high.astype(np.int64)
            else:
                index = np.flatnonzero(mask)
                keys = np.take(high, index).astype(np.int64)
            keys <<= 32
            keys |= index
            self._keys, self.count = keys, keys.size
            return
        where = used.nonzero().squeeze(1)
        order = torch.sort(descending_keys(row.index_select(0, where)), stable=True).indices
        self._order = where.index_select(0, order)
        if _on_numpy(row.device):
            self._order = self._order.numpy()
        self.count = where.numel()

    def place(self, rank: int) -> None:
        """Partition the keys so that ranks ``< rank`` come first (``0 <= rank <= count``)."""
        if self._keys is None or rank <= 0 or rank >= self.count:
            return
        i = bisect.bisect_left(self._known, rank)
        if i < len(self._known) and self._known[i] == rank:
            return
        start = self._known[i - 1] + 1 if i > 0 else 0
        stop = self._known[i] if i < len(self._known) else self.count
        # Keys are distinct: afterwards every key before `rank` is smaller and every key
        # from `rank` on larger, in the segment and so in the whole array.
        self._keys[start:stop].partition(rank - start)
        self._known.insert(i, rank)

    def blocks(self, start: int, stop: int) -> Any:
        """Int64 positions of the blocks of ranks ``[start, stop)`` (both placed), in no order."""
        if self._keys is None:
            return self._order[start:stop]
        return self._keys[start:stop] & 0xFFFFFFFF


class _Votes:
    """The fused verdict at the tasks' ranks ``at``: per block, the votes it still lacks."""

    def __init__(self, orders: list[TaskOrder], short: Any, sizes: Any) -> None:
        self.orders, self.short, self.sizes = orders, short, sizes  # kept where short <= 0
        self.at = [0] * len(orders)
        self.size: int | float = 0  # of the kept blocks

    def move(self, ranks: list[int]) -> int | float:
        """Each task keeps its top ``ranks[t]`` blocks now: update the votes, return the kept size."""
        for order, now, new in zip(self.orders, self.at, ranks, strict=True):
            if new != now:
                self.size += self._bump(order.blocks(min(now, new), max(now, new)), new > now)
        self.at = list(ranks)
        return self.size

    def _bump(self, index: Any, up: bool) -> int | float:
        """One vote more (``up``) or less on the distinct blocks ``index``; the size that crosses."""
        on_numpy = isinstance(self.short, np.ndarray)
        short = np.take(self.short, index) if on_numpy else self.short.index_select(0, index)
        if up:
            short -= 1
            crossed = short == 0  # kept from now on
        else:
            crossed = short == 0  # kept until now
            short += 1
        if on_numpy:
            self.short[index] = short
        else:
            self.short.index_copy_(0, index, short)
        if self.sizes is None:
            size = crossed.sum().item()
        else:
            sizes = np.take(self.sizes, index) if on_numpy else self.sizes.index_select(0, index)
            size = (sizes * crossed).sum().item()
        return size if up else -size

    def kept(self) -> Tensor:
        kept = self.short <= 0
        return torch.from_numpy(kept) if isinstance(kept, np.ndarray) else kept


def _orders(values: Tensor, used: Tensor, workers: int) -> list[TaskOrder]:
    num_tasks, num_blocks = values.shape
    packs = (
        _on_numpy(values.device)
        and values.dtype != torch.float64
        and sys.byteorder == "little"
        and num_blocks < 2**31
    )
    if not packs:
        return [TaskOrder(values[t], used[t]) for t in range(num_tasks)]
    positions = np.arange(num_blocks, dtype=np.int64)

    def build(worker: int) -> list[tuple[int, TaskOrder]]:
        scratch = _Scratch(num_blocks, positions)
        tasks = range(worker, num_tasks, workers)
        return [(t, TaskOrder(values[t], used[t], scratch)) for t in tasks]

    if workers == 1:
        return [o for _, o in build(0)]
    with ThreadPoolExecutor(workers) as pool:  # numpy releases the GIL on these arrays
        built = dict(pair for part in pool.map(build, range(workers)) for pair in part)
    return [built[t] for t in range(num_tasks)]


def search_verdict(
    values: Tensor,
    used: Tensor,
    needed: Tensor,
    users: Tensor,
    *,
    keep: float,
    calibrate: bool,
    grain: Tensor | None = None,
) -> Tensor:
    """``(num_blocks,)`` bool: the fused verdict of ``fuse_blocks``' verdict rules.

    Each task keeps its top ``round(f·count_t)`` used blocks; a block with users is
    kept when at least ``needed`` of them keep it. ``f = keep`` without ``calibrate``;
    with it, ``f`` is bisected on ``[0, 1]`` (at most 40 steps, stopping within 0.1 %)
    for the kept blocks to hold ``keep`` of the used blocks' size (``grain``, integer
    valued, default 1 each), and the closest fraction visited wins (``keep`` on a tie).
    The verdict is exactly that of ranking every task at every step. Tasks rank in
    parallel on up to ``torch.get_num_threads()`` threads.
    """
    num_tasks = values.shape[0]
    device = values.device
    workers = max(1, min(num_tasks, torch.get_num_threads()))
    orders = _orders(values, used, workers)
    # The votes each block still lacks to be kept; a block without users is never kept.
    short: Any = needed.to(torch.int8 if num_tasks < 100 else torch.int32, copy=True)
    live: Any = users > 0
    sizes: Any = None
    if grain is not None:
        sizes = grain.to(device, torch.float64 if grain.is_floating_point() else torch.int64)
    if _on_numpy(device):
        short, live = short.numpy(), live.numpy()
        sizes = None if sizes is None else sizes.numpy()
    short[~live] = num_tasks + 1
    total = max(float((live if sizes is None else sizes * live).sum().item()), 1.0)
    counts = [o.count for o in orders]
    pool = ThreadPoolExecutor(workers) if workers > 1 and orders[0]._keys is not None else None

    def ranks(fraction: float) -> list[int]:
        # round(fraction * count): the float64 product rounded half to even, as torch.round.
        result = [round(fraction * n) for n in counts]
        if pool is None:
            for order, rank in zip(orders, result, strict=True):
                order.place(rank)
        else:
            list(pool.map(TaskOrder.place, orders, result))
        return result

    votes = _Votes(orders, short, sizes)
    try:
        best = ranks(keep)
        best_error = abs(votes.move(best) / total - keep)
        low, high = 0.0, 1.0
        for _ in range(40 if calibrate else 0):
            if best_error <= 1e-3:
                break
            middle = (low + high) / 2
            at = ranks(middle)
            fraction = votes.move(at) / total
            if abs(fraction - keep) < best_error:
                best, best_error = at, abs(fraction - keep)
            low, high = (middle, high) if fraction < keep else (low, middle)
    finally:
        if pool is not None:
            pool.shutdown()
    votes.move(best)
    return votes.kept()
