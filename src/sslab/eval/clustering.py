"""Clustering metrics: ACC under the best one-to-one matching of clusters to classes (Hungarian), NMI, ARI.

When there are more clusters than classes (over-clustering) a one-to-one matching leaves clusters out, so
`cluster_accuracy(..., mapping="majority")` maps each cluster to its most frequent class instead; results
say which mapping they used.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


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
    rows, cols = linear_sum_assignment(-counts)  # maximise matched counts
    out = np.full(num_clusters, -1, dtype=np.int64)
    out[rows] = cols
    return out


def cluster_accuracy(clusters: np.ndarray, labels: np.ndarray, num_clusters: int | None = None,
                     num_classes: int | None = None, mapping: str = "hungarian") -> float:
    m = cluster_to_class(clusters, labels, num_clusters, num_classes, mapping)
    return float((m[np.asarray(clusters)] == np.asarray(labels)).mean())


def clustering_scores(clusters: np.ndarray, labels: np.ndarray, num_clusters: int | None = None,
                      num_classes: int | None = None) -> dict[str, float | str]:
    """ACC, NMI, ARI; ACC by Hungarian matching, or by majority mapping when clusters outnumber classes."""
    clusters, labels = np.asarray(clusters), np.asarray(labels)
    num_clusters = num_clusters or int(clusters.max()) + 1
    num_classes = num_classes or int(labels.max()) + 1
    mapping = "hungarian" if num_clusters <= num_classes else "majority"
    return {"acc": cluster_accuracy(clusters, labels, num_clusters, num_classes, mapping),
            "nmi": float(normalized_mutual_info_score(labels, clusters)),
            "ari": float(adjusted_rand_score(labels, clusters)), "acc_mapping": mapping}
