"""The stored layout of an episode, as one field table, and the JSON row both formats share.

`EPISODE` (with its nested `CALL` and `CHOICE` tables) lists every field a
file holds: its name (the same on the record class, in a JSONL row and in a
Parquet column), its kind, and the default an older row without it gets.
The JSON rows here and the Parquet schema, writer and reader in
`rollout.export.parquet` are all derived from it, so adding a field is one
line in one table (and a `SCHEMA_VERSION` bump).

Token data round-trips bit-exactly: ids are ints, float32 logprobs go through
Python floats (float32 -> float64 is exact and JSON's repr of a float64
round-trips), and versions are stored as [value, count] runs in JSON, the
form `Versions` keeps in memory. The one exception: JSON has a single NaN,
so a NaN logprob's sign/payload bits are normalised (Parquet keeps them).

Every string written goes through the one redactor (`rollout.redact`): free
text (error, task, messages, notes) by value, requests and metadata also by
key name. A value that cannot be written (a tuple key, a cycle) raises
`SerializationError` naming where; `unwritable_as_failed` turns such an
episode into a failed one that can be written, so a run goes on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

import numpy as np

from rollout.call_record import CallRecord, ChoiceRecord, TokenSource, Versions
from rollout.episode import Episode, EpisodeStatus
from rollout.errors import SchemaVersionError, SerializationError
from rollout.redact import redact, redact_text

SCHEMA_VERSION = 3
"""Bump when the row layout changes; readers refuse newer versions and fill older ones in.

