"""mixlab: a REST service for training models with mixup-style augmentation."""

__version__ = "0.1.0"
