"""Shared by every test file."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# hypothesis: the same examples on every CI run (derandomize: drawn from a seed fixed by each test's code), so a
# red build is the code's fault and reproduces locally; HYPOTHESIS_PROFILE=explore draws new, and more, examples
# (failures it finds are saved in .hypothesis/ and replayed first)
settings.register_profile("ci", derandomize=True, database=None, max_examples=40, deadline=None)
settings.register_profile("explore", derandomize=False, max_examples=400, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config):
    """Under pytest-xdist (pyproject's addopts: `-n auto`), the workers share the machine's cores: each one's
    PyTorch gets its share of them instead of all of them, so two workers on 2 cores do not make four threads
    wait on each other. Serial runs (`-n 0`) keep PyTorch's default."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        from sslab.portable import usable_cores

        torch.set_num_threads(max(1, usable_cores() // workers))


# the test hooks (tests/hooks/signal_at_step.py: a signal after a chosen step of any loop) importable in-process
sys.path.insert(0, str(Path(__file__).resolve().parent / "hooks"))

# the benchmark data beside the checkout (../shared/data), looked at first; then where the CLI looks
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_dataset_root(name: str) -> Path | None:
    """A folder that holds dataset `name`, found as `sslab train --dataset name` would: ../shared/data first,
    then the CLI's own search without --data-dir ($SSLAB_DATA/<name>, ~/.cache/sslab/data/<name>, and system
    folders such as Debian's /usr/share/datasets/fashion-mnist: `sslab.data.found_data_dir`). None when the CLI
    would not find it either. Tests pass the result as data_dir, so a test runs wherever the CLI finds the data."""
    from sslab.data import found_data_dir
    from sslab.data.source import LoadRequest
    from sslab.errors import DataError
    from sslab.registry import DATASETS

    try:
        DATASETS.get(name)(LoadRequest(SHARED_DATA, root_given=True))
        return SHARED_DATA
    except DataError:
        return found_data_dir(name)


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
