"""convscope.keras_cnn."""
