"""convscope: see inside convolutional networks.

A NumPy CNN engine checked against Keras, driven by Hydra, chained by DVC, tracked by MLflow.
"""

from convscope import native_logs

# Before anything imports TensorFlow: its C++ start-up lines stay off the console.
native_logs.install()

__version__ = "0.1.0"
