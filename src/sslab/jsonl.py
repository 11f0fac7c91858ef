"""The one JSON-lines reader and writer (metrics.jsonl, the SCAN stages' metrics): one JSON object per line,
NaN/inf written as null (JSON has neither), a line cut by a crash ends the reading instead of failing it."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

from sslab.safe_write import append_bytes, write_bytes


def finite(obj: Any) -> Any:
    """`obj` with every NaN/inf float (at any depth) replaced by None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def json_line(record: dict[str, Any]) -> str:
    return json.dumps(finite(record)) + "\n"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records (JSON objects) of `path` ([] when it does not exist), up to the first unreadable line; a line
    holding anything but an object (edited by hand) is skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # a line cut by a crash
            break
        if isinstance(record, dict):
            records.append(record)
    return records


def append_jsonl(path: Path, record: dict[str, Any], resume_hint: str = "") -> None:
    """Append one record, fsynced (the checkpoint written next covers it, so a power cut cannot lose it), never
    through a link; a full disk is a RunFolderError naming the file."""
    append_bytes(path, json_line(record).encode(), hint=f"and continue with {resume_hint}" if resume_hint else "")


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace `path` atomically with `records`."""
    write_bytes(path, "".join(json_line(r) for r in records).encode())


def keep_until(path: Path, last_epoch: int) -> None:
    """Keep the records up to `last_epoch` (on resume: drop what the checkpoint does not cover)."""
    write_jsonl(path, [r for r in read_jsonl(path) if r.get("epoch", 0) <= last_epoch])


__all__ = ["finite", "json_line", "read_jsonl", "append_jsonl", "write_jsonl", "keep_until"]
