"""An Optuna sweep's search space read from Hydra's override grammar, its settings checked,
and a trial's overrides written back as a preset that composes to the same config."""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from convscope.config import ConfigError, compose
from convscope.paths import conf_dir
from convscope.search.preset import preset_text
from convscope.search.space import format_value, parse_space
from convscope.search.study import StudySettings


def test_the_grammar_maps_to_optuna_distributions():
    space = parse_space(
        [
            "keras.learning_rate=tag(log, interval(1e-4, 1e-1))",
            "keras.filters=choice(8,16,32)",
            "keras.batch_size=range(16,128,step=16)",
            "keras.momentum=interval(0.0, 0.5)",
            "keras.kernel_size=interval(2, 5)",
            "experiment=smoke",
        ]
    )
    d = space.distributions
    assert d["keras.learning_rate"] == FloatDistribution(1e-4, 1e-1, log=True)
    assert d["keras.filters"] == CategoricalDistribution([8, 16, 32])
    # Hydra's range excludes its stop, as a basic sweep of the same override does
    assert d["keras.batch_size"] == IntDistribution(16, 112, step=16)
    assert d["keras.momentum"] == FloatDistribution(0.0, 0.5)
    assert d["keras.kernel_size"] == IntDistribution(2, 5)
    assert space.fixed == ["experiment=smoke"]


def test_the_command_line_wins_over_hydra_sweeper_params():
    space = parse_space(
        ["keras.filters=choice(4,8)"],
        {"keras.filters": "choice(16,32)", "keras.epochs": "range(1,3)"},
    )
    assert space.distributions["keras.filters"] == CategoricalDistribution([4, 8])
    assert space.distributions["keras.epochs"] == IntDistribution(1, 2)


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("keras.learning_rate=interval(1, 0)", "interval is empty"),
        ("keras.learning_rate=tag(log, interval(0, 1))", "must start above 0"),
        ("keras.filters=choice()", "cannot parse"),
        ("keras.filters=choice(8,8)", "twice"),
        ("hydra.sweeper.n_trials=choice(1,2)", "hydra.*"),
    ],
)
def test_a_malformed_space_is_one_line(override, says):
    with pytest.raises(ConfigError) as caught:
        parse_space([override])
    assert says in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"n_trials": 0}, "hydra.sweeper.n_trials=0"),
        ({"n_jobs": -1}, "hydra.sweeper.n_jobs=-1"),
        ({"pruner": "sometimes"}, "expected one of median, hyperband, none"),
        ({"pruner": {"name": "median", "warmup_epochs": -1}}, "pruner.warmup_epochs=-1"),
        ({"sampler": {"name": "cmaes"}}, "expected one of tpe, random"),
        ({"direction": "up"}, "expected one of minimize, maximize"),
        ({"objective": "val_loss"}, "records loss, accuracy"),
    ],
)
def test_bad_settings_are_one_line(settings, says):
    with pytest.raises(ConfigError) as caught:
        StudySettings("train_scratch_lines", settings)
    assert says in str(caught.value)


def test_each_stage_names_its_default_objective():
    assert StudySettings("train_keras", {}).objective == "val_loss"
    assert StudySettings("train_scratch_mnist", {}).objective == "val_loss"
    assert StudySettings("train_scratch_lines", {}).objective == "loss"


@pytest.mark.parametrize("value", [1e-3, 0.1, 16, "relu", True, None, "a b"])
def test_a_sampled_value_reads_back_as_itself(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (override,) = OverridesParser.create().parse_overrides([f"k={format_value(value)}"])
    assert override.value() == value


def test_a_preset_composes_to_the_trials_config(tmp_path):
    import shutil

    from omegaconf import OmegaConf

    overrides = ["experiment=smoke", "keras.learning_rate=0.0123", "keras.filters=8"]
    folder = shutil.copytree(conf_dir(), tmp_path / "conf")
    groups = [p.name for p in folder.iterdir() if p.is_dir()]
    text = preset_text(overrides, "a note", groups)
    assert text.startswith("# @package _global_\n# a note\n")
    (folder / "experiment" / "tuned.yaml").write_text(text)
    adopted = compose(["experiment=tuned"], config_dir=folder)
    direct = compose(overrides, config_dir=folder)
    assert OmegaConf.to_container(adopted, resolve=True) == OmegaConf.to_container(
        direct, resolve=True
    )
    assert adopted.keras.learning_rate == 0.0123 and adopted.data.mnist.limit_train == 600


def test_a_signal_during_a_report_waits_for_the_write(tmp_path, monkeypatch):
    """SIGTERM (the stage's handler raises in the main thread) arriving in the middle of a
    trial's report is raised once the report is written, so the study's database holds the
    epoch and no half-done write: another connection tells the study at once."""
    import os
    import signal

    import optuna

    from convscope.search.trial import TrialReporter

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    spec = {"storage": storage, "study": "s", "trial_id": trial._trial_id, "number": 0,
            "objective": "loss", "pruner": {"name": "none"}}  # fmt: skip
    reporter = TrialReporter(spec)
    real = reporter.trial.report

    def report_hit_by_sigterm(value, step):
        os.kill(os.getpid(), signal.SIGTERM)  # its handler runs at the next line, here
        real(value, step)

    def stage_handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    monkeypatch.setattr(reporter.trial, "report", report_hit_by_sigterm)
    previous = signal.signal(signal.SIGTERM, stage_handler)
    try:
        with pytest.raises(KeyboardInterrupt, match="signal 15"):
            reporter.report(1, {"loss": 0.5})
        assert signal.getsignal(signal.SIGTERM) is stage_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert study.trials[0].intermediate_values == {1: 0.5}
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    assert study.trials[0].state.name == "FAIL"
