"""Training samples as a Hugging Face `datasets.Dataset` (`rollout export --to hf`).

One row per training sample, as `rollout.sample.assemble` builds them in
concat mode (one row per exact episode; more where drift or n > 1 split
it; failed episodes left out), with the ids, mask, logprobs and versions as
typed lists. `datasets` is an optional extra (`rollout-compat[datasets]`),
imported only here. The episode files themselves load too:
`load_dataset("parquet", data_files="runs/parquet/*.parquet")`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rollout.episode import Episode
from rollout.sample import assemble


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(
            f"exporting to Hugging Face datasets needs the datasets extra: pip install 'rollout-compat[datasets]' ({exc})"
        ) from None
    return datasets


def to_hf(episodes: Iterable[Episode]) -> Any:
    """A `datasets.Dataset` of the episodes' training samples."""
    ds = _datasets()
    samples = assemble(list(episodes), mode="concat").samples
    features = ds.Features({
        "uid": ds.Value("string"),
        "episode_id": ds.Value("string"),
        "task_id": ds.Value("string"),
        "sample": ds.Value("int64"),
        "tokens": ds.Sequence(ds.Value("int32")),
        "loss_mask": ds.Sequence(ds.Value("bool")),
        "logprobs": ds.Sequence(ds.Value("float32")),
        "versions": ds.Sequence(ds.Value("int32")),
        "prompt_len": ds.Value("int64"),
        "reward": ds.Value("float64"),
        "exact": ds.Value("bool"),
        "has_logprobs": ds.Value("bool"),
    })  # fmt: skip
    columns: dict[str, list[Any]] = {
        "uid": [s.uid for s in samples],
        "episode_id": [s.episode_id for s in samples],
        "task_id": [s.task_id for s in samples],
        "sample": [s.sample for s in samples],
        "tokens": [s.tokens.tolist() for s in samples],
        "loss_mask": [s.loss_mask.tolist() for s in samples],
        "logprobs": [s.logprobs.tolist() for s in samples],
        "versions": [s.versions.tolist() for s in samples],
        "prompt_len": [s.prompt_len for s in samples],
        "reward": [s.reward for s in samples],
        "exact": [s.exact for s in samples],
        "has_logprobs": [s.has_logprobs for s in samples],
    }
    return ds.Dataset.from_dict(columns, features=features)


def write_hf(episodes: Iterable[Episode], path: str | Path) -> int:
    """Save the training samples with `save_to_disk`; `datasets.load_from_disk(path)` reads them. Returns the row count."""
    dataset = to_hf(episodes)
    dataset.save_to_disk(str(path))
    return len(dataset)
