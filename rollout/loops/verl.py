"""verl's own rollout loop running an unchanged `async def episode(task, model) -> reward`.

verl 0.9.1 collects through `AgentLoopWorker.generate_sequences(DataProto)`
(verl/experimental/agent_loop/agent_loop.py:567): each row's `agent_name`
picks a registered `AgentLoopBase` (`register`, :470; or the YAML at
`rollout.agent.agent_loop_config_path`, :534-539), built per row by
`hydra.utils.instantiate` with the registry entry's extra keys as keyword
arguments (:682-693), whose `run(sampling_params, **row)` (:449) returns one
`AgentLoopOutput` (:88): `prompt_ids`, `response_ids`, `response_mask`,
`response_logprobs`, `reward_score`, `num_turns`, `metrics`.

`EpisodeAgentLoop`, registered as ``rollout_episode``, runs the episode
function named in its config. The agent's model is a
`compat.OpenAICompatibleModel` over a real `openai.AsyncOpenAI` whose HTTP
transport is this process (`InProcessTransport`): no socket, no server.

- The first call renders the messages with verl's tokenizer and chat
  template (`tokenizer.apply_chat_template`, what verl's own loops use) and
  generates with `server_manager.generate(request_id, prompt_ids=...,
  sampling_params=...)` (verl/workers/rollout/llm_server.py:99), whose
  `TokenOutput` (workers/rollout/replica.py:39) carries `token_ids` and
  `log_probs`.
- Later calls go through token mode, exactly as for an HTTP server: the
  recorder stitches parent prompt + sampled ids + bridge, with the bridge
  rendered by verl's tokenizer (`rollout.tokenmode.inprocess`).
- Replies become normal `ChatCompletion`s; with tools, verl's own tool parser
  (`ToolParser.get_tool_parser(rollout.multi_turn.format)`,
  experimental/agent_loop/tool_parser.py:80) finds the calls.

The recorded episode is assembled as for any export (`rollout.sample.
assemble`, concat): one exact row per episode is the norm and is returned as
it is. What cannot be one row is never cut silently; each case is counted in
the row's `extra_fields` (verl copies them into `non_tensor_batch`,
agent_loop.py:1118-1135):

- several rows (a call that fell back to messages, a branch): the row that
  holds the episode's last call is returned; the others' sampled tokens are
  not trained (``rollout_rows``, ``rollout_dropped_tokens``); or
  ``multi_row: error`` raises `MultiRowEpisodeError`;
- a prompt or response longer than verl's `prompt_length` /
  `response_length`: the prompt keeps its last tokens and the response its
  first (as verl's own loops cut, :437-446), with ``rollout_truncated`` = 1;
- a failed episode (the agent raised, timed out): a row with no trained
  token (response mask 0) and reward 0, ``rollout_failed`` = 1 and the
  reason in ``rollout_error``.

Needs verl (and its import chain: hydra-core, ray, transformers).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
from verl.experimental.agent_loop.agent_loop import (
    AgentLoopBase,
    AgentLoopMetrics,
    AgentLoopOutput,
    register,
)
from verl.workers.rollout.llm_server import LLMServerClient
from verl.workers.rollout.replica import TokenOutput

from compat import OpenAICompatibleModel
from rollout.collection.backend import import_object
from rollout.collection.runner import _attempt
from rollout.episode import Episode
from rollout.errors import RolloutError
from rollout.recorder import Recorder
from rollout.sample import Sample, assemble
from rollout.tokenmode import TokenServer
from rollout.tokenmode.inprocess import InProcessDialect, in_process_server
from rollout.tokenmode.plan import Generation, Plan, Sampled, adrive, version_of
from rollout.tokenmode.reply import chat_completion
from rollout.tokenmode.stitch import sampling_params as chat_sampling_params
from rollout.tokenmode.vllm import parse_generate

AGENT_NAME = "rollout_episode"
"""The name `EpisodeAgentLoop` is registered under (a row's `agent_name`)."""

TRAINER_SAMPLING = ("temperature", "top_p", "top_k", "repetition_penalty")
"""verl's sampling settings, which win over the agent's: verl's trainer recomputes logprobs with them."""


class MultiRowEpisodeError(RolloutError):
    """An episode assembled into several rows and the loop was told not to pick one."""


def _ids(value: Any) -> list[int]:
    """Token ids from `apply_chat_template` (transformers 5 returns a BatchEncoding)."""
    if isinstance(value, Mapping) or hasattr(value, "keys"):
        value = value["input_ids"]
    return [int(t) for t in value]


class VerlEngine:
    """verl's rollout side as token mode's in-process engine (`rollout.tokenmode.inprocess.Engine`)."""

    def __init__(self, loop: AgentLoopBase, sampling_params: Mapping[str, Any], tool_format: str | None) -> None:
        self.tokenizer = loop.tokenizer
        self.server_manager = loop.server_manager
        self.trainer_sampling = dict(sampling_params)
        self.template_kwargs = dict(loop.apply_chat_template_kwargs or {})
        self.request_id = uuid.uuid4().hex  # one per episode: verl's sticky session
        self.tool_format = tool_format
        self._parser: Any = None
        self.generate_s = 0.0
        self.calls = 0

    def render(self, messages: list[Any], tools: Any, chat_template_kwargs: Any, *,
               generation_prompt: bool) -> list[int]:  # fmt: skip
        kwargs = {**self.template_kwargs, **(chat_template_kwargs or {})}
        return _ids(self.tokenizer.apply_chat_template(
            list(messages), tools=tools or None, add_generation_prompt=generation_prompt, tokenize=True, **kwargs
        ))  # fmt: skip

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=False))

    def sampling(self, asked: Mapping[str, Any]) -> dict[str, Any]:
        """The agent's request in verl's names, verl's sampling settings on top."""
        params = {k: v for k, v in asked.items() if v is not None and k not in ("logprobs", "n")}
        if int(asked.get("n") or 1) != 1:
            raise ValueError("verl's server_manager.generate samples one sequence per call (n=1)")
        params.update({k: v for k, v in self.trainer_sampling.items() if k in TRAINER_SAMPLING})
        params["logprobs"] = True  # the row needs the sampled tokens' logprobs
        return params

    async def generate(self, prompt_ids: list[int], sampling: dict[str, Any]) -> Generation:
        start = time.perf_counter()
        out: TokenOutput = await self.server_manager.generate(
            request_id=self.request_id, prompt_ids=prompt_ids, sampling_params=self.sampling(sampling)
        )
        self.generate_s += time.perf_counter() - start
        self.calls += 1
        if out.stop_reason == "aborted":
            raise RuntimeError("verl aborted the generation (weights are being updated)")
        ids = [int(t) for t in out.token_ids]
        logprobs = None if out.log_probs is None else [float(x) for x in out.log_probs]
        if logprobs is not None and len(logprobs) != len(ids):
            raise ValueError(f"generate returned {len(logprobs)} logprobs for {len(ids)} tokens")
        eos = self.tokenizer.eos_token_id
        budget = sampling.get("max_tokens")
        finish = "stop" if (ids and ids[-1] == eos) or budget is None or len(ids) < int(budget) else "length"
        version = version_of((out.extra_fields or {}).get("global_steps"))
        return Generation(
            id=uuid.uuid4().hex,
            prompt_ids=list(prompt_ids),
            choices=[Sampled(index=0, token_ids=ids, logprobs=logprobs, finish_reason=finish)],
            weight_version=version,
            raw=out,
        )

    async def parse(self, gen: Generation, kwargs: Mapping[str, Any]) -> bool:
        """With tools: verl's own tool parser on the sampled ids (stop token left out)."""
        if not kwargs.get("tools") or kwargs.get("tool_choice") == "none" or not self.tool_format:
            return False
        from verl.experimental.agent_loop.tool_parser import ToolParser

        if self._parser is None:
            self._parser = ToolParser.get_tool_parser(self.tool_format, self.tokenizer)
        for choice in gen.choices:
            ids = choice.token_ids
            if choice.finish_reason == "stop" and ids and ids[-1] == self.tokenizer.eos_token_id:
                ids = ids[:-1]
            content, calls = await self._parser.extract_tool_calls(ids)
            message: dict[str, Any] = {"role": "assistant", "content": content if content or not calls else None}
            if calls:
                message["tool_calls"] = [{
                    "id": call.tool_call_id or f"call_{uuid.uuid4().hex[:24]}",
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                } for call in calls]  # fmt: skip
                choice.finish_reason = "tool_calls"
            choice.text, choice.message = content, message
        return True


