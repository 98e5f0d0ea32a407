"""Typed errors: every error `rollout` raises is a `RolloutError`.

Each class also derives from the builtin a caller would naturally catch
(`ValueError` for bad input, `RuntimeError` for misuse at run time), so
`except ValueError` keeps working. Messages name the problem and the fix.
"""

from __future__ import annotations


class RolloutError(Exception):
    """Base class for every error this package raises."""


class ConfigError(RolloutError, ValueError):
    """A config file, override or argument is invalid; the message names the key."""


class TokenRecordError(RolloutError, ValueError):
    """A reply's token data is inconsistent (e.g. logprobs and ids differ in length)."""


class UnscopedCallError(RolloutError, RuntimeError):
    """A call was made outside any episode while the recorder refuses those."""


class RewardError(RolloutError, ValueError):
    """A reward is not a finite number, or would be counted twice."""


class SchemaVersionError(RolloutError, ValueError):
    """Data was written with a schema this library version does not understand."""


class SerializationError(RolloutError, ValueError):
    """A record holds a value that cannot be written (a tuple key, a cycle); names where."""


class TruncationError(RolloutError, ValueError):
    """A sample does not fit max_prompt_len / max_response_len and truncate=False."""


class MissingLogprobsError(RolloutError, ValueError):
    """Some samples have no behaviour logprobs (the server sent none)."""


class OffPolicyError(RolloutError):
    """Recorded logprobs or versions do not match the policy that was pushed."""


class OutputLockedError(RolloutError, RuntimeError):
    """Another collector is writing to the same output; two writers would duplicate episodes."""


class NoTrainableDataError(RolloutError):
    """A run finished without a single trainable (sampled, exact) token."""


class TemplateError(RolloutError, ValueError):
    """Messages that the embedded chat template cannot render (HTTP 400 there)."""


class CorruptLineWarning(UserWarning):
    """A file line could not be read (e.g. the last line of a killed run) and was skipped."""
