"""Parquet episode files: columnar, compressed, one row per episode.

Token data is stored as native `list<int32>` / `list<float32>` columns nested
under `calls` (and `calls.choices`), built straight from numpy offsets and
concatenated values, so writing does not go through Python lists. Free-form
fields (request, messages, usage, task, metadata) are JSON strings. The
schema version sits in the file's key-value metadata (`rollout.schema_version`).

Parquet cannot be appended to in place, so `ParquetWriter(append=True)`
copies the existing row groups into a temporary file, adds one row group per
`write()` batch, and atomically replaces the original on `close()`: the file
at `path` is always complete. Use JSONL when a run may be killed mid-write.

pyarrow is an optional dependency (`pip install rollout-compat[parquet]`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from rollout.episode import Episode, EpisodeStatus
from rollout.export.rows import SCHEMA_VERSION, check_schema_version, dumps, jsonable, scrub
from rollout.record import CallRecord, Choice, TokenSource, Versions

SCHEMA_KEY = b"rollout.schema_version"


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Parquet export needs pyarrow: pip install rollout-compat[parquet]"
        ) from e
    return pa, pq


def _schema(pa: Any) -> Any:
    ints, floats = pa.list_(pa.int32()), pa.list_(pa.float32())
    choice = pa.struct(
        [
            ("index", pa.int64()),
            ("ids", ints),
            ("logprobs", floats),
            ("versions", ints),
            ("finish_reason", pa.string()),
            ("message", pa.string()),
            ("source", pa.string()),
        ]
    )
    call = pa.struct(
        [
            ("id", pa.string()),
            ("index", pa.int64()),
            ("endpoint", pa.string()),
            ("prompt_ids", ints),
            ("prompt_source", pa.string()),
            ("request", pa.string()),
            ("usage", pa.string()),
            ("latency_s", pa.float64()),
            ("started_at", pa.float64()),
            ("reward", pa.float64()),
            ("parent", pa.int64()),
            ("notes", pa.list_(pa.string())),
            ("choices", pa.list_(choice)),
        ]
    )
    return pa.schema(
        [
            ("schema_version", pa.int32()),
            ("id", pa.string()),
            ("task_id", pa.string()),
            ("sample", pa.int64()),
            ("task", pa.string()),
            ("status", pa.string()),
            ("error", pa.string()),
            ("reward", pa.float64()),
            ("discounted", pa.bool_()),
            ("metadata", pa.string()),
            ("calls", pa.list_(call)),
        ],
        metadata={SCHEMA_KEY: str(SCHEMA_VERSION).encode()},
    )


def _offsets(lengths: list[int]) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    if out[-1] > np.iinfo(np.int32).max:
        raise ValueError(
            "batch too large for one Parquet row group (> 2**31 values); write smaller batches"
        )
    return out.astype(np.int32)


def _list(
    pa: Any, arrays: list[np.ndarray], dtype: Any, typ: Any, nulls: list[bool] | None = None
) -> Any:
    values = np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype)
    offsets = pa.array(_offsets([len(a) for a in arrays]), type=pa.int32())
    mask = None if nulls is None or not any(nulls) else pa.array(nulls, type=pa.bool_())
    return pa.ListArray.from_arrays(offsets, pa.array(values), type=typ, mask=mask)


def _json_or_none(v: Any) -> str | None:
    return None if v is None else dumps(jsonable(v))


def episodes_to_table(episodes: Iterable[Episode]) -> Any:
    """A pyarrow Table (schema-versioned) holding `episodes`, one row each."""
    pa, _ = _pyarrow()
    schema = _schema(pa)
    call_t = schema.field("calls").type.value_type
    choice_t = call_t.field("choices").type.value_type
    eps = list(episodes)
    calls = [c for ep in eps for c in ep.calls]
    choices = [ch for c in calls for ch in c.choices]
    empty_f32 = np.zeros(0, np.float32)

    choice_arr = pa.StructArray.from_arrays(
        [
            pa.array([ch.index for ch in choices], pa.int64()),
            _list(pa, [ch.ids for ch in choices], np.int32, choice_t.field("ids").type),
            _list(
                pa,
                [empty_f32 if ch.logprobs is None else ch.logprobs for ch in choices],
                np.float32,
                choice_t.field("logprobs").type,
                nulls=[ch.logprobs is None for ch in choices],
            ),
            _list(
                pa,
                [ch.versions.to_array() for ch in choices],
                np.int32,
                choice_t.field("versions").type,
            ),
            pa.array([ch.finish_reason for ch in choices], pa.string()),
            pa.array([dumps(jsonable(ch.message)) for ch in choices], pa.string()),
            pa.array([ch.source.value for ch in choices], pa.string()),
        ],
        fields=list(choice_t),
    )
    notes_values = pa.array([n for c in calls for n in c.notes], pa.string())
    call_arr = pa.StructArray.from_arrays(
        [
            pa.array([c.id for c in calls], pa.string()),
            pa.array([c.index for c in calls], pa.int64()),
            pa.array([c.endpoint for c in calls], pa.string()),
            _list(pa, [c.prompt_ids for c in calls], np.int32, call_t.field("prompt_ids").type),
            pa.array([c.prompt_source.value for c in calls], pa.string()),
            pa.array([dumps(jsonable(scrub(c.request))) for c in calls], pa.string()),
            pa.array([_json_or_none(c.usage) for c in calls], pa.string()),
            pa.array([c.latency_s for c in calls], pa.float64()),
            pa.array([c.started_at for c in calls], pa.float64()),
            pa.array([c.reward for c in calls], pa.float64()),
            pa.array([c.parent for c in calls], pa.int64()),
            pa.ListArray.from_arrays(
                pa.array(_offsets([len(c.notes) for c in calls])),
                notes_values,
                type=call_t.field("notes").type,
            ),
            pa.ListArray.from_arrays(
                pa.array(_offsets([len(c.choices) for c in calls])),
                choice_arr,
                type=call_t.field("choices").type,
            ),
        ],
        fields=list(call_t),
    )
    columns = [
        pa.array([SCHEMA_VERSION] * len(eps), pa.int32()),
        pa.array([ep.id for ep in eps], pa.string()),
        pa.array([ep.task_id for ep in eps], pa.string()),
        pa.array([ep.sample for ep in eps], pa.int64()),
        pa.array([_json_or_none(ep.task) for ep in eps], pa.string()),
        pa.array([ep.status.value for ep in eps], pa.string()),
        pa.array([ep.error for ep in eps], pa.string()),
        pa.array([ep.reward for ep in eps], pa.float64()),
        pa.array([ep.discounted for ep in eps], pa.bool_()),
        pa.array([dumps(jsonable(ep.metadata)) for ep in eps], pa.string()),
        pa.ListArray.from_arrays(
            pa.array(_offsets([len(ep.calls) for ep in eps])),
            call_arr,
            type=schema.field("calls").type,
        ),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _check_file_schema(schema: Any, where: str) -> None:
    meta = schema.metadata or {}
    raw = meta.get(SCHEMA_KEY)
    try:
        version: Any = int(raw) if raw is not None else None
    except ValueError:
        version = raw
    check_schema_version(version, where)


class _Lists:
    """Zero-copy view of a pyarrow ListArray: per-row numpy slices of its values."""

    def __init__(self, arr: Any, dtype: Any) -> None:
        self.offsets = arr.offsets.to_numpy()
        self.values = arr.values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        self.null = arr.is_null().to_numpy(zero_copy_only=False)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]


def _loads(s: str | None) -> Any:
    return None if s is None else json.loads(s)


def table_to_episodes(table: Any, where: str = "table") -> list[Episode]:
    """Episodes from a Table written by `episodes_to_table` (checks the schema version)."""
    _check_file_schema(table.schema, where)
    versions = table.column("schema_version").to_pylist()
    for v in set(versions):
        check_schema_version(v, where)
    calls_list = table.column("calls").combine_chunks()
    ep_call_off = calls_list.offsets.to_numpy()
    call_struct = calls_list.values
    cf = dict(zip([f.name for f in call_struct.type], call_struct.flatten(), strict=True))
    choices_list = cf["choices"]
    call_choice_off = choices_list.offsets.to_numpy()
    ch_struct = choices_list.values
    chf = dict(zip([f.name for f in ch_struct.type], ch_struct.flatten(), strict=True))
    ch_ids = _Lists(chf["ids"], np.int32)
    ch_lp = _Lists(chf["logprobs"], np.float32)
    ch_ver = _Lists(chf["versions"], np.int32)
    ch_index = chf["index"].to_pylist()
    ch_finish = chf["finish_reason"].to_pylist()
    ch_msg = chf["message"].to_pylist()
    ch_src = chf["source"].to_pylist()

    def choice(j: int) -> Choice:
        return Choice(
            index=ch_index[j],
            ids=ch_ids[j].copy(),
            logprobs=None if ch_lp.null[j] else ch_lp[j].copy(),
            versions=Versions.from_array(ch_ver[j]),
            finish_reason=ch_finish[j],
            message=json.loads(ch_msg[j]),
            source=TokenSource(ch_src[j]),
        )

    prompt = _Lists(cf["prompt_ids"], np.int32)
    c_py = {k: cf[k].to_pylist() for k in cf if k not in ("prompt_ids", "choices")}

    def call(i: int) -> CallRecord:
        return CallRecord(
            id=c_py["id"][i],
            index=c_py["index"][i],
            endpoint=c_py["endpoint"][i],
            prompt_ids=prompt[i].copy(),
            prompt_source=TokenSource(c_py["prompt_source"][i]),
            choices=[choice(j) for j in range(call_choice_off[i], call_choice_off[i + 1])],
            request=json.loads(c_py["request"][i]),
            usage=_loads(c_py["usage"][i]),
            latency_s=c_py["latency_s"][i],
            started_at=c_py["started_at"][i],
            reward=c_py["reward"][i],
            parent=c_py["parent"][i],
            notes=c_py["notes"][i],
        )

    cols = {name: table.column(name).to_pylist() for name in table.column_names if name != "calls"}
    return [
        Episode(
            id=cols["id"][k],
            task_id=cols["task_id"][k],
            sample=cols["sample"][k],
            task=_loads(cols["task"][k]),
            status=EpisodeStatus(cols["status"][k]),
            error=cols["error"][k],
            reward=cols["reward"][k],
            discounted=cols["discounted"][k],
            metadata=json.loads(cols["metadata"][k]),
            calls=[call(i) for i in range(ep_call_off[k], ep_call_off[k + 1])],
        )
        for k in range(table.num_rows)
    ]


class ParquetWriter:
    """Writes episodes to a Parquet file, one row group per `write()` batch.

    With `append=True` an existing file's row groups are carried over, so two
    writer sessions on one path accumulate. The file at `path` is replaced
    atomically on `close()`; until then it holds the previous complete state.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, append: bool = True, compression: str = "zstd"
    ) -> None:
        pa, pq = _pyarrow()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self._schema = _schema(pa)
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{id(self)}.tmp")
        self._writer: Any = pq.ParquetWriter(self._tmp, self._schema, compression=compression)
        if append and self.path.exists():
            old = pq.ParquetFile(self.path)
            _check_file_schema(old.schema_arrow, str(self.path))
            for g in range(old.num_row_groups):
                self._writer.write_table(old.read_row_group(g).cast(self._schema))
                self.count += old.metadata.row_group(g).num_rows

    def write(self, episodes: Episode | Iterable[Episode]) -> None:
        if self._writer is None:
            raise ValueError(f"ParquetWriter for {self.path} is closed")
        eps = [episodes] if isinstance(episodes, Episode) else list(episodes)
        if not eps:
            return
        table = episodes_to_table(eps)
        self._writer.write_table(table, row_group_size=max(len(eps), 1))
        self.count += len(eps)

    def close(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Discard this session's writes; the file at `path` is left untouched."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ParquetWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Keep what was written even on error: each finished batch is valid data.
        self.close()


def write_parquet(
    episodes: Episode | Iterable[Episode],
    path: str | os.PathLike[str],
    *,
    append: bool = False,
    compression: str = "zstd",
) -> int:
    """Write episodes to `path` as one row group; returns the file's episode count."""
    with ParquetWriter(path, append=append, compression=compression) as w:
        w.write(episodes)
        return w.count


def iter_parquet(path: str | os.PathLike[str]) -> Iterator[Episode]:
    """Episodes row group by row group (bounded memory for large files)."""
    _, pq = _pyarrow()
    f = pq.ParquetFile(path)
    _check_file_schema(f.schema_arrow, str(path))
    for g in range(f.num_row_groups):
        yield from table_to_episodes(f.read_row_group(g), f"{path} row group {g}")


def read_parquet(path: str | os.PathLike[str]) -> list[Episode]:
    """All episodes in a Parquet file written by this library."""
    _, pq = _pyarrow()
    f = pq.ParquetFile(path)
    _check_file_schema(f.schema_arrow, str(path))
    return table_to_episodes(f.read(), str(path))
