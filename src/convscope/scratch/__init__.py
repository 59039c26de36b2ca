"""The NumPy CNN engine (imports NumPy only, never TensorFlow)."""
