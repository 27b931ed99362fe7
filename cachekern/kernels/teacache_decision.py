"""TeaCache's decision rule as one single-program kernel, so that a CUDA graph can branch on it
with no host read (cachekern.teacache.device_decision holds the buffers and calls it).

It does what the host does: detect a new generation (the timestep went back up), advance the
step, form the relative L1 distance from the per-sample sums, rescale it by the polynomial,
accumulate, compare with the threshold, and write the decision as flags (the conditions of the
graph's branches) and the call's record for the host to read later. A global decision sums the
samples into one distance; per-sample decisions keep one accumulator and skip count per sample
and also flag which pattern of samples computes (one flag per pattern: a graph captures one
branch for each).

The host does this arithmetic in Python floats (IEEE float64, every operation rounded on its
own), and decisions must not depend on where they were taken: the kernel works in float64, sums
the samples in the same order, evaluates the polynomial by the same Horner steps and is launched
with floating-point contraction off (no fused multiply-add), so both give the same bits. All
float parameters travel in a float64 tensor: Triton would pass a Python float as float32.
"""

from cachekern.kernels._backend import tl, triton

# The branch state the device keeps between calls (float64 vector). Per-sample decisions keep
# their accumulators and skip counts after these: STATE_SIZE + b and STATE_SIZE + batch + b.
LAST_TIMESTEP, STEP, ACCUMULATED, SKIPS, HAS_RESIDUAL, HAS_LAST_TIMESTEP = range(6)
STATE_SIZE = 6
# One call's record, as the host's history holds it. Per sample: step, timestep, then batch
# values each of rel_l1, accumulated and computed.
RECORD_FIELDS = ("step", "timestep", "rel_l1", "accumulated", "computed")


def state_size(batch, per_sample):
    return STATE_SIZE + 2 * batch if per_sample else STATE_SIZE


def record_size(batch, per_sample):
    return 2 + 3 * batch if per_sample else len(RECORD_FIELDS)

