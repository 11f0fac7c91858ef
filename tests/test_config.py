import argparse

import pytest

from sslab.config import Config, add_config_flags, config_from_args, replace
from sslab.errors import ConfigError


def parse(argv):
    p = argparse.ArgumentParser()
    add_config_flags(p)
    return config_from_args(p.parse_args(argv))


def test_every_field_is_a_flag_and_round_trips_through_yaml(tmp_path):
    cfg = parse(["--method", "simsiam", "--dataset", "cifar10", "--epochs", "800", "--batch-size", "512",
                 "--backbone", "resnet34", "--seed", "3", "--device", "cpu", "--out", "x", "--crop-scale", "0.2,1",
                 "--no-progress", "--lr", "0.05"])
    assert (cfg.method.method, cfg.data.dataset, cfg.train.epochs, cfg.train.batch_size) == ("simsiam", "cifar10", 800, 512)
    assert cfg.model.backbone == "resnet34" and cfg.train.seed == 3 and cfg.augment.crop_scale == (0.2, 1.0)
    assert cfg.train.progress is False and cfg.optim.lr == 0.05
    cfg.save(tmp_path / "c.yaml")
    assert Config.load(tmp_path / "c.yaml") == cfg


def test_flags_override_yaml(tmp_path):
    (tmp_path / "c.yaml").write_text("train: {epochs: 7, batch_size: 64}\ndata: {dataset: mnist}\n")
    cfg = parse(["--config", str(tmp_path / "c.yaml"), "--epochs", "9"])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.data.dataset) == (9, 64, "mnist")


@pytest.mark.parametrize("yaml_text, fragment", [
    ("train: {epochs: ten}", "train.epochs"),
    ("train: {nope: 1}", "unknown field train.nope"),
    ("bogus: {a: 1}", "unknown section"),
    ("train: {epochs: 2.5}", "train.epochs"),
    ("augment: {crop_scale: [0.2]}", "augment.crop_scale"),
    ("train: [1, 2]", "must be a mapping"),
    ("train: {progress: maybe}", "train.progress"),
])
def test_bad_yaml_values_name_the_field(tmp_path, yaml_text, fragment):
    (tmp_path / "c.yaml").write_text(yaml_text)
    with pytest.raises(ConfigError, match=fragment):
        Config.load(tmp_path / "c.yaml")


def test_missing_or_broken_yaml_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Config.load(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("train: {epochs: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Config.load(tmp_path / "bad.yaml")


@pytest.mark.parametrize("change, flag", [
    ({"train": {"epochs": -1}}, "--epochs"), ({"train": {"batch_size": 1}}, "--batch-size"),
    ({"optim": {"lr": 0.0}}, "--lr"), ({"data": {"test_fraction": 1.0}}, "--test-fraction"),
    ({"train": {"precision": "fp8"}}, "--precision"), ({"train": {"device": "tpu"}}, "--device"),
])
def test_validate_rejects_impossible_values(change, flag):
    with pytest.raises(ConfigError, match=flag):
        replace(Config(), **change).validate()
