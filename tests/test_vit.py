"""The ViT backbone: sizes and patch rule, attention against its explicit formula, position embeddings for other
input sizes, the CLS attention maps, timm's names and function against a fixture recorded from timm, the exports
(timm, state dict, ONNX), and `sslab attention` on a ViT run."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sslab.backbone_export import export_run
from sslab.models import BACKBONES, create_backbone
from sslab.models.vit import VisionTransformer, default_patch_size

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = json.loads((FIXTURES / "vit_reference.json").read_text())


def _recorder():
    """The recording script's weight and image formulas (it imports only torch at module level)."""
    spec = importlib.util.spec_from_file_location("record_vit_reference", FIXTURES / "record_vit_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_vit(image_size=16, depth=2, **kw) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(image_size, 3, patch_size=4, dim=24, depth=depth, heads=3, **kw).eval()


# ---- architecture -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, dim, heads", [("vit-tiny", 192, 3), ("vit-small", 384, 6)])
def test_registered_sizes_and_patch_rule(name, dim, heads):
    assert name in BACKBONES
    for size, patch in ((32, 4), (64, 4), (96, 16), (224, 16)):
        assert default_patch_size(size) == patch
    model = create_backbone(name, 3, 32)
    assert (model.out_dim, model.heads, len(model.blocks), model.patch_size) == (dim, heads, 12, 4)
    assert model.pos_embed.shape == (1, 1 + 8 * 8, dim)  # 224 px (14 x 14 patches): test_names_and_shapes_are_timms
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, dim)


def test_attention_is_softmax_qk_times_v_per_head():
    """The fused attention against the formula written out head by head."""
    model = small_vit()
    attn = model.blocks[0].attn
    x = torch.randn(2, 5, 24)
    qkv = attn.qkv(x).view(2, 5, 3, 3, 8)  # B x N x (q, k, v) x heads x d_head
    heads = []
    for h in range(3):
        q, k, v = qkv[:, :, 0, h], qkv[:, :, 1, h], qkv[:, :, 2, h]
        heads.append(torch.softmax(q @ k.transpose(1, 2) / 8 ** 0.5, dim=-1) @ v)
    expected = attn.proj(torch.cat(heads, dim=-1))
    assert torch.allclose(attn(x), expected, atol=1e-5)
    weights = attn.attention_weights(x)
    assert weights.shape == (2, 3, 5, 5) and torch.allclose(weights.sum(-1), torch.ones(2, 3, 5))


def test_blocks_are_pre_norm_residual():
    model = small_vit(depth=1)
    block = model.blocks[0]
    x = torch.randn(2, 5, 24)
    y = x + block.attn(block.norm1(x))
    expected = y + block.mlp.fc2(F.gelu(block.mlp.fc1(block.norm2(y))))
    assert torch.allclose(block(x), expected, atol=1e-6)


def test_position_embeddings_for_other_input_sizes():
    model = small_vit(image_size=32)  # 8 x 8 grid
    assert model.position_embedding(8, 8) is model.pos_embed
    pe = model.position_embedding(4, 4)
    assert pe.shape == (1, 1 + 16, 24) and torch.equal(pe[:, 0], model.pos_embed[:, 0])  # CLS position kept
    with torch.no_grad():  # a constant table stays constant (bicubic weights sum to 1): no edge artefacts
        model.pos_embed[:, 1:] = 0.7
    assert torch.allclose(model.position_embedding(4, 4)[:, 1:], torch.full((1, 16, 24), 0.7), atol=1e-6)
    assert torch.allclose(model.position_embedding(12, 12)[:, 1:], torch.full((1, 144, 24), 0.7), atol=1e-6)
    assert model(torch.randn(3, 3, 16, 16)).shape == (3, 24)  # multi-crop's local views
    assert model(torch.randn(1, 3, 34, 34)).shape == (1, 24)  # a side not a multiple of 4: the partial patch dropped


def test_too_small_an_image_is_one_line():
    from sslab.errors import ConfigError

    with pytest.raises(ConfigError, match="at least 4 px"):
        VisionTransformer(3, 3, patch_size=4, dim=24, depth=1, heads=3)


