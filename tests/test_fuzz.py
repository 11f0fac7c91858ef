"""Fuzzing the doors user input comes through: the config (YAML, dicts, flags), image folders, and a run
folder's files (checkpoint, config.yaml, metrics.jsonl). Whatever comes in, the answer is a valid Config / a
loaded dataset / a finished command, or a one-line ConfigError / DataError / `sslab: error:` line."""
import argparse
import datetime
import io
import logging
import shutil
import tempfile
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from sslab.augment import Augmenter
from sslab.commands.train import add_run_flags, spec_from_args
from sslab.config import FIXED, SECTIONS, Config
from sslab.data import load_dataset
from sslab.errors import ConfigError, DataError
from sslab.methods import METHODS
from sslab.device import pick_device
from sslab.recipe import fit_to_data
from sslab.settings import types_of

FIELD_TYPES = {**{s: types_of(c) for s, c in FIXED.items()},  # section -> setting -> type, every method's settings
               "method": {"method": str, **{k: v for m in METHODS.names() for k, v in types_of(METHODS.get(m).Settings).items()}}}

# examples, seed and database from the profile (tests/conftest.py): fixed in CI, HYPOTHESIS_PROFILE=explore for more
FUZZ = settings(suppress_health_check=[HealthCheck.too_slow])

# ---- config --------------------------------------------------------------------------------------------
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.integers(), st.floats(allow_nan=True),
    st.sampled_from(["", "none", "null", "auto", "cpu", "cuda", "cuda:x", "cuda:99", "tpu", "1,2", "0.2,1", "0.9,0.1",
                     "1,2,3,4", "true", "off", "maybe", "nan", "inf", "-1", "1e400", " 5 ", "simsiam", "simclr",
                     "nope", "resnet18", "simple-cnn", "lars", "adam", "fp8", "bf16", "clean", "strong"]),
    st.text(max_size=8), st.dates().map(datetime.date.isoformat), st.dates())
values = st.one_of(scalars, st.lists(scalars, max_size=5), st.dictionaries(st.text(max_size=4), scalars, max_size=2))
field_names = {s: st.sampled_from(sorted(FIELD_TYPES[s])) | st.text(max_size=6) for s in SECTIONS}
sections = st.sampled_from(SECTIONS).flatmap(
    lambda s: st.tuples(st.just(s), st.dictionaries(field_names[s], values, max_size=6)))
config_dicts = st.one_of(st.lists(sections, max_size=6).map(dict),  # known sections, known or unknown fields
                         st.dictionaries(st.text(max_size=6), values, max_size=3), values)  # anything at all


def check_like_fit(cfg: Config) -> None:
    """What fit() does with a config before it touches data: ranges, device, recipe, augmentation."""
    cfg.check()
    pick_device(cfg.train.device)
    resolved = fit_to_data(cfg, 8)
    resolved.check()
    Augmenter(resolved.augment, 8, (0.5,), (0.25,))


def assert_clean(fn) -> None:
    try:
        fn()
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)


@FUZZ
@given(config_dicts)
def test_config_dicts_give_a_config_or_a_config_error(d):
    assert_clean(lambda: check_like_fit(Config.from_dict(d)))


@FUZZ
@given(st.one_of(config_dicts.map(lambda d: yaml.safe_dump(d) if _dumpable(d) else "x: ["), st.text(max_size=60)))
def test_yaml_files_give_a_config_or_a_config_error(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text)
        assert_clean(lambda: check_like_fit(Config.load(path)))


def _dumpable(d) -> bool:
    try:
        yaml.safe_dump(d)
        return True
    except yaml.YAMLError:
        return False


FLAGS = sorted(name for s in SECTIONS for name in FIELD_TYPES[s])


