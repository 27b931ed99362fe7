"""`python -m cachekern demo`: the same seeds sampled uncached and with TeaCache on a
FluxTransformer2DModel; prints steps computed, time and PSNR against the uncached result.

When the reference model flux-photos has been trained (benchmarks/zoo/train.py; found in
$CACHEKERN_ZOO or ~/.cache/cachekern/zoo), the demo samples it: 64×64 photographs, one class per
seed, 28 steps with CFG, and PSNR on real images (`--save` writes them). On a CPU torch's
threads are pinned (--threads), and the header says what the times were measured on. Otherwise the model is
small with random weights (CPU or GPU, well under a minute on a CPU), which exercises speed and
the mechanics, not image quality. `--full` builds FLUX.1-dev's dimensions (19 double + 38 single
blocks, hidden 3072, 1024² = 4096 image tokens, 512 text tokens) with random weights in bf16 on a
GPU.
"""

import argparse
import os
import time

import torch

PRESETS = {
    "small": dict(
        config=dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=4,
                    attention_head_dim=64, num_attention_heads=4, joint_attention_dim=128,
                    pooled_projection_dim=64, axes_dims_rope=[16, 24, 24]),
        image_tokens=1024, text_tokens=64, steps=20, dtype=torch.float32),
    "full": dict(
        config=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                    attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                    pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=[16, 56, 56]),
        image_tokens=4096, text_tokens=512, steps=28, dtype=torch.bfloat16),
}


def build_model(preset, device):
    from diffusers import FluxTransformer2DModel

    from cachekern.reference_models.common import build

    torch.manual_seed(0)
    return build(FluxTransformer2DModel, preset["config"], device, preset["dtype"]).eval()


def make_inputs(preset, model, seed, device):
    g = torch.Generator(device="cpu").manual_seed(seed)
    cfg = model.config
    side = int(preset["image_tokens"] ** 0.5)
    img_ids = torch.zeros(side, side, 3)
    img_ids[..., 1] = torch.arange(side)[:, None]
    img_ids[..., 2] = torch.arange(side)[None, :]
    as_model = dict(device=device, dtype=preset["dtype"])
    return dict(
        latents=torch.randn(1, preset["image_tokens"], cfg.in_channels, generator=g).to(**as_model),
        encoder_hidden_states=torch.randn(1, preset["text_tokens"], cfg.joint_attention_dim,
                                          generator=g).to(**as_model),
        pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=g).to(**as_model),
        img_ids=img_ids.reshape(-1, 3).to(device), txt_ids=torch.zeros(preset["text_tokens"], 3,
                                                                        device=device),
        guidance=torch.full((1,), 3.5, device=device) if cfg.guidance_embeds else None)


