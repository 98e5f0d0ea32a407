"""AReaL's agent shape for an unchanged `async def episode(task, model) -> reward`.

areal 1.0.4 recommends an agent object with `async run(data, **extra_kwargs)`
that builds its own `AsyncOpenAI(base_url=..., api_key=..., http_client=...)`
from what `OpenAIProxyWorkflow` hands it (areal/experimental/openai/proxy/
workflow.py:121-130, inline mode; subproc mode sets `OPENAI_BASE_URL` and
`OPENAI_API_KEY` instead, :131-145) and returns the reward: a float for the
episode (`set_last_reward`) or `{completion_id: reward}` (:236-243). AReaL's
proxy records every call's tokens itself (its `ArealOpenAI` over the rollout
engine, proxy/proxy_rollout_server.py:263-293 and :533-614), so no ids travel
through the agent.

`EpisodeAgent(episode)` is that object: the episode function gets a
`compat.OpenAICompatibleModel` over the session's client, and its result
(a number, or a dict with ``reward``, as `rollout collect` takes it) becomes
the float AReaL wants. AReaL calls the `ArealOpenAI` workflow path "legacy";
`examples/areal_workflow.py` keeps that one, for the same episode function.

Needs only `openai` and `compat` (AReaL is imported by the caller).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from compat import OpenAICompatibleModel
from rollout.collection.backend import import_object
from rollout.collection.runner import _call_agent, apply_result
from rollout.episode import Episode
from rollout.errors import RewardError
from rollout.tokenmode.transport import JsonHttp
from rollout.tokenmode.vllm import parse_generate


class EpisodeAgent:
    """`await agent.run(data, base_url=..., api_key=..., http_client=...)` -> the episode's reward.

    Args:
        episode: the function, or its import path ``"module:name"`` (picklable for AReaL's
            subproc mode, which sends the agent to a worker process).
        model: the model name the agent's requests carry (AReaL's proxy ignores it).
        sampling: the model's request config (CAMEL's `model_config_dict`: temperature, ...).
    """

    def __init__(
        self, episode: Callable[[Any, Any], Any] | str, *, model: str = "default",
        sampling: Mapping[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self.episode = episode
        self.model = model
        self.sampling = dict(sampling or {})

    def _function(self) -> Callable[[Any, Any], Any]:
        fn = import_object(self.episode) if isinstance(self.episode, str) else self.episode
        if not callable(fn):
            raise TypeError(f"episode must be callable, got {type(fn).__name__}")
        return fn

    async def run(self, data: Any, **extra_kwargs: Any) -> float:
        """Run the episode on AReaL's session client; its reward as a float (AReaL's contract)."""
        from openai import AsyncOpenAI

        base_url = extra_kwargs.get("base_url") or os.environ.get("OPENAI_BASE_URL")
        api_key = extra_kwargs.get("api_key") or os.environ.get("OPENAI_API_KEY")
        client = AsyncOpenAI(
            base_url=base_url, api_key=api_key, http_client=extra_kwargs.get("http_client"), max_retries=0
        )
        model = OpenAICompatibleModel(self.model, dict(self.sampling), async_client=client)
        episode = Episode(task=data)
        apply_result(episode, await _call_agent(self._function(), data, model))
        if episode.reward is None:
            raise RewardError("the episode returned no reward; AReaL's workflow needs one (a number)")
        return float(episode.reward)


class TokenRouteEngine:
    """AReaL's `InferenceEngine.agenerate` over a vLLM-format token route (`POST
    /inference/v1/generate`: the embedded server, or vLLM with `--enable-scale-out`), for
    running `EpisodeAgent` in AReaL's proxy workflow without a GPU engine."""

    def __init__(self, url: str) -> None:
        self.http = JsonHttp(url)

    def get_version(self) -> int:
        return 0

    async def agenerate(self, req: Any) -> Any:
        from areal.api.io_struct import ModelResponse

        g = req.gconfig
        params = {"max_tokens": g.max_new_tokens, "temperature": g.temperature, "top_p": g.top_p, "logprobs": 0}
        body = {"token_ids": list(req.input_ids), "sampling_params": params}
        choice = parse_generate(await self.http.arequest("POST", "/inference/v1/generate", body), req.input_ids).choices[0]
        return ModelResponse(
            input_tokens=list(req.input_ids), output_tokens=choice.token_ids, output_logprobs=choice.logprobs or [],
            output_versions=choice.versions or [0] * len(choice.token_ids),
            stop_reason="length" if choice.finish_reason == "length" else "stop", tokenizer=req.tokenizer,
        )  # fmt: skip
