"""Exports: training batches for AReaL / verl, rLLM episode dicts, and JSONL / Parquet files.

`to_areal`, `to_verl` and `to_rllm` are pure numpy/Python; Parquet needs the
optional pyarrow extra and `areal_tensors` the torch extra, each imported only
when used. `rollout.export.verl_advantage` (verl's per-episode estimators)
imports verl itself and is not loaded here.
"""

from rollout.errors import CorruptLineWarning, SchemaVersionError, SerializationError
from rollout.export.areal import MissingLogprobsError, RewardRule, areal_tensors, to_areal
from rollout.export.jsonl import JsonlWriter, iter_jsonl, read_jsonl, write_jsonl
from rollout.export.parquet import ParquetWriter, iter_parquet, read_parquet, write_parquet
from rollout.export.rllm import to_rllm
from rollout.export.rows import SCHEMA_VERSION, episode_from_row, episode_to_row
from rollout.export.verl import TruncationError, read_verl, to_verl, write_verl

__all__ = [
    "SCHEMA_VERSION",
    "CorruptLineWarning",
    "JsonlWriter",
    "MissingLogprobsError",
    "ParquetWriter",
    "RewardRule",
    "SchemaVersionError",
    "SerializationError",
    "TruncationError",
    "areal_tensors",
    "episode_from_row",
    "episode_to_row",
    "iter_jsonl",
    "iter_parquet",
    "read_jsonl",
    "read_parquet",
    "read_verl",
    "to_areal",
    "to_rllm",
    "to_verl",
    "write_jsonl",
    "write_parquet",
    "write_verl",
]
