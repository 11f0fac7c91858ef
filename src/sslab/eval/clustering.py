"""Clustering metrics: ACC under the best one-to-one matching of clusters to classes (Hungarian), NMI, ARI.

When there are more clusters than classes (over-clustering) a one-to-one matching leaves clusters out, so
`cluster_accuracy(..., mapping="majority")` maps each cluster to its most frequent class instead; results
say which mapping they used. `clustering_scores` decides by the clusters actually used (distinct ids).
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np

from sslab.analysis.structure import sklearn_threads

from sslab.progress import Heartbeat


def contingency(clusters: np.ndarray, labels: np.ndarray, num_clusters: int, num_classes: int) -> np.ndarray:
    """counts[c, k] = number of samples in cluster c with class k."""
    counts = np.zeros((num_clusters, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(clusters), np.asarray(labels)), 1)
    return counts


def cluster_to_class(clusters: np.ndarray, labels: np.ndarray, num_clusters: int | None = None,
                     num_classes: int | None = None, mapping: str = "hungarian") -> np.ndarray:
    """map[c] = the class cluster c stands for (-1 for a cluster the one-to-one matching leaves out)."""
    clusters, labels = np.asarray(clusters), np.asarray(labels)
    num_clusters = num_clusters or int(clusters.max()) + 1
    num_classes = num_classes or int(labels.max()) + 1
    counts = contingency(clusters, labels, num_clusters, num_classes)
    if mapping == "majority":
        return counts.argmax(axis=1)
    from scipy.optimize import linear_sum_assignment  # scipy and scikit-learn load when a command needs them

    rows, cols = linear_sum_assignment(-counts)  # maximise matched counts
    out = np.full(num_clusters, -1, dtype=np.int64)
    out[rows] = cols
    return out


def cluster_accuracy(clusters: np.ndarray, labels: np.ndarray, num_clusters: int | None = None,
                     num_classes: int | None = None, mapping: str = "hungarian") -> float:
    m = cluster_to_class(clusters, labels, num_clusters, num_classes, mapping)
    return float((m[np.asarray(clusters)] == np.asarray(labels)).mean())


def check_ids(clusters: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer arrays of equal length with no negative id (unlabelled samples, -1, must be left out first)."""
    clusters, labels = np.asarray(clusters), np.asarray(labels)
    if clusters.shape != labels.shape:
        raise ValueError(f"clusters {clusters.shape} and labels {labels.shape} must have the same shape")
    if (clusters < 0).any() or (labels < 0).any():
        raise ValueError("cluster ids and labels must be >= 0; leave unlabelled samples (-1) out first")
    return clusters.astype(np.int64), labels.astype(np.int64)


def clustering_scores(clusters: np.ndarray, labels: np.ndarray, num_clusters: int | None = None,
                      num_classes: int | None = None) -> dict[str, float | str]:
    """ACC, NMI, ARI. The clusters counted are the distinct ids given (ids {0, 5, 9} are 3 clusters, not 10):
    ACC by one-to-one Hungarian matching when they are no more than the classes, else by majority mapping.
    `num_clusters`, when given, is the most ids allowed (ids must lie in [0, num_clusters)); `num_classes`
    defaults to the largest label + 1. Negative ids or labels raise ValueError."""
    clusters, labels = check_ids(clusters, labels)
    if len(clusters) == 0:
        raise ValueError("no samples to score")
    if num_clusters is not None and clusters.max() >= num_clusters:
        raise ValueError(f"cluster id {clusters.max()} is out of range for {num_clusters} clusters")
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    ids, dense = np.unique(clusters, return_inverse=True)  # dense ids 0..len(ids)-1
    num_classes = max(num_classes or 0, int(labels.max()) + 1)
    mapping = "hungarian" if len(ids) <= num_classes else "majority"
    return {"acc": cluster_accuracy(dense, labels, len(ids), num_classes, mapping),
            "nmi": float(normalized_mutual_info_score(labels, clusters)),
            "ari": float(adjusted_rand_score(labels, clusters)), "acc_mapping": mapping,
            "clusters_used": len(ids)}


