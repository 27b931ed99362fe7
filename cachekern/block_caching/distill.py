"""Block Caching's scale-shift learned by distillation (the paper's Fig. 5): the student is the
model cached on a schedule with trainable per-block, per-step, per-channel scale and shift; the
teacher is the same weights uncached. The student generates along its own trajectory; at each of
its calls the teacher is evaluated on the same input, and the parameters take an Adam step
towards the teacher's output.

Why the model output and not the next latent: a deterministic sampler step is
x_{t-1} = a_t · x_t + b_t · output(x_t) (DDIM, flow-matching Euler; DPM-Solver++ adds terms from
earlier outputs, which are fixed by then), so from the same x_t the student's and the teacher's
next states differ by b_t · (output_student − output_teacher). The parameters of one step act on
that step alone, so matching outputs has the same minimiser as matching next states, and it
works through any pipeline without knowing its scheduler.
"""

import math

import torch

from cachekern.block_caching.fit import fit_scale_shift
from cachekern.block_caching.handle import BlockCachingHandle
from cachekern.block_caching.policy import BlockCaching
from cachekern.block_caching.record import check_run
from cachekern.models.binding import attach, detach, is_patched, resolve_model
from cachekern.models.context_parallel import is_context_parallel

INITS = ("fit", "identity")


def _primary(output):
    """The tensor a model returns: itself, or the first of a tuple / diffusers output."""
    return output if isinstance(output, torch.Tensor) else output[0]


def _detached(output):
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, (tuple, list)):
        return type(output)(_detached(o) for o in output)
    for key in list(output.keys()):       # a diffusers BaseOutput (an OrderedDict)
        output[key] = _detached(output[key])
    return output


class _Cell:
    """One (block, step, stream)'s scale and shift while they train: their starting values plus
    trainable offsets, the shift's in units of the channel's RMS in the reused residual (measured
    at its first use). One optimiser step then moves either by about lr relative to the
    residual, whatever its magnitude (an offset in absolute units would be huge for a block
    whose residual is small and negligible for one whose residual is large)."""

    def __init__(self, scale, shift):
        self.scale0, self.shift0 = scale, shift
        self.d_scale = torch.nn.Parameter(torch.zeros_like(scale))
        self.d_shift = torch.nn.Parameter(torch.zeros_like(shift))
        self.unit = None

    def parameters(self):
        return [self.d_scale, self.d_shift]

    def values(self, residual, channel_dim):
        if self.unit is None:
            r = residual.detach().float().movedim(channel_dim, -1)
            self.unit = r.reshape(-1, r.shape[-1]).pow(2).mean(0).sqrt().clamp_min(1e-12)
        return self.scale0 + self.d_scale, self.shift0 + self.d_shift * self.unit

    def final(self):
        unit = self.unit if self.unit is not None else torch.zeros_like(self.shift0)
        return ((self.scale0 + self.d_scale).detach().cpu(),
                (self.shift0 + self.d_shift * unit).detach().cpu())


