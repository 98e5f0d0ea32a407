"""Wire models of vLLM's token routes: ``/inference/v1/generate`` and ``/derender``.

Formats as in vLLM 0.33.0 (``vllm/entrypoints/scale_out/token_in_token_out/``
protocol.py and serving.py, ``scale_out/derender/``); see docs/embedded.md.
Pydantic in strict mode: these bodies come from programs, so a wrong type is
a bug to report, not to coerce.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .protocol import MAX_N, MAX_TOP_LOGPROBS, ApiError, SamplingRequest

W = TypeVar("W", bound=BaseModel)


class _Wire(BaseModel):
    """Strict JSON types: no "1" for 1, no 1 for true, no NaN."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False)


NEUTRAL_SAMPLING: dict[str, tuple[Any, ...]] = {
    "top_k": (0, -1),
    "min_p": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "repetition_penalty": (1, 1.0),
    "min_tokens": (0,),
    "include_stop_str_in_output": (False,),
    "spaces_between_special_tokens": (True,),
    "prompt_logprobs": (None,),
}
"""vLLM sampling parameters the embedded policy has no use for: accepted at their
neutral values (what vLLM's ``/render`` fills in), refused otherwise."""


class SamplingParams(_Wire):
    """``sampling_params`` in vLLM's engine names (vLLM 0.33.0 ``vllm/sampling_params.py``).

    Unknown keys are a 400: a misspelt parameter must not be silently ignored.
    """

    model_config = ConfigDict(extra="forbid")

    n: int = Field(default=1, ge=1, le=MAX_N)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    """Omitted: the rest of the context, as vLLM 0.33 (``serving.py:348-360``); 16 before."""
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    """k: the sampled token's logprob plus the top k; 0: the sampled one only; null: none."""
    detokenize: bool = True
    skip_special_tokens: bool = True
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    include_stop_str_in_output: bool = False
    spaces_between_special_tokens: bool = True
    prompt_logprobs: None = None

    @field_validator(*NEUTRAL_SAMPLING)
    @classmethod
    def _neutral(cls, value: Any, info: ValidationInfo) -> Any:
        neutral = NEUTRAL_SAMPLING[str(info.field_name)]
        if value not in neutral:
            raise ValueError(f"not supported by the embedded policy (only {neutral[0]!r})")
        return value

    @model_validator(mode="after")
    def _stops_need_text(self) -> SamplingParams:
        if not self.detokenize and self.stop:
            raise ValueError("'stop' strings need detokenize=true (use stop_token_ids)")
        return self

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class StreamOptions(_Wire):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class GenerateRequest(_Wire):
    """``POST /inference/v1/generate`` (vLLM 0.33.0 ``token_in_token_out/protocol.py:221-359``).

    Other top-level keys vLLM knows (``cache_salt``, ``priority``,
    ``parse_context`` from ``/render``, ...) are accepted and ignored, as
    vLLM's own models accept extra keys.
    """

    model_config = ConfigDict(extra="ignore")

    token_ids: list[int] = Field(min_length=1)
    sampling_params: SamplingParams
    model: str | None = None
    request_id: str | None = Field(default=None, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    return_token_ids: bool | None = None
    output_mode: Literal["tokens", "text"] = "tokens"
    """vLLM's "derender" mode is not offered: use ``/v1/chat/completions/derender``."""

    @model_validator(mode="after")
    def _text_needs_detokenize(self) -> GenerateRequest:
        if self.output_mode == "text" and not self.sampling_params.detokenize:
            raise ValueError("output_mode 'text' needs sampling_params.detokenize=true")
        return self

    def sampling(self) -> SamplingRequest:
        """The engine's view of this request."""
        s, options = self.sampling_params, self.stream_options or StreamOptions()
        return SamplingRequest(
            n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
            stop=s.stops, seed=s.seed, logprobs=s.logprobs is not None,
            top_logprobs=s.logprobs or 0, return_token_ids=bool(self.return_token_ids),
            tokens_as_ids=False, stream=self.stream,
            include_usage=self.stream and options.include_usage, ignore_eos=s.ignore_eos,
            stop_token_ids=frozenset(s.stop_token_ids or ()),
            skip_special_tokens=s.skip_special_tokens,
            continuous_usage=self.stream and options.continuous_usage_stats,
        )  # fmt: skip


class GeneratedChoice(_Wire):
    """One choice of a generate reply, as ``/derender`` reads it back."""

    model_config = ConfigDict(extra="ignore")

    index: int = Field(ge=0)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int]
    logprobs: dict[str, Any] | None = None


class GeneratedReply(_Wire):
    model_config = ConfigDict(extra="ignore")

    request_id: str
    output_mode: Literal["tokens"] = "tokens"
    choices: list[GeneratedChoice]
    weight_version: int | None = None


class DerenderRequest(_Wire):
    """``POST /v1/chat/completions/derender`` (vLLM 0.33.0 ``scale_out/derender/``, protocol.py:665-709)."""

    model_config = ConfigDict(extra="ignore")

    stream: Literal[False] = False
    """vLLM's streaming derender (chunk + carried state) is not offered."""
    model: str | None = None
    generate_response: GeneratedReply
    prompt_tokens: int | None = Field(default=None, ge=0)
    prompt_token_ids: list[int] | None = None
    chat_request: dict[str, Any] | None = None


def validated(model: type[W], body: Any) -> W:
    """``body`` as ``model``, or a 400 naming the first offending field."""
    try:
        return model.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            message = f"unknown parameter '{param}' (vLLM engine names are expected)"
        else:
            why = first["msg"].removeprefix("Value error, ")
            message = f"'{param}': {why}" if param else why
        raise ApiError(400, message, param=param, code="invalid_value") from None
