"""`fastmixer` / `python -m fastmixer`: demo, predict, eval, info, bench.

Each subcommand lives in its own module, which exposes `add_parser(subparsers)` registering its arguments and setting
`func` (called with the parsed args; returns the exit code). The CLI never imports bench/ (not installed).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand module (fastmixer.<name>) for each command, in help order
_COMMANDS = ("demo", "predict", "evaluate", "info", "benchmark")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastmixer", description="MLP-Mixer with fused Triton kernels (timm drop-in)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMANDS:
        importlib.import_module(f"fastmixer.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        print(f"fastmixer {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
