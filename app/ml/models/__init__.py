"""Encoders, fusion heads and the models built from a ``ModelSpec``."""

from app.ml.models.cnn import SmallCNN
from app.ml.models.encoders import (
                                    AudioEncoder,
                                    ImageEncoder,
                                    LogMel,
                                    TabularEncoder,
                                    TextEncoder,
                                    VideoEncoder,
                                    torchvision_available,
)
from app.ml.models.fusion import Fusion, build_fusion
from app.ml.models.multimodal import MultimodalModel, build_model
from app.ml.models.spec import ModelSpec

__all__ = ["AudioEncoder", "Fusion", "ImageEncoder", "LogMel", "ModelSpec", "MultimodalModel",
           "SmallCNN", "TabularEncoder", "TextEncoder", "VideoEncoder", "build_fusion",
           "build_model", "torchvision_available"]
