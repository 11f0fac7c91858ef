"""`sslab train` and `sslab methods`: the run spec's settings as flags, read back into a `Config`."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any, Sequence

from sslab.config import FIXED, Config, flatten, upgrade_layout
from sslab.errors import ConfigError
from sslab.methods import METHODS, MethodSettings
from sslab.pretrain import fit
from sslab.recipe import auto_preset, fit_to_data
from sslab.settings import add_flags, flag, names_of, read_yaml_file, types_of, unwrap_optional

SECTION_TITLES = {"data": "data settings", "model": "model settings", "augment": "augmentation settings (default: "
                  "the method's preset for the image size, docs/methods.md)", "train": "training settings"}


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a self-supervised method; writes a run folder",
                       description="Train a method. Every setting is a flag and a YAML key; --config FILE.yaml sets "
                                   "many at once (flags override it). Settings left out come from the method's recipe "
                                   "for the data (`sslab methods`); the run folder's config.yaml holds the values used.")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly where it stopped; only "
                   "--epochs, --time-limit, --device and the logging flags may change")
    p.add_argument("--config", metavar="FILE", help="a YAML file of settings in sections (data, model, method, "
                   "augment, train); flags override it")
    add_run_flags(p)
    p.set_defaults(handler=train_command)

    p = sub.add_parser("methods", help="list the methods and their recipe for a dataset and image size",
                       description="Every method with its settings as a run on that data starts with them (the "
                                   "recipe for the image size, sslab/recipe.py; a short run changes more).")
    p.add_argument("--dataset", default="cifar10", help="show the recipe for this dataset; default: cifar10")
    p.add_argument("--image-size", type=int, default=32, help="show the recipe for images of this side in pixels "
                   "(above 64: the methods' ImageNet recipes); default: 32")
    p.set_defaults(handler=methods_command)


def add_run_flags(p: argparse.ArgumentParser, sections: Sequence[str] = ("data", "model", "method", "augment",
                                                                           "train")) -> None:
    """One flag per setting of `sections`: the fixed sections' and, for `method`, every method's (a flag of
    several methods once, its help naming them and their defaults)."""
    for section in sections:
        if section == "method":
            add_method_flags(p)
        else:
            add_flags(p.add_argument_group(SECTION_TITLES[section]), FIXED[section])


def add_method_flags(p: argparse.ArgumentParser) -> None:
    names = METHODS.names()
    p.add_argument("--method", metavar="{" + ",".join(names) + "}", default=argparse.SUPPRESS,
                   help="the self-supervised method (`sslab methods` shows their recipes); choices: "
                        f"{', '.join(names)}; default: asked on a terminal")
    instances = {m: METHODS.get(m).Settings() for m in names}
    group = p.add_argument_group("recipe settings of every method (default: the method's recipe, `sslab methods`)")
    add_flags(group, MethodSettings, defaults={n: per_method(instances, n) for n in names_of(MethodSettings)})
    group = p.add_argument_group("method settings (each names the methods that have it; a flag of another method is "
                                 "refused)")
    shared = set(names_of(MethodSettings))
    seen: dict[str, type] = {}
    for m in names:
        cls = type(instances[m])
        for name in names_of(cls):
            if name in shared:
                continue
            if name in seen:
                assert _flag_kind(seen[name], name) == _flag_kind(cls, name), \
                    f"{flag(name)} is a {_flag_kind(seen[name], name)} in one method and not in {m}"
                continue
            seen[name] = cls
            owners = [o for o in names if name in names_of(instances[o])]
            add_flags(group, cls, names=[name], defaults={name: per_method(instances, name)},
                      extra={name: f"a setting of {', '.join(owners)}"})


def _flag_kind(cls: type, name: str) -> str:
    return "switch" if unwrap_optional(types_of(cls)[name])[0] is bool else "value"


def per_method(instances: dict[str, MethodSettings], name: str) -> str:
    """"0.9" when every method that has `name` agrees, else "byol 256, simsiam 2048, ..."."""
    values = {m: _text(getattr(s, name)) for m, s in instances.items() if name in names_of(s)}
    if len(set(values.values())) == 1:
        return next(iter(values.values()))
    return ", ".join(f"{m} {v}" for m, v in values.items())


def _text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


# ---- flags (and --config) -> the run spec ----------------------------------------------------------------------
def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags (by name, raw)."""
    skip = {"command", "handler", "config", "resume"}
    return {k: v for k, v in vars(args).items() if k not in skip}


