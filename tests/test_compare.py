"""`sslab compare`: three demo-sized runs (two on one split, one on another) give the table, the overlaid curves
and a self-contained page that renders in headless Chromium; the numbers are the run folders' own; the runs on
another split are flagged and drawn apart; nothing is written into a run; bad input is one line."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_eval_support import TINY_RUN, assert_png_not_blank
from test_report import chromium_binary, load_in_chromium, needs_chromium

from sslab.analysis.compare import group_by_data, read_run, training_curve
from sslab.cli import main


def _train(base: Path, **changes) -> Path:
    """TINY_RUN with whole sections replaced (`method=`) and the train section's values updated (`train=`)."""
    from sslab.config import Config
    from sslab.pretrain import fit

    spec = {**TINY_RUN, **changes, "train": {**TINY_RUN["train"], "out": str(base), **changes.get("train", {})}}
    return Path(fit(Config.from_dict(spec), log=lambda message: None)["run_dir"])


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory) -> list[Path]:
    """The session's tiny SimSiam run (evaluated and analysed here), a SimCLR run on the same split, and a SimSiam
    run on another split (test fraction 0.3)."""
    base = tmp_path_factory.mktemp("compare")
    first = _train(base, train={"name": "simsiam"})
    assert main(["eval", str(first), "--device", "cpu", "--protocol", "fast"]) == 0
    assert main(["analyze", str(first), "--device", "cpu", "--max-points", "100", "--map-size", "300"]) == 0
    simclr = _train(base, method={"method": "simclr", "proj_hidden": 64, "proj_dim": 32, "temperature": 0.2},
                    train={"out": str(base), "name": "tiny-simclr"})
    other_split = _train(base, data={"dataset": "digits", "test_fraction": 0.3},
                         train={"out": str(base), "name": "tiny-split"})
    return [first, simclr, other_split]


@pytest.mark.slow  # minutes of the default suite on 2 cores (CI's 10-minute budget); run with -m slow
def test_three_runs_give_the_table_the_curves_and_the_page(three_runs, tmp_path, capsys):
    before = {str(r): _snapshot(r) for r in three_runs}
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, three_runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert all(run.name in printed for run in three_runs) and "| run | method |" in printed
    assert {str(r): _snapshot(r) for r in three_runs} == before  # not one file in a run touched
    record = json.loads((out / "compare.json").read_text())
    rows = {r["name"]: r for r in record["runs"]}
    first, simclr, split = (rows[p.name] for p in three_runs)
    assert (first["data_group"], simclr["data_group"], split["data_group"]) == ("A", "A", "B")
    assert len(record["flags"]) >= 1 and "2 different data sets or splits" in record["flags"][0]
    # the numbers are the run folders' own
    metrics = [json.loads(line) for line in (three_runs[1] / "metrics.jsonl").read_text().splitlines()]
    assert simclr["knn"]["learned"] == metrics[-1]["knn_top1"] and simclr["knn"]["untrained"] == metrics[0]["knn_top1_init"]
    assert simclr["train_seconds"] == pytest.approx(sum(m.get("epoch_seconds", 0) for m in metrics))
    evaluation = json.loads((three_runs[0] / "eval.json").read_text())
    fast = next(r for r in evaluation["results"] if r["name"] == "linear-fast")
    assert first["linear"] == {"probe": "linear-fast", "learned": fast["accuracy"], **fast["baselines"]}
    kmeans = json.loads((three_runs[0] / "analysis.json").read_text())["kmeans"]
    assert first["kmeans"]["learned"] == kmeans["acc"] and first["kmeans"]["pixels"] == kmeans["baselines"]["pixels"]["acc"]
    assert simclr["linear"] == {} and any("No linear probe for" in f and simclr["name"] in f for f in record["flags"])
    # the table: a row per run and a raw-pixel row per data group, percentages with one decimal
    table = (out / "compare.md").read_text()
    assert table.count("| raw pixels |") == 2 and f"| {100 * first['knn']['learned']:.1f} |" in table
    for png in ("knn.png", "loss.png"):
        assert_png_not_blank(out / png)
    page = (out / "compare.html").read_text()
    assert re.findall(r'\bsrc="(?!data:image/png;base64,)', page) == [] and "<script" not in page.lower()
    assert page.count("data:image/png;base64,") == 2 and "different data sets or splits" in page


@needs_chromium
@pytest.mark.slow  # minutes of the default suite on 2 cores (CI's 10-minute budget); run with -m slow
def test_compare_page_renders_in_headless_chromium(three_runs, tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, three_runs), "--out", str(out)]) == 0
    result = load_in_chromium(chromium_binary(), (out / "compare.html").resolve().as_uri(), tmp_path, 1200, 2000)
    assert result["errors"] == []
    assert len(result["images"]) == 2 and all(complete and width > 0 for complete, width, _ in result["images"])
    shot = tmp_path / "shot.png"
    shot.write_bytes(result["screenshot"])
    assert (assert_png_not_blank(shot) < 128).any(axis=2).mean() > 0.005


@pytest.mark.slow  # minutes of the default suite on 2 cores (CI's 10-minute budget); run with -m slow
def test_default_folder_and_refusals_are_one_line(three_runs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = list(map(str, three_runs[:2]))
    assert main(["compare", *runs]) == 0
    made = list((tmp_path / "runs").glob("compare-*"))
    assert len(made) == 1 and (made[0] / "compare.html").is_file()
    capsys.readouterr()
    for argv in (["compare", runs[0]], ["compare", runs[0], runs[0]], ["compare", *runs, "--out", f"{runs[0]}/cmp"],
                 ["compare", runs[0], str(tmp_path)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("sslab: error:"), (argv, err)
    assert not (three_runs[0] / "cmp").exists()


def test_curve_and_groups_on_hand_made_records():
    records = [{"epoch": 0, "knn_top1": 0.5}, {"epoch": 2, "loss": 1.0, "knn_top1": 0.7, "epoch_seconds": 3.0},
               {"epoch": 1, "loss": 2.0, "knn_top1": 0.6, "epoch_seconds": 2.0}]
    curve = training_curve(records)
    assert [(p["epoch"], p["seconds"]) for p in curve] == [(0, 0.0), (1, 2.0), (2, 5.0)]  # cumulative, epoch order
    assert "loss" not in curve[0] and curve[2]["loss"] == 1.0

    class Facts:
        def __init__(self, key):
            self.data_key = key

    a, b, c = Facts(("digits", 0.2)), Facts(("digits", 0.3)), Facts(("digits", 0.2))
    assert {k: len(v) for k, v in group_by_data([a, b, c]).items()} == {"A": 2, "B": 1}


def test_read_run_of_a_folder_without_config_is_one_line(tmp_path):
    from sslab.errors import UserError

    with pytest.raises(UserError, match="not a run folder"):
        read_run(tmp_path)