# ---- the k-means protocol: one result per feature set --------------------------------------------------------------
KMEANS_CACHE = "kmeans-cache.npz"  # in the run folder: the last k-means result of each feature set


def l2_normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def kmeans_fit(train: np.ndarray, test: np.ndarray, k: int, seed: int = 0, n_init: int = 10) -> dict[str, np.ndarray]:
    """The k-means protocol every command uses (docs/methods.md): KMeans(k, n_init, seed) fitted on the l2-normalised
    train features, each test feature assigned to its nearest centre. Returns train/test assignments and centres."""
    from sklearn.cluster import KMeans

    x = l2_normalised(train)
    with sklearn_threads(len(x)), Heartbeat(f"k-means, {k} clusters of {x.shape[0]} x {x.shape[1]} features, "
                                            f"{n_init} restarts"):
        model = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(x)
        test_assign = model.predict(l2_normalised(test)) if len(test) else np.zeros(0, dtype=np.int64)
    return {"train": model.labels_.astype(np.int64), "test": np.asarray(test_assign, dtype=np.int64),
            "centres": model.cluster_centers_}


def _read_cache(path: Path) -> dict[str, np.ndarray]:
    """The arrays of RUN/kmeans-cache.npz; {} when it is missing or damaged (then k-means runs again)."""
    import zipfile
    import zlib

    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            return {n: z[n] for n in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error):
        return {}


def _fits(found: dict[str, Any], n_train: int, n_test: int, k: int) -> bool:
    """A cached k-means result holds assignments in 0..k-1 for these train and test features (not a damaged or
    hand-made file)."""
    train, test, centres = found["train"], found["test"], found["centres"]
    if not all(isinstance(a, np.ndarray) for a in (train, test, centres)):
        return False
    labels_ok = all(a.ndim == 1 and a.dtype.kind in "iu" and (not a.size or 0 <= a.min() <= a.max() < k)
                    for a in (train, test))
    return labels_ok and len(train) == n_train and len(test) == n_test and centres.ndim == 2 and len(centres) == k


def features_key(features: list[np.ndarray], **settings: Any) -> str:
    """A fingerprint of the feature arrays and the settings (sha1 of their bytes)."""
    h = hashlib.sha1(repr(sorted(settings.items())).encode())
    for f in features:
        a = np.ascontiguousarray(f, dtype=np.float32)
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def cached_kmeans(run_dir: Path | None, name: str, train: np.ndarray, test: np.ndarray, k: int, seed: int = 0,
                  n_init: int = 10) -> dict[str, np.ndarray]:
    """`kmeans_fit`, remembered in RUN/kmeans-cache.npz under `name` (e.g. "learned", "untrained", "pixels") and
    reused while the features and settings are the same, so `analyze`, `scan` and the report show one k-means
    result per feature set. The cache holds only arrays (loaded with allow_pickle=False)."""
    key = features_key([train, test], k=k, seed=seed, n_init=n_init)
    path = Path(run_dir) / KMEANS_CACHE if run_dir is not None else None
    stored = _read_cache(path) if path is not None else {}
    if str(stored.get(f"{name}/key", "")) == key:
        found = {part: stored.get(f"{name}/{part}") for part in ("train", "test", "centres")}
        if _fits(found, len(train), len(test), k):
            return found  # type: ignore[return-value]
    result = kmeans_fit(train, test, k, seed, n_init)
    if path is not None:
        from sslab.checkpoint import atomic_write_bytes

        stored.update({f"{name}/key": np.array(key), **{f"{name}/{p}": v for p, v in result.items()}})
        buffer = io.BytesIO()
        np.savez(buffer, **stored)
        atomic_write_bytes(path, buffer.getvalue())
    return result
