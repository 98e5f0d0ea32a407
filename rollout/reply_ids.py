"""Finding the exact token ids in a reply, whichever server or client sent it.

`extract_call` turns one chat-completion reply (an SDK object, a dict, or a
stream folded into one by `StreamAccumulator`) into prompt ids and per-choice
`ChoiceRecord`s. Sources are tried in order of trust (the wire formats: docs/wire.md):

1. vLLM `return_token_ids`: top-level `prompt_token_ids`, `choices[i].token_ids`;
2. SGLang: `prompt_token_ids` and `token_ids` on each choice;
3. logprob tokens spelled `token_id:N` (completion only);
4. llama.cpp: the integer `id` of each logprob entry, taken only when the
   entries are as many as the sampled tokens the usage counts (its logprobs
   leave out a stop string's tokens and those of a character split over
   tokens); its prompt ids come from the server's own `/apply-template` +
   `/tokenize` on the same request (`tokenizer="server"`), checked against
   the usage's prompt count;
5. an ArealOpenAI-style client's `get_interaction(id)` record;
6. a tokenizer (inexact, and flagged so; see `rollout.tokenizers`).

A server that names its tokens in logprobs but sends no ids keeps its
logprobs and count on the choice (`server_logprobs`, `server_tokens`); a
tokenizer's ids get them only when `rollout.tokenizers.pair` matched them
to the server's tokens one for one.

Anything inconsistent (a logprob count that differs from the id count, ids
that differ from what the usage says) is never dropped silently: the record
gets a note, or `strict` raises `TokenRecordError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import Any

import numpy as np

from rollout.call_record import (
    NO_VERSION,
    ChoiceRecord,
    TokenRecordError,
    TokenSource,
    Versions,
    as_logprobs,
)
from rollout.snapshot import plain
from rollout.tokenizers import Tokenizer, message_text, pair

VERSION_FIELDS = ("weight_version", "policy_version")


def get(obj: Any, key: str, default: Any = None) -> Any:
    """Attribute or key access, so SDK objects, their extras and plain dicts all work.

    Runs a dozen times per recorded call, so pydantic objects are read from
    their field and extra dicts directly, without a raising `getattr`.
    """
    if obj is None:
        return default
    if isinstance(obj, dict):
        value = obj.get(key)
    elif hasattr(obj, "__pydantic_extra__"):
        value = obj.__dict__.get(key)
        if value is None and obj.__pydantic_extra__:
            value = obj.__pydantic_extra__.get(key)
    else:
        value = getattr(obj, key, None)
    return default if value is None else value


def message_dict(message: Any) -> dict[str, Any]:
    """The reply message as a plain dict of its own (role, content, tool_calls when present)."""
    if message is None:
        return {}
    if hasattr(message, "model_dump"):
        data = message.model_dump(exclude_none=True, exclude={"parsed"})
    else:
        data = {k: plain(v) for k, v in dict(message).items() if v is not None and k != "parsed"}
    data.setdefault("role", "assistant")
    return data


def _logprob_entries(choice: Any) -> list[Any] | None:
    lp = get(choice, "logprobs")
    content = get(lp, "content") if lp is not None else None
    if content is None or isinstance(content, list):
        return content
    return list(content)


def _logprob_values(entries: list[Any]) -> np.ndarray:
    """float32 logprobs of the entries; one C-level pass (this runs per token).

    A missing, null or non-numeric entry reads as NaN, which the caller flags.
    """
    if not entries:
        return np.zeros(0, np.float32)
    pick = itemgetter("logprob") if isinstance(entries[0], dict) else attrgetter("logprob")
    try:
        return np.fromiter(map(pick, entries), dtype=np.float32, count=len(entries))
    except (KeyError, AttributeError, TypeError, ValueError):
        return np.array([_float_or_nan(get(e, "logprob")) for e in entries], dtype=np.float32)


def _float_or_nan(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _token_ids_from_logprobs(entries: Sequence[Any]) -> list[int] | None:
    ids = []
    for e in entries:
        tok = get(e, "token")
        if not isinstance(tok, str) or not tok.startswith("token_id:"):
            return None
        ids.append(int(tok[len("token_id:") :]))
    return ids


def _ids_from_entries(entries: Sequence[Any]) -> list[int] | None:
    """llama.cpp's logprob entries name their token's integer `id`; None unless every one does."""
    ids = []
    for e in entries:
        tid = get(e, "id")
        if not isinstance(tid, int) or isinstance(tid, bool):
            return None
        ids.append(tid)
    return ids


def _entry_ids_complete(raw_choices: list[Any], usage: Any) -> str | None:
    """Why the logprob entries' ids are not all the sampled tokens (None: they are).

    llama.cpp's logprobs drop a stop string's tokens and skip a token that ends
    inside a UTF-8 character (tools/server/server-context.cpp), while the
    usage counts every sampled token; only equal counts prove none is missing.
    """
    counted = get(usage, "completion_tokens")
    named = sum(len(_logprob_entries(c) or []) for c in raw_choices)
    if not isinstance(counted, int):
        return "the reply has no usage to check its logprob ids against (streams: include_usage)"
    if named != counted:
        return (f"its logprobs name {named} of the {counted} sampled tokens (a stop string's "
                "tokens, or a character split over tokens, have no entry)")  # fmt: skip
    return None


def _version(response: Any, default: int | None) -> int:
    for key in VERSION_FIELDS:
        v = get(response, key)
        if isinstance(v, int):
            return v
    return NO_VERSION if default is None else default


def _interaction_tokens(client: Any, completion_id: str | None) -> Any:
    """AReaL: `client.get_interaction(id).model_response` (or the interaction itself)."""
    getter = getattr(client, "get_interaction", None)
    if getter is None or not completion_id:
        return None
    try:
        interaction = getter(completion_id)
    except Exception:
        return None
    if interaction is None:
        return None
    resp = get(interaction, "model_response", interaction)
    return resp if get(resp, "output_tokens") is not None else None


def _check(n_ids: int, what: str, n: int, reply: _Reply, index: int) -> bool:
    """Whether `n` per-token values fit `n_ids` ids (a note, or strict's error, when not)."""
    if n == n_ids:
        return True
    reply.note(f"choice {index}: {n} {what} for {n_ids} token ids")
    return False


@dataclass(slots=True)
class _Unpaired:
    """A choice that came without ids: what a tokenizer (if any) made of it, and what is kept."""

    ids: list[int]
    source: TokenSource
    logprobs: np.ndarray | None  # paired with `ids` (only when they matched the server's tokens)
    server_logprobs: np.ndarray | None = None
    server_tokens: int | None = None
    mismatch: str | None = None

    def kept(self) -> dict[str, Any]:
        return {"server_logprobs": self.server_logprobs, "server_tokens": self.server_tokens,
                "mismatch": self.mismatch}  # fmt: skip


def _pieces(entries: list[Any]) -> list[bytes | None]:
    """Each logprob entry's token as bytes (its `bytes` field, else its text); None if unknown."""
    out: list[bytes | None] = []
    for e in entries:
        raw = get(e, "bytes")
        piece: bytes | None = None
        if isinstance(raw, list):
            try:
                piece = bytes(raw)
            except (TypeError, ValueError):
                piece = None
        else:
            tok = get(e, "token")
            if isinstance(tok, str) and "\ufffd" not in tok:  # U+FFFD: part of a character, bytes lost
                piece = tok.encode("utf-8")
        out.append(piece)
    return out


def _without_ids(
    usage_count: Any,
    entries: list[Any] | None,
    logprobs: np.ndarray | None,
    message: dict[str, Any],
    tokenizer: Tokenizer | None,
    notes: list[str],
    index: int,
) -> _Unpaired:
    """Ids, source and logprobs for a choice without ids; the server's logprobs are never dropped."""
    count = len(entries) if entries else (usage_count if isinstance(usage_count, int) else None)
    kept = f"its {count} logprobs are kept unpaired" if logprobs is not None else "no logprobs to keep"
    if tokenizer is None:
        notes.append(f"choice {index}: reply has no token ids and no tokenizer was given; {kept}")
        return _Unpaired([], TokenSource.NONE, None, logprobs, count)
    text = message_text(message.get("content"))
    try:
        paired = pair(tokenizer, None if not entries else _pieces(entries), text)
    except Exception as exc:  # a tokenizer that fails (server down) costs the ids, not the call
        why = f"tokenizer failed: {type(exc).__name__}: {exc}"
        notes.append(f"choice {index}: {why}; {kept}")
        return _Unpaired([], TokenSource.NONE, None, logprobs, count, why)
    if paired.matched:
        notes.append(f"choice {index}: completion ids from the tokenizer, each checked against "
                     "the server's token (inexact)")  # fmt: skip
        return _Unpaired(paired.ids, TokenSource.TOKENIZER_MATCHED, logprobs)
    notes.append(f"choice {index}: completion ids re-tokenized from text (inexact) and not paired "
                 f"with the server's tokens: {paired.why}; {kept}")  # fmt: skip
    return _Unpaired(paired.ids, TokenSource.TOKENIZER, None, logprobs, count, paired.why)


@dataclass(slots=True)
class _Found:
    """What one source says about a choice: its ids, where they came from, what goes with them."""

    ids: Any
    source: TokenSource
    logprobs: np.ndarray | None
    versions: list[int] | None = None
    prompt: Any = None  # prompt ids the same source carries (SGLang per choice, AReaL)
    kept: dict[str, Any] | None = None  # what an id-less choice keeps of the server's logprobs


@dataclass(slots=True)
class _Reply:
    """One reply's per-call facts, read once and shared by every choice's sources."""

    response: Any
    client: Any
    tokenizer: Tokenizer | None
    notes: list[str]
    strict: bool
    lone_count: Any  # usage's sampled-token count when there is one choice
    entry_ids_missing: str | None  # llama.cpp: why its logprob ids are not all the tokens
    interaction: Any = None
    looked_up: bool = False

    def note(self, msg: str) -> None:
        if self.strict:
            raise TokenRecordError(msg)
        self.notes.append(msg)


def _from_choice(raw: Any, entries: list[Any] | None, logprobs: np.ndarray | None, reply: _Reply, index: int
                 ) -> _Found | None:  # fmt: skip
    """1-2. vLLM's `token_ids` on the choice; SGLang's also carries the choice's prompt ids."""
    ids = get(raw, "token_ids")
    if ids is None:
        return None
    prompt = get(raw, "prompt_token_ids")
    return _Found(ids, TokenSource.VLLM if prompt is None else TokenSource.SGLANG, logprobs, prompt=prompt)


def _from_logprob_tokens(raw: Any, entries: list[Any] | None, logprobs: np.ndarray | None, reply: _Reply,
                         index: int) -> _Found | None:  # fmt: skip
    """3. Logprob tokens spelled `token_id:N`."""
    ids = _token_ids_from_logprobs(entries) if entries else None
    return None if not ids else _Found(ids, TokenSource.LOGPROB_TOKENS, logprobs)


def _from_logprob_ids(raw: Any, entries: list[Any] | None, logprobs: np.ndarray | None, reply: _Reply,
                      index: int) -> _Found | None:  # fmt: skip
    """4. llama.cpp's integer ids on the logprob entries, when they are all the sampled tokens."""
    if not entries or (ids := _ids_from_entries(entries)) is None:
        return None
    if reply.entry_ids_missing is not None:
        reply.note(f"choice {index}: logprob ids not taken as exact: {reply.entry_ids_missing}")
        return None
    return _Found(ids, TokenSource.LOGPROB_IDS, logprobs)


def _from_interaction(raw: Any, entries: list[Any] | None, logprobs: np.ndarray | None, reply: _Reply,
                      index: int) -> _Found | None:  # fmt: skip
    """5. An ArealOpenAI-style client's own record of the call (its first choice)."""
    if not reply.looked_up:
        reply.interaction, reply.looked_up = _interaction_tokens(reply.client, get(reply.response, "id")), True
    areal = reply.interaction
    if areal is None or index != 0:
        return None
    if logprobs is None and get(areal, "output_logprobs") is not None:
        logprobs = _checked_logprobs(as_logprobs(get(areal, "output_logprobs")), reply, index)
    versions = get(areal, "output_versions")
    return _Found(list(get(areal, "output_tokens")), TokenSource.AREAL, logprobs,
                  versions=None if versions is None else list(versions),
                  prompt=None if get(areal, "input_tokens") is None else list(get(areal, "input_tokens")))  # fmt: skip


def _from_tokenizer(message: dict[str, Any], entries: list[Any] | None, logprobs: np.ndarray | None,
                    reply: _Reply, index: int) -> _Found:  # fmt: skip
    """6. A tokenizer (inexact, flagged so), or no ids at all; the server's logprobs are kept."""
    unpaired = _without_ids(reply.lone_count, entries, logprobs, message, reply.tokenizer, reply.notes, index)
    return _Found(unpaired.ids, unpaired.source, unpaired.logprobs, kept=unpaired.kept())


SOURCES = (_from_choice, _from_logprob_tokens, _from_logprob_ids, _from_interaction)


def _checked_logprobs(logprobs: np.ndarray | None, reply: _Reply, index: int) -> np.ndarray | None:
    """The logprobs, or None (with a note) when some is null or NaN: never pass NaN off as a
    logprob. A JSON null reads as NaN in a float array; -inf stays, it is a real logprob."""
    if logprobs is None:
        return None
    total = logprobs.sum()  # NaN if any is NaN: one pass, and no mask unless one is
    if total != total:
        bad = int(np.isnan(logprobs).sum())
        if bad:
            reply.note(f"choice {index}: {bad} of {len(logprobs)} logprobs are null or NaN; logprobs dropped")
            return None
    return logprobs


def _choice_record(raw: Any, reply: _Reply, position: int, version: int) -> tuple[ChoiceRecord, Any]:
    """One choice's record from the first source that knows its ids, and the prompt ids that
    source carries (None when it carries none)."""
    index = int(get(raw, "index", position))
    entries = _logprob_entries(raw)
    logprobs = None if entries is None else _checked_logprobs(_logprob_values(entries), reply, index)
    message = message_dict(get(raw, "message"))
    found = next((f for source in SOURCES if (f := source(raw, entries, logprobs, reply, index)) is not None),
                 None) or _from_tokenizer(message, entries, logprobs, reply, index)  # fmt: skip
    ids = found.ids  # made an int32 array once, by ChoiceRecord
    logprobs = found.logprobs
    if logprobs is not None and not _check(len(ids), "logprobs", len(logprobs), reply, index):
        logprobs = None
    versions: Any = found.versions
    if versions is None or not _check(len(ids), "versions", len(versions), reply, index):
        versions = Versions.constant(version, len(ids))
    record = ChoiceRecord(
        index=index,
        ids=ids,
        logprobs=logprobs,
        versions=versions,
        finish_reason=get(raw, "finish_reason"),
        message=message,
        source=found.source,
        **(found.kept or {}),
    )
    return record, found.prompt


def extract_call(
    response: Any,
    *,
    messages: list[dict[str, Any]],
    tools: Any = None,
    client: Any = None,
    tokenizer: Tokenizer | None = None,
    policy_version: int | None = None,
    strict: bool = False,
    request: Mapping[str, Any] | None = None,
) -> tuple[Sequence[int] | np.ndarray, TokenSource, list[ChoiceRecord], list[str]]:
    """(prompt ids, prompt source, choices, notes) for one reply.

    Each choice's ids come from the first of `SOURCES` that finds them, else a
    tokenizer. `request` is the chat request as sent: a tokenizer that can say
    what the server's chat route made of it (`render_ids`) gives exact prompt ids.
    """
    raw_choices = list(get(response, "choices", []) or [])
    if not raw_choices:
        raise TokenRecordError("reply has no choices")
    usage = get(response, "usage")
    entry_ids_missing = None
    if all((e := _logprob_entries(c)) and _ids_from_entries(e) is not None for c in raw_choices):
        entry_ids_missing = _entry_ids_complete(raw_choices, usage)
    reply = _Reply(response, client, tokenizer, [], strict,
                   lone_count=get(usage, "completion_tokens") if len(raw_choices) == 1 else None,
                   entry_ids_missing=entry_ids_missing)  # fmt: skip
    version = _version(response, policy_version)
    prompt = get(response, "prompt_token_ids")
    prompt_source = TokenSource.VLLM if prompt is not None else TokenSource.NONE
    choices_out: list[ChoiceRecord] = []
    for position, raw in enumerate(raw_choices):
        record, choice_prompt = _choice_record(raw, reply, position, version)
        choices_out.append(record)
        if prompt is None and choice_prompt is not None:
            prompt, prompt_source = choice_prompt, record.source
    notes = reply.notes
    n_prompt = get(usage, "prompt_tokens")
    if prompt is None and request is not None and hasattr(tokenizer, "render_ids"):
        prompt, prompt_source = _rendered_prompt(tokenizer, request, n_prompt, notes)
    if prompt is None:
        if tokenizer is not None:
            try:
                prompt, prompt_source = tokenizer.prompt_ids(messages, tools), TokenSource.TOKENIZER
                notes.append("prompt ids re-tokenized from messages (inexact)")
            except Exception as exc:  # as for completions: the call is still recorded
                prompt = []
                notes.append(f"prompt ids: tokenizer failed: {type(exc).__name__}: {exc}")
        else:
            prompt = []
            notes.append("reply has no prompt token ids and no tokenizer was given")
    if isinstance(n_prompt, int) and prompt_source.exact and n_prompt != len(prompt):
        reply.note(f"usage says {n_prompt} prompt tokens, ids have {len(prompt)}")
    return prompt, prompt_source, choices_out, notes  # prompt: made an int32 array by CallRecord


def _rendered_prompt(
    tokenizer: Any, request: Mapping[str, Any], n_prompt: Any, notes: list[str]
) -> tuple[list[int] | None, TokenSource]:
    """The prompt ids the server's chat route made of `request` (llama.cpp), checked against
    the usage's prompt count; (None, NONE) when the tokenizer cannot say them exactly."""
    try:
        ids = tokenizer.render_ids(request)
    except Exception as exc:  # the server down: the call is still recorded, its prompt inexact
        notes.append(f"prompt ids: the server could not render the request: {type(exc).__name__}: {exc}")
        return [], TokenSource.NONE
    if ids is None:
        return None, TokenSource.NONE
    if not isinstance(n_prompt, int):
        notes.append("prompt ids rendered by the server, but the reply has no prompt count to check "
                     "them against (inexact)")  # fmt: skip
        return ids, TokenSource.TOKENIZER
    if n_prompt != len(ids):
        notes.append(f"prompt ids rendered by the server ({len(ids)}) differ from the {n_prompt} "
                     "prompt tokens the usage counts (inexact)")  # fmt: skip
        return ids, TokenSource.TOKENIZER
    return ids, TokenSource.SERVER_RENDER


_STREAM_HEADER = ("id", "model", "created", "prompt_token_ids", *VERSION_FIELDS)


MALFORMED = (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError)
"""What reading a reply of an unexpected shape raises (a choice index that is text, ids that
are one number): turned into `TokenRecordError` by `unreadable`."""


def unreadable(exc: Exception, what: str) -> TokenRecordError:
    """`exc`, raised reading `what`, as the typed error the call fails with (chained to it);
    a `TokenRecordError` is already that error, and is returned as it is."""
    if isinstance(exc, TokenRecordError):
        return exc
    err = TokenRecordError(f"{what} could not be read: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


def _entry_copy(entry: Any) -> dict[str, Any]:
    """What a record reads from a logprob entry (its token, logprob, bytes, id), in a copy."""
    out = {key: value for key in ("token", "logprob", "id") if (value := get(entry, key)) is not None}
    raw = get(entry, "bytes")
    if raw is not None:
        out["bytes"] = list(raw) if isinstance(raw, list) else raw
    return out


class StreamAccumulator:
    """Folds streamed chunks into the dict a non-streaming reply would have been.

    Recording a stream then uses the same `extract_call` as a plain reply.
    """

    def __init__(self) -> None:
        self.data: dict[str, Any] = {"choices": {}}

    def add(self, chunk: Any, *, owned: bool = False) -> None:
        """Fold in one chunk: an SDK chunk object, or its parsed JSON (`rollout.reply_tap`).

        The agent holds its chunks while the stream goes on, so what is kept is copied, unless
        `owned`: JSON the SDK parsed and built the agent's chunk from, shared with nothing.
        """
        d = self.data
        for key in _STREAM_HEADER:
            if key not in d:  # the first value wins: read only until it came
                value = get(chunk, key)
                if value is not None:
                    d[key] = list(value) if type(value) is list else value  # the agent holds the chunk
        usage = get(chunk, "usage")
        if usage is not None:
            d["usage"] = plain(usage)
        for raw in get(chunk, "choices", ()) or ():
            index = int(get(raw, "index", 0))
            c = d["choices"].get(index)
            if c is None:
                c = d["choices"][index] = {"index": index, "text": [], "tool_calls": {}, "token_ids": None,
                                           "logprobs": None}  # fmt: skip
            delta = get(raw, "delta")
            content = get(delta, "content")
            if content:
                c["text"].append(content)
            for tc in get(delta, "tool_calls", ()) or ():
                slot = c["tool_calls"].setdefault(
                    int(get(tc, "index", 0)), {"id": None, "type": "function", "name": "", "arguments": ""}
                )
                slot["id"] = slot["id"] or get(tc, "id")
                fn = get(tc, "function")
                slot["name"] += get(fn, "name", "") or ""
                slot["arguments"] += get(fn, "arguments", "") or ""
            ids = get(raw, "token_ids")
            if ids is not None:
                c["token_ids"] = c["token_ids"] or []
                c["token_ids"].extend(ids)  # in place: a long stream stays linear
            prompt = get(raw, "prompt_token_ids")
            if prompt is not None:
                c["prompt_token_ids"] = list(prompt)
            entries = _logprob_entries(raw)
            if entries is not None:
                c["logprobs"] = c["logprobs"] or []
                c["logprobs"].extend(entries if owned else map(_entry_copy, entries))
            finish = get(raw, "finish_reason")
            if finish is not None:
                c["finish_reason"] = finish

    @property
    def finished(self) -> bool:
        """Usage has arrived and every choice has its finish reason: nothing more to record."""
        choices = self.data["choices"]
        return "usage" in self.data and bool(choices) and all(
            c.get("finish_reason") is not None for c in choices.values()
        )

    def response(self) -> dict[str, Any]:
        out = {k: v for k, v in self.data.items() if k != "choices"}
        choices = []
        for index in sorted(self.data["choices"]):
            c = self.data["choices"][index]
            message: dict[str, Any] = {"role": "assistant", "content": "".join(c["text"]) or None}
            if c["tool_calls"]:
                message["tool_calls"] = [
                    {"id": t["id"], "type": "function", "function": {"name": t["name"], "arguments": t["arguments"]}}
                    for _, t in sorted(c["tool_calls"].items())
                ]
            choice: dict[str, Any] = {
                "index": index,
                "message": message,
                "finish_reason": c.get("finish_reason"),
                "logprobs": None if c["logprobs"] is None else {"content": c["logprobs"]},
            }
            if c["token_ids"] is not None:
                choice["token_ids"] = c["token_ids"]
            if "prompt_token_ids" in c:
                choice["prompt_token_ids"] = c["prompt_token_ids"]
            choices.append(choice)
        out["choices"] = choices
        return out


def responses_api_as_chat(response: Any) -> dict[str, Any]:
    """A Responses-API reply viewed as a one-choice chat completion, for recording."""
    text = get(response, "output_text")
    if text is None:
        parts = []
        for item in get(response, "output", []) or []:
            for c in get(item, "content", []) or []:
                if get(c, "text"):
                    parts.append(get(c, "text"))
        text = "".join(parts)
    usage = get(response, "usage")
    out: dict[str, Any] = {
        "id": get(response, "id"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }
    for key in VERSION_FIELDS:
        if get(response, key) is not None:
            out[key] = get(response, key)
    if usage is not None:
        out["usage"] = {"prompt_tokens": get(usage, "input_tokens"), "completion_tokens": get(usage, "output_tokens")}
    return out


def responses_input_as_messages(kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """The `input` / `instructions` of a Responses call as chat messages."""
    messages: list[dict[str, Any]] = []
    if kwargs.get("instructions"):
        messages.append({"role": "system", "content": kwargs["instructions"]})
    inp = kwargs.get("input")
    if isinstance(inp, str):
        messages.append({"role": "user", "content": inp})
    elif isinstance(inp, list):
        for item in inp:
            if isinstance(item, dict) and "role" in item:
                messages.append({"role": item["role"], "content": item.get("content")})
            else:
                messages.append({"role": "user", "content": json.dumps(item, default=str)})
    return messages
