"""JSONL episode logs: one line per episode, written so a crash loses at most one line.

Each `JsonlWriter.write` emits a whole line with a single write and flushes
it, so a killed run leaves every earlier episode intact and at most a partial
last line. Readers skip (and warn about) lines that do not parse instead of
crashing; an appending writer first terminates a partial last line so the
next record starts cleanly.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from rollout.episode import Episode
from rollout.errors import CorruptLineWarning
from rollout.export.rows import SchemaVersionError, dumps, episode_from_row, episode_to_row


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
        if self._f is None:
            raise ValueError(f"JsonlWriter for {self.path} is closed")
        self._f.write(dumps(episode_to_row(episode)) + "\n")
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


def iter_jsonl(
    path: str | os.PathLike[str], *, errors: Literal["skip", "raise"] = "skip"
) -> Iterator[Episode]:
    """Stream episodes from a JSONL file.

    Lines that are not valid JSON (a killed writer's last line) are skipped
    with a `CorruptLineWarning`, or raise with `errors="raise"`. A record
    from a newer schema always raises `SchemaVersionError`.
    """
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                if errors == "raise":
                    raise ValueError(f"{where}: corrupt JSONL line ({e})") from e
                last = not line.endswith("\n")
                what = "truncated last line" if last else "corrupt line"
                warnings.warn(
                    f"{where}: skipped {what} ({e.msg})", CorruptLineWarning, stacklevel=2
                )
                continue
            if not isinstance(row, dict):
                raise SchemaVersionError(
                    f"{where}: expected a JSON object, got {type(row).__name__}"
                )
            try:
                episode = episode_from_row(row, where)
            except SchemaVersionError:
                raise
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{where}: malformed episode record ({e!r})") from e
            yield episode


def read_jsonl(
    path: str | os.PathLike[str], *, errors: Literal["skip", "raise"] = "skip"
) -> list[Episode]:
    """All episodes in a JSONL file (see `iter_jsonl` for how damage is handled)."""
    return list(iter_jsonl(path, errors=errors))
