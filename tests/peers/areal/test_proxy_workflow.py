"""AReaL 1.0.4's recommended way in: an agent object run by `OpenAIProxyWorkflow`.

The unchanged arithmetic episode function, adapted by `rollout.loops.areal.EpisodeAgent`,
runs inside AReaL's own `OpenAIProxyWorkflow` (experimental/openai/proxy/workflow.py:72,
mode "inline"), whose calls go to AReaL's own proxy server (the FastAPI app of
proxy/proxy_rollout_server.py, served here by uvicorn on 127.0.0.1) where AReaL's
`ArealOpenAI` records them over a stub inference engine with a real Qwen2.5 tokenizer.
What AReaL returns is checked with its own `check_trajectory_format` and
`concat_padded_tensors`, and its tokens against what the engine was sent and sampled.
The same episode function then runs through the "legacy" `ArealOpenAI` workflow
(examples/areal_workflow.py).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import areal  # noqa: F401  (the peer: a failed import fails this tier)
import pytest
import torch
import uvicorn
from areal.api.io_struct import ModelRequest, ModelResponse
from areal.experimental.openai import ArealOpenAI
from areal.experimental.openai.proxy import proxy_rollout_server as proxy
from areal.experimental.openai.proxy.server import DEFAULT_ADMIN_API_KEY
from areal.experimental.openai.proxy.workflow import OpenAIProxyWorkflow
from areal.infra import workflow_context
from areal.infra.workflow_context import WorkflowContext
from areal.infra.workflow_executor import check_trajectory_format
from areal.utils.data import concat_padded_tensors

from examples import arithmetic
from examples.areal_workflow import AgentWorkflow, areal_client
from rollout.errors import RewardError
from rollout.loops.areal import EpisodeAgent

pytestmark = pytest.mark.peers

TASK = {"id": "add-2-3", "a": 2, "b": 3, "answer": 5}


class StubEngine:
    """`agenerate` as AReaL's engines answer (io_struct.py: ModelResponse): a wrong answer, then
    the right one; output token k has logprob -0.1 * (k + 1); every token carries `version`."""

    def __init__(self, tokenizer: Any, answers: tuple[str, ...], version: int = 3) -> None:
        self.tokenizer, self.answers, self.version = tokenizer, answers, version
        self.calls: list[tuple[list[int], list[int], list[float]]] = []

    def get_version(self) -> int:
        return self.version

    async def agenerate(self, req: ModelRequest) -> ModelResponse:
        turn = self.tokenizer.decode(req.input_ids).count("<|im_start|>user") - 1
        text = self.answers[min(turn, len(self.answers) - 1)]
        out = [*self.tokenizer.encode(text, add_special_tokens=False), self.tokenizer.eos_token_id]
        logprobs = [-0.1 * (k + 1) for k in range(len(out))]
        self.calls.append((list(req.input_ids), out, logprobs))
        return ModelResponse(
            input_tokens=list(req.input_ids), output_tokens=out, output_logprobs=logprobs,
            output_versions=[self.version] * len(out), stop_reason="stop", tokenizer=req.tokenizer,
        )  # fmt: skip


@pytest.fixture(scope="module")
def proxy_url(qwen: Any) -> Any:
    """AReaL's proxy app on 127.0.0.1, its engine and client set as `_setup_openai_client` sets them
    (proxy_rollout_server.py:263-293; that function reads them from an engine's launch config)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(proxy.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("AReaL's proxy server did not start")
        time.sleep(0.05)
    proxy._admin_api_key = DEFAULT_ADMIN_API_KEY
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def run_proxy_workflow(url: str, engine: StubEngine, tokenizer: Any, agent: Any, style: str) -> Any:
    proxy._engine = engine
    # AReaL exports "concat" only from calls its client rendered with chat_template_type="concat"
    # (experimental/openai/cache.py:241-247); the proxy takes it from AgentConfig.chat_template_type.
    template = "concat" if style == "concat" else "hf"
    proxy._openai_client = ArealOpenAI(engine=engine, tokenizer=tokenizer, chat_template_type=template)
    workflow = OpenAIProxyWorkflow(mode="inline", agent=agent, proxy_addr=url, export_style=style)

    async def main() -> Any:
        workflow_context.set(WorkflowContext(is_eval=False, task_id=7))  # as the WorkflowExecutor does
        return await workflow.arun_episode(engine, dict(TASK))

    return asyncio.run(main())


@pytest.mark.parametrize("style", ["individual", "concat"])
def test_areals_proxy_workflow_runs_the_episode_function(proxy_url: str, qwen: Any, style: str) -> None:
    engine = StubEngine(qwen, ("7", "5"))  # wrong, then right: a two-turn episode, reward 1
    agent = EpisodeAgent(arithmetic.episode, sampling={"max_tokens": 16})
    traj = run_proxy_workflow(proxy_url, engine, qwen, agent, style)

    assert check_trajectory_format(traj)  # AReaL's own check, on what its workflow returned
    assert len(engine.calls) == 2
    rows = [i.to_tensor_dict() for i in traj.values()]
    batch = concat_padded_tensors(rows)  # what AReaL's WorkflowExecutor does next
    assert check_trajectory_format(batch)
    assert list(traj.values())[-1].reward == 1.0  # the episode's reward, on its last call

    calls = engine.calls
    if style == "individual":  # one row per call: exactly the engine's tokens and logprobs
        assert len(rows) == 2
        for row, (prompt, out, logprobs) in zip(rows, calls, strict=True):
            n = int(row["attention_mask"].sum())
            assert row["input_ids"][0, :n].tolist() == prompt + out
            assert row["loss_mask"][0, :n].tolist() == [0] * len(prompt) + [1] * len(out)
            torch.testing.assert_close(row["logprobs"][0, len(prompt) : n], torch.tensor(logprobs))
            assert row["versions"][0, len(prompt) : n].tolist() == [3] * len(out)
    else:  # AReaL merges the second call into the first (its message prefix): one row
        assert len(rows) == 1
        (row,) = rows
        (p0, o0, _), (p1, o1, lp1) = calls
        n = int(row["attention_mask"].sum())
        assert row["input_ids"][0, :n].tolist() == p1 + o1
        assert p1[: len(p0) + len(o0)] == p0 + o0  # the second prompt extends the first exactly
        assert row["loss_mask"][0, len(p0) : len(p0) + len(o0)].tolist() == [1] * len(o0)
        torch.testing.assert_close(row["logprobs"][0, len(p1) : n], torch.tensor(lp1))
    assert float(batch["rewards"][-1]) == 1.0


async def no_reward(task: dict, model: Any) -> None:
    await model.arun([{"role": "user", "content": "hi"}])


def test_an_episode_without_a_reward_is_a_typed_error(proxy_url: str, qwen: Any) -> None:
    engine = StubEngine(qwen, ("1",))
    with pytest.raises(RewardError, match="no reward"):
        run_proxy_workflow(proxy_url, engine, qwen, EpisodeAgent(no_reward), "individual")


def test_the_legacy_arealopenai_workflow_runs_the_same_function(qwen: Any) -> None:
    """AReaL calls this path (ArealOpenAI in the workflow) legacy; it stays, with the same function."""
    engine = StubEngine(qwen, ("7", "5"))
    episodes: list[Any] = []
    workflow = AgentWorkflow(qwen, make_client=areal_client, agent=arithmetic.episode,
                             sampling={"max_tokens": 16}, on_episode=episodes.append)  # fmt: skip
    out = asyncio.run(workflow.arun_episode(engine, dict(TASK)))
    assert check_trajectory_format(out)
    (episode,) = episodes
    assert episode.reward == 1.0 and len(episode.calls) == 2
    for call, (prompt, sampled, logprobs) in zip(episode.calls, engine.calls, strict=True):
        assert call.prompt_ids.tolist() == prompt and call.choices[0].ids.tolist() == sampled
        assert call.choices[0].logprobs.tolist() == pytest.approx(logprobs)


def test_the_one_agent_example_runs_under_areal() -> None:
    from examples.one_agent_three_trainers import TASKS as EXAMPLE_TASKS
    from examples.one_agent_three_trainers import run_areal
    from rollout.embedded import EmbeddedServer

    with EmbeddedServer(model_name="tiny") as srv:
        out = run_areal(srv.url)  # AReaL's proxy over the embedded server's token route
    assert out["episodes"] == len(EXAMPLE_TASKS) and all(n >= 1 for n in out["rows"])
    assert all(r in (0.0, 1.0) for r in out["rewards"])
