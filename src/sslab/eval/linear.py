"""Linear probes on a frozen backbone (docs/methods.md, "Evaluation protocols"). Two protocols, always named:

- fast: features extracted once (no augmentation); a multinomial logistic regression (full-batch L-BFGS in
  torch, on the device) or a linear SVM (scikit-learn's LinearSVC) on standardised, PCA-whitened features.
  The regularisation C is chosen on a stratified validation split carved from the TRAIN split, then the
  probe is refit on the whole train split; the test split is only ever used for the final number. The grid
  is walked from the smallest C up and the walk stops once two values in a row score below the best so far
  (validation accuracy rises then falls with C, and the large C values are the slow fits: on the demo's
  pixels C = 10 and 100 took two thirds of the probe's time and scored 11 points below C = 0.01).
- standard: a linear layer trained for 100 epochs with SGD (momentum 0.9, cosine lr, batch 256) on the
  frozen backbone's features of crop + flip views, augmented in batches on the device. Its
  hyper-parameters are fixed, not tuned. The layer sees the features through a fixed whitening measured on
  augmented train views (a role BatchNorm without affine parameters plays in MAE's probe; whitening also
  undoes the strong correlation of self-supervised features, which leaves plain SGD crawling), folded into
  the layer afterwards, so the result is a plain linear map of the backbone features.

Every probe is returned as `ProbeWeights` (a linear map on raw backbone features), which `attention` uses
for Grad-CAM.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sslab.augment import PRESETS, Augmenter
from sslab.data.prepare import stratified_split
from sslab.eval.features import autocast_for
from sslab.kit import BatchSource, EpochLoop, LoopCheckpoint, LoopPosition, LoopSettings, matching_checkpoint
from sslab.optim import cosine_lr, set_lr

# C (inverse regularisation) tried on the validation split; LinearSVC is slow to converge at large C
DEFAULT_C_GRIDS = {"logistic": (0.01, 0.1, 1.0, 10.0, 100.0), "svm": (0.001, 0.01, 0.1)}
C_PATIENCE = 2  # the walk up the C grid stops after this many values in a row below the best
WHITEN_FLOOR = 1e-4
STD_FLOOR = 0.1  # the standard probe's whitening: no direction enlarged more than ~3x
WHITEN_MAX_DIM = 4096
ABSENT_CLASS_BIAS = -1e4  # a class the probe never saw in training is never predicted


@dataclass
class ProbeWeights:
    """logits = features @ weight.T + bias; weight (num_classes, D), bias (num_classes,), float32 CPU."""

    weight: torch.Tensor
    bias: torch.Tensor

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features.float() @ self.weight.to(features.device).T + self.bias.to(features.device)

    def as_linear(self) -> nn.Linear:
        layer = nn.Linear(self.weight.shape[1], self.weight.shape[0])
        with torch.no_grad():
            layer.weight.copy_(self.weight)
            layer.bias.copy_(self.bias)
        return layer

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight.cpu(), "bias": self.bias.cpu()}


@dataclass
class ProbeResult:
    probe: ProbeWeights
    details: dict = field(default_factory=dict)  # chosen C, validation scores, sizes, schedule, seconds


# ---- fast protocol: cached features ----------------------------------------------------------------------------
def logistic_regression(x: torch.Tensor, y: torch.Tensor, num_classes: int, c: float,
                        init: torch.Tensor | None = None, max_iter: int = 300) -> torch.Tensor:
    """Multinomial logistic regression by full-batch L-BFGS on x's device; returns W (D + 1, K), bias last.

    Minimises scikit-learn's objective divided by C * N: mean cross-entropy + ||W_no_bias||^2 / (2 C N).
    `init` warm-starts (the C grid is walked upwards, each fit starting from the last).
    """
    n = len(x)
    xa = torch.cat([x, torch.ones(n, 1, device=x.device, dtype=x.dtype)], dim=1)  # N x (D + 1)
    w = (init.clone() if init is not None else torch.zeros(xa.shape[1], num_classes, device=x.device, dtype=x.dtype))
    w.requires_grad_(True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=max_iter, tolerance_grad=1e-6, tolerance_change=1e-9,
                            history_size=20, line_search_fn="strong_wolfe")
    penalty = 1.0 / (2 * c * n)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xa @ w, y) + penalty * w[:-1].pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach()


def _linear_svm(x: torch.Tensor, y: torch.Tensor, num_classes: int, c: float, seed: int) -> torch.Tensor:
    """scikit-learn's LinearSVC (one-vs-rest, squared hinge) -> W (D + 1, K), bias last."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    yn = y.cpu().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LinearSVC(C=c, max_iter=1000, random_state=seed).fit(x.cpu().numpy(), yn)
    coef, intercept = np.asarray(clf.coef_), np.asarray(clf.intercept_)
    seen = np.asarray(clf.classes_)
    if coef.shape[0] == 1:  # two classes: one score for the second class, the first one's is 0
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.array([0.0, intercept[0]])
    w = np.zeros((coef.shape[1] + 1, num_classes))
    w[-1] = ABSENT_CLASS_BIAS
    w[:-1, seen], w[-1, seen] = coef.T, intercept
    return torch.from_numpy(w).to(x.device, x.dtype)


