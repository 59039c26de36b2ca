"""Explanations of a trained CNN, on the NumPy engine or on Keras, as NumPy arrays.

- :func:`saliency`, :func:`grad_cam` (+ :func:`upsample`): where in an image the evidence
  for a class is;
- :func:`activation_maximisation`: what a filter responds to;
- :func:`cka`, :func:`layer_similarity`: how alike two layers' representations are.

Every function takes an engine ``Sequential`` or a ``keras.Model`` of the same kind (one
chain of layers, explicit input). The engine path runs the engine's own backward pass and
imports NumPy only; TensorFlow is imported the first time a Keras model is passed.
Bad arguments raise one-line ``ValueError``s naming the argument.
"""

from convscope.interpret.attribution import grad_cam, saliency, upsample
from convscope.interpret.maximisation import activation_maximisation
from convscope.interpret.similarity import cka, layer_similarity

__all__ = [
    "activation_maximisation",
    "cka",
    "grad_cam",
    "layer_similarity",
    "saliency",
    "upsample",
]
