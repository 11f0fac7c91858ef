"""Backbone features of a run's split, saved as RUN/embeddings.npz and shown in TensorBoard's projector.

embeddings.npz keys: `features` (N, D) float32, `labels` (N,) int64 (-1 unlabelled), `indices` (N,) the
image's index in its split, `split` (N,) "train"/"test"; `analyze` adds `clusters` (N,) k-means
assignments and `tsne` (M, 2) with `tsne_rows` (M,), the rows of the t-SNE subsample.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslab.data.base import ImageData
from sslab.errors import ConfigError, DataError
from sslab.eval.features import extract_features, finite_features

EMBEDDINGS_FILE = "embeddings.npz"
PROJECTOR_DIR = "projector"
SPLITS = ("test", "train", "all")
SPRITE_MAX_THUMB = 32  # TensorBoard's sprite must stay under 8192 px a side
SPRITE_MAX_SIDE = 8192


@dataclass
class Embeddings:
    features: torch.Tensor  # (N, D) on the model's device
    labels: np.ndarray  # (N,)
    indices: np.ndarray  # (N,) index in its split
    split: np.ndarray  # (N,) "train" / "test"
    images: torch.Tensor  # (N, C, H, W) uint8, on the data's device

    def arrays(self) -> dict[str, np.ndarray]:
        return {"features": self.features.float().cpu().numpy(), "labels": self.labels, "indices": self.indices,
                "split": self.split}


def split_images(data: ImageData, split: str) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """(images, labels, indices, split names) of "test", "train" or "all" (train then test). "test" falls back
    to "train" when the dataset has no test split."""
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}")
    if split == "test" and len(data.test_x) == 0:
        split = "train"
    parts = [("train", data.train_x, data.train_y)] if split in ("train", "all") else []
    parts += [("test", data.test_x, data.test_y)] if split in ("test", "all") else []
    parts = [p for p in parts if len(p[1])]
    if not parts:
        raise DataError(f"{data.name} has no images in the {split} split")
    images = torch.cat([p[1] for p in parts])
    labels = torch.cat([p[2] for p in parts])
    indices = np.concatenate([np.arange(len(p[1])) for p in parts])
    names = np.concatenate([np.full(len(p[1]), p[0]) for p in parts])
    return images, labels, indices, names


def compute_embeddings(backbone: torch.nn.Module, data: ImageData, split: str = "test",
                       mean=None, std=None) -> Embeddings:
    images, labels, indices, names = split_images(data, split)
    feats = finite_features(extract_features(backbone, images, mean or data.mean, std or data.std), "the backbone")
    return Embeddings(feats, labels.cpu().numpy().astype(np.int64), indices.astype(np.int64), names, images)


def save_embeddings(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from sslab.safe_write import write_stream

    write_stream(path, lambda f: np.savez_compressed(f, **arrays))


def load_embeddings(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def sprite_thumbnails(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float (N, 3, s, s) in [0, 1] with s small enough for one sprite image."""
    n = len(images)
    per_side = int(np.ceil(np.sqrt(max(n, 1))))
    size = int(min(images.shape[-1], SPRITE_MAX_THUMB, SPRITE_MAX_SIDE // per_side))
    x = images.detach().float().cpu() / 255.0
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if size != x.shape[-1]:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="area")
    return x.contiguous()


def write_projector(log_dir: Path, emb: Embeddings, classes: list[str], max_points: int, seed: int = 0) -> dict[str, Any]:
    """TensorBoard embedding projector: features, class-name metadata and a thumbnail sprite (label_img).
    At most `max_points` points (a seeded random subset) so the sprite stays loadable."""
    from torch.utils.tensorboard import SummaryWriter

    from sslab.safe_write import replacing_folder

    n = len(emb.labels)
    rows = np.arange(n)
    if n > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
    names = [classes[y] if 0 <= y < len(classes) else "unlabelled" for y in emb.labels[rows]]
    metadata = [[name, str(emb.split[r]), str(emb.indices[r])] for name, r in zip(names, rows)]
    rows_t = torch.from_numpy(rows).to(emb.images.device)
    # TensorBoard writes its files itself (through any link): into a new folder, which then replaces the old
    # projector (a second `embed` replaces it instead of adding a step beside it)
    with replacing_folder(log_dir) as fresh:
        writer = SummaryWriter(str(fresh))
        try:
            writer.add_embedding(emb.features[rows_t.to(emb.features.device)].float().cpu(), metadata=metadata,
                                 metadata_header=["class", "split", "index"],
                                 label_img=sprite_thumbnails(emb.images[rows_t]), tag="backbone_features", global_step=0)
        finally:
            writer.close()
    return {"points": int(len(rows)), "dir": str(log_dir)}


def embed_run(trained: Any, split: str, max_points: int, seed: int) -> dict[str, Any]:
    """`sslab embed`: the features of a split to RUN/embeddings.npz and a TensorBoard projector of at most
    `max_points` of them (a seeded subset) to RUN/projector/; returns what was written."""
    info = trained.data_info
    data = trained.load_data().to(trained.device)
    emb = compute_embeddings(trained.backbone, data, split, info["mean"], info["std"])
    path = trained.run_dir / EMBEDDINGS_FILE
    save_embeddings(path, emb.arrays())
    projector = write_projector(trained.run_dir / PROJECTOR_DIR, emb, list(data.classes), max_points, seed)
    return {"path": path, "points": len(emb.labels), "dim": emb.features.shape[1], "projector": projector}


def describe_embed(record: dict[str, Any]) -> str:
    projector = record["projector"]
    return (f"wrote {record['points']} x {record['dim']} features to {record['path']}; projector with "
            f"{projector['points']} points in {projector['dir']} (tensorboard --logdir {projector['dir']})")
