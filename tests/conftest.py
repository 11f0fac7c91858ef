"""Shared by every test file."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def dataset_cache_in_a_temp_folder(tmp_path_factory):
    """Decoded datasets that tests cache go to a temp folder (subprocesses inherit it), never the user's
    ~/.cache/sslab."""
    patch = pytest.MonkeyPatch()
    patch.setenv("SSLAB_CACHE_DIR", str(tmp_path_factory.mktemp("sslab-cache")))
    yield
    patch.undo()
