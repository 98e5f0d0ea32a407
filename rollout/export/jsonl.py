"""JSONL episode logs: one line per episode, written so a crash loses at most one line.

Each `JsonlWriter.write` emits a whole line with a single write and flushes
it, so a killed run leaves every earlier episode intact and at most a partial
last line. Readers skip (and warn about, naming the line) lines that do not
parse or are not UTF-8, instead of crashing; an appending writer first
terminates a partial last line so the next record starts cleanly.

A resumed collection can run an episode again (`output.retry_failed`): the
new line's `metadata["retry_of"]` names the episode id it replaces, and
readers keep only the latest attempt unless asked for every line.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

from rollout.episode import Episode
from rollout.errors import CorruptLineWarning, SchemaVersionError
from rollout.export.rows import dumps, episode_from_row, episode_to_row

RETRY_OF = "retry_of"
"""Metadata key of an episode that replaces an earlier one: the earlier episode's id."""


class JsonlWriter:
    """Appends episodes to a JSONL file, one flushed line each.

    Use as a context manager or call `close()`. `fsync=True` also survives a
    machine crash (not just a killed process), at the cost of one disk sync
    per episode.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, append: bool = True, fsync: bool = False
    ) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.count = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        needs_newline = append and _ends_without_newline(self.path)
        self._f: IO[str] | None = open(self.path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115
        if needs_newline:
            # Isolate a previous run's partial line so it cannot swallow ours.
            self._f.write("\n")
            self._f.flush()

    def write(self, episode: Episode) -> None:
        self.write_row(episode_to_row(episode))

    def write_row(self, row: dict[str, Any]) -> None:
        """Write a row made by `episode_to_row` (for callers that already built it)."""
        if self._f is None:
            raise ValueError(f"JsonlWriter for {self.path} is closed")
        self._f.write(dumps(row) + "\n")
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())
        self.count += 1

    def write_all(self, episodes: Iterable[Episode]) -> None:
        for ep in episodes:
            self.write(ep)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _ends_without_newline(path: Path) -> bool:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size == 0:
        return False
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def write_jsonl(
    episodes: Episode | Iterable[Episode], path: str | os.PathLike[str], append: bool = True
) -> int:
    """Write episodes as JSONL lines; returns how many were written."""
    eps = [episodes] if isinstance(episodes, Episode) else episodes
    with JsonlWriter(path, append=append) as w:
        w.write_all(eps)
        return w.count


def iter_lines(
    path: str | os.PathLike[str], *, errors: Literal["skip", "raise"] = "skip"
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(`path:line`, parsed row) for each line holding a JSON object.

    A line that is not UTF-8 or not valid JSON (a killed writer's last line,
    a damaged disk) is skipped with a `CorruptLineWarning` naming it, or
    raises `ValueError` with `errors="raise"`.
    """
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                if isinstance(e, UnicodeDecodeError):
                    why = f"not UTF-8: byte {raw[e.start]:#04x} at column {e.start + 1}"
                else:
                    why = e.msg
                if errors == "raise":
                    raise ValueError(f"{where}: corrupt JSONL line ({why})") from e
                what = "truncated last line" if not raw.endswith(b"\n") else "corrupt line"
                warnings.warn(f"{where}: skipped {what} ({why})", CorruptLineWarning, stacklevel=3)
                continue
            if not isinstance(row, dict):
                raise SchemaVersionError(
                    f"{where}: expected a JSON object, got {type(row).__name__}"
                )
            yield where, row


def replaced_ids(path: str | os.PathLike[str]) -> set[str]:
    """Ids of episodes that a later line of the file replaces (its `metadata["retry_of"]`)."""
    needle = f'"{RETRY_OF}"'.encode()
    out: set[str] = set()
    with open(path, "rb") as f:
        for raw in f:
            if needle not in raw:  # cheap: most files hold no retries
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue  # the main pass warns about it
            meta = row.get("metadata") if isinstance(row, dict) else None
            if isinstance(meta, dict) and isinstance(meta.get(RETRY_OF), str):
                out.add(meta[RETRY_OF])
    return out


def iter_jsonl(
    path: str | os.PathLike[str],
    *,
    errors: Literal["skip", "raise"] = "skip",
    latest_only: bool = True,
) -> Iterator[Episode]:
    """Stream episodes from a JSONL file.

    Damaged lines are skipped with a `CorruptLineWarning` naming the line,
    or raise with `errors="raise"` (see `iter_lines`). A record from a newer
    schema always raises `SchemaVersionError`. With `latest_only` (the
    default), an episode that a later line replaced (a resumed run with
    `retry_failed` ran it again) is left out, so each requested rollout
    appears once; `latest_only=False` gives every attempt.
    """
    replaced = replaced_ids(path) if latest_only else set()
    for where, row in iter_lines(path, errors=errors):
        if replaced and row.get("id") in replaced:
            continue
        try:
            episode = episode_from_row(row, where)
        except SchemaVersionError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: malformed episode record ({e!r})") from e
        yield episode


def read_jsonl(
    path: str | os.PathLike[str],
    *,
    errors: Literal["skip", "raise"] = "skip",
    latest_only: bool = True,
) -> list[Episode]:
    """All episodes in a JSONL file (see `iter_jsonl` for damage and retried episodes)."""
    return list(iter_jsonl(path, errors=errors, latest_only=latest_only))
