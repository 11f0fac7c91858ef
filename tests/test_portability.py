"""Windows and macOS without a Windows or a Mac (sslab.portable): the stop flag and the time limit without
SIGALRM/setitimer, sslab importing with POSIX-only modules made unavailable, paths written with backslashes,
the MPS fallback switch."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sslab import portable

ROOT = Path(__file__).parents[1]


class Unarmed(Exception):
    pass


def raise_unarmed(signum: int) -> None:
    raise Unarmed(signum)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_time_limit_is_a_deadline_read_between_steps():
    clock = FakeClock()
    with portable.StopFlag(raise_unarmed, clock=clock) as stop:
        stop.arm(30.0)
        clock.now += 29.9
        assert not stop.asked() and stop.signum is None
        clock.now += 0.2
        assert stop.asked() and stop.signum == portable.TIME_LIMIT
    assert portable.exit_code(portable.TIME_LIMIT) == 0 and "time-limit" in portable.signal_name(portable.TIME_LIMIT)
    with portable.StopFlag(raise_unarmed, clock=clock) as stop:
        stop.arm(None)  # no limit
        clock.now += 1e9
        assert not stop.asked()


def test_signals_raise_the_flag_once_armed_and_stop_at_once_before():
    old = signal.getsignal(signal.SIGTERM)
    with portable.StopFlag(raise_unarmed) as stop:
        with pytest.raises(Unarmed):
            portable.raise_signal(signal.SIGTERM)
        stop.arm()
        portable.raise_signal(signal.SIGTERM)
        assert stop.asked() and stop.signum == signal.SIGTERM
        assert portable.exit_code(stop.signum) == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == old  # handlers restored


def test_the_vote_of_other_processes_decides():
    with portable.StopFlag(raise_unarmed, agree=lambda mine: True) as stop:  # another rank was signalled
        stop.arm()
        assert stop.asked() and stop.signum is None


def test_without_sigterm_sigalrm_and_setitimer_the_flag_still_works(monkeypatch):
    """Windows' signal module: no SIGALRM, no setitimer (and here no SIGTERM either)."""
    for name in ("SIGALRM", "setitimer", "ITIMER_REAL", "SIGTERM", "SIGKILL"):
        monkeypatch.delattr(signal, name, raising=False)
    assert portable.stop_signals() == (signal.SIGINT,)
    with pytest.raises(ValueError, match="SIGKILL"):
        portable.signal_number("SIGKILL")
    assert portable.signal_name(9999) == "signal 9999"
    clock = FakeClock()
    with portable.StopFlag(raise_unarmed, clock=clock) as stop:
        stop.arm(5)
        clock.now += 5
        assert stop.asked() and stop.signum == portable.TIME_LIMIT


def test_folder_name_reads_both_separators():
    assert portable.folder_name("C:\\Users\\ana\\photos\\") == "photos"
    assert portable.folder_name("/home/ana/photos/") == "photos"
    assert portable.folder_name("D:/data\\mixed/cats") == "cats"
    assert portable.folder_name("plain") == "plain"


@pytest.mark.parametrize("name, problem", [("simclr-cifar10", None), ("run 1.v2", None), ("a:b", "':'"),
                                           ("x?", "'?'"), ("CON", "device name"), ("nul.txt", "device name"),
                                           ("run.", "ends with"), ("..", "empty"), ("a\\b", "'\\\\'"),
                                           ("tab\tname", "'\\t'")])
def test_names_that_would_not_work_on_windows_are_told_apart(name, problem):
    found = portable.name_problem(name)
    assert (found is None) if problem is None else (problem in found)


def test_a_cp1252_pipe_prints_any_class_name_after_tolerant_console():
    import io

    raw = io.BytesIO()
    pipe = io.TextIOWrapper(raw, encoding="cp1252")  # what a Windows pipe is
    with pytest.raises(UnicodeEncodeError):
        pipe.write("class \u732b\n")
        pipe.flush()
    raw.seek(0), raw.truncate()
    portable.tolerant_console((pipe,))
    pipe.write("class \u732b \u00b7 done\n")
    pipe.flush()
    assert raw.getvalue() == b"class \\u732b \xb7 done\n"


def test_mps_fallback_is_set_on_macos_before_torch_only(monkeypatch):
    monkeypatch.delenv(portable.MPS_FALLBACK_ENV, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert not portable.enable_mps_fallback() and portable.MPS_FALLBACK_ENV not in os.environ
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(sys, "modules", {**sys.modules, "torch": object()})
    assert not portable.enable_mps_fallback()  # torch already imported: too late, nothing set
    assert portable.MPS_FALLBACK_ENV not in os.environ
    monkeypatch.setattr(sys, "modules", {k: v for k, v in sys.modules.items() if k != "torch"})
    assert portable.enable_mps_fallback() and os.environ[portable.MPS_FALLBACK_ENV] == "1"
    monkeypatch.setenv(portable.MPS_FALLBACK_ENV, "0")  # the user's choice is kept
    assert not portable.enable_mps_fallback() and os.environ[portable.MPS_FALLBACK_ENV] == "0"


# What a Windows Python lacks: these modules, and some names of the signal module.
WINDOWS_LIKE = """
import importlib, pkgutil, signal, sys
for name in ("fcntl", "termios", "resource", "pwd", "grp"):
    sys.modules[name] = None  # `import fcntl` now raises ImportError, as on Windows
for name in ("SIGALRM", "setitimer", "ITIMER_REAL", "SIGKILL", "SIGHUP", "SIGUSR1", "SIGUSR2"):
    if hasattr(signal, name):
        delattr(signal, name)
"""


def test_portable_module_imports_without_posix_modules_or_torch():
    code = WINDOWS_LIKE + "import sslab.portable\nassert 'torch' not in sys.modules\nprint('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_every_sslab_module_imports_without_posix_modules():
    """The modules of the package import as on Windows (what a module imports lazily is not covered here)."""
    code = WINDOWS_LIKE + textwrap.dedent("""
        import sslab
        failed = []
        for m in pkgutil.walk_packages(sslab.__path__, "sslab."):
            if m.name == "sslab.__main__":  # `python -m sslab`: importing it runs the command
                continue
            try:
                importlib.import_module(m.name)
            except ImportError as e:
                failed.append(f"{m.name}: {e}")
        print("\\n".join(failed) or "ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


def text_io_without_encoding(source: str) -> list[int]:
    """Lines of `open(...)` in text mode, `.read_text()` and `.write_text(...)` calls without `encoding=`: on
    Windows they use the locale's code page (cp1252), not UTF-8, and fail on the first character outside it."""
    import ast

    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in ("read_text", "write_text"):
            lines.append(node.lineno)
        elif name == "open" and isinstance(func, ast.Name):
            mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
            if not (isinstance(mode, ast.Constant) and "b" in str(mode.value)):
                lines.append(node.lineno)
    return lines


def test_text_files_are_read_and_written_as_utf8():
    assert text_io_without_encoding("open(p)\nopen(p, 'rb')\nopen(p, 'w', encoding='utf-8')\n"
                                    "p.read_text()\np.write_text(s, encoding='utf-8')\nos.open(p, 1)\n") == [1, 4]
    found = [f"{path.relative_to(ROOT)}:{line}" for path in sorted((ROOT / "src" / "sslab").rglob("*.py"))
             for line in text_io_without_encoding(path.read_text(encoding="utf-8"))]
    assert not found, "add encoding=\"utf-8\": " + ", ".join(found)
