"""`run_scan(run_dir, cfg)`: SCAN's three stages on a trained run, each resumable, outputs under RUN/scan/.

    mine       K nearest neighbours of every train image in the frozen pretext backbone's feature space
               (+ the k-means baseline on the same features)                     -> neighbors.pt
    cluster    H linear heads (+ the backbone) trained with the SCAN loss; the head with the lowest
               consistency - entropy (weight 1) on the test images and their own 5 neighbours, no labels,
               is kept (reference scan_evaluate)                                 -> cluster.pt
    selflabel  confident pseudo-labels from one view, class-balanced cross-entropy on a strong view
                                                                                 -> selflabel.pt
Each stage checkpoints atomically every epoch (`<stage>.pt`, with optimiser and random-generator state),
appends to `<stage>_metrics.jsonl` and writes TensorBoard scalars under `tensorboard/<stage>`. A rerun skips
finished stages and continues an interrupted one; `restart="cluster"` redoes that stage and the ones after.
Test-split labels (ACC by Hungarian matching, or majority mapping when clusters outnumber classes; NMI; ARI)
are only reported, never used to choose anything; the head is chosen on the test images without their labels.

Outputs: scan.json, config.yaml, clusters.npz, confident_images.png, confusion.png (see `write_outputs`).
"""
from __future__ import annotations

import copy
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from sslab import device as device_lib
from sslab.augment.presets import Augmenter, AugmentParams
from sslab.augment.strong import StrongAugmenter
from sslab.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint
from sslab.data.base import ImageData
from sslab.errors import CheckpointError, ConfigError
from sslab.eval.baselines import below_baseline_sentence, kmeans_record
from sslab.eval.clustering import cached_kmeans, clustering_scores
from sslab.eval.features import extract_features, finite_features, normalize_images
from sslab.kit import BatchSource, EpochLog, EpochLoop, LoopCheckpoint, LoopPosition, StopFlag
from sslab.pretrained import TrainedRun, load_trained, run_folder
from sslab.progress import Heartbeat, heartbeats
from sslab.run import RunDir, check_output_folder
from sslab.safe_write import refuse_links
from sslab.scan.config import STAGES, ScanConfig, stage_settings
from sslab.scan.loss import scan_loss, selflabel_loss
from sslab.scan.model import ClusterModel
from sslab.scan.neighbors import mine_neighbors, neighbor_accuracy, neighbor_pool

Log = Callable[[str], None]
STAGE_FILES = {"mine": ["neighbors.pt"],
               "cluster": ["cluster.pt", "cluster_metrics.jsonl", "tensorboard/cluster"],
               "selflabel": ["selflabel.pt", "selflabel_metrics.jsonl", "tensorboard/selflabel"]}
SETTINGS_BEFORE_THEY_EXISTED = {"head_input": "features"}
OUTPUT_FILES = ["scan.json", "clusters.npz", "confident_images.png", "confusion.png"]


