"""Trains a reference model and saves it to the zoo directory with a grid of its samples.

    python -m benchmarks.zoo.train flux-photos
    python -m benchmarks.zoo.train unet-digits --ship    # also replace the shipped weights
    python -m benchmarks.zoo.train pixart-scenes         # procedural data: scenes, clips
    python -m benchmarks.zoo.train wan-motion

Fixed seeds and a fixed number of iterations (a time limit stops a slower machine early, and says
so). Weights are the exponential moving average of the trained ones, saved in fp16 (the shipped
format) as <zoo>/<name>/model.safetensors (<zoo>: --cache-dir, else $CACHEKERN_ZOO, else
~/.cache/cachekern/zoo); next to them: samples.png (8 samples per class, one class per row, drawn
from the saved fp16 weights; for video, 2 clips per class, one clip per row, frames left to
right), data.png (training data, same layout) and train_log.json (the
loss curve). --ship copies the weights into cachekern/reference_models/weights/ and records their
sha256 in SHA256SUMS there.
"""

import argparse
import contextlib
import copy
import json
import shutil
import time

import torch
import torch.nn.functional as F

from benchmarks.zoo.grid import save_clip_grid
from benchmarks.zoo.sources import data_source

from cachekern import reference_models
from cachekern.reference_models import flux_photos, pixart_scenes, store, unet_digits, wan_motion

SETTINGS = {   # iterations (what the shipped weights ran: each fits in 10 min on one H200), batch, lr
    "flux-photos": dict(iterations=3000, batch=256, lr=4e-4),
    "unet-digits": dict(iterations=3000, batch=256, lr=4e-4),
    "pixart-scenes": dict(iterations=7900, batch=256, lr=3e-4),
    "wan-motion": dict(iterations=6500, batch=32, lr=3e-4),
}
CONDITION_DROPOUT = 0.1
EMA_DECAY = 0.999
WARMUP_ITERATIONS = 200
PER_CLASS = 8


def random(fn, *size, generator, device):
    """A draw made where `generator` lives, then moved to `device` (a no-op when both are the GPU:
    no copy that waits for the GPU each iteration)."""
    return fn(*size, generator=generator, device=generator.device).to(device)


class FlowTask:
    """Rectified flow: x_t = (1 − t)·x0 + t·ε, the model predicts ε − x0 (as FLUX, SD3 and Wan
    train); t is uniform, or logit-normal (SD3's choice: more weight on the middle noise levels)."""
    logit_normal_time = True
    device_generator = True     # procedural data: all draws on the training device
    upscale = 2
    per_class = PER_CLASS

    def __init__(self, device):
        self.data = data_source(self.recipe.NAME, device)

    def to_model(self, images):
        return images

    def loss(self, model, conditioner, images, labels, generator):
        x0 = self.to_model(images)
        noise = random(torch.randn, x0.shape, generator=generator, device=x0.device)
        if self.logit_normal_time:
            t = torch.sigmoid(random(torch.randn, len(x0), generator=generator, device=x0.device))
        else:
            t = random(torch.rand, len(x0), generator=generator, device=x0.device)
        level = t.view(-1, *[1] * (x0.dim() - 1))
        x_t = (1 - level) * x0 + level * noise
        prediction = self.recipe.velocity(model, conditioner, x_t, t, labels)
        return F.mse_loss(prediction.float(), noise - x0)

    def examples(self, generator):
        return self.data.examples(self.per_class, generator)

    def samples(self, reference, steps=None):
        labels = [c for c in range(self.recipe.NUM_CLASSES) for _ in range(self.per_class)]
        return reference.sample(labels, seeds=list(range(len(labels))),
                                steps=steps or self.recipe.SAMPLING["steps"])


class FluxPhotosTask(FlowTask):
    recipe = flux_photos
    logit_normal_time = False
    device_generator = False    # crops are cut on the host
    upscale = 1

    def to_model(self, images):
        return flux_photos.pack(images)

    def examples(self, generator):
        labels = torch.arange(len(flux_photos.PHOTOS)).repeat_interleave(PER_CLASS)
        return self.data.batch(len(labels), generator, labels)[0]


class PixArtScenesTask(FlowTask):
    recipe = pixart_scenes


class WanMotionTask(FlowTask):
    """Grids of clips: one clip per row, its frames left to right."""
    recipe = wan_motion
    per_class = 2


class UNetDigitsTask:
    recipe = unet_digits
    device_generator = False

    def __init__(self, device):
        from diffusers import DDPMScheduler

        self.data = data_source(self.recipe.NAME, device)
        self.noise_schedule = DDPMScheduler(**unet_digits.NOISE_SCHEDULE)

    def loss(self, model, conditioner, images, labels, generator):
        noise = torch.randn(images.shape, generator=generator).to(images.device)
        t = torch.randint(self.noise_schedule.config.num_train_timesteps, (len(images),),
                          generator=generator).to(images.device)
        x_t = self.noise_schedule.add_noise(images, noise, t)
        context = conditioner(labels)["encoder_hidden_states"]
        prediction = model(x_t, t, encoder_hidden_states=context, return_dict=False)[0]
        return F.mse_loss(prediction.float(), noise)

    def examples(self, generator):
        return self.data.examples(PER_CLASS, len(unet_digits.DIGITS))

    def samples(self, reference, steps=None):
        labels = [c for c in range(len(unet_digits.DIGITS)) for _ in range(PER_CLASS)]
        return reference.sample(labels, seeds=list(range(len(labels))), steps=steps,
                                scheduler="dpm++")

    upscale = 2
    per_class = PER_CLASS


