"""Hugging Face `datasets` reads the Parquet export, and `rollout export --to hf` writes training samples."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest

from rollout import collect
from rollout.export import read_jsonl
from rollout.sample import assemble

pytestmark = pytest.mark.peers


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    collect(
        limit=5, samples_per_task=2, progress=False, seed=3,
        output={"path": str(out / "eps.jsonl"), "parquet": str(out / "parquet"), "parquet_batch": 4},
    )  # fmt: skip
    return out


def test_the_parquet_export_loads_with_load_dataset_columns_intact(run: Path) -> None:
    parts = sorted((run / "parquet").glob("*.parquet"))
    assert len(parts) >= 2  # several parts, one glob
    ds = datasets.load_dataset(
        "parquet", data_files=str(run / "parquet" / "*.parquet"), split="train"
    )
    table = pq.read_table(parts[0])
    assert ds.column_names == table.schema.names
    episodes = {e.id: e for e in read_jsonl(run / "eps.jsonl")}
    assert len(ds) == len(episodes) == 10
    for row in ds:
        ep = episodes[row["id"]]
        assert (
            row["task_id"] == ep.task_id
            and row["reward"] == ep.reward
            and row["status"] == ep.status.value
        )
        assert len(row["calls"]) == len(ep.calls)
        for got, call in zip(row["calls"], ep.calls, strict=True):
            assert got["prompt_ids"] == call.prompt_ids.tolist()
            assert got["sent_as"] == call.sent_as
            (choice,) = call.choices
            assert got["choices"][0]["ids"] == choice.ids.tolist()
            logprobs = np.asarray(got["choices"][0]["logprobs"], dtype=np.float32)
            assert np.array_equal(logprobs, choice.logprobs)  # float32, bit for bit


def test_export_to_hf_writes_the_training_samples(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "hf"
    proc = subprocess.run(
        [sys.executable, "-m", "rollout.cli", "export", str(run / "eps.jsonl"), "--to", "hf", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    ds = datasets.load_from_disk(str(out))
    samples = assemble(read_jsonl(run / "eps.jsonl")).samples
    assert len(ds) == len(samples) > 0
    assert f"{len(samples)} training samples" in proc.stdout
    assert ds.features["tokens"].feature.dtype == "int32"
    for row, s in zip(ds, samples, strict=True):
        assert row["episode_id"] == s.episode_id and row["uid"] == s.uid
        assert row["tokens"] == s.tokens.tolist()
        assert row["loss_mask"] == s.loss_mask.tolist()
        assert np.array_equal(np.asarray(row["logprobs"], dtype=np.float32), s.logprobs)
        assert row["versions"] == s.versions.tolist()
        assert (
            row["prompt_len"] == s.prompt_len
            and row["reward"] == s.reward
            and row["exact"] == s.exact
        )