1: the first layout. 2: calls gained `sent_as` and `fallback` (token mode).
3: choices gained `server_logprobs`, `server_tokens` and `mismatch` (servers without ids).
"""

Kind = Literal["int", "float", "bool", "str", "enum", "json", "strs", "ids", "logprobs", "versions", "table"]
# int/float/bool: JSON scalars (int64/float64/bool in Parquet); str/enum: strings;
# json: free-form data (a JSON string in Parquet); strs: a list of strings;
# ids/logprobs/versions: token arrays (native list<int32>/list<float32> in Parquet;
# versions are per-token there and [value, count] runs in JSON); table: nested records.

_REQUIRED: Any = object()


@dataclass(frozen=True)
class Field:
    """One stored field of a record class."""

    name: str
    kind: Kind
    default: Any = _REQUIRED  # for rows written before the field existed; a callable is a factory
    enum: type[Enum] | None = None  # kind "enum"
    names: bool = False  # kind "json": also drop credential-named keys (requests, metadata)
    table: Table | None = None  # kind "table"

    def dump(self, value: Any) -> Any:
        """`value` (the record's attribute) in its JSON-row form, redacted."""
        kind = self.kind
        if value is None or kind in ("int", "float", "bool"):
            return value
        if kind == "str":
            return _text(value, self.name)
        if kind == "enum":
            assert self.enum is not None
            try:
                return self.enum(value).value
            except ValueError as e:
                raise SerializationError(f"{self.name}: {e}") from None
        if kind == "json":
            return redact(jsonable(value, self.name), names=self.names)
        if kind == "strs":
            return [_text(s, f"{self.name}[{i}]") for i, s in enumerate(value)]
        if kind == "ids":
            return value.tolist()
        if kind == "logprobs":
            return value.tolist()  # float32 -> Python float is exact
        if kind == "versions":
            return [[v, c] for v, c in value.runs()]
        assert self.table is not None
        rows = []
        for i, item in enumerate(value):
            try:
                rows.append(self.table.dump(item))
            except SerializationError as e:
                raise SerializationError(f"{self.name}[{i}].{e}") from None
        return rows

    def missing(self) -> Any:
        """The value a row without this field (or with null where null is not allowed) gets."""
        if self.default is _REQUIRED:
            raise KeyError(self.name)
        return self.default() if callable(self.default) else self.default

    def load(self, value: Any) -> Any:
        """The record attribute for `value`, this field's JSON-row form."""
        if value is None:
            return None if self.default is _REQUIRED else self.missing()
        kind = self.kind
        if kind == "float":
            return float(value)
        if kind == "bool":
            return bool(value)
        if kind == "enum":
            assert self.enum is not None
            return self.enum(value)
        if kind == "strs":
            return list(value)
        if kind == "ids":
            return np.asarray(value, dtype=np.int32)
        if kind == "logprobs":
            return np.asarray(value, dtype=np.float32)
        if kind == "versions":
            return runs_to_versions(value)
        if kind == "table":
            assert self.table is not None
            return [self.table.load(item) for item in value]
        return value


@dataclass(frozen=True)
class Table:
    """The stored fields of one record class; field names are its constructor's keywords."""

    cls: type[Any]
    fields: tuple[Field, ...]

    def dump(self, obj: Any) -> dict[str, Any]:
        return {f.name: f.dump(getattr(obj, f.name)) for f in self.fields}

    def load(self, row: dict[str, Any]) -> Any:
        return self.cls(
            **{f.name: f.load(row[f.name]) if f.name in row else f.missing() for f in self.fields}
        )


CHOICE = Table(
    ChoiceRecord,
    (
        Field("index", "int"),
        Field("ids", "ids"),
        Field("logprobs", "logprobs", default=None),
        Field("versions", "versions"),
        Field("finish_reason", "str", default=None),
        Field("message", "json", default=dict),
        Field("source", "enum", enum=TokenSource),
        Field("server_logprobs", "logprobs", default=None),  # since schema 3
        Field("server_tokens", "int", default=None),  # since schema 3
        Field("mismatch", "str", default=None),  # since schema 3
    ),
)
CALL = Table(
    CallRecord,
    (
        Field("id", "str"),
        Field("index", "int"),
        Field("endpoint", "str"),
        Field("prompt_ids", "ids"),
        Field("prompt_source", "enum", enum=TokenSource),
        Field("choices", "table", table=CHOICE),
        Field("request", "json", default=dict, names=True),
        Field("usage", "json", default=None),
        Field("latency_s", "float", default=0.0),
        Field("started_at", "float", default=0.0),
        Field("reward", "float", default=None),
        Field("parent", "int", default=None),
        Field("notes", "strs", default=list),
        Field("sent_as", "str", default="messages"),  # since schema 2
        Field("fallback", "str", default=None),  # since schema 2
    ),
)
EPISODE = Table(
    Episode,
    (
        Field("id", "str"),
        Field("task_id", "str"),
        Field("sample", "int"),
        Field("task", "json", default=None),
        Field("status", "enum", enum=EpisodeStatus),
        Field("error", "str", default=None),
        Field("reward", "float", default=None),
        Field("discounted", "bool", default=False),
        Field("metadata", "json", default=dict, names=True),
        Field("calls", "table", table=CALL),
    ),
)


def check_schema_version(version: Any, where: str = "record") -> None:
    if not isinstance(version, int) or isinstance(version, bool):
        raise SchemaVersionError(
            f"{where} has no valid schema_version ({version!r}); not a rollout record?"
        )
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{where} uses schema_version {version}, newer than this library understands "
            f"({SCHEMA_VERSION}); upgrade rollout-compat to read it"
        )
    if version < 1:
        raise SchemaVersionError(f"{where} has invalid schema_version {version}")


def json_default(obj: Any) -> Any:
    """The JSON form of what `json` cannot encode: numpy arrays and scalars, pydantic models.

    Anything else becomes its repr: a readable trace instead of a lost record.
    Pass as `json.dumps(..., default=json_default)`.
    """
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    return repr(obj)


def dumps(obj: Any) -> str:
    """Compact JSON; NaN/inf allowed (logprobs can be -inf)."""
    return json.dumps(obj, default=json_default, ensure_ascii=False, separators=(",", ":"))


MAX_DEPTH = 256
"""Deepest nesting `jsonable` accepts: well inside Python's recursion limit, so the
redactor and `json.dumps` that walk the result again cannot hit it."""


class _Unwritable(Exception):
    def __init__(self, reason: str, where: str = "") -> None:
        self.reason, self.where = reason, where


