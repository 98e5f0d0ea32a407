"""AReaL 1.0.4's own code around examples/areal_workflow.py.

Runs in the AReaL venv (tests/peers/setup.sh areal; tests/peers/run.sh runs it).
The workflow drives AReaL's real `ArealOpenAI` (experimental/openai/client.py)
over a stub inference engine, through our recorder, and its output goes
through AReaL's own `check_trajectory_format` (infra/workflow_executor.py:48)
and `concat_padded_tensors` (utils/data.py:241), and is compared with what
AReaL's own `export_interactions(...)` + `to_tensor_dict()` give for the same
calls. The tokenizer is a real Qwen2.5 one, built offline by prepare.sh.
"""

from __future__ import annotations

import asyncio
from typing import Any

import areal  # noqa: F401  (the peer: a broken install fails this tier; tests/peers/conftest.py)
import numpy as np
import pytest
import torch
from areal.api.io_struct import ModelRequest, ModelResponse
from areal.infra.workflow_executor import check_trajectory_format
from areal.utils.data import concat_padded_tensors
from openai import AsyncOpenAI

from examples import arithmetic
from examples.areal_workflow import AgentWorkflow, areal_client, arun_episode
from rollout import Episode, EpisodeStatus, TokenSource
from rollout.embedded import ChatTemplate, EmbeddedServer

pytestmark = pytest.mark.peers

TASK = {"id": "add-2-3", "a": 2, "b": 3, "answer": 5}


class StubEngine:
    """The one method ArealOpenAI calls on an engine (client.py:66-68): `agenerate`.

    Replies with `answers` in turn, ending each with eos as a real engine does
    (io_struct.py:106-130 requires it for stop_reason "stop"); output token k has
    logprob -0.1 * (k + 1) and every token is stamped with `version`.
    """

    def __init__(self, tokenizer: Any, answers: tuple[str, ...], version: int = 3) -> None:
        self.tokenizer, self.answers, self.version = tokenizer, answers, version
        self.requests: list[ModelRequest] = []

    def get_version(self) -> int:
        return self.version

    async def agenerate(self, req: ModelRequest) -> ModelResponse:
        self.requests.append(req)
        turn = self.tokenizer.decode(req.input_ids).count("<|im_start|>user") - 1
        text = self.answers[min(turn, len(self.answers) - 1)]
        out = [*self.tokenizer.encode(text, add_special_tokens=False), self.tokenizer.eos_token_id]
        return ModelResponse(
            input_tokens=list(req.input_ids),
            output_tokens=out,
            output_logprobs=[-0.1 * (k + 1) for k in range(len(out))],
            output_versions=[self.version] * len(out),
            stop_reason="stop",
            tokenizer=req.tokenizer,
        )


def run(tokenizer: Any, answers: tuple[str, ...], *, template: str = "hf", **options: Any) -> tuple[Any, list[Any], list[Episode]]:
    """The workflow on AReaL's own ArealOpenAI (the example's default factory)."""
    clients: list[Any] = []
    episodes: list[Episode] = []

    def make_client(engine: Any, tok: Any) -> Any:
        client = areal_client(engine, tok) if template == "hf" else _concat_client(engine, tok)
        clients.append(client)
        return client

    workflow = AgentWorkflow(
        tokenizer, make_client=make_client, on_episode=episodes.append, sampling={"max_tokens": 16}, **options
    )
    out = asyncio.run(workflow.arun_episode(StubEngine(tokenizer, answers), TASK))
    return out, clients, episodes


def _concat_client(engine: Any, tokenizer: Any) -> Any:
    from areal.experimental.openai import ArealOpenAI

    return ArealOpenAI(engine=engine, tokenizer=tokenizer, chat_template_type="concat")


def areal_batch(client: Any, style: str) -> dict[str, torch.Tensor]:
    """What AReaL's WorkflowExecutor builds from the client's interactions (workflow_executor.py:1080-1086)."""
    interactions = client.export_interactions(style=style)
    return concat_padded_tensors([i.to_tensor_dict() for i in interactions.values()])