def spec_from_args(args: argparse.Namespace) -> Config:
    """--config FILE (if given) overridden by the flags given; the method asked for on a terminal if neither
    names one."""
    values = flatten(upgrade_layout(read_yaml_file(args.config), args.config), args.config) if args.config else {}
    where = {key: args.config for key in values}
    flags = given_settings(args)
    if values and flags.get("method", values.get("method")) is not None:  # the file's values are read even where
        Config.from_values({**values, "method": flags.get("method", values.get("method"))}, where)  # a flag wins
    values.update(flags)
    where.update({key: "command line" for key in flags})
    if values.get("method") is None and sys.stdin.isatty() and sys.stdout.isatty():
        values["method"] = ask_method()
    return Config.from_values(values, where=where)


def ask_method() -> str:
    """The original tool asked which method to train; we ask only on an interactive terminal."""
    names = METHODS.names()
    print("Which method? " + "  ".join(f"[{i + 1}] {n}" for i, n in enumerate(names)))
    while True:
        answer = input("method> ").strip().lower()
        if answer in names:
            choice = answer
        elif answer.isdigit() and 1 <= int(answer) <= len(names):
            choice = names[int(answer) - 1]
        else:
            print(f"type a number 1-{len(names)} or a name")
            continue
        print(f"(next time pass: --method {choice})")
        return choice


def train_command(args: argparse.Namespace) -> int:
    if args.resume:
        if args.config:
            raise ConfigError("--config cannot be combined with --resume (the run goes on with its own config.yaml); "
                              "drop --config, or start a new run")
        summary = fit(resume=args.resume, changes=given_settings(args))  # Interrupted: the CLI says so
    else:
        summary = fit(spec_from_args(args))
    if os.environ.get("RANK", "0") == "0":  # once under torchrun
        print(summary_table(summary))
    return 0


def summary_table(summary: dict) -> str:
    """The end of `sslab train`: the learned kNN beside its two baselines, and how long it took."""
    def pct(value) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    rows = [("kNN top-1, learned", pct(summary.get("knn_top1"))),
            ("kNN top-1, untrained network", pct(summary.get("knn_top1_init"))),
            ("kNN top-1, raw pixels", pct(summary.get("knn_top1_pixels"))),
            ("epochs", str(summary.get("epochs"))),
            ("median epoch", "-" if summary.get("epoch_seconds_median") is None
             else f"{summary['epoch_seconds_median']:.1f} s"),
            ("time this session", f"{summary.get('wall_seconds_this_session', 0):.0f} s"),
            ("run folder", str(summary.get("run_dir")))]
    width = max(len(name) for name, _ in rows)
    note = below_pixels_note(summary)
    return "\n".join([f"{name:<{width}}  {value}" for name, value in rows] + ([note] if note else []))


def below_pixels_note(summary: dict) -> str | None:
    """One line when the learned kNN ends below the raw pixels': what happened and one thing to try."""
    learned, pixels = summary.get("knn_top1"), summary.get("knn_top1_pixels")
    if learned is None or pixels is None or learned >= pixels:
        return None
    epochs = summary.get("epochs") or 1
    return (f"note: the learned features end below the raw pixels ({100 * learned:.1f}% < {100 * pixels:.1f}% kNN); "
            f"{epochs} epoch{'s' if epochs != 1 else ''} is a short run: try --epochs {max(20, 4 * epochs)} "
            "(on small, centred images the raw pixels are a strong reference; docs/methods.md, The demo)")


# ---- sslab methods --------------------------------------------------------------------------------------------
def methods_command(args: argparse.Namespace) -> int:
    for name in METHODS.names():
        cfg = fit_to_data(Config.from_values({"method": name, "dataset": args.dataset}), args.image_size)
        print(f"{name:9s} {method_summary(name)}\n          {recipe_line(cfg, auto_preset(cfg, args.image_size))}")
    return 0


def method_summary(name: str) -> str:
    """The first line of the method file's docstring."""
    module = sys.modules[METHODS.get(name).__module__]
    return (module.__doc__ or "").strip().splitlines()[0]


def recipe_line(cfg: Config, preset: str) -> str:
    """The method's settings as a run on that data starts with them, then its augmentation preset's values."""
    method = ", ".join(f"{k}={_text(v)}" for k, v in dataclasses.asdict(cfg.method).items())
    a = cfg.augment
    augment = (f"crop_scale={_text(a.crop_scale)}, flip_p={a.flip_p}, jitter={_text(a.jitter)}, blur_p={a.blur_p}, "
               f"solarize_p={a.solarize_p}")
    return f"{method}; augment: {preset} ({augment})"


__all__ = ["add_commands", "add_run_flags", "spec_from_args", "given_settings", "summary_table"]
