"""What the collection run needs from an executor: jobs in, finished episodes out.

Task loading, resume, staleness, output and progress live in `run.py`, the
same for every executor; an executor only decides where episodes run
(`LocalExecutor`: asyncio tasks in this process; `RayExecutor`: Ray actors).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable
from typing import Protocol

from rollout.collection.runner import Job
from rollout.episode import Episode


class Executor(Protocol):
    def run(self, jobs: Iterable[Job]) -> AsyncGenerator[Episode, None]:
        """Each job's episode as it finishes, exactly once; closing the stream cancels the rest."""
        ...

    def set_policy_version(self, version: int) -> None:
        """Stamp the calls of later jobs with `version`."""
        ...

    def close(self) -> None:
        """Release workers and clusters this executor started."""
        ...
