"""Block Caching (Wimbauer et al., CVPR 2024): each block reuses its cached residual on the steps
where a profile says it barely changes, on a static schedule (paper Eq. 7), optionally with a
per-channel scale and shift fitted to turn the reused residual into the fresh one."""

import math
from dataclasses import dataclass
from typing import Optional

from cachekern.block_caching.profile import Profile

SCALE_SHIFT = ("fit", "train", None)
FORECAST_TIMES = ("timestep", "step")


@dataclass
class BlockCaching:
    """Block Caching settings.

    Args:
        profile: a cachekern.Profile recorded on this model, scheduler and step count.
        delta: a block is reused while the change accumulated since it was computed stays at or
            below delta (0: never reuse).
        target_compute: instead of delta, the fraction of block calls to compute; delta is found
            by bisection.
        scale_shift: "fit" (the parameters cachekern.fit_scale_shift stored for this schedule:
            closed form, seconds), "train" (those cachekern.train_scale_shift learned by
            distillation) or None (plain reuse).
        calls_per_step: without a pipeline naming the CFG branch through cache_context, calls are
            assigned to branches by order (2: one conditional and one unconditional call a step).
        device_budget_bytes: keep the cached residuals in a cachekern.BlockCache with this many
            bytes on the device, the rest in pinned host memory, fetched ahead of use in
            schedule order; None keeps them all on the device.
        forecast_order: what a reused block adds to its input: 0, its last computed residual;
            1 or 2, a forecast from its last 1 + order computed residuals (fewer where the
            schedule computed fewer yet): with scale_shift=None the polynomial through them,
            extrapolated in `forecast_time`; with scale_shift="fit" the per-channel linear
            combination fitted by cachekern.fit_scale_shift(..., forecast_order=...) (order 0
            is the scale-shift). The schedule is static, so the weights are fixed at patch
            time: no host synchronisation.
        forecast_time: "timestep" (the profile's recorded timesteps: the sampler's own time) or
            "step" (the step index, as diffusers' and cache-dit's TaylorSeer).
        cuda_graphs: on a CUDA device, after one generation has run eagerly, capture each
            (CFG branch, step) model call once as a CUDA graph and replay it (one launch a
            call; outputs the eager ones bit for bit). A call with other shapes or arguments
            runs eagerly for a generation, then captures again. Residuals stay on the device:
            not with device_budget_bytes.
    """

    profile: object
    delta: float = 0.5
    target_compute: Optional[float] = None
    scale_shift: Optional[str] = "fit"
    calls_per_step: int = 1
    device_budget_bytes: Optional[int] = None
    forecast_order: int = 0
    forecast_time: str = "timestep"
    cuda_graphs: bool = False

    def __post_init__(self):
        if not isinstance(self.profile, Profile):
            raise TypeError(f"profile: expected a cachekern.Profile (cachekern.profile(...) or "
                            f"Profile.load(path)), got {type(self.profile).__name__}")
        if not isinstance(self.delta, (int, float)) or isinstance(self.delta, bool) or \
                math.isnan(self.delta) or self.delta < 0:
            raise ValueError(f"delta: expected a non-negative number, got {self.delta!r}")
        if self.target_compute is not None and (
                not isinstance(self.target_compute, (int, float)) or
                isinstance(self.target_compute, bool) or not 0 < self.target_compute <= 1):
            raise ValueError(f"target_compute: expected a fraction in (0, 1] or None, got "
                             f"{self.target_compute!r}")
        if self.scale_shift not in SCALE_SHIFT:
            raise ValueError(f"scale_shift: expected one of {SCALE_SHIFT}, got "
                             f"{self.scale_shift!r}")
        if not isinstance(self.calls_per_step, int) or isinstance(self.calls_per_step, bool) or \
                self.calls_per_step < 1:
            raise ValueError(f"calls_per_step: expected a positive int, got "
                             f"{self.calls_per_step!r}")

        if self.device_budget_bytes is not None and (
                not isinstance(self.device_budget_bytes, int) or
                isinstance(self.device_budget_bytes, bool) or self.device_budget_bytes < 0):
            raise ValueError(f"device_budget_bytes: expected None or an int >= 0, got "
                             f"{self.device_budget_bytes!r}")

        if isinstance(self.forecast_order, bool) or self.forecast_order not in (0, 1, 2):
            raise ValueError(f"forecast_order: expected 0, 1 or 2, got {self.forecast_order!r}")
        if self.forecast_time not in FORECAST_TIMES:
            raise ValueError(f"forecast_time: expected one of {FORECAST_TIMES}, got "
                             f"{self.forecast_time!r}")
        if not isinstance(self.cuda_graphs, bool):
            raise ValueError(f"cuda_graphs: expected True or False, got {self.cuda_graphs!r}")
        if self.cuda_graphs and self.device_budget_bytes is not None:
            raise ValueError("cuda_graphs: True keeps every residual on the device, where a "
                             "graph reads it; device_budget_bytes moves them on the host's "
                             "schedule: pass one or the other")
        if self.forecast_order and self.scale_shift == "train":
            raise ValueError("scale_shift: 'train' distils order-0 scale-shift parameters; with "
                             "forecast_order > 0 use 'fit' (a fitted forecast) or None")

    def schedule(self):
        return self.profile.schedule(self.delta, self.target_compute)
