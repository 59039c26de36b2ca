"""What the team tests share: the check that nothing the writers of :mod:`harness.team` logged
was lost, and stage runs recorded on a server."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from harness.team import WRITER_EPOCHS, images_in
from tests.support.pipeline import pipeline_stage, script

WRITERS = 16


def check_writers(client, exp: str, run_ids: list[str]) -> None:
    """Every writer's run is there, FINISHED, with every metric step and image it logged."""
    runs = client.search_runs([exp], max_results=100)
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids)
    assert {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        writer = int(run.data.params["writer"])
        loss = client.get_metric_history(run.info.run_id, "loss")
        assert [(m.step, m.value) for m in sorted(loss, key=lambda m: m.step)] == [
            (e, 1.0 / e + writer) for e in range(1, WRITER_EPOCHS + 1)
        ]
        assert len(client.get_metric_history(run.info.run_id, "accuracy")) == WRITER_EPOCHS
        pngs = [
            f.path.removeprefix("images/").split("+")
            for f in client.list_artifacts(run.info.run_id, "images")
            if f.path.endswith(".png")
        ]  # images/<key with ~ for />+step+<step>+timestamp+<ms>+<uuid>.png
        assert sorted((p[0], int(p[2])) for p in pngs) == sorted(
            (f"kernels~{i}", e) for e in range(1, WRITER_EPOCHS + 1) for i in range(images_in(e))
        )


def on_server(uri: str, prefix: str) -> list[str]:
    """Overrides of a params.yaml run (no config groups there) that record on ``uri``."""
    return [
        "tracking.backend=server", f"tracking.uri={uri}", f"tracking.experiment_prefix={prefix}"
    ]  # fmt: skip


def record_on_server(repo: Path, uri: str, prefix: str, **env: str) -> None:
    """``lines`` and ``train_scratch_lines`` as DVC runs them, and a 2-job joblib sweep of
    ``walkthrough``, all recording on ``uri`` under experiment prefix ``prefix``."""
    for stage in ("lines", "train_scratch_lines"):
        result = pipeline_stage(repo, stage, *on_server(uri, prefix), **env)
        assert result.returncode == 0, result.stderr
    sweep = script(
        repo, "walkthrough", "-m", "hydra/launcher=parallel", "scratch.walkthrough.padding=0,1",
        "tracking=server", f"tracking.uri={uri}", f"tracking.experiment_prefix={prefix}", **env,
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr


def runs_of(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment}"
    return client.search_runs([exp.experiment_id], max_results=100)


def image_steps(client, run_id: str, key: str) -> list[int]:
    """Steps of the images logged under ``key`` (MLflow also keeps a compressed copy of each)."""
    names = [a.path.rpartition("/")[2] for a in client.list_artifacts(run_id, "images")]
    names = [n for n in names if not n.endswith("compressed.webp")]
    pattern = re.compile(re.escape(key.replace("/", "~")) + r"\+step\+(\d+)\+")
    return sorted(int(m.group(1)) for n in names if (m := pattern.match(n)))


def plot_losses(repo) -> list[tuple[int, float]]:
    with open(repo / "plots/train_scratch_lines.csv") as rows:
        return [(int(r["epoch"]), float(r["loss"])) for r in csv.DictReader(rows)]
