"""Models: a registry + factory, the paper's VGG-like family and its presets."""

from fer_ray.models.registry import create_model, list_models, register_model
from fer_ray.models.shapes import conv2d_output_shape, conv_output_size
from fer_ray.models.vgg_fer import MODEL_PRESETS, VGGFer, build_model, feature_shape

__all__ = [
    "MODEL_PRESETS",
    "VGGFer",
    "build_model",
    "conv2d_output_shape",
    "conv_output_size",
    "create_model",
    "feature_shape",
    "list_models",
    "register_model",
]
