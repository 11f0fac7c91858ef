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

# the test hooks (tests/hooks/signal_at_step.py: a signal after a chosen step of any loop) importable in-process
sys.path.insert(0, str(Path(__file__).resolve().parent / "hooks"))


@pytest.fixture(autouse=True, scope="session")
def dataset_cache_in_a_temp_folder(tmp_path_factory):
    """Decoded datasets that tests cache go to a temp folder (subprocesses inherit it), never the user's
    ~/.cache/sslab."""
    patch = pytest.MonkeyPatch()
    patch.setenv("SSLAB_CACHE_DIR", str(tmp_path_factory.mktemp("sslab-cache")))
    yield
    patch.undo()
