"""Record exact token-level rollouts from unchanged agents; export them for training.

The data path, one module each:
client wrapper (`wrap`) -> call record (`record`, `tokens`) -> episode
(`episode`, `recorder`) -> sample (`sample`) -> export (`export`);
`collection` runs many episodes in parallel (asyncio or Ray) and writes them out.
"""

from rollout.collection import (
    CollectConfig,
    Collector,
    CollectSummary,
    acollect,
    collect,
    load_config,
)
from rollout.episode import Episode, EpisodeStatus, RewardError
from rollout.record import CallRecord, Choice, TokenRecordError, TokenSource, Versions
from rollout.recorder import EpisodeScope, Recorder, UnscopedCallError
from rollout.sample import AssemblyResult, Drift, Sample, assemble
from rollout.tokens import TiktokenTokenizer, Tokenizer

__all__ = [
    "AssemblyResult",
    "CallRecord",
    "Choice",
    "CollectConfig",
    "CollectSummary",
    "Collector",
    "Drift",
    "Episode",
    "EpisodeScope",
    "EpisodeStatus",
    "Recorder",
    "RewardError",
    "Sample",
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
]