def first_call(dialect: InProcessDialect, body: dict[str, Any]) -> Plan:
    """A chat request sent as messages: rendered by verl's template, generated, parsed."""
    tools = body.get("tools") or None
    ctk = (body.get("chat_template_kwargs") or {}) if isinstance(body.get("chat_template_kwargs"), dict) else {}
    prompt = yield from dialect.render(str(body.get("model") or ""), list(body["messages"]), tools, ctk,
                                       generation_prompt=True)  # fmt: skip
    budget = body.get("max_completion_tokens") or body.get("max_tokens")
    if budget is None:
        budget = (dialect.max_model_len or len(prompt) + 16) - len(prompt)
    gen: Generation = yield from dialect.generate("", prompt, chat_sampling_params(body, int(budget)))
    yield from dialect.fill_messages("", gen, body)
    return gen


class InProcessTransport(httpx.AsyncBaseTransport):
    """The OpenAI SDK's transport, answered in this process: `/v1/chat/completions` (as messages)
    and `/v1/models`. The reply carries vLLM's id fields, so the recorder records exact ids."""

    def __init__(self, server: TokenServer, model: str) -> None:
        self.server = server
        self.model = model

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "GET" and path.endswith("/models"):
            data = {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "verl"}]}
            return httpx.Response(200, json=data)
        if request.method != "POST" or not path.endswith("/chat/completions"):
            return httpx.Response(404, json={"error": {"message": f"no route {request.method} {path}"}})
        body = json.loads(await request.aread())
        if body.get("stream"):
            return httpx.Response(400, json={"error": {"message": "streaming is not served in verl's agent loop"}})
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return httpx.Response(400, json={"error": {"message": "messages must be a non-empty list"}})
        dialect = self.server.dialect
        assert isinstance(dialect, InProcessDialect)
        try:
            gen = await adrive(first_call(dialect, body), self.server.http)
        except ValueError as exc:  # bad parameters (n > 1, a malformed template input)
            return httpx.Response(400, json={"error": {"message": str(exc)}})
        model = str(body.get("model") or self.model)
        views = await adrive(dialect.logprob_views(model, gen, {**body, "logprobs": True}), self.server.http)
        reply = chat_completion(gen, model, logprobs=views)
        return httpx.Response(200, json=reply)


