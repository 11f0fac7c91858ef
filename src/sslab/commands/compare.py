"""`sslab compare RUN RUN ...`: several runs side by side in one table, overlaid curves and one HTML page."""
from __future__ import annotations

import argparse
from typing import Callable


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="several runs side by side: one table, overlaid kNN and loss curves, one HTML "
                                       "page, in a folder of its own",
                       description="Reads each run folder (and its eval.json / analysis.json when `sslab eval` / "
                                   "`sslab analyze` were run) and writes compare.json, compare.md, knn.png, loss.png "
                                   "and a self-contained compare.html into --out, never into a run. Table: method, "
                                   "backbone, data, epochs, training time, images/s, kNN, linear probe and k-means "
                                   "ACC beside the untrained network and the raw pixels. Runs on different data or "
                                   "splits are grouped and flagged, never drawn on one panel.")
    p.add_argument("runs", metavar="RUN", nargs="+", help="two or more run folders")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="folder to write into (default: a new runs/compare-<date>-<time>)")
    p.set_defaults(handler=compare_command)


def compare_command(args: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    from sslab.analysis.compare import TABLE_HEADER, compare_runs, markdown_table

    record = compare_runs(args.runs, args.out, log)
    log(markdown_table(TABLE_HEADER, record["table"]["rows"]).rstrip())
    log(f"wrote compare.json, compare.md, knn.png, loss.png and compare.html in {record['folder']}")
    return 0
