"""Tokenizers for servers that send logprobs but no token ids (OpenAI, llama.cpp, hosted APIs).

Such a server still names every sampled token in `logprobs.content[j]`
(its text and bytes). A tokenizer turns those tokens back into ids, and
`pair` decides whether the ids may carry the server's logprobs:

- each server token is looked up as ONE vocabulary entry (`piece_ids`), so
  ids follow the server's own token boundaries, non-canonical ones included;
- the ids must then decode to exactly the server's text (`decode`).

If any token has no single id, or the decode differs, the tokenizer is not
the server's: the ids are the text re-encoded (inexact, never trained on)
and the logprobs stay unpaired, with the reason. A tokenizer can only be
checked, never proven to be the server's, so paired ids are flagged
`TokenSource.TOKENIZER_MATCHED` (inexact, trainable).

Three kinds, named in `backend.tokenizer` (see `load_tokenizer`):
"server" (the server's `/tokenize` and `/detokenize` routes, in vLLM's
layout or llama.cpp's), "tiktoken:<encoding>" and "hf:<name or path>" (the `hf` extra).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol, runtime_checkable

from rollout.errors import ConfigError


class Tokenizer(Protocol):
    """Fallback tokenization when a reply carries no ids. Results are inexact."""

    def prompt_ids(self, messages: list[dict[str, Any]], tools: Any = None) -> list[int]: ...

    def completion_ids(self, text: str) -> list[int]: ...


@runtime_checkable
class PairingTokenizer(Tokenizer, Protocol):
    """A tokenizer that can also be checked against a server's logprob tokens."""

    def piece_ids(self, pieces: Sequence[bytes]) -> list[int | None]:
        """For each piece, the id whose token is exactly those bytes, or None."""
        ...

    def decode(self, ids: list[int]) -> bytes:
        """The ids' text as bytes (what the server's tokens must join to)."""
        ...


def plain_rendering(messages: list[dict[str, Any]]) -> str:
    """`role: content` lines: a stand-in for a chat template (so prompt ids are inexact)."""
    return "".join(f"{m.get('role')}: {message_text(m.get('content'))}\n" for m in messages)


def message_text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))


class TiktokenTokenizer:
    """tiktoken over a plain role/content rendering. Not the server's template, so
    prompt ids are inexact; completion ids are trained on only after `pair` checks them."""

    def __init__(self, encoding: str = "cl100k_base") -> None:
        from compat import load_encoding

        self._enc = load_encoding(encoding)

    def prompt_ids(self, messages: list[dict[str, Any]], tools: Any = None) -> list[int]:
        return self.completion_ids(plain_rendering(messages))

    def completion_ids(self, text: str) -> list[int]:
        return list(self._enc.encode(text, disallowed_special=()))

    def piece_ids(self, pieces: Sequence[bytes]) -> list[int | None]:
        out: list[int | None] = []
        for piece in pieces:
            try:
                out.append(self._enc.encode_single_token(piece))
            except KeyError:
                out.append(None)
        return out

    def decode(self, ids: list[int]) -> bytes:
        return self._enc.decode_bytes(ids)


