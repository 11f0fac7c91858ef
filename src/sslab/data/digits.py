"""scikit-learn's bundled 8x8 handwritten digits (1,797 images): the dataset that needs no download.
It ships no test split, so `load_dataset` holds out a stratified, seeded `test_fraction`."""
from __future__ import annotations

import numpy as np
import torch

from sslab.data.base import ImageData
from sslab.data.source import LoadRequest, Source
from sslab.registry import DATASETS


@DATASETS.register("digits")
def digits(request: LoadRequest) -> Source:
    return Source(decode=decode)  # decoding takes milliseconds: not cached


def decode() -> ImageData:
    from sklearn.datasets import load_digits  # scikit-learn is slow to import; only load it when used

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # values 0..16 -> 0..255
    x = torch.from_numpy(images).unsqueeze(1)  # N x 1 x 8 x 8
    y = torch.from_numpy(bunch.target.astype(np.int64))
    return ImageData("digits", x, y, x[:0], y[:0], [str(d) for d in range(10)])
