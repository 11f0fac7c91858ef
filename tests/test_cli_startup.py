"""A CLI that answers at once (sslab/commands/quick.py): `--version`, `--help`, `datasets`, `methods` and completion do not
import torch (fresh processes, checked through sys.modules), the command table matches the parsers the modules
build, kept listings equal the live ones and are computed again when their key changes."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sslab import cli
from sslab.commands import quick

SRC = Path(__file__).resolve().parents[1] / "src"
# runs main() as the `sslab` script does; reports whether torch was imported (argcomplete leaves by os._exit)
WRAPPER = """import os, sys
def report():
    print('TORCH', 'torch' in sys.modules, file=sys.stderr, flush=True)
_exit = os._exit
os._exit = lambda code: (report(), _exit(code))
from sslab.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code or 0
report()
sys.exit(code)
"""


def sslab(args: list[str], cache: Path, **env: str) -> tuple[str, bool]:
    """(stdout, torch imported) of `sslab ARGS` in a fresh process whose kept listings live in `cache`."""
    full = {**os.environ, "PYTHONPATH": str(SRC), "SSLAB_CACHE_DIR": str(cache), **env}
    full.pop("_ARGCOMPLETE", None) if "_ARGCOMPLETE" not in env else None
    done = subprocess.run([sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True, env=full,
                          timeout=300)
    flags = [line for line in done.stderr.splitlines() if line.startswith("TORCH ")]
    assert flags, done.stderr
    return done.stdout, flags[-1] == "TORCH True"


def completion(line: str, out: Path) -> dict[str, str]:
    return {"_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)), "_ARGCOMPLETE_IFS": "\n",
            "_ARGCOMPLETE_STDOUT_FILENAME": str(out)}


def test_the_quick_calls_do_not_import_torch_and_answer_as_the_live_ones(tmp_path):
    pytest.importorskip("argcomplete")
    cache = tmp_path / "cache"
    version, torch_seen = sslab(["--version"], cache)
    assert not torch_seen and version.startswith("sslab ") and "torch 2." in version
    listing, torch_seen = sslab(["--help"], cache)
    assert not torch_seen and all(name in listing for name in quick.COMMANDS)
    for args in (["methods", "--image-size", "96"], ["datasets"]):
        live, torch_seen = sslab(args, cache)  # computed (torch), then kept
        assert torch_seen and live.strip()
        kept, torch_seen = sslab(args, cache)
        assert not torch_seen and kept == live
    answers = tmp_path / "completions.txt"
    for round_ in ("live", "kept"):
        _, torch_seen = sslab([], cache, **completion("sslab train --meth", answers))
        assert torch_seen == (round_ == "live") and answers.read_text().split() == ["--method"]
    _, torch_seen = sslab([], cache, **completion("sslab tr", answers))  # a command name: from the table
    assert not torch_seen and answers.read_text().split() == ["train"]


def full_subparsers() -> argparse._SubParsersAction:
    parser = cli.build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def test_the_command_table_matches_the_parsers_the_modules_build():
    sub = full_subparsers()
    assert [a.dest for a in sub._choices_actions] == list(quick.COMMANDS)  # the same names, in --help's order
    for action in sub._choices_actions:
        module, help_text = quick.COMMANDS[action.dest]
        assert action.help == help_text, action.dest
        handler = sub.choices[action.dest].get_default("handler")
        assert handler.__module__ == f"sslab.commands.{module}", action.dest


def test_a_kept_parser_completes_the_flags_and_choices_of_the_live_one():
    sub = full_subparsers()
    for command in ("train", "eval", "scan", "methods"):
        live = sub.choices[command]
        rebuilt = quick.parser_from_spec("x", quick.parser_spec(live))
        options = {o: a.choices for a in live._actions for o in a.option_strings if o not in ("-h", "--help")}
        again = {o: a.choices for a in rebuilt._actions for o in a.option_strings if o not in ("-h", "--help")}
        assert again.keys() == options.keys(), command
        assert all((again[o] is None) == (options[o] is None) for o in options)
        assert all(list(map(str, options[o])) == list(again[o]) for o in options if options[o] is not None)


def test_a_kept_listing_is_computed_again_when_its_key_or_a_watched_folder_changes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SSLAB_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    calls = []

    def compute() -> int:
        calls.append(1)
        quick.watch([data])
        print(f"listing {len(calls)}")
        return 0

    def listing() -> str:
        assert quick.kept_listing("datasets", ["datasets"], compute) == 0
        return capsys.readouterr().out

    assert listing() == "listing 1\n" and listing() == "listing 1\n"  # kept
    data.mkdir()
    assert listing() == "listing 2\n"  # the watched folder appeared
    (data / "cifar-10-batches-py").mkdir()
    (data / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"x")
    assert listing() == "listing 3\n" and listing() == "listing 3\n"  # a file two levels down
    monkeypatch.setattr(quick, "source_key", lambda: "another sslab")
    assert listing() == "listing 4\n"  # another version or an edited source file
    for _ in range(2):  # a failure is not kept
        assert quick.kept_listing("datasets", ["datasets", "--bad"], lambda: 2) == 2


def test_the_source_key_follows_the_source_files(tmp_path, monkeypatch):
    key = quick.source_key()
    assert quick.source_key() == key
    (tmp_path / "commands").mkdir()
    monkeypatch.setattr(quick, "__file__", str(tmp_path / "commands" / "quick.py"))  # a package of one file, then two
    (tmp_path / "commands" / "quick.py").write_text("")
    one = quick.source_key()
    (tmp_path / "new_method.py").write_text("")
    assert quick.source_key() not in (one, key)
