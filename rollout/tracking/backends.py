"""One small class per tracker, each writing through the tracker's own library.

Every class takes the same four calls (start in `__init__`, `log`, `table`,
`close`) and may raise anything: `rollout.tracking.tracker.Tracker` catches,
warns and goes on without it. Nothing here sees an API key: metric names are
ours, and every string was redacted by the caller.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from rollout.tracking.config import TrackingSpec

EXTRA = {"wandb": "wandb", "mlflow": "mlflow", "tensorboard": "tensorboard"}
"""The rollout-compat extra that installs each tracker's library."""


class Backend(Protocol):
    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def table(
        self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int
    ) -> None: ...

    def close(self) -> None: ...


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (TensorBoard's text plugin renders it)."""

    def cell(value: Any) -> str:
        return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class WandbBackend:
    """A wandb run; offline by default (files under <dir>/wandb, synced later with `wandb sync`)."""

    def __init__(self, spec: TrackingSpec, run_name: str, config: Mapping[str, Any]) -> None:
        import wandb

        self._wandb = wandb
        root = Path(spec.dir)
        root.mkdir(parents=True, exist_ok=True)
        w = spec.wandb
        self.run = wandb.init(
            project=spec.project, name=run_name, dir=str(root), mode=w.mode, entity=w.entity,
            group=w.group, tags=w.tags or None, config=dict(config), reinit="create_new",
            # console="off": the run's stdout stays the caller's (no capture, no rewrite).
            # x_disable_meta: wandb's system metadata holds the raw command line and the git
            # remote URL, either of which can carry a key (`backend.urls=[http://u:KEY@...]`).
            settings=wandb.Settings(console="off", silent=True, x_disable_meta=True),
        )  # fmt: skip

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def table(
        self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int
    ) -> None:
        self.run.log(
            {key: self._wandb.Table(columns=list(columns), data=[list(r) for r in rows])}, step=step
        )

    def close(self) -> None:
        self.run.finish()


class MlflowBackend:
    """An MLflow run through `MlflowClient` (no global active run), in a local sqlite store by default."""

    def __init__(self, spec: TrackingSpec, run_name: str, config: Mapping[str, Any]) -> None:
        from mlflow.tracking import MlflowClient

        root = Path(spec.dir).resolve()
        root.mkdir(parents=True, exist_ok=True)
        uri = spec.mlflow.tracking_uri or f"sqlite:///{root / 'mlflow.db'}"
        with warnings.catch_warnings():  # SQLAlchemy deprecation notes from mlflow's own store
            warnings.simplefilter("ignore", DeprecationWarning)
            self.client = client = MlflowClient(tracking_uri=uri)
            name = spec.mlflow.experiment or spec.project
            experiment = client.get_experiment_by_name(name)
            experiment_id = (
                experiment.experiment_id if experiment is not None
                else client.create_experiment(name, artifact_location=(root / "mlartifacts").as_uri())
            )  # fmt: skip
            self.run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
        from mlflow.entities import Metric, Param

        self._metric = Metric
        params = [
            Param(k, json.dumps(v) if not isinstance(v, str) else v)
            for k, v in flatten(config).items()
        ]
        for i in range(0, len(params), 100):  # mlflow takes at most 100 params per batch
            self.client.log_batch(
                self.run_id, params=[Param(p.key, p.value[:6000]) for p in params[i : i + 100]]
            )
        self.client.log_text(self.run_id, json.dumps(config, indent=1, default=str), "config.json")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [self._metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):  # mlflow's batch limit
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def table(
        self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int
    ) -> None:
        records = [dict(zip(columns, row, strict=True)) for row in rows]
        self.client.log_text(
            self.run_id, json.dumps(records, indent=1), f"{key}/step_{step:06d}.json"
        )

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class TensorBoardBackend:
    """TensorBoard event files through tensorboardX (no torch, no TensorFlow)."""

    def __init__(self, spec: TrackingSpec, run_name: str, config: Mapping[str, Any]) -> None:
        from tensorboardX import SummaryWriter

        log_dir = Path(spec.tensorboard.log_dir or Path(spec.dir) / "tensorboard" / run_name)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir
        self.writer = SummaryWriter(logdir=str(log_dir), flush_secs=spec.tensorboard.flush_secs)
        rows = [
            (k, json.dumps(v) if not isinstance(v, str) else v) for k, v in flatten(config).items()
        ]
        self.writer.add_text("config", markdown_table(["key", "value"], rows), 0)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, float(value), step)

    def table(
        self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int
    ) -> None:
        self.writer.add_text(key, markdown_table(columns, rows), step)

    def close(self) -> None:
        self.writer.close()


BACKENDS: dict[str, Any] = {
    "wandb": WandbBackend,
    "mlflow": MlflowBackend,
    "tensorboard": TensorBoardBackend,
}
