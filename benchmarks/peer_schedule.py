"""Which steps a peer's cache computed: the pattern of its decisions ("C" where the block stack
ran, "." where it did not), per CFG branch, on the quality table's seeds. Fed back to
`benchmarks.quality --schedule PATTERN`, it separates what a peer gains from its choice of
steps from what it gains from its forecast.

    python -m benchmarks.peer_schedule wan-motion --method seacache \
        --setting "threshold=0.8 residual_order=1 max_consecutive_cached=2"
"""

import argparse

import torch

from benchmarks import quality
from benchmarks import quality_methods as methods
from cachekern import reference_models


def block_ran(model):
    """A list that gets, per forward call of `model`, whether its first block's first Linear
    ran; and the function that removes the hooks."""
    ran, flag = [], [False]
    block0 = next(m for m in model.modules() if isinstance(m, torch.nn.ModuleList))[0]
    linear = next(m for m in block0.modules() if isinstance(m, torch.nn.Linear))
    hooks = [model.register_forward_pre_hook(lambda *a: flag.__setitem__(0, False)),
             linear.register_forward_pre_hook(lambda *a: flag.__setitem__(0, True)),
             model.register_forward_hook(lambda *a: ran.append(flag[0]))]
    return ran, lambda: [h.remove() for h in hooks]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(reference_models.RECIPES))
    parser.add_argument("--method", required=True, choices=sorted(quality.METHOD_KEYS))
    parser.add_argument("--setting", required=True, help="the setting's label, as the table "
                        "prints it")
    parser.add_argument("--scheduler", default=None)
    parser.add_argument("--per-class", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ref = reference_models.load(args.name, device=device)
    scheduler = args.scheduler or ref.schedulers[0]
    steps = ref.default_steps(scheduler)
    labels = [c for c in range(ref.conditioner.num_classes) for _ in range(args.per_class)]
    seeds = list(range(len(labels)))
    calibration = dict(labels=labels[:args.batch],
                       seeds=[10_000 + s for s in range(len(labels[:args.batch]))])
    found = [s for s in quality.settings_for(ref, steps, dict(scheduler=scheduler), calibration,
                                             False, {quality.METHOD_KEYS[args.method]})
             if s.label == args.setting and s.method != methods.UNCACHED]
    if len(found) != 1:
        parser.error(f"--setting: {len(found)} settings of {args.method} are labelled "
                     f"{args.setting!r}")
    ran, remove = block_ran(ref.model)
    undo = found[0].apply(ref.model)
    try:
        with torch.no_grad():
            for lo in range(0, len(labels), args.batch):
                ref.sample(labels[lo:lo + args.batch], seeds[lo:lo + args.batch], steps=steps,
                           scheduler=scheduler)
    finally:
        undo()
        remove()
    branches = 2 if len(ran) == 2 * steps * -(-len(labels) // args.batch) else 1
    for generation in range(len(ran) // (branches * steps)):
        calls = ran[generation * branches * steps:(generation + 1) * branches * steps]
        for b in range(branches):
            pattern = "".join("C" if c else "." for c in calls[b::branches])
            print(f"generation {generation} branch {b}: {pattern} "
                  f"({pattern.count('C')}/{steps} computed)")


if __name__ == "__main__":
    main()