def load_hf_tokenizer(name: str, setting: str) -> Any:
    """A Hugging Face tokenizer by name or path; a `ConfigError` naming `setting` if it cannot load."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ConfigError(
            f"{setting} 'hf:{name}' needs Hugging Face transformers: "
            "pip install 'rollout-compat[hf]' (or transformers)"
        ) from None
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as exc:  # transformers raises OSError, ValueError, ... for a bad name
        raise ConfigError(f"cannot load Hugging Face tokenizer {name!r}: {exc}") from None


class HfTokenizer:
    """A Hugging Face tokenizer (`transformers`, the optional `hf` extra), by name or path.

    Prompts go through its chat template when it has one. A piece is looked
    up by encoding its text: pieces that are not whole UTF-8 characters
    (byte fallback) find no id, and the call is flagged instead of paired.
    """

    def __init__(self, name: str) -> None:
        self._tok = load_hf_tokenizer(name, "backend.tokenizer")
        self._pieces: dict[bytes, int | None] = {}

    def prompt_ids(self, messages: list[dict[str, Any]], tools: Any = None) -> list[int]:
        if getattr(self._tok, "chat_template", None):
            ids = self._tok.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True)
            if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding (4.x: the ids)
                ids = ids["input_ids"]
            return [int(t) for t in ids]
        return self.completion_ids(plain_rendering(messages))

    def completion_ids(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def piece_ids(self, pieces: Sequence[bytes]) -> list[int | None]:
        return [self._piece(p) for p in pieces]

    def _piece(self, piece: bytes) -> int | None:
        if piece not in self._pieces:
            found = None
            try:
                text = piece.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            if text:
                ids = self.completion_ids(text)
                if len(ids) == 1 and self._tok.decode(ids) == text:
                    found = int(ids[0])
            self._pieces[piece] = found
        return self._pieces[piece]

    def decode(self, ids: list[int]) -> bytes:
        return str(self._tok.decode(ids)).encode("utf-8")


class ServerTokenizer:
    """The server's own tokenize and detokenize routes, in its own dialect.

    `GET /v1/models` (`owned_by`) tells the dialect, once: llama.cpp
    (`"llamacpp"`) takes `{content, add_special, parse_special}` at
    `/tokenize` and answers `/detokenize` with `content`; every other server is
    spoken to in vLLM's layout (`prompt` or `messages`; the embedded server and
    SGLang too). llama.cpp answers vLLM's body with an empty list and HTTP 200,
    so an empty token list for non-empty text is an error on every server,
    never a recorded empty list.

    Prompts are rendered by the server's chat template, as the chat route
    rendered them; for llama.cpp by `/apply-template` on the same request, then
    `/tokenize` with special tokens added and parsed, which is the chat route's
    own code path (`render_ids`: exact). Pieces are looked up one request per
    distinct piece, then cached: replies draw on a small part of the vocabulary.
    Requests are blocking (the recorder builds records synchronously).
    """

    def __init__(self, http: Any, model: str) -> None:
        self.http = http  # a rollout.tokenmode.transport.JsonHttp on the server's root
        self.model = model
        self._pieces: dict[bytes, int | None] = {}
        self._kind: str | None = None

    @property
    def kind(self) -> str:
        """"llamacpp", or "vllm" for vLLM's layout (learnt from `GET /v1/models`, once)."""
        if self._kind is None:
            reply = self.http.request("GET", "/v1/models")
            data = reply.get("data") if isinstance(reply, dict) else None
            first = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
            self._kind = LLAMACPP if first.get("owned_by") == LLAMACPP else "vllm"
        return self._kind

    def _tokens(self, body: dict[str, Any]) -> list[int]:
        """vLLM's `/tokenize` (`prompt` or `messages`)."""
        reply = self.http.post("/tokenize", {"model": self.model, "add_special_tokens": False, **body})
        return _token_list(reply, body.get("prompt") or body.get("messages"))

    def _llamacpp_tokens(self, text: str, *, add_special: bool) -> list[int]:
        """llama.cpp's `/tokenize`; special tokens written as text are parsed (its default)."""
        reply = self.http.post("/tokenize", {"content": text, "add_special": add_special, "parse_special": True})
        return _token_list(reply, text)

    def prompt_ids(self, messages: list[dict[str, Any]], tools: Any = None) -> list[int]:
        body: dict[str, Any] = {"messages": messages, "add_generation_prompt": True}
        if tools:
            body["tools"] = tools
        if self.kind == LLAMACPP:
            return self._llamacpp_render(body)
        return self._tokens(body)

    def render_ids(self, request: Mapping[str, Any]) -> list[int] | None:
        """The prompt ids the server's chat route made of `request`, when the server can
        say them exactly (llama.cpp: `/apply-template` + `/tokenize`); else None."""
        return self._llamacpp_render(request) if self.kind == LLAMACPP else None

    def _llamacpp_render(self, request: Mapping[str, Any]) -> list[int]:
        reply = self.http.post("/apply-template", render_body(request))
        text = reply.get("prompt") if isinstance(reply, dict) else None
        if not isinstance(text, str):
            raise ValueError("/apply-template reply has no prompt")
        return self._llamacpp_tokens(text, add_special=True)  # as the chat route tokenizes it

    def completion_ids(self, text: str) -> list[int]:
        if self.kind == LLAMACPP:
            return self._llamacpp_tokens(text, add_special=False)
        return self._tokens({"prompt": text})

    def piece_ids(self, pieces: Sequence[bytes]) -> list[int | None]:
        for piece in set(pieces) - self._pieces.keys():
            found = None
            try:
                ids = self.completion_ids(piece.decode("utf-8"))
                found = ids[0] if len(ids) == 1 else None
            except UnicodeDecodeError:
                pass
            self._pieces[piece] = found
        return [self._pieces[p] for p in pieces]

    def decode(self, ids: list[int]) -> bytes:
        if self.kind == LLAMACPP:
            reply = self.http.post("/detokenize", {"tokens": ids})
            text = reply.get("content") if isinstance(reply, dict) else None
        else:
            reply = self.http.post("/detokenize", {"model": self.model, "tokens": ids})
            text = reply.get("prompt") if isinstance(reply, dict) else None
        if not isinstance(text, str):
            raise ValueError("/detokenize reply has no text")
        if ids and not text:
            raise ValueError(f"/detokenize answered no text for {len(ids)} tokens")
        return text.encode("utf-8")


