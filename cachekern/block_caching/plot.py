"""`cachekern plot-profile PROFILE -o out.png`: a Block Caching profile as a heatmap of
change (blocks × steps), with the schedule derived from it drawn over it (a dot where the block
is computed), as in the Block Caching paper's Figures 2 and 4. Needs matplotlib."""

import argparse
import math


def plot(profile, path, delta=None, target_compute=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    schedule = profile.schedule(0.5 if delta is None and target_compute is None else delta,
                                target_compute)
    change = [[math.nan if math.isnan(v) else v for v in row] for row in profile.change]
    size = (max(6, profile.steps * 0.22), max(3, len(profile.units) * 0.25))
    fig, ax = plt.subplots(figsize=size)
    image = ax.imshow(change, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="relative L1 change of the block's residual")
    points = [(t, b) for b, row in enumerate(schedule) for t, compute in enumerate(row) if compute]
    ax.scatter([t for t, _ in points], [b for _, b in points], s=6, c="white", marker="o",
               label="computed (schedule)")
    ax.set_yticks(range(len(profile.units)))
    ax.set_yticklabels(profile.units, fontsize=6)
    ax.set_xlabel("step")
    compute = sum(c for row in schedule for c in row) / sum(len(r) for r in schedule)
    setting = f"target_compute={target_compute}" if target_compute is not None else \
        f"delta={0.5 if delta is None else delta}"
    ax.set_title(f"{profile.model_class}: change per block and step; schedule at {setting} "
                 f"computes {compute:.0%}", fontsize=9)
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    from cachekern.block_caching.profile import Profile

    parser = argparse.ArgumentParser(prog="cachekern plot-profile", description=__doc__)
    parser.add_argument("profile", help="a file written by Profile.save")
    parser.add_argument("-o", "--out", required=True, help="the PNG to write")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--delta", type=float, help="schedule threshold (default 0.5)")
    group.add_argument("--target-compute", type=float, help="or: fraction of block calls")
    args = parser.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        parser.error("needs matplotlib, which a plain install lacks: pip install matplotlib")
    try:
        profile = Profile.load(args.profile)
    except FileNotFoundError:
        parser.error(f"profile: no file {args.profile}")
    except Exception as error:      # safetensors' errors on a damaged or foreign file
        parser.error(f"profile: {args.profile} is not a readable cachekern profile "
                     f"({type(error).__name__}: {error})")
    try:
        plot(profile, args.out, args.delta, args.target_compute)
    except ValueError as error:
        parser.error(str(error))
    print(f"wrote {args.out}")
    return 0
