"""Episode <-> plain row (JSON-ready dict): the one serialization both file formats share.

Rows are versioned (`schema_version`) so a reader can refuse data written by
a newer library instead of silently misreading it. Token data round-trips
bit-exactly: ids are ints, float32 logprobs go through Python floats (float32
-> float64 is exact and JSON's repr of a float64 round-trips), and versions
are stored as [value, count] runs, the form `Versions` keeps in memory. The
one exception: JSON has a single NaN, so a NaN logprob's sign/payload bits
are normalised (Parquet keeps them).

Secrets never reach disk: request dicts are scrubbed of anything named like
an API key, an Authorization header or a headers mapping, at any depth. The
recorder already strips them; this is defence in depth.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from rollout.episode import Episode, EpisodeStatus
from rollout.errors import SchemaVersionError
from rollout.record import CallRecord, Choice, TokenSource, Versions

SCHEMA_VERSION = 1
"""Bump when the row layout changes incompatibly; readers refuse newer versions."""

_SECRET_KEY = re.compile(r"api_?key|authorization|headers$|^(access|auth|bearer)_?token$")
# Matched against the lower-cased key with "-" read as "_": api_key, apiKey,
# X-Api-Key, Authorization, Proxy-Authorization, headers, extra_headers, ...

_OPAQUE = frozenset({"messages", "tools", "functions", "response_format", "input"})
# User data (chat content, tool JSON schemas) may legitimately contain a
# property called "headers"; credentials are never passed there, so those
# subtrees are kept as sent.


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


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key.lower().replace("-", "_")))


def scrub(obj: Any) -> Any:
    """A copy of a request without credential-like keys, at any depth outside user data."""
    if isinstance(obj, dict):
        return {
            k: (v if k in _OPAQUE else scrub(v))
            for k, v in obj.items()
            if not (isinstance(k, str) and is_secret_key(k))
        }
    if isinstance(obj, (list, tuple)):
        return [scrub(v) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    # Last resort: keep a readable trace rather than losing the whole episode.
    return repr(obj)


def dumps(obj: Any) -> str:
    """Compact JSON; NaN/inf allowed (logprobs can be -inf)."""
    return json.dumps(obj, default=_json_default, ensure_ascii=False, separators=(",", ":"))


def jsonable(obj: Any) -> Any:
    """`obj` as plain JSON types (what a JSON round trip would give back)."""
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return json.loads(dumps(obj))


def versions_to_runs(versions: Versions) -> list[list[int]]:
    return [[value, count] for value, count in versions.runs()]


def runs_to_versions(runs: list[list[int]]) -> Versions:
    if not runs:
        return Versions.from_array(np.zeros(0, np.int32))
    values = np.array([r[0] for r in runs], dtype=np.int32)
    counts = np.array([r[1] for r in runs], dtype=np.int64)
    return Versions.from_array(np.repeat(values, counts))


def _float_list(arr: np.ndarray) -> list[float]:
    return [float(x) for x in arr.tolist()]


def choice_to_row(choice: Choice) -> dict[str, Any]:
    return {
        "index": choice.index,
        "ids": choice.ids.tolist(),
        "logprobs": None if choice.logprobs is None else _float_list(choice.logprobs),
        "versions": versions_to_runs(choice.versions),
        "finish_reason": choice.finish_reason,
        "message": jsonable(choice.message),
        "source": choice.source.value,
    }


def call_to_row(call: CallRecord) -> dict[str, Any]:
    return {
        "id": call.id,
        "index": call.index,
        "endpoint": call.endpoint,
        "prompt_ids": call.prompt_ids.tolist(),
        "prompt_source": call.prompt_source.value,
        "choices": [choice_to_row(c) for c in call.choices],
        "request": jsonable(scrub(call.request)),
        "usage": jsonable(call.usage),
        "latency_s": call.latency_s,
        "started_at": call.started_at,
        "reward": call.reward,
        "parent": call.parent,
        "notes": list(call.notes),
    }


def episode_to_row(episode: Episode) -> dict[str, Any]:
    """A JSON-ready dict holding everything in `episode` (minus credentials)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "id": episode.id,
        "task_id": episode.task_id,
        "sample": episode.sample,
        "task": jsonable(episode.task),
        "status": episode.status.value,
        "error": episode.error,
        "reward": episode.reward,
        "discounted": episode.discounted,
        "metadata": jsonable(episode.metadata),
        "calls": [call_to_row(c) for c in episode.calls],
    }


def _float_or_none(v: Any) -> float | None:
    return None if v is None else float(v)


def choice_from_row(row: dict[str, Any]) -> Choice:
    lp = row.get("logprobs")
    return Choice(
        index=row["index"],
        ids=np.asarray(row["ids"], dtype=np.int32),
        logprobs=None if lp is None else np.asarray(lp, dtype=np.float32),
        versions=runs_to_versions(row["versions"]),
        finish_reason=row.get("finish_reason"),
        message=row.get("message") or {},
        source=TokenSource(row["source"]),
    )


def call_from_row(row: dict[str, Any]) -> CallRecord:
    return CallRecord(
        id=row["id"],
        index=row["index"],
        endpoint=row["endpoint"],
        prompt_ids=np.asarray(row["prompt_ids"], dtype=np.int32),
        prompt_source=TokenSource(row["prompt_source"]),
        choices=[choice_from_row(c) for c in row["choices"]],
        request=row.get("request") or {},
        usage=row.get("usage"),
        latency_s=float(row.get("latency_s", 0.0)),
        started_at=float(row.get("started_at", 0.0)),
        reward=_float_or_none(row.get("reward")),
        parent=row.get("parent"),
        notes=list(row.get("notes") or []),
    )


def episode_from_row(row: dict[str, Any], where: str = "record") -> Episode:
    check_schema_version(row.get("schema_version"), where)
    return Episode(
        id=row["id"],
        task_id=row["task_id"],
        sample=row["sample"],
        task=row.get("task"),
        status=EpisodeStatus(row["status"]),
        error=row.get("error"),
        reward=_float_or_none(row.get("reward")),
        discounted=bool(row.get("discounted", False)),
        metadata=row.get("metadata") or {},
        calls=[call_from_row(c) for c in row["calls"]],
    )
