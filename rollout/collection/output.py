"""Where finished episodes go: a JSONL journal, optional Parquet parts, or memory.

The JSONL file is the journal that makes runs resumable: one flushed line per
finished episode, so a killed run loses only episodes still in flight, and
`done_uids` tells a resumed run what to skip. Parquet goes to a directory of
part files, each written atomically (whole or absent).

The journal is the truth; the Parquet parts mirror it. A run killed between
a journal line and the next part leaves episodes only in the journal, so on
open (with resume) `EpisodeSink` reconciles: a part holding episodes the
journal does not (or holding one twice) is rewritten without them, and the
journal's episodes found in no part go to a new part. The parts then hold
each journaled episode exactly once, the same set `read_jsonl` returns.

With `retry_failed`, a resumed run runs the episodes whose latest line is an
error or timeout again; the new line's `metadata["retry_of"]` names the one
it replaces, readers keep only the latest (see `rollout.export.jsonl`), and
the replaced episode leaves the Parquet parts when the sink closes.

One writer at a time: the sink holds an exclusive `fcntl.flock` on a lock
file beside the journal (`<journal>.lock`, and `.lock` in the Parquet
directory) for as long as it is open; the kernel releases it when the
process dies, however it dies. A second collector gets `OutputLockedError`.
POSIX only (Linux, macOS); on a network file system the lock may not hold
across machines.
"""

from __future__ import annotations

import fcntl
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rollout.collection.config import OutputSpec
from rollout.episode import Episode, EpisodeStatus
from rollout.errors import OutputLockedError, SerializationError
from rollout.export import JsonlWriter, episode_from_row, episode_to_row, write_parquet
from rollout.export.jsonl import RETRY_OF, iter_lines
from rollout.export.parquet import episode_ids, keep_rows
from rollout.export.rows import unwritable_as_failed

logger = logging.getLogger(__name__)

RETRYABLE = frozenset({EpisodeStatus.ERROR.value, EpisodeStatus.TIMEOUT.value})
"""Statuses that `retry_failed` runs again."""


@dataclass
class JournalIndex:
    """What a journal holds, one entry per readable line (bad lines are warned about, skipped)."""

    latest: dict[str, tuple[str, str]] = field(default_factory=dict)  # uid -> (id, status), last line
    ids: list[str] = field(default_factory=list)  # episode ids in line order
    replaced: set[str] = field(default_factory=set)  # ids a later line's retry_of names

    @classmethod
    def scan(cls, path: str | Path) -> JournalIndex:
        index = cls()
        if not Path(path).exists():
            return index
        # A complete last line that lost only its newline still counts: the next
        # writer terminates it, and running it again would write the episode twice.
        for _, row in iter_lines(path):
            if "task_id" not in row or not isinstance(row.get("id"), str):
                continue
            uid = f"{row['task_id']}:{row.get('sample', 0)}"
            index.latest[uid] = (row["id"], str(row.get("status")))
            index.ids.append(row["id"])
            meta = row.get("metadata")
            if isinstance(meta, dict) and isinstance(meta.get(RETRY_OF), str):
                index.replaced.add(meta[RETRY_OF])
        return index

    def done(self, retry_failed: bool = False) -> set[str]:
        return {
            uid
            for uid, (_, status) in self.latest.items()
            if not (retry_failed and status in RETRYABLE)
        }

    def failed(self) -> set[str]:
        """`task_id:sample` of the episodes whose latest line ended in error or timeout."""
        return {uid for uid, (_, status) in self.latest.items() if status in RETRYABLE}

    def kept(self) -> set[str]:
        """Ids of the episodes a reader keeps (each attempt a later line did not replace)."""
        return set(self.ids) - self.replaced


def done_uids(path: str | Path, *, retry_failed: bool = False) -> set[str]:
    """`task_id:sample` of every episode in a JSONL journal that a resumed run skips.

    With `retry_failed`, episodes whose latest line ended in error or timeout
    are not counted, so they run again.
    """
    return JournalIndex.scan(path).done(retry_failed)


def _part_number(part: Path) -> int:
    return int(part.stem.split("-")[1])


def _parts(directory: Path) -> list[Path]:
    return sorted(directory.glob("part-*.parquet"), key=_part_number)


class _Lock:
    """An exclusive flock on `path`, held until `release()` or the process ends."""

    def __init__(self, path: Path, guards: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._f: IO[str] | None = open(path, "a+", encoding="utf-8")  # noqa: SIM115
        try:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._f.seek(0)
            holder = self._f.read().strip() or "unknown"
            self._f.close()
            self._f = None
            raise OutputLockedError(
                f"{guards} is being written by another collector (process {holder}, lock {path}); "
                "wait for it to finish, or give this run another output.path"
            ) from None
        self._f.truncate(0)
        self._f.write(str(os.getpid()))
        self._f.flush()

    def release(self) -> None:
        if self._f is not None:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_UN)
            self._f.close()
            self._f = None