@FUZZ
@given(st.dictionaries(st.sampled_from(FLAGS), scalars.map(str), max_size=6))
def test_flag_values_give_a_config_or_a_config_error(flags):
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_run_flags(parser)
    argv = []
    for name, value in flags.items():
        tp = FIELD_TYPES[next(s for s in SECTIONS if name in FIELD_TYPES[s])][name]
        if bool in (tp, *typing.get_args(tp)):  # --flag / --no-flag
            argv.append(f"--{'' if value.lower() in ('true', '1') else 'no-'}{name.replace('_', '-')}")
        else:
            argv.append(f"--{name.replace('_', '-')}={value}")
    assert_clean(lambda: check_like_fit(spec_from_args(parser.parse_args(argv))))


def test_every_method_resolves_to_a_valid_config():
    for name in METHODS.names():
        check_like_fit(Config.from_dict({"method": {"method": name}}))
        check_like_fit(Config.from_values({"method": name}))


# ---- image folders -------------------------------------------------------------------------------------
MODES = ["L", "RGB", "RGBA", "P", "LA", "1", "I;16", "CMYK"]  # 16-bit PNGs read back as mode I
KINDS = ["png", "jpeg", "bmp", "random bytes", "truncated png", "truncated jpeg", "empty", "png named .jpg",
         "text named .png", "not an image extension"]
files = st.tuples(st.integers(0, 2), st.sampled_from(KINDS), st.sampled_from(MODES), st.integers(1, 12),
                  st.integers(1, 12), st.binary(max_size=64))