# ---- context ------------------------------------------------------------------------------------
@dataclass
class ScanContext:
    """Everything the stages share: the pretext run, the config, the data on the device."""

    run: TrainedRun
    cfg: ScanConfig
    data: ImageData  # on `device`
    dir: Path  # RUN/scan
    log: Log
    num_clusters: int
    bf16: bool
    channels_last: bool
    pretext_epoch: int
    stop: StopFlag = field(default_factory=StopFlag)  # SIGINT/SIGTERM/--time-limit, checked between steps
    _features: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _last_epoch_line: float = field(default=float("-inf"), repr=False)

    @property
    def device(self) -> torch.device:
        return self.run.device

    def autocast(self):
        return device_lib.autocast(self.device, self.bf16)

    def images(self, split: str) -> torch.Tensor:
        return self.data.train_x if split == "train" else self.data.test_x

    def pretext_features(self, split: str) -> torch.Tensor:
        """The pretext backbone's features (N, D) of the un-augmented `split` images (computed once)."""
        if split not in self._features:
            with Heartbeat(f"scan: pretext features of the {len(self.images(split))} {split} images"):
                self._features[split] = finite_features(self.features(self.run.backbone, self.images(split)),
                                                        f"the checkpoint of {self.run.run_dir}")
        return self._features[split]

    def train_features(self) -> torch.Tensor:
        return self.pretext_features("train")

    def cluster_model(self, heads: int) -> ClusterModel:
        """A fresh clustering model on a copy of the pretext backbone, its heads reading `cfg.head_input`
        ("standardized": with the pretext train features' mean and std, as an affine-free BatchNorm would)."""
        feats = self.train_features().float()
        stats = (feats.mean(dim=0), torch.sqrt(feats.var(dim=0) + 1e-5)) if self.cfg.head_input == "standardized" else None
        return ClusterModel(copy.deepcopy(self.run.backbone), feats.shape[1], self.num_clusters, heads,
                            self.cfg.head_input, stats)

    def features(self, backbone: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        return extract_features(backbone, images, self.data.mean, self.data.std, batch_size=1024, bf16=self.bf16,
                                channels_last=self.channels_last)

    def settings(self, stage: str) -> dict[str, Any]:
        return {**stage_settings(self.cfg, stage), "pretext_epoch": self.pretext_epoch}

    def flip_p(self) -> float:
        if self.cfg.flip_p is not None:
            return self.cfg.flip_p
        run_flip = self.run.cfg.augment.flip_p
        return 0.5 if run_flip is None else float(run_flip)

    def view(self, kind: str) -> Callable[[torch.Tensor, Optional[torch.Generator]], torch.Tensor]:
        """uint8 (B, C, H, W) -> normalised float views: "strong" (RandAugment + Cutout), "weak" (crop + flip,
        the reference's "standard"), "none" (the image itself)."""
        d, cfg = self.data, self.cfg
        if kind == "strong":
            return StrongAugmenter(d.mean, d.std, cfg.strong_ops, self.flip_p(),
                                   int(round(cfg.cutout * d.image_size)))
        if kind == "weak":
            params = AugmentParams("scan-weak", crop_scale=tuple(cfg.weak_crop_scale), flip_p=self.flip_p(),
                                   jitter_p=0.0, grayscale_p=0.0)
            return Augmenter(params, d.image_size, d.mean, d.std)
        return lambda x, generator=None: normalize_images(x, d.mean, d.std)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def generator(self, stage: str) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(self.cfg.seed * 1000 + STAGES.index(stage))
        return g

    def test_scores(self, clusters: np.ndarray) -> Optional[dict[str, Any]]:
        return scores(clusters, self.data.test_y.cpu().numpy(), self.num_clusters, self.data.num_classes)

    def fused(self) -> dict[str, bool]:
        """Adam's fused kernel (one launch for all parameters): on a GPU unless --no-fused, on the CPU with --fused."""
        return device_lib.fused_options(self.device, self.cfg.fused)

    def sync(self) -> None:
        device_lib.sync(self.device)

    def epoch_line(self, line: str, epoch: int, last: int, evaluated: bool) -> None:
        """Log an epoch's line when its test metrics were computed, at the last epoch, or when no epoch line was
        logged for --progress-every seconds: short epochs do not flood the log, long ones all show."""
        now = time.perf_counter()
        if evaluated or epoch == last or now - self._last_epoch_line >= self.cfg.progress_every:
            self._last_epoch_line = now
            self.log(line)


def scores(clusters: np.ndarray, labels: np.ndarray, num_clusters: int, num_classes: int) -> Optional[dict[str, Any]]:
    """ACC/NMI/ARI over the labelled samples (label >= 0); None when there are none."""
    known = labels >= 0
    if len(labels) == 0 or not known.any():
        return None
    return clustering_scores(clusters[known], labels[known], num_clusters, num_classes)


# ---- stage bookkeeping -----------------------------------------------------------------------------
def stage_log(ctx: ScanContext, stage: str, resumed_at: int) -> EpochLog:
    """`<stage>_metrics.jsonl` and TensorBoard scalars `scan/<stage>/...` under tensorboard/<stage>."""
    return EpochLog(ctx.dir / f"{stage}_metrics.jsonl", ctx.dir / "tensorboard" / stage, f"scan/{stage}",
                    resumed_at=resumed_at)


def load_stage(ctx: ScanContext, stage: str) -> Optional[dict[str, Any]]:
    """The stage's checkpoint, or None; a ConfigError when it was made with other settings."""
    path = ctx.dir / STAGE_FILES[stage][0]
    if not path.exists():
        return None
    state = load_checkpoint(path, map_location="cpu")
    want, have = ctx.settings(stage), state.get("settings", {})
    if not isinstance(have, dict):
        raise CheckpointError(f"{path} is not a SCAN {stage} stage file written by sslab (its settings are a "
                              f"{type(have).__name__}); pass --restart {stage} to redo the stage")
    have = {**SETTINGS_BEFORE_THEY_EXISTED, **have}  # a checkpoint from before a setting existed had its old behaviour
    changed = [f"{k}={have.get(k)!r} (now {v!r})" for k, v in want.items() if have.get(k) != v]
    if changed:
        raise ConfigError(f"{path} was made with other settings: {', '.join(changed[:4])}; rerun with the same "
                          f"settings to continue, or pass --restart {stage} to redo it")
    return state


def model_state(model: ClusterModel, frozen: bool) -> dict[str, Any]:
    """The weights a checkpoint needs: the heads, and the backbone unless it is the frozen pretext one."""
    return {"heads": model.heads.state_dict(), "backbone": None if frozen else model.backbone.state_dict()}


def load_model_state(model: ClusterModel, state: dict[str, Any]) -> ClusterModel:
    model.heads.load_state_dict(state["heads"])
    if state["backbone"] is not None:
        model.backbone.load_state_dict(state["backbone"])
    return model


# ---- stage 1: mine -----------------------------------------------------------------------------------
def mine_stage(ctx: ScanContext) -> dict[str, Any]:
    """Neighbours (saved to neighbors.pt) and the k-means baseline on the same features."""
    cfg, data = ctx.cfg, ctx.data
    n = len(data.train_x)
    if cfg.neighbors >= n:
        raise ConfigError(f"--neighbors {cfg.neighbors} must be smaller than the {n} training images")
    t0 = time.perf_counter()
    feats = ctx.train_features()
    with Heartbeat(f"scan: {cfg.neighbors} nearest neighbours of {n} images"):
        indices, sims = mine_neighbors(feats, cfg.neighbors)
        ctx.sync()
    mine_seconds = time.perf_counter() - t0
    acc = neighbor_accuracy(indices, data.train_y)
    ctx.log(f"mine: {cfg.neighbors} neighbours of {n} images in {mine_seconds:.1f} s"
            + (f"; neighbour accuracy {100 * acc:.1f}%" if acc is not None else ""))

    t0 = time.perf_counter()
    kmeans = kmeans_baseline(ctx, feats)
    kmeans_seconds = time.perf_counter() - t0
    if kmeans["scores"] is not None:
        s = kmeans["scores"]
        ctx.log(f"k-means baseline ({ctx.num_clusters} clusters, n_init {cfg.kmeans_init}): test ACC "
                f"{100 * s['acc']:.1f}% NMI {s['nmi']:.3f} ARI {s['ari']:.3f} ({kmeans_seconds:.1f} s)")
    from sslab.eval.baselines import kmeans_baselines

    ctx.log("k-means baselines: the same k-means on the raw pixels and on the untrained network's features")
    with Heartbeat("scan: k-means baselines (raw pixels, untrained network)"):
        baselines = kmeans_baselines(ctx.run, data, ctx.num_clusters, cfg.seed, cfg.kmeans_init, ctx.features)
    result = {"neighbor_accuracy": acc, "kmeans": kmeans["scores"], "baselines": baselines,
              "seconds": {"mine": mine_seconds, "kmeans": kmeans_seconds}}
    save_checkpoint({"settings": ctx.settings("mine"), "done": True, "indices": indices.cpu(),
                     "similarities": sims.cpu(), "kmeans_train": kmeans["train"], "kmeans_test": kmeans["test"],
                     "result": result}, ctx.dir / "neighbors.pt")
    return result


def kmeans_baseline(ctx: ScanContext, train_feats: torch.Tensor) -> dict[str, Any]:
    """The k-means protocol (`kmeans_fit`: l2-normalised train features, n_init restarts, test images assigned to the
    nearest centre), the run's one result for these features (RUN/kmeans-cache.npz, shared with `analyze`)."""
    test = ctx.pretext_features("test") if len(ctx.data.test_x) else train_feats[:0]
    km = cached_kmeans(ctx.run.run_dir, "learned", train_feats.float().cpu().numpy(), test.float().cpu().numpy(),
                       ctx.num_clusters, ctx.cfg.seed, ctx.cfg.kmeans_init)
    return {"train": km["train"], "test": km["test"], "scores": ctx.test_scores(km["test"])}


# ---- predictions ---------------------------------------------------------------------------------
@torch.no_grad()
def predict(ctx: ScanContext, model: ClusterModel, split: str) -> torch.Tensor:
    """Log-probabilities (H, N, C) of the un-augmented `split` images, model in eval mode. A frozen backbone is
    still the pretext one, so its features are looked up instead of recomputed."""
    images = ctx.images(split)
    if len(images) == 0:
        return torch.zeros(model.num_heads, 0, model.num_clusters, device=ctx.device)
    feats = ctx.pretext_features(split) if ctx.cfg.freeze_backbone else ctx.features(model.backbone, images)
    return torch.log_softmax(model.head_logits(feats).float(), dim=-1)


@torch.no_grad()
def head_losses(log_probs: torch.Tensor, indices: torch.Tensor, entropy_weight: float) -> torch.Tensor:
    """SCAN loss (H,) of each head over every (anchor, neighbour) pair of a split (reference `scan_evaluate`)."""
    out = []
    for lp in log_probs:  # N x C, one head at a time
        log_dot = torch.logsumexp(lp.unsqueeze(1) + lp[indices], dim=-1)  # N x K
        m = lp.exp().mean(dim=0)
        entropy = -(m * torch.log(m.clamp_min(1e-8))).sum()
        out.append(-log_dot.mean() - entropy_weight * entropy)
    return torch.stack(out)


HEAD_CHOICE_ENTROPY_WEIGHT = 1.0  # reference scan_evaluate: total = consistency - entropy
HEAD_CHOICE_NEIGHBORS = 5  # reference: the validation images' 5 nearest neighbours (topk_neighbors_val)


def choose_head(ctx: ScanContext, model: ClusterModel,
                train_neighbors: torch.Tensor) -> tuple[int, torch.Tensor, dict[str, Any]]:
    """The head with the lowest `consistency - entropy` (entropy weight 1) on the validation split, as the
    reference's `scan_evaluate` picks it: here the test images with their own 5 nearest neighbours in the pretext
    feature space, no label used. Without enough test images, the train split and its mined neighbours."""
    n_test = len(ctx.data.test_x)
    if n_test > HEAD_CHOICE_NEIGHBORS:
        indices, _ = mine_neighbors(ctx.pretext_features("test"), HEAD_CHOICE_NEIGHBORS)
        split, log_probs = "test", predict(ctx, model, "test")
    else:
        indices, split, log_probs = train_neighbors, "train", predict(ctx, model, "train")
    losses = head_losses(log_probs, indices, HEAD_CHOICE_ENTROPY_WEIGHT).cpu()
    selection = {"split": split, "images": int(log_probs.shape[1]), "neighbors": int(indices.shape[1]),
                 "entropy_weight": HEAD_CHOICE_ENTROPY_WEIGHT, "labels_used": False,
                 "rule": "lowest consistency - entropy over every (image, neighbour) pair of the split, un-augmented "
                         "(reference scan_evaluate)"}
    return int(losses.argmin()), losses, selection


def due(every: int, epoch: int, last: int) -> bool:
    """Every `every` epochs (0: never) and at the last one."""
    return every > 0 and (epoch % every == 0 or epoch == last)


def monitor(ctx: ScanContext, model: ClusterModel, head: int) -> Optional[dict[str, Any]]:
    """Test scores of one head (logged each epoch for monitoring only)."""
    if len(ctx.data.test_x) == 0:
        return None
    clusters = predict(ctx, model, "test")[head].argmax(dim=-1).cpu().numpy()
    return ctx.test_scores(clusters)


# ---- stage 2: cluster ------------------------------------------------------------------------------
def cluster_stage(ctx: ScanContext, neighbors: torch.Tensor, state: Optional[dict[str, Any]]) -> dict[str, Any]:
    """H heads (+ the backbone) trained with the SCAN loss on (anchor, sampled neighbour) pairs; then the head
    with the lowest SCAN loss over all train pairs is kept."""
    cfg, data, dev = ctx.cfg, ctx.data, ctx.device
    gen = ctx.generator("cluster")  # sample order, neighbour picks and views
    source = BatchSource(len(data.train_x), cfg.batch_size, cfg.seed, dev, generator=gen)  # drop_last (ref.)
    model = ctx.cluster_model(cfg.heads).to(dev)
    if cfg.freeze_backbone:
        model.freeze_backbone()
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay,
                           **ctx.fused())
    # frozen backbone and un-augmented views: the features never change, so look them up
    cached = ctx.train_features() if cfg.freeze_backbone and cfg.cluster_augment == "none" else None
    view = ctx.view(cfg.cluster_augment)
    pool = neighbor_pool(neighbors.to(dev), cfg.include_self)  # N x (K+1)
    B = cfg.batch_size

    def step(anchors: torch.Tensor, global_step: int) -> dict[str, torch.Tensor]:
        pick = torch.randint(pool.shape[1], (B,), device=dev, generator=gen)
        both = torch.cat((anchors, pool[anchors, pick]))  # 2B: anchors, then one neighbour each
        if cached is not None:
            logits = model.head_logits(cached[both])  # H x 2B x C
        else:
            with ctx.autocast():
                logits = model(ctx.to_input(view(data.train_x[both], gen)))
        total, consistency, entropy = scan_loss(logits[:, :B], logits[:, B:], cfg.entropy_weight)  # H each
        opt.zero_grad(set_to_none=True)
        total.sum().backward()  # every head at once (reference: the sum of the heads' losses)
        opt.step()
        return {"loss": total.detach().mean(), "head_losses": total.detach(), "consistency": consistency.detach(),
                "entropy": entropy.detach()}

    def end_epoch(epoch: int, means: dict[str, Any], seconds: float) -> dict[str, Any]:
        best = int(np.argmin(means["head_losses"]))
        record = {"epoch": epoch, "loss": means["loss"], "consistency": float(np.mean(means["consistency"])),
                  "entropy": float(np.mean(means["entropy"])), "best_head": best,
                  "best_head_loss": means["head_losses"][best], "head_losses": means["head_losses"],
                  "epoch_seconds": seconds}
        test = monitor(ctx, model, best) if due(cfg.eval_every, epoch, cfg.cluster_epochs) else None
        record.update({f"test_{k}": v for k, v in (test or {}).items() if k != "acc_mapping"})
        ctx.epoch_line(f"cluster epoch {epoch}/{cfg.cluster_epochs} loss {record['loss']:.4f} (consistency "
                       f"{record['consistency']:.4f}, entropy {record['entropy']:.4f}) best head {best}"
                       + (f" test ACC {100 * test['acc']:.1f}%" if test else "") + f" {seconds:.1f} s",
                       epoch, cfg.cluster_epochs, test is not None)
        return record

    ckpt, pos = run_stage(ctx, "cluster", cfg.cluster_epochs, source, model, opt, gen, state, step, end_epoch,
                          "lower --lr")

    tick = time.perf_counter()
    best, losses, selection = choose_head(ctx, model, neighbors.to(dev))
    test_lp = predict(ctx, model, "test")
    per_head = [ctx.test_scores(test_lp[h].argmax(-1).cpu().numpy()) for h in range(cfg.heads)]
    seconds = ckpt.extra["seconds"] + time.perf_counter() - tick
    outcome = {"head": best, "head_losses": [float(v) for v in losses], "head_selection": selection,
               "scores": per_head[best], "heads_test_acc": [s["acc"] if s else None for s in per_head],
               "seconds": seconds}
    finish_stage(ckpt, pos, outcome)
    s = per_head[best]
    ctx.log(f"cluster: kept head {best} ({selection['split']} consistency - entropy {losses[best]:.4f})"
            + (f"; test ACC {100 * s['acc']:.1f}% NMI {s['nmi']:.3f} ARI {s['ari']:.3f}" if s else "")
            + f" ({seconds:.1f} s)")
    return outcome


