"""Parquet episode files: columnar, compressed, one row per episode.

The schema, the writer and the reader are derived from the field table in
`rollout.export.rows` (one column per field, nested structs for calls and
choices). Token data is stored as native `list<int32>` / `list<float32>`
columns, built straight from numpy offsets and concatenated values, so
writing does not go through Python lists. Free-form fields (request,
messages, usage, task, metadata) are JSON strings; every string is redacted
as in JSONL. The schema version sits in the file's key-value metadata
(`rollout.schema_version`); files from older versions read with defaults.

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

from rollout.call_record import Versions
from rollout.episode import Episode
from rollout.export.rows import EPISODE, SCHEMA_VERSION, Field, Table, check_schema_version, dumps

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


def _arrow_type(pa: Any, field: Field) -> Any:
    kind = field.kind
    if kind == "table":
        assert field.table is not None
        return pa.list_(pa.struct([(f.name, _arrow_type(pa, f)) for f in field.table.fields]))
    return {
        "int": pa.int64(),
        "float": pa.float64(),
        "bool": pa.bool_(),
        "str": pa.string(),
        "enum": pa.string(),
        "json": pa.string(),
        "strs": pa.list_(pa.string()),
        "ids": pa.list_(pa.int32()),
        "logprobs": pa.list_(pa.float32()),
        "versions": pa.list_(pa.int32()),  # per token here (runs only in JSON)
    }[kind]


def _schema(pa: Any) -> Any:
    """The Arrow schema, derived from the field table in `rollout.export.rows`."""
    return pa.schema(
        [("schema_version", pa.int32())] + [(f.name, _arrow_type(pa, f)) for f in EPISODE.fields],
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


def _list(pa: Any, typ: Any, arrays: list[np.ndarray], dtype: Any, nulls: list[bool] | None = None) -> Any:
    """A list<...> array straight from numpy: concatenated values plus offsets, no Python lists."""
    values = np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype)
    offsets = pa.array(_offsets([len(a) for a in arrays]), type=pa.int32())
    mask = None if nulls is None or not any(nulls) else pa.array(nulls, type=pa.bool_())
    return pa.ListArray.from_arrays(offsets, pa.array(values), type=typ, mask=mask)


def _column(pa: Any, field: Field, typ: Any, values: list[Any]) -> Any:
    """One field of many records as an Arrow array of type `typ`."""
    kind = field.kind
    if kind == "ids":
        return _list(pa, typ, values, np.int32)
    if kind == "versions":
        return _list(pa, typ, [v.to_array() for v in values], np.int32)
    if kind == "logprobs":
        empty = np.zeros(0, np.float32)
        nulls = [v is None for v in values]
        return _list(pa, typ, [empty if v is None else v for v in values], np.float32, nulls)
    if kind == "table":
        assert field.table is not None
        items = [item for v in values for item in v]
        children = _struct(pa, field.table, typ.value_type, items)
        return pa.ListArray.from_arrays(pa.array(_offsets([len(v) for v in values])), children, type=typ)
    if kind == "strs":
        texts = [field.dump(v) for v in values]
        flat = pa.array([t for ts in texts for t in ts], pa.string())
        return pa.ListArray.from_arrays(pa.array(_offsets([len(t) for t in texts])), flat, type=typ)
    if kind == "json":
        return pa.array([None if v is None else dumps(field.dump(v)) for v in values], typ)
    if kind in ("str", "enum"):
        return pa.array([field.dump(v) for v in values], typ)
    return pa.array(values, typ)


def _struct(pa: Any, table: Table, typ: Any, records: list[Any]) -> Any:
    arrays = [
        _column(pa, f, typ.field(f.name).type, [getattr(r, f.name) for r in records])
        for f in table.fields
    ]
    return pa.StructArray.from_arrays(arrays, fields=list(typ))


def episodes_to_table(episodes: Iterable[Episode]) -> Any:
    """A pyarrow Table (schema-versioned) holding `episodes`, one row each."""
    pa, _ = _pyarrow()
    schema = _schema(pa)
    eps = list(episodes)
    columns = [pa.array([SCHEMA_VERSION] * len(eps), pa.int32())] + [
        _column(pa, f, schema.field(f.name).type, [getattr(ep, f.name) for ep in eps])
        for f in EPISODE.fields
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _file_version(schema: Any, where: str) -> int:
    meta = schema.metadata or {}
    raw = meta.get(SCHEMA_KEY)
    try:
        version: Any = int(raw) if raw is not None else None
    except ValueError:
        version = raw
    check_schema_version(version, where)
    return int(version)


class _Lists:
    """Zero-copy view of a pyarrow ListArray: per-row numpy slices of its values."""

    def __init__(self, arr: Any, dtype: Any) -> None:
        self.offsets = arr.offsets.to_numpy()
        self.values = arr.values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        self.null = arr.is_null().to_numpy(zero_copy_only=False)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]


def _values(field: Field, arr: Any, n: int) -> list[Any]:
    """The record attribute of `field` for each of `n` rows of its column (None: absent, older file)."""
    kind = field.kind
    if arr is None:
        return [field.missing() for _ in range(n)]
    if kind == "ids":
        ids = _Lists(arr, np.int32)
        return [ids[i].copy() for i in range(n)]
    if kind == "versions":
        vs = _Lists(arr, np.int32)
        return [Versions.from_array(vs[i]) for i in range(n)]
    if kind == "logprobs":
        lp = _Lists(arr, np.float32)
        return [None if lp.null[i] else lp[i].copy() for i in range(n)]
    if kind == "table":
        assert field.table is not None
        offsets = arr.offsets.to_numpy()
        items = _records(field.table, arr.values)
        return [items[offsets[i] : offsets[i + 1]] for i in range(n)]
    if kind == "json":
        return [field.load(None if t is None else json.loads(t)) for t in arr.to_pylist()]
    return [field.load(v) for v in arr.to_pylist()]


def _records(table: Table, struct: Any) -> list[Any]:
    stored = dict(zip([f.name for f in struct.type], struct.flatten(), strict=True))
    return _build(table, stored, len(struct))


def _build(table: Table, columns: dict[str, Any], n: int) -> list[Any]:
    values = {f.name: _values(f, columns.get(f.name), n) for f in table.fields}
    return [table.cls(**{name: vals[i] for name, vals in values.items()}) for i in range(n)]


def table_to_episodes(table: Any, where: str = "table") -> list[Episode]:
    """Episodes from a Table written by `episodes_to_table` (checks the schema version).

    A file from an older schema reads too: fields it lacks get their defaults.
    """
    _file_version(table.schema, where)
    for v in set(table.column("schema_version").to_pylist()):
        check_schema_version(v, where)
    columns = {name: table.column(name).combine_chunks() for name in table.column_names}
    episodes: list[Episode] = _build(EPISODE, columns, table.num_rows)
    return episodes


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
            current = _file_version(old.schema_arrow, str(self.path)) == SCHEMA_VERSION
            for g in range(old.num_row_groups):
                group = old.read_row_group(g)
                if current:
                    self._writer.write_table(group.cast(self._schema))
                else:  # an older layout: rewrite it in this one
                    self._writer.write_table(episodes_to_table(table_to_episodes(group)))
                self.count += group.num_rows

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
    _file_version(f.schema_arrow, str(path))
    for g in range(f.num_row_groups):
        yield from table_to_episodes(f.read_row_group(g), f"{path} row group {g}")


def read_parquet(path: str | os.PathLike[str]) -> list[Episode]:
    """All episodes in a Parquet file written by this library."""
    _, pq = _pyarrow()
    f = pq.ParquetFile(path)
    _file_version(f.schema_arrow, str(path))
    return table_to_episodes(f.read(), str(path))


def episode_ids(path: str | os.PathLike[str]) -> list[str]:
    """The episode ids in a Parquet file, in row order (reads only that column)."""
    _, pq = _pyarrow()
    ids: list[str] = pq.read_table(path, columns=["id"]).column("id").to_pylist()
    return ids


def keep_rows(path: str | os.PathLike[str], keep: list[bool]) -> None:
    """Rewrite a Parquet file with only the rows `keep` marks, atomically; remove it if none."""
    pa, pq = _pyarrow()
    path = Path(path)
    if not any(keep):
        path.unlink()
        return
    f = pq.ParquetFile(path)
    table = f.read().filter(pa.array(keep, pa.bool_()))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