def test_cls_attention_is_the_chosen_blocks_cls_row():
    model = small_vit(image_size=16, depth=3)
    x = torch.randn(2, 3, 16, 16)
    t = model.tokens(x)
    for block in model.blocks[:2]:
        t = block(t)
    weights = model.blocks[2].attn.attention_weights(model.blocks[2].norm1(t))
    att = model.cls_attention(x)
    assert att.shape == (2, 3, 4, 4)
    assert torch.allclose(att.flatten(2), weights[:, :, 0, 1:], atol=1e-6)
    assert torch.all(att.flatten(2).sum(-1) < 1)  # the CLS token's weight on itself is left out
    first = model.blocks[0].attn.attention_weights(model.blocks[0].norm1(model.tokens(x)))
    assert torch.allclose(model.cls_attention(x, block=0).flatten(2), first[:, :, 0, 1:], atol=1e-6)


# ---- timm's names and function ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["vit-tiny", "vit-small"])
def test_names_and_shapes_are_timms(arch):
    recorded = REFERENCE["keys"][f"timm/{arch}"]
    ours = {k: list(v.shape) for k, v in create_backbone(arch, 3, 224).state_dict().items()}
    assert ours == recorded  # every name and shape of timm.create_model("vit_..._patch16_224", num_classes=0)


@pytest.mark.parametrize("variant", sorted(k.split("/", 1)[1] for k in REFERENCE["features"]))
def test_vit_computes_timms_features(variant):
    """The recorded weights, given by name, make sslab's ViT compute the features timm computed."""
    recorder = _recorder()
    arch, channels, size, patch = variant.split("/")
    channels, size, patch = int(channels), int(size), int(patch)
    model = create_backbone(arch, channels, size).eval()
    assert model.patch_size == patch
    state = model.state_dict()
    model.load_state_dict({k: recorder.reference_tensor(k, list(v.shape), v.dtype) for k, v in state.items()})
    with torch.no_grad():
        out = model(recorder.reference_images(channels, size)).double()
    want = REFERENCE["features"][f"timm/{variant}"]
    first = torch.tensor(want["first"], dtype=torch.float64)
    scale = out.abs().max().item()
    assert out.shape[1] == want["dim"]
    assert torch.allclose(out[:, :first.shape[1]], first, rtol=1e-4, atol=1e-5 * scale)
    assert torch.allclose(out.mean(1), torch.tensor(want["mean"], dtype=torch.float64), rtol=1e-4, atol=1e-6 * scale)


# ---- export -------------------------------------------------------------------------------------------------------------
def vit_run(tmp_path: Path, size: int = 16, channels: int = 3) -> Path:
    """A run folder holding a ViT-Tiny SimSiam model (export only needs the checkpoint)."""
    from sslab.checkpoint import save_checkpoint
    from sslab.config import Config
    from sslab.methods.build import build_method
    from sslab.recipe import fit_to_data

    cfg = fit_to_data(Config.from_dict({"data": {"dataset": "cifar10"}, "model": {"backbone": "vit-tiny"},
                                    "method": {"method": "simsiam", "proj_hidden": 32, "proj_dim": 32,
                                               "pred_hidden": 8}}), size)
    torch.manual_seed(0)
    model = build_method(cfg, channels, size)
    info = {"dataset": "cifar10", "channels": channels, "image_size": size, "classes": [str(i) for i in range(10)],
            "mean": [0.5] * channels, "std": [0.25] * channels}
    run = tmp_path / "vit-run"
    save_checkpoint({"config": cfg.to_dict(), "data": info, "model": model.state_dict(), "loop": {"epoch": 1}},
                    run / "checkpoints" / "last.pt")
    return run


def _images(channels: int, size: int, n: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(1),
                         dtype=torch.uint8)


def _sslab_features(run: Path, images: torch.Tensor) -> torch.Tensor:
    import sslab

    return sslab.embed(sslab.load(run, "cpu"), images)


def test_timm_and_state_dict_exports_round_trip(tmp_path):
    from safetensors.torch import load_file

    run = vit_run(tmp_path)
    images = _images(3, 16)
    expected = _sslab_features(run, images)
    record = export_run(run, "timm")
    weights = load_file(record["files"][0])
    assert set(weights) == set(REFERENCE["keys"]["timm/vit-tiny"])  # timm's names, at this run's grid
    assert list(weights["pos_embed"].shape) == [1, 1 + 4 * 4, 192]
    assert "timm.create_model('vit_tiny_patch16_224'" in record["code"] and "img_size=16, patch_size=4" in record["code"]
    card = json.loads(Path(record["json"]).read_text())
    assert (card["patch_size"], card["stem"], card["feature_dim"]) == (4, "", 192)
    state = export_run(run, "state-dict")
    scope = {"images": images}
    exec(state["code"], scope)  # the printed code, with create_backbone and strict loading
    assert torch.allclose(scope["features"], expected, atol=1e-5)


