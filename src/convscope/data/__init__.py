"""convscope.data: the datasets (synthetic lines, MNIST from every source).

File I/O (atomic writes, .npz with metadata, digests) is :mod:`convscope.files`.
"""
