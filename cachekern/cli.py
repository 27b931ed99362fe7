"""Command line (``cachekern ...`` or ``python -m cachekern ...``).

    cachekern demo [--full]           uncached vs the caches on a trained reference model
    cachekern info                    how cachekern was built and what it runs on (JSON)
    cachekern plot-profile PROFILE -o out.png
                                      a Block Caching profile as a heatmap, with its schedule
    cachekern tune --reference-model NAME --speedup 2 -o tuned.cachekern
                                      the best TeaCache setting for a speed-up (cachekern.tune)
"""

import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="cachekern", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print build and runtime information as JSON")
    commands.add_parser("demo", help="uncached vs TeaCache on a FluxTransformer2DModel",
                        add_help=False)
    commands.add_parser("plot-profile", help="a Block Caching profile as a heatmap",
                        add_help=False)
    commands.add_parser("tune", help="the best TeaCache setting on a reference model",
                        add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "plot-profile":
        from cachekern.block_caching.plot import main as plot_profile

        return plot_profile(rest)
    if args.command == "tune":
        from cachekern.tune import main as tune

        return tune(rest)
    if args.command == "demo":
        from cachekern.demo import main as demo

        return demo(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "info":
        from cachekern import build_info

        # One write: json.dump writes piece by piece, and unbuffered (PYTHONUNBUFFERED) a
        # reader that stops at its match (`grep -q`) breaks the pipe mid-report.
        sys.stdout.write(json.dumps(build_info(), indent=2) + "\n")
    return 0
