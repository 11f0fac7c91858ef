"""sslab: self-supervised representation learning on images.

Data lives on the device as uint8 tensors and is augmented there in batches; one dataclass config
drives every run; every run writes its own folder (config, metrics, TensorBoard, plots, checkpoints).

The Python API (docs/python-api.md): `sslab.train`, `sslab.load`, `sslab.embed`, `sslab.evaluate`,
`sslab.export`, `sslab.make_config`, `sslab.load_dataset` and the registries `DATASETS`, `BACKBONES`, `METHODS`.
Each is imported on first use, so `import sslab` stays fast.
"""
import importlib

from sslab import portable as _portable

__version__ = "0.1.0"
_portable.enable_mps_fallback()  # macOS: operators MPS lacks run on the CPU; only takes effect before torch loads

_LAZY = {  # public name -> the module that defines it
    "train": "sslab.api", "load": "sslab.api", "embed": "sslab.api", "evaluate": "sslab.api", "export": "sslab.api",
    "make_config": "sslab.api", "Config": "sslab.config", "load_dataset": "sslab.data",
    "DATASETS": "sslab.data", "BACKBONES": "sslab.models", "METHODS": "sslab.methods",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sslab' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
