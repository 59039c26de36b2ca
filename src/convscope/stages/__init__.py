"""The pipeline's stages: one module per DVC stage, each with ``run(cfg, ctx) -> metrics``.

A stage module holds what a stage *does* (read inputs, call the engine, Keras or the data
code, hand outputs to the context); :mod:`convscope.runner` holds how every stage runs (config
checks, MLflow run, all-or-nothing outputs, metrics and plots files); ``pipelines/<stage>.py``
is the thin Hydra entry point joining the two. Heavy imports (TensorFlow) happen inside
``run`` so that a bad command line fails before paying for them.
"""

#: The stages in dependency order (the order `dvc repro` runs them in).
STAGES = (
    "lines",
    "train_scratch_lines",
    "walkthrough",
    "mnist",
    "train_keras",
    "train_scratch_mnist",
    "visuals",
)
