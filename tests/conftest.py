"""Shared by every test file."""
from __future__ import annotations

from pathlib import Path

import pytest

# the benchmark data beside the checkout (../shared/data), looked at first; then where the CLI looks
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_dataset_root(name: str) -> Path | None:
    """A folder that holds dataset `name`, found as `sslab train --dataset name` would: ../shared/data first,
    then the CLI's own search without --data-dir ($SSLAB_DATA/<name>, ~/.cache/sslab/data/<name>, and system
    folders such as Debian's /usr/share/datasets/fashion-mnist). None when the CLI would not find it either.
    Tests pass the result as data_dir, so a test runs wherever the CLI finds the data."""
    from sslab.data.source import LoadRequest, default_root
    from sslab.errors import DataError
    from sslab.registry import DATASETS

    locate = DATASETS.get(name)
    for root, given in ((SHARED_DATA, True), (default_root(name), False)):
        try:
            source = locate(LoadRequest(root, root_given=given))
        except DataError:
            continue
        return root if given else (source.files_base or root)
    return None


def needs_dataset(name: str) -> pytest.MarkDecorator:
    """Skip unless `shared_dataset_root(name)` finds the dataset."""
    return pytest.mark.skipif(shared_dataset_root(name) is None,
                              reason=f"{name} not found in {SHARED_DATA} nor where `sslab datasets` looks")


@pytest.fixture(autouse=True, scope="session")
def dataset_cache_in_a_temp_folder(tmp_path_factory):
    """Decoded datasets that tests cache go to a temp folder (subprocesses inherit it), never the user's
    ~/.cache/sslab."""
    patch = pytest.MonkeyPatch()
    patch.setenv("SSLAB_CACHE_DIR", str(tmp_path_factory.mktemp("sslab-cache")))
    yield
    patch.undo()
