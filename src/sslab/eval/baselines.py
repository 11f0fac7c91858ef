"""Reference points for every learned figure: the raw pixels and the untrained network.

A learned kNN accuracy means little alone. sslab prints it beside (a) the raw pixels under the same protocol,
taking the better of plain and mean-centred pixel vectors so the baseline is never a straw man, and (b) the
run's own network before training (its initial weights, RUN/checkpoints/init.pt).

Pixel vectors are memory-bounded: images are turned into floats a chunk at a time, and images with more than
PIXEL_MAX_DIM values (STL-10's 96x96x3 = 27,648) are mapped by a fixed, seeded Gaussian random projection to
PIXEL_MAX_DIM dimensions (Johnson-Lindenstrauss: distances and dot products kept to a few per cent), which the
results say. CIFAR-size images (3,072 values) are used as they are.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sslab.eval.knn import knn_accuracy

PIXEL_MAX_DIM = 4096
PIXEL_CHUNK = 4096  # images converted to float at a time
INIT_CHECKPOINT = "checkpoints/init.pt"


def pixel_projection(dim: int, device: torch.device | str = "cpu", seed: int = 0) -> torch.Tensor | None:
    """The fixed (dim, PIXEL_MAX_DIM) Gaussian projection / sqrt(PIXEL_MAX_DIM), or None when dim is small enough."""
    if dim <= PIXEL_MAX_DIM:
        return None
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(dim, PIXEL_MAX_DIM, generator=g) / PIXEL_MAX_DIM ** 0.5).to(device)


def pixel_features(images: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float (N, D) pixel vectors in [0, 1] (randomly projected to PIXEL_MAX_DIM when
    C*H*W is larger), converted a chunk at a time, minus `center` when given."""
    flat = images.flatten(1)  # (N, C*H*W), also for N = 0
    proj = pixel_projection(flat.shape[1], images.device)
    parts = []
    for i in range(0, len(flat), PIXEL_CHUNK):
        x = flat[i:i + PIXEL_CHUNK].float() / 255.0
        parts.append(x @ proj if proj is not None else x)
    x = torch.cat(parts) if parts else torch.zeros(0, flat.shape[1] if proj is None else PIXEL_MAX_DIM)
    return x - center if center is not None else x


class PixelVectors(torch.nn.Module):
    """Normalised images (B, C, H, W) -> their pixel vectors (B, D), randomly projected like `pixel_features`:
    the raw-pixel "backbone" for protocols that take a module (the standard probe)."""

    def __init__(self, dim: int):
        super().__init__()
        proj = pixel_projection(dim)
        self.register_buffer("proj", proj if proj is not None else torch.zeros(0))
        self.device_anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)  # protocols find the device here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1).float()
        return x @ self.proj if self.proj.numel() else x


def pixel_description(images: torch.Tensor) -> str:
    dim = int(np.prod(images.shape[1:]))
    what = f"raw pixel vectors ({dim} values in [0, 1])"
    if dim > PIXEL_MAX_DIM:
        what += f", seeded Gaussian random projection to {PIXEL_MAX_DIM} dimensions (memory bound)"
    return what


@torch.no_grad()
def pixel_knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                       num_classes: int, k: int, t: float) -> float | None:
    """kNN top-1 of raw pixel vectors, the better of plain and centred on the train mean (same k and t as
    the learned features). None when there is nothing to score (no test images or no labelled train image)."""
    labelled = train_y >= 0
    if len(test_x) == 0 or int(labelled.sum()) == 0:
        return None
    bank = pixel_features(train_x[labelled])
    queries = pixel_features(test_x)
    mean = bank.mean(dim=0, keepdim=True)
    plain = knn_accuracy(bank, train_y[labelled], queries, test_y, num_classes, k, t)
    centred = knn_accuracy(bank - mean, train_y[labelled], queries - mean, test_y, num_classes, k, t)
    return max(plain, centred)