LLAMACPP = "llamacpp"
"""llama.cpp's `owned_by` in `GET /v1/models` (tools/server/server-context.cpp)."""

_NOT_RENDERED = frozenset({"stream", "stream_options", "extra_body", "extra_headers", "extra_query", "timeout"})


def render_body(request: Mapping[str, Any]) -> dict[str, Any]:
    """A chat request as llama.cpp's `/apply-template` reads it: the same body the chat route
    parsed (`extra_body` merged in, as the SDK sends it), minus what cannot be JSON."""
    body = {k: v for k, v in request.items() if k not in _NOT_RENDERED}
    body.update(request.get("extra_body") or {})
    body = {k: v for k, v in body.items() if type(v).__name__ not in ("NotGiven", "Omit")}
    body.pop("stream", None)
    return json.loads(json.dumps(body, default=_unjsonable))


def _unjsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(exclude_none=True)
    raise ValueError(f"request field of type {type(value).__name__} cannot be sent to /apply-template")


def _token_list(reply: Any, asked: Any) -> list[int]:
    """The ids of a tokenize reply; no tokens for non-empty input is an error (a server that
    does not read this body answers 200 with an empty list: llama.cpp for vLLM's)."""
    tokens = reply.get("tokens") if isinstance(reply, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise ValueError("/tokenize reply has no token list")
    if not tokens and asked:
        raise ValueError("/tokenize answered no tokens for non-empty input (does the server read this body?)")
    return tokens


SERVER = "server"
"""`backend.tokenizer: server`: the tokenizer is built per server, from the client's URL."""


class PerServer:
    """What `load_tokenizer("server")` gives: no tokenizer yet. The recorder builds a
    `ServerTokenizer` for each client's server, on that client's own transport."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "PerServer()"


PER_SERVER = PerServer()


def check_spec(spec: str) -> str:
    """`spec` if it names a tokenizer kind (nothing is loaded), else a `ConfigError`."""
    kind, sep, name = spec.partition(":")
    if spec == SERVER or (kind in ("tiktoken", "hf") and sep and name.strip()):
        return spec
    raise ConfigError(
        f"backend.tokenizer {spec!r} must be 'server', 'tiktoken:<encoding>' or 'hf:<name or path>'"
    )


@cache
def load_tokenizer(spec: str) -> Tokenizer | PerServer:
    """A tokenizer from its config name, loaded once per process; "server" gives `PER_SERVER`
    (the recorder builds one per server, from each client's URL)."""
    kind, _, name = check_spec(spec).partition(":")
    if spec == SERVER:
        return PER_SERVER
    if kind == "tiktoken":
        from compat import TokenizerUnavailableError

        try:
            return TiktokenTokenizer(name)
        except TokenizerUnavailableError as exc:
            raise ConfigError(f"backend.tokenizer {spec!r}: {exc}") from None
    return HfTokenizer(name)


@dataclass(slots=True)
class Paired:
    """What a tokenizer made of one choice that came without ids."""

    ids: list[int]
    matched: bool  # ids spell the server's tokens one for one: they may carry its logprobs
    why: str | None = None  # why not, when not


def pair(tokenizer: Tokenizer, pieces: list[bytes | None] | None, text: str) -> Paired:
    """Ids for a choice whose server named its tokens (`pieces`, None where unknown) but sent no ids.

    Matched only when every piece is one id and the ids decode to the pieces'
    bytes; otherwise the ids are `text` re-encoded, with the reason.
    """
    if not pieces:
        why = "the server named no tokens to check the ids against (ask for logprobs)"
        return Paired(tokenizer.completion_ids(text), False, why)
    if not isinstance(tokenizer, PairingTokenizer):
        return Paired(tokenizer.completion_ids(text), False, "this tokenizer cannot be checked")
    known = [p for p in pieces if p is not None]
    if len(known) < len(pieces):
        why = f"{len(pieces) - len(known)} of {len(pieces)} server tokens have no text or bytes"
        return Paired(tokenizer.completion_ids(text), False, why)
    ids = tokenizer.piece_ids(known)
    missing = [i for i, t in enumerate(ids) if t is None]
    if missing:
        j = missing[0]
        why = (f"{len(missing)} of {len(ids)} server tokens are not one token of this tokenizer "
               f"(first: {known[j]!r} at {j})")  # fmt: skip
        return Paired(tokenizer.completion_ids(text), False, why)
    found = [int(t) for t in ids if t is not None]
    if tokenizer.decode(found) != b"".join(known):
        return Paired(tokenizer.completion_ids(text), False, "the ids do not decode to the server's tokens")
    return Paired(found, True)
