"""Block Caching inside CUDA graphs: one graph per (step, CFG branch) of a flux-photos generation,
captured with the model patched, replayed for a whole generation, and compared bit for bit with
the same generation run eagerly; then both timed.

    python -m benchmarks.capture_block_caching [--untrained] [--out capture.md]

Capture is possible because a Block Caching step has no host synchronisation and no
data-dependent control flow: which blocks are reused is fixed by the step index, which the host
knows. (A synchronisation inside a capture is an error, so capturing is itself the test.) The
residuals stay on the device here (no device budget): BlockCache's copies to pinned memory are
host-driven and are not captured.
"""

import argparse
import statistics

import torch

import cachekern
from cachekern import reference_models
from cachekern.reference_models.common import branch, seeded_noise

TARGET = 0.5


def generation(ref, labels, seeds, steps, call):
    """flux-photos' sampler (reference_models.flux_photos.sample), with each model call made by
    call(name, x, sigma, labels) so that it can be eager or a graph replay."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    recipe = ref.recipe
    device = labels.device
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000,
                                                shift=recipe.SAMPLING["shift"])
    scheduler.set_timesteps(steps, device=device)
    empty = torch.full_like(labels, ref.conditioner.num_classes)
    x = recipe.pack(seeded_noise(seeds, (recipe.CHANNELS, recipe.IMAGE_SIZE, recipe.IMAGE_SIZE),
                                 device, torch.float32))
    guidance = recipe.SAMPLING["guidance_scale"]
    for t in scheduler.timesteps:
        sigma = (t / 1000).expand(len(labels))
        v = call("cond", x, sigma, labels)
        v_empty = call("uncond", x, sigma, empty)
        v = v_empty + guidance * (v - v_empty)
        x = scheduler.step(v, t, x, return_dict=False)[0]
    return recipe.unpack(x)


def eager_call(ref):
    def call(name, x, sigma, labels):
        with branch(ref.model, name):
            return ref.recipe.velocity(ref.model, ref.conditioner, x, sigma, labels)
    return call


class GraphedCalls:
    """One CUDA graph per model call of a generation, in call order, over static inputs."""

    def __init__(self, ref, labels):
        # Everything a graph reads or writes must outlive it: outputs and labels are kept.
        self.ref, self.graphs, self.outputs, self.labels = ref, [], [], []
        n = len(labels)
        recipe = ref.recipe
        self.x = torch.zeros(n, recipe.GRID ** 2, ref.model.config.in_channels, device="cuda")
        self.sigma = torch.zeros(n, device="cuda")
        self.next = 0

    def capture(self, calls):
        pool = torch.cuda.graph_pool_handle()
        for name, labels in calls:
            self.labels.append(labels.clone())
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                with branch(self.ref.model, name):
                    out = self.ref.recipe.velocity(self.ref.model, self.ref.conditioner, self.x,
                                                   self.sigma, self.labels[-1])
            self.graphs.append(graph)
            self.outputs.append(out)

    def __call__(self, name, x, sigma, labels):
        self.x.copy_(x)
        self.sigma.copy_(sigma)
        i = self.next
        self.graphs[i].replay()
        self.next = (i + 1) % len(self.graphs)
        return self.outputs[i].clone()


def timed(fn, passes):
    from benchmarks.harness import wall_times

    out, times = wall_times(fn, passes)
    return out, statistics.median(times)


@torch.no_grad()
def main(untrained, out_path, passes):
    from benchmarks.harness import environment, report

    ref = (reference_models.create("flux-photos", "cuda") if untrained
           else reference_models.load("flux-photos", "cuda"))
    steps = ref.recipe.SAMPLING["steps"]
    labels = torch.arange(8, device="cuda") % ref.conditioner.num_classes
    seeds = list(range(8))

    def run():
        return ref.sample(labels.tolist(), [100 + s for s in seeds], steps=steps)
    profile = cachekern.profile(ref.model, run)
    cachekern.fit_scale_shift(profile, ref.model, run, target_compute=TARGET)
    policy = cachekern.BlockCaching(profile, target_compute=TARGET, scale_shift="fit")

    uncached, uncached_s = timed(lambda: generation(ref, labels, seeds, steps, eager_call(ref)),
                                 passes)
    handle = cachekern.patch(ref.model, policy)
    eager, eager_s = timed(lambda: generation(ref, labels, seeds, steps, eager_call(ref)),
                           passes)
    # The handle's step counter has wrapped round to step 0: the captures below record steps
    # 0, 1, ... in order, each with the blocks that step reuses.
    graphed = GraphedCalls(ref, labels)
    empty = torch.full_like(labels, ref.conditioner.num_classes)
    graphed.capture([(name, lab) for _ in range(steps)
                     for name, lab in (("cond", labels), ("uncond", empty))])
    replayed, graph_s = timed(lambda: generation(ref, labels, seeds, steps, graphed), passes)
    stats = handle.stats()
    cachekern.unpatch(ref.model)
    same = torch.equal(replayed, eager)
    text = "\n".join([
        environment(),
        f"flux-photos ({'untrained' if untrained else 'trained'}), 8 images, {steps} steps, "
        f"true CFG (2 calls a step, {len(graphed.graphs)} graphs), Block Caching at "
        f"target_compute={TARGET} with the fitted scale-shift (schedule computes "
        f"{stats['schedule_compute']:.3f} of the block calls). Median of {passes} generations.",
        "",
        "| run | generation ms | vs uncached eager |",
        "|---|---|---|",
        f"| uncached, eager | {uncached_s * 1e3:.1f} | 1.00× |",
        f"| Block Caching, eager | {eager_s * 1e3:.1f} | {uncached_s / eager_s:.2f}× |",
        f"| Block Caching, CUDA graphs (one per call) | {graph_s * 1e3:.1f} | "
        f"{uncached_s / graph_s:.2f}× |",
        "",
        f"Graph replay equals the eager cached generation bit for bit: {same}; max |diff| "
        f"{(replayed - eager).abs().max().item():.3g}; the cached against the uncached: max |diff| "
        f"{(eager - uncached).abs().max().item():.3g}.",
    ])
    report(text, out_path)
    if not same:
        raise SystemExit("graph replay differs from the eager generation")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--untrained", action="store_true")
    parser.add_argument("--out")
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    main(args.untrained, args.out, args.passes)
