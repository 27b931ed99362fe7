"""Command line: ``python -m cachekern info`` prints how cachekern was built and what it runs on."""

import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cachekern", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print build and runtime information as JSON")
    args = parser.parse_args(argv)
    if args.command == "info":
        from cachekern import build_info

        json.dump(build_info(), sys.stdout, indent=2)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
