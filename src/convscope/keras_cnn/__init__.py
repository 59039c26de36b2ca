"""The seed's Keras CNN: built from a config, trained deterministically, recorded per epoch.

This subpackage (with ``convscope.scratch.bridge``) is the only place that imports TensorFlow,
so importing it costs TensorFlow's start-up time; the rest of convscope stays light.
"""

from convscope.keras_cnn.callbacks import *  # noqa: F403
from convscope.keras_cnn.callbacks import __all__ as _callbacks
from convscope.keras_cnn.model import *  # noqa: F403
from convscope.keras_cnn.model import __all__ as _model
from convscope.keras_cnn.train import *  # noqa: F403
from convscope.keras_cnn.train import __all__ as _train

__all__ = [*_callbacks, *_model, *_train]
