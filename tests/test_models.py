import pytest
import torch

from sslab.models import BACKBONES, create_backbone, mlp
from sslab.models.resnet import ResNet


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_backbone_maps_images_to_out_dim_features(name):
    torch.manual_seed(0)
    for channels, size in [(3, 32), (1, 16)]:
        net = create_backbone(name, channels, size).eval()
        out = net(torch.randn(2, channels, size, size))
        assert out.shape == (2, net.out_dim) and torch.isfinite(out).all()


def test_resnet_stem_follows_image_size_and_can_be_overridden():
    small, large = create_backbone("resnet18", 3, 32), create_backbone("resnet18", 3, 96)
    assert small.stem[0].kernel_size == (3, 3) and small.stem[0].stride == (1, 1) and len(small.stem) == 3
    assert large.stem[0].kernel_size == (7, 7) and isinstance(large.stem[-1], torch.nn.MaxPool2d)
    forced = create_backbone("resnet18", 3, 32, stem="imagenet")
    assert forced.stem[0].kernel_size == (7, 7)
    # the CIFAR stem keeps 32x32 resolution into layer1: layer4 sees 4x4
    feats = {}
    small.layer4.register_forward_hook(lambda m, i, o: feats.update(l4=o.shape))
    small.eval()(torch.randn(1, 3, 32, 32))
    assert feats["l4"] == (1, 512, 4, 4)


def test_resnet_sizes_match_the_reference_architectures():
    counts = {n: sum(p.numel() for p in create_backbone(n, 3, 224).parameters()) for n in ("resnet18", "resnet34", "resnet50")}
    # torchvision's resnets without the 1000-way fc: 11.69M - 0.513M, 21.80M - 0.513M, 25.56M - 2.049M
    assert abs(counts["resnet18"] - 11_176_512) < 1000
    assert abs(counts["resnet34"] - 21_284_672) < 1000
    assert abs(counts["resnet50"] - 23_508_032) < 1000
    assert create_backbone("resnet50", 3, 32).out_dim == 2048


def test_simple_cnn_is_the_teaching_model():
    net = create_backbone("simple-cnn", 1, 28)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 64] and all(c.kernel_size == (3, 3) for c in convs)
    assert net.out_dim == 64 * 3 * 3
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the reference has none


def test_simple_cnn_bn_is_the_teaching_model_with_batchnorm_after_each_conv():
    net = create_backbone("simple-cnn-bn", 1, 28)
    kinds = [[type(m).__name__ for m in block] for block in net.features]
    assert kinds == [["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]] * 3
    assert all(block[0].bias is None for block in net.features)  # BN's shift replaces the conv bias
    assert net.out_dim == 64 * 3 * 3 and net(torch.randn(2, 1, 28, 28)).shape == (2, 576)


def test_mlp_spec_builds_the_declared_layers():
    proj = mlp([512, 2048, 2048], last_bn=True)
    kinds = [type(m).__name__ for m in proj]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    pred = mlp([2048, 512, 2048])
    assert [type(m).__name__ for m in pred] == ["Linear", "BatchNorm1d", "ReLU", "Linear"] and pred[-1].bias is not None
    assert isinstance(ResNet, type)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_stages_are_the_backbones_own_modules(name):
    """Activation maps hook these stages: a hook on a stage must fire during the backbone's forward."""
    net = create_backbone(name, 3, 32).eval()
    seen = []
    for stage_name, stage in net.stages().items():
        stage.register_forward_hook(lambda m, i, o, n=stage_name: seen.append(n))
    net(torch.randn(1, 3, 32, 32))
    assert seen == list(net.stages())
