"""`sslab analyze`: PCA, t-SNE, image maps and k-means of a run's features, into the run folder.

    RUN/analysis.json                         PCA figures, t-SNE settings, k-means ACC/NMI/ARI and per-cluster table
    RUN/embeddings.npz                        features, labels, indices, split, + clusters, tsne, tsne_rows
    RUN/analysis/pca-cumulative.png           cumulative explained variance
    RUN/analysis/pca-components.png           explained variance per component
    RUN/analysis/pca-scatter.png              first two components, coloured by class
    RUN/analysis/tsne.png                     t-SNE, coloured by class
    RUN/analysis/image-map.png                thumbnails at their t-SNE positions
    RUN/analysis/image-map-classes.png        the same with a class-colour border and tint
    RUN/analysis/cluster-tiles.png            one row per k-means cluster, the images nearest its centre
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from sslab.analysis import clusters as km
from sslab.analysis.embedding import EMBEDDINGS_FILE, compute_embeddings, save_embeddings
from sslab.analysis.figures import class_colors, save_image_figure, scatter_by_class, to_display
from sslab.analysis.structure import image_map, pca, pca_figures, subsample, thumb_size, tsne_2d
from sslab.errors import ConfigError, DataError
from sslab.plots import DATASET_NAMES, run_title
from sslab.pretrained import TrainedRun
from sslab.progress import Steps
from sslab.run import RunDir

ANALYSIS_JSON = "analysis.json"
ANALYSIS_DIR = "analysis"
MIN_MAP_SIZE, MAX_MAP_SIZE = 200, 8000  # side of the t-SNE image maps, pixels


def check_options(max_points: int, map_size: int, n_init: int) -> None:
    """analyze's numbers, before any work (one line naming the flag)."""
    if max_points < 10:
        raise ConfigError("--max-points must be >= 10")
    if n_init < 1:
        raise ConfigError(f"--n-init must be >= 1, not {n_init}")
    if not MIN_MAP_SIZE <= map_size <= MAX_MAP_SIZE:  # the map is map_size^2 x 3 floats in memory
        raise ConfigError(f"--map-size must be in {MIN_MAP_SIZE}..{MAX_MAP_SIZE} pixels, not {map_size} (a map of "
                          f"{MAX_MAP_SIZE} px already takes {3 * 4 * MAX_MAP_SIZE**2 / 2**30:.1f} GiB while it is drawn)")


ANALYZE_STEPS = 6  # data, features, PCA, t-SNE and maps, k-means, baselines


def analyze_run(trained: TrainedRun, split: str = "test", max_points: int = 5000, seed: int = 0,
                map_size: int = 1600, n_init: int = 10, log: Callable[[str], None] = print,
                progress: bool = True) -> dict[str, Any]:
    """Every figure and number of `sslab analyze` into the run folder; returns analysis.json's dict. Each step
    is announced on stderr as it starts (`progress`), as `sslab train` shows its steps."""
    check_options(max_points, map_size, n_init)
    start = time.perf_counter()
    cfg, run, info = trained.cfg, RunDir(trained.run_dir), trained.data_info
    title = run_title(cfg)
    out_dir = run.path / ANALYSIS_DIR
    with Steps("analyze", ANALYZE_STEPS, enabled=progress) as steps:
        with steps.step(f"loading the {info.get('dataset', cfg.data.dataset)} images"):
            data = trained.load_data().to(trained.device)
        classes = list(data.classes)
        with steps.step(f"features of the {split} split ({cfg.model.backbone})"):
            emb = compute_embeddings(trained.backbone, data, split, info["mean"], info["std"])
        feats, labels = emb.features.float().cpu().numpy(), emb.labels
        n = len(labels)
        if n < max(len(classes), 2):  # k-means makes one cluster per class
            raise DataError(f"the {split} split holds {n} image(s), fewer than the {len(classes)} classes that analyze "
                            "clusters them into; pass --split all (or train), or hold out more test images")
        where = f"{emb.split[0]} split" if len(set(emb.split.tolist())) == 1 else "train + test splits"
        log(f"analyze: {title}; {n} images of the {where}, {feats.shape[1]}-d features")

        with steps.step(f"PCA of {n} features") as timer:
            p = pca(feats)
            figures = pca_figures(p, labels, classes, out_dir, title)
        log(f"PCA in {timer.seconds:.1f} s")

        rows = subsample(n, max_points, seed)
        with steps.step(f"t-SNE of {len(rows)} features and the image maps") as timer:
            coords, tsne_info = tsne_2d(feats[rows], seed)
            figures += tsne_figures(emb, labels, rows, coords, classes, info, map_size, out_dir, title)
        log(f"t-SNE and image maps in {timer.seconds:.1f} s")

        k = len(classes)
        with steps.step(f"k-means (k={k}, n_init={n_init}) of the learned features") as timer:
            fitted = kmeans_of_run(trained, data, k, seed, n_init, info)
            assign = km.split_assignments(fitted, emb.split, emb.indices)
            dist = km.distances(feats, assign, fitted["centres"])
            report = km.cluster_report(assign, labels, k, len(classes), classes)
            size = max(info["image_size"], 24) if info["image_size"] < 24 else min(info["image_size"], 64)
            km.cluster_tiles_figure(emb.images, assign, dist, report, out_dir / "cluster-tiles.png", title, size=size)
            figures.append(out_dir / "cluster-tiles.png")
        with steps.step("k-means baselines: the raw pixels and the untrained network") as baseline_timer:
            from sslab.eval.baselines import kmeans_baselines

            baselines = kmeans_baselines(trained, data, k, seed, n_init)
        log(f"k-means (k={k}, n_init={n_init}) and its raw-pixel and untrained-network baselines in "
            f"{timer.seconds + baseline_timer.seconds:.1f} s")

    save_embeddings(run.path / EMBEDDINGS_FILE, {**emb.arrays(), "clusters": assign, "tsne": coords.astype(np.float32),
                                                 "tsne_rows": rows.astype(np.int64)})
    result = {"run_dir": str(run.path), "title": title, "dataset": data.name,
              "dataset_name": DATASET_NAMES.get(data.name, data.name), "backbone": cfg.model.backbone,
              "split": where, "points": n, "feature_dim": int(feats.shape[1]), "classes": classes,
              "pca": {"components_for_variance": p["components_for"], "effective_rank": p["effective_rank"],
                      "explained_variance_ratio_top10": [float(v) for v in p["ratio"][:10]],
                      "input": "backbone features, centred"},
              "tsne": tsne_info,
              "kmeans": {**report, "n_init": n_init, "seed": seed, "baselines": baselines,
                         "input": "l2-normalised backbone features; fitted on the train split, test images assigned to "
                                  "the nearest centre (the k-means result `sslab scan` reports too)"},
              "figures": [f.relative_to(run.path).as_posix() for f in figures], "embeddings": EMBEDDINGS_FILE,
              "seconds": time.perf_counter() - start}
    run.write_json(ANALYSIS_JSON, result)
    return result