def pixel_kmeans(train_x: torch.Tensor, test_x: torch.Tensor, test_y: np.ndarray, k: int, seed: int = 0,
                 n_init: int = 10, run_dir: Path | None = None) -> dict[str, Any]:
    """The k-means protocol (`kmeans_fit`) on pixel vectors, the better (test ACC) of plain and centred:
    {"scores": ACC/NMI/ARI on the labelled test images, "centred": bool, "train", "test"}."""
    from sslab.eval.clustering import cached_kmeans, clustering_scores

    train = pixel_features(train_x).cpu().numpy()
    test = pixel_features(test_x).cpu().numpy()
    mean = train.mean(axis=0, keepdims=True)
    known = np.asarray(test_y) >= 0
    best: dict[str, Any] | None = None
    for centred in (False, True):
        shift = mean if centred else 0.0
        km = cached_kmeans(run_dir, "pixels-centred" if centred else "pixels", train - shift, test - shift, k, seed, n_init)
        scores = clustering_scores(km["test"][known], np.asarray(test_y)[known]) if known.any() else None
        if best is None or (scores is not None and (best["scores"] is None or scores["acc"] > best["scores"]["acc"])):
            best = {"scores": scores, "centred": centred, "train": km["train"], "test": km["test"]}
    return best


# ---- the untrained network ----------------------------------------------------------------------------------------
def untrained_method(run_dir: Path, cfg, channels: int, image_size: int, device: torch.device) -> tuple[Any, str]:
    """The run's method with its initial weights, in eval mode on `device`, and where they came from:
    RUN/checkpoints/init.pt (written by training at step 0), else rebuilt from the config's seed as training
    builds it (seed everything, then build; the global random state is restored afterwards)."""
    from sslab.checkpoint import load_checkpoint
    from sslab.errors import CheckpointError
    from sslab.kit import seed_everything
    from sslab.methods.build import build_method

    path = Path(run_dir) / INIT_CHECKPOINT
    problem = f"this run has no {INIT_CHECKPOINT} (made before sslab wrote it)"
    if path.is_file():
        model = build_method(cfg, channels, image_size)
        try:
            state = load_checkpoint(path)["model"]
            model.load_state_dict(state)
            return model.to(device).eval(), f"{INIT_CHECKPOINT} (the run's weights at step 0)"
        except (CheckpointError, KeyError, TypeError, RuntimeError, ValueError) as e:
            problem = f"{INIT_CHECKPOINT} does not fit this run's model ({type(e).__name__}; replaced or damaged)"
    with fork_random_state():
        seed_everything(cfg.train.seed)
        model = build_method(cfg, channels, image_size)
    source = (f"rebuilt from the config's seed {cfg.train.seed}: {problem}, so these are the weights training "
              "would start from with that seed")
    return model.to(device).eval(), source


@contextlib.contextmanager
def fork_random_state():
    """Restore Python's, NumPy's and torch's global random state on exit."""
    import random

    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(py)
    np.random.set_state(npy)


# ---- saying it ------------------------------------------------------------------------------------------------------
BASELINE_NAMES = {"pixels": "the raw pixels", "untrained": "the untrained network"}


def below_baseline_sentence(results: list[dict[str, Any]]) -> str | None:
    """One sentence naming every learned figure below a baseline (records with "accuracy" and "baselines"
    {name: accuracy}), or None when none is."""
    below = []
    for r in results:
        acc, base = r.get("accuracy"), r.get("baselines") or {}
        worse = [f"{BASELINE_NAMES.get(k, k)} ({100 * v:.1f}%)" for k, v in base.items()
                 if v is not None and acc is not None and acc < v]
        if worse:
            below.append(f"{r['name']} ({100 * acc:.1f}%) is below {' and '.join(worse)}")
    if not below:
        return None
    return ("Below a baseline: " + "; ".join(below) + ". These features are worse than the reference on that "
            "protocol: the method has not learned what the protocol measures, or training was too short.")


