"""`mlflow run --env-manager virtualenv`: the children run in the environment MLflow made for the parent.

Its own file, so a worker builds that virtualenv (minutes, from the pins) while the other runs the pipeline tests.
"""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from testkit.processes import PROJECT_DIR, mlflow_cli, run_command
from tests.e2e.test_pipeline_runs import STEPS, children_of, parent_runs


def test_children_run_in_the_parents_virtualenv(tmp_path):
    """Nested `mlflow.run` does not inherit `--env-manager`: main must hand it down."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_command(
        [*mlflow_cli(), "run", str(PROJECT_DIR), "--env-manager", "virtualenv", "-P", "config=configs/tiny.yaml"],
        cwd=tmp_path,
        timeout=1500,
        MLFLOW_TRACKING_URI=store,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    client = MlflowClient(store)
    [parent] = parent_runs(client)
    children = children_of(client, parent)
    assert sorted(children) == sorted(STEPS)
    assert {run.data.tags.get("mlflow.project.env") for run in [parent, *children.values()]} == {"virtualenv"}