_RENDERS: dict[int, tuple[Any, TokenServer]] = {}
"""Per tokenizer: the template facts and renders its episodes share (one `TokenServer` each)."""


def shared_renders(server: TokenServer, tokenizer: Any) -> None:
    """Let `server` share the bridge renders of earlier episodes with the same tokenizer: a
    render depends only on the template and the request, never on the episode."""
    held = _RENDERS.get(id(tokenizer))
    if held is None or held[0] is not tokenizer:  # the tokenizer is kept, so its id is not reused
        _RENDERS[id(tokenizer)] = (tokenizer, server)
        return
    first, facts = held[1].facts, server.facts
    facts.closing, facts.placeholder, facts.rendered, facts.lock = first.closing, first.placeholder, first.rendered, first.lock


class _LoopRecorder(Recorder):
    """A recorder whose token mode talks to the agent loop's in-process engine."""

    def __init__(self, server: TokenServer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._server = server

    def token_server(self, client: Any) -> TokenServer:
        return self._server


def pick_row(
    episode: Episode, samples: list[Sample], multi_row: Literal["last", "error"]
) -> tuple[Sample | None, int]:
    """The row to return for `episode` and how many sampled tokens the other rows hold."""
    if not samples:
        return None, 0
    if len(samples) == 1:
        return samples[0], 0
    if multi_row == "error":
        raise MultiRowEpisodeError(
            f"episode {episode.uid} is {len(samples)} rows (a call went as messages, or the episode "
            "branched); verl's agent loop returns one row per episode"
        )
    last = len(episode.calls) - 1
    chosen = next((s for s in reversed(samples) if any(c == last for c, _ in s.calls)), samples[-1])
    dropped = sum(s.num_sampled for s in samples if s is not chosen)
    return chosen, dropped


@register(AGENT_NAME)
class EpisodeAgentLoop(AgentLoopBase):
    """verl's agent loop for an unchanged `episode(task, model)` function.

    Config (the registry entry's keys, e.g. in `rollout.agent.agent_loop_config_path`)::

        - name: rollout_episode
          _target_: rollout.loops.verl.EpisodeAgentLoop
          episode: rollout.demo.arithmetic:episode   # the function, "module:name"
          model: policy                              # the model name the agent's requests carry
          sampling: {max_tokens: 1}                  # the agent model's request config
          multi_row: last                            # or: error
          timeout_s: null

    The task is the row's ``task`` field (any object, e.g. a dict), else the
    row's fields minus verl's own. The row may carry ``task_id`` and ``sample``.
    """

    def __init__(
        self,
        *args: Any,
        episode: str | None = None,
        model: str = "policy",
        sampling: Mapping[str, Any] | None = None,
        multi_row: Literal["last", "error"] = "last",
        timeout_s: float | None = None,
        keep_episode: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("name", None)  # the registry entry's own name, passed along by hydra
        kwargs.pop("tools", None)
        super().__init__(*args, **kwargs)
        if not episode:
            raise ValueError(f"agent loop {AGENT_NAME!r} needs `episode: module:function` in its config")
        if multi_row not in ("last", "error"):
            raise ValueError(f"multi_row must be 'last' or 'error', got {multi_row!r}")
        self.episode_fn = import_object(str(episode))
        self.model_name = str(model)
        self.model_config = dict(sampling or {})
        self.multi_row = multi_row
        self.timeout_s = timeout_s
        self.keep_episode = keep_episode
        self.prompt_length = int(self.rollout_config.prompt_length)
        self.response_length = int(self.rollout_config.response_length)
        multi_turn = self.rollout_config.get("multi_turn", None)
        self.tool_format = multi_turn.get("format", None) if multi_turn is not None else None

    def _task(self, row: dict[str, Any]) -> tuple[Any, str, int]:
        own = {"raw_prompt", "agent_name", "index", "uid", "priority", "tools_kwargs", "interaction_kwargs"}
        task = row["task"] if "task" in row else {k: v for k, v in row.items() if k not in own}
        task_id = row.get("task_id")
        if task_id is None and isinstance(task, Mapping):
            task_id = task.get("id")
        if task_id is None:
            task_id = row.get("index", "")
        return task, str(task_id), int(row.get("sample", 0))

    async def run(self, sampling_params: dict[str, Any], **row: Any) -> AgentLoopOutput:
        task, task_id, sample = self._task(row)
        engine = VerlEngine(self, sampling_params, self.tool_format)
        max_len = self.prompt_length + self.response_length
        server = in_process_server(engine, max_model_len=max_len, name="verl")
        shared_renders(server, self.tokenizer)
        recorder = _LoopRecorder(server, request_token_ids=True, request_logprobs=True)
        http = httpx.AsyncClient(transport=InProcessTransport(server, self.model_name))
        from openai import AsyncOpenAI

        client = AsyncOpenAI(base_url="http://verl.invalid/v1", api_key="unused", http_client=http, max_retries=0)
        model = OpenAICompatibleModel(self.model_name, dict(self.model_config), async_client=recorder.wrap(client))
        episode = Episode(task_id=task_id, sample=sample, task=task)
        try:
            await _attempt(episode, self.episode_fn, task, model, recorder, self.timeout_s)
        finally:
            await http.aclose()
        return self.output(episode, row, engine)

    def output(self, episode: Episode, row: Mapping[str, Any], engine: VerlEngine) -> AgentLoopOutput:
        """The episode as verl's one row, with what did not fit counted in `extra_fields`."""
        result = assemble([episode])
        sample, dropped = pick_row(episode, result.samples, self.multi_row)
        extra: dict[str, Any] = {
            "rollout_rows": len(result.samples),
            "rollout_dropped_tokens": dropped,
            "rollout_truncated": 0,
            "rollout_failed": int(sample is None),
            "rollout_error": episode.error or "",
            "rollout_exact": bool(sample is not None and sample.exact),
            "rollout_later_calls_as_messages": sum(c.sent_as != "tokens" for c in episode.calls[1:]),
            "turn_scores": [],
            "tool_rewards": [],
        }
        if self.keep_episode:
            extra["rollout_episode"] = episode
        metrics = AgentLoopMetrics(generate_sequences=engine.generate_s, num_preempted=-1)
        if sample is None:  # failed, or no call at all: a row that trains nothing
            prompt = [int(t) for t in episode.calls[0].prompt_ids] if episode.calls else self._raw_prompt_ids(row)
            return AgentLoopOutput(
                prompt_ids=prompt[-self.prompt_length :], response_ids=[], response_mask=[],
                response_logprobs=[], reward_score=0.0, num_turns=0, metrics=metrics, extra_fields=extra,
            )  # fmt: skip
        p = sample.prompt_len
        prompt_ids = sample.tokens[:p].tolist()
        response = sample.tokens[p:].tolist()
        mask = sample.loss_mask[p:].astype(np.int64).tolist()
        logprobs = sample.logprobs[p:].astype(np.float64).tolist()
        if len(prompt_ids) > self.prompt_length or len(response) > self.response_length:
            extra["rollout_truncated"] = 1
            extra["rollout_dropped_tokens"] += int(sum(mask[self.response_length :]))
            prompt_ids = prompt_ids[-self.prompt_length :]
            response, mask, logprobs = (x[: self.response_length] for x in (response, mask, logprobs))
        last = episode.calls[-1] if episode.calls else None
        messages = last.request.get("messages") if last is not None and isinstance(last.request, dict) else None
        return AgentLoopOutput(
            prompt_ids=prompt_ids,
            response_ids=response,
            response_mask=mask,
            response_logprobs=logprobs if sample.has_logprobs else None,
            reward_score=float(sample.reward),
            num_turns=(len(messages) + 1) if isinstance(messages, list) else 2 * len(episode.calls),
            metrics=metrics,
            extra_fields=extra,
        )

    def _raw_prompt_ids(self, row: Mapping[str, Any]) -> list[int]:
        raw = row.get("raw_prompt")
        messages = list(raw) if raw is not None and len(raw) else [{"role": "user", "content": ""}]
        return _ids(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))


class EmbeddedLLMClient(LLMServerClient):
    """verl's `LLMServerClient` over the embedded server's token route (`/inference/v1/generate`).

    What verl's replicas do for `generate` (workers/rollout/vllm_rollout/vllm_async_server.py:
    558-725): `max_tokens` defaults to what is left of `response_length`, `logprobs` is a bool,
    the reply is a `TokenOutput` with `global_steps` (the weight version) in `extra_fields`.
    """

    def __init__(self, config: Any, url: str, *, timeout_s: float = 60.0) -> None:
        super().__init__(config, load_balancer_handle=None)
        from rollout.tokenmode.transport import JsonHttp

        self.http = JsonHttp(url.rstrip("/").removesuffix("/v1"), timeout=timeout_s)
        rollout = config.actor_rollout_ref.rollout
        self.prompt_length = int(rollout.prompt_length)
        self.response_length = int(rollout.response_length)

    async def generate(
        self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any], **kwargs: Any
    ) -> TokenOutput:
        params = dict(sampling_params)
        if "max_tokens" not in params:
            params["max_tokens"] = min(self.response_length, self.prompt_length + self.response_length - len(prompt_ids))
        params["max_tokens"] = max(1, int(params["max_tokens"]))
        params["logprobs"] = 0 if params.pop("logprobs", False) else None
        if params.get("top_k") in (-1, 0):
            params.pop("top_k")
        if params.get("repetition_penalty") == 1.0:
            params.pop("repetition_penalty")
        body = {"token_ids": list(prompt_ids), "sampling_params": params, "request_id": request_id}
        gen = parse_generate(await self.http.arequest("POST", "/inference/v1/generate", body), list(prompt_ids))
        choice = gen.choices[0]
        versions = {v for v in (choice.versions or [])}
        step = versions.pop() if len(versions) == 1 else gen.weight_version
        return TokenOutput(
            token_ids=choice.token_ids,
            log_probs=choice.logprobs,
            stop_reason="completed",
            extra_fields={"global_steps": step},
        )

    async def aclose(self) -> None:
        await self.http.aclose()


