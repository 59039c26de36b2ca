"""Optuna studies behind ``-m hydra/sweeper=optuna``: the search space, the study, the trial
a stage's job reports its epochs to, and the records a finished study leaves.

:mod:`~convscope.search.space` reads Hydra's override grammar into Optuna distributions and
checks them against the schema; :mod:`~convscope.search.study` opens studies and samplers,
pruners and storages from the sweeper's settings; :mod:`~convscope.search.trial` is the job's
side (report each epoch, stop when pruned); :mod:`~convscope.search.summary` counts and draws a
finished study; :mod:`~convscope.search.preset` writes a trial's overrides as a preset. The
sweeper itself is :mod:`hydra_plugins.convscope_optuna.optuna_sweeper` (Hydra finds sweepers
only under ``hydra_plugins``). Importing this package imports neither optuna nor mlflow.
"""
