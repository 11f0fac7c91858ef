"""sslab: self-supervised representation learning on images.

Data lives on the device as uint8 tensors and is augmented there in batches; one dataclass config
drives every run; every run writes its own folder (config, metrics, TensorBoard, plots, checkpoints).
"""
__version__ = "0.1.0"
