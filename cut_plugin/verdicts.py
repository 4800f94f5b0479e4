"""The fused verdict at any keep fraction, from one ranking per task (``fuse_blocks``' calibration).

``cut_plugin.fusion.fuse_blocks`` searches the per-task keep fraction whose fused
verdict keeps the asked share; :class:`Verdicts` makes each step of that search
one comparison over all blocks instead of a re-ranking of every task.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["Verdicts", "descending_keys", "ladder", "needed_votes", "order_statistic"]


def needed_votes(users: Tensor, rule: str, votes: int) -> Tensor:
    """How many keep-verdicts each block needs: ``min(votes, #users)``, 1 (any) or #users (all)."""
    if rule == "any":
        return torch.ones_like(users)
    if rule == "all":
        return users
    return users.clamp(max=votes)


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


def ladder(start: int, stop: int, count: int, device: torch.device) -> Tensor:
    """``((r + ½) / count for r in [start, stop))`` float64: the fraction ranks rank by.

    Strictly increasing in ``r`` (its spacing ``1/count`` exceeds the rounding), and one
    kernel for the whole ladder and for any piece of it, so pieces match it exactly.
    """
    return torch.arange(start, stop, dtype=torch.float64, device=device).add_(0.5).div_(count)


def order_statistic(rows: Tensor, position: Tensor) -> Tensor:
    """``rows`` ``(num_rows, n)``: per column, the value of rank ``position`` (0 = smallest).

    Few rows (tasks): an odd-even transposition network of elementwise min/max, much
    faster on CPU than a strided sort along dim 0.
    """
    num_rows = rows.shape[0]
    if num_rows == 1:
        return rows[0]
    if num_rows > 8:
        return rows.sort(dim=0).values.gather(0, position[None, :]).squeeze(0)
    ordered = list(rows.unbind(0))
    for sweep in range(num_rows):
        for i in range(sweep % 2, num_rows - 1, 2):
            ordered[i], ordered[i + 1] = (
                torch.minimum(ordered[i], ordered[i + 1]),
                torch.maximum(ordered[i], ordered[i + 1]),
            )
    result = ordered[0]
    for i in range(1, num_rows):
        result = torch.where(position == i, ordered[i], result)
    return result


class Verdicts:
    """Every task ranks once; then the fused verdict at any keep fraction ``f``, exactly.

    Task ``t`` (``count_t`` blocks) keeps its ranks ``r < round(f·count_t)``. Its rank
    ``r`` is mapped to ``(r + ½)/count_t`` (the ladder), so that ``ladder ≤ f`` is the
    same verdict up to rounding at ``f``, and a block's fused verdict is then
    ``fractions ≤ f``, with ``fractions`` the ``needed``-th smallest of its users'
    ladder values: one threshold over all blocks, which a bisection can search without
    re-ranking. Where the float rounding of ``f·count_t`` (half to even) decides
    otherwise (at most a rank or two per task and fraction) :meth:`corrections` gives
    those blocks' exact verdicts, so the verdict is exactly the rank-count rule's.
    """

    def __init__(self, values: Tensor, used: Tensor, needed: Tensor, users: Tensor) -> None:
        num_tasks, num_blocks = values.shape
        device = values.device
        self.needed, self.counts = needed, used.sum(dim=1).to(torch.float64)
        self.ladders = torch.full(values.shape, math.inf, dtype=torch.float64, device=device)
        self.orders: list[Tensor] = []
        small = torch.int32 if num_blocks < 2**31 else torch.long
        for t in range(num_tasks):
            index = None if bool(used[t].all()) else used[t].nonzero().flatten()
            row = values[t] if index is None else values[t, index]
            order = torch.sort(descending_keys(row), stable=True).indices
            if index is not None:
                order = index[order]
            self.ladders[t].index_put_((order,), ladder(0, row.numel(), row.numel(), device))
            self.orders.append(order.to(small))
        position = (needed.clamp(min=1) - 1).clamp(max=num_tasks - 1).long()
        fractions = order_statistic(self.ladders, position)
        self.fractions = torch.where(users > 0, fractions, torch.full_like(fractions, math.inf))

    def corrections(self, fraction: float) -> tuple[Tensor, Tensor] | None:
        """``(blocks, exact verdicts)`` where ``fractions <= fraction`` is not the exact verdict."""
        limits = torch.round(fraction * self.counts).long()
        device = self.ladders.device
        pieces = []
        for t, order in enumerate(self.orders):
            count = order.numel()
            if count == 0:
                continue
            # How many of the task's ranks have ladder <= fraction (search the ladder).
            guess = min(max(int(fraction * count - 0.5), 0), count)
            start, stop = max(guess - 2, 0), min(guess + 3, count)
            below = int((ladder(start, stop, count, device) <= fraction).sum())
            if below == stop - start and stop < count or below == 0 and start > 0:
                below = int((ladder(0, count, count, device) <= fraction).sum())
            else:
                below += start
            low, high = sorted((int(limits[t]), below))
            if low < high:
                pieces.append(order[low:high].long())
        if not pieces:
            return None
        blocks = torch.cat(pieces).unique()
        ladders = self.ladders[:, blocks]
        ranks = torch.round(ladders * self.counts[:, None] - 0.5)  # inf where unused
        exact = (ranks < limits[:, None]).sum(dim=0) >= self.needed[blocks]
        return blocks, exact & torch.isfinite(self.fractions[blocks])
