"""Resume in one place: a run folder read back into a run spec and a state, checked, and only then accepted.

    resumed = open_run(RUN, {"epochs": 5})   # config.yaml (sslab 0.1's layout translated) + the changes allowed,
                                             # and the last checkpoint; nothing is written
    ...                                      # the caller picks the device, loads the data, builds the model
    resumed.check(data_info)                 # the checkpoint fits config.yaml and the data as loaded now
    pos, baselines = resumed.restore(...)    # model, optimiser, generators, position
    resumed.accept(cfg)                      # only now: config.yaml rewritten with the changes, temp files removed

Nothing is persisted before it is accepted: a resume refused (a flag that would make the run another one, a
device that is not there, data that changed, a checkpoint that does not fit) leaves the run folder as it was.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from sslab.checkpoint import first_line, load_checkpoint
from sslab.config import Config
from sslab.errors import CheckpointError, ConfigError, DataError
from sslab.kit import BatchSource, LoopPosition, restore_position
from sslab.run import RunDir
from sslab.safe_write import write_bytes
from sslab.settings import coerce, dump_yaml, flag, types_of

Log = Callable[[str], None]

# What `--resume` may change: how long and where the run goes on, and what it logs; not what it computes.
RESUME_CHANGES = ("epochs", "time_limit", "device", "progress", "knn_every", "checkpoint_every", "compile",
                  "cache_dir")
# what a hand edit of RUN/config.yaml may change besides those: where the data lives, where runs go
EDITABLE_ON_RESUME = (*RESUME_CHANGES, "data_dir", "download", "out", "name")


def read_config(run_dir: str | Path) -> Config:
    """RUN/config.yaml as a run spec (every setting in it counts as given)."""
    return Config.load(Path(run_dir) / "config.yaml")


def config_changes(old: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    """setting -> (old value, new value) for every setting that differs."""
    a, b = old.values(), new.values()
    return {name: (a.get(name), value) for name, value in b.items() if value != a.get(name)}


def resume_spec(saved: Config, changes: Mapping[str, Any], where: str = "command line") -> tuple[Config, list[str]]:
    """The spec a resumed run continues with: `saved` (its time limit dropped: a limit is the session's that set
    it) with `changes` applied, and one line per change to announce. A change `--resume` does not allow is
    refused with one line naming the flags (the run would silently become another one)."""
    base = saved.with_values(where, time_limit=None)
    order = list(base.values())
    refused = sorted((n for n, v in changes.items() if n not in RESUME_CHANGES and _differs(base, n, v, where)),
                     key=lambda n: order.index(n) if n in order else len(order))
    if refused:
        allowed = ", ".join(flag(n) for n in RESUME_CHANGES)
        raise ConfigError(f"{', '.join(flag(n) for n in refused)} cannot change when resuming (the run goes on with "
                          f"its config.yaml); with --resume only {allowed} apply; start a new run to change the others")
    cfg = base.with_values(where, **changes)
    notes = []
    for name, (old, new) in config_changes(base, cfg).items():
        stretched = "; the learning-rate schedule is stretched to the new length" if name == "epochs" else ""
        notes.append(f"resuming with {flag(name)} {new} (was {'none' if old is None else old}){stretched}")
    return cfg, notes


def _differs(base: Config, name: str, value: Any, where: str) -> bool:
    """Whether setting `name` given as `value` differs from the run's (a setting the run's method does not have
    does)."""
    if name == "method":
        return value != base.method.method
    try:
        obj = base.section_of(name, where)
    except ConfigError:
        return True
    return coerce(value, types_of(type(obj))[name], flag(name)) != getattr(obj, name)


@dataclass
class Resumed:
    """A run folder being resumed: its spec with the changes, what to announce, and its checkpoint (None when the
    run stopped before its first one)."""

    run: RunDir
    cfg: Config
    notes: list[str]
    state: dict[str, Any] | None

    def check(self, data_info: dict[str, Any]) -> None:
        """The checkpoint fits config.yaml and the dataset as loaded now; else one line saying what changed."""
        if self.state is not None:
            check_state(self.state, self.cfg, data_info)

    def restore(self, model: torch.nn.Module, opt: torch.optim.Optimizer, source: BatchSource,
                aug_gen: torch.Generator, reseed: Callable[[int], int], world: int,
                log: Log) -> tuple[LoopPosition, dict[str, Any]]:
        """The checkpoint loaded into the model, optimiser and generators: (position, the run's baselines)."""
        state = self.state
        if state is None:
            return LoopPosition(), {}
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            pos = restore_position(state, source, aug_gen, reseed, world, log)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"checkpoint does not fit this model ({first_line(e)}); "
                                  "resume with the run folder it came from") from None
        return pos, {k: state["loop"].get(k) for k in ("knn_top1_init", "knn_top1_pixels")}

    def accept(self, cfg: Config) -> None:
        """Everything checked: config.yaml now says what the run goes on with; the metrics the checkpoint does not
        cover and the temp files of writes cut short go (rank 0 calls it)."""
        self.run.announce()
        if config_changes(read_config(self.run.path), cfg):
            write_bytes(self.run.config_path, dump_yaml(cfg.to_dict()))
        if self.state is None:  # stopped before its first checkpoint: starts again in its folder
            self.run.truncate_metrics(-1)
        self.run.remove_temp_files()