def encoded(mode: str, w: int, h: int, fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    if fmt == "JPEG" and mode not in ("L", "RGB", "CMYK"):
        mode = "RGB"
    if fmt == "BMP" and mode in ("I;16", "LA", "RGBA", "CMYK"):
        mode = "RGB"
    if fmt == "PNG" and mode == "CMYK":
        mode = "RGB"
    im = base.convert("L").convert(mode) if mode == "I;16" else base.convert(mode)
    buffer = io.BytesIO()
    im.save(buffer, fmt)
    return buffer.getvalue()


def write_files(root: Path, specs) -> int:
    """Write the fuzzed files; the number of files the loader will list (image extensions)."""
    listed = 0
    for i, (cls, kind, mode, w, h, junk) in enumerate(specs):
        folder = root / f"class{cls}"
        folder.mkdir(parents=True, exist_ok=True)
        name, data = f"{i}.png", b""
        if kind in ("png", "jpeg", "bmp"):
            ext = {"png": "png", "jpeg": "jpg", "bmp": "bmp"}[kind]
            name, data = f"{i}.{ext}", encoded(mode, w, h, kind.upper(), i)
        elif kind == "random bytes":
            data = junk
        elif kind.startswith("truncated"):
            fmt = "PNG" if kind.endswith("png") else "JPEG"
            full = encoded(mode, w + 8, h + 8, fmt, i)
            name, data = f"{i}.{'png' if fmt == 'PNG' else 'jpg'}", full[: max(1, len(full) // 2)]
        elif kind == "png named .jpg":
            name, data = f"{i}.jpg", encoded(mode, w, h, "PNG", i)
        elif kind == "text named .png":
            data = b"hello, I am not an image\n"
        elif kind == "not an image extension":
            name, data = f"{i}.txt", encoded(mode, w, h, "PNG", i)
        (folder / name).write_bytes(data)
        listed += not name.endswith(".txt")
    return listed


class Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@FUZZ
@given(st.lists(files, min_size=0, max_size=14), st.booleans(), st.sampled_from([0.0, 0.2, 0.5]),
       st.sampled_from([None, 8]))
def test_image_folders_load_or_give_a_data_error(specs, strict, test_fraction, image_size):
    handler = Messages()
    logger = logging.getLogger("sslab.data")
    logger.addHandler(handler)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "data"
            root.mkdir()
            listed = write_files(root, specs)
            not_images = len(list(root.rglob("*.txt")))
            try:
                data = load_dataset("folder", root, strict=strict, test_fraction=test_fraction, image_size=image_size,
                                    cache=False)
            except (DataError, ConfigError) as e:
                assert str(e) and "\n" not in str(e)
                return
    finally:
        logger.removeHandler(handler)
    loaded = len(data.train_x) + len(data.test_x)
    assert len(data.train_x) > 0 and data.train_x.dtype == torch.uint8 and data.channels in (1, 3)
    assert len(data.train_y) == len(data.train_x) and len(data.test_y) == len(data.test_x)
    if image_size:
        assert data.image_size == image_size and data.train_x.shape[-2] == image_size
    skipped = [m for m in handler.messages if m.startswith("left out ")]
    if loaded < listed or not_images:  # every file not used is counted and named, with the reason
        assert not strict or loaded == listed
        assert len(skipped) == 1
        assert skipped[0].startswith(f"left out {listed - loaded + not_images} of the {listed + not_images} files in {root}: ")
        assert (f"unreadable ({listed - loaded}): " in skipped[0]) == (loaded < listed)
        assert (f"not an image (.txt) ({not_images}): " in skipped[0]) == (not_images > 0)
    else:
        assert not skipped


# ---- a run folder's files: checkpoint, config.yaml, metrics.jsonl ----------------------------------------------
# Random bytes, truncations and overwritten spans of a real run's files, given to `train --resume`, `eval` and
# `report`: each ends in success or in one `sslab: error:` line with exit code 2, never a traceback.
RUN_FILES = {"checkpoint": "checkpoints/last.pt", "config": "config.yaml", "metrics": "metrics.jsonl"}
COMMANDS = {"checkpoint": ["resume", "eval"], "config": ["resume", "report"], "metrics": ["resume", "report"]}
FILE_FUZZ = settings(FUZZ, max_examples=max(10, settings.default.max_examples // 4))  # each example runs a command


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from sslab.pretrain import fit

    out = tmp_path_factory.mktemp("fuzz-run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(Config.from_dict({"data": {"dataset": "digits", "limit_train": 256, "limit_test": 100},
                              "model": {"backbone": "simple-cnn"},
                              "method": {"method": "simsiam", "proj_hidden": 16, "proj_dim": 16, "pred_hidden": 8},
                              "train": {"epochs": 1, "batch_size": 64, "device": "cpu", "knn_every": 0,
                                        "progress": False, "out": str(out), "name": "run"}}), log=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    return out / "run"


mutations = st.one_of(st.tuples(st.just("random bytes"), st.binary(max_size=300)),
                      st.tuples(st.just("truncated"), st.floats(0, 0.999)),
                      st.tuples(st.just("overwritten"), st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=16))))


def mutate(original: bytes, mutation) -> bytes:
    kind, arg = mutation
    if kind == "random bytes":
        return arg
    if kind == "truncated":
        return original[: int(len(original) * arg)]
    at, junk = arg
    start = int((len(original) - 1) * at)
    return original[:start] + junk + original[start + len(junk):]


def run_fuzzed(run: Path, command: str, capsys) -> None:
    from sslab import cli

    args = {"resume": ["train", "--resume", str(run), "--no-progress"],
            "eval": ["eval", str(run / "checkpoints" / "last.pt"), "--device", "cpu", "--protocol", "fast"],
            "report": ["report", str(run)]}[command]
    capsys.readouterr()
    code = cli.main(args)  # any exception but a one-line error fails the test
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("sslab: error:")]
    assert code == 0 and not errors or code == 2 and len(errors) == 1 == len(err.splitlines()), (code, err)


@pytest.mark.parametrize("which", list(RUN_FILES))
def test_fuzzed_run_files_give_success_or_one_line(which, tiny_run, tmp_path_factory, capsys):
    original = (tiny_run / RUN_FILES[which]).read_bytes()

    @FILE_FUZZ
    @given(mutations, st.sampled_from(COMMANDS[which]))
    def check(mutation, command):
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            shutil.copytree(tiny_run, run)
            (run / RUN_FILES[which]).write_bytes(mutate(original, mutation))
            run_fuzzed(run, command, capsys)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        check()
    finally:
        torch.set_num_threads(threads)
