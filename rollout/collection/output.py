"""Where finished episodes go: a JSONL journal, optional Parquet parts, or memory.

The JSONL file is the journal that makes runs resumable: one flushed line per
finished episode, so a killed run loses only episodes still in flight, and
`done_uids` tells a resumed run what to skip. Parquet goes to a directory of
part files, each complete when written, so it is safe to kill too.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rollout.collection.config import OutputSpec
from rollout.episode import Episode
from rollout.export import JsonlWriter, write_parquet

logger = logging.getLogger(__name__)


def done_uids(path: str | Path, *, retry_failed: bool = False) -> set[str]:
    """`task_id:sample` of every complete episode line in a JSONL journal.

    With `retry_failed`, lines of failed episodes (error, timeout) do not count.
    """
    p = Path(path)
    if not p.exists():
        return set()
    out: set[str] = set()
    with p.open(encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # a killed writer's partial last line: that episode reruns
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if retry_failed and isinstance(row, dict) and row.get("status") in ("error", "timeout"):
                continue
            if isinstance(row, dict) and "task_id" in row:
                out.add(f"{row['task_id']}:{row.get('sample', 0)}")
    return out


def _next_part(directory: Path) -> int:
    parts = sorted(directory.glob("part-*.parquet"))
    return int(parts[-1].stem.split("-")[1]) + 1 if parts else 0


class EpisodeSink:
    """Writes each finished episode as it arrives; keeps them in memory if no path."""

    def __init__(self, spec: OutputSpec) -> None:
        self.spec = spec
        self.kept: list[Episode] = []
        resume = spec.resume
        self.journal: JsonlWriter | None = None
        if spec.path is not None:
            if not resume and Path(spec.path).exists():
                logger.info("output.resume is off: overwriting %s", spec.path)
            self.journal = JsonlWriter(spec.path, append=resume)
        self.parquet_dir = Path(spec.parquet) if spec.parquet else None
        self._pending: list[Episode] = []
        if self.parquet_dir is not None:
            self.parquet_dir.mkdir(parents=True, exist_ok=True)
            if not resume:
                for old in self.parquet_dir.glob("part-*.parquet"):
                    old.unlink()
            self._part = _next_part(self.parquet_dir)

    def write(self, episode: Episode) -> None:
        if self.journal is not None:
            self.journal.write(episode)
        else:
            self.kept.append(episode)
        if self.parquet_dir is not None:
            self._pending.append(episode)
            if len(self._pending) >= self.spec.parquet_batch:
                self._flush_parquet()

    def _flush_parquet(self) -> None:
        if self.parquet_dir is None or not self._pending:
            return
        final = self.parquet_dir / f"part-{self._part:05d}.parquet"
        tmp = final.with_suffix(".tmp")
        write_parquet(self._pending, tmp)
        tmp.replace(final)  # atomic: a part is either whole or absent
        self._part += 1
        self._pending = []

    def close(self) -> None:
        self._flush_parquet()
        if self.journal is not None:
            self.journal.close()

    def __enter__(self) -> EpisodeSink:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
