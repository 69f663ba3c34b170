"""kdsearch.track.callback: the trial runs it writes on a real MLflow SQLite store, driven the
way Tune drives it (a Tune ``Trial`` as the callback sees one: its id and sampled config)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from kdsearch.config.load import load_space
from kdsearch.testing import write_tiny_space
from kdsearch.track.callback import MLflowTrials
from kdsearch.track.runs import redacted_config
from kdsearch.track.schema import PARENT, ROLE, STATUS, TRIAL_ID, TRIAL_SPACE


@dataclasses.dataclass
class Trial:
    trial_id: str
    config: dict[str, Any]
    last_result: dict[str, Any] = dataclasses.field(default_factory=dict)


def test_a_resumed_trial_whose_run_lost_its_settings_gets_them(tmp_path: Path) -> None:
    cfg = load_space(write_tiny_space(tmp_path), cwd=tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("tiny", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(experiment, tags={ROLE: "search"}).info.run_id
    # What a driver killed right after creating the trial's run leaves: no params, no space.
    orphan = client.create_run(experiment, tags={PARENT: parent, ROLE: "trial",
                                                 STATUS: "running", TRIAL_ID: "t1"}).info.run_id
    callback = MLflowTrials(client, experiment, parent, cfg, ("a", "b"), redacted_config(cfg))
    trial = Trial("t1", {"alpha": 0.25, "temperature": 3.0, "backbone": "tiny_r2plus1d"})
    callback.on_trial_start(0, [], trial)
    run = client.get_run(orphan)
    assert {k: run.data.params[k] for k in ("alpha", "temperature", "backbone")} == {
        "alpha": "0.25", "temperature": "3.0", "backbone": "tiny_r2plus1d"}
    assert run.data.params["teacher"] == "small3d" and run.info.status == "RUNNING"
    assert [a.path for a in client.list_artifacts(orphan)] == [TRIAL_SPACE]
    # Started again (a second resume): nothing is written twice, nothing fails.
    callback.runs.clear()
    callback.on_trial_start(0, [], trial)
    assert client.get_run(orphan).data.params == run.data.params
    assert len(client.search_runs([experiment], f"tags.`{TRIAL_ID}` = 't1'")) == 1
