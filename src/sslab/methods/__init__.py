"""Self-supervised methods. Importing this package registers every method in METHODS."""
from sslab.methods import simsiam  # noqa: F401  (registration)
from sslab.methods import byol, mocov2, phinet, simclr, xphinet  # noqa: F401  (registration)
from sslab.methods.base import Method
from sslab.registry import METHODS

__all__ = ["Method", "METHODS"]
