"""Reading a reply's JSON while the openai SDK parses it: the recorder's fast path.

The SDK turns a reply body into pydantic objects, one per logprob entry, and
hands the agent the result. Reading ids and logprobs back out of those objects
afterwards touches hundreds of them once they have left the CPU cache: on a
256-token reply, copying the three token arrays that way costs about 5 % of
the SDK's own call (`bench_record`'s floor). Read from the parsed JSON the
moment it is parsed, the same copies take about half as long.

Every body a genuine openai client parses passes through one method,
`_process_response_data(data=..., cast_to=..., response=...)` (openai-python
`_response.py` `APIResponse._parse`, `_legacy_response.py` and `_streaming.py`;
checked in the v1.68.0, v3.60.0 and v3.63.0 wheels). A recording client (the copy `wrap`
makes, never the caller's own object) gets a pass-through version of it. While
a recorded call is in flight, a `ContextVar` names it, so concurrent calls
(threads, asyncio tasks) each see only their own reply. The hook gives the
call the dict, before the SDK builds a single object from it. A
`ChatCompletion` is then built by pydantic's validator, which makes the object
the SDK would construct in a fraction of its time (`rollout.reply_object`);
any other type, and any reply the validator refuses, goes on to the SDK's own
code exactly as before. So the recording client's call costs less than the
bare client's where the SDK's object building is the larger part.

A stream is parsed chunk by chunk as the agent reads it, after `create` has
returned: while the SDK reads each chunk of a recorded stream, the stream
(`rollout.stream_tap`) names itself as the reader of that one body, folds the
chunk's JSON into its reply, and the `ChatCompletionChunk` is validated the
same way. A streamed call then costs less than the bare client's too.

Where the hook does not fire (a duck-typed client, a raw view, a tokenizer
that waits on the network, an SDK that renamed the method), the record is read
from the SDK's objects as before: the tap is an optimisation, never the only
path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any

from rollout.reply_object import sdk_object

Reader = Callable[[dict[str, Any]], None]
"""Takes one parsed chat-completion body: the call in flight reads its record from it."""

_reader: ContextVar[Reader | None] = ContextVar("rollout_reply_reader", default=None)

_HOOK = "_process_response_data"


def install(client: Any) -> bool:
    """Give `client` (a recording copy) the pass-through hook; False where it has no such method."""
    module = type(client).__module__
    if module != "openai" and not module.startswith("openai."):  # the SDK's own classes only
        return False
    original = getattr(client, _HOOK, None)
    if original is None or getattr(original, "rollout_tap", False):
        return False

    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    validated = (ChatCompletion, ChatCompletionChunk)  # built in C; other types go to the SDK's code

    def process_response_data(*args: Any, **kwargs: Any) -> Any:
        reader = _reader.get()
        if reader is not None:
            data = kwargs.get("data", args[0] if args else None)
            if type(data) is dict and type(data.get("choices")) is list:
                _reader.set(None)  # one body per call: anything else parsed in this context is not its reply
                reader(data)
                cast_to = kwargs.get("cast_to", args[1] if len(args) > 1 else None)
                if cast_to in validated and getattr(client, "_strict_response_validation", True) is False:
                    return sdk_object(cast_to, data, strict=True)  # the SDK's object, built in C
        return original(*args, **kwargs)

    process_response_data.rollout_tap = True  # type: ignore[attr-defined]
    client.__dict__[_HOOK] = process_response_data
    return True


def tapped(client: Any) -> bool:
    """Whether `client` carries the hook (its replies can be read as they are parsed)."""
    return getattr(client.__dict__.get(_HOOK) if hasattr(client, "__dict__") else None, "rollout_tap", False)


def read_by(reader: Reader | None) -> Token[Reader | None]:
    """From here on, the next body the hook sees goes to `reader`; undo with `reset`. The
    bare twin of `reading`, for the per-chunk path of a stream."""
    return _reader.set(reader)


def reset(token: Token[Reader | None]) -> None:
    _reader.reset(token)


@contextmanager
def reading(reader: Reader | None) -> Iterator[None]:
    """Inside, a reply body the hook sees goes to `reader` (None: to nobody)."""
    token = _reader.set(reader)
    try:
        yield
    finally:
        _reader.reset(token)
