"""How long the `sslab` command takes to answer the calls that do no work: --version, --help, `datasets`,
`methods` and shell completion. Each is started once, then `--repeat` times, as a fresh process (as a shell
starts it), with an empty cache: the first run fills the listings and parsers sslab keeps (sslab/commands/quick.py), as
a user's first call does; prints its time, the others' median and spread in seconds, and whether torch was
imported.

    python bench/cli_startup.py                      # the sslab this Python imports
    python bench/cli_startup.py --repeat 9 --json out.json

Wall times depend on the machine's load (printed): compare figures taken back to back on one machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# What each call runs: the command line after `sslab`, and for completion the environment argcomplete reads.
CALLS = {
    "version": ["--version"],
    "help": ["--help"],
    "datasets": ["datasets"],
    "methods": ["methods"],
    "completion": [],
}
# Runs sslab's main() as the `sslab` script does, then reports whether torch was imported (on stderr, last line);
# argcomplete ends the process with os._exit, past any `finally`, so that is where completion reports.
WRAPPER = """import os, sys
def report():
    print('torch imported:', 'torch' in sys.modules, file=sys.stderr, flush=True)
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


def completion_env(tmp: Path) -> dict[str, str]:
    """argcomplete's protocol: the line being completed, written to a file instead of file descriptor 8."""
    line = "sslab train --meth"
    return {"_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)), "_ARGCOMPLETE_IFS": "\n",
            "_ARGCOMPLETE_STDOUT_FILENAME": str(tmp / "completions.txt")}


def time_call(name: str, args: list[str], tmp: Path) -> tuple[float, bool, str]:
    """(seconds, torch imported, the first line of output) of one fresh process. The kept listings and parsers
    (sslab/commands/quick.py) go to `tmp`: the first run of a call fills them, as a user's first run does."""
    env = {**os.environ, "SSLAB_CACHE_DIR": str(tmp / "cache"), **(completion_env(tmp) if name == "completion" else {})}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True, env=env,
                          timeout=120)
    seconds = time.perf_counter() - start
    torch_line = [line for line in done.stderr.splitlines() if line.startswith("torch imported:")]
    out = done.stdout.strip()
    if name == "completion":
        out = (tmp / "completions.txt").read_text(encoding="utf-8").strip().replace("\n", " ")
    return seconds, bool(torch_line) and torch_line[-1].endswith("True"), (out.splitlines() or [""])[0][:60]


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a (Windows)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="fresh processes per call after the first, which "
                        "fills the kept listings (default: 5)")
    parser.add_argument("--calls", nargs="+", choices=list(CALLS), default=list(CALLS), help="which calls (default: all)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    opts = parser.parse_args()
    import sslab

    print(f"sslab {sslab.__version__} from {Path(sslab.__file__).parent}; Python {platform.python_version()}; "
          f"{os.cpu_count()} CPUs; load average {load_average()}; "
          f"{opts.repeat} runs per call")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in opts.calls:
            first, *runs = [time_call(name, CALLS[name], Path(tmp)) for _ in range(opts.repeat + 1)]
            times = [r[0] for r in runs]
            results[name] = {"first_s": first[0], "first_torch_imported": first[1], "median_s": statistics.median(times),
                             "min_s": min(times), "max_s": max(times), "torch_imported": any(r[1] for r in runs),
                             "output": runs[-1][2]}
            r = results[name]
            label = " ".join(CALLS[name]) or "train --meth<TAB>"
            print(f"  sslab {label:<18} median {r['median_s']:.2f} s (min {r['min_s']:.2f}, max {r['max_s']:.2f}); "
                  f"torch imported: {r['torch_imported']}; first run {r['first_s']:.2f} s (torch imported: "
                  f"{r['first_torch_imported']}); output: {r['output']!r}")
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