def kmeans_baselines(trained, data, k: int, seed: int = 0, n_init: int = 10, features=None) -> dict[str, Any]:
    """The k-means protocol on the raw pixels (better of plain and centred) and on the untrained network's
    features, scored on the labelled test images: {"pixels": scores, "untrained": scores, ...}.
    `features(backbone, images)`: how the caller extracts its learned features (default `extract_features` with
    the run's normalisation), so the untrained network is measured the same way."""
    from sslab.eval.clustering import cached_kmeans, clustering_scores
    from sslab.eval.features import extract_features

    info = trained.data_info
    if features is None:
        def features(backbone, images):
            return extract_features(backbone, images, info["mean"], info["std"])

    test_y = data.test_y.cpu().numpy()
    known = test_y >= 0
    if not known.any():  # no labelled test image to score them on (a set without a test split)
        return {"pixels": None, "pixels_centred": None, "pixels_input": pixel_description(data.train_x),
                "untrained": None, "untrained_source": None, "split": "test",
                "protocol": "none: the run has no labelled test images to score k-means on"}
    pixels = pixel_kmeans(data.train_x, data.test_x, test_y, k, seed, n_init, trained.run_dir)
    model, source = untrained_method(trained.run_dir, trained.cfg, info["channels"], info["image_size"], trained.device)
    train, test = (features(model.backbone, x).float().cpu().numpy() for x in (data.train_x, data.test_x))
    km = cached_kmeans(trained.run_dir, "untrained", train, test, k, seed, n_init)
    untrained = clustering_scores(km["test"][known], test_y[known]) if known.any() else None
    return {"pixels": pixels["scores"], "pixels_centred": pixels["centred"], "pixels_input": pixel_description(data.train_x),
            "untrained": untrained, "untrained_source": source, "split": "test",
            "protocol": "the same k-means (k, n_init, seed; fitted on train, test assigned to the nearest centre)"}


def kmeans_record(name: str, scores: dict[str, Any] | None, baselines: dict[str, Any] | None) -> dict[str, Any]:
    """A k-means ACC as a record `below_baseline_sentence` reads."""
    base = baselines or {}
    return {"name": name, "accuracy": scores.get("acc") if scores else None,
            "baselines": {b: base[b]["acc"] for b in ("pixels", "untrained") if base.get(b)}}


# ---- the baselines of one eval, read from the store or computed (and stored) ------------------------------------------
SOURCES = ("pixels", "untrained")
SOURCE_LABELS = {"pixels": "raw-pixel baseline", "untrained": "untrained-network baseline"}


def baseline_folder() -> Path:
    """Where baselines are kept across runs: `baselines/` in the cache folder the datasets use."""
    from sslab.data.cache import cache_folder
    from sslab.eval.store import STORE_FOLDER

    return cache_folder() / STORE_FOLDER


Compute = Callable[[str, dict[str, Any]], "float | None"]  # (source, key) -> accuracy