def run_stage(ctx: ScanContext, stage: str, epochs: int, source: BatchSource, model: ClusterModel,
              opt: torch.optim.Optimizer, gen: torch.Generator, state: Optional[dict[str, Any]], step, end_epoch,
              nan_hint: str) -> tuple[LoopCheckpoint, LoopPosition]:
    """A training stage's epochs on the kit: resumed from `state`, checkpointed to <stage>.pt every
    --checkpoint-every epochs and on a signal, each epoch's record (`end_epoch` -> dict) appended to
    <stage>_metrics.jsonl. Returns the checkpoint (`extra["seconds"]`: the stage's wall time so far) and
    the final position."""
    cfg = ctx.cfg
    ckpt = LoopCheckpoint(ctx.dir / STAGE_FILES[stage][0], ctx.settings(stage), source, gen,
                          state=lambda: {"model": model_state(model, cfg.freeze_backbone), "optimizer": opt.state_dict()},
                          load=lambda st: (load_model_state(model, st["model"]), opt.load_state_dict(st["optimizer"])))
    ckpt.extra = {"seconds": 0.0, "result": None}
    pos = ckpt.resume(state, ctx.log, stage)
    before, started = ckpt.extra["seconds"], time.perf_counter()
    log = stage_log(ctx, stage, pos.epoch)

    def save(p: LoopPosition) -> None:
        if p.step_in_epoch or p.epoch % cfg.checkpoint_every == 0 or p.epoch == epochs:
            ckpt.extra["seconds"] = before + time.perf_counter() - started
            ckpt.save(p)

    def log_epoch(epoch: int, means: dict[str, Any], seconds: float) -> None:
        log.append(end_epoch(epoch, means, seconds), epoch * source.steps_per_epoch)

    loop = EpochLoop(stage=f"scan/{stage}", epochs=epochs, source=source, model=model, stop=ctx.stop,
                     checkpoint_path=ckpt.path, resume=f"sslab scan {ctx.run.run_dir}", nan_hint=nan_hint,
                     progress=cfg.progress, progress_every=cfg.progress_every)
    try:
        model.train()  # a frozen backbone stays in eval mode (ClusterModel.train)
        loop.run(pos, step, save, log_epoch)
    finally:
        log.close()
    ckpt.extra["seconds"] = before + time.perf_counter() - started
    return ckpt, pos


