"""Recipes: the published long-run recipes stay exact; a short run gets the short-run recipe, says so, and
keeps every value the user set; large images get the methods' ImageNet recipes (docs/methods.md)."""
import pytest
import torch

from sslab.config import Config
from sslab.methods import METHODS
from sslab.recipe import SHORT_RUN_EPOCHS, fit_to_data, short_run_recipe, smaller_batch, smaller_queue

# the published CIFAR recipes (docs/methods.md): optimiser, base lr per 256, wd, warm-up, batch, epochs
PUBLISHED = {
    "simsiam": ("sgd", 0.03, 5e-4, 0, 512, 800),
    "phinet": ("sgd", 0.03, 5e-4, 10, 512, 800),  # PhiNet's reference: 10 warm-up epochs
    "xphinet": ("sgd", 0.03, 5e-4, 10, 512, 800),
    "simclr": ("lars", 0.4, 1e-5, 10, 512, 800),
    "byol": ("lars", 2.0, 5e-6, 10, 512, 800),
    "mocov2": ("sgd", 0.3, 1e-4, 10, 512, 800),
    # solo-learn's CIFAR recipes (scripts/pretrain/cifar/<method>.yaml), batch 512 and 800 epochs as the others
    "barlowtwins": ("lars", 0.3, 1e-4, 10, 512, 800),
    "vicreg": ("lars", 0.3, 1e-4, 10, 512, 800),
    "dino": ("lars", 0.3, 1e-6, 10, 512, 800),
    "mocov3": ("lars", 0.3, 1e-6, 10, 512, 800),
    "nnclr": ("lars", 0.4, 1e-5, 10, 512, 800),
    "swav": ("lars", 0.6, 1e-6, 10, 512, 800),
}


def resolved(method: str, epochs=None, n_train=50_000, log=None, image_size=32, **settings) -> Config:
    given = {"method": method, "dataset": "cifar10", **({"epochs": epochs} if epochs is not None else {}), **settings}
    return fit_to_data(Config.from_values(given), image_size, n_train=n_train, log=log)


def test_every_method_has_a_published_recipe_pinned_here():
    assert sorted(PUBLISHED) == METHODS.names()


@pytest.mark.parametrize("method", sorted(PUBLISHED))
def test_long_runs_keep_the_published_recipe(method):
    for epochs in (None, SHORT_RUN_EPOCHS, 800):
        lines = []
        cfg = resolved(method, epochs, n_train=10_000, log=lines.append)
        m = cfg.method
        assert (m.optimizer, m.lr, m.weight_decay, m.warmup_epochs, m.batch_size) == PUBLISHED[method][:5]
        assert m.epochs == (epochs or PUBLISHED[method][5]) and lines == []


@pytest.mark.parametrize("method", sorted(PUBLISHED))
def test_a_short_run_gets_the_short_run_recipe_and_says_so(method):
    lines = []
    cfg = resolved(method, 10, n_train=10_000, log=lines.append)
    m = cfg.method
    assert m.warmup_epochs == min(PUBLISHED[method][3], 1)  # at most a tenth of the run
    assert m.batch_size == 256  # 10,000 // 512 = 19 steps per epoch -> 256 gives 39
    assert (m.optimizer, m.lr, m.weight_decay) == PUBLISHED[method][:3]  # lr is per 256
    assert "short-run recipe" in lines[0] and "docs/methods.md" in lines[0]
    assert "batch_size 512 -> 256" in lines[0]
    assert lines[1:] == (["short-run augmentation (barlowtwins, 10 < 100 epochs; docs/methods.md): crop_scale "
                          "(0.08, 1.0) -> (0.2, 1.0)"] if method == "barlowtwins" else [])


def test_a_short_run_keeps_what_the_user_set():
    lines = []
    cfg = resolved("simclr", 10, n_train=10_000, log=lines.append, warmup_epochs=5, batch_size=512)
    assert (cfg.method.warmup_epochs, cfg.method.batch_size) == (5, 512) and lines == []


