"""Block Caching's profile: how much each block's residual changes from step to step
(change[block][step]), what it was recorded on, the scale-shift parameters fitted for given
schedules, and its file format (safetensors: the tensors, with the rest as JSON metadata).
Recorded by cachekern.block_caching.record.profile; imports only the schedule below it."""

import hashlib
import json
import math
import warnings
from pathlib import Path

import torch

from cachekern.block_caching.schedule import delta_for_compute, derive_schedule

_FORMAT = "cachekern.profile/1"


def schedule_key(schedule) -> str:
    bits = "".join("1" if c else "0" for row in schedule for c in row)
    return hashlib.sha1(bits.encode()).hexdigest()[:16]


def params_key(schedule, mode):
    """Where a profile stores scale-shift parameters: per schedule, per way they were made."""
    return schedule_key(schedule) if mode == "fit" else f"{schedule_key(schedule)}-{mode}"


class Profile:
    """Per-block change (change[block][step]), what it was recorded on, and the scale-shift
    parameters fitted for given schedules."""

    def __init__(self, model_class, units, change, timesteps, runs=1, branches=(),
                 scale_shift=None, resnets=False):
        self.model_class = model_class
        self.units = list(units)
        self.change = [list(map(float, row)) for row in change]
        self.timesteps = list(timesteps)
        self.runs = runs
        self.branches = list(branches)
        self.resnets = bool(resnets)     # a UNet's ResNet blocks are cached too
        # {schedule_key: {(unit, step, stream): (scale [C], shift [C])}}; a fitted forecast's
        # "scale" is its weights [K, C]
        self.scale_shift = scale_shift or {}

    @property
    def steps(self):
        return len(self.timesteps)

    def __repr__(self):
        fitted = ", ".join(sorted(self.scale_shift)) or "none"
        return (f"Profile({self.model_class}, {len(self.units)} blocks, {self.steps} steps, "
                f"timesteps {self.timesteps[:2]}...{self.timesteps[-1:]}, {self.runs} run(s), "
                f"branches {self.branches}, resnets={self.resnets}, fitted parameters: {fitted})")

    def schedule(self, delta=None, target_compute=None):
        if target_compute is not None:
            delta = delta_for_compute(self.change, target_compute)
        return derive_schedule(self.change, delta)

    # -- scale-shift ------------------------------------------------------------------------
    def fit_scale_shift(self, target, run, **kwargs):
        """Deprecated: cachekern.fit_scale_shift(profile, target, run, ...)."""
        warnings.warn("Profile.fit_scale_shift is deprecated; use cachekern.fit_scale_shift("
                      "profile, target, run, ...)", DeprecationWarning, stacklevel=2)
        from cachekern.block_caching.fit import fit_scale_shift  # the old method's shim only

        return fit_scale_shift(self, target, run, **kwargs)

    def train_scale_shift(self, target, run, **kwargs):
        """Deprecated: cachekern.train_scale_shift(profile, target, run, ...)."""
        warnings.warn("Profile.train_scale_shift is deprecated; use cachekern.train_scale_shift("
                      "profile, target, run, ...)", DeprecationWarning, stacklevel=2)
        from cachekern.block_caching.distill import train_scale_shift  # the old method's shim

        return train_scale_shift(self, target, run, **kwargs)

    def store_scale_shift(self, schedule, mode, params):
        """Keeps `params` ({(unit, step, stream): (scale [C], shift [C])}) for `schedule`, made
        by `mode` ("fit" or "train"); returns the key they are stored under."""
        key = params_key(schedule, mode)
        self.scale_shift[key] = params
        return key

    def has_scale_shift(self, schedule, mode):
        return params_key(schedule, mode) in self.scale_shift

    def scale_shift_for(self, schedule, mode="fit"):
        """The parameters stored for `schedule` by fit_scale_shift (mode "fit") or
        train_scale_shift ("train")."""
        key = params_key(schedule, mode)
        if key not in self.scale_shift:
            how = "train_scale_shift" if mode == "train" else "fit_scale_shift"
            order = f", forecast_order={mode[-1]}" if mode.startswith("fit-order") else ""
            raise ValueError(f"scale_shift: this profile holds no {mode} parameters for this "
                             f"schedule; call cachekern.{how}(profile, model, run, delta=..., "
                             f"target_compute=...{order}) with the same delta / "
                             f"target_compute first")
        return self.scale_shift[key]

    # -- checks -----------------------------------------------------------------------------
    def steps_error(self, steps):
        return (f"this profile was recorded for {self.steps} steps (timesteps "
                f"{self.timesteps[:3]}...); the model was run for {steps}: record a profile for "
                f"this step count and scheduler")

    def check_units(self, units, who):
        names = [u.name for u in units]
        if names != self.units:
            raise ValueError(f"{who}: the profile was recorded on a {self.model_class} with "
                             f"blocks {self.units[:3]}... ({len(self.units)}), this model has "
                             f"{names[:3]}... ({len(names)})")

    def matches_timestep(self, step, value):
        expected = self.timesteps[step]
        return expected is None or value is None or \
            abs(value - expected) <= 1e-4 * max(1.0, abs(expected))

    def check_timestep(self, step, value):
        if step >= self.steps:
            raise ValueError(self.steps_error(step + 1))
        if not self.matches_timestep(step, value):
            raise ValueError(f"step {step} has timestep {value:g} where the profile has "
                             f"{self.timesteps[step]:g}: "
                             f"{self.steps_error('a different schedule of')} (if a generation "
                             f"was cut short before, call handle.reset() before the next)")

    # -- files ------------------------------------------------------------------------------
    def save(self, path):
        from safetensors.torch import save_file

        tensors, index = {}, {}
        for key, params in self.scale_shift.items():
            for (unit, step, k), (scale, shift) in params.items():
                name = f"{key}.{unit}.{step}.{k}"
                tensors[f"scale.{name}"] = scale.contiguous()
                tensors[f"shift.{name}"] = shift.contiguous()
                index.setdefault(key, []).append([unit, step, k])
        meta = dict(self.description(), scale_shift=index)
        if not tensors:      # safetensors writes no file without a tensor
            tensors["empty"] = torch.zeros(1)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={"cachekern": json.dumps(meta)})

    @classmethod
    def load(cls, path):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("cachekern", "{}"))
            if meta.get("format") != _FORMAT:
                raise ValueError(f"path: {path} is not a cachekern profile")
            scale_shift = {}
            for key, entries in meta["scale_shift"].items():
                scale_shift[key] = {
                    (u, s, k): (f.get_tensor(f"scale.{key}.{u}.{s}.{k}"),
                                f.get_tensor(f"shift.{key}.{u}.{s}.{k}"))
                    for u, s, k in entries}
        return cls.from_description(meta, scale_shift)

    def description(self) -> dict:
        """What the profile recorded, as JSON-able values (its scale-shift tensors aside)."""
        return dict(format=_FORMAT, model_class=self.model_class, units=self.units,
                    change=[[None if math.isnan(v) else v for v in row] for row in self.change],
                    timesteps=self.timesteps, runs=self.runs, branches=self.branches,
                    resnets=self.resnets)

    @classmethod
    def from_description(cls, meta, scale_shift=None):
        """The profile description() gave (with `scale_shift` parameters, if any)."""
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise ValueError("profile: not a cachekern profile's description")
        change = [[math.nan if v is None else v for v in row] for row in meta["change"]]
        return cls(meta["model_class"], meta["units"], change, meta["timesteps"], meta["runs"],
                   meta["branches"], scale_shift, meta.get("resnets", False))