class EpisodeSink:
    """Writes each finished episode as it arrives: to the journal and/or Parquet parts.

    `done` holds the uids a resumed run skips (see `done_uids`). Writing never
    aborts a run: an episode that cannot be serialized is written as failed,
    with the reason (see `rollout.export.rows.unwritable_as_failed`).
    """

    def __init__(self, spec: OutputSpec) -> None:
        self.spec = spec
        self.journal: JsonlWriter | None = None
        self.parquet_dir = Path(spec.parquet) if spec.parquet else None
        self._pending: list[Episode] = []
        self._retrying: dict[str, str] = {}  # uid -> id of the failed episode a rerun replaces
        self._replaced: set[str] = set()  # ids replaced by reruns written in this session
        self._locks: list[_Lock] = []
        self.done: set[str] = set()
        try:
            self._open(spec)
        except BaseException:
            self._release()
            raise

    def _open(self, spec: OutputSpec) -> None:
        journal = Path(spec.path) if spec.path is not None else None
        if journal is not None:
            self._locks.append(_Lock(journal.with_name(journal.name + ".lock"), journal))
        if self.parquet_dir is not None:
            self.parquet_dir.mkdir(parents=True, exist_ok=True)
            self._locks.append(_Lock(self.parquet_dir / ".lock", self.parquet_dir))
        index = JournalIndex.scan(journal) if journal is not None and spec.resume else JournalIndex()
        self.done = index.done(spec.retry_failed)
        if spec.retry_failed:
            self._retrying = {
                uid: ep_id for uid, (ep_id, status) in index.latest.items() if status in RETRYABLE
            }
        if journal is not None:
            if not spec.resume and journal.exists():
                logger.info("output.resume is off: overwriting %s", journal)
            self.journal = JsonlWriter(journal, append=spec.resume)
        if self.parquet_dir is not None:
            for leftover in self.parquet_dir.glob(".part-*.tmp"):  # a killed part writer's
                leftover.unlink()
            if not spec.resume:
                for old in _parts(self.parquet_dir):
                    old.unlink()
            elif journal is not None:
                self._reconcile(journal, index.kept())

    def _reconcile(self, journal: Path, wanted: set[str]) -> None:
        """Make the Parquet parts hold exactly the journal's episodes, each once."""
        assert self.parquet_dir is not None
        have: set[str] = set()
        for part in _parts(self.parquet_dir):
            try:
                ids = episode_ids(part)
            except Exception as e:  # unreadable (e.g. a machine crash before the data reached disk)
                aside = part.with_name(part.name + ".unreadable")
                warnings.warn(f"{part}: unreadable Parquet part moved to {aside} ({e})", stacklevel=3)
                part.replace(aside)
                continue
            keep = []
            for i in ids:  # not journaled (any more), or already in an earlier part: drop
                keep.append(i in wanted and i not in have)
                have.add(i)
            if not all(keep):
                keep_rows(part, keep)
        missing = wanted - have
        if missing:
            logger.info("writing %d journaled episodes missing from %s", len(missing), self.parquet_dir)
            for _, row in iter_lines(journal):
                if row.get("id") in missing:
                    missing.discard(row["id"])
                    self._add_to_parquet(episode_from_row(row))
            self._flush_parquet()

    def write(self, episode: Episode) -> None:
        replaces = self._retrying.pop(episode.uid, None)
        if replaces is not None:
            episode.metadata[RETRY_OF] = replaces
        if self.journal is not None or self.parquet_dir is not None:
            try:
                row = episode_to_row(episode)
            except SerializationError as e:
                logger.warning("episode %s could not be written as is: %s", episode.uid, e)
                episode = unwritable_as_failed(episode, e)
                if replaces is not None:
                    episode.metadata[RETRY_OF] = replaces
                row = episode_to_row(episode)
            if self.journal is not None:
                self.journal.write_row(row)
        if replaces is not None:
            self._replaced.add(replaces)
        if self.parquet_dir is not None:
            self._add_to_parquet(episode)

    def _add_to_parquet(self, episode: Episode) -> None:
        self._pending.append(episode)
        if len(self._pending) >= self.spec.parquet_batch:
            self._flush_parquet()

    def _flush_parquet(self) -> None:
        if self.parquet_dir is None or not self._pending:
            return
        parts = _parts(self.parquet_dir)
        number = _part_number(parts[-1]) + 1 if parts else 0
        write_parquet(self._pending, self.parquet_dir / f"part-{number:05d}.parquet")  # atomic
        self._pending = []

    def _drop_replaced(self) -> None:
        """Take the episodes that reruns replaced out of the Parquet parts."""
        if self.parquet_dir is None or not self._replaced:
            return
        for part in _parts(self.parquet_dir):
            keep = [i not in self._replaced for i in episode_ids(part)]
            if not all(keep):
                keep_rows(part, keep)

    def close(self) -> None:
        try:
            self._flush_parquet()
            self._drop_replaced()
            if self.journal is not None:
                self.journal.close()
        finally:
            self._release()

    def _release(self) -> None:
        for lock in self._locks:
            lock.release()
        self._locks = []

    def __enter__(self) -> EpisodeSink:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
