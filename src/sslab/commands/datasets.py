"""`sslab datasets`: every dataset name, its format, where it is looked for, and whether it is there."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from sslab.commands import quick
from sslab.errors import UserError

# what each registered dataset is read from; a dataset registered without a line here fails tests/test_export.py
FORMATS = {
    "digits": "scikit-learn's bundled 8x8 digits (no files, no download)",
    "fashion-mnist-mini": "10,000 + 2,000 Fashion-MNIST images shipped inside sslab, MIT licence (no download)",
    "cifar10": "the official python version: cifar-10-batches-py/",
    "cifar100": "the official python version: cifar-100-python/",
    "stl10": "the official binaries: stl10_binary/",
    "mnist": "the IDX files (MNIST/raw/ or the folder itself), or a Keras mnist.npz",
    "fashion-mnist": "the IDX files (FashionMNIST/raw/ or the folder itself)",
    "folder": "your images: {folder}",
    "npz": "{npz}",
}


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("datasets", help="list the datasets: format, where each is looked for, whether it is there",
                       description="Every --dataset name with the files it is read from, the folders looked in when "
                                   "no --data-dir is given ($SSLAB_DATA/<name>, else ~/.cache/sslab/data/<name>), "
                                   "and whether it is there now. --download fetches the ones marked downloadable.")
    p.set_defaults(handler=datasets_command)


def dataset_rows() -> list[dict[str, str]]:
    """One row per registered dataset: name, format, looked_in, present (yes/no), download (yes/no)."""
    from sslab.data import DATASETS, folder, idx, npz
    from sslab.data.download import SOURCES
    from sslab.data.source import LoadRequest, default_root

    hints = {"folder": folder.LAYOUT_HINT, "npz": npz.LAYOUT_HINT}
    rows = []
    for name in DATASETS.names():
        root = default_root(name)
        places: list[Path] = [] if name in ("digits", "fashion-mnist-mini") else [root]  # bundled
        if name == "fashion-mnist":
            places.append(idx.DEBIAN_FASHION_MNIST)
        quick.watch([root, *places])  # what is found there decides "present": `sslab datasets` is kept until it changes
        try:
            DATASETS.get(name)(LoadRequest(root, root_given=False))
            present = "yes"
        except UserError:
            present = "no"
        rows.append({"name": name, "format": FORMATS.get(name, "").format(**hints),
                     "looked_in": ", ".join(_home(p) for p in places) or "-", "present": present,
                     "download": "yes" if name in SOURCES else "no"})
    return rows


def _home(path: Path) -> str:
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home):] if text == home or text.startswith(home + "/") else text


def datasets_command(args: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    rows = dataset_rows()
    columns = [("name", "dataset"), ("present", "present"), ("download", "--download"), ("looked_in", "looked for in"),
               ("format", "format")]
    widths = {key: max(len(title), *(len(r[key]) for r in rows)) for key, title in columns[:-1]}
    log("  ".join(title.ljust(widths.get(key, 0)) for key, title in columns).rstrip())
    for r in rows:
        log("  ".join(r[key].ljust(widths.get(key, 0)) for key, _ in columns).rstrip())
    log("--data-dir DIR reads a dataset from DIR instead; `sslab train --dataset NAME --download` fetches the "
        "downloadable ones")
    return 0
