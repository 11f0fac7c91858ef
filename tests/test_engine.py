"""The training engine's pieces: the compiled step, the batch source, the epoch means, the compile modes."""
from __future__ import annotations

import pytest
import torch

from sslab.augment.views import ViewMaker
from sslab.config import Config
from sslab.device import Precision
from sslab.errors import ConfigError
from sslab.kit import BatchSource, accumulate, epoch_means
from sslab.methods.build import build_method
from sslab.pretrain import TrainStep, build_optimizer, compiled
from sslab.recipe import fit_to_data


def tiny(compile_mode: str = "off"):
    cfg = Config.from_dict({"data": {"dataset": "digits"}, "model": {"backbone": "simple-cnn"},
                            "method": {"method": "simsiam", "proj_hidden": 16, "proj_dim": 16, "pred_hidden": 8},
                            "train": {"batch_size": 16, "epochs": 1, "compile": compile_mode}})
    cfg = fit_to_data(cfg, 8)
    torch.manual_seed(0)
    return cfg, build_method(cfg, 1, 8)


def one_step(forward_of, seed: int = 0) -> tuple[float, float]:
    """The losses of the first two training steps on fixed batches, the model called through `forward_of(model)`."""
    cfg, model = tiny()
    opt, lr_at = build_optimizer(model, cfg, steps_per_epoch=4)
    views = ViewMaker(model.view_specs(8), cfg.augment, 8, (0.5,), (0.25,))
    images = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    step = TrainStep(model=model, forward=forward_of(model), opt=opt, views=views, aug_gen=torch.Generator().manual_seed(1),
                     images=images, lr_at=lr_at, peak_lr=0.05, precision=Precision("fp32", torch.device("cpu")),
                     channels_last=False, steps_per_epoch=4, total_steps=4)
    first = step(torch.arange(16), 0)["loss"].item()
    second = step(torch.arange(16, 32), 1)["loss"].item()  # after one optimiser step through the compiled graph
    return first, second


def test_compiled_step_computes_the_eager_loss():
    """torch.compile traces the method's forward (static shapes: full batches) to the same losses. The
    aot_eager backend checks the tracing in seconds; the C++ inductor backend (`--compile default`) is the
    slow test below (~8 min to compile on 2 busy CPU cores)."""
    eager = one_step(lambda model: model)
    traced = one_step(lambda model: torch.compile(model, backend="aot_eager", fullgraph=True))
    assert traced == pytest.approx(eager, rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_compile_default_mode_matches_eager():
    eager = one_step(lambda model: model)
    cfg, _ = tiny("default")
    inductor = one_step(lambda model: compiled(model, cfg, torch.device("cpu"), world=1))
    assert inductor == pytest.approx(eager, rel=1e-4, abs=1e-5)


def test_compile_modes_and_old_yaml_values():
    old = {"method": {"method": "simsiam"}, "optim": {}}  # sslab 0.1's layout wrote compile: true/false
    assert Config.from_dict({**old, "train": {"compile": True}}).train.compile == "default"
    assert Config.from_dict({**old, "train": {"compile": False}}).train.compile == "off"
    cfg = Config.from_dict({"train": {"compile": "fast"}, "method": {"method": "simsiam"}})
    with pytest.raises(ConfigError, match="--compile 'fast': must be one of off, default, max-autotune or reduce-overhead"):
        cfg.check()


def test_batch_source_slices_each_global_batch_over_ranks():
    order = torch.randperm(40, generator=torch.Generator().manual_seed(3))
    parts = [BatchSource(40, 8, seed=0, device=torch.device("cpu"), rank=r, world=2) for r in range(2)]
    assert parts[0].steps_per_epoch == 5  # the last partial batch is dropped
    for step in range(5):
        both = torch.cat([p.indices(order, step) for p in parts])
        assert torch.equal(both, order[step * 8:(step + 1) * 8])
    a, b = (BatchSource(40, 8, seed=7, device=torch.device("cpu")) for _ in range(2))
    assert torch.equal(a.order(), b.order()) and not torch.equal(a.order(), a.order().sort().values)


def test_epoch_means_of_scalar_and_per_head_metrics():
    sums: dict[str, torch.Tensor] = {}
    for loss, heads in ((1.0, [1.0, 3.0]), (3.0, [5.0, 7.0])):
        accumulate(sums, {"loss": torch.tensor(loss), "head_losses": torch.tensor(heads)})
    assert epoch_means(sums, 2) == {"head_losses": [3.0, 5.0], "loss": 2.0}


@pytest.mark.parametrize("command, options", [
    ("train", {"--dataset": "digits", "--method": "simsiam", "--backbone": "resnet18", "--optimizer": "lars",
               "--precision": "bf16", "--compile": "reduce-overhead", "--stem": "cifar", "--device": "cuda:N",
               "--preset": "crop-flip", "--third-view": "strong", "--train-split": "unlabeled"}),
    ("scan", {"--cluster-augment": "weak", "--selflabel-augment": "none", "--precision": "fp32", "--device": "cpu"}),
    ("eval", {"--protocol": "standard", "--classifier": "svm", "--transfer-dataset": "cifar10"}),
])
def test_help_names_the_choices_and_says_what_each_flag_does(command, options):
    from sslab.cli import build_parser

    parser = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == command)[1]
    actions = {s: a for a in parser._actions for s in a.option_strings}
    for flag, choice in options.items():
        assert "choices:" in actions[flag].help and choice in actions[flag].help, (flag, actions[flag].help)
    for flag, action in actions.items():
        if flag.startswith("--") and not flag.startswith("--no-") and flag != "--help":
            assert action.help and not action.help.startswith("default:"), f"{command} {flag} has no description"


def test_a_method_owns_its_augmentation_and_one_that_declares_none_gets_the_standard_one():
    from sslab.augment import AugmentConfig, preset, preset_names
    from sslab.errors import ConfigError
    from sslab.methods.base import Method, MethodSettings
    from sslab.recipe import auto_preset
    from sslab.registry import METHODS

    def spec(method):
        return Config.from_values({"method": method})

    assert auto_preset(spec("phinet"), 32) == "simsiam-small" and auto_preset(spec("byol"), 96) == "byol-large"
    with pytest.raises(ConfigError, match="unknown method 'moco'"):
        spec("moco")  # no silent fallback to SimSiam's augmentation

    class Plain(Method):  # registered without saying how it augments
        pass

    METHODS.register("test-plain")(Plain)
    try:
        assert Plain.Settings is not MethodSettings and Plain.Settings.method == "test-plain"
        assert auto_preset(spec("test-plain"), 32) == "test-plain-small" and "test-plain-large" in preset_names()
        assert preset("test-plain-small") == AugmentConfig("test-plain-small")  # the standard augmentation
    finally:
        METHODS._entries.pop("test-plain", None)