def test_timm_loads_the_export_strictly(tmp_path):
    try:
        importlib.import_module("timm")
    except Exception as e:  # timm needs torchvision, whose wheel breaks against torch 2.13 on the CPU
        pytest.skip(f"timm does not import here ({type(e).__name__}); the GPU machine runs this test")
    run = vit_run(tmp_path)
    images = _images(3, 16)
    record = export_run(run, "timm")
    scope = {"images": images}
    exec(record["code"], scope)
    assert torch.allclose(scope["features"], _sslab_features(run, images), rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # the ONNX exporter traces 12 blocks: about 10 s quiet; test_export.py covers ONNX for the CNNs
def test_onnx_export_of_a_vit(tmp_path):
    pytest.importorskip("onnxruntime")
    run = vit_run(tmp_path)
    record = export_run(run, "onnx", tmp_path / "out")
    assert record["onnx_check"]["max_abs_diff"] <= 1e-4 and record["patch_size"] == 4
    images = _images(3, 16, 5)  # another batch size than the export traced
    scope = {"images": images.numpy()}
    exec(record["code"], scope)
    assert torch.allclose(torch.from_numpy(scope["features"]), _sslab_features(run, images), atol=1e-4)


def test_torchvision_export_of_a_vit_is_one_line(tmp_path, capsys):
    from sslab.cli import main

    run = vit_run(tmp_path)
    assert main(["export", str(run), "--format", "torchvision"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vit-tiny" in err[0] and "state-dict, timm or onnx" in err[0]


# ---- sslab attention on a ViT run -----------------------------------------------------------------------------------
def test_attention_on_a_vit_run_draws_cls_attention_per_head(tmp_path, capsys):
    """Fashion-MNIST mini (28 px: 7 x 7 patches of 4 px). The saved weights are not the seed's initial ones, so the
    untrained reference (rebuilt from the config's seed) differs from the "trained" maps."""
    from sslab.analysis.attention import head_maps
    from sslab.checkpoint import save_checkpoint
    from sslab.cli import main
    from sslab.config import Config
    from sslab.methods.build import build_method
    from sslab.recipe import fit_to_data
    from sslab.pretrained import load_trained

    cfg = fit_to_data(Config.from_dict({"data": {"dataset": "fashion-mnist-mini"}, "model": {"backbone": "vit-tiny"},
                                    "method": {"method": "simclr", "proj_hidden": 32, "proj_dim": 16}}), 28)
    torch.manual_seed(123)  # not the config's seed 0
    model = build_method(cfg, 1, 28)
    info = {"dataset": "fashion-mnist-mini", "channels": 1, "image_size": 28, "classes": [str(i) for i in range(10)],
            "mean": [0.29], "std": [0.35]}
    run = tmp_path / "vit"
    save_checkpoint({"config": cfg.to_dict(), "data": info, "model": model.state_dict(), "loop": {"epoch": 1}},
                    run / "checkpoints" / "last.pt")
    cfg.save(run / "config.yaml")
    assert main(["attention", str(run), "--device", "cpu", "-n", "2"]) == 0
    record = json.loads((run / "attention" / "attention.json").read_text())
    assert (record["layer"], record["heads"], record["patch_grid"]) == ("block12", 3, [7, 7])
    assert record["figures"] == ["attention/cls-attention-block12.png"] and "rebuilt" in record["untrained_source"]
    from test_eval_support import assert_png_not_blank

    assert_png_not_blank(run / "attention" / "cls-attention-block12.png")
    assert main(["attention", str(run), "--device", "cpu", "-n", "1", "--layer", "block1"]) == 0
    assert (run / "attention" / "cls-attention-block1.png").is_file()
    capsys.readouterr()
    assert main(["attention", str(run), "--device", "cpu", "--layer", "layer3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "block1 ... block12" in err[0]
    trained = load_trained(run, "cpu")
    x = torch.randn(2, 1, 28, 28)
    maps = head_maps(trained.backbone.eval(), x, 11, 64)
    assert maps.shape == (2, 3, 64, 64) and maps.min() >= 0 and maps.max() <= 1
    fresh = create_backbone("vit-tiny", 1, 28).eval()
    assert not torch.allclose(torch.from_numpy(maps), torch.from_numpy(head_maps(fresh, x, 11, 64)))