def jsonable(obj: Any, where: str = "value") -> Any:
    """A copy of `obj` in plain JSON types (what a JSON round trip would give back).

    Non-string keys that JSON allows (int, float, bool, None) become strings
    as `json` writes them; other objects go through `json_default`. Raises
    `SerializationError` naming the place for a key JSON cannot hold (a
    tuple), a cycle or nesting deeper than `MAX_DEPTH`, instead of recursing
    forever.
    """
    try:
        return _plain(obj, set())
    except _Unwritable as e:
        raise SerializationError(f"{where}{e.where}: {e.reason}") from None


def _plain(obj: Any, active: set[int]) -> Any:
    if obj is None or isinstance(obj, (str, int, float)):  # bool is an int
        return obj
    if isinstance(obj, (dict, list, tuple)):
        if id(obj) in active:
            raise _Unwritable("refers to itself (a cycle)")
        if len(active) >= MAX_DEPTH:
            raise _Unwritable(f"nested deeper than {MAX_DEPTH} levels")
        active.add(id(obj))
        try:
            if isinstance(obj, dict):
                out: dict[str, Any] = {}
                for k, v in obj.items():
                    key = _key(k)
                    try:
                        out[key] = _plain(v, active)
                    except _Unwritable as e:
                        e.where = f"[{k!r}]{e.where}"
                        raise
                return out
            items = []
            for i, v in enumerate(obj):
                try:
                    items.append(_plain(v, active))
                except _Unwritable as e:
                    e.where = f"[{i}]{e.where}"
                    raise
            return items
        finally:
            active.discard(id(obj))
    try:
        converted = json_default(obj)
    except Exception as e:
        raise _Unwritable(f"cannot convert {type(obj).__name__} ({type(e).__name__}: {e})") from None
    return _plain(converted, active)


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, (int, float)):
        return json.dumps(key)  # as json writes it: 1 -> "1", True -> "true"
    raise _Unwritable(f"key {key!r} is a {type(key).__name__}; JSON keys must be strings")


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise SerializationError(f"{where}: expected a string, got {type(value).__name__}")
    return redact_text(value)


def runs_to_versions(runs: list[list[int]]) -> Versions:
    if not runs:
        return Versions.from_array(np.zeros(0, np.int32))
    values = np.array([r[0] for r in runs], dtype=np.int32)
    counts = np.array([r[1] for r in runs], dtype=np.int64)
    return Versions.from_array(np.repeat(values, counts))


def episode_to_row(episode: Episode) -> dict[str, Any]:
    """A JSON-ready dict holding everything in `episode`, redacted.

    Raises `SerializationError` if a free-form field cannot be written; see
    `unwritable_as_failed`.
    """
    return {"schema_version": SCHEMA_VERSION, **EPISODE.dump(episode)}


def episode_from_row(row: dict[str, Any], where: str = "record") -> Episode:
    """The episode a row holds; fields added after the row's schema version get their defaults."""
    check_schema_version(row.get("schema_version"), where)
    episode: Episode = EPISODE.load(row)
    return episode


def unwritable_as_failed(episode: Episode, error: SerializationError) -> Episode:
    """A copy of `episode` that can be written: failed, saying why, with its token data.

    Each field that cannot be written is replaced by a readable description
    (its type and a shortened repr), so nothing else about the episode is lost.
    """

    def fixed(table: Table, obj: Any) -> Any:
        values: dict[str, Any] = {}
        for f in table.fields:
            value = getattr(obj, f.name)
            if f.kind == "table":
                assert f.table is not None
                value = [fixed(f.table, item) for item in value]
            else:
                try:
                    f.dump(value)
                except SerializationError as e:
                    value = _describe(f, value, str(e))
            values[f.name] = value
        return table.cls(**values)

    copy: Episode = fixed(EPISODE, episode)
    copy.status = EpisodeStatus.ERROR
    reason = f"episode could not be written: {error}"
    copy.error = reason if not episode.error else f"{reason}\n{copy.error}"
    return copy


def _describe(field: Field, value: Any, reason: str) -> Any:
    try:
        shown = repr(value)
    except Exception as e:  # a repr that fails or recurses
        shown = f"<{type(value).__name__}: repr failed: {type(e).__name__}>"
    shown = shown if len(shown) <= 2000 else shown[:2000] + "..."
    if field.kind == "json":
        return {"unwritable": reason, "type": type(value).__name__, "repr": shown}
    if field.kind == "strs":
        return [shown]
    return shown
