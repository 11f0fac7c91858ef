"""`sslab export` and the things around it: torchvision/timm names and semantics against a fixture recorded
from those libraries, ONNX against onnxruntime, the printed loading code, `--version`, `datasets`, completion."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sslab.backbone_export import export_run, rename_keys
from sslab.checkpoint import save_checkpoint
from sslab.cli import main
from sslab.config import Config
from sslab.models import create_backbone

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = json.loads((FIXTURES / "resnet_reference.json").read_text())


def _recorder():
    """The recording script's weight and image formulas (it imports only torch at module level)."""
    spec = importlib.util.spec_from_file_location("record_resnet_reference", FIXTURES / "record_resnet_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resnet_run(tmp_path: Path, backbone: str = "resnet18", channels: int = 1, size: int = 8) -> Path:
    """A run folder holding an untrained SimSiam model (export only needs the checkpoint; any backbone)."""
    from sslab.methods.build import build_method
    from sslab.recipe import fit_to_data

    cfg = fit_to_data(Config.from_dict({"data": {"dataset": "digits"}, "model": {"backbone": backbone},
                                    "method": {"method": "simsiam", "proj_hidden": 32, "proj_dim": 32,
                                               "pred_hidden": 8}}), size)
    model = build_method(cfg, channels, size)
    with torch.no_grad():  # BN statistics that are not the identity, so a wrong mapping shows in the features
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    info = {"dataset": "digits", "channels": channels, "image_size": size, "classes": [str(i) for i in range(10)],
            "mean": [0.3] * channels, "std": [0.4] * channels}
    run = tmp_path / f"{backbone}-run"
    save_checkpoint({"config": cfg.to_dict(), "data": info, "model": model.state_dict(), "loop": {"epoch": 3}},
                    run / "checkpoints" / "last.pt")
    return run


# ---- names, shapes and semantics against the recorded fixture -----------------------------------------------------
@pytest.mark.parametrize("library", ["torchvision", "timm"])
@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_exported_names_and_shapes_are_the_libraries(library, arch):
    recorded = {k: v for k, v in REFERENCE["keys"][f"{library}/{arch}"].items() if not k.startswith("fc.")}
    imagenet = {k: list(v.shape) for k, v in rename_keys(create_backbone(arch, 3, 224).state_dict()).items()}
    assert imagenet == recorded  # every name and shape, the 7x7 stem included
    cifar = {k: list(v.shape) for k, v in rename_keys(create_backbone(arch, 3, 32).state_dict()).items()}
    assert cifar == {**recorded, "conv1.weight": [64, 3, 3, 3]}  # the stem change the command prints


@pytest.mark.parametrize("variant", sorted({k.split("/", 1)[1] for k in REFERENCE["features"]}))
def test_backbone_under_exported_names_computes_the_libraries_features(variant):
    """Weights given by name (the recorded formula) into sslab's backbone through the export's renaming give the
    features torchvision and timm gave: the same function, not only the same names."""
    recorder = _recorder()
    arch, stem, channels, size = variant.split("/")
    channels, size = int(channels), int(size)
    backbone = create_backbone(arch, channels, size, stem=stem).eval()
    state = backbone.state_dict()
    exported_names = rename_keys({k: k for k in state})  # library name -> sslab name
    backbone.load_state_dict({sslab_name: recorder.reference_tensor(name, list(state[sslab_name].shape),
                                                                    state[sslab_name].dtype)
                              for name, sslab_name in exported_names.items()})
    with torch.no_grad():
        out = backbone(recorder.reference_images(channels, size)).double()
    scale = out.abs().max().item()
    for library in ("torchvision", "timm"):
        want = REFERENCE["features"][f"{library}/{variant}"]
        first = torch.tensor(want["first"], dtype=torch.float64)
        assert out.shape[1] == want["dim"]
        assert torch.allclose(out[:, :first.shape[1]], first, rtol=1e-4, atol=1e-5 * scale), library
        assert torch.allclose(out.mean(1), torch.tensor(want["mean"], dtype=torch.float64), rtol=1e-4,
                              atol=1e-6 * scale), library


# ---- the files ------------------------------------------------------------------------------------------------------
def _images(channels: int, size: int, n: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)


def _sslab_features(run: Path, images: torch.Tensor) -> torch.Tensor:
    import sslab

    return sslab.embed(sslab.load(run, "cpu"), images)


def test_weight_export_files_json_and_printed_code_round_trip(tmp_path):
    from safetensors.torch import load_file

    run = resnet_run(tmp_path)
    images = _images(1, 8)
    expected = _sslab_features(run, images)
    for fmt in ("state-dict", "torchvision", "timm"):
        record = export_run(run, fmt)
        st, pt = (Path(f) for f in record["files"])
        assert st.parent == run / "export" and st.suffix == ".safetensors" and pt.suffix == ".pt"
        a, b = load_file(st), torch.load(pt, weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert ("conv1.weight" in a) == (fmt != "state-dict") and ("stem.0.weight" in a) == (fmt == "state-dict")
        card = json.loads(Path(record["json"]).read_text())
        assert {k: card[k] for k in ("image_size", "channels", "mean", "std", "stem", "feature_dim")} == \
            {"image_size": 8, "channels": 1, "mean": [0.3], "std": [0.4], "stem": "cifar", "feature_dim": 512}
    # the state-dict format's printed code runs here; torchvision's and timm's run where they import
    scope = {"images": images}
    exec(json.loads((run / "export" / "resnet18-sslab.json").read_text())["code"], scope)
    assert torch.allclose(scope["features"], expected, atol=1e-5)


@pytest.mark.parametrize("library", ["torchvision", "timm"])
def test_library_loads_the_export_strictly_and_gives_the_same_features(tmp_path, library):
    try:
        importlib.import_module(library)
    except Exception as e:  # torchvision's wheel breaks against torch 2.13 on the CPU with more than ImportError
        pytest.skip(f"{library} does not import here ({type(e).__name__}); the GPU machine runs this test")
    for arch, channels, size in (("resnet18", 1, 8), ("resnet50", 3, 96)):  # CIFAR stem, and ImageNet stem
        run = resnet_run(tmp_path / arch, arch, channels, size)
        images = _images(channels, size, 3)
        record = export_run(run, library)
        scope = {"images": images}
        exec(record["code"], scope)  # the code `sslab export` prints, with load_state_dict(strict=True)
        assert torch.allclose(scope["features"], _sslab_features(run, images), rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # minutes of the default suite on 2 cores (CI's 10-minute budget); run with -m slow
def test_onnx_gives_the_pytorch_features_on_the_same_inputs(tmp_path):
    import onnxruntime

    run = resnet_run(tmp_path)
    record = export_run(run, "onnx", tmp_path / "out")
    assert record["onnx_check"]["max_abs_diff"] <= 1e-4
    images = _images(1, 8, 3)  # another batch size than the export traced
    scope = {"images": images.numpy()}
    exec(record["code"], scope)
    assert torch.allclose(torch.from_numpy(scope["features"]), _sslab_features(run, images), atol=1e-4)
    session = onnxruntime.InferenceSession(record["files"][0], providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]


# ---- the command ----------------------------------------------------------------------------------------------------
def test_export_command_prints_files_and_the_stem_change(tmp_path, capsys):
    run = resnet_run(tmp_path)
    assert main(["export", str(run), "--format", "torchvision", "--out", str(tmp_path / "tv")]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "tv" / "resnet18-torchvision.safetensors") in out
    assert "model.maxpool = torch.nn.Identity()" in out and "strict=True" in out
    assert "mean [0.3], std [0.4]" in out


@pytest.mark.parametrize("fmt", ["torchvision", "timm"])
def test_simple_cnn_offers_state_dict_and_onnx_only(tmp_path, capsys, fmt):
    run = resnet_run(tmp_path, "simple-cnn")
    assert main(["export", str(run), "--format", fmt]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "simple-cnn" in err[0] and "state-dict or onnx" in err[0]
    assert not (run / "export").exists()
    assert main(["export", str(run), "--format", "state-dict"]) == 0


def test_export_of_a_folder_without_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# ---- --version, datasets, completion, import time ------------------------------------------------------------------
def test_version(capsys):
    import sslab

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"sslab {sslab.__version__} (torch {torch.__version__}")


def test_datasets_lists_every_registered_dataset_and_finds_one_put_there(tmp_path, monkeypatch, capsys):
    import numpy as np

    from sslab.commands.datasets import FORMATS, dataset_rows
    from sslab.data import DATASETS

    monkeypatch.setenv("SSLAB_DATA", str(tmp_path))
    assert set(FORMATS) == set(DATASETS.names())  # a new dataset needs its line here
    rows = {r["name"]: r for r in dataset_rows()}
    assert rows["digits"]["present"] == "yes" and rows["npz"]["present"] == "no"
    assert rows["cifar10"]["looked_in"] == str(tmp_path / "cifar10") and rows["cifar10"]["download"] == "yes"
    (tmp_path / "npz").mkdir()
    x = np.zeros((4, 8, 8), np.uint8)
    np.savez(tmp_path / "npz" / "data.npz", x_train=x, y_train=np.arange(4), x_test=x, y_test=np.arange(4))
    assert {r["name"]: r for r in dataset_rows()}["npz"]["present"] == "yes"
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in DATASETS.names())


def _sslab_process(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    src = str(Path(__file__).parents[1] / "src")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": src, **(env or {})})


def test_completion_offers_the_flags_of_a_command(tmp_path):
    pytest.importorskip("argcomplete")
    out = tmp_path / "completions"
    line = "sslab export RUN --for"
    env = {"_ARGCOMPLETE": "1", "_ARGCOMPLETE_IFS": "\n", "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "_ARGCOMPLETE_STDOUT_FILENAME": str(out)}
    done = _sslab_process("from sslab.cli import main; main()", env)
    assert done.returncode == 0, done.stderr
    assert out.read_text().split() == ["--format"]


def test_import_sslab_is_lazy_and_the_api_is_there():
    done = _sslab_process("import sys, sslab; print('torch' in sys.modules); "
                          "import sslab.pretrain; print(callable(sslab.train), callable(sslab.pretrain.fit)); "
                          "print(sslab.METHODS.names() == sorted(sslab.METHODS.names()), callable(sslab.export))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True", "True", "True"]


def test_api_rejects_unknown_fields_and_wrong_images(tmp_path):
    import sslab
    from sslab.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown setting 'epoch'; simsiam's settings: .*--epochs"):
        sslab.make_config(method="simsiam", epoch=3)
    with pytest.raises(ConfigError, match="no method given"):
        sslab.make_config(epochs=3)
    assert sslab.make_config(method="byol", epochs=3).method.epochs == 3
    run = resnet_run(tmp_path)
    with pytest.raises(ConfigError, match="uint8"):
        sslab.embed(run, torch.zeros(2, 1, 8, 8))
    with pytest.raises(ConfigError, match="uint8"):
        sslab.embed(run, torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
