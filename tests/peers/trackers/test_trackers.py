"""Collection and the numpy trainer log to wandb, MLflow and TensorBoard; read back with each tool's reader.

Runs in the trackers venv (bash tests/peers/setup.sh trackers; tests/peers/run.sh trackers).
Every tracker runs offline: wandb in offline mode, MLflow on a sqlite file,
TensorBoard event files. The verl trainer's logs: tests/peers/verl/test_verl_tracking.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from rollout import collect
from rollout.demo import COLLECT
from rollout.export import read_jsonl
from rollout.redact import register_secret
from rollout.tracking import TrackerWarning
from rollout.tracking.metrics import COLUMNS
from rollout.training import train
from tests.peers.trackers.readers import (
    mlflow_history,
    mlflow_run,
    tb_scalars,
    tb_texts,
    wandb_history,
    wandb_run_dir,
    wandb_table,
)

pytestmark = pytest.mark.peers

ALL = ["wandb", "mlflow", "tensorboard"]


def tracking(root: Path, name: str, **extra: Any) -> dict[str, Any]:
    return {"trackers": ALL, "dir": str(root), "run_name": name, **extra}


def test_collection_reaches_all_three_trackers_and_they_agree(tmp_path: Path) -> None:
    root, journal = tmp_path / "tracking", tmp_path / "eps.jsonl"
    summary = collect(
        **COLLECT,
        limit=6, samples_per_task=2, progress=False, output={"path": str(journal)},
        tracking=tracking(root, "collect-1", interval_s=0, samples=3),
    )  # fmt: skip
    episodes = read_jsonl(journal)
    assert summary.finished == len(episodes) == 12
    calls = [c for e in episodes for c in e.calls]

    # TensorBoard: one point per episode (interval_s=0), stepped by episodes finished.
    tb_dir = root / "tensorboard" / "collect-1"
    scalars = tb_scalars(tb_dir)
    assert [s for s, _ in scalars["collect/episodes"]] == list(range(1, 13))
    final = {tag: points[-1][1] for tag, points in scalars.items()}
    assert final["collect/episodes"] == 12
    assert final["collect/trainable_tokens"] == summary.trainable_tokens > 0
    assert final["collect/sampled_tokens"] == summary.sampled_tokens
    assert final["collect/calls"] == len(calls)
    assert final["collect/calls_as_tokens"] == sum(c.sent_as == "tokens" for c in calls) > 0
    assert final["collect/calls_as_messages"] == sum(c.sent_as != "tokens" for c in calls)
    assert (
        final["collect/fallback/first_call"] == sum(c.fallback == "first call" for c in calls) == 12
    )
    assert final["collect/drift"] == 0  # token mode: every later turn extends its parent exactly
    assert final["collect/trainable_share"] == pytest.approx(
        summary.trainable_tokens / summary.sampled_tokens
    )
    assert final["collect/episodes_per_s"] > 0 and final["collect/tokens_per_s"] > 0
    assert sum(v for k, v in final.items() if k.startswith("collect/status/")) == 12
    ((step, text),) = tb_texts(tb_dir, "collect/samples")
    assert step == 12 and "| episode | task |" in text
    sampled = {e.uid: e for e in episodes if f"| {e.uid} |" in text}
    assert len(sampled) == 3  # the reservoir's three episodes, every call a row

    # MLflow: the same series, and the table as a JSON artifact.
    client, run_id = mlflow_run(root, "collect-1")
    assert mlflow_history(client, run_id, "collect/episodes") == scalars["collect/episodes"]
    assert (
        mlflow_history(client, run_id, "collect/trainable_tokens")[-1][1]
        == summary.trainable_tokens
    )
    params = client.get_run(run_id).data.params
    assert params["backend.model"] == "tiny" and params["tracking.run_name"] == "collect-1"
    local = client.download_artifacts(run_id, "collect/samples/step_000012.json", str(tmp_path))
    records = json.loads(Path(local).read_text())
    assert {r["episode"] for r in records} == set(sampled)
    assert len(records) == sum(len(e.calls) for e in sampled.values())
    for r in records:
        call = sampled[r["episode"]].calls[r["call"]]
        assert r["prompt_tokens"] == len(call.prompt_ids) and r["sent_as"] == call.sent_as
        assert r["completion"] == call.choices[0].message["content"]
        assert r["prompt"].endswith(call.request["messages"][-1]["content"])

    # wandb: the offline run's history, its config and the Table file.
    run_dir = wandb_run_dir(root)
    rows, config = wandb_history(run_dir)
    logged = [r for r in rows if "collect/episodes" in r]
    assert [r["_step"] for r in logged] == list(range(1, 13))
    assert [r["collect/episodes"] for r in logged] == [v for _, v in scalars["collect/episodes"]]
    assert config["backend"]["model"] == "tiny"
    table = wandb_table(
        run_dir, next(r for r in rows if "collect/samples/path" in r), "collect/samples"
    )
    assert table["columns"] == list(COLUMNS)
    assert sorted(map(tuple, table["data"])) == sorted(
        tuple(r[c] for c in COLUMNS) for r in records
    )


def test_numpy_training_logs_every_iteration_to_all_three(tmp_path: Path) -> None:
    root = tmp_path / "tracking"
    tasks = [
        json.loads(line) for line in Path("examples/arithmetic.jsonl").read_text().splitlines()[:6]
    ]
    history = train(
        iterations=3, target=None, tasks=tasks, samples_per_task=4, log=lambda _: None,
        tracking=tracking(root, "tiny-1", samples=2),
    )  # fmt: skip
    assert len(history) == 3
    want = [(h["iteration"], h["mean_reward"]) for h in history]
    scalars = tb_scalars(root / "tensorboard" / "tiny-1")
    assert [
        (s, pytest.approx(v)) for s, v in scalars["train/mean_reward"]
    ] == want  # float32 in events
    for key in ("reward_std", "max_logprob_diff", "version", "collect_s", "export_s", "loss_s"):
        assert [s for s, _ in scalars[f"train/{key}"]] == [0, 1, 2]
    assert [v for _, v in scalars["train/version"]] == [0, 1, 2]
    assert [s for s, _ in scalars["train/push_s"]] == [0, 1, 2]  # no target: every iteration pushes
    assert all(0 <= v <= 1e-5 for _, v in scalars["train/max_logprob_diff"])
    assert [v for _, v in scalars["collect/episodes"]] == [24, 24, 24]  # the batch's own counts
    texts = tb_texts(root / "tensorboard" / "tiny-1", "train/samples")
    assert [s for s, _ in texts] == [0, 1, 2]

    client, run_id = mlflow_run(root, "tiny-1")
    assert mlflow_history(client, run_id, "train/mean_reward") == want
    assert client.get_run(run_id).data.params["trainer.iterations"] == "3"
    assert len(client.list_artifacts(run_id, "train/samples")) == 3

    rows, _ = wandb_history(wandb_run_dir(root))
    assert [(r["_step"], r["train/mean_reward"]) for r in rows if "train/mean_reward" in r] == want


def test_keys_never_reach_a_tracker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent that writes its key into the prompt: no tracker file holds it (binary files included)."""
    secret = "sk-trackers-test-" + "k3y" * 8
    monkeypatch.setenv("ROLLOUT_TEST_KEY", secret)
    register_secret(secret)  # as the wrapped clients do with their keys
    root = tmp_path / "tracking"
    collect(
        tasks=COLLECT["tasks"],
        agent="tests.peers.trackers.agents:leaky", limit=2, progress=False, output={"path": None},
        backend={"api_key_env": "ROLLOUT_TEST_KEY"},
        tracking=tracking(root, f"run-{secret}", interval_s=0),
    )  # fmt: skip
    files = [p for p in root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and any(p.name == "mlflow.db" for p in files)
    assert any("tfevents" in p.name for p in files)
    assert not [p for p in files if secret.encode() in p.read_bytes()]
    # The text was logged (redacted), not dropped.
    ((_, text),) = tb_texts(next((root / "tensorboard").iterdir()), "collect/samples")
    assert "my key is [REDACTED]" in text


def test_a_key_on_the_command_line_never_reaches_a_tracker(tmp_path: Path) -> None:
    """wandb keeps the process's command line among its run metadata; a key given in an override
    (here in the run name, which the value rule scrubs) must not be in any tracker's files."""
    secret = "sk-cli-" + "s3cr3t" * 4
    root = tmp_path / "tracking"
    proc = subprocess.run(
        [sys.executable, "-m", "rollout.cli", "collect", "limit=2", "progress=false",
         f"output.path={tmp_path / 'eps.jsonl'}", f"tracking.trackers=[{', '.join(ALL)}]",
         f"tracking.dir={root}", f"tracking.run_name=run-{secret}"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr
    files = [p for p in root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and any(p.name == "mlflow.db" for p in files)
    assert [p for p in files if secret.encode() in p.read_bytes()] == []


def test_a_tracker_that_fails_to_start_or_write_warns_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tensorboardX

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where mlflow's store would go")

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tensorboardX.SummaryWriter, "add_scalar", disk_full)
    root, journal = tmp_path / "tracking", tmp_path / "eps.jsonl"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = collect(
            **COLLECT,
            limit=4, samples_per_task=2, progress=False, output={"path": str(journal)},
            tracking=tracking(
                root, "broken", interval_s=0, mlflow={"tracking_uri": f"sqlite:///{blocker}/mlflow.db"}
            ),
        )  # fmt: skip
    messages = [str(w.message) for w in caught if issubclass(w.category, TrackerWarning)]
    assert len(messages) == 2, messages
    assert (
        messages[0].startswith("tracker mlflow did not start")
        and "goes on without it" in messages[0]
    )
    assert messages[1].startswith("tracker tensorboard failed to log metrics")
    assert "No space left on device" in messages[1]
    assert summary.finished == len(read_jsonl(journal)) == 8  # nothing lost
    rows, _ = wandb_history(wandb_run_dir(root))  # the tracker that works logged every episode
    assert [r["collect/episodes"] for r in rows if "collect/episodes" in r] == list(range(1, 9))


def test_rollout_collect_cli_turns_trackers_on_with_one_override(tmp_path: Path) -> None:
    root = tmp_path / "tracking"
    proc = subprocess.run(
        [sys.executable, "-m", "rollout.cli", "collect", "limit=3", "progress=false",
         f"output.path={tmp_path / 'eps.jsonl'}", "tracking.trackers=[tensorboard, mlflow]",
         f"tracking.dir={root}", "tracking.run_name=cli"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr  # 1: the untrained policy may score nothing
    assert "TrackerWarning" not in proc.stderr
    assert tb_scalars(root / "tensorboard" / "cli")["collect/episodes"][-1] == (3, 3.0)
    client, run_id = mlflow_run(root, "cli")
    assert mlflow_history(client, run_id, "collect/episodes")[-1] == (3, 3.0)
