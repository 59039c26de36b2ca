"""The seed's Keras CNN: built from a config, trained deterministically, recorded per epoch.

This subpackage (with ``convscope.scratch.bridge``) is the only place that imports TensorFlow,
so importing it costs TensorFlow's start-up time; the rest of convscope stays light.
"""

from convscope.keras_cnn.callbacks import EpochHook, EpochRecorder
from convscope.keras_cnn.model import (
    activation_model,
    build_model,
    conv_kernels,
    feature_maps,
    make_optimizer,
)
from convscope.keras_cnn.train import (
    ModelFileError,
    ModelFileNotFoundError,
    TrainResult,
    load_model,
    save_model,
    seed_everything,
    train,
)

__all__ = [
    "EpochHook",
    "EpochRecorder",
    "ModelFileError",
    "ModelFileNotFoundError",
    "TrainResult",
    "activation_model",
    "build_model",
    "conv_kernels",
    "feature_maps",
    "load_model",
    "make_optimizer",
    "save_model",
    "seed_everything",
    "train",
]