def test_short_run_rules():
    def short(epochs, n_train, **given):
        method = METHODS.get("simclr").Settings(epochs=epochs, warmup_epochs=10, **given)
        return method, short_run_recipe(method, frozenset({"epochs", *given}), n_train)

    method, changes = short(30, 1000)
    assert (method.warmup_epochs, method.batch_size, len(changes)) == (3, 64, 2)
    assert METHODS.get("simclr").Settings().warmup_epochs == 10  # the method's recipe is not modified in place
    assert short(5, None)[0].batch_size == 512  # dataset size unknown: kept
    method = METHODS.get("simclr").Settings(epochs=30)
    assert short_run_recipe(method, frozenset(), 1000) == [] and method.batch_size == 512  # epochs not given
    assert [smaller_batch(512, n) for n in (50_000, 16_384, 10_000, 4_000, 500)] == [512, 512, 256, 64, 64]


def test_a_short_moco_run_keeps_one_warm_up_epoch_and_a_queue_it_can_fill():
    # measured on the 10,000-image CIFAR-10 subset, 3 epochs (docs/benchmarks.md): warm-up 0 and the
    # 32,768-key queue collapse (z_std 0.0008); warm-up 1 and queue 2,048 learn (39.7% -> 40.1%)
    lines = []
    cfg = resolved("mocov2", 3, n_train=10_000, log=lines.append)
    assert cfg.method.warmup_epochs == 1 and cfg.method.queue_size == 2048
    assert "queue_size 32768 -> 2048" in lines[0] and "warmup_epochs 10 -> 1" in lines[0]
    assert resolved("simclr", 3, n_train=10_000).method.warmup_epochs == 0  # the floor is MoCo's alone
    assert resolved("mocov2", 1, n_train=10_000).method.warmup_epochs == 0  # a 1-epoch run cannot warm up
    assert resolved("mocov2", 50, n_train=10_000).method.warmup_epochs == 5
    user = resolved("mocov2", 3, n_train=10_000, queue_size=8192, warmup_epochs=0)
    assert (user.method.queue_size, user.method.warmup_epochs) == (8192, 0)
    assert resolved("mocov2", None, n_train=10_000).method.queue_size == 32768  # long runs: the published queue


def test_a_short_barlow_twins_run_on_small_images_crops_at_least_a_fifth():
    # measured on the 10,000-image CIFAR-10 subset, 3 epochs, simple-cnn-bn (docs/benchmarks.md): crops of 8% end
    # below the untrained network (kNN 37.7% < 38.0%), crops of 20% above both baselines (39.2%)
    assert resolved("barlowtwins", 3, n_train=10_000).augment.crop_scale == (0.2, 1.0)
    assert resolved("barlowtwins", None).augment.crop_scale == (0.08, 1.0)  # the published recipe's crops
    assert resolved("barlowtwins", SHORT_RUN_EPOCHS).augment.crop_scale == (0.08, 1.0)
    assert resolved("barlowtwins", 3, image_size=224).augment.crop_scale == (0.08, 1.0)  # measured on 32 px only
    assert resolved("barlowtwins", 3, crop_scale=(0.1, 1.0)).augment.crop_scale == (0.1, 1.0)  # the user's wins
    assert resolved("barlowtwins", 3, preset="barlowtwins-small").augment.crop_scale == (0.08, 1.0)  # a preset named
    assert resolved("vicreg", 3).augment.crop_scale == (0.2, 1.0) and resolved("simclr", 3).augment.crop_scale == (
        0.08, 1.0)  # the rule is Barlow Twins' alone


def test_short_run_queue_rule():
    assert [smaller_queue(32768, n) for n in (200_000, 50_000, 10_000, 4_000, 500)] == [32768, 8192, 2048, 512, 256]
    method = METHODS.get("mocov2").Settings(epochs=5)
    short_run_recipe(method, frozenset({"epochs"}), None)
    assert method.queue_size == 32768  # dataset size unknown: kept


# the published ImageNet recipes (ResNet-50, 224 px): optimiser, lr per 256, wd, warm-up, batch, epochs
IMAGENET = {
    "simsiam": ("sgd", 0.05, 1e-4, 0, 512, 100),  # SimSiam's main run
    "simclr": ("lars", 0.3, 1e-6, 10, 4096, 100),  # SimCLR's default setting
    "byol": ("lars", 0.4, 7.5e-7, 10, 4096, 1000),  # BYOL's 0.2 and 1.5e-6 for the summed loss; ours is the mean
    "mocov2": ("sgd", 0.03, 1e-4, 0, 256, 200),
    "barlowtwins": ("lars", 0.2, 1.5e-6, 10, 2048, 1000),
    "vicreg": ("lars", 0.2, 1e-6, 10, 2048, 1000),
    "dino": ("adamw", 5e-4, 0.04, 10, 1024, 100),  # ViT-S/16
    "mocov3": ("lars", 0.6, 1e-6, 10, 4096, 100),
    "nnclr": ("lars", 0.3, 1e-6, 10, 4096, 1000),
    "swav": ("lars", 0.3, 1e-6, 10, 4096, 800),  # 4.8 at batch 4096
}