class RunBaselines:
    """The raw-pixel and untrained-network baselines of a run's data under `eval`'s protocols, each read from
    the store when it holds exactly the same key, else computed and stored. `measure` logs one line per
    source saying which ("raw-pixel baseline: knn 83.10% (stored, computed 2026-12-05)")."""

    def __init__(self, trained, data, store, log: Callable[[str], None] = print):
        from sslab.eval.store import data_fingerprint, network_fingerprint

        info = trained.data_info
        self.data, self.store, self.log, self.device = data, store, log, trained.device
        self.mean, self.std = tuple(info["mean"]), tuple(info["std"])
        model, self.untrained_source = untrained_method(trained.run_dir, trained.cfg, info["channels"],
                                                        info["image_size"], trained.device)
        self.untrained = model.backbone
        normalisation = {"mean": list(self.mean), "std": list(self.std)}
        data_id = data_fingerprint(data)
        self.identity = {"pixels": {"data": data_id},
                         "untrained": {"data": data_id, "network": network_fingerprint(self.untrained),
                                       "normalisation": normalisation}}
        self.normalisation = normalisation
        self._features: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def key(self, source: str, protocol: str, settings: dict[str, Any]) -> dict[str, Any]:
        from sslab.eval.store import BASELINE_FORMAT

        key = {"format": BASELINE_FORMAT, "source": source, "protocol": protocol, "settings": settings,
               **self.identity[source]}
        if protocol == "linear-standard":  # the probe normalises the images it crops, pixels included
            key["normalisation"] = self.normalisation
        return key

    def net(self, source: str) -> torch.nn.Module:
        """The "backbone" of a source: the pixel vectors or the untrained network."""
        if source == "pixels":
            return PixelVectors(int(np.prod(self.data.train_x.shape[1:]))).to(self.device)
        return self.untrained

    def features(self, source: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, test) features of a source, extracted once."""
        from sslab.eval.features import extract_features

        if source not in self._features:
            x = (self.data.train_x, self.data.test_x)
            self._features[source] = (tuple(pixel_features(i) for i in x) if source == "pixels" else
                                      tuple(extract_features(self.untrained, i, self.mean, self.std) for i in x))
        return self._features[source]

    def measure(self, protocols: dict[str, tuple[dict[str, Any], Compute]],
                ) -> tuple[dict[str, dict[str, float | None]], dict[str, dict[str, str]]]:
        """{protocol: (settings, compute(source, key) -> accuracy)} -> ({protocol: {source: accuracy}},
        {protocol: {source: when it was computed}}), each from the store or computed now and stored."""
        accuracy: dict[str, dict[str, float | None]] = {p: {} for p in protocols}
        computed: dict[str, dict[str, str]] = {p: {} for p in protocols}
        for source in SOURCES:
            entries = {}
            for protocol, (settings, compute) in protocols.items():
                key = self.key(source, protocol, settings)
                entry = self.store.get(key)
                if entry is None:
                    start = time.perf_counter()
                    value = compute(source, key)
                    entry = {**self.store.put(key, value, time.perf_counter() - start, self.device.type), "now": True}
                entries[protocol] = entry
                accuracy[protocol][source] = entry["accuracy"]
                computed[protocol][source] = entry["computed"]
            self.log(baseline_line(source, entries))
        return accuracy, computed

    # ---- the protocols, on a source ----
    def knn_accuracy(self, source: str, k: int, t: float) -> float | None:
        """kNN on the source's features; for the pixels the better of plain and centred (`pixel_knn_accuracy`)."""
        d = self.data
        keep = d.test_y >= 0
        if source == "pixels":
            return pixel_knn_accuracy(d.train_x, d.train_y, d.test_x[keep], d.test_y[keep], d.num_classes, k, t)
        if not keep.any() or not (d.train_y >= 0).any():
            return None
        train_f, test_f = self.features(source)
        return knn_accuracy(train_f, d.train_y, test_f[keep], d.test_y[keep], d.num_classes, k, t)

    def fast_accuracy(self, source: str, classifier: str, c_grid, val_fraction: float, seed: int) -> float | None:
        """The fast probe (same classifier, C grid, validation split and seed) on the source's features."""
        from sslab.eval.linear import fit_fast_probe, predict

        d = self.data
        keep = d.test_y >= 0
        if not keep.any():
            return None
        train_f, test_f = self.features(source)
        result = fit_fast_probe(train_f, d.train_y, d.num_classes, classifier, c_grid, val_fraction, seed)
        return float((predict(result.probe, test_f[keep]) == d.test_y[keep].cpu().numpy()).mean())

    def standard_accuracy(self, source: str, settings: dict[str, Any], key: dict[str, Any], loop,
                          log: Callable[[str], None]) -> float | None:
        """The standard probe with `settings` (epochs, batch_size, lr, crop_scale, flip_p, seed) through the
        source's network, on the kit's loop `loop` (its checkpoint carries the key's hash, so it resumes only
        into the same baseline)."""
        from sslab.eval.features import extract_features
        from sslab.eval.linear import predict, train_standard_probe
        from sslab.eval.store import key_hash

        d, net = self.data, self.net(source)
        keep = d.test_y >= 0
        crop = settings["crop_scale"]
        result = train_standard_probe(net, d.train_x, d.train_y, d.num_classes, self.mean, self.std,
                                      settings["epochs"], settings["batch_size"], settings["lr"],
                                      crop_scale=tuple(crop) if crop else None, flip_p=settings["flip_p"],
                                      seed=settings["seed"], log=log, loop=loop, name=f"{source} linear-standard",
                                      identity={"baseline": key_hash(key)}, keep_checkpoint=True)
        if not keep.any():
            return None
        pred = predict(result.probe, extract_features(net, d.test_x[keep], self.mean, self.std))
        return float((pred == d.test_y[keep].cpu().numpy()).mean())


def _provenance(entry: dict[str, Any]) -> str:
    if not entry.get("now"):
        return f"stored, computed {entry['computed'][:10]}"
    return f"computed in {entry['seconds']:.0f} s" + (", stored for later runs" if entry.get("stored") else "")


def baseline_line(source: str, entries: dict[str, dict[str, Any]]) -> str:
    """"raw-pixel baseline: knn 83.10%, linear-fast 84.00% (stored, computed 2026-12-05)": one source's
    figures and where they came from (said once when the same for all)."""
    how = {p: _provenance(e) for p, e in entries.items()}
    same = len(set(how.values())) == 1
    figures = ", ".join(f"{p} {_percent(e['accuracy'])}" + ("" if same else f" ({how[p]})") for p, e in entries.items())
    return f"{SOURCE_LABELS[source]}: {figures}" + (f" ({next(iter(how.values()))})" if same else "")


def _percent(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"