def tsne_figures(emb, labels: np.ndarray, rows: np.ndarray, coords: np.ndarray, classes: list[str],
                 info: dict[str, Any], map_size: int, out_dir, title: str) -> list:
    """The t-SNE scatter and the two image maps (thumbnails at their t-SNE positions, plain and class-tinted)."""
    scatter_by_class(coords, labels[rows], classes, out_dir / "tsne.png", f"t-SNE ({len(rows)} images): {title}",
                     "t-SNE 1", "t-SNE 2")
    images = emb.images[torch_index(rows, emb.images.device)]
    thumbs = to_display(images, thumb_size(info["image_size"], len(rows), map_size))
    plain = image_map(thumbs, coords, map_size)
    save_image_figure(plain, out_dir / "image-map.png", f"images at their t-SNE positions: {title}", max_inches=16)
    colors = class_colors(len(classes))
    row_colors = np.where(labels[rows, None] >= 0, colors[np.clip(labels[rows], 0, None)], 0.5)
    tinted = image_map(thumbs, coords, map_size, colors=row_colors)
    save_image_figure(tinted, out_dir / "image-map-classes.png",
                      f"images at their t-SNE positions, border = class: {title}", legend=(classes, colors), max_inches=16)
    return [out_dir / "tsne.png", out_dir / "image-map.png", out_dir / "image-map-classes.png"]


def kmeans_of_run(trained: TrainedRun, data, k: int, seed: int, n_init: int, info: dict[str, Any]) -> dict[str, Any]:
    """The run's one k-means result on its learned features (RUN/kmeans-cache.npz, shared with `sslab scan`)."""
    from sslab.eval.clustering import cached_kmeans
    from sslab.eval.features import extract_features, finite_features

    train, test = (finite_features(extract_features(trained.backbone, x, info["mean"], info["std"]),
                                   f"the checkpoint of {trained.run_dir}").float().cpu().numpy()
                   for x in (data.train_x, data.test_x))
    return cached_kmeans(trained.run_dir, "learned", train, test, k, seed, n_init)


def torch_index(rows: np.ndarray, device):
    import torch

    return torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(device)


def format_tables(result: dict[str, Any]) -> str:
    """The PCA and clustering figures as short plain-text tables for the terminal."""
    p, k = result["pca"], result["kmeans"]
    lines = [f"PCA of {result['points']} {result['feature_dim']}-d features ({result['split']}); "
             f"effective rank {p['effective_rank']:.1f}",
             "  variance   components"]
    lines += [f"  {100 * float(t):>6.0f}%   {n:>10d}" for t, n in p["components_for_variance"].items()]
    top = "  ".join(f"{100 * v:.1f}" for v in p["explained_variance_ratio_top10"])
    lines += [f"  first components (%): {top}", ""]
    lines += [f"k-means, k={k['k']} on l2-normalised features (n_init={k['n_init']}): "
              f"ACC {100 * k['acc']:.2f}% ({k['acc_mapping']})  NMI {k['nmi']:.4f}  ARI {k['ari']:.4f}"]
    base = k.get("baselines") or {}
    for name in ("pixels", "untrained"):
        if base.get(name):
            b = base[name]
            lines.append(f"  baseline, {name} (test split): ACC {100 * b['acc']:.2f}%  NMI {b['nmi']:.4f}  ARI {b['ari']:.4f}")
    from sslab.eval.baselines import below_baseline_sentence, kmeans_record

    sentence = below_baseline_sentence([kmeans_record("k-means ACC", k, base)])
    lines += ([sentence] if sentence else []) + ["  cluster   size  majority class        purity  matched class"]
    for c in k["clusters"]:
        purity = f"{100 * c['purity']:5.1f}%" if c["purity"] is not None else "    - "
        lines.append(f"  {c['cluster']:>7d} {c['size']:>6d}  {str(c['majority_class'])[:20]:<20s}  {purity}  "
                     f"{str(c['matched_class'])[:20]}")
    return "\n".join(lines)
