"""Self-supervised methods, one file each. Importing this package imports every module of this folder, so a
new method file registers itself in METHODS with no other edit (sslab/methods/base.py describes the form)."""
import importlib
import pkgutil

from sslab.methods.base import Method, MethodSettings
from sslab.registry import METHODS

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Method", "MethodSettings", "METHODS"]
