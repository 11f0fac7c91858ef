# PYTHON_ARGCOMPLETE_OK  (argcomplete: `eval "$(register-python-argcomplete sslab)"` completes commands and flags)
"""The `sslab` command. Thin: parse flags, build the run spec, call the library, turn user errors into one line.

Each module of sslab/commands adds its subcommands with `add_commands(subparsers)`; a handler takes the parsed
arguments and returns an exit code. Errors are printed here: a `UserError` or a stop with a checkpoint
(`Interrupted`) as one line, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import importlib
from types import ModuleType
from typing import NoReturn, Sequence

from sslab import portable
from sslab.commands import quick
from sslab.errors import Interrupted, UserError
from sslab.settings import sentence


def command_modules(commands: Sequence[str] | None = None) -> list[ModuleType]:
    """The modules that add the subcommands `commands` (None: all of them), in the order `sslab --help` lists
    them. Imported here, inside main()'s Ctrl-C handling: they import torch and the library, which takes seconds."""
    names = dict.fromkeys(m for c, (m, _) in quick.COMMANDS.items() if commands is None or c in commands)
    return [importlib.import_module(f"sslab.commands.{name}") for name in names]


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (not the whole usage block) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print_error(f"{self.prog}: error: {message}; see `{self.prog} --help`")
        raise SystemExit(2)


def build_parser(commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The `sslab` parser. `commands`: the subcommands to build in full (their modules are imported, and with
    them torch); the others get their name and help only, which is all `sslab --help` shows. None: all."""
    parser = Parser(prog="sslab", description="Self-supervised representation learning on images: "
                    "train, evaluate, look, cluster.")
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in command_modules(commands):
        module.add_commands(sub)
    quick.add_placeholders(sub, skip=set(sub.choices))
    quick.order_commands(sub)
    as_sentences(parser)
    return parser


def as_sentences(parser: argparse.ArgumentParser) -> None:
    """Every flag's and argument's help, in every command, as a sentence (capital letter, full stop)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                as_sentences(command)
        elif action.help and action.help != argparse.SUPPRESS:
            action.help = sentence(action.help)


def version_line() -> str:
    """`sslab 0.1.0 (torch 2.13.0+cpu, Python 3.11.7)`: what a bug report needs, the torch build included (read
    from its package metadata: importing torch would take seconds)."""
    import platform

    from sslab import __version__

    return f"sslab {__version__} (torch {quick.torch_version()}, Python {platform.python_version()})"


def enable_completion(parser: argparse.ArgumentParser) -> None:
    """Shell completion when argcomplete is installed and the shell asks for it (a no-op otherwise)."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ImportError:
        return
    argcomplete.autocomplete(parser)


def complete() -> None:
    """Answer the shell's completion request (argcomplete ends the process): a command name from the names
    alone, a command's flags from its kept parser (sslab/commands/quick.py) when it is current."""
    command = quick.completed_command()
    if command is None:
        enable_completion(build_parser([]))
    else:
        enable_completion(quick.kept_parser(command, lambda: build_parser([command])))


def main(argv: Sequence[str] | None = None) -> int:
    """Ctrl-C at any point (while the subcommands' modules import, while flags are parsed, during the work)
    ends with one line and exit code 130, never a traceback."""
    portable.tolerant_console()  # any character prints, also to a Windows pipe in code page 1252
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print_error("sslab: stopped")
        return 130


def _main(argv: Sequence[str] | None) -> int:
    if "_ARGCOMPLETE" in os.environ:
        complete()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = quick.chosen_command(argv)
    if command in quick.LISTINGS and not {"-h", "--help"} & set(argv):  # kept output, while still current
        return quick.kept_listing(command, argv, lambda: _run(argv, command))
    return _run(argv, command)


def _run(argv: list[str], command: str | None) -> int:
    parser = build_parser([command] if command else [])
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # name the subcommand whose --help lists the flags
        command = getattr(args, "command", None)
        sub = next((a.choices[command] for a in parser._actions if isinstance(a, argparse._SubParsersAction)
                    and command in a.choices), parser)
        sub.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    show_warnings()
    try:
        return int(args.handler(args) or 0)
    except UserError as e:
        print_error(f"sslab: error: {one_line(e)}")
        return e.exit_code
    except Interrupted as e:  # a signal or the time limit, after a checkpoint: how to continue
        print_error(f"sslab: {e}")
        return e.exit_code
    except KeyboardInterrupt:
        print_error("sslab: stopped")
        return 130
    except Exception as e:
        if is_out_of_memory(e):
            print_error("sslab: error: out of memory" + (" on the GPU" if _is_gpu_oom(e) else "") + "; " +
                        out_of_memory_advice(args))
            return 2
        raise


LARGE_IMAGE_SIZE = 512  # pixels a side: above this, the images themselves are the likely cause of running out of memory


def out_of_memory_advice(args: argparse.Namespace) -> str:
    """What to change after running out of memory: the cause, when the flags show it."""
    if getattr(args, "data_on_device", None) == "always":
        return ("--data-on-device always holds the whole dataset on the device; use auto (streams it from host memory "
                "when it does not fit) or never")
    size = getattr(args, "image_size", None)
    if isinstance(size, str) and size.isdigit():
        size = int(size)
    if isinstance(size, int) and size > LARGE_IMAGE_SIZE:
        return (f"--image-size {size} makes every image {size}x{size} pixels ({3 * size * size / 2**20:,.0f} MiB in "
                "colour, held for the whole dataset); use a smaller --image-size (32 to 224 is usual)")
    if getattr(args, "dataset", None) == "folder" and size is None:
        return ("without --image-size the images of a folder are kept at their own size; if they are large, pass "
                "--image-size 96 (or another size), else lower --batch-size")
    return "lower --batch-size (or use --precision bf16 on a GPU)"


def show_warnings() -> None:
    """Library warnings (skipped images, resized images) as `sslab: warning: ...` lines on stderr (once per
    run, by rank 0), unless the caller configured logging already."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("sslab: warning: %(message)s"))
        handler.setLevel(logging.WARNING)
        handler.addFilter(lambda record: os.environ.get("RANK", "0") == "0")
        root.addHandler(handler)


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def is_out_of_memory(e: BaseException) -> bool:
    """torch.OutOfMemoryError (GPU), MemoryError and the CPU allocator's RuntimeError (host)."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _is_gpu_oom(e: BaseException) -> bool:
    return type(e).__name__ == "OutOfMemoryError" or "cuda" in str(e).lower()


def print_error(message: str) -> None:
    """An error line on stderr, printed once: by rank 0 under torchrun (every rank meets the same bad input)."""
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
