"""bench/gpu_suite.py in --smoke mode on the CPU: every stage of the GPU suite runs in miniature, so the
suite cannot rot between the rare GPU runs, and its outputs (JSON, table rows, the docs block) stay usable."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "bench" / "gpu_suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    suite = load_suite()
    out = tmp_path_factory.mktemp("gpu-suite")
    code = suite.main(["--smoke", "--device", "cpu", "--out", str(out)])
    return suite, out, code, json.loads((out / "gpu_suite.json").read_text())


def test_every_stage_runs_in_miniature(smoke):
    suite, _, code, results = smoke
    failed = {k: v.get("error") for k, v in results["stages"].items() if v["status"] != "ok"}
    assert code == 0 and not failed, failed
    assert list(results["stages"]) == list(suite.STAGES)
    assert results["header"]["smoke"] and results["header"]["device"].startswith("cpu")


def test_training_stages_measure_speed(smoke):
    _, _, _, results = smoke
    stages = results["stages"]
    runs = [stages["speed"]["eager"], stages["speed"]["compiled"], stages["methods"]["simclr"],
            stages["methods"]["byol"], stages["stl96"]["simsiam"]]
    for run in runs:
        assert run["epochs"] >= 1 and run["epoch_s_median"] > 0 and run["images_per_s"] > 0, run
    assert stages["speed"]["compiled"]["compile_s"] >= 0
    assert stages["speed"]["peer"]["stub"]  # no lightly here: the stub stands in, and says so
    assert stages["speed"]["speedup_vs_peer"] > 0
    # the epoch-0 record of the untrained network is a baseline, not an epoch
    assert stages["speed"]["eager"]["epochs"] == smoke[0].SMOKE.speed_epochs


def test_streaming_stage_measures_streamed_against_resident(smoke):
    streaming = smoke[3]["stages"]["streaming"]
    large = streaming["large"]
    for run in (streaming["cifar_streamed"], large["always"], large["never"]):
        assert run["epochs"] >= 1 and run["images_per_s"] > 0, run
    assert streaming["cifar_resident_images_per_s"] > 0  # the speed stage's run: the same recipe, resident
    assert large["always"]["final_loss"] == large["never"]["final_loss"]  # on the CPU the same run, bit for bit


def test_accuracy_run_gives_a_knn_curve_and_the_commands_run_on_it(smoke):
    _, _, _, results = smoke
    acc, after = results["stages"]["accuracy"], results["stages"]["after"]
    curve = acc["curve"]
    assert curve and all(0 <= p["knn_top1"] <= 1 for p in curve)
    assert [p["minutes"] for p in curve] == sorted(p["minutes"] for p in curve)
    assert after["run_dir"] == acc["run"]["run_dir"]
    for name in ("eval", "analyze", "scan", "report"):
        assert after[name]["exit_code"] == 0 and after[name]["seconds"] > 0, name
    assert (Path(after["run_dir"]) / "report.html").is_file()
    assert after["figures"]["scan_acc"]["scan"] is not None
    assert {"knn", "linear-fast", "linear-standard"} <= set(after["figures"]["eval"])


def test_resume_on_the_cpu_is_bitwise(smoke):
    # docs/reliability.md: on the CPU an interrupted and resumed run ends exactly as the uninterrupted one
    resume = smoke[3]["stages"]["resume"]
    assert resume["within_tolerance"]
    assert len(resume["epochs"]) == smoke[0].SMOKE.resume_epochs
    assert all(e["loss_gap"] == 0.0 and e["knn_gap"] == 0.0 for e in resume["epochs"]), resume["epochs"]


def test_resume_verdict_flags_a_loss_outside_the_tolerance(tmp_path):
    suite = load_suite()

    def run(name, losses):
        folder = tmp_path / name
        folder.mkdir()
        lines = [{"epoch": 0, "step": 0, "knn_top1": 0.1, "knn_top1_init": 0.1, "knn_top1_pixels": 0.2}]
        lines += [{"epoch": i + 1, "step": i + 1, "loss": v, "lr": 0.1, "knn_top1": 0.5, "epoch_seconds": 1.0,
                   "images_per_second": 1.0} for i, v in enumerate(losses)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        return str(folder)

    ref, ref2 = run("a", [1.0, 0.9]), run("b", [1.0, 0.901])
    assert suite.resume_verdict(ref, ref2, run("ok", [1.0, 0.9025]))["within_tolerance"]  # gap 0.0025 <= 3 x 0.001
    assert not suite.resume_verdict(ref, ref2, run("bad", [1.0, 0.91]))["within_tolerance"]  # 0.01 > 0.003
    assert not suite.resume_verdict(ref, ref2, run("short", [1.0]))["within_tolerance"]  # an epoch missing


def test_rows_fill_the_docs_table(smoke, tmp_path):
    suite, out, _, _ = smoke
    rows = (out / "gpu_suite_rows.md").read_text()
    body = [row for row in rows.splitlines() if row.startswith("| ") and not row.startswith(("| stage", "| ---"))]
    assert {row.split(" | ")[0][2:] for row in body} == set(suite.STAGES)
    assert not any("failed" in row or "not run" in row or "not measured" in row for row in body), rows
    docs = ROOT / "docs" / "benchmarks.md"
    assert suite.DOCS_BEGIN in docs.read_text() and suite.DOCS_END in docs.read_text()
    copy = tmp_path / "benchmarks.md"
    copy.write_text(docs.read_text())
    assert suite.main(["--render", str(out / "gpu_suite.json"), "--docs", str(copy)]) == 0
    text = copy.read_text()
    block = text[text.index(suite.DOCS_BEGIN):text.index(suite.DOCS_END)]
    assert "| resume | SIGINT at step" in block and "SMOKE" in block
    original = docs.read_text()
    old_block = original[original.index(suite.DOCS_BEGIN):original.index(suite.DOCS_END)]
    assert text.replace(block, "") == original.replace(old_block, "")  # nothing outside the block changed
