"""The run spec: every setting declared once is a flag and a YAML key, round-trips, is checked against its
declared range in one line naming the flag, the value and the range, and belongs to its method."""
import argparse
import dataclasses

import pytest

from sslab.cli import main
from sslab.commands.train import add_run_flags, spec_from_args
from sslab.config import FIXED, Config, upgrade_layout
from sslab.errors import ConfigError
from sslab.methods import METHODS
from sslab.settings import check, names_of, problem, spec_of, types_of


def parse(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--config")
    add_run_flags(p)
    return spec_from_args(p.parse_args(argv))


def test_every_setting_is_a_flag_and_round_trips_through_yaml(tmp_path):
    cfg = parse(["--method", "simsiam", "--dataset", "cifar10", "--epochs", "800", "--batch-size", "512",
                 "--backbone", "resnet34", "--seed", "3", "--device", "cpu", "--out", "x", "--crop-scale", "0.2,1",
                 "--no-progress", "--lr", "0.05", "--pred-hidden", "64"])
    assert (cfg.method.method, cfg.data.dataset, cfg.method.epochs, cfg.method.batch_size) == ("simsiam", "cifar10", 800, 512)
    assert cfg.model.backbone == "resnet34" and cfg.train.seed == 3 and cfg.augment.crop_scale == (0.2, 1.0)
    assert cfg.train.progress is False and cfg.method.lr == 0.05 and cfg.method.pred_hidden == 64
    assert {"dataset", "epochs", "crop_scale", "progress", "pred_hidden"} <= cfg.given and "knn_k" not in cfg.given
    cfg.save(tmp_path / "c.yaml")
    back = Config.load(tmp_path / "c.yaml")
    assert back == cfg and back.given == frozenset(back.values())  # a saved spec: every setting given


def test_flags_override_yaml(tmp_path):
    (tmp_path / "c.yaml").write_text("method: {method: byol, epochs: 7, batch_size: 64}\ndata: {dataset: mnist}\n")
    cfg = parse(["--config", str(tmp_path / "c.yaml"), "--epochs", "9"])
    assert (cfg.method.epochs, cfg.method.batch_size, cfg.data.dataset, cfg.method.method) == (9, 64, "mnist", "byol")


@pytest.mark.parametrize("yaml_text, fragment", [
    ("method: {method: simsiam, epochs: ten}", "epochs"),
    ("method: {method: simsiam}\ntrain: {nope: 1}", "unknown setting train.'nope'; the train settings: seed"),
    ("method: {method: simsiam}\ntrain: {lr: 1}", "train.'lr' belongs in section method"),
    ("method: {method: simsiam}\nbogus: {a: 1}", "unknown section"),
    ("method: {method: simsiam, epochs: 2.5}", "epochs"),
    ("method: {method: simsiam}\naugment: {crop_scale: [0.2]}", "crop_scale"),
    ("method: {method: simsiam}\ntrain: [1, 2]", "must be a mapping"),
    ("method: {method: simsiam}\ntrain: {progress: maybe}", "progress"),
    ("method: {method: simsiam, queue_size: 7}", "--queue-size is not a setting of simsiam"),
    ("data: {dataset: digits}", "no method given"),
])
def test_bad_yaml_values_name_the_setting(tmp_path, yaml_text, fragment):
    (tmp_path / "c.yaml").write_text(yaml_text)
    with pytest.raises(ConfigError, match=fragment):
        Config.load(tmp_path / "c.yaml")


def test_missing_or_broken_yaml_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Config.load(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("train: {epochs: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Config.load(tmp_path / "bad.yaml")


# ---- ranges ----------------------------------------------------------------------------------------------------
# settings that broke a run silently or with a traceback (issue #22), each refused by its declared range
REFUSED = [
    ("simsiam", {"min_lr": -1}, "--min-lr -1.0: must be in [0, 1]"), ("simsiam", {"min_lr": 5}, "--min-lr"),
    ("simsiam", {"knn_t": -1}, "--knn-t"), ("simsiam", {"knn_t": 0}, "--knn-t 0.0: must be in [0.02, 1000]"),
    ("simsiam", {"knn_t": 1e-30}, "--knn-t"), ("simclr", {"temperature": -1}, "--temperature"),
    ("byol", {"ema": 2}, "--ema 2.0: must be in [0, 1]"),
    ("simsiam", {"collapse_threshold": float("nan")}, "--collapse-threshold nan: must be a finite number"),
    ("simsiam", {"seed": -1}, "--seed -1: must be in [0, 4294967296)"), ("simsiam", {"seed": 2**32}, "--seed"),
    ("simsiam", {"time_limit": float("inf")}, "--time-limit inf: must be a finite number"),
    ("simsiam", {"proj_dim": 0}, "--proj-dim 0"), ("simsiam", {"pred_hidden": 0}, "--pred-hidden"),
    ("simsiam", {"proj_hidden": -5}, "--proj-hidden -5"), ("mocov2", {"queue_size": -64}, "--queue-size"),
    ("mocov2", {"queue_size": 0}, "--queue-size 0: must be in [1, "), ("simsiam", {"name": "x" * 256}, "--name"),
    ("simsiam", {"name": "a/b"}, "--name 'a/b': must be a plain folder name"),
    ("simsiam", {"epochs": 0}, "--epochs"), ("simsiam", {"batch_size": 1}, "--batch-size"),
    ("simsiam", {"lr": 0.0}, "--lr"), ("simsiam", {"test_fraction": 1.0}, "--test-fraction"),
    ("simsiam", {"precision": "fp8"}, "--precision 'fp8': must be one of auto, bf16, fp16 or fp32"),
    ("simsiam", {"device": "tpu"}, "--device 'tpu': must be auto, cpu, cuda, cuda:N or mps"),
    ("simsiam", {"crop_scale": (0.5, 0.2)}, "--crop-scale 0.5,0.2: must be two numbers min,max with min <= max"),
    ("simsiam", {"jitter": (0.4, 0.4, 0.4, 0.7)}, "--jitter"), ("simsiam", {"flip_p": 1.5}, "--flip-p"),
    ("phinet", {"third_view": "blurry"}, "--third-view"), ("simsiam", {"dataset": "imagenet"}, "--dataset"),
]


@pytest.mark.parametrize("method, values, message", REFUSED)
def test_out_of_range_values_are_refused_in_one_line_naming_flag_value_and_range(method, values, message):
    cfg = Config.from_values({"method": method, **values})
    with pytest.raises(ConfigError) as e:
        cfg.check()
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


def test_every_default_is_within_its_own_range_and_every_setting_has_help():
    classes = [*FIXED.values(), *(METHODS.get(m).Settings for m in METHODS.names())]
    for cls in classes:
        check(cls())
        for name in names_of(cls):
            assert spec_of(cls, name).help, f"{cls.__name__}.{name} has no help"
    cfg = Config.from_values({"method": "simsiam"})
    assert problem(2.0, types_of(type(cfg.method))["lr"], spec_of(type(cfg.method), "lr")) is None


def test_a_setting_of_another_method_is_refused_in_one_line_naming_the_methods_settings(capsys):
    assert main(["train", "--method", "simsiam", "--queue-size", "7"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--queue-size is not a setting of simsiam (it is one of mocov2, nnclr, swav)" in err
    assert "simsiam's settings: " in err and "--pred-hidden" in err and "--lr" in err


def test_api_names_settings_like_the_flags():
    cfg = Config.from_values({"method": "mocov2", "queue_size": 512, "epochs": 3})
    assert cfg.with_values(epochs=5).method.epochs == 5 and cfg.with_values(epochs=5).method.queue_size == 512
    with pytest.raises(ConfigError, match="--queue-size is not a setting of simclr"):
        cfg.with_values(method="simclr")  # a given MoCo setting does not silently vanish
    with pytest.raises(ConfigError, match="unknown setting 'epoch'"):
        Config.from_values({"method": "simsiam", "epoch": 3})


# ---- sslab 0.1's config.yaml -----------------------------------------------------------------------------------
OLD = {"data": {"dataset": "digits", "image_size": None},
       "augment": {"preset": "auto", "crop_scale": None, "flip_p": 0.0},
       "model": {"backbone": "simple-cnn", "stem": "auto"},
       "method": {"method": "mocov2", "proj_hidden": 32, "proj_dim": 16, "pred_hidden": None, "temperature": 0.2,
                  "ema": 0.99, "lam": None, "third_view": None, "queue_size": 256, "fixed_predictor_lr": None},
       "optim": {"optimizer": "sgd", "lr": 0.3, "momentum": 0.9, "weight_decay": 1e-4, "warmup_epochs": 1,
                 "min_lr": 0.0, "fused": None},
       "train": {"epochs": 3, "batch_size": 64, "seed": 2, "compile": False, "device": "cpu"}}


def test_an_old_layout_is_translated_once():
    cfg = Config.from_dict(OLD)
    m = cfg.method
    assert (m.method, m.proj_dim, m.queue_size, m.lr, m.warmup_epochs, m.epochs, m.batch_size) == \
        ("mocov2", 16, 256, 0.3, 1, 3, 64)
    assert (cfg.train.seed, cfg.train.compile, cfg.train.fused, cfg.augment.flip_p) == (2, "off", None, 0.0)
    assert "crop_scale" not in cfg.given and "flip_p" in cfg.given  # None meant "the recipe decides"
    new = cfg.to_dict()
    assert upgrade_layout(new, "x") is new and Config.from_dict(new) == cfg  # today's layout passes unchanged
    assert dataclasses.asdict(Config.from_dict({**OLD, "train": {"epochs": 3}}).method)["epochs"] == 3


def test_every_flag_help_reads_as_a_sentence():
    from sslab.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command, parser in sub.choices.items():
        for action in parser._actions:
            if action.help and action.help != argparse.SUPPRESS:
                text = action.help.replace("%%", "%")
                assert text.endswith("."), (command, action.option_strings, text)
                first = text.split(" ", 1)[0]
                assert not (first.isalpha() and first.islower() and len(first) > 1), (command, action.option_strings, text)