class _StudentHandle(BlockCachingHandle):
    """Block Caching whose reuse path is differentiable in the scale and shift (plain PyTorch,
    fp32, the reference of residual_reuse), and whose every model call is also a training step."""
    differentiable_reuse = True

    def __init__(self, model, policy, initial, lr, iterations):
        super().__init__(model, policy)
        self.iterations = iterations
        self.device = next(model.parameters()).device
        self.cells = {cell: _Cell(*(t.detach().float().to(self.device).clone() for t in pair))
                      for cell, pair in initial.items()}
        self.lr = lr
        self.optimizer = None      # made with the first parameters (Adam takes no empty list)
        for cell in self.cells.values():
            self._optimize(cell)
        self.losses = []      # (step, branch, loss) per training call

    def forward(self, original_forward, args, kwargs):
        if torch.is_inference_mode_enabled():
            raise RuntimeError("train_scale_shift: run generates under torch.inference_mode(), "
                               "where nothing can be trained; use torch.no_grad() instead")
        with torch.no_grad():      # the teacher: no handle step, and the block wrappers pass
            teacher = _primary(original_forward(*args, **kwargs)).float()
        with torch.enable_grad():
            output = super().forward(original_forward, args, kwargs)
            step, branch = self.history[-1]["step"], self.history[-1]["branch"]
            for iteration in range(self.iterations):
                student = _primary(output)
                if not student.requires_grad:    # no block was reused through a parameter
                    break
                loss = (student.float() - teacher).pow(2).mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.losses.append((step, branch, loss.item()))
                if iteration + 1 < self.iterations:   # the same step again, updated
                    self._current = (branch, step)
                    try:
                        output = original_forward(*args, **kwargs)
                    finally:
                        self._current = None
        return _detached(output)

    def _reuse(self, key, x, channel_dim, step):
        if key in self._no_output:
            return None
        _, index, k = key
        residual = self._residuals.get(key)
        scale, shift = self._trainable(index, step, k, residual.shape[channel_dim]).values(
            residual, channel_dim)
        if key in self._outputs_cached:     # the block's output itself is kept
            shape = [1] * residual.dim()
            shape[channel_dim] = -1
            return (residual.float() * scale.view(shape) + shift.view(shape)).to(residual.dtype)
        return self.kernels.torch_residual_reuse(x, residual, scale, shift, channel_dim)

    def _keep(self, key, slot, x, out):
        # What is cached is a value, not part of the graph (as at inference).
        super()._keep(key, slot, None if x is None else x.detach(),
                      None if out is None else out.detach())

    def _optimize(self, cell):
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(cell.parameters(), lr=self.lr)
        else:
            self.optimizer.add_param_group({"params": cell.parameters(), "lr": self.lr})

    def set_lr(self, lr):
        self.lr = lr
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr

    def _trainable(self, index, step, k, channels):
        key = (index, step, k)
        if key not in self.cells:        # identity: plain reuse to start from
            self.cells[key] = _Cell(torch.ones(channels, device=self.device),
                                    torch.zeros(channels, device=self.device))
            self._optimize(self.cells[key])
        cell = self.cells[key]
        if cell.scale0.numel() != channels:
            raise ValueError(f"train_scale_shift: block {self.units[index].name} stream {k} "
                             f"has {channels} channels, its initial parameters "
                             f"{cell.scale0.numel()}")
        return cell


def train_scale_shift(profile, target, run, *, delta=0.5, target_compute=None, runs=8, lr=1e-2,
                      iterations=1, init="fit"):
    """Learns the scale and shift of Block Caching's schedule for (delta, target_compute) by
    distillation, over `runs` calls of `run` (each generates once; give it different seeds from
    call to call for a broader fit), taking `iterations` Adam steps on each model call (the
    student's call is rerun with the updated parameters between them), the learning rate
    decaying from lr to 0 over the runs (cosine). init="fit" starts from the closed-form
    parameters the profile holds for this schedule (fitting them first, over one run, when it
    holds none); "identity" from scale 1, shift 0. Stores the parameters in `profile` for that schedule
    (BlockCaching(scale_shift="train")); returns the per-call losses [(step, branch, loss)]."""
    check_run(run, runs)
    if init not in INITS:
        raise ValueError(f"init: expected one of {INITS}, got {init!r}")
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
        raise ValueError(f"iterations: expected a positive int, got {iterations!r}")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise ValueError(f"lr: expected a positive number, got {lr!r}")
    model = resolve_model(target)
    if is_patched(model):
        raise RuntimeError("train_scale_shift: the model is patched; unpatch it first")
    if is_context_parallel(model):
        raise RuntimeError("train_scale_shift: distillation does not run under context "
                           "parallelism (its gradients would cross the ranks' collectives); "
                           "train on one GPU (the profile and its parameters load on any rank "
                           "count), or use scale_shift='fit', which does")
    policy = BlockCaching(profile, delta=delta, target_compute=target_compute, scale_shift=None)
    initial = {}
    if init == "fit":
        schedule = policy.schedule()
        if not profile.has_scale_shift(schedule, "fit"):
            fit_scale_shift(profile, model, run, delta=delta, target_compute=target_compute)
        initial = profile.scale_shift_for(schedule, "fit")
    was_training = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():          # the weights are the teacher's: frozen
        p.requires_grad_(False)
    student = _StudentHandle(model, policy, initial, lr, iterations)
    attach(model, student)
    try:
        for i in range(runs):
            # Cosine decay over the generations: early ones move the parameters, the last ones
            # average out the noise of single-call gradients.
            student.set_lr(lr * 0.5 * (1 + math.cos(math.pi * i / runs)))
            student.reset()
            run()
    finally:
        detach(model)
        student.close()
        for p, flag in zip(model.parameters(), was_training):
            p.requires_grad_(flag)
    params = {key: cell.final() for key, cell in student.cells.items()}
    profile.store_scale_shift(policy.schedule(), "train", params)
    return student.losses
