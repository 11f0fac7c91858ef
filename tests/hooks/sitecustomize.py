"""Runs at the start of every Python process with tests/hooks on PYTHONPATH: installs the test signal hook
when SSLAB_TEST_SIGNAL_AT_STEP is set (signal_at_step.py)."""
import os

if os.environ.get("SSLAB_TEST_SIGNAL_AT_STEP"):
    from signal_at_step import install_from_environment

    install_from_environment()
