"""Block Caching's schedules (Wimbauer et al., CVPR 2024, Eq. 7), derived from a profile's
per-block change: each block is computed at the first step; after a computed step it is reused
while the change accumulated since then stays at or below `delta`, and recomputed at the step
where it would exceed it (the accumulator restarts there). delta = 0 never reuses, even where the
profile saw no change at all, so that it gives bitwise the uncached model."""

import math
from typing import List, Optional, Sequence


def derive_schedule(change: Sequence[Sequence[float]], delta: float) -> List[List[bool]]:
    """change[block][step]: the block's relative L1 change from step − 1 to step (step 0 is
    ignored). Returns compute[block][step] (True: compute, False: reuse)."""
    if not isinstance(delta, (int, float)) or isinstance(delta, bool) or delta < 0 or \
            math.isnan(delta):
        raise ValueError(f"delta: expected a non-negative number, got {delta!r}")
    schedule = []
    for row in change:
        compute, accumulated = [True], 0.0
        for value in list(row)[1:]:
            value = float(value)
            if delta == 0 or not math.isfinite(value) or accumulated + value > delta:
                compute.append(True)          # a NaN/Inf change never lets a block be reused
                accumulated = 0.0
            else:
                compute.append(False)
                accumulated += value
        schedule.append(compute)
    return schedule


def compute_fraction(schedule, weights: Optional[Sequence[float]] = None) -> float:
    """The fraction of block calls a schedule computes, all blocks weighted alike or, given
    `weights` (one a block, e.g. its FLOPs), the fraction of the blocks' work."""
    if weights is None:
        cells = [c for row in schedule for c in row]
        return sum(cells) / len(cells)
    if len(weights) != len(schedule) or not all(w >= 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights: expected {len(schedule)} non-negative numbers, not all "
                         f"zero, got {list(weights)!r}")
    done = sum(w * sum(row) / len(row) for w, row in zip(weights, schedule))
    return done / sum(weights)


def delta_for_compute(change, target: float, iterations: int = 60,
                      weights: Optional[Sequence[float]] = None) -> float:
    """The smallest delta whose schedule computes at most `target` of the block calls (of the
    blocks' work, given per-block `weights`), by bisection (compute falls as delta grows)."""
    if not isinstance(target, (int, float)) or isinstance(target, bool) or not 0 < target <= 1:
        raise ValueError(f"target_compute: expected a fraction in (0, 1], got {target!r}")
    steps = len(change[0])
    floor = 1 / steps
    if target < floor:
        raise ValueError(f"target_compute: {target} is below {floor:.4f}, the compute of "
                         f"reusing every block after the first of {steps} steps")
    finite = [float(v) for row in change for v in list(row)[1:] if math.isfinite(float(v))]
    lo, hi = 0.0, max(1e-12, sum(finite))
    if compute_fraction(derive_schedule(change, lo), weights) <= target:
        return lo
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if compute_fraction(derive_schedule(change, mid), weights) <= target:
            hi = mid
        else:
            lo = mid
    return hi
