"""Record exact token-level rollouts from unchanged agents; export them for training.

The data path, one module each:
client wrapper (`wrap`) -> call record (`call_record`, `reply_ids`) -> episode
(`episode`, `recorder`) -> sample (`sample`) -> export (`export`).
`collection` runs many episodes in parallel (asyncio or Ray) and writes them
out; it is imported on first use, so `from rollout import Recorder` stays light.
"""

from __future__ import annotations

import typing as _typing

from rollout.call_record import CallRecord, ChoiceRecord, TokenSource, Versions
from rollout.episode import Episode, EpisodeStatus
from rollout.errors import (
    ConfigError,
    NoTrainableDataError,
    OutputLockedError,
    RewardError,
    RolloutError,
    TokenRecordError,
    UnscopedCallError,
)
from rollout.recorder import EpisodeScope, Recorder
from rollout.redact import register_secret
from rollout.sample import AssemblyResult, Drift, Sample, assemble
from rollout.tokenizers import (
    HfTokenizer,
    PerServer,
    ServerTokenizer,
    TiktokenTokenizer,
    Tokenizer,
    load_tokenizer,
)

if _typing.TYPE_CHECKING:
    from rollout.collection import (
        CollectConfig,
        Collector,
        CollectSummary,
        acollect,
        collect,
        load_config,
    )

_LAZY = frozenset({"CollectConfig", "CollectSummary", "Collector", "acollect", "collect", "load_config"})


def __getattr__(name: str) -> _typing.Any:
    """The collection stack (configs, executors, aiohttp, YAML) loads on first use."""
    if name in _LAZY:
        import rollout.collection

        return getattr(rollout.collection, name)
    raise AttributeError(f"module 'rollout' has no attribute {name!r}")


__all__ = [
    "AssemblyResult",
    "CallRecord",
    "ChoiceRecord",
    "CollectConfig",
    "CollectSummary",
    "Collector",
    "ConfigError",
    "Drift",
    "Episode",
    "EpisodeScope",
    "EpisodeStatus",
    "HfTokenizer",
    "NoTrainableDataError",
    "OutputLockedError",
    "PerServer",
    "Recorder",
    "RewardError",
    "RolloutError",
    "Sample",
    "ServerTokenizer",
    "TiktokenTokenizer",
    "TokenRecordError",
    "TokenSource",
    "Tokenizer",
    "UnscopedCallError",
    "Versions",
    "acollect",
    "assemble",
    "collect",
    "load_config",
    "load_tokenizer",
    "register_secret",
]