def _fit(kind: str, x: torch.Tensor, y: torch.Tensor, num_classes: int, c: float, seed: int,
         init: torch.Tensor | None = None) -> torch.Tensor:
    if kind == "logistic":
        return logistic_regression(x, y, num_classes, c, init)
    if kind == "svm":
        return _linear_svm(x, y, num_classes, c, seed)
    raise ValueError(f"unknown classifier {kind!r}; use logistic or svm")


def _scores(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return x @ w[:-1] + w[-1]


def walk_c_grid(grid: Sequence[float], score: Callable[[float], float]) -> dict[str, float]:
    """{f"{c:g}": score(c)} for C up the sorted grid, stopping once C_PATIENCE values in a row score below the
    best so far (past the peak larger C only fits slower)."""
    scores: dict[str, float] = {}
    for c in grid:
        scores[f"{c:g}"] = score(c)
        values = list(scores.values())
        if len(values) - 1 - values.index(max(values)) >= C_PATIENCE:
            break
    return scores


def fit_fast_probe(train_features: torch.Tensor, train_labels: torch.Tensor, num_classes: int,
                   classifier: str, c_grid: Sequence[float] | None, val_fraction: float,
                   seed: int) -> ProbeResult:
    """Pick C on a stratified validation split of the train features, refit on all of them.

    Labelled train features only (label >= 0), standardised and PCA-whitened with the fitting set's statistics
    (`Whitening`; without it L-BFGS needs thousands of steps on the ill-conditioned features of a
    self-supervised backbone). `logistic`: full-batch L-BFGS in torch on the features' device; `svm`:
    scikit-learn's LinearSVC. Returns the probe as one linear map on raw features and, in `details`, the
    validation accuracy of every C tried (`walk_c_grid`).
    """
    start = time.perf_counter()
    keep = train_labels >= 0
    x = train_features[keep].float()
    y = train_labels[keep].to(x.device)
    grid = sorted(c_grid if c_grid else DEFAULT_C_GRIDS[classifier])
    val_scores: dict[str, float] = {}
    n_val = 0
    if len(grid) > 1 and val_fraction > 0:
        fit_idx, val_idx = (t.to(x.device) for t in stratified_split(y.cpu(), val_fraction, seed))
        n_val = len(val_idx)
        if n_val == 0 or len(torch.unique(y[fit_idx])) < 2:
            grid = [grid[len(grid) // 2]]  # too few images to validate: the middle of the grid
            n_val = 0
        else:
            white = Whitening.fit(x[fit_idx])
            xf, xv = white(x[fit_idx]), white(x[val_idx])
            last = {"w": None}

            def validation_accuracy(c: float) -> float:  # each fit starts from the last (warm start)
                last["w"] = _fit(classifier, xf, y[fit_idx], num_classes, c, seed, init=last["w"])
                return (_scores(last["w"], xv).argmax(1) == y[val_idx]).float().mean().item()

            val_scores = walk_c_grid(grid, validation_accuracy)
    best_c = max(grid, key=lambda c: val_scores.get(f"{c:g}", 0.0)) if val_scores else grid[0]
    white = Whitening.fit(x)
    w = _fit(classifier, white(x), y, num_classes, best_c, seed)
    probe = white.fold(w)
    details = {"preprocessing": white.describe(), "c": best_c,
               "c_grid": sorted(c_grid if c_grid else DEFAULT_C_GRIDS[classifier]),
               "validation_accuracy_by_c": val_scores, "validation_size": n_val, "validation_fraction": val_fraction,
               "solver": "full-batch L-BFGS (torch)" if classifier == "logistic" else "scikit-learn LinearSVC",
               "selection": "C with the best accuracy on a stratified validation split of train, walking the grid "
                            f"up until {C_PATIENCE} values in a row score below the best; refit on all of train",
               "seconds": time.perf_counter() - start}
    return ProbeResult(probe, details)


@dataclass
class Whitening:
    """x -> ((x - mean) / std) @ P: standardise, then PCA-whiten, P = V diag((eig + floor)^-1/2) with the
    eigenvalues floored at WHITEN_FLOOR x the largest. Each dimension's std is floored at STD_FLOOR x the
    median std, so a nearly dead ReLU unit is not enlarged without bound (on fresh augmented views it is not
    dead, and one such sample made SGD diverge). Above WHITEN_MAX_DIM features only the standardisation is
    applied (the eigendecomposition would cost more than it saves)."""

    mean: torch.Tensor
    proj: torch.Tensor  # D x D, or (D,) per-dimension scales without the PCA part

    @classmethod
    def fit(cls, x: torch.Tensor) -> "Whitening":
        mean = x.mean(dim=0)
        z = (x - mean).double()
        std = z.std(dim=0)
        std = std.clamp_min(STD_FLOOR * std.median().clamp_min(1e-12))
        if x.shape[1] > WHITEN_MAX_DIM:
            return cls(mean, (1 / std).float())
        z = z / std
        eig, vec = torch.linalg.eigh(z.T @ z / len(z))  # D, D x D
        proj = vec * (eig.clamp_min(0) + WHITEN_FLOOR * eig.max().clamp_min(1e-12)).rsqrt()
        return cls(mean, (proj / std[:, None]).float())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        z = x - self.mean
        return z @ self.proj if self.proj.ndim == 2 else z * self.proj

    def fold(self, w: torch.Tensor) -> ProbeWeights:
        """A classifier W (D' + 1, K) on whitened features -> the same map on raw features."""
        a = self.proj @ w[:-1] if self.proj.ndim == 2 else w[:-1] * self.proj[:, None]  # D x K
        return ProbeWeights(a.T.float().cpu().contiguous(), (w[-1] - self.mean @ a).float().cpu())

    def describe(self) -> str:
        what = "standardised and PCA-whitened" if self.proj.ndim == 2 else "standardised"
        return (f"{what} (train statistics; std floored at {STD_FLOOR:g} x the median, eigenvalues at "
                f"{WHITEN_FLOOR:g} x the largest)")


# ---- standard protocol: SGD on augmented views through the frozen backbone -------------------------------------
def crop_flip_augmenter(image_size: int, mean: Sequence[float], std: Sequence[float],
                        crop_scale: tuple[float, float] | None = None, flip_p: float | None = None) -> Augmenter:
    """The probe's crop + flip (the "crop-flip" preset); the crop scale and flip probability can follow the
    run's (digits train without flips: a flipped 2 is not a 2)."""
    import dataclasses

    params = PRESETS["crop-flip"]
    changes = {k: v for k, v in (("crop_scale", tuple(crop_scale) if crop_scale else None), ("flip_p", flip_p))
               if v is not None}
    return Augmenter(dataclasses.replace(params, **changes), image_size, mean, std)


def train_standard_probe(backbone: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                         mean: Sequence[float], std: Sequence[float], epochs: int, batch_size: int,
                         lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                         crop_scale: tuple[float, float] | None = None, flip_p: float | None = None, seed: int = 0,
                         bf16: bool | None = None, log: Callable[[str], None] | None = None,
                         reference: ProbeWeights | None = None, loop: LoopSettings | None = None,
                         name: str = "linear-standard", identity: dict[str, Any] | None = None,
                         keep_checkpoint: bool = False) -> ProbeResult:
    """SGD on a linear layer over the frozen backbone (eval mode) fed crop + flip views made on its device.

    `images` uint8 (N, C, H, W), `labels` (N,); unlabelled images (-1) are left out. The layer reads the
    features through a fixed `Whitening` measured on one pass of augmented train views before training
    (SGD on raw or BatchNorm-ed features of a self-supervised backbone crawls: they are strongly
    correlated); the whitening is folded into the layer afterwards. lr is `lr * batch_size / 256`,
    cosine-annealed to 0 per step, no warm-up. Runs on the kit's epoch loop: with `loop.checkpoint` it
    resumes exactly after a signal or `--time-limit`, and a NaN loss stops it. `name` labels its progress lines;
    `identity` (what the features come from, e.g. a hash) goes into the checkpoint's settings, so a checkpoint
    resumes only into the same probe; `keep_checkpoint`: leave the final checkpoint for the caller to remove
    once the result is saved (resuming from it returns the result without training).

    `details` says how far the probe got: its accuracy on the views of the last epoch and, given a
    `reference` probe (the fast probe, fitted on clean features), that probe's accuracy on one pass of views:
    when it is low, the backbone maps the views far from the clean images and no probe trained on views can
    match the fast probe (measured on the demo: a fast probe at 89% on clean test images classified the crop
    views of its own train images at 33%).
    """
    start = time.perf_counter()
    loop = loop or LoopSettings()
    say = log or (lambda message: None)
    device = next(backbone.parameters()).device
    keep = labels >= 0
    images, labels = images[keep].to(device), labels[keep].to(device)
    n = len(images)
    augment = crop_flip_augmenter(images.shape[-1], mean, std, crop_scale, flip_p)
    gen = torch.Generator(device=device)  # sample order and views
    gen.manual_seed(seed)
    source = BatchSource(n, min(batch_size, n), seed, device, flag="--probe-batch-size", generator=gen)
    batch, total = source.batch_size, epochs * source.steps_per_epoch
    torch.manual_seed(seed)
    was_training = backbone.training
    backbone.eval()
    features_of_views = view_features(backbone, images, augment, gen, bf16)
    settings = {"protocol": "linear-standard", "n": n, "epochs": epochs, "batch_size": batch, "lr": lr,
                "momentum": momentum, "weight_decay": weight_decay, "seed": seed, "augment": repr(augment.params),
                **({"identity": identity} if identity else {})}
    state = matching_checkpoint(loop.checkpoint, settings, say)
    try:
        white, reference_on_views = probe_whitening(state, features_of_views, labels, batch, reference)
        head = nn.Linear(len(white.mean), num_classes).to(device)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        peak = lr * batch / 256
        opt = torch.optim.SGD(head.parameters(), lr=peak, momentum=momentum, weight_decay=weight_decay)

        def step(idx: torch.Tensor, global_step: int) -> dict[str, torch.Tensor]:
            feats = white(features_of_views(idx))
            set_lr(opt, cosine_lr(global_step, total, peak))
            logits = head(feats)
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return {"loss": loss.detach(), "accuracy": (logits.detach().argmax(1) == labels[idx]).float().mean()}

        fixed = {"whitening": {"mean": white.mean.cpu(), "proj": white.proj.cpu()},
                 "reference_on_views": reference_on_views}
        losses, last = run_probe_loop(name, epochs, source, head, opt, gen, settings, state, loop, step, fixed, say,
                                      every=max(1, epochs // 5), keep_checkpoint=keep_checkpoint)
    finally:
        backbone.train(was_training)
    with torch.no_grad():
        probe = white.fold(torch.cat([head.weight.T, head.bias[None]]))
    details = {"epochs": epochs, "batch_size": batch, "steps": total, "optimizer": "sgd", "lr": peak, "base_lr": lr,
               "momentum": momentum, "weight_decay": weight_decay, **probe_details(augment, white),
               "train_loss_by_epoch": losses, "train_accuracy_last_epoch": last.get("accuracy"),
               "reference_accuracy_on_views": reference_on_views, "seconds": time.perf_counter() - start}
    return ProbeResult(probe, details)


def standard_probe_seconds(backbone: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float],
                           std: Sequence[float], epochs: int, batch_size: int,
                           crop_scale: tuple[float, float] | None = None, flip_p: float | None = None,
                           bf16: bool | None = None, steps: int = 3) -> float:
    """The standard probe's wall time on this device, estimated from `steps` timed steps (views, frozen
    backbone, a linear head's SGD step; after one warm-up step): the median step x (the epochs' steps + one
    pass for the whitening). Leaves the global random state and the backbone's mode as they were."""
    from sslab import device as dev

    device = next(backbone.parameters()).device
    n = int((labels >= 0).sum())
    if n == 0:
        return 0.0
    batch = min(batch_size, n)
    first = torch.nonzero(labels >= 0).flatten()[:batch * (steps + 1)]  # indices: no copy of the whole dataset
    sample = images[first.to(images.device)].to(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    features_of_views = view_features(backbone, sample, crop_flip_augmenter(images.shape[-1], mean, std, crop_scale,
                                                                            flip_p), gen, bf16)
    was_training = backbone.training
    backbone.eval()
    head, times = None, []
    try:
        for i in range(steps + 1):
            start = time.perf_counter()
            feats = features_of_views(torch.arange(i * batch, (i + 1) * batch, device=device) % len(sample))
            head = head or nn.Linear(feats.shape[1], 10).to(device)
            head.zero_grad(set_to_none=True)
            head(feats).square().mean().backward()  # the head's backward and update cost next to nothing
            dev.sync(device)
            times.append(time.perf_counter() - start)
    finally:
        backbone.train(was_training)
    per_step = float(np.median(times[1:]))
    return per_step * (epochs * (n // batch) + -(-n // batch))


def probe_details(augment: Augmenter, white: Whitening) -> dict[str, Any]:
    """The standard probe's fixed protocol, as eval.json records it."""
    p = augment.params
    return {"schedule": "cosine per step, no warm-up",
            "augmentation": {"crop_scale": list(p.crop_scale), "crop_ratio": list(p.crop_ratio), "flip_p": p.flip_p},
            "head": "Linear on features " + white.describe().replace(
                "train statistics", "statistics of one pass of augmented train views") + ", folded afterwards",
            "selection": "fixed hyper-parameters, nothing tuned"}


def view_features(backbone: nn.Module, images: torch.Tensor, augment: Augmenter, gen: torch.Generator,
                  bf16: bool | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """indices (B,) -> the frozen backbone's features (B, D) of crop + flip views of those images, made on
    the device with `gen`."""
    device = next(backbone.parameters()).device

    def features_of_views(idx: torch.Tensor) -> torch.Tensor:
        views = augment(images[idx], gen)  # B x C x H x W, normalised
        with torch.no_grad(), autocast_for(device, bf16):
            return backbone(views).float()  # B x D

    return features_of_views


def probe_whitening(state: dict[str, Any] | None, features_of_views: Callable[[torch.Tensor], torch.Tensor],
                    labels: torch.Tensor, batch: int, reference: ProbeWeights | None) -> tuple[Whitening, float | None]:
    """`whitening_pass`, or when resuming (`state`, a checkpoint) the whitening measured before training and
    the reference's accuracy on views, as saved (the pass is skipped; the checkpoint restores the generator)."""
    if state is not None and "reference_on_views" in state:
        on_views = state["reference_on_views"]
    else:  # a fresh start; or a checkpoint from before "reference_on_views": the pass only for that figure
        white, on_views = whitening_pass(features_of_views, labels, batch, reference)
        if state is None:
            return white, on_views
    device = labels.device
    return Whitening(state["whitening"]["mean"].to(device), state["whitening"]["proj"].to(device)), on_views


def whitening_pass(features_of_views: Callable[[torch.Tensor], torch.Tensor], labels: torch.Tensor, batch: int,
                   reference: ProbeWeights | None) -> tuple[Whitening, float | None]:
    """The standard probe's `Whitening`, measured on one pass of augmented views of every image, and the
    `reference` probe's accuracy on those views (None without one)."""
    order = torch.arange(len(labels), device=labels.device)
    views = torch.cat([features_of_views(order[i:i + batch]) for i in range(0, len(order), batch)])  # N x D
    on_views = None if reference is None else (reference.logits(views).argmax(1) == labels).float().mean().item()
    return Whitening.fit(views), on_views


def run_probe_loop(name: str, epochs: int, source: BatchSource, model: nn.Module, opt: torch.optim.Optimizer,
                   gen: torch.Generator, settings: dict[str, Any], state: dict[str, Any] | None, loop: LoopSettings,
                   step: Callable[[torch.Tensor, int], dict[str, torch.Tensor]], fixed: dict[str, Any],
                   log: Callable[[str], None], every: int,
                   keep_checkpoint: bool = False) -> tuple[list[float], dict[str, Any]]:
    """The epochs of a probe or fine-tune on the kit's loop: its train loss by epoch and the last epoch's
    means (every metric `step` returns). `model` holds every
    trained weight; `fixed` goes into the checkpoint unchanged (statistics measured before training). The
    checkpoint is removed once the loop is done (the result is the caller's to save), unless `keep_checkpoint`:
    then the caller removes it after saving the result, and a rerun in between resumes at the end (no step).

    A `loop.stop` with a `looping()` context (eval's stop) is told while the loop runs: only then does a
    signal wait for the step to end and a checkpoint; elsewhere it stops at once."""
    ckpt = LoopCheckpoint(loop.checkpoint or Path(f"{name}.pt"), settings, source, gen,
                          state=lambda: {"model": model.state_dict(), "optimizer": opt.state_dict(), **fixed},
                          load=lambda st: (model.load_state_dict(st["model"]), opt.load_state_dict(st["optimizer"])))
    ckpt.extra = {"losses": [], "last": {}}
    pos = ckpt.resume(state, log, name)

    def save(p: LoopPosition) -> None:
        if loop.checkpoint is not None:
            ckpt.save(p)

    def end_epoch(epoch: int, means: dict[str, Any], seconds: float) -> None:
        ckpt.extra["losses"].append(means["loss"])
        ckpt.extra["last"] = means
        if epoch == epochs or epoch % every == 0:
            log(f"  {name} epoch {epoch}/{epochs}: loss {means['loss']:.4f}")

    looping = getattr(loop.stop, "looping", contextlib.nullcontext)
    with looping():
        EpochLoop(stage=name, epochs=epochs, source=source, model=model, stop=loop.stop, checkpoint_path=ckpt.path,
                  resume=loop.resume, nan_hint="lower the probe's learning rate", progress=loop.progress,
                  progress_every=loop.progress_every).run(pos, step, save, end_epoch)
    if loop.checkpoint is not None and not keep_checkpoint:
        loop.checkpoint.unlink(missing_ok=True)
    return list(ckpt.extra["losses"]), dict(ckpt.extra["last"])


# ---- scoring -------------------------------------------------------------------------------------------------
def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, float | None]:
    """{class name: accuracy on that class's test images} (None for a class with no test image)."""
    out: dict[str, float | None] = {}
    for k, name in enumerate(classes):
        mask = labels == k
        out[name] = float((pred[mask] == k).mean()) if mask.any() else None
    return out


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """m[true, predicted] = count."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (labels, pred), 1)
    return m


def predict(probe: ProbeWeights, features: torch.Tensor) -> np.ndarray:
    return probe.logits(features).argmax(dim=1).cpu().numpy()


__all__ = ["ProbeWeights", "ProbeResult", "fit_fast_probe", "train_standard_probe", "crop_flip_augmenter",
           "per_class_accuracy", "confusion_matrix", "predict", "DEFAULT_C_GRIDS", "Whitening", "standard_probe_seconds"]
