"""convscope: see inside convolutional networks.

A NumPy CNN engine checked against Keras, driven by Hydra, chained by DVC, tracked by MLflow.
"""

__version__ = "0.1.0"
