"""What a finished study leaves on its sweep's MLflow parent run: numbers and figures.

The figures are :mod:`optuna.visualization.matplotlib`'s. That module draws through pyplot;
each figure is taken from its axes, drawn with the Agg backend and closed once logged, so no
figure stays in pyplot's registry.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from typing import Any

from convscope.tracking.store import TAG_BEST_OVERRIDES, TAG_BEST_TRIAL, TAG_STUDY

__all__ = ["record_study", "study_figures", "study_summary"]

#: completed trials from which parameter importances mean something
IMPORTANCE_MIN_TRIALS = 4


def study_summary(study: Any, first: int = 0) -> tuple[dict[str, float], dict[str, str]]:
    """``(metrics, tags)`` of the trials from number ``first`` on (this sweep's) and the
    study's best: best value, trials complete/pruned/failed, epochs run against the epochs
    the same trials would have run unpruned."""
    trials = [t for t in study.trials if t.number >= first]
    states = Counter(t.state.name for t in trials)
    planned = [t.user_attrs.get("epochs_planned") for t in trials]
    known = [p for p in planned if p is not None]
    default = max(known) if known else max((len(t.intermediate_values) for t in trials), default=0)
    full = sum(p if p is not None else default for p in planned)
    ran = sum(
        len(t.intermediate_values)
        if t.intermediate_values or t.state.name != "COMPLETE"
        else (p if p is not None else default)
        for t, p in zip(trials, planned, strict=True)
    )
    metrics = {
        "study_trials_complete": states["COMPLETE"],
        "study_trials_pruned": states["PRUNED"],
        "study_trials_failed": states["FAIL"],
        "study_epochs_run": ran,
        "study_epochs_full": full,
    }
    if full:
        metrics["study_epochs_ratio"] = ran / full
    tags = {TAG_STUDY: study.study_name}
    try:
        best = study.best_trial
    except ValueError:  # no trial completed
        return metrics, tags
    metrics["study_best_value"] = float(best.value)
    tags[TAG_BEST_TRIAL] = str(best.number)
    tags[TAG_BEST_OVERRIDES] = json.dumps(best.user_attrs.get("overrides", []))
    tags.update({f"convscope.study_best.{k}": repr(v) for k, v in best.params.items()})
    return metrics, tags


def study_figures(study: Any) -> dict[str, Any]:
    """File name -> matplotlib Figure: optimisation history, intermediate values, slice, and
    parameter importances when two or more parameters and enough completed trials exist."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna.visualization.matplotlib as ovm

    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not complete:
        return {}
    drawers = {
        "optuna_history.png": ovm.plot_optimization_history,
        "optuna_intermediate_values.png": ovm.plot_intermediate_values,
        "optuna_slice.png": ovm.plot_slice,
    }
    if len(complete[0].params) >= 2 and len(complete) >= IMPORTANCE_MIN_TRIALS:
        drawers["optuna_param_importances.png"] = ovm.plot_param_importances
    figures = {}
    for name, draw in drawers.items():
        with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
            warnings.simplefilter("ignore")  # and its slice of one value warns of its axis
            axes = draw(study)
        first = axes.flat[0] if hasattr(axes, "flat") else axes
        figures[name] = first.figure
    return figures


def record_study(config: Any, settings: Any, study: Any, first: int) -> None:
    """Log the study's summary and figures on the sweep's parent run (none: no tracking)."""
    from omegaconf import OmegaConf

    from convscope.tracking.study import log_study
    from convscope.validation import redact_credentials

    if OmegaConf.select(config, "tracking.backend", default="local") == "none":
        return
    sweep_dir = OmegaConf.select(config, "hydra.sweep.dir")
    metrics, tags = study_summary(study, first)
    tags.update(
        {
            "convscope.study_storage": redact_credentials(settings.storage),
            "convscope.study_objective": settings.objective,
            "convscope.study_direction": settings.direction,
        }
    )
    figures = study_figures(study)
    try:
        log_study(sweep_dir, metrics, tags, figures)
    finally:
        import matplotlib.pyplot as plt

        for figure in figures.values():
            plt.close(figure)
