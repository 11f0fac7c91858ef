"""sslab: self-supervised representation learning on images.

Data lives on the device as uint8 tensors and is augmented there in batches; one dataclass config
drives every run; every run writes its own folder (config, metrics, TensorBoard, plots, checkpoints).

The Python API (docs/python-api.md): `sslab.train`, `sslab.load`, `sslab.embed`, `sslab.evaluate`,
`sslab.export`, `sslab.make_config`, `sslab.load_dataset` and the registries `DATASETS`, `BACKBONES`, `METHODS`.
Each is imported on first use, so `import sslab` stays fast.
"""
import importlib
import sys
import types

__version__ = "0.1.0"

_LAZY = {  # public name -> the module that defines it
    "load": "sslab.api", "embed": "sslab.api", "evaluate": "sslab.api", "export": "sslab.api",
    "make_config": "sslab.api", "Config": "sslab.config", "load_dataset": "sslab.data",
    "DATASETS": "sslab.data", "BACKBONES": "sslab.models", "METHODS": "sslab.methods",
}
__all__ = ["__version__", "train", *_LAZY]


class _CallableModule(types.ModuleType):
    """`sslab.train` is both the module sslab/train.py (`sslab.train.fit`) and the API function
    `sslab.train(...)`: Python binds a package's attribute to its submodule once that is imported, so the
    module itself is made callable."""

    def __call__(self, *args, **kwargs):
        from sslab.api import train

        return train(*args, **kwargs)


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        if name == "train" and isinstance(value, types.ModuleType):  # the import system binding sslab/train.py
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name):
    if name == "train":
        return importlib.import_module("sslab.train")  # bound (and made callable) by _Package.__setattr__
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sslab' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