def assert_same_rows(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    """Equal values on real tokens; padding may differ (AReaL pads versions with 0, we with -1)."""
    assert ours["input_ids"].shape == theirs["input_ids"].shape
    real = theirs["attention_mask"].bool()
    assert torch.equal(ours["attention_mask"].bool(), real)
    for key in ("input_ids", "loss_mask", "logprobs", "versions"):
        assert torch.equal(ours[key][real].to(theirs[key].dtype), theirs[key][real]), key
    torch.testing.assert_close(ours["rewards"], theirs["rewards"])


def test_recorder_reads_arealopenais_interactions_exactly(qwen: Any) -> None:
    out, (client,), (ep,) = run(qwen, ("7", "6", "5"))
    assert out is not None and ep.reward == 1.0 and len(ep.calls) == 3
    for call in ep.calls:
        response = client.get_interaction(call.id).model_response
        (choice,) = call.choices
        assert call.prompt_source is TokenSource.AREAL and choice.source is TokenSource.AREAL
        assert call.prompt_ids.tolist() == response.input_tokens
        assert choice.ids.tolist() == response.output_tokens
        assert choice.logprobs is not None
        assert choice.logprobs.tolist() == np.float32(response.output_logprobs).tolist()
        assert choice.versions.to_array().tolist() == response.output_versions == [3] * len(response.output_tokens)
    # The agent saw ArealOpenAI's replies: the last one is the right answer.
    assert ep.calls[-1].choices[0].message["content"] == "5"


def test_workflow_output_passes_areals_checks_and_concatenation(qwen: Any) -> None:
    first, _, _ = run(qwen, ("7", "6", "5"))
    second, _, _ = run(qwen, ("5",), mode="individual")
    assert first is not None and second is not None
    assert all(isinstance(v, torch.Tensor) for v in first.values())
    assert check_trajectory_format(first) and check_trajectory_format(second)
    both = concat_padded_tensors([first, second])  # what group_size > 1 and the trainer do
    assert both["input_ids"].shape[0] == 2 and both["rewards"].tolist() == [1.0, 1.0]
    width = first["input_ids"].shape[1]
    assert torch.equal(both["input_ids"][0, :width], first["input_ids"][0])
    assert check_trajectory_format(both)
    # The numpy batch the workflow used to return is what AReaL rejected / truncated.
    arrays = {k: v.numpy() for k, v in first.items()}
    with pytest.raises(AttributeError, match="dim"):
        check_trajectory_format(arrays)
    assert concat_padded_tensors([arrays, arrays])["input_ids"].shape[0] == 1


def test_individual_mode_is_areals_individual_export(qwen: Any) -> None:
    out, (client,), _ = run(qwen, ("7", "6", "5"), mode="individual")
    assert out is not None
    assert out["rewards"].tolist() == [0.0, 0.0, 1.0]  # AReaL: only the last call is rewarded
    assert_same_rows(out, areal_batch(client, "individual"))


def test_individual_mode_with_discount_is_areals_apply_reward_discount(qwen: Any) -> None:
    out, (client,), (ep,) = run(qwen, ("7", "6", "5"), mode="individual", gamma=0.9)
    assert out is not None
    torch.testing.assert_close(out["rewards"], torch.tensor([0.81, 0.9, 1.0]))
    assert [c.reward for c in ep.calls] == pytest.approx([0.81, 0.9, 1.0])
    assert_same_rows(out, areal_batch(client, "individual"))  # the client's cache was discounted too


def test_episode_reward_option_keeps_the_old_rule(qwen: Any) -> None:
    out, _, _ = run(qwen, ("7", "6", "5"), mode="individual", rewards="episode")
    assert out is not None and out["rewards"].tolist() == [1.0, 1.0, 1.0]


def test_concat_mode_is_areals_concat_export(qwen: Any) -> None:
    out, (client,), (ep,) = run(qwen, ("7", "6", "5"), template="concat")
    assert out is not None and out["input_ids"].shape[0] == 1  # every turn extends the last exactly
    assert_same_rows(out, areal_batch(client, "concat"))
    last = client.get_interaction(ep.calls[-1].id).model_response
    assert out["input_ids"][0].tolist() == last.input_tokens + last.output_tokens


def test_group_runs_episodes_apart_and_failed_ones_give_none(qwen: Any) -> None:
    out, clients, episodes = run(qwen, ("5",), n_samples=3)
    assert out is not None and out["rewards"].tolist() == [1.0] * 3 and len(clients) == 3
    for client in clients:  # each episode holds exactly its own client's interaction
        (interaction,) = client.export_interactions(style="individual").values()
        (ep,) = [e for e in episodes if client.get_interaction(e.calls[0].id) is not None]
        assert ep.calls[0].prompt_ids.tolist() == interaction.model_response.input_tokens
        assert ep.calls[0].choices[0].ids.tolist() == interaction.model_response.output_tokens

    async def broken(task: Any, model: Any) -> float:
        await model.arun([{"role": "user", "content": "hi"}])
        raise RuntimeError("agent bug")

    out, _, episodes = run(qwen, ("1",), agent=broken, n_samples=2)
    assert out is None and [ep.status for ep in episodes] == [EpisodeStatus.ERROR] * 2


def test_plain_asyncopenai_on_the_embedded_server_gives_server_ids(server: EmbeddedServer) -> None:
    def make_client(engine: Any, qwen: Any) -> AsyncOpenAI:
        return AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0)

    out = asyncio.run(
        arun_episode(None, TASK, make_client=make_client, model="tiny", mode="individual", sampling={"max_tokens": 3, "seed": 1})
    )
    assert out is not None and check_trajectory_format(out)
    n = out["input_ids"].shape[0]
    assert 1 <= n <= arithmetic.MAX_TURNS and out["rewards"].shape == (n,)
    first = ChatTemplate().render(
        [{"role": "system", "content": arithmetic.SYSTEM}, {"role": "user", "content": arithmetic.question(TASK)}]
    )
    assert out["input_ids"][0, : len(first)].tolist() == first
    sampled = out["loss_mask"] == 1
    assert not out["loss_mask"][:, : len(first)].any()
    assert (out["versions"][sampled] == server.weight_version).all() and (out["logprobs"][sampled] < 0).all()
