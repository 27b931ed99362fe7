"""A forecast's bookkeeping as one single-program kernel, so that a CUDA graph can forecast with
no host read: which history slot a computed value goes to, and for a skipped call how many
slots to read, in which order (residual_forecast's slot_order), with which weights.

The history is a ring of S = order + 1 slot tensors that never move. The kernel keeps, in a
float64 state vector, how many slots hold values (count), the slots newest first (age order,
a permutation of 0..S-1 whose first `count` entries are valid) and the time each slot's value
was computed at. Per call it reads the decision's record (step, time, computed) and:

- computed: the new value goes to the next free slot, or over the oldest one when all are
  full (`capture` flags that slot);
- skipped, with fitted weights for this step (at most `count` of them): a forecast from the
  newest slots with those weights;
- skipped, else: the longest run of newest values with distinct times, at most order + 1 of
  them, gives the extrapolation weights (Lagrange or TaylorSeer's basis, in float64, each
  operation rounded as the host's cachekern.kernels.forecast functions round it); one value
  means plain reuse (weight 1: bit for bit residual_reuse).

A forecast from m slots is one of the graph's conditional bodies; its flag is forecast[m - 1].
Step 0 starts an empty ring (a new generation).
"""

from cachekern.kernels._backend import next_power_of_2, tl, triton

COUNT = 0          # state[0]; state[1 : 1 + S] the age order; state[1 + S : 1 + 2S] the times


def state_size(slots: int) -> int:
    return 1 + 2 * slots