def generate(model, inputs, steps):
    """Flow-matching Euler sampling, as FluxPipeline's scheduler steps it (no shift)."""
    latents = inputs["latents"].clone()
    sigmas = torch.linspace(1.0, 1.0 / steps, steps, device=latents.device)
    with torch.no_grad():
        for i, sigma in enumerate(sigmas):
            with model.cache_context("cond"):
                velocity = model(hidden_states=latents, timestep=sigma.expand(1).to(latents.dtype),
                                 encoder_hidden_states=inputs["encoder_hidden_states"],
                                 pooled_projections=inputs["pooled_projections"],
                                 img_ids=inputs["img_ids"], txt_ids=inputs["txt_ids"],
                                 guidance=inputs["guidance"], return_dict=False)[0]
            next_sigma = sigmas[i + 1] if i + 1 < steps else torch.zeros((), device=latents.device)
            latents = latents + (next_sigma - sigma) * velocity
    return latents


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def where(device):
    """What the times were measured on: the GPU, or the CPU and its thread count."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def reference_model_demo(args, device):
    """flux-photos, uncached and with TeaCache, one class per seed."""
    import cachekern
    from cachekern import reference_models
    from cachekern.metrics import psnr

    ref = reference_models.load("flux-photos", device)
    steps = args.steps or ref.recipe.SAMPLING["steps"]
    threshold = 0.4 if args.threshold is None else args.threshold
    classes = ref.recipe.PHOTOS
    print(f"flux-photos (FluxTransformer2DModel trained by cachekern, {ref.meta['iterations']} "
          f"iterations), {steps} steps with CFG, {where(device)}; TeaCache threshold {threshold}")
    ref.sample([0], [0], steps=2)     # warm-up: Triton's JIT, the allocator
    with cachekern.patched(ref.model, cachekern.TeaCache(threshold=1e9, num_inference_steps=3)):
        ref.sample([0], [0], steps=3)
    rows, images = [], []
    for seed in range(args.seeds):
        label = seed % len(classes)
        reference, t_ref = timed(lambda: ref.sample([label], [seed], steps=steps), device)
        policy = cachekern.TeaCache(threshold=threshold, num_inference_steps=steps)
        with cachekern.patched(ref.model, policy) as handle:
            cached, t_cached = timed(lambda: ref.sample([label], [seed], steps=steps), device)
            computed = handle.stats()["computed"] // 2        # two calls (CFG) per step
        rows.append((seed, classes[label], computed, t_ref, t_cached,
                     psnr(reference, cached, data_range=2.0)))
        images += [reference, cached]
    print(f"{'seed':>4}  {'class':<20}  {'steps computed':>14}  {'uncached s':>10}  "
          f"{'TeaCache s':>10}  {'speed-up':>8}  {'PSNR dB':>7}")
    for seed, name, computed, t_ref, t_cached, quality in rows:
        print(f"{seed:>4}  {name:<20}  {computed:>8} / {steps:<3}  {t_ref:>10.2f}  "
              f"{t_cached:>10.2f}  {t_ref / t_cached:>7.2f}x  {quality:>7.1f}")
    if args.save:
        save_pairs(torch.cat(images), args.save)
        print(f"wrote {args.save}: uncached (left) and TeaCache (right), one seed per row")
    return 0


def save_pairs(images, path):
    from PIL import Image

    pairs = images.reshape(-1, 2, *images.shape[1:])           # [seeds, 2, C, H, W]
    rows = torch.cat([torch.cat(list(pair), dim=-1) for pair in pairs], dim=-2)
    pixels = ((rows.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    Image.fromarray(pixels).save(path)


def main(argv=None):
    import cachekern
    from cachekern import reference_models
    from cachekern.metrics import psnr

    parser = argparse.ArgumentParser(prog="python -m cachekern demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="FLUX.1-dev dimensions (needs a GPU)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="TeaCache threshold (default: 0.4 on flux-photos, 0.6 on random weights)")
    parser.add_argument("--random", action="store_true",
                        help="random weights even when flux-photos has been trained")
    parser.add_argument("--save", metavar="PNG", help="flux-photos: write the images here")
    parser.add_argument("--seeds", type=int, default=2, help="how many seeds to sample")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: min(4, the CPU count)); pinned "
                             "because torch's default swings CPU timings widely")
    args = parser.parse_args(argv)
    for name in ("seeds", "steps", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name}: expected a positive number, got {value}")
    if args.device is not None:
        try:
            requested = torch.device(args.device)
        except RuntimeError:
            parser.error(f"--device: expected cuda or cpu, got {args.device!r}")
        if requested.type == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda: this torch has no usable CUDA device (a CPU build, or "
                         "no GPU); use --device cpu")

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(args.threads or min(4, os.cpu_count() or 1))
    if not (args.full or args.random) and reference_models.is_trained("flux-photos"):
        return reference_model_demo(args, device)
    if args.save:
        parser.error("--save: needs the trained flux-photos model (random weights give noise)")
    threshold = 0.6 if args.threshold is None else args.threshold
    preset = PRESETS["full" if args.full else "small"]
    if args.full and device.type != "cuda":
        parser.error("--full needs a CUDA GPU")
    steps = args.steps or preset["steps"]
    model = build_model(preset, device)
    print(f"FluxTransformer2DModel ({'FLUX.1-dev dimensions' if args.full else 'small'}, random "
          f"weights), {steps} steps, {preset['dtype']}, {where(device)}")
    warm = make_inputs(preset, model, 0, device)  # warm-up: Triton's JIT, the allocator
    generate(model, warm, 3)
    with cachekern.patched(model, cachekern.TeaCache(threshold=1e9,          # compute, then skip
                                                     num_inference_steps=3)):
        generate(model, warm, 3)

    rows = []
    for seed in range(args.seeds):
        inputs = make_inputs(preset, model, seed, device)
        reference, t_ref = timed(lambda: generate(model, inputs, steps), device)
        policy = cachekern.TeaCache(threshold=threshold, num_inference_steps=steps)
        with cachekern.patched(model, policy) as handle:
            cached, t_cached = timed(lambda: generate(model, inputs, steps), device)
            computed = handle.stats()["computed"]
        rows.append((seed, computed, t_ref, t_cached, psnr(reference.float(), cached.float())))

    print(f"{'seed':>4}  {'steps computed':>14}  {'uncached s':>10}  {'TeaCache s':>10}  "
          f"{'speed-up':>8}  {'PSNR dB':>7}")
    for seed, computed, t_ref, t_cached, quality in rows:
        print(f"{seed:>4}  {computed:>8} / {steps:<3}  {t_ref:>10.2f}  {t_cached:>10.2f}  "
              f"{t_ref / t_cached:>7.2f}x  {quality:>7.1f}")
    return 0
