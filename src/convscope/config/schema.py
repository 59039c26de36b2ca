"""Typed config schemas: one dataclass per config group, with its types and allowed ranges.

conf/ holds every default value; the defaults below mirror it only so a schema can be built in
code (tests, the bridge), and a test checks the two agree. Range checks live in
``__post_init__``, written with :mod:`convscope.validation`'s checks (one vocabulary for every
value the project checks), so ``OmegaConf.to_object`` refuses a bad value with a one-line
``ConfigError`` naming the key, the value and what is allowed. A value is checked here, once;
the code that builds and trains from a config trusts it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from convscope.data.lines import POSITIONS as LINE_POSITIONS
from convscope.data.mnist import BUNDLED_SIZE, NUM_CLASSES
from convscope.data.mnist import SOURCES as MNIST_SOURCES
from convscope.validation import ValidationError, check_choice, check_float, check_int, require


class ConfigError(ValidationError):
    """A config value a user set is not allowed. The message is one line."""


ACTIVATIONS = ("relu", "sigmoid", "tanh")
OPTIMIZERS = ("adam", "sgd")
PADDINGS = ("valid", "same")


SEED_LIMIT = 2**32  # NumPy's legacy seeding and TensorFlow's take seeds below 2**32

# MLflow keeps an experiment name in a 256-character column; a stage's experiment is
# "<experiment_prefix>/<stage>" and the longest stage name has 19 characters.
MAX_EXPERIMENT_NAME = 256
MAX_EXPERIMENT_PREFIX = MAX_EXPERIMENT_NAME - len("/train_scratch_mnist")


def config_checks(post_init: Callable[..., None]) -> Callable[..., None]:
    """A schema's ``__post_init__`` (or another method that checks config values): its checks
    use :mod:`convscope.validation`, and a value they refuse is a :class:`ConfigError` (a
    config value, said in the same words)."""

    @functools.wraps(post_init)
    def checked(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            post_init(self, *args, **kwargs)
        except ConfigError:
            raise
        except ValidationError as exc:
            raise ConfigError(str(exc)) from None

    return checked


def check_seed(key: str, value: Any) -> None:
    """A seed every library takes: an integer in [0, 2**32)."""
    try:
        check_int(value, key, min=0, max=SEED_LIMIT - 1)
    except ValidationError as exc:
        raise ConfigError(str(exc)) from None


def _positive(obj: Any, prefix: str, *names: str) -> None:
    """Each field an int >= 1 or a finite float > 0."""
    for name in names:
        value, key = getattr(obj, name), f"{prefix}.{name}"
        if isinstance(value, float):
            check_float(value, key, min=0, min_open=True)
        else:
            check_int(value, key, min=1)


@dataclass
class LinesDataConfig:
    """Synthetic vertical-vs-horizontal line images (seed part 2)."""

    n_samples: int = 100
    size: int = 5
    noise: float = 0.2
    position: str = "centre"
    seed: int = 0

    @config_checks
    def __post_init__(self) -> None:
        check_seed("data.lines.seed", self.seed)
        _positive(self, "data.lines", "n_samples")
        check_int(self.size, "data.lines.size", min=3)
        check_float(self.noise, "data.lines.noise", min=0)
        check_choice(self.position, "data.lines.position", LINE_POSITIONS)


@dataclass
class MnistDataConfig:
    """Where MNIST comes from and how much of it a run uses."""

    source: str = "bundled"
    path: str | None = None
    bundled_test_size: int = 1000
    limit_train: int | None = None
    limit_test: int | None = None
    seed: int = 0

    @config_checks
    def __post_init__(self) -> None:
        check_choice(self.source, "data.mnist.source", MNIST_SOURCES)
        check_seed("data.mnist.seed", self.seed)
        size, most = self.bundled_test_size, BUNDLED_SIZE - NUM_CLASSES
        require(
            NUM_CLASSES <= size <= most and size % NUM_CLASSES == 0,
            "data.mnist.bundled_test_size",
            size,
            f"a multiple of {NUM_CLASSES} in [{NUM_CLASSES}, {most}] "
            f"(the bundled set has {BUNDLED_SIZE} images)",
        )
        for name in ("limit_train", "limit_test"):
            if getattr(self, name) is not None:
                _positive(self, "data.mnist", name)
        require(
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

    @config_checks
    def __post_init__(self) -> None:
        check_seed("scratch.mini_cnn.seed", self.seed)
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

    @config_checks
    def __post_init__(self) -> None:
        p = self._prefix
        check_seed(f"{p}.seed", self.seed)
        positive = "conv_layers filters filter_growth kernel_size stride pool_size num_classes"
        _positive(self, p, *positive.split(), "learning_rate", "epochs", "batch_size")
        check_choice(self.activation, f"{p}.activation", ACTIVATIONS)
        check_choice(self.optimizer, f"{p}.optimizer", OPTIMIZERS)
        check_choice(self.padding, f"{p}.padding", PADDINGS)
        check_float(self.momentum, f"{p}.momentum", min=0, max=1, max_open=True)
        split = self.validation_split
        check_float(split, f"{p}.validation_split", min=0, max=1, max_open=True)
        shape, pools = self.input_shape, self.pool_after
        ok = len(shape) == 3 and all(int(d) > 0 for d in shape)
        require(ok, f"{p}.input_shape", shape, "[height, width, channels] with positive sizes")
        ok = pools is None or len(pools) == self.conv_layers
        require(ok, f"{p}.pool_after", pools, f"one bool per conv layer ({self.conv_layers})")
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
                require(k <= min(h, w), f"{p}.kernel_size", k, fits)
                h, w = (h - k) // s + 1, (w - k) // s + 1
            else:  # 'same', TensorFlow's rule: out = ceil(in / stride)
                h, w = -(-h // s), -(-w // s)
            shapes.append(("conv", (h, w, f)))
            if pool:
                fits = f"a pool that fits the {h}x{w} output of conv layer {i}"
                require(q <= min(h, w), f"{p}.pool_size", q, fits)
                h, w = (h - q) // q + 1, (w - q) // q + 1
                shapes.append(("pool", (h, w, f)))
        return shapes


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

    @config_checks
    def __post_init__(self) -> None:
        p = "scratch.walkthrough"
        _positive(self, p, "stride", "pool_size", "pool_stride")
        check_int(self.padding, f"{p}.padding", min=0)
        out = (self.image_size + 2 * self.padding - self.kernel_size) // self.stride + 1
        require(
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

    @config_checks
    def __post_init__(self) -> None:
        require(
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

    @config_checks
    def __post_init__(self) -> None:
        _positive(self, "interpret", "steps", "lr")
        check_seed("interpret.seed", self.seed)
        for name in ("layers", "filters"):
            value = getattr(self, name)
            require(value is None or len(value) > 0, f"interpret.{name}", value, "null or a list")
        require(
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

    @config_checks
    def __post_init__(self) -> None:
        check_choice(self.backend, "tracking.backend", ("local", "server", "none"))
        prefix = self.experiment_prefix
        require(
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

    @config_checks
    def __post_init__(self) -> None:
        check_seed("seed", self.seed)
