"""Stage `visuals`: what each layer learned, as figures -> reports/figures/.

A Hydra app. By hand: `python pipelines/visuals.py [overrides]` (e.g.
`experiment=smoke`), `-m` for a sweep. DVC runs the same script on the composed params:
`--config-dir . --config-name params`. The work is in convscope.stages.visuals; the life
cycle (checks, MLflow run, all-or-nothing outputs) in convscope.runner.
"""

import _bootstrap  # noqa: F401  (first: this checkout's src/, the project's Python)

# isort: split
import hydra
from omegaconf import DictConfig

from convscope.runner import CONF_DIR, check_command_line, run_stage
from convscope.stages import visuals as stage


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_stage("visuals", cfg, stage.run)


if __name__ == "__main__":
    check_command_line()
    main()
