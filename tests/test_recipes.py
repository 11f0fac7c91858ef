"""Recipes: the published long-run recipes stay exact; a short run gets the short-run recipe, says so, and
keeps every value the user set; large images get the methods' ImageNet recipes (docs/methods.md)."""
import pytest

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
    assert len(lines) == 1 and "short-run recipe" in lines[0] and "docs/methods.md" in lines[0]
    assert "batch_size 512 -> 256" in lines[0]


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