TASKS = {"flux-photos": FluxPhotosTask, "unet-digits": UNetDigitsTask,
         "pixart-scenes": PixArtScenesTask, "wan-motion": WanMotionTask}


def mixed_precision(device, bf16):
    """The forward pass's context: bf16 autocast on a GPU (fp32 master weights and optimiser),
    with attention kept off cuDNN, whose bf16 backward failed on an H200 with torch 2.11 at these
    shapes ("mha_graph.execute(...).is_good()"); fp32 elsewhere."""
    if not (bf16 and device.type == "cuda"):
        return contextlib.nullcontext
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

    @contextlib.contextmanager
    def context():
        with torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel(backends):
            yield
    return context


def train(name, *, iterations=None, batch=None, device=None, cache_dir=None, max_minutes=9.5,
          log_every=100, seed=0, sample_steps=None, ship=False, bf16=True):
    settings = dict(SETTINGS[name])
    iterations = iterations or settings["iterations"]
    batch = batch or settings["batch"]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    task = TASKS[name](device)
    generator = torch.Generator(device if task.device_generator else "cpu").manual_seed(seed)
    reference = reference_models.create(name, device=device, seed=seed)
    model, conditioner = reference.model.train(), reference.conditioner.train()
    ema = copy.deepcopy(reference)
    params = list(model.parameters()) + list(conditioner.parameters())
    ema_params = list(ema.model.parameters()) + list(ema.conditioner.parameters())
    optimizer = torch.optim.AdamW(params, lr=settings["lr"], weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / WARMUP_ITERATIONS))
    torch.backends.cuda.matmul.allow_tf32 = True
    precision = mixed_precision(device, bf16)

    log, running, start = [], [], time.perf_counter()
    done = 0
    for i in range(iterations):
        images, labels = task.data.batch(batch, generator)
        drop = random(torch.rand, batch, generator=generator, device=device) < CONDITION_DROPOUT
        labels = torch.where(drop, torch.full_like(labels, conditioner.num_classes), labels)
        with precision():
            loss = task.loss(model, conditioner, images, labels, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        # EMA with a warm-up: a fixed 0.999 would keep 0.999^i of the random initialisation
        # (30 % after 1,200 iterations), which a short run cannot outlive.
        decay = min(EMA_DECAY, (1 + i) / (10 + i))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        running.append(loss.detach())
        done = i + 1
        if done % log_every == 0 or done == iterations:
            mean = torch.stack(running).mean().item()
            running = []
            elapsed = time.perf_counter() - start
            log.append(dict(iteration=done, loss=mean, seconds=round(elapsed, 1)))
            print(f"{name} {done}/{iterations} loss {mean:.4f} {elapsed:.0f} s", flush=True)
            if elapsed > max_minutes * 60 and done < iterations:
                print(f"stopping early at {done} iterations: time limit {max_minutes} min")
                break
    seconds = time.perf_counter() - start

    ema.model.eval(), ema.conditioner.eval()
    folder = reference_models.model_dir(name, cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    meta = dict(name=name, config=task.recipe.CONFIG, num_classes=conditioner.num_classes,
                iterations=done, batch=batch, seed=seed, train_seconds=round(seconds, 1),
                device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                torch=torch.__version__,
                precision="bf16 autocast" if precision is not contextlib.nullcontext else "fp32")
    path = reference_models.save(folder / reference_models.WEIGHTS, ema.model, ema.conditioner,
                                 meta)
    stored = reference_models.load(name, device, cache_dir=folder.parent)   # as users get it
    save_clip_grid(task.samples(stored, sample_steps), folder / reference_models.SAMPLES,
                   task.per_class, task.upscale)
    save_clip_grid(task.examples(generator), folder / "data.png", task.per_class, task.upscale)
    (folder / "train_log.json").write_text(json.dumps(dict(meta=meta, log=log), indent=1))
    print(f"saved {path} ({path.stat().st_size / 2**20:.1f} MiB) after {done} iterations, "
          f"{seconds:.0f} s")
    if ship:
        shipped = store.shipped_path(name)
        shutil.copyfile(path, shipped)
        store.record_hash(shipped)
        print(f"shipped as {shipped}, sha256 {store.sha256_of(shipped)}")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(TASKS))
    parser.add_argument("--iterations", type=int, help="default: the recipe's")
    parser.add_argument("--batch", type=int, help="default: the recipe's")
    parser.add_argument("--device", help="default: cuda if present")
    parser.add_argument("--cache-dir", help="zoo directory (default: $CACHEKERN_ZOO or "
                                            "~/.cache/cachekern/zoo)")
    parser.add_argument("--max-minutes", type=float, default=9.5)
    parser.add_argument("--ship", action="store_true",
                        help="also replace the weights shipped in cachekern/reference_models/")
    parser.add_argument("--fp32", action="store_true",
                        help="train in fp32 on a GPU too (default there: bf16 autocast)")
    args = parser.parse_args(argv)
    train(args.name, iterations=args.iterations, batch=args.batch, device=args.device,
          cache_dir=args.cache_dir, max_minutes=args.max_minutes, ship=args.ship,
          bf16=not args.fp32)


if __name__ == "__main__":
    main()
