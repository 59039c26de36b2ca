"""convscope.data: datasets (synthetic lines, MNIST from every source) and atomic array I/O.

``arrays`` is imported eagerly (NumPy only); ``mnist`` too, since it imports Keras only
inside ``mnist.load_keras``. ``lines`` is imported lazily on first attribute access so this
package does not depend on its presence at import time.
"""

from convscope.data import arrays, mnist
from convscope.data.arrays import (
    DataError,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    load_arrays,
    save_arrays,
    sha256_arrays,
)

__all__ = [
    "DataError",
    "arrays",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "lines",
    "load_arrays",
    "mnist",
    "save_arrays",
    "sha256_arrays",
]


def __getattr__(name: str):
    # `convscope.data.lines` is another module of this package; importing it lazily keeps
    # `import convscope.data` working (and fast) whatever lines imports.
    if name == "lines":
        import importlib

        return importlib.import_module("convscope.data.lines")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