if triton is not None:

    @triton.jit
    def _plan_kernel(RECORD, STATE, FITTED, FITTED_LEN, n_fitted, WEIGHTS, SLOT_ORDER, CAPTURE,
                     FORECAST, S: tl.constexpr, ORDER: tl.constexpr, TAYLOR: tl.constexpr,
                     STEP_TIME: tl.constexpr, S_P2: tl.constexpr):
        step = tl.load(RECORD + 0)
        computed = tl.load(RECORD + 4) != 0.0
        if STEP_TIME:
            now = step
        else:
            now = tl.load(RECORD + 1)
        count = tl.where(step == 0.0, 0.0, tl.load(STATE + 0))
        a0 = tl.load(STATE + 1).to(tl.int32)
        a1 = a0
        a2 = a0
        if S > 1:
            a1 = tl.load(STATE + 2).to(tl.int32)
        if S > 2:
            a2 = tl.load(STATE + 3).to(tl.int32)
        t0 = tl.load(STATE + 1 + S + a0)
        t1 = tl.load(STATE + 1 + S + a1)
        t2 = tl.load(STATE + 1 + S + a2)

        # A computed value: the next free slot, else the oldest; it becomes the newest.
        position = tl.minimum(count, S - 1.0)
        new = tl.where(position == 0.0, a0, tl.where(position == 1.0, a1, a2))
        n1 = tl.where(new == a0, a1, a0)
        n2 = tl.where(new == a2, a1, a2)

        # Fitted weights for this step, when the ring holds enough values.
        index = step.to(tl.int32)
        has_row = (index >= 0) & (index < n_fitted)
        m_fit = tl.load(FITTED_LEN + index, mask=has_row, other=0.0)
        use_fit = (m_fit > 0.0) & (m_fit <= count)
        f0 = tl.load(FITTED + index * S, mask=has_row, other=0.0)
        f1 = f0 * 0.0
        f2 = f0 * 0.0
        if S > 1:
            f1 = tl.load(FITTED + index * S + 1, mask=has_row, other=0.0)
        if S > 2:
            f2 = tl.load(FITTED + index * S + 2, mask=has_row, other=0.0)

        # The extrapolation: the newest values with distinct times, at most ORDER + 1.
        two = (count >= 2.0) & (t1 != t0)
        if ORDER < 1:
            two = count < 0.0          # never
        three = two & (count >= 3.0) & (t2 != t0) & (t2 != t1)
        if ORDER < 2:
            three = count < 0.0
        n = tl.where(three, 3.0, tl.where(two, 2.0, 1.0))
        # Lagrange through two points (TaylorSeer's basis is the same there) ...
        l0 = (now - t1) / (t0 - t1)
        l1 = (now - t0) / (t1 - t0)
        # ... and through three
        q0 = ((now - t1) / (t0 - t1)) * ((now - t2) / (t0 - t2))
        q1 = ((now - t0) / (t1 - t0)) * ((now - t2) / (t1 - t2))
        q2 = ((now - t0) / (t2 - t0)) * ((now - t1) / (t2 - t1))
        if TAYLOR:
            d = now - t0
            h0 = t0 - t1
            h1 = t1 - t2
            c = d * d / 2.0 / h0
            q0 = 1.0 + d / h0 + c / h0
            q1 = -d / h0 - c / h0 - c / h1
            q2 = c / h1
        w0 = tl.where(use_fit, f0, tl.where(three, q0, tl.where(two, l0, 1.0)))
        w1 = tl.where(use_fit, f1, tl.where(three, q1, l1))
        w2 = tl.where(use_fit, f2, q2)
        m = tl.where(use_fit, m_fit, n)

        forecast = not computed
        # Each vector of flags has at most one set: the index chosen, or -1 for none.
        slots = tl.arange(0, S_P2)
        chosen = tl.where(forecast, m.to(tl.int32) - 1, -1)
        tl.store(FORECAST + slots, slots == chosen, mask=slots < S)
        tl.store(CAPTURE + slots, slots == tl.where(computed, new, -1), mask=slots < S)
        tl.store(SLOT_ORDER + 0, a0)
        if S > 1:
            tl.store(SLOT_ORDER + 1, a1)
        if S > 2:
            tl.store(SLOT_ORDER + 2, a2)
        tl.store(WEIGHTS + 0, tl.where(forecast, w0, 0.0).to(tl.float32))
        if S > 1:
            tl.store(WEIGHTS + 1, tl.where(forecast & (m >= 2.0), w1, 0.0).to(tl.float32))
        if S > 2:
            tl.store(WEIGHTS + 2, tl.where(forecast & (m >= 3.0), w2, 0.0).to(tl.float32))

        tl.store(STATE + 0, tl.where(computed, tl.minimum(count + 1.0, S * 1.0), count))
        tl.store(STATE + 1, tl.where(computed, new, a0).to(tl.float64))
        if S > 1:
            tl.store(STATE + 2, tl.where(computed, n1, a1).to(tl.float64))
        if S > 2:
            tl.store(STATE + 3, tl.where(computed, n2, a2).to(tl.float64))
        tl.store(STATE + 1 + S + new, now, mask=computed)


def forecast_plan(record, state, fitted, fitted_len, weights, slot_order, capture, forecast, *,
                  order, taylor, step_time):
    """One call's plan from the decision's `record` (float64: step, time, ..., computed at
    index 4). state: float64 [state_size(S)], updated; fitted: float64 [steps, S] and
    fitted_len: float64 [steps] (0: no fitted weights for that step; at least one row, S =
    fitted.shape[1]). Writes weights (fp32 [S], newest first; zeros past the forecast's
    length), slot_order (int32 [S]: the slots newest first) and the bool flags capture [S]
    (the slot a computed value goes to) and forecast [S] (forecast[m - 1]: a skipped call
    forecasts from the m newest slots)."""
    if triton is None:
        raise RuntimeError("forecast_plan: needs Triton")
    slots = fitted.shape[1]
    if not 1 <= slots <= 3 or order > slots - 1:
        raise ValueError(f"forecast_plan: 1 to 3 slots and order < slots, got {slots} slots, "
                         f"order {order}")
    _plan_kernel[(1,)](
        record, state, fitted, fitted_len, fitted_len.shape[0], weights, slot_order, capture,
        forecast, S=slots, ORDER=order, TAYLOR=taylor, STEP_TIME=step_time,
        S_P2=next_power_of_2(slots), enable_fp_fusion=False)


__all__ = ["COUNT", "forecast_plan", "state_size"]