def finish_stage(ckpt: LoopCheckpoint, pos: LoopPosition, result: dict[str, Any]) -> None:
    """Mark a stage done, with its result, in its checkpoint."""
    ckpt.extra.update(seconds=result["seconds"], result=result)
    ckpt.save(pos, done=True)


def model_from(ctx: ScanContext, state: dict[str, Any], heads: int) -> ClusterModel:
    """The model saved in a stage checkpoint (the pretext backbone where it was frozen)."""
    return load_model_state(ctx.cluster_model(heads), state["model"]).to(ctx.device)


def cluster_model_from(ctx: ScanContext, state: dict[str, Any]) -> ClusterModel:
    """The finished clustering model (all heads) from cluster.pt."""
    return model_from(ctx, state, ctx.cfg.heads)


# ---- stage 3: self-label ----------------------------------------------------------------------------
def selflabel_stage(ctx: ScanContext, cluster_state: dict[str, Any], state: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The kept head fine-tuned on its own confident predictions (class-balanced cross-entropy, strong views)."""
    cfg, data, dev = ctx.cfg, ctx.data, ctx.device
    gen = ctx.generator("selflabel")  # sample order and views
    source = BatchSource(len(data.train_x), cfg.selflabel_batch_size, cfg.seed, dev, flag="--selflabel-batch-size",
                         generator=gen)
    model = cluster_model_from(ctx, cluster_state).single_head(cluster_state["result"]["head"])
    if cfg.freeze_backbone:
        model.freeze_backbone()
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.selflabel_lr,
                           weight_decay=cfg.selflabel_weight_decay, **ctx.fused())
    cached = ctx.train_features() if cfg.freeze_backbone and cfg.selflabel_target_view == "none" else None
    target_view, train_view = ctx.view(cfg.selflabel_target_view), ctx.view(cfg.selflabel_augment)
    confident = [float("nan")]

    def step(idx: torch.Tensor, global_step: int) -> dict[str, torch.Tensor]:
        x = data.train_x[idx]
        with torch.no_grad(), ctx.autocast():  # targets: no gradient (reference: train mode, no_grad)
            weak = model.head_logits(cached[idx]) if cached is not None else model(ctx.to_input(target_view(x, gen)))
        strong_x = ctx.to_input(train_view(x, gen))
        with ctx.autocast():
            strong = model(strong_x)
        loss, frac = selflabel_loss(weak[0], strong[0], cfg.confidence, cfg.class_balance)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.detach(), "confident_fraction": frac}

    def end_epoch(epoch: int, means: dict[str, Any], seconds: float) -> dict[str, Any]:
        confident[0] = means["confident_fraction"]
        record = {"epoch": epoch, "loss": means["loss"], "confident_fraction": confident[0], "epoch_seconds": seconds}
        test = monitor(ctx, model, 0) if due(cfg.eval_every, epoch, cfg.selflabel_epochs) else None
        record.update({f"test_{k}": v for k, v in (test or {}).items() if k != "acc_mapping"})
        ctx.epoch_line(f"selflabel epoch {epoch}/{cfg.selflabel_epochs} loss {means['loss']:.4f} confident "
                       f"{100 * confident[0]:.1f}%" + (f" test ACC {100 * test['acc']:.1f}%" if test else "")
                       + f" {seconds:.1f} s", epoch, cfg.selflabel_epochs, test is not None)
        return record

    ckpt, pos = run_stage(ctx, "selflabel", cfg.selflabel_epochs, source, model, opt, gen, state, step, end_epoch,
                          "lower --selflabel-lr")
    tick = time.perf_counter()
    after = predict(ctx, model, "test")[0].argmax(-1)
    before = predict(ctx, cluster_model_from(ctx, cluster_state).single_head(cluster_state["result"]["head"]),
                     "test")[0].argmax(-1)
    s = ctx.test_scores(after.cpu().numpy())
    seconds = ckpt.extra["seconds"] + time.perf_counter() - tick
    outcome = {"scores": s, "confident_fraction": None if math.isnan(confident[0]) else confident[0], "seconds": seconds,
               **selflabel_effect(before, after, ctx.num_clusters, cfg.selflabel_epochs * source.steps_per_epoch)}
    finish_stage(ckpt, pos, outcome)
    ctx.log("selflabel: done" + (f"; test ACC {100 * s['acc']:.1f}% NMI {s['nmi']:.3f} ARI {s['ari']:.3f}" if s else "")
            + f" ({seconds:.1f} s)")
    return outcome


def selflabel_effect(before: torch.Tensor, after: torch.Tensor, num_clusters: int, steps: int) -> dict[str, Any]:
    """What self-labelling did to the test clusters: the share of images that changed cluster, the largest
    cluster's share, and a note when it changed almost nothing or piled the images into one cluster."""
    n = len(after)
    changed = float((before != after).float().mean()) if n else None
    largest = float(torch.bincount(after, minlength=num_clusters).max() / n) if n else None
    note = None
    if changed is not None and changed < 0.01:
        note = (f"self-labelling moved {100 * changed:.1f}% of the test images to another cluster in {steps} steps: "
                "too few steps at this learning rate to change the clustering (the reference runs 200 epochs)")
    elif largest is not None and largest > 2.0 / num_clusters:
        note = (f"one cluster holds {100 * largest:.0f}% of the test images after self-labelling: it reinforces the "
                "confident predictions, and when many of those are wrong (low neighbour accuracy) it drifts into a "
                "few clusters; compare with the SCAN step and k-means")
    return {"changed_fraction": changed, "largest_cluster_share": largest, "note": note}


def selflabel_model_from(ctx: ScanContext, state: dict[str, Any]) -> ClusterModel:
    return model_from(ctx, state, 1)


# ---- the whole run -------------------------------------------------------------------------------------
def scan_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "scan"


def saved_config(run_dir: str | Path) -> Optional[ScanConfig]:
    """RUN/scan/config.yaml of an earlier `sslab scan`, if any (a rerun without flags continues with it)."""
    path = scan_dir(run_dir) / "config.yaml"
    refuse_links(path, root=run_dir)  # scan rewrites it: a link there is refused before it is even read
    return ScanConfig.load(path) if path.exists() else None


def clear_stages(directory: Path, first: str) -> None:
    """Delete the results of stage `first` and every later stage, and the combined outputs."""
    for stage in STAGES[STAGES.index(first):]:
        for name in STAGE_FILES[stage]:
            p = directory / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    for name in OUTPUT_FILES:
        (directory / name).unlink(missing_ok=True)


def run_scan(run_dir: str | Path, cfg: Optional[ScanConfig] = None, *, until: str = "selflabel",
             restart: Optional[str] = None, log: Log = print) -> dict[str, Any]:
    """SCAN on a trained run: mine -> cluster -> selflabel (stopping after `until`). Returns scan.json's content.

    `cfg` None: RUN/scan/config.yaml of an earlier call if there is one (and `restart` is not "mine"), else the
    defaults. `restart`: a stage name: redo it and the stages after it. Finished stages are loaded, an
    interrupted one continues from its last checkpoint. Raises CheckpointError (a UserError) for a folder without a trained checkpoint.
    """
    if until not in STAGES or (restart is not None and restart not in STAGES):
        raise ConfigError(f"stages are {', '.join(STAGES)}; got until={until!r}, restart={restart!r}")
    started = time.perf_counter()
    if cfg is None:  # continue with the last call's settings, unless redoing everything
        cfg = (None if restart == "mine" else saved_config(run_folder(run_dir))) or ScanConfig()
    cfg.validate()
    if cfg.precision == "fp16":  # its stages have no gradient scaler yet: say so rather than run fp32 silently
        raise ConfigError("sslab scan --precision fp16 is not supported yet (train's is); use auto, bf16 or fp32")
    trained = load_trained(run_dir, cfg.device)
    out = scan_dir(trained.run_dir)
    check_output_folder(trained.run_dir, "scan")  # before any work: a read-only folder, a link inside RUN/scan
    if restart is not None:
        clear_stages(out, restart)
    data = trained.load_data().to(trained.device)
    ctx = ScanContext(trained, cfg, data, out, log, cfg.num_clusters or data.num_classes,
                      bf16=device_lib.uses_bf16(cfg.precision, trained.device),
                      channels_last=(device_lib.is_gpu(trained.device) if cfg.channels_last is None
                                     else cfg.channels_last),
                      pretext_epoch=int(trained.state.get("loop", {}).get("epoch", 0)))
    log(f"scan: {data.name} {len(data.train_x)} train / {len(data.test_x)} test images, {ctx.num_clusters} clusters, "
        f"pretext {trained.cfg.method.method}/{trained.cfg.model.backbone} (epoch {ctx.pretext_epoch}), "
        f"device {trained.device}; outputs in {out}")
    torch.manual_seed(cfg.seed)

    # load (and check against the settings) every existing stage before computing anything
    states = {s: load_stage(ctx, s) for s in STAGES}
    cfg.replace(time_limit=None).save(out / "config.yaml")  # a time limit applies to the call that set it
    with StopFlag() as ctx.stop, heartbeats(cfg.progress_every if cfg.progress else None):
        ctx.stop.arm(cfg.time_limit)  # from here on a signal (or the time limit) is answered with a checkpoint
        results, mine, model, final_stage = run_stages(ctx, states, until)
        with Heartbeat("scan: cluster assignments and figures"):
            report = write_outputs(ctx, results, mine, model, final_stage)
    log(summary_line(report) + f" ({time.perf_counter() - started:.1f} s this call)")
    return report


def run_stages(ctx: ScanContext, states: dict[str, Optional[dict[str, Any]]], until: str):
    """Each stage up to `until`: loaded when done before, else run (or continued). (results, neighbours
    checkpoint, the final model or None, its stage name)."""
    out, log = ctx.dir, ctx.log
    results: dict[str, Any] = {}
    mine = states["mine"]
    if mine is None or not mine.get("done"):
        results["mine"] = mine_stage(ctx)
        mine = load_checkpoint(out / "neighbors.pt")
    else:
        results["mine"] = mine["result"]
        log("mine: done before, loaded neighbors.pt")
    model, final_stage = None, None
    if STAGES.index(until) >= STAGES.index("cluster"):
        cluster = states["cluster"]
        if cluster is None or not cluster.get("done"):
            results["cluster"] = cluster_stage(ctx, mine["indices"], cluster)
            cluster = load_checkpoint(out / "cluster.pt")
        else:
            results["cluster"] = cluster["result"]
            log(f"cluster: done before, loaded cluster.pt (head {cluster['result']['head']})")
        model, final_stage = cluster_model_from(ctx, cluster).single_head(cluster["result"]["head"]), "cluster"
        if until == "selflabel":
            selflabel = states["selflabel"]
            if selflabel is None or not selflabel.get("done"):
                results["selflabel"] = selflabel_stage(ctx, cluster, selflabel)
                selflabel = load_checkpoint(out / "selflabel.pt")
            else:
                results["selflabel"] = selflabel["result"]
                log("selflabel: done before, loaded selflabel.pt")
            model, final_stage = selflabel_model_from(ctx, selflabel), "selflabel"
    return results, mine, model, final_stage


def summary_line(report: dict[str, Any]) -> str:
    def fmt(name: str, s: Optional[dict[str, Any]]) -> str:
        return f"{name} {100 * s['acc']:.1f}/{100 * s['nmi']:.1f}/{100 * s['ari']:.1f}" if s else f"{name} -"

    base = report.get("baselines") or {}
    parts = [fmt("k-means", report.get("kmeans")), fmt("SCAN", report.get("scan")),
             fmt("+self-label", report.get("selflabel")), fmt("baselines: k-means on pixels", base.get("pixels")),
             fmt("on the untrained network", base.get("untrained"))]
    below = report.get("below_baselines")
    return "scan: test ACC/NMI/ARI (%): " + ", ".join(parts) + (f"\n{below}" if below else "")


# ---- outputs ------------------------------------------------------------------------------------------
def write_outputs(ctx: ScanContext, results: dict[str, Any], mine: dict[str, Any], model: Optional[ClusterModel],
                  final_stage: Optional[str]) -> dict[str, Any]:
    """scan.json always; with a trained model also clusters.npz, confident_images.png and confusion.png."""
    from sslab.scan import figures

    data, cfg = ctx.data, ctx.cfg
    over = ctx.num_clusters > data.num_classes
    mapping = "majority" if over else "hungarian"
    cluster, selflabel = results.get("cluster"), results.get("selflabel")
    seconds = dict(results["mine"]["seconds"])
    seconds["cluster"] = cluster["seconds"] if cluster else None
    seconds["selflabel"] = selflabel["seconds"] if selflabel else None
    report: dict[str, Any] = {
        "dataset": data.name, "split": "test", "test_images": len(data.test_x), "train_images": len(data.train_x),
        "num_classes": data.num_classes, "num_clusters": ctx.num_clusters, "over_clustering": over,
        "acc_mapping": mapping,
        "acc_note": ("ACC maps each cluster to its majority class (more clusters than classes)" if over else
                     "ACC under the best one-to-one matching of clusters to classes (Hungarian)"),
        "kmeans": results["mine"]["kmeans"], "neighbor_accuracy": results["mine"]["neighbor_accuracy"],
        "baselines": results["mine"].get("baselines"),
        "below_baselines": below_baseline_sentence(
            [kmeans_record(n, results.get(s, {}).get("scores") if s != "mine" else results["mine"]["kmeans"],
                           results["mine"].get("baselines")) for n, s in (("k-means", "mine"), ("SCAN", "cluster"),
                                                                        ("SCAN + self-label", "selflabel"))]),
        "scan": {**cluster["scores"], "head": cluster["head"]} if cluster and cluster["scores"] else None,
        "scan_head_losses": None if cluster is None else cluster["head_losses"],
        "scan_heads_test_acc": None if cluster is None else cluster["heads_test_acc"],
        "selflabel": None if selflabel is None else selflabel["scores"],
        "selflabel_confident_fraction": None if selflabel is None else selflabel["confident_fraction"],
        "selflabel_changed_fraction": None if selflabel is None else selflabel.get("changed_fraction"),
        "selflabel_note": None if selflabel is None else selflabel.get("note"),
        "head_selection": None if cluster is None else cluster.get("head_selection"),
        "seconds": seconds, "device": device_lib.device_name(ctx.device),
        "pretext": {"run_dir": str(ctx.run.run_dir), "method": ctx.run.cfg.method.method,
                    "backbone": ctx.run.cfg.model.backbone, "epochs": ctx.pretext_epoch},
        "stages_done": ["mine"] + [s for s in ("cluster", "selflabel") if results.get(s)],
        "clusters_from": final_stage,
        "config": {**cfg.to_dict(), "flip_p_used": ctx.flip_p()},
    }
    RunDir(ctx.dir).write_json("scan.json", report)
    if model is None:
        return report
    model.eval()
    train_p = predict(ctx, model, "train")[0].exp()
    test_p = predict(ctx, model, "test")[0].exp()
    train_conf, train_c = (t.cpu().numpy() for t in train_p.max(dim=-1))
    test_conf, test_c = (t.cpu().numpy() for t in test_p.max(dim=-1))
    import io

    buf = io.BytesIO()
    np.savez(buf, train_clusters=train_c.astype(np.int64), train_confidence=train_conf.astype(np.float32),
             train_labels=data.train_y.cpu().numpy(), test_clusters=test_c.astype(np.int64),
             test_confidence=test_conf.astype(np.float32), test_labels=data.test_y.cpu().numpy(),
             kmeans_train_clusters=mine["kmeans_train"], kmeans_test_clusters=mine["kmeans_test"],
             stage=np.array(final_stage), classes=np.array(data.classes))
    atomic_write_bytes(ctx.dir / "clusters.npz", buf.getvalue())
    title = f"{final_stage_name(final_stage)} · {figures.run_title(ctx.run.cfg)}"
    figures.confident_images(ctx.dir / "confident_images.png", data.train_x.cpu().numpy(), train_c, train_conf,
                             ctx.num_clusters, cfg.show_per_cluster, title, data.train_y.cpu().numpy(), data.classes)
    test_y = data.test_y.cpu().numpy()
    if (test_y >= 0).any():
        figures.confusion(ctx.dir / "confusion.png", test_c, test_y, ctx.num_clusters, data.classes, mapping, title)
    return report


def final_stage_name(stage: str) -> str:
    return {"cluster": "SCAN", "selflabel": "SCAN + self-label"}[stage]
