"""`sslab report`: one self-contained HTML page. Checked as text (every figure inline, nothing external, the
SCAN section from scan.json) and in a real headless Chromium through the DevTools protocol: no console
errors, every <img> decoded (naturalWidth > 0), a non-blank screenshot.

The browser test needs Debian's `chromium` (`apt-get install -y chromium`, about 115 packages); without it
the test is skipped with that reason. Set SSLAB_CHROMIUM to use another Chromium or Chrome binary.
"""
from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from test_eval_support import assert_png_not_blank, colour_codes, trained_run

from sslab.cli import main

SCAN_NUMBERS = {"dataset": "digits", "num_clusters": 10, "acc_note": "ACC under the best one-to-one matching",
                "kmeans": {"acc": 0.25, "nmi": 0.2, "ari": 0.05}, "neighbor_accuracy": 0.875,
                "scan": {"acc": 0.4321, "nmi": 0.31, "ari": 0.17, "head": 2}, "selflabel": None,
                "scan_heads_test_acc": [0.4, 0.41, 0.4321], "seconds": {"mine": 1.25, "cluster": 3.0, "selflabel": None},
                "config": {"num_heads": 3, "entropy_weight": 5.0, "cluster_epochs": 2, "show_per_cluster": 10}}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """The tiny run after eval, analyze, attention and a SCAN stand-in (scan.json and two PNGs)."""
    run = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(trained_run(tmp_path_factory.mktemp("trained")), run)
    assert main(["eval", str(run), "--device", "cpu", "--protocol", "fast"]) == 0
    assert main(["analyze", str(run), "--device", "cpu", "--max-points", "100", "--map-size", "400"]) == 0
    assert main(["attention", str(run), "--device", "cpu", "-n", "2"]) == 0
    (run / "scan" / "heads").mkdir(parents=True)
    (run / "scan" / "scan.json").write_text(json.dumps(SCAN_NUMBERS))
    for rel in ("scan/confusion.png", "scan/heads/head2.png"):
        shutil.copy(run / "eval" / "confusion-linear-fast.png", run / rel)
    assert main(["report", str(run)]) == 0
    return run


def test_report_is_self_contained_and_has_every_section(full_run):
    page = (full_run / "report.html").read_text()
    # nothing fetched from elsewhere: every src is a data URI, every href a data URI or an in-page anchor
    assert re.findall(r'\bsrc="(?!data:image/png;base64,)', page) == []
    assert re.findall(r'\bhref="(?!data:|#)', page) == []
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page
    for heading in ("Config", "Training summary", "Learning curves", "Evaluation", "Analysis", "Attention",
                    "SCAN clustering"):
        assert f">{heading}" in page
    assert "SimSiam · digits (8x8) · simple-cnn" in page  # the real names, from plots.run_title
    pngs = [p for d in ("plots", "eval", "analysis", "attention", "scan") for p in (full_run / d).rglob("*.png")]
    assert page.count("data:image/png;base64,") == len(pngs) >= 12
    for p in pngs:  # each figure embedded byte for byte
        assert base64.b64encode(p.read_bytes()).decode() in page
    assert "scan/heads/head2.png" in page
    assert re.search(r"<td>knn_top1</td><td>\d+\.\d\d%</td>", page)  # percentages, as in the plots
    assert re.search(r"<td>knn_top1_init</td><td>\d+\.\d\d%</td>", page)
    scan = page[page.index('<section id="scan">'):]
    scan = scan[:scan.index("</section>")]
    assert '<td>SCAN (head 2)</td><td class="num">43.21%</td><td class="num">0.31</td>' in scan
    assert '<td>SCAN + self-label</td><td class="num">not run</td>' in scan
    assert "neighbor_accuracy</td><td>87.50%" in scan and "mine 1.2 s, cluster 3.0 s, selflabel –" in scan
    assert "{" not in scan.split("<details>")[0]  # no raw JSON outside the folded config
    assert "linear-fast" in page and "ARI" in page


def test_report_without_later_commands_says_which_to_run(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run(tmp_path / "trained"), run)
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert f"sslab eval {run}" in page and f"sslab analyze {run}" in page and "SCAN" not in page


# ---- a real browser ----------------------------------------------------------------------------------------------
def chromium_binary() -> str | None:
    named = os.environ.get("SSLAB_CHROMIUM")
    if named:
        return named
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


