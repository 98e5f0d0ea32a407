"""Typed errors: every error `rollout` raises is a `RolloutError`.

Each class also derives from the builtin a caller would naturally catch
(`ValueError` for bad input, `RuntimeError` for misuse at run time), so
`except ValueError` keeps working. Messages name the problem and the fix.
"""

from __future__ import annotations

import asyncio


class RolloutError(Exception):
    """Base class for every error this package raises."""


class ConfigError(RolloutError, ValueError):
    """A config file, override or argument is invalid; the message names the key."""


class TokenRecordError(RolloutError, ValueError):
    """A reply's token data is inconsistent (e.g. logprobs and ids differ in length)."""


class UnscopedCallError(RolloutError, RuntimeError):
    """A call was made outside any episode while the recorder refuses those."""


class UnrecordedCallError(RolloutError, RuntimeError):
    """A wrapped client was asked for a call the recorder cannot record (e.g. a background
    Responses call, `responses.compact`, the legacy Completions API); refused before it is sent,
    so no call the agent made is missing from its episode without a trace."""


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


_TIMEOUT_NAMES = frozenset({"APITimeoutError", "TimeoutException"})  # openai's, httpx's


def exception_chain(exc: BaseException | None) -> list[BaseException]:
    """`exc` and its causes, outermost first (at most 10)."""
    out: list[BaseException] = []
    while exc is not None and len(out) < 10:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _says_timeout(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError) or any(c.__name__ in _TIMEOUT_NAMES for c in type(exc).__mro__)


def explain_failure(exc: BaseException) -> tuple[bool, str]:
    """(timed out, reason) for a failed call or episode, as it will be recorded.

    A dropped connection is not a timeout, although the openai SDK's aiohttp
    transport reports one as such (openai 2.x `_vendor/httpx_aiohttp/transport.py`
    maps every aiohttp.ClientConnectionError, ServerDisconnectedError included,
    to httpx.ConnectTimeout, hence APITimeoutError): the root of the cause chain
    says what really happened (not counting the CancelledError by which asyncio
    implements a timeout).
    """
    chain = [e for e in exception_chain(exc) if not isinstance(e, asyncio.CancelledError)]
    text = f"{type(exc).__name__}: {exc}"
    if not any(_says_timeout(e) for e in chain):
        return False, text
    root = chain[-1]
    if _says_timeout(root):
        return True, text
    return False, f"connection lost: {type(root).__name__}: {root}"
