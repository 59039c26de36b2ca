"""The pipeline's stages: one module per DVC stage, each with ``run(cfg, ctx) -> metrics``.

A stage module holds what a stage *does* (read inputs, call the engine, Keras or the data
code, hand outputs to the context); :mod:`convscope.runner` holds how every stage runs (config
checks, MLflow run, all-or-nothing outputs, metrics and plots files). Heavy imports
(TensorFlow) happen inside ``run`` so that a bad command line fails before paying for them.
"""