class DevTools:
    """Chromium's DevTools protocol over --remote-debugging-pipe: JSON messages ending in NUL on fds 3 (to the
    browser) and 4 (from it). No websocket library needed, no port to collide with."""

    def __init__(self, binary: str, profile: Path, width: int, height: int, timeout: float = 60.0):
        import fcntl

        self.timeout = timeout
        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()

        def child_fds() -> None:  # move the pipe ends to fds 3 and 4 without clobbering one with the other
            a = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={width},{height}",
                "--remote-debugging-pipe", "about:blank"]
        self.stderr = open(profile.parent / "chromium-stderr.txt", "w")
        self.proc = subprocess.Popen(args, pass_fds=(3, 4), preexec_fn=child_fds, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.stderr)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        return self.next_id

    def wait_for(self, wanted, what: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                message = json.loads(raw)
                if wanted(message):
                    return message
                self.events.append(message)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"chromium did not send {what} within {self.timeout:.0f} s")
            if select.select([self.from_browser], [], [], left)[0]:
                chunk = os.read(self.from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium exited while waiting for {what}")
                self.buffer += chunk

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        i = self.send(method, params, session)
        reply = self.wait_for(lambda m: m.get("id") == i, f"the reply to {method}")
        assert "error" not in reply, f"{method}: {reply['error']}"
        return reply["result"]

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except OSError:
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.to_browser)
        os.close(self.from_browser)
        self.stderr.close()


def load_in_chromium(binary: str, url: str, tmp: Path, width: int = 1200, height: int = 3000) -> dict:
    """Open `url`, wait for the load event; return console errors, <img> states and a screenshot (PNG bytes)."""
    browser = DevTools(binary, tmp / "profile", width, height)
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
            browser.call(domain, session=session)
        browser.call("Emulation.setDeviceMetricsOverride",
                     {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
        browser.call("Page.navigate", {"url": url}, session)
        browser.wait_for(lambda m: m.get("method") == "Page.loadEventFired", "the load event")
        images = browser.call("Runtime.evaluate", {
            "expression": "JSON.stringify(Array.from(document.images, i => [i.complete, i.naturalWidth, i.alt]))",
            "returnByValue": True}, session)["result"]["value"]
        shot = browser.call("Page.captureScreenshot", {"format": "png"}, session)["data"]
        errors = [m for m in browser.events if m.get("method") == "Runtime.exceptionThrown"
                  or (m.get("method") == "Runtime.consoleAPICalled" and m["params"]["type"] in ("error", "assert"))
                  or (m.get("method") == "Log.entryAdded" and m["params"]["entry"]["level"] == "error")]
        return {"images": json.loads(images), "errors": errors, "screenshot": base64.b64decode(shot)}
    finally:
        browser.close()


needs_chromium = pytest.mark.skipif(chromium_binary() is None, reason="Chromium is not installed (Debian: "
                                    "apt-get install -y chromium; or set SSLAB_CHROMIUM); the report's browser test "
                                    "is skipped")


@needs_chromium
def test_browser_harness_sees_errors_and_broken_images(tmp_path):
    """The checks below can fail: a page with a console error and a missing image is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><img src="missing.png" alt="x"><script>console.error("boom")</script></body></html>')
    result = load_in_chromium(chromium_binary(), bad.as_uri(), tmp_path, 400, 300)
    assert result["images"][0][1] == 0
    assert any("boom" in json.dumps(e) for e in result["errors"])


@needs_chromium
def test_report_renders_in_headless_chromium(full_run, tmp_path):
    result = load_in_chromium(chromium_binary(), (full_run / "report.html").resolve().as_uri(), tmp_path)
    assert result["errors"] == []
    assert len(result["images"]) == (full_run / "report.html").read_text().count("<img ") >= 12
    assert all(complete and width > 0 for complete, width, _ in result["images"]), result["images"]
    shot = tmp_path / "shot.png"
    shot.write_bytes(result["screenshot"])
    pixels = assert_png_not_blank(shot)
    assert pixels.shape[:2] == (3000, 1200)
    assert (pixels < 128).any(axis=2).mean() > 0.005  # text and figures drawn, not just a background
    assert len(np.unique(colour_codes(pixels))) > 50