if triton is not None:

    @triton.jit
    def _finite(x):
        return (x == x) & (tl.abs(x) != float("inf"))

    @triton.jit
    def _relative(diff, prev, new_generation):
        """diff / prev (NaN where prev is 0, and on a generation's first call)."""
        nan = float("nan")
        rel = tl.where(prev != 0.0, diff / tl.where(prev != 0.0, prev, 1.0), nan)
        return tl.where(new_generation, nan, rel)

    @triton.jit
    def _rescaled(rel, COEF, N_COEF: tl.constexpr, CLAMP: tl.constexpr):
        """The polynomial at rel (Horner, highest power first), clamped at 0 when asked."""
        y = rel
        if N_COEF > 0:
            y = rel * 0.0
            for i in tl.static_range(N_COEF):
                y = y * rel + tl.load(COEF + i)
        if CLAMP:
            y = tl.where(y < 0.0, 0.0, y)
        return y

    @triton.jit
    def _decide_kernel(DIFF, PREV, TIMESTEP, STATE, PARAMS, COEF, RECORD, COMPUTE, SKIP,
                       SCHEDULE, PATTERNS, warmup_steps, num_steps, max_skips, n_schedule,
                       BATCH: tl.constexpr, N_COEF: tl.constexpr,
                       COMPUTE_LAST: tl.constexpr, CLAMP: tl.constexpr,
                       STATIC: tl.constexpr, PER_SAMPLE: tl.constexpr,
                       BLOCK_B: tl.constexpr, N_PATTERNS: tl.constexpr):
        # The timestep as the host reads it: rounded to float32, then exact in float64.
        t = tl.load(TIMESTEP).to(tl.float32).to(tl.float64)
        last_t = tl.load(STATE + 0)
        step = tl.load(STATE + 1)
        acc = tl.load(STATE + 2)
        skips = tl.load(STATE + 3)
        has_residual = tl.load(STATE + 4) != 0
        has_last = tl.load(STATE + 5) != 0
        threshold = tl.load(PARAMS + 0)

        new_generation = has_last & (t > last_t)
        step = tl.where(new_generation, -1.0, step) + 1.0
        acc = tl.where(new_generation, 0.0, acc)
        skips = tl.where(new_generation, 0.0, skips)
        has_residual = has_residual & (not new_generation)
        # What computes whatever the distance says (the indicator's decisions only).
        forced = new_generation | (not has_residual) | (step < warmup_steps)
        if COMPUTE_LAST:
            forced = forced | (step >= num_steps - 1)

        nan = float("nan")
        if STATIC:     # a static schedule: no indicator, the schedule decides
            index = step.to(tl.int32)
            listed = index < n_schedule
            scheduled = tl.load(SCHEDULE + index, mask=listed, other=1) != 0
            skip = has_residual & listed & (not scheduled)
            acc = step * 0.0           # no accumulator, no distance: the record says so
            rel = acc + nan
        elif PER_SAMPLE:
            # Each sample as the host decides it alone (TeaCache.decide), on its own state.
            offs = tl.arange(0, BLOCK_B)
            valid = offs < BATCH
            diff = tl.load(DIFF + offs, mask=valid, other=0.0).to(tl.float64)
            prev = tl.load(PREV + offs, mask=valid, other=1.0).to(tl.float64)
            rel = _relative(diff, prev, new_generation)
            acc_b = tl.load(STATE + 6 + offs, mask=valid, other=0.0)
            skips_b = tl.load(STATE + 6 + BATCH + offs, mask=valid, other=0.0)
            acc_b = tl.where(new_generation, 0.0, acc_b)
            skips_b = tl.where(new_generation, 0.0, skips_b)
            total = acc_b + _rescaled(rel, COEF, N_COEF, CLAMP)
            limit_reached = (max_skips > 0) & (skips_b >= max_skips)
            # The call's scalar conditions through tl.where (the interpreter cannot `&` a
            # scalar with a vector of bools), the vectors' with `== 0` (its `not` is Python's).
            skip_b = _finite(rel) & (total < threshold) & (limit_reached == 0) & \
                _finite(total) & valid
            skip_b = tl.where(forced | (threshold <= 0.0), False, skip_b)
            acc_b = tl.where(skip_b, total, 0.0)
            skips_b = tl.where(skip_b, skips_b + 1.0, 0.0)
            tl.store(STATE + 6 + offs, acc_b, mask=valid)
            tl.store(STATE + 6 + BATCH + offs, skips_b, mask=valid)
            tl.store(RECORD + 2 + offs, rel, mask=valid)
            tl.store(RECORD + 2 + BATCH + offs, acc_b, mask=valid)
            tl.store(RECORD + 2 + 2 * BATCH + offs, tl.where(skip_b, 0.0, 1.0), mask=valid)
            computes = valid & (skip_b == 0)
            pattern = tl.sum(tl.where(computes, 1 << offs, 0), axis=0)
            any_skip = tl.sum(skip_b.to(tl.int32), axis=0) > 0
            patterns = tl.arange(0, N_PATTERNS)
            tl.store(PATTERNS + patterns, patterns == pattern)
            tl.store(STATE + 4, tl.where(has_residual | (pattern != 0), 1.0, 0.0))
            tl.store(COMPUTE, not any_skip)
            tl.store(SKIP, any_skip)
        else:
            # sum() of a Python list: left to right, from the first element.
            diff = tl.load(DIFF).to(tl.float64)
            prev = tl.load(PREV).to(tl.float64)
            for b in tl.static_range(1, BATCH):
                diff = diff + tl.load(DIFF + b).to(tl.float64)
                prev = prev + tl.load(PREV + b).to(tl.float64)
            rel = _relative(diff, prev, new_generation)
            total = acc + _rescaled(rel, COEF, N_COEF, CLAMP)
            limit_reached = (max_skips > 0) & (skips >= max_skips)
            skip = (not forced) & _finite(rel) & (threshold > 0.0) & (total < threshold) & \
                (not limit_reached) & _finite(total)

            acc = tl.where(skip, total, 0.0)
            skips = tl.where(skip, skips + 1.0, 0.0)
        tl.store(STATE + 0, t)
        tl.store(STATE + 1, step)
        tl.store(STATE + 5, 1.0)
        tl.store(RECORD + 0, step)
        tl.store(RECORD + 1, t)
        if not PER_SAMPLE or STATIC:
            tl.store(STATE + 2, acc)
            tl.store(STATE + 3, skips)
            tl.store(STATE + 4, tl.where(has_residual | (not skip), 1.0, 0.0))
            if PER_SAMPLE:     # a static schedule decides every sample alike
                offs = tl.arange(0, BLOCK_B)
                valid = offs < BATCH
                tl.store(RECORD + 2 + offs, offs * 0.0 + nan, mask=valid)
                tl.store(RECORD + 2 + BATCH + offs, offs * 0.0, mask=valid)
                tl.store(RECORD + 2 + 2 * BATCH + offs, offs * 0.0 + tl.where(skip, 0.0, 1.0),
                         mask=valid)
                patterns = tl.arange(0, N_PATTERNS)
                tl.store(PATTERNS + patterns,
                         patterns == tl.where(skip, 0, N_PATTERNS - 1))
            else:
                tl.store(RECORD + 2, rel)
                tl.store(RECORD + 3, acc)
                tl.store(RECORD + 4, tl.where(skip, 0.0, 1.0))
            tl.store(COMPUTE, not skip)
            tl.store(SKIP, skip)


