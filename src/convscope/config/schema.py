"""Typed config schemas: one dataclass per config group, with its types and allowed ranges.

conf/ holds every default value; the defaults below mirror it only so a schema can be built in
code (tests, the bridge), and a test checks the two agree. Range checks live in
``__post_init__``, so ``OmegaConf.to_object`` refuses a bad value with a one-line
``ConfigError`` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from convscope.data.lines import POSITIONS as LINE_POSITIONS
from convscope.data.mnist import BUNDLED_SIZE, NUM_CLASSES
from convscope.data.mnist import SOURCES as MNIST_SOURCES
from convscope.validation import short_repr


class ConfigError(ValueError):
    """A config value a user set is not allowed. The message is one line."""


ACTIVATIONS = ("relu", "sigmoid", "tanh")
OPTIMIZERS = ("adam", "sgd")
PADDINGS = ("valid", "same")


SEED_LIMIT = 2**32  # NumPy's legacy seeding and TensorFlow's take seeds below 2**32

# MLflow keeps an experiment name in a 256-character column; a stage's experiment is
# "<experiment_prefix>/<stage>" and the longest stage name has 19 characters.
MAX_EXPERIMENT_NAME = 256
MAX_EXPERIMENT_PREFIX = MAX_EXPERIMENT_NAME - len("/train_scratch_mnist")


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={short_repr(value)} is not allowed: expected {allowed}")


def _finite(obj: Any, prefix: str) -> None:
    """Every float field of ``obj`` is a finite number: inf and nan train to NaN silently."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float):
            _check(math.isfinite(value), f"{prefix}.{f.name}", value, "a finite number")


def check_seed(key: str, value: Any) -> None:
    """A seed every library takes: an integer in [0, 2**32)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < SEED_LIMIT
    _check(ok, key, value, f"an integer in [0, {SEED_LIMIT})")


def _seed(obj: Any, prefix: str, name: str = "seed") -> None:
    check_seed(f"{prefix}.{name}" if prefix else name, getattr(obj, name))


def _positive(obj: Any, prefix: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _check(value is not None and value > 0, f"{prefix}.{name}", value, "a value > 0")


def _choice(obj: Any, prefix: str, name: str, options: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    _check(value in options, f"{prefix}.{name}", value, "one of " + ", ".join(options))


@dataclass
class LinesDataConfig:
    """Synthetic vertical-vs-horizontal line images (seed part 2)."""

    n_samples: int = 100
    size: int = 5
    noise: float = 0.2
    position: str = "centre"
    seed: int = 0

    def __post_init__(self) -> None:
        _finite(self, "data.lines")
        _seed(self, "data.lines")
        _positive(self, "data.lines", "n_samples")
        _check(self.size >= 3, "data.lines.size", self.size, "an integer >= 3")
        _check(self.noise >= 0, "data.lines.noise", self.noise, "a value >= 0")
        _choice(self, "data.lines", "position", LINE_POSITIONS)


@dataclass
class MnistDataConfig:
    """Where MNIST comes from and how much of it a run uses."""

    source: str = "bundled"
    path: str | None = None
    bundled_test_size: int = 1000
    limit_train: int | None = None
    limit_test: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _choice(self, "data.mnist", "source", MNIST_SOURCES)
        _seed(self, "data.mnist")
        size, most = self.bundled_test_size, BUNDLED_SIZE - NUM_CLASSES
        _check(
            NUM_CLASSES <= size <= most and size % NUM_CLASSES == 0,
            "data.mnist.bundled_test_size",
            size,
            f"a multiple of {NUM_CLASSES} in [{NUM_CLASSES}, {most}] "
            f"(the bundled set has {BUNDLED_SIZE} images)",
        )
        for name in ("limit_train", "limit_test"):
            if getattr(self, name) is not None:
                _positive(self, "data.mnist", name)
        _check(
            self.source != "file" or bool(self.path),
            "data.mnist.path",
            self.path,
            "a file or folder when data.mnist.source='file'",
        )


@dataclass
class DataConfig:
    lines: LinesDataConfig = field(default_factory=LinesDataConfig)
    mnist: MnistDataConfig = field(default_factory=MnistDataConfig)


@dataclass
class MiniCNNConfig:
    """The seed's lines mini-CNN trained by the NumPy engine."""

    epochs: int = 50
    lr: float = 0.01
    batch_size: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        _finite(self, "scratch.mini_cnn")
        _seed(self, "scratch.mini_cnn")
        _positive(self, "scratch.mini_cnn", "epochs", "lr", "batch_size")


