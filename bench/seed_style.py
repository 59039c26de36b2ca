"""The seed notebook's mini-CNN, written the seed's way: one image at a time, Python loops.

This is the baseline the benchmark measures the engine against, so it deliberately keeps
the seed's structure (``MiniCNNManual`` in seed ``000``): a 3x3 kernel slid over a 2-D image
with two nested loops, ReLU, a 2x2 max pool with stride 1 (loops again), a dense layer to
one sigmoid unit, binary cross-entropy, and a hand-written backward pass with loops over
positions. Only two things differ from the seed, neither of which changes its speed:

* randomness comes from a seeded ``numpy.random.Generator`` (not the global state), and the
  initial weights can be given, so both implementations can start from the same point;
* the sizes follow the image (``size - 2`` conv outputs, ``size - 3`` pooled), so it runs
  on any square image, not only 5x5.

Like the seed, the pool backward sends a window's gradient to every tied maximum. Ties only
happen between ReLU zeros, whose gradient the ReLU then blocks, so it trains the same as
the engine's first-max rule.
"""

from __future__ import annotations

import numpy as np


class SeedStyleMiniCNN:
    """Conv(3x3, 1 filter, no bias) -> ReLU -> MaxPool(2, stride 1) -> Dense(1) -> sigmoid.

    Weights: ``kernel`` (3, 3), ``dense_weights`` (P*P, 1), ``dense_bias`` (1, 1), with
    ``P = size - 3``. Without explicit weights they are ``N(0, 1) * 0.1``, like the seed.
    """

    def __init__(
        self,
        learning_rate: float = 0.01,
        size: int = 5,
        seed: int = 0,
        kernel: np.ndarray | None = None,
        dense_weights: np.ndarray | None = None,
        dense_bias: np.ndarray | None = None,
    ):
        rng = np.random.default_rng(seed)
        self.conv_size = size - 2
        self.pool_out = self.conv_size - 1
        n_dense = self.pool_out * self.pool_out
        self.kernel = (
            rng.standard_normal((3, 3)) * 0.1 if kernel is None else np.array(kernel, float)
        )
        self.dense_weights = (
            rng.standard_normal((n_dense, 1)) * 0.1
            if dense_weights is None
            else np.array(dense_weights, float).reshape(n_dense, 1)
        )
        self.dense_bias = (
            rng.standard_normal((1, 1)) * 0.1
            if dense_bias is None
            else np.array(dense_bias, float).reshape(1, 1)
        )
        self.lr = learning_rate

    def _sigmoid(self, x):
        return 1 / (1 + np.exp(-x))

    def _relu(self, x):
        return np.maximum(0, x)

    def _binary_cross_entropy_loss(self, y_true, y_pred):
        return -(y_true * np.log(y_pred) + (1 - y_true) * np.log(1 - y_pred))

    def forward(self, image):
        n, p = self.conv_size, self.pool_out
        conv_output = np.zeros((n, n))
        for y in range(n):
            for x in range(n):
                region = image[y : y + 3, x : x + 3]
                conv_output[y, x] = np.sum(region * self.kernel)
        relu_output = self._relu(conv_output)
        pool_output = np.zeros((p, p))
        for y in range(p):
            for x in range(p):
                region = relu_output[y : y + 2, x : x + 2]
                pool_output[y, x] = np.max(region)
        dense_input = pool_output.flatten().reshape(1, -1)
        dense_output = dense_input @ self.dense_weights + self.dense_bias
        prediction = self._sigmoid(dense_output)
        cache = {
            "image": image,
            "relu_output": relu_output,
            "pool_output": pool_output,
            "dense_input": dense_input,
            "prediction": prediction,
        }
        return prediction, cache

    def backward(self, y_true, cache):
        n, p = self.conv_size, self.pool_out
        pred = cache["prediction"]
        d_loss_d_pred = -(y_true / pred - (1 - y_true) / (1 - pred))
        d_loss_d_dense = d_loss_d_pred * pred * (1 - pred)
        self.grad_dense_weights = cache["dense_input"].T @ d_loss_d_dense
        self.grad_dense_bias = np.sum(d_loss_d_dense, axis=0, keepdims=True)
        d_loss_d_pool = (d_loss_d_dense @ self.dense_weights.T).reshape(p, p)
        d_loss_d_relu = np.zeros((n, n))
        for y in range(p):
            for x in range(p):
                region = cache["relu_output"][y : y + 2, x : x + 2]
                mask = region == np.max(region)
                d_loss_d_relu[y : y + 2, x : x + 2] += d_loss_d_pool[y, x] * mask
        d_loss_d_conv = d_loss_d_relu * (cache["relu_output"] > 0)
        self.grad_kernel = np.zeros(self.kernel.shape)
        for y in range(n):
            for x in range(n):
                region = cache["image"][y : y + 3, x : x + 3]
                self.grad_kernel += region * d_loss_d_conv[y, x]

    def step(self):
        self.kernel -= self.lr * self.grad_kernel
        self.dense_weights -= self.lr * self.grad_dense_weights
        self.dense_bias -= self.lr * self.grad_dense_bias

    def train(self, X, y, epochs):
        """One SGD step per image, in order; returns the mean loss of every epoch."""
        losses = []
        for _ in range(epochs):
            total_loss = 0.0
            for image, label in zip(X, y, strict=True):
                prediction, cache = self.forward(image)
                total_loss += float(self._binary_cross_entropy_loss(label, prediction)[0, 0])
                self.backward(label, cache)
                self.step()
            losses.append(total_loss / len(X))
        return losses

    def predict(self, X):
        """Probabilities shaped (n, 1), one forward call per image."""
        return np.array([self.forward(image)[0][0] for image in X])
