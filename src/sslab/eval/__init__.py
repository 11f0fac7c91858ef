"""Evaluation: features of a frozen backbone, kNN, linear probes, clustering metrics."""
