"""The `sslab` command. Thin: parse flags, build the config, call the library, turn user errors into one line.

Each feature module adds its subcommands with `add_commands(subparsers)`; a handler takes the parsed
arguments and returns an exit code.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from sslab.errors import UserError

# modules that add subcommands, in the order `sslab --help` lists them
COMMAND_MODULES = ["sslab.commands.train", "sslab.commands.demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sslab", description="Self-supervised representation learning on images: "
                                     "train, evaluate, look, cluster.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except UserError as e:
        print(f"sslab: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("sslab: stopped", file=sys.stderr)
        return 130
    except Exception as e:
        if type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower():
            print("sslab: error: out of memory; lower --batch-size (or use --precision bf16 on a GPU)", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())