def teacache_decide(diff_sum, prev_sum, timestep, state, params, coefficients, n_coefficients,
                    record, compute, skip, *, warmup_steps, num_steps, max_skips, compute_last,
                    clamp, schedule=None, patterns=None, batch=1):
    """Decides one call from the per-sample sums (fp32 [B]) and the timestep tensor (element 0
    is read): updates `state` (state_size float64), writes `record` (record_size float64) and
    the bool scalars `compute` and `skip`. params = [threshold] (float64); the first
    n_coefficients of `coefficients` (float64) are the polynomial, highest power first.
    schedule: a bool tensor (a static schedule, True: compute) decides instead of the sums,
    which may then be None; steps past its end compute.
    patterns: a bool tensor of 2**batch flags: per-sample decisions (one accumulator per
    sample), flag p set when the samples that compute are the bits of p; `compute` is then set
    when every sample computes, `skip` when any skips. None: one global decision."""
    if triton is None:
        raise RuntimeError("TeaCache: the device decision needs Triton")
    static = schedule is not None
    per_sample = patterns is not None
    if per_sample and patterns.numel() != 2 ** batch:
        raise ValueError(f"teacache_decide: patterns must hold 2**batch = {2 ** batch} flags, "
                         f"got {patterns.numel()}")
    if not static:
        batch = diff_sum.shape[0]
    timestep = timestep.reshape(-1)
    _decide_kernel[(1,)](
        timestep if static else diff_sum, timestep if static else prev_sum, timestep, state,
        params, coefficients, record, compute, skip, schedule if static else compute,
        patterns if per_sample else compute,
        warmup_steps, num_steps, max_skips, schedule.shape[0] if static else 0,
        BATCH=batch, N_COEF=n_coefficients, COMPUTE_LAST=compute_last, CLAMP=clamp,
        STATIC=static, PER_SAMPLE=per_sample, BLOCK_B=triton.next_power_of_2(batch),
        N_PATTERNS=2 ** batch if per_sample else 1, enable_fp_fusion=False)


__all__ = ["RECORD_FIELDS", "STATE_SIZE", "record_size", "state_size", "teacache_decide"]
