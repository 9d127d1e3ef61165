"""Encoders and classification heads."""

from app.ml.models.cnn import ModelSpec, SmallCNN, build_model

__all__ = ["ModelSpec", "SmallCNN", "build_model"]
