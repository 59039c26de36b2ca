"""Stage `train_keras`: the seed's Keras CNN on MNIST -> models/keras_cnn.keras.

A Hydra app. By hand: `python pipelines/train_keras.py [overrides]` (e.g.
`experiment=smoke`), `-m` for a sweep. DVC runs the same script on the composed params:
`--config-dir . --config-name params`. The work is in convscope.stages.train_keras; the life
cycle (checks, MLflow run, all-or-nothing outputs) in convscope.runner.
"""

import _bootstrap  # noqa: F401  (first: this checkout's src/, the project's Python)

# isort: split
import hydra
from omegaconf import DictConfig

from convscope.runner import CONF_DIR, check_command_line, run_stage
from convscope.stages import train_keras as stage


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_stage("train_keras", cfg, stage.run)


if __name__ == "__main__":
    check_command_line()
    main()