def open_run(path: str | Path, changes: Mapping[str, Any] | None = None) -> Resumed:
    """A run folder to resume, read (config.yaml and the last checkpoint) and checked against `changes`; nothing
    is written."""
    run = RunDir.existing(path)
    cfg, notes = resume_spec(read_config(run.path), changes or {})
    state = load_checkpoint(run.last_checkpoint) if run.last_checkpoint.exists() else None
    if state is not None and (state.get("method") != cfg.method.method or state.get("backbone") != cfg.model.backbone):
        raise CheckpointError(f"checkpoint is for {state.get('method')}/{state.get('backbone')}, but the run is "
                              f"{cfg.method.method}/{cfg.model.backbone}; resume with the run folder it came from")
    return Resumed(run, cfg, notes, state)


def check_state(state: dict[str, Any], cfg: Config, data_info: dict[str, Any]) -> None:
    """The checkpoint fits the run's spec and its dataset as loaded now; else one line saying what changed."""
    loop = state.get("loop") if isinstance(state.get("loop"), dict) else {}
    where = "mid-epoch" if loop.get("step_in_epoch") else "at an epoch's end"
    if isinstance(state.get("config"), dict):
        edited = {k: v for k, v in config_changes(Config.from_dict(state["config"], "checkpoint"), cfg).items()
                  if k not in EDITABLE_ON_RESUME}
        if edited:
            what = ", ".join(f"{k} {new!r} (the checkpoint has {old!r})" for k, (old, new) in list(edited.items())[:4])
            raise ConfigError(f"config.yaml was changed after the checkpoint ({where}) was taken: {what}; set the "
                              "value(s) back to resume, or start a new run with the new values")
    done = loop.get("epoch")
    if isinstance(done, int) and cfg.method.epochs < done:
        raise ConfigError(f"--epochs {cfg.method.epochs} but the run has finished {done} epochs; pass --epochs {done} "
                          "or more")
    check_same_data(state, data_info)
    check_loop_state(loop, cfg.method.batch_size, data_info.get("train_images"))


def check_loop_state(loop: dict[str, Any], batch_size: int | None, n_train: int | None) -> None:
    """A checkpoint's position fits the data it resumes on: a whole number of finished epochs, a step inside an
    epoch, and (mid-epoch) a sample order that is a permutation of the training images; else CheckpointError
    (resuming would skip or repeat images silently, or stop in an IndexError)."""
    def damaged(what: str) -> CheckpointError:
        return CheckpointError(f"the checkpoint's loop state is damaged: {what}; use another checkpoint "
                               "(checkpoints/epoch_*.pt) or start a new run")

    epoch, step = loop.get("epoch", 0), loop.get("step_in_epoch", 0)
    if not _is_int(epoch) or epoch < 0:
        raise damaged(f"epoch is {epoch!r}, not a count of finished epochs (0 or more)")
    steps = n_train // batch_size if _is_int(n_train) and _is_int(batch_size) and batch_size > 0 else None
    if not _is_int(step) or step < 0 or (steps is not None and step >= max(steps, 1)):
        where = f" 0..{steps - 1} ({steps} steps per epoch of {n_train} images at --batch-size {batch_size})" if steps else ""
        raise damaged(f"step_in_epoch is {step!r}, outside{where or ' 0 or more'}")
    perm = loop.get("perm")
    if step == 0 and perm is None:
        return
    if not isinstance(perm, torch.Tensor) or perm.ndim != 1 or perm.dtype != torch.int64:
        raise damaged("a mid-epoch checkpoint without its sample order")
    if _is_int(n_train) and (len(perm) != n_train or not torch.equal(perm.sort().values, torch.arange(n_train))):
        raise damaged(f"its sample order holds {len(perm)} indices, not an order of the {n_train} training images")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_same_data(state: dict[str, Any], now: dict[str, Any]) -> None:
    then = state.get("data") if isinstance(state.get("data"), dict) else {}
    labels = {"dataset": "dataset", "train_images": "training images", "test_images": "test images",
              "channels": "channels", "image_size": "image size"}
    differences = [f"{label} {then[key]} then, {now[key]} now" for key, label in labels.items()
                   if key in then and key in now and then[key] != now[key]]
    if "classes" in then and list(then["classes"]) != list(now.get("classes", [])):
        differences.append(f"{len(then['classes'])} classes then, {len(now['classes'])} now")
    if differences:
        raise DataError(f"the dataset changed since the checkpoint ({'; '.join(differences)}); "
                        "restore the data as it was to resume, or start a new run on the new data")


def trained_spec(state: dict[str, Any], path: Path) -> tuple[Config, dict[str, Any]]:
    """A checkpoint's run spec and data description (what `eval`, `export`, ... rebuild the model from)."""
    try:
        cfg = Config.from_dict(state["config"], f"checkpoint {path}")
        info = state["data"]
        int(info["channels"]), int(info["image_size"])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise CheckpointError(f"checkpoint {path} lacks its config or data description; pass a checkpoint written "
                              "by `sslab train`") from None
    return cfg, info


__all__ = ["open_run", "Resumed", "resume_spec", "read_config", "config_changes", "check_state", "trained_spec",
           "RESUME_CHANGES", "EDITABLE_ON_RESUME"]
