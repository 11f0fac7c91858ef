"""What the `sslab` command answers without importing torch (which takes seconds): `--version`, `--help`, the
command names, and the listings `sslab methods` and `sslab datasets` once computed.

- The command table (`COMMANDS`): each subcommand's module and one-line help, so that `sslab --help` and the
  completion of a command name build no subcommand's parser; only the chosen command's module is imported
  (tests/test_cli_startup.py checks the table against the parsers the modules build).
- The listings read the registries, whose modules import torch. Their output is kept in the user's cache
  (`listing_cache_folder()`), keyed by sslab's and torch's versions, the size and modification time of every
  source file of sslab (an edited or added method changes the key), the command line, the environment the
  listing reads, and the state of the folders it looked at (`watch`): `sslab datasets` looks for data in
  them. Anything changed: the listing is computed again (importing torch) and kept. Only plain text is
  kept (JSON): nothing read back executes code.
- The parsers of the subcommands, for shell completion: their flags and choices, kept the same way.

No torch here, and nothing else heavy: this module is imported on every start.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

# command -> (the module of sslab.commands that adds it, its one-line help), in the order `sslab --help` lists them
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "train a self-supervised method; writes a run folder"),
    "methods": ("train", "list the methods and their recipe for a dataset and image size"),
    "demo": ("demo", "train, evaluate and report on the bundled Fashion-MNIST mini (CPU, no download, ~2 minutes; "
                     "docs/methods.md says why these settings)"),
    "scan": ("scan", "cluster a trained run's images without labels (SCAN); writes RUN/scan/"),
    "eval": ("evaluate", "kNN, linear probes (fast/standard), SVM, semi-supervised and transfer evaluation; writes "
                         "RUN/eval.json"),
    "embed": ("evaluate", "backbone features to RUN/embeddings.npz and TensorBoard's embedding projector"),
    "analyze": ("look", "PCA, t-SNE, image maps and k-means of the features; writes RUN/analysis.json"),
    "attention": ("look", "activation maps and Grad-CAM of test images; PNGs in RUN/attention/"),
    "report": ("look", "one self-contained HTML page of the run: RUN/report.html"),
    "export-images": ("data_tools", "write every image of a dataset as PNG: OUT/split/class/NNNNN.png"),
    "preview-augment": ("data_tools", "a grid of a method's augmented views of some images (PNG)"),
    "imagenet100": ("data_tools", "make ImageNet-100 (CMC's 100 classes) from ImageNet by links"),
    "export": ("export", "the trained backbone for other code: safetensors + .pt (sslab, torchvision or timm names) "
                         "or ONNX; prints the code that loads it"),
    "compare": ("compare", "several runs side by side: one table, overlaid kNN and loss curves, one HTML page, in a "
                           "folder of its own"),
    "datasets": ("datasets", "list the datasets: format, where each is looked for, whether it is there"),
}
LISTINGS = ("methods", "datasets")  # commands whose output is kept (they only read registries and folders)
LISTING_ENV = ("SSLAB_DATA", "HOME", "USERPROFILE", "XDG_CACHE_HOME")  # what the listings' paths depend on
WATCH_DEPTH = 3  # levels below a watched folder whose names, sizes and times enter the key (MNIST/raw/file: 2)
WATCH_MAX_ENTRIES = 2000  # a larger folder is not fingerprinted: its listing is computed every time
_watched: list[str] = []  # folders the listing being computed looked at (`watch`)


def torch_version() -> str:
    """The installed torch's version, read from its package metadata (no import)."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def chosen_command(argv: list[str]) -> str | None:
    """The subcommand of a command line (the first word that is not an option), or None."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def completed_command() -> str | None:
    """Under shell completion (argcomplete's _ARGCOMPLETE): the subcommand of the line being completed once its
    name is complete (`sslab train --me`), else None (the name itself is being completed)."""
    line = os.environ.get("COMP_LINE", "")[: int(os.environ.get("COMP_POINT", "0") or 0) or None]
    words = line.split()
    done = words[1:] if line.endswith((" ", "\t")) else words[1:-1]
    return chosen_command(done)


def command_module_names(command: str | None) -> list[str]:
    """The modules of sslab.commands to import: the chosen command's, or none."""
    return [COMMANDS[command][0]] if command in COMMANDS else []


def add_placeholders(sub: argparse._SubParsersAction, skip: set[str]) -> None:
    """Every command not in `skip` as a parser with its help only: enough to list and complete the names."""
    for name, (_, help_text) in COMMANDS.items():
        if name not in skip:
            sub.add_parser(name, help=help_text, add_help=False)


def order_commands(sub: argparse._SubParsersAction) -> None:
    """List the commands in `COMMANDS`' order, whichever were added first."""
    rank = {name: i for i, name in enumerate(COMMANDS)}
    sub._choices_actions.sort(key=lambda action: rank.get(action.dest, len(rank)))


# ---- kept listings and parsers ------------------------------------------------------------------------------
def listing_cache_folder() -> Path:
    """$SSLAB_CACHE_DIR/cli, else $XDG_CACHE_HOME/sslab/cli (absolute only), else ~/.cache/sslab/cli."""
    if os.environ.get("SSLAB_CACHE_DIR"):
        return Path(os.environ["SSLAB_CACHE_DIR"]).expanduser() / "cli"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "sslab" / "cli"


def source_key() -> str:
    """sslab's and torch's versions and the size and modification time of every source file of sslab."""
    from sslab import __version__

    root = Path(__file__).resolve().parents[1]  # the sslab package
    stats = []
    for path in sorted(root.rglob("*.py")):
        st = path.stat()
        stats.append(f"{path.relative_to(root).as_posix()}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join([__version__, torch_version(), sys.version, *stats]).encode()).hexdigest()


def fingerprint(folder: str) -> str | None:
    """Names, sizes and times of `folder` and what is below it (WATCH_DEPTH levels); "absent" when it is not
    there; None when it holds more than WATCH_MAX_ENTRIES entries (then it is not worth keeping)."""
    top = Path(folder)
    if not top.exists():
        return "absent"
    entries: list[str] = []
    level = [top]
    for _ in range(WATCH_DEPTH + 1):
        below = []
        for path in level:
            with contextlib.suppress(OSError):
                st = path.stat()
                entries.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
                if path.is_dir():
                    below.extend(sorted(path.iterdir()))
            if len(entries) + len(below) > WATCH_MAX_ENTRIES:
                return None
        level = below
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def watch(folders: list[str | Path]) -> None:
    """Called by a listing while it is computed: these folders' contents decide its output."""
    _watched.extend(str(Path(f)) for f in folders)


def _entry_path(command: str, argv: list[str]) -> Path:
    env = {k: os.environ.get(k) for k in LISTING_ENV}
    name = hashlib.sha256(json.dumps([command, argv, env]).encode()).hexdigest()[:24]
    return listing_cache_folder() / f"{command}-{name}.json"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) else None


def _write(path: Path, entry: dict[str, Any]) -> None:
    """Atomically (a reader never sees half a file); a cache that cannot be written is no error."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entry), encoding="utf-8")
        os.replace(tmp, path)


def kept_listing(command: str, argv: list[str], compute: Callable[[], int]) -> int:
    """Print the kept output of `command` when its key still holds, else run `compute` (its exit code),
    print what it printed, and keep it when it succeeded."""
    path, key = _entry_path(command, argv), source_key()
    entry = _read(path)
    if entry and entry.get("key") == key and all(fingerprint(f) == p for f, p in entry.get("watch", {}).items()):
        sys.stdout.write(entry.get("output", ""))
        return 0
    _watched.clear()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = compute()
    sys.stdout.write(out.getvalue())
    prints = {f: fingerprint(f) for f in _watched}
    if code == 0 and None not in prints.values():
        _write(path, {"key": key, "watch": prints, "output": out.getvalue()})
    return code


def parser_spec(parser: argparse.ArgumentParser) -> list[dict[str, Any]]:
    """A parser's arguments as plain data: options, dest, nargs, choices, help (what completion needs)."""
    spec = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        choices = list(action.choices) if action.choices is not None else None
        spec.append({"options": list(action.option_strings), "dest": action.dest, "help": action.help,
                     "nargs": action.nargs, "choices": [str(c) for c in choices] if choices is not None else None,
                     "metavar": action.metavar if isinstance(action.metavar, str) else None})
    return spec


def parser_from_spec(prog: str, spec: list[dict[str, Any]]) -> argparse.ArgumentParser:
    """An argparse parser with the arguments of `parser_spec` (every value a string: for completion only)."""
    parser = argparse.ArgumentParser(prog=prog)
    for arg in spec:
        kwargs: dict[str, Any] = {"help": arg["help"], "choices": arg["choices"], "metavar": arg["metavar"]}
        if arg["nargs"] == 0:
            kwargs = {"help": arg["help"], "action": "store_const", "const": True}
        elif arg["nargs"] is not None:
            kwargs["nargs"] = arg["nargs"]
        if arg["options"]:
            parser.add_argument(*arg["options"], dest=arg["dest"], **kwargs)
        else:
            parser.add_argument(arg["dest"], **kwargs)
    return parser


def kept_parser(command: str, build: Callable[[], argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """The parser of `command` for completion: rebuilt from the kept spec when it is current, else `build()`
    (importing the command's module) and kept."""
    path, key = listing_cache_folder() / f"parser-{command}.json", source_key()
    entry = _read(path)
    if entry and entry.get("key") == key:
        top = argparse.ArgumentParser(prog="sslab")
        sub = top.add_subparsers(dest="command")
        sub.choices[command] = parser_from_spec(f"sslab {command}", entry["spec"])
        return top
    parser = build()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    _write(path, {"key": key, "spec": parser_spec(sub.choices[command])})
    return parser


__all__ = ["COMMANDS", "LISTINGS", "add_placeholders", "order_commands", "command_module_names", "torch_version", "chosen_command", "completed_command", "kept_listing",
           "kept_parser", "watch", "listing_cache_folder", "source_key", "fingerprint", "parser_spec",
           "parser_from_spec"]
