"""`Tracker`: one run's experiment trackers behind one object that never fails the run.

    with Tracker(spec, kind="collect", config=cfg.model_dump()) as tracker:
        tracker.log({"collect/episodes_per_s": 41.0}, step=100)
        tracker.table("collect/samples", columns, rows, step=100)

Each tracker writes through its own library (`rollout.tracking.backends`).
A tracker that cannot start (not installed, no store, no key) or that
raises while writing is reported once with a `TrackerWarning` and dropped;
the others and the run go on. Losing a dashboard never loses an episode.
The run's config is redacted (`rollout.redact`) before any tracker sees it.

No mature fan-out fits the main job: verl's `verl.utils.tracking.Tracking`
needs verl and (for TensorBoard) torch, and lets a failed log raise;
accelerate's trackers and Lightning's loggers need torch. This one is a
dict of backends and a try/except.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from rollout.redact import redact, redact_text
from rollout.tracking.backends import BACKENDS, EXTRA, Backend
from rollout.tracking.config import TrackingSpec


class TrackerWarning(UserWarning):
    """A tracker could not start or write; the run goes on without it."""


def _warn(message: str) -> None:
    warnings.warn(message, TrackerWarning, stacklevel=3)


def _bounded(value: Any, depth: int = 0) -> Any:
    """A config small enough for every tracker: long lists (inline tasks) and texts summarized."""
    if isinstance(value, Mapping):
        return {str(k): _bounded(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if len(value) > 32 or depth > 6:
            return f"[{len(value)} items]"
        return [_bounded(v, depth + 1) for v in value]
    if isinstance(value, str) and len(value) > 2000:
        return value[:1999] + "…"
    return value


def _reason(exc: BaseException) -> str:
    return redact_text(f"{type(exc).__name__}: {exc}".strip())[:500]


class Tracker:
    """The trackers `spec` names, started now; `active` lists those that started."""

    def __init__(
        self,
        spec: TrackingSpec | None,
        *,
        kind: str = "run",
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.spec = spec = spec or TrackingSpec()
        self.run_name = redact_text(spec.run_name or f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}")
        self._backends: dict[str, Backend] = {}
        safe = _bounded(redact(dict(config or {})))
        for name in spec.trackers:
            try:
                self._backends[name] = BACKENDS[name](spec, self.run_name, safe)
            except ImportError as exc:
                _warn(
                    f"tracker {name} did not start: its library is not installed ({exc}); "
                    f"pip install 'rollout-compat[{EXTRA[name]}]'. The run goes on without it."
                )
            except (Exception, SystemExit) as exc:  # some SDKs exit on a failed login
                _warn(f"tracker {name} did not start ({_reason(exc)}); the run goes on without it.")

    @property
    def active(self) -> list[str]:
        return list(self._backends)

    def __bool__(self) -> bool:
        return bool(self._backends)

    def _each(self, what: str, call: Any) -> None:
        for name, backend in list(self._backends.items()):
            try:
                call(backend)
            except Exception as exc:
                del self._backends[name]
                _warn(
                    f"tracker {name} failed to {what} ({_reason(exc)}); no more logging to it this run."
                )
                with contextlib.suppress(Exception):  # already reported; dropped either way
                    backend.close()

    def log(self, metrics: Mapping[str, float | int | None], step: int) -> None:
        """Numbers only: None and non-finite values are left out."""
        clean = {
            k: float(v) for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        }  # fmt: skip
        if clean and self._backends:
            self._each("log metrics", lambda b: b.log(clean, step))

    def table(
        self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int
    ) -> None:
        """A small table (a wandb Table, an mlflow JSON artifact, TensorBoard text); strings redacted."""
        if not rows or not self._backends:
            return
        safe = [[redact_text(v) if isinstance(v, str) else v for v in row] for row in rows]
        self._each("log a table", lambda b: b.table(key, list(columns), safe, step))

    def close(self) -> None:
        for name, backend in list(self._backends.items()):
            try:
                backend.close()
            except Exception as exc:
                _warn(
                    f"tracker {name} failed to close ({_reason(exc)}); its last logs may be missing."
                )
        self._backends.clear()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