@pytest.mark.parametrize("method", sorted(IMAGENET))
def test_large_images_get_the_published_imagenet_recipe_and_say_so(method):
    lines = []
    cfg = resolved(method, None, n_train=1_281_167, log=lines.append, image_size=224)
    m = cfg.method
    assert (m.optimizer, m.lr, m.weight_decay, m.warmup_epochs, m.batch_size, m.epochs) == IMAGENET[method]
    assert len(lines) == 1 and "above 64 px" in lines[0] and "ImageNet" in lines[0]
    assert cfg.augment.blur_p == 0.5  # every method blurs its views above 64 px
    assert resolved(method, None, image_size=64).method.batch_size == PUBLISHED[method][4]  # 64 px is CIFAR-size
    kept = resolved(method, None, image_size=224, lr=0.01, batch_size=128).method
    assert (kept.lr, kept.batch_size) == (0.01, 128)  # what the user gives is kept


def test_imagenet_heads_and_augmentation():
    assert resolved("simsiam", image_size=224).method.proj_layers == 3 and resolved("simsiam").method.proj_layers == 2
    assert resolved("phinet", image_size=224).method.proj_layers == 3  # PhiNet's settings are SimSiam's, extended
    simclr = resolved("simclr", image_size=224)
    assert (simclr.method.temperature, simclr.method.proj_dim, simclr.augment.jitter) == (0.1, 128, (0.8, 0.8, 0.8, 0.2))
    moco = resolved("mocov2", image_size=224)
    assert (moco.method.queue_size, moco.method.ema, moco.augment.crop_scale) == (65536, 0.999, (0.2, 1.0))
    byol = resolved("byol", image_size=224)
    assert (byol.method.ema, byol.augment.solarize_p) == (0.996, 0.1)


def test_small_images_get_the_small_backbone_unless_one_is_given_and_say_why():
    for size in (8, 28):
        lines = []
        cfg = resolved("simclr", 10, n_train=1000, log=lines.append, image_size=size)
        assert cfg.model.backbone == "simple-cnn-bn"
        said = [line for line in lines if line.startswith("backbone: ")]
        assert len(said) == 1 and f"{size} px" in said[0] and "no --backbone given" in said[0]
    lines = []
    assert resolved("simclr", 10, n_train=1000, log=lines.append, image_size=32).model.backbone == "resnet18"
    assert not any(line.startswith("backbone: ") for line in lines)
    for given in ("resnet18", "simple-cnn"):  # what the user set is kept, silently
        lines = []
        cfg = resolved("simclr", 10, n_train=1000, log=lines.append, image_size=8, backbone=given)
        assert cfg.model.backbone == given and not any(line.startswith("backbone: ") for line in lines)


def test_a_run_below_the_raw_pixels_says_so_at_the_end_with_one_suggestion():
    from sslab.commands.train import summary_table

    base = {"knn_top1_init": 0.85, "epochs": 1, "run_dir": "runs/x"}
    below = summary_table({**base, "knn_top1": 0.883, "knn_top1_pixels": 0.978}).splitlines()
    assert below[-1].startswith("note: the learned features end below the raw pixels (88.3% < 97.8% kNN)")
    assert "--epochs 20" in below[-1]
    above = summary_table({**base, "knn_top1": 0.99, "knn_top1_pixels": 0.978})
    assert "note:" not in above and above.splitlines()[-1].startswith("run folder")
    assert "note:" not in summary_table({**base, "knn_top1": None, "knn_top1_pixels": None})


