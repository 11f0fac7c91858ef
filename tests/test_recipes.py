"""Recipes: the published long-run recipes stay exact; a short run gets the short-run recipe, says so, and
keeps every value the user set (docs/methods.md)."""
import pytest

from sslab.config import Config
from sslab.methods import METHODS
from sslab.methods.short_run import SHORT_RUN_EPOCHS, short_run_recipe, smaller_batch, smaller_queue
from sslab.train import resolve

# the published CIFAR recipes (docs/methods.md): optimiser, base lr per 256, wd, warm-up, batch, epochs
PUBLISHED = {
    "simsiam": ("sgd", 0.03, 5e-4, 0, 512, 800),
    "phinet": ("sgd", 0.03, 5e-4, 10, 512, 800),  # PhiNet's reference: 10 warm-up epochs
    "xphinet": ("sgd", 0.03, 5e-4, 10, 512, 800),
    "simclr": ("lars", 0.4, 1e-5, 10, 512, 800),
    "byol": ("lars", 2.0, 5e-6, 10, 512, 800),
    "mocov2": ("sgd", 0.3, 1e-4, 10, 512, 800),
}


def resolved(method: str, epochs=None, n_train=50_000, log=None, **sections) -> Config:
    cfg = Config.from_dict({"data": {"dataset": "cifar10"}, "method": {"method": method},
                            "train": {"epochs": epochs}, **sections})
    return resolve(cfg, 32, n_train=n_train, log=log)


def test_every_method_has_a_published_recipe_pinned_here():
    assert sorted(PUBLISHED) == METHODS.names()


@pytest.mark.parametrize("method", sorted(PUBLISHED))
def test_long_runs_keep_the_published_recipe(method):
    for epochs in (None, SHORT_RUN_EPOCHS, 800):
        lines = []
        cfg = resolved(method, epochs, n_train=10_000, log=lines.append)
        o, t = cfg.optim, cfg.train
        assert (o.optimizer, o.lr, o.weight_decay, o.warmup_epochs, t.batch_size) == PUBLISHED[method][:5]
        assert t.epochs == (epochs or PUBLISHED[method][5]) and lines == []


@pytest.mark.parametrize("method", sorted(PUBLISHED))
def test_a_short_run_gets_the_short_run_recipe_and_says_so(method):
    lines = []
    cfg = resolved(method, 10, n_train=10_000, log=lines.append)
    assert cfg.optim.warmup_epochs == min(PUBLISHED[method][3], 1)  # at most a tenth of the run
    assert cfg.train.batch_size == 256  # 10,000 // 512 = 19 steps per epoch -> 256 gives 39
    assert (cfg.optim.optimizer, cfg.optim.lr, cfg.optim.weight_decay) == PUBLISHED[method][:3]  # lr is per 256
    assert len(lines) == 1 and "short-run recipe" in lines[0] and "docs/methods.md" in lines[0]
    assert "batch_size 512 -> 256" in lines[0]


def test_a_short_run_keeps_what_the_user_set():
    lines = []
    cfg = resolved("simclr", 10, n_train=10_000, log=lines.append,
                   optim={"warmup_epochs": 5}, train={"epochs": 10, "batch_size": 512})
    assert (cfg.optim.warmup_epochs, cfg.train.batch_size) == (5, 512) and lines == []


def test_short_run_rules():
    recipe = {"optim": {"warmup_epochs": 10}, "train": {"batch_size": 512}}
    same, changes = short_run_recipe(recipe, None, 1000)  # no --epochs: the recipe's own 800
    assert same == recipe and changes == []
    short, changes = short_run_recipe(recipe, 30, 1000)
    assert short["optim"]["warmup_epochs"] == 3 and short["train"]["batch_size"] == 64 and len(changes) == 2
    assert recipe["optim"]["warmup_epochs"] == 10  # the method's recipe is not modified in place
    assert short_run_recipe(recipe, 5, None)[0]["train"]["batch_size"] == 512  # dataset size unknown: kept
    assert [smaller_batch(512, n) for n in (50_000, 16_384, 10_000, 4_000, 500)] == [512, 512, 256, 64, 64]


def test_a_short_moco_run_keeps_one_warm_up_epoch_and_a_queue_it_can_fill():
    # measured on the 10,000-image CIFAR-10 subset, 3 epochs (docs/benchmarks.md): warm-up 0 and the
    # 32,768-key queue collapse (z_std 0.0008); warm-up 1 and queue 2,048 learn (39.7% -> 40.1%)
    lines = []
    cfg = resolved("mocov2", 3, n_train=10_000, log=lines.append)
    assert cfg.optim.warmup_epochs == 1 and cfg.method.queue_size == 2048
    assert "queue_size 32768 -> 2048" in lines[0] and "warmup_epochs 10 -> 1" in lines[0]
    assert resolved("simclr", 3, n_train=10_000).optim.warmup_epochs == 0  # the floor is MoCo's alone
    assert resolved("mocov2", 1, n_train=10_000).optim.warmup_epochs == 0  # a 1-epoch run cannot warm up
    assert resolved("mocov2", 50, n_train=10_000).optim.warmup_epochs == 5
    cfg = Config.from_dict({"data": {"dataset": "cifar10"}, "method": {"method": "mocov2", "queue_size": 8192},
                            "optim": {"warmup_epochs": 0}, "train": {"epochs": 3}})
    user = resolve(cfg, 32, n_train=10_000)
    assert (user.method.queue_size, user.optim.warmup_epochs) == (8192, 0)
    assert resolved("mocov2", None, n_train=10_000).method.queue_size == 32768  # long runs: the published queue


def test_short_run_queue_rule():
    assert [smaller_queue(32768, n) for n in (200_000, 50_000, 10_000, 4_000, 500)] == [32768, 8192, 2048, 512, 256]
    recipe = {"method": {"queue_size": 32768}, "train": {"batch_size": 512}}
    assert short_run_recipe(recipe, 5, None)[0]["method"]["queue_size"] == 32768  # dataset size unknown: kept
