"""The longest silence of a command: run it with stdout and stderr piped (as in a log file or CI), timestamp
every output line, and print the longest gaps between lines (and from the start to the first line, and from the
last line to the exit).

    python bench/output_gaps.py                                   # `sslab demo --out <tmp>` (the default)
    python bench/output_gaps.py --top 5 --log gaps.txt -- sslab demo --out /tmp/demo
    python bench/output_gaps.py --limit 10 -- sslab scan RUN      # exit code 1 when a gap exceeds 10 s

Prints its config (command, machine, load average), every gap above `--show` seconds with the line that ended
it, the longest gap and the wall time. `--log FILE` keeps every line with its time since the start.
Piped output has no progress bar: what this measures is what a log file or a CI job shows.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def timestamped_lines(command: list[str], env: dict[str, str]) -> tuple[list[tuple[float, str]], float, int]:
    """Run `command` with stdout and stderr to pipes; ([(seconds since start, line), ...], wall seconds, exit code).
    Both pipes are read by their own thread, so a line is stamped when it is written, whichever stream it is on."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
                            bufsize=1, errors="replace")
    lines: list[tuple[float, str]] = []
    lock = threading.Lock()

    def read(stream, tag: str) -> None:
        for line in stream:
            with lock:
                lines.append((time.perf_counter() - start, tag + line.rstrip("\n")))

    readers = [threading.Thread(target=read, args=(proc.stdout, "")),
               threading.Thread(target=read, args=(proc.stderr, "[stderr] "))]
    for r in readers:
        r.start()
    code = proc.wait()
    for r in readers:
        r.join()
    lines.sort(key=lambda t: t[0])
    return lines, time.perf_counter() - start, code


def gaps(lines: list[tuple[float, str]], wall: float) -> list[tuple[float, float, str]]:
    """(gap seconds, time the gap ended, the line that ended it) for every line, plus the exit."""
    out, previous = [], 0.0
    for t, text in lines:
        out.append((t - previous, t, text))
        previous = t
    out.append((wall - previous, wall, "<exit>"))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Time the silences in a command's piped output.")
    p.add_argument("--top", type=int, default=5, help="how many of the longest gaps to list (default: 5)")
    p.add_argument("--show", type=float, default=None, help="also list every gap longer than this many seconds")
    p.add_argument("--limit", type=float, default=None,
                   help="exit with code 1 when the longest gap is longer than this many seconds (default: never)")
    p.add_argument("--log", default=None, help="write every line with its time since the start to this file")
    p.add_argument("command", nargs="*", help="the command after `--` (default: sslab demo --out <a temporary folder>)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sslab-gaps-") as tmp:
        command = args.command or [sys.executable, "-m", "sslab", "demo", "--out", tmp]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        print(f"command: {' '.join(command)}")
        print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs; load average before: "
              f"{_loadavg()}; Python {platform.python_version()}")
        lines, wall, code = timestamped_lines(command, env)
    if args.log:
        Path(args.log).write_text("".join(f"{t:8.2f}  {text}\n" for t, text in lines))
    all_gaps = gaps(lines, wall)
    longest = sorted(all_gaps, key=lambda g: -g[0])
    print(f"exit code {code}; {len(lines)} lines in {wall:.1f} s; load average after: {_loadavg()}")
    shown = longest[:args.top] + ([g for g in longest[args.top:] if g[0] > args.show] if args.show else [])
    for gap, t, text in shown:
        print(f"  gap {gap:6.1f} s ending at {t:7.1f} s: {text[:150]}")
    print(f"longest gap: {longest[0][0]:.1f} s")
    if code != 0:
        return code
    return 1 if args.limit is not None and longest[0][0] > args.limit else 0


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