# the six newer methods' own settings (docs/methods.md): the CIFAR recipe, and what the ImageNet recipe changes
OWN = {
    "barlowtwins": ({"proj_hidden": 2048, "proj_dim": 2048, "lambd": 0.0051, "scale_loss": 0.1},
                    {"proj_hidden": 8192, "proj_dim": 8192, "scale_loss": 1.0}),
    "vicreg": ({"proj_hidden": 2048, "proj_dim": 2048, "sim_weight": 25.0, "var_weight": 25.0, "cov_weight": 1.0},
               {"proj_hidden": 8192, "proj_dim": 8192}),
    "dino": ({"proj_hidden": 2048, "proj_dim": 256, "num_prototypes": 4096, "student_temp": 0.1, "teacher_temp": 0.07,
              "warmup_teacher_temp": 0.04, "warmup_teacher_temp_epochs": 50, "center_momentum": 0.9, "ema": 0.9995,
              "freeze_last_layer_epochs": 1, "local_crops": 0},
             {"num_prototypes": 65536, "teacher_temp": 0.04, "warmup_teacher_temp_epochs": 0, "ema": 0.996,
              "local_crops": 8, "min_lr": 5e-4}),
    "mocov3": ({"proj_hidden": 4096, "proj_dim": 256, "pred_hidden": 4096, "temperature": 0.2, "ema": 0.99},
               {"temperature": 1.0}),
    "nnclr": ({"proj_hidden": 2048, "proj_dim": 256, "pred_hidden": 4096, "temperature": 0.2, "queue_size": 65536},
              {"temperature": 0.1, "queue_size": 98304}),
    "swav": ({"proj_hidden": 2048, "proj_dim": 128, "num_prototypes": 3000, "temperature": 0.1,
              "sinkhorn_epsilon": 0.05, "sinkhorn_iterations": 3, "queue_size": 3840, "queue_start_epoch": 50,
              "freeze_prototypes_epochs": 2, "local_crops": 0},
             {"queue_size": 0, "freeze_prototypes_epochs": 1, "local_crops": 6, "min_lr": 1e-3}),
}


@pytest.mark.parametrize("method", sorted(OWN))
def test_the_newer_methods_own_settings_are_their_published_ones(method):
    cifar, imagenet = OWN[method]
    small, large = resolved(method).method, resolved(method, image_size=224).method
    assert {k: getattr(small, k) for k in cifar} == cifar
    assert {k: getattr(large, k) for k in imagenet} == imagenet


class Pooled(torch.nn.Sequential):
    """A backbone that takes any image size: the pooled 3-channel image is the feature vector."""

    out_dim = 3


def test_the_newer_methods_views_and_augmentation():
    """solo-learn's asymmetric pair (the second view alone solarized) on CIFAR, BYOL's pair above 64 px; DINO's and
    SwAV's multi-crop with their crop scales on ImageNet-size images; VICReg's and SwAV's own augmentation."""
    def views(method, image_size, **settings):
        cfg = resolved(method, image_size=image_size, **settings).method
        cfg.proj_hidden, cfg.proj_dim, cfg.num_prototypes = 8, 8, 8  # the heads do not matter here
        model = METHODS.create(method, Pooled(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()), cfg)
        return [(v.size, dict(v.changes)) for v in model.view_specs(image_size)]

    for method in ("barlowtwins", "dino", "mocov3", "nnclr"):
        assert views(method, 32) == [(32, {}), (32, {"solarize_p": 0.2})], method
    assert views("mocov3", 224) == [(224, {"blur_p": 1.0}), (224, {"blur_p": 0.1, "solarize_p": 0.2})]
    dino = views("dino", 224)
    assert dino == [(224, {"crop_scale": (0.4, 1.0), "blur_p": 1.0}),
                    (224, {"crop_scale": (0.4, 1.0), "blur_p": 0.1, "solarize_p": 0.2})] + \
                   [(96, {"crop_scale": (0.05, 0.4), "blur_p": 0.5})] * 8
    assert views("swav", 224) == [(224, {"crop_scale": (0.14, 1.0)})] * 2 + [(96, {"crop_scale": (0.05, 0.14)})] * 6
    assert views("swav", 32) == [(32, {})] * 2  # 2 crops: the method's own crop scale
    assert views("swav", 32, local_crops=2) == [(32, {"crop_scale": (0.14, 1.0)})] * 2 + \
        [(16, {"crop_scale": (0.05, 0.14)})] * 2
    vicreg, swav = resolved("vicreg").augment, resolved("swav").augment
    assert (vicreg.crop_scale, vicreg.solarize_p, vicreg.jitter) == ((0.2, 1.0), 0.1, (0.4, 0.4, 0.2, 0.1))
    assert (swav.jitter, swav.blur_p) == ((0.8, 0.8, 0.8, 0.2), 0.5)
