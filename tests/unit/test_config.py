"""Config composition and validation: every preset, params.yaml in step, one-line errors.

In-process and fast: Hydra's compose API with ``initialize_config_dir``, as the pipeline's
own pre-check does. The same bad values are run through the real stage scripts in
tests/test_pipeline.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from convscope import cli
from convscope.config import (
    ConfigError,
    compose,
    params_text,
    register,
    validate,
    validate_overrides,
)
from convscope.config.schema import Config
from convscope.paths import conf_dir, project_root

CONF_DIR = conf_dir()

PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def test_presets_are_the_seed_s_exercises():
    assert set(PRESETS) >= {"deeper", "wide", "kernel5", "long", "sigmoid", "tanh", "smoke"}


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_validates(preset):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"experiment={preset}"])
    assert isinstance(validate(cfg), Config)


def _cfg(*overrides: str) -> Config:
    return validate(compose(list(overrides)))


def test_presets_change_what_they_say():
    base = _cfg()
    # The seed's model: 16 then 32 filters, 3x3, relu, 3 epochs.
    assert base.keras.layer_filters == [16, 32]
    assert base.keras.pools == [True, False]
    deeper = _cfg("experiment=deeper").keras
    assert deeper.conv_layers == 3 and len(deeper.layer_shapes()) == 5  # 3 conv + 2 pool
    assert _cfg("experiment=wide").keras.layer_filters == [32, 64]
    assert _cfg("experiment=kernel5").keras.kernel_size == 5
    assert _cfg("experiment=long").keras.epochs > base.keras.epochs
    assert _cfg("experiment=sigmoid").keras.activation == "sigmoid"
    assert _cfg("experiment=tanh").keras.activation == "tanh"
    smoke = _cfg("experiment=smoke")
    assert smoke.keras.epochs == 1 and smoke.data.mnist.source == "bundled"
    assert smoke.data.mnist.limit_train < 4000


def test_engine_cnn_follows_keras_unless_overridden():
    cfg = _cfg("experiment=wide", "keras.epochs=2")
    assert dataclasses.asdict(cfg.scratch.mnist_cnn) == dataclasses.asdict(cfg.keras)
    cfg = _cfg("scratch.mnist_cnn.epochs=7")
    assert cfg.scratch.mnist_cnn.epochs == 7 and cfg.keras.epochs != 7


def test_one_seed_reseeds_every_group():
    cfg = _cfg("seed=7")
    seeds = {
        cfg.data.lines.seed,
        cfg.data.mnist.seed,
        cfg.scratch.mini_cnn.seed,
        cfg.scratch.mnist_cnn.seed,
        cfg.keras.seed,
    }
    assert seeds == {7}


def test_schema_defaults_agree_with_conf():
    # schema.py mirrors conf/ so a Config can be built in code; the two must not drift.
    assert dataclasses.asdict(_cfg()) == dataclasses.asdict(Config())


def test_params_yaml_is_in_step_with_conf():
    committed = (project_root() / "params.yaml").read_text(encoding="utf-8")
    assert committed == params_text(), "params.yaml is stale: run `convscope compose`"


def test_params_text_is_what_dvc_writes(tmp_path):
    # `dvc exp run -S` recomposes params.yaml with DVC's own Hydra composition; ours must be
    # byte-identical or every experiment would show a spurious params diff.
    from dvc.utils.hydra import compose_and_dump

    overrides = ["experiment=wide", "keras.epochs=5"]
    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(CONF_DIR), None, "config", str(tmp_path), overrides)
    assert out.read_text(encoding="utf-8") == params_text(overrides)


# One case per class of bad value: (override, key the message must name).
BAD = [
    ("keras.learning_rate=-0.001", "keras.learning_rate"),
    ("keras.learning_rate=0", "keras.learning_rate"),
    ("scratch.mini_cnn.lr=0", "scratch.mini_cnn.lr"),
    ("keras.stride=0", "keras.stride"),
    ("scratch.walkthrough.stride=0", "scratch.walkthrough.stride"),
    ("keras.kernel_size=29", "keras.kernel_size"),
    ("keras.activation=gelu", "keras.activation"),
    ("keras.optimizer=rmsprop", "keras.optimizer"),
    ("keras.epochs=0", "keras.epochs"),
    ("scratch.mini_cnn.epochs=0", "scratch.mini_cnn.epochs"),
    ("keras.dropout=0.5", "keras.dropout"),
    ("+keras.dropout=0.5", "keras.dropout"),
    ("+colour=red", "colour"),
    ("keras.learning_rate=abc", "keras.learning_rate"),
    ("data.lines.n_samples=1.5", "data.lines.n_samples"),
    ("experiment=huge", "experiment"),
]


@pytest.mark.parametrize(("override", "key"), BAD, ids=[o for o, _ in BAD])
def test_bad_values_fail_in_one_line_naming_key_value_and_allowed(override, key):
    with pytest.raises(ConfigError) as info:
        validate_overrides([override])
    message = str(info.value)
    assert "\n" not in message
    value = override.split("=", 1)[1]
    assert message.startswith(f"{key}=")
    assert value in message or value.lstrip("-") in message
    assert "expected" in message


def test_error_names_the_key_the_user_typed_not_where_it_flows():
    # scratch.mnist_cnn.* interpolates keras.*; the message must point at keras.*.
    with pytest.raises(ConfigError, match=r"^keras\.stride=0 "):
        validate_overrides(["keras.stride=0"])


def test_type_errors_say_the_expected_type():
    with pytest.raises(ConfigError, match="expected a float"):
        validate_overrides(["keras.learning_rate=abc"])
    with pytest.raises(ConfigError, match="expected an integer"):
        validate_overrides(["keras.epochs=2.5"])
    with pytest.raises(ConfigError, match="one of relu, sigmoid, tanh"):
        validate_overrides(["keras.activation=gelu"])


def test_validate_accepts_plain_mappings_and_ignores_the_hydra_node():
    container = OmegaConf.to_container(compose(return_hydra_config=True), resolve=False)
    assert "hydra" in container
    assert validate(container) == validate(compose())


def test_schemas_are_registered_in_the_config_store():
    from hydra.core.config_store import ConfigStore

    register()
    register()  # idempotent
    names = ConfigStore.instance().list("schema")
    assert {"config.yaml", "keras.yaml", "data_lines.yaml", "tracking.yaml"} <= set(names)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        schema = hydra_compose("schema/config")
    assert OmegaConf.to_object(schema) == Config()


# --------------------------------------------------------------------------- the CLI


def test_cli_compose_writes_and_checks(tmp_path, capsys):
    out = tmp_path / "params.yaml"
    assert cli.main(["compose", "experiment=smoke", "--output", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == params_text(["experiment=smoke"])
    assert cli.main(["compose", "experiment=smoke", "--output", str(out), "--check"]) == 0
    assert cli.main(["compose", "--output", str(out), "--check"]) == 1
    assert "out of step" in capsys.readouterr().err


def test_cli_compose_refuses_a_bad_value_in_one_line(tmp_path, capsys):
    out = tmp_path / "params.yaml"
    assert cli.main(["compose", "keras.epochs=0", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("convscope: error: keras.epochs=0")
    assert not out.exists()


def test_cli_info_lists_outputs_and_the_ui(capsys):
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    for place in ("data/", "models/", "metrics/", "plots/", "reports/figures/", "mlflow.db"):
        assert place in text
    assert "make ui" in text


def test_cli_ui_command_points_at_the_repository_store():
    cmd = cli.ui_command(Path("/repo"), 5001)
    assert cmd[cmd.index("--backend-store-uri") + 1] == "sqlite:////repo/mlflow.db"
    assert cmd[cmd.index("--default-artifact-root") + 1] == "/repo/mlartifacts"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--port") + 1] == "5001"
