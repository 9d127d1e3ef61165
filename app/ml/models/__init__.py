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
from app.ml.models.image_models import (
                                        PreActResNet18,
                                        WideResNet,
                                        ZooModel,
                                        build_image_model,
                                        image_mixing_layers,
)
from app.ml.models.multimodal import MultimodalModel, build_model
from app.ml.models.spec import ModelSpec, ModelSpecError
from app.ml.models.vision_libs import timm_available
from app.ml.models.weights import WeightMatch, load_matching, match_state

__all__ = ["AudioEncoder", "Fusion", "ImageEncoder", "LogMel", "ModelSpec", "ModelSpecError",
           "MultimodalModel", "PreActResNet18", "SmallCNN", "TabularEncoder", "TextEncoder",
           "VideoEncoder", "WeightMatch", "WideResNet", "ZooModel", "build_fusion",
           "build_image_model", "build_model", "image_mixing_layers", "load_matching",
           "match_state", "timm_available", "torchvision_available"]