@dataclass
class CNNConfig:
    """A conv stack like the seed's: [Conv2D -> (MaxPool)] * n -> Flatten -> Dense(softmax).

    Layer i has ``filters * filter_growth**i`` filters, so a sweep over ``filters`` scales the
    whole stack (16 -> 16, 32 as in the seed; 32 -> 32, 64 for the 'wide' exercise).
    ``pool_after`` says, per conv layer, whether a MaxPooling2D follows; ``None`` means after
    every conv layer but the last, which is the seed's layout.
    """

    conv_layers: int = 2
    filters: int = 16
    filter_growth: int = 2
    kernel_size: int = 3
    stride: int = 1
    padding: str = "valid"
    activation: str = "relu"
    pool_size: int = 2
    pool_after: list[bool] | None = None
    num_classes: int = 10
    input_shape: list[int] = field(default_factory=lambda: [28, 28, 1])
    optimizer: str = "adam"
    learning_rate: float = 0.001
    momentum: float = 0.0
    epochs: int = 3
    batch_size: int = 32
    validation_split: float = 0.1
    seed: int = 0

    _prefix = "keras"

    def __post_init__(self) -> None:
        p = self._prefix
        _finite(self, p)
        _seed(self, p)
        positive = "conv_layers filters filter_growth kernel_size stride pool_size num_classes"
        _positive(self, p, *positive.split(), "learning_rate", "epochs", "batch_size")
        _choice(self, p, "activation", ACTIVATIONS)
        _choice(self, p, "optimizer", OPTIMIZERS)
        _choice(self, p, "padding", PADDINGS)
        _check(0 <= self.momentum < 1, f"{p}.momentum", self.momentum, "a value in [0, 1)")
        split = self.validation_split
        _check(0 <= split < 1, f"{p}.validation_split", split, "a value in [0, 1)")
        shape, pools = self.input_shape, self.pool_after
        ok = len(shape) == 3 and all(int(d) > 0 for d in shape)
        _check(ok, f"{p}.input_shape", shape, "[height, width, channels] with positive sizes")
        ok = pools is None or len(pools) == self.conv_layers
        _check(ok, f"{p}.pool_after", pools, f"one bool per conv layer ({self.conv_layers})")
        self.layer_shapes()  # raises ConfigError when a kernel or pool outgrows its input

    @property
    def pools(self) -> list[bool]:
        if self.pool_after is not None:
            return [bool(v) for v in self.pool_after]
        return [i < self.conv_layers - 1 for i in range(self.conv_layers)]

    @property
    def layer_filters(self) -> list[int]:
        return [self.filters * self.filter_growth**i for i in range(self.conv_layers)]

    def layer_shapes(self) -> list[tuple[str, tuple[int, int, int]]]:
        """(layer kind, output shape HWC) for every conv and pool layer, checking each fits."""
        h, w, _ = (int(d) for d in self.input_shape)
        k, s, q, p = self.kernel_size, self.stride, self.pool_size, self._prefix
        shapes = []
        for i, (f, pool) in enumerate(zip(self.layer_filters, self.pools, strict=True), 1):
            if self.padding == "valid":
                fits = f"a kernel that fits conv layer {i}'s {h}x{w} input"
                _check(k <= min(h, w), f"{p}.kernel_size", k, fits)
                h, w = (h - k) // s + 1, (w - k) // s + 1
            else:  # 'same', TensorFlow's rule: out = ceil(in / stride)
                h, w = -(-h // s), -(-w // s)
            shapes.append(("conv", (h, w, f)))
            if pool:
                fits = f"a pool that fits the {h}x{w} output of conv layer {i}"
                _check(q <= min(h, w), f"{p}.pool_size", q, fits)
                h, w = (h - q) // q + 1, (w - q) // q + 1
                shapes.append(("pool", (h, w, f)))
        return shapes


def require_cnn_config(cfg: object, example: str, node: str) -> CNNConfig:
    """``cfg`` itself when it is a CNNConfig dataclass, else a TypeError saying how to get one.

    A Hydra DictConfig has the fields but not the ``pools`` / ``layer_filters`` logic (nor the
    range checks), so the builders insist on the dataclass: ``OmegaConf.to_object`` gives one.
    """
    if not isinstance(cfg, CNNConfig):
        raise TypeError(
            f"cfg must be a CNNConfig (e.g. {example}), got {type(cfg).__name__}; "
            f"convert a Hydra node with OmegaConf.to_object({node})"
        )
    return cfg


@dataclass
class KerasConfig(CNNConfig):
    """The seed's Keras CNN (defaults: exactly the seed's model and training)."""


@dataclass
class ScratchCNNConfig(CNNConfig):
    """The same architecture trained by the NumPy engine (conf/ interpolates keras.*)."""

    _prefix = "scratch.mnist_cnn"


@dataclass
class WalkthroughConfig:
    """The seed's part 1: one conv layer on a 5x5 image (pad, convolve, ReLU, max-pool).

    The seed pads by 1, convolves with stride 1 and pools 2x2 with stride 2; these are the
    knobs to see what stride, padding and pooling do to the same image and kernel.
    """

    stride: int = 1
    padding: int = 1
    pool_size: int = 2
    pool_stride: int = 2

    # The seed's image is 5x5 and its kernel 3x3 (convscope.scratch.seed_example).
    image_size = 5
    kernel_size = 3

    def __post_init__(self) -> None:
        p = "scratch.walkthrough"
        _positive(self, p, "stride", "pool_size", "pool_stride")
        _check(self.padding >= 0, f"{p}.padding", self.padding, "an integer >= 0")
        out = (self.image_size + 2 * self.padding - self.kernel_size) // self.stride + 1
        _check(
            self.pool_size <= out,
            f"{p}.pool_size",
            self.pool_size,
            f"a pool that fits the {out}x{out} feature map",
        )


@dataclass
class ScratchConfig:
    mini_cnn: MiniCNNConfig = field(default_factory=MiniCNNConfig)
    mnist_cnn: ScratchCNNConfig = field(default_factory=ScratchCNNConfig)
    walkthrough: WalkthroughConfig = field(default_factory=WalkthroughConfig)


@dataclass
class VizConfig:
    """What the visuals stage draws."""

    images: list[int] = field(default_factory=lambda: [0])
    class_sample: int = 500
    dpi: int = 100
    gif_fps: int = 4

    def __post_init__(self) -> None:
        _check(
            len(self.images) > 0 and all(int(i) >= 0 for i in self.images),
            "viz.images",
            self.images,
            "a non-empty list of test-image indices >= 0",
        )
        _positive(self, "viz", "class_sample", "dpi", "gif_fps")


@dataclass
class InterpretConfig:
    """What the interpret stage explains (its images are ``viz.images`` plus one per class).

    ``grad_cam_layer``: the layer Grad-CAM explains (null: the last conv layer). ``layers``
    and ``filters``: the conv layers and filter indices activation maximisation draws (null:
    all). Layer names and filter ranges depend on the model; the stage checks them.
    """

    grad_cam_layer: str | None = None
    layers: list[str] | None = None
    filters: list[int] | None = None
    steps: int = 32
    lr: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        _positive(self, "interpret", "steps", "lr")
        _check(self.seed >= 0, "interpret.seed", self.seed, "an integer >= 0")
        for name in ("layers", "filters"):
            value = getattr(self, name)
            _check(value is None or len(value) > 0, f"interpret.{name}", value, "null or a list")
        _check(
            self.filters is None or all(int(f) >= 0 for f in self.filters),
            "interpret.filters",
            self.filters,
            "filter indices >= 0",
        )


@dataclass
class TrackingConfig:
    """MLflow. ``uri: null`` means the SQLite file at the repository root; ``backend: none``
    records nothing (quick tries, tests that are not about tracking)."""

    backend: str = "local"
    uri: str | None = None
    experiment_prefix: str = "convscope"
    log_models: bool = True
    log_kernel_images: bool = True

    def __post_init__(self) -> None:
        _choice(self, "tracking", "backend", ("local", "server", "none"))
        prefix = self.experiment_prefix
        _check(
            len(prefix) <= MAX_EXPERIMENT_PREFIX,
            "tracking.experiment_prefix",
            prefix,
            f"at most {MAX_EXPERIMENT_PREFIX} characters (MLflow experiment names are at most "
            f"{MAX_EXPERIMENT_NAME}, '<prefix>/<stage>')",
        )


@dataclass
class Config:
    # Checked in this order, so that an error names the key the user typed rather than the
    # interpolation it flows into: every group's seed interpolates seed, and
    # scratch.mnist_cnn interpolates keras.*.
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    keras: KerasConfig = field(default_factory=KerasConfig)
    scratch: ScratchConfig = field(default_factory=ScratchConfig)
    viz: VizConfig = field(default_factory=VizConfig)
    interpret: InterpretConfig = field(default_factory=InterpretConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        _seed(self, "")
