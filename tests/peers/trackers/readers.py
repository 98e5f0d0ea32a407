"""Read a run's logs back through each tracker's own reader (shared by the trackers and verl tiers).

- TensorBoard: tensorboard's `EventAccumulator`.
- MLflow: `MlflowClient` (metric history, artifacts) on the run's sqlite store.
- wandb: the offline run's `.wandb` file, whose records are wandb's own
  protobuf `Record`s (`wandb.proto.wandb_internal_pb2`) in LevelDB log
  framing (32 KiB blocks; each chunk: crc32 u32, length u16, type u8). wandb
  0.31 ships no Python reader for it (its Go core reads it), so the framing
  is unpacked here and every record parsed by wandb's own classes; the
  tables are the JSON files wandb writes under files/media/table.
  wandb's core process writes that file on its own time: `run.finish()` can
  return before the records are on disk (seen under load), so the reader
  waits for the run's `exit` record, as `wandb sync` would need it.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from wandb.proto import wandb_internal_pb2


def tb_run(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def tb_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = tb_run(log_dir)
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def tb_texts(log_dir: Path, tag: str) -> list[tuple[int, str]]:
    """TensorBoard text summaries: tensorboardX writes them as `<tag>/text_summary` tensors."""
    acc = tb_run(log_dir)
    return [
        (e.step, b"".join(e.tensor_proto.string_val).decode())
        for e in acc.Tensors(f"{tag}/text_summary")
    ]


def mlflow_run(root: Path, run_name: str, experiment: str = "rollout") -> tuple[MlflowClient, str]:
    client = MlflowClient(tracking_uri=f"sqlite:///{root.resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no mlflow experiment {experiment!r}"
    runs = client.search_runs(
        [exp.experiment_id], filter_string=f"attributes.run_name = '{run_name}'"
    )
    assert len(runs) == 1, f"{len(runs)} mlflow runs named {run_name!r}"
    return client, runs[0].info.run_id


def mlflow_history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _wandb_records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    block, pos, out, partial = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # full
            out.append(chunk)
        elif kind == 2:  # first
            partial = chunk
        elif kind == 3:  # middle
            partial += chunk
        elif kind == 4:  # last
            out.append(partial + chunk)
    return out


def wandb_run_dir(root: Path) -> Path:
    runs = sorted((root / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline wandb run under {root}, found {runs}"
    return runs[0]


def _complete_run(path: Path, timeout_s: float = 60.0) -> list[Any]:
    """The run file's records, once its `exit` record is written."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = []
        for raw in _wandb_records(path):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            records.append(record)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"{path}: no exit record after {timeout_s} s"
        time.sleep(0.2)


def wandb_history(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(history rows, config) of a finished offline run, from its .wandb file."""
    (path,) = run_dir.glob("run-*.wandb")
    rows: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    for record in _complete_run(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            rows.append({
                (i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item
            })  # fmt: skip
        elif kind == "run":
            config.update({u.key: json.loads(u.value_json) for u in record.run.config.update})
    return rows, config


def wandb_table(run_dir: Path, row: dict[str, Any], key: str) -> dict[str, Any]:
    """The wandb Table a history row points to (`{key}/path`), as wandb wrote it."""
    return json.loads((run_dir / "files" / row[f"{key}/path"]).read_text())