# ------------------------------------------------------------------ building verl's side


def agent_loop_entry(episode: str, *, name: str = AGENT_NAME, **settings: Any) -> dict[str, Any]:
    """One entry of `rollout.agent.agent_loop_config_path` for `EpisodeAgentLoop`."""
    return {"name": name, "_target_": f"{EpisodeAgentLoop.__module__}.{EpisodeAgentLoop.__qualname__}",
            "episode": episode, **settings}  # fmt: skip


def write_agent_loop_config(path: str | Path, entries: list[dict[str, Any]]) -> Path:
    """The YAML file verl's `AgentLoopWorker` reads its agent loops from (agent_loop.py:534-539)."""
    import yaml

    out = Path(path)
    out.write_text(yaml.safe_dump(entries, sort_keys=False))
    return out


def verl_config(
    model_path: str | Path,
    *,
    prompt_length: int,
    response_length: int,
    agent_loop_config: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> Any:
    """verl's trainer config (`ppo_trainer.yaml`, composed by hydra as verl's `main_ppo` does),
    pointed at `model_path`, with the rollout lengths and our agent loops."""
    import warnings

    import verl
    from hydra import compose, initialize_config_dir

    config_dir = str(Path(verl.__file__).parent / "trainer" / "config")
    items = [
        f"actor_rollout_ref.model.path={model_path}",
        "actor_rollout_ref.rollout.name=vllm",
        f"actor_rollout_ref.rollout.prompt_length={prompt_length}",
        f"actor_rollout_ref.rollout.response_length={response_length}",
        "actor_rollout_ref.rollout.calculate_log_probs=true",
        f"actor_rollout_ref.rollout.agent.default_agent_loop={AGENT_NAME}",
    ]
    if agent_loop_config is not None:
        items.append(f"actor_rollout_ref.rollout.agent.agent_loop_config_path={agent_loop_config}")
    with warnings.catch_warnings():  # hydra 1.3 on omegaconf 2.4: deprecation notices only
        warnings.simplefilter("ignore")
        with initialize_config_dir(config_dir=config_dir, version_base=None):
            return compose("ppo_trainer", overrides=[*items, *overrides])


def quiet_verl_logs() -> None:
    """verl warns once per agent-loop instance (each row) that our model type has no
    model-specific Continuous Token builder; that is the intended generic builder."""
    import logging

    logging.getLogger("verl.utils.tokenizer.continuous_token_wiring").setLevel(logging.ERROR)


def _objects(values: list[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def task_batch(tasks: Any, samples_per_task: int, *, agent_name: str = AGENT_NAME) -> Any:
    """A `DataProto` of rows for `generate_sequences`: each task `samples_per_task` times.

    `tasks` is what `rollout.collection.load_tasks` takes (a JSONL path or task dicts, ids
    from their ``id``). Each row holds `task`, `task_id`, `sample`, `agent_name`,
    `raw_prompt` (verl records it: the task's ``messages``, else empty) and `uid`
    ((task id, "task_id:sample"): the group key `rollout.export.verl_advantage` reads)."""
    from verl import DataProto

    from rollout.collection import load_tasks

    rows = [(task, task_id, s) for task_id, task in load_tasks(tasks) for s in range(samples_per_task)]
    raw = [list(t.get("messages") or []) if isinstance(t, Mapping) else [] for t, _, _ in rows]
    return DataProto.from_dict(non_tensors={
        "task": _objects([t for t, _, _ in rows]),
        "task_id": _objects([i for _, i, _ in rows]),
        "sample": _objects([s for _, _, s in rows]),
        "agent_name": _objects([agent_name] * len(rows)),
        "raw_prompt": _objects(raw),
        "uid": _objects([(i, f"{i}:{s}") for _, i, s in rows]),
    })  # fmt: skip


def compact(data: Any) -> Any:
    """The batch without the padding columns every row shares (verl pads to `prompt_length` /
    `response_length`): the same tokens, masks and positions, narrower. Nothing attended is cut."""
    from verl import DataProto

    b = data.batch
    width_p = b["prompts"].shape[1]
    attention = b["attention_mask"].bool()
    first = int((~attention[:, :width_p]).sum(-1).min())  # the fewest left-pad columns of any row
    last = int(attention[:, width_p:].sum(-1).max())  # the longest response
    tensors = {}
    for key, value in b.items():
        if key in ("input_ids", "attention_mask", "position_ids"):
            tensors[key] = value[:, first : width_p + last]
        elif key == "prompts":
            tensors[key] = value[:, first:]
        else:  # responses, response_mask, rollout_log_probs, rm_scores: [N, R]
            tensors[key] = value[:, :last]
    return DataProto.from_dict(tensors=tensors, non_tensors=dict(data.non_tensor_batch), meta_info=dict(data.meta_info))


def episodes_of(data: Any) -> list[Episode]:
    """The recorded episodes behind a `generate_sequences` output (``keep_episode``)."""
    return list(data.non_tensor_batch["rollout_episode"])


def run_sync(coro: Any) -> Any:
    """Run a coroutine to completion from sync code (verl's worker methods are async)."""
    return asyncio.run(coro)


async def generate(worker: Any, batch: Any) -> Any:
    """`worker.generate_sequences(batch)`, then close its client's connections of this event
    loop (each `run_sync` is a new loop; `EmbeddedLLMClient` keeps a pool per loop)."""
    try:
        return await worker.generate_sequences(batch)
    finally:
        close = getattr(worker.llm_client, "aclose", None)
        if close is not None:
            await close()
