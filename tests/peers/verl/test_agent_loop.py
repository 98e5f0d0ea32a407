"""verl 0.9.1's own `AgentLoopWorker` running an unchanged episode function as its rollout.

The worker is built as verl builds it (verl/experimental/agent_loop/agent_loop.py:491:
`AgentLoopWorker(config, llm_client)`, config composed by hydra from verl's own
`ppo_trainer.yaml`), with our loop registered through verl's
`rollout.agent.agent_loop_config_path` YAML, over a Hugging Face directory built
offline (cl100k from tiktoken's ranks, the embedded chat template). Its `llm_client`
is an `LLMServerClient` whose `generate` calls the embedded torch policy's token
route. verl's own `generate_sequences` + `_postprocess` make the batch; the checks
compare it with `to_verl` of the same recorded episodes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import verl  # noqa: F401  (the peer: a failed import fails this tier)
from verl.experimental.agent_loop import AgentLoopWorker
from verl.workers.rollout.llm_server import LLMServerClient
from verl.workers.rollout.replica import TokenOutput

from rollout.collection import load_tasks
from rollout.embedded import EmbeddedServer
from rollout.embedded.template import ChatTemplate
from rollout.embedded.torch_policy import TorchPolicy, TorchPolicyConfig
from rollout.export import to_verl
from rollout.loops import hf_model
from rollout.loops.verl import (
    AGENT_NAME,
    EmbeddedLLMClient,
    MultiRowEpisodeError,
    agent_loop_entry,
    episodes_of,
    generate,
    quiet_verl_logs,
    run_sync,
    task_batch,
    verl_config,
    write_agent_loop_config,
)

pytestmark = pytest.mark.peers

HERE = "tests.peers.verl.test_agent_loop"
TASKS = [task for _, task in load_tasks("examples/arithmetic.jsonl")][:4]
P, R = 96, 48


@pytest.fixture(scope="module")
def model_path() -> Path:
    return hf_model.model_dir()


@pytest.fixture(scope="module")
def tokenizer(model_path: Path) -> Any:
    return hf_model.load_tokenizer(model_path)


def test_the_tokenizer_renders_what_the_embedded_template_renders(tokenizer: Any) -> None:
    template = ChatTemplate()
    messages = [
        {"role": "system", "content": "You add numbers."},
        {"role": "user", "content": "What is 12 + 7?  héllo 你好\n\n"},
        {"role": "assistant", "content": "19"},
        {"role": "user", "content": "Wrong.", "name": "checker"},
    ]
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"b": 1, "a": 2}}}]
    for kwargs in ({}, {"tools": tools}):
        for gen in (True, False):
            ours = template.render(messages, add_generation_prompt=gen, **kwargs)
            got = tokenizer.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True, **kwargs)
            assert list(got["input_ids"] if not isinstance(got, list) else got) == ours
    assert tokenizer.eos_token_id == template.end_id == tokenizer.pad_token_id
    assert tokenizer.decode([100258, 15, 100257]) == "<|fim_prefix|>0<|endoftext|>"


def make_worker(tmp: Path, model_path: Path, url: str | None, entries: list[dict[str, Any]],
                client: LLMServerClient | None = None, p: int = P, r: int = R) -> AgentLoopWorker:  # fmt: skip
    loops = write_agent_loop_config(tmp / f"loops-{len(list(tmp.iterdir()))}.yaml", entries)
    config = verl_config(model_path, prompt_length=p, response_length=r, agent_loop_config=loops)
    quiet_verl_logs()
    return AgentLoopWorker(config, client if client is not None else EmbeddedLLMClient(config, str(url)))


@pytest.fixture(scope="module")
def served() -> Any:
    policy = TorchPolicy(TorchPolicyConfig(seed=3))
    with EmbeddedServer(policy.copy()) as srv:
        yield policy, srv


def test_verls_worker_rows_equal_to_verl_of_the_same_episodes(
    tmp_path: Path, model_path: Path, tokenizer: Any, served: Any
) -> None:
    policy, srv = served
    entry = agent_loop_entry("rollout.demo.arithmetic:episode", sampling={"max_tokens": 2})
    worker = make_worker(tmp_path, model_path, srv.base_url, [entry])
    batch = task_batch(TASKS, 3)
    out = run_sync(generate(worker, batch))

    episodes = episodes_of(out)
    assert len(out) == len(episodes) == 12
    assert [(e.task_id, e.sample) for e in episodes] == [(t["id"], s) for t in TASKS for s in range(3)]
    for e in episodes:  # the first call as messages (verl's template), every later one as tokens
        assert e.status.value in ("completed", "truncated") and e.reward in (0.0, 1.0)
        assert [c.sent_as for c in e.calls] == ["messages"] + ["tokens"] * (len(e.calls) - 1)
        assert all(c.fallback is None for c in e.calls[1:]) and e.exact
    assert sum(len(e.calls) for e in episodes) > len(episodes)  # some episodes took several turns
    nt = out.non_tensor_batch
    assert list(nt["rollout_rows"]) == [1] * 12 and list(nt["rollout_failed"]) == [0] * 12
    assert list(nt["rollout_truncated"]) == [0] * 12 and all(nt["rollout_exact"])

    # What to_verl makes of the same episodes, at verl's widths and pad id: the same tensors.
    want = to_verl(episodes, pad_id=tokenizer.pad_token_id, max_prompt_len=P, max_response_len=R, uid="episode")
    got = out.batch
    for key in ("prompts", "responses", "response_mask", "input_ids", "attention_mask", "rm_scores",
                "rollout_log_probs"):  # fmt: skip
        assert torch.equal(got[key], torch.from_numpy(want["tensors"][key])), key
    # verl's positions keep counting over the response padding (compute_position_id_with_mask);
    # to_verl writes 0 there. On every attended token they agree.
    att = got["attention_mask"].bool()
    assert torch.equal(got["position_ids"][att], torch.from_numpy(want["tensors"]["position_ids"])[att])
    assert list(nt["uid"]) == list(want["non_tensors"]["uid"])
    rewards = got["rm_scores"].sum(-1).tolist()
    assert rewards == [e.reward for e in episodes]

    # The recorded logprobs are the served model's own: recomputed by the trainer's forward.
    with torch.no_grad():
        recomputed, _ = policy.response_logprobs(got["input_ids"], got["attention_mask"], got["position_ids"],
                                                 got["responses"], 1.0, 1.0)  # fmt: skip
    mask = got["response_mask"].bool()
    assert int(mask.sum()) > 12
    assert float((recomputed - got["rollout_log_probs"]).abs()[mask].max()) <= 1e-5


class Scripted(LLMServerClient):
    """An `LLMServerClient` answering from a script of texts (a tool call, then an answer)."""

    def __init__(self, config: Any, tokenizer: Any, texts: list[str]) -> None:
        super().__init__(config, load_balancer_handle=None)
        self.tokenizer, self.texts, self.prompts = tokenizer, texts, []
        self.params: list[dict[str, Any]] = []

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any],
                       **kwargs: Any) -> TokenOutput:  # type: ignore[override]  # fmt: skip
        self.prompts.append(list(prompt_ids))
        self.params.append(dict(sampling_params))
        text = self.texts[(len(self.prompts) - 1) % len(self.texts)]
        ids = [*self.tokenizer.encode(text, add_special_tokens=False), self.tokenizer.eos_token_id]
        return TokenOutput(token_ids=ids, log_probs=[-0.5] * len(ids), extra_fields={"global_steps": 4})


TOOLS = [{"type": "function", "function": {"name": "add", "description": "a + b", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}]  # fmt: skip


async def tool_episode(task: dict, model: Any) -> float:
    """A tool-using agent: call `add`, read the result, answer."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": f"What is {task['a']} + {task['b']}?"}]
    reply = (await model.arun(messages, tools=TOOLS)).choices[0]
    calls = reply.message.tool_calls or []
    messages.append(reply.message.model_dump(exclude_none=True))
    for call in calls:
        args = json.loads(call.function.arguments)
        messages.append({"role": "tool", "tool_call_id": call.id, "content": str(args["a"] + args["b"])})
    final = (await model.arun(messages, tools=TOOLS)).choices[0].message.content or ""
    return float(final.strip() == str(task["answer"]))


def test_tool_calls_are_parsed_by_verls_parser_and_tool_tokens_are_masked(
    tmp_path: Path, model_path: Path, tokenizer: Any
) -> None:
    texts = ['<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>', "3"]
    config = verl_config(model_path, prompt_length=P * 4, response_length=R * 4)
    script = Scripted(config, tokenizer, texts)
    entry = agent_loop_entry(f"{HERE}:tool_episode", sampling={"max_tokens": 40})
    worker = make_worker(tmp_path, model_path, None, [entry], client=script, p=P * 4, r=R * 4)
    out = run_sync(generate(worker, task_batch(TASKS[:1], 1)))
    (episode,) = episodes_of(out)
    assert episode.reward == 1.0  # the agent saw the parsed call, ran the tool, then the answer
    first = episode.calls[0].choices[0]
    assert first.finish_reason == "tool_calls"
    assert first.message["tool_calls"][0]["function"] == {"name": "add", "arguments": '{"a": 1, "b": 2}'}
    assert [c.sent_as for c in episode.calls] == ["messages", "tokens"]
    # The second prompt is the first prompt + the sampled ids + the tool turn (the bridge).
    p0, p1 = script.prompts
    sampled = first.ids.tolist()
    assert p1[: len(p0) + len(sampled)] == p0 + sampled
    bridge = p1[len(p0) + len(sampled) :]
    assert tokenizer.decode(bridge) == "<|fim_prefix|>tool<|fim_middle|>3<|endoftext|><|fim_prefix|>assistant<|fim_middle|>"
    # One row: sampled tokens trained (mask 1, their logprobs), the bridge not (mask 0).
    mask = out.batch["response_mask"][0]
    n1, n2 = len(sampled), len(episode.calls[1].choices[0].ids)
    assert mask[: n1 + len(bridge) + n2].tolist() == [1] * n1 + [0] * len(bridge) + [1] * n2
    assert int(mask.sum()) == n1 + n2
    lp = out.batch["rollout_log_probs"][0]
    assert lp[mask.bool()].tolist() == [-0.5] * (n1 + n2)
    # verl's sampling settings reached generate (temperature from verl's config), the agent's max_tokens too
    assert script.params[0]["max_tokens"] == 40 and script.params[0]["logprobs"] is True
    assert script.params[0]["temperature"] == config.actor_rollout_ref.rollout.temperature
    # Versions: verl's global_steps became the calls' version.
    assert {int(v) for c in episode.calls for v in c.choices[0].versions.to_array()} == {4}


async def edits_history(task: dict, model: Any) -> float:
    """Rewrites its first message before the second call: that call cannot extend the first."""
    first = await model.arun([{"role": "user", "content": "Say a number."}])
    await model.arun([{"role": "user", "content": "Say another number."},
                      {"role": "assistant", "content": first.choices[0].message.content or ""},
                      {"role": "user", "content": "Again."}])  # fmt: skip
    return 1.0


async def two_turns(task: dict, model: Any) -> float:
    messages = [{"role": "user", "content": "Say a number."}]
    reply = (await model.arun(messages)).choices[0].message.content or ""
    await model.arun([*messages, {"role": "assistant", "content": reply}, {"role": "user", "content": "Again."}])
    return 1.0


async def raises(task: dict, model: Any) -> float:
    await model.arun([{"role": "user", "content": "Say a number."}])
    raise RuntimeError("the environment broke")


def test_what_cannot_be_one_row_is_counted_never_cut_silently(tmp_path: Path, model_path: Path, served: Any) -> None:
    _, srv = served
    entries = [
        agent_loop_entry(f"{HERE}:edits_history", name="edits", sampling={"max_tokens": 2}),
        agent_loop_entry(f"{HERE}:raises", name="raises", sampling={"max_tokens": 2}),
        agent_loop_entry(f"{HERE}:two_turns", name="long", sampling={"max_tokens": 2}),
        agent_loop_entry(f"{HERE}:edits_history", name="strict", multi_row="error", sampling={"max_tokens": 2}),
    ]
    worker = make_worker(tmp_path, model_path, srv.base_url, entries, r=4)
    rows = [task_batch(TASKS[:1], 1, agent_name=name) for name in ("edits", "raises", "long")]
    from verl import DataProto

    out = run_sync(generate(worker, DataProto.concat(rows)))
    nt = out.non_tensor_batch
    edited, _failed, long = episodes_of(out)
    # An edited history: the second call went as messages, two rows; the last call's row is kept.
    assert [c.sent_as for c in edited.calls] == ["messages", "messages"]
    assert edited.calls[1].fallback == "edited history"
    assert nt["rollout_rows"][0] == 2 and nt["rollout_dropped_tokens"][0] == len(edited.calls[0].choices[0].ids)
    assert nt["rollout_later_calls_as_messages"][0] == 1
    kept = out.batch["responses"][0][out.batch["response_mask"][0].bool()].tolist()
    assert kept == edited.calls[1].choices[0].ids.tolist()
    # A failed episode: a row that trains nothing, reward 0, the reason kept.
    assert nt["rollout_failed"][1] == 1 and "the environment broke" in nt["rollout_error"][1]
    assert int(out.batch["response_mask"][1].sum()) == 0 and float(out.batch["rm_scores"][1].sum()) == 0.0
    # A response longer than verl's response_length (4): cut, and counted.
    assert [c.sent_as for c in long.calls] == ["messages", "tokens"]
    assert nt["rollout_truncated"][2] == 1 and nt["rollout_truncated"][0] == 0
    full = len(long.calls[1].prompt_ids) + len(long.calls[1].choices[0].ids) - len(long.calls[0].prompt_ids)
    assert nt["rollout_dropped_tokens"][2] == len(long.calls[1].choices[0].ids) and full > 4
    assert out.batch["responses"].shape[1] == 4
    # multi_row: error refuses the episode instead of picking a row.
    with pytest.raises(Exception, match="rows") as info:
        run_sync(generate(worker, task_batch(TASKS[:1], 1, agent_name="strict")))
    assert isinstance(info.value, MultiRowEpisodeError) or isinstance(info.value.__cause__, MultiRowEpisodeError)
    assert AGENT_NAME == "rollout_episode"
    assert np.all(out.batch["attention_mask"].sum(-1).numpy() > 0)


async def even(task: dict, model: Any) -> float:
    """Two turns; reward 1 when the last reply is an even number (about half are)."""
    messages = [{"role": "user", "content": f"Say an even number, task {task['id']}."}]
    for _ in range(2):
        reply = (await model.arun(messages)).choices[0].message.content or ""
        messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "Again."}]
    return float(reply.strip().isdigit() and int(reply) % 2 == 0)


def test_one_training_iteration_collected_by_verls_agent_loop() -> None:
    from rollout.embedded import push_weights
    from rollout.errors import OffPolicyError
    from rollout.training import VerlTrainer

    small = ["collect.samples_per_task=4", "trainer.mini_batches=2", "trainer.rollout=agent_loop"]
    with VerlTrainer(overrides=small, tasks=TASKS[:3], agent=even) as t:
        assert t.worker is not None and type(t.worker).__name__ == "AgentLoopWorker"
        before = {k: v.copy() for k, v in t.policy.get_weights().items()}
        stats = t.iteration()
        assert stats["episodes"] == stats["rows"] == 12 and stats["calls"] == 24
        assert stats["later_calls_as_messages"] == 0 and stats["multi_row_episodes"] == 0
        assert stats["truncated_episodes"] == stats["failed_episodes"] == stats["dropped_tokens"] == 0
        assert stats["sampled_tokens"] == 24 and 0 <= stats["max_logprob_diff"] <= 1e-5
        after = t.policy.get_weights()
        assert all(not np.array_equal(before[k], after[k]) for k in before)  # every tensor stepped
        assert t.server.weight_version() == 1
        episodes, data = t.collect_batch()  # the next batch: the new version, verl's own rows
        assert data is not None and len(data) == 12
        assert {int(v) for e in episodes for c in e.calls for v in c.choices[0].versions.to_array()} == {1}
        other = TorchPolicy(TorchPolicyConfig(seed=123))
        push_weights(t.server.url, other.get_weights(), 1)  # behind the trainer's back
        with pytest.raises(OffPolicyError, match="recorded logprobs differ"):
            t.iteration(step=False)


def test_the_one_agent_example_runs_under_verl() -> None:
    from examples.one_agent_three_trainers import TASKS as EXAMPLE_TASKS
    from examples.one_agent_three_trainers import run_verl

    with EmbeddedServer(model_name="tiny") as srv:
        out = run_verl(srv.url)
    assert out["rows"] == 2 * len(EXAMPLE_TASKS) and len(out["rewards"]) == out["rows"]
    assert out["trained_tokens"] >= out["rows"] and out["later_calls_as_tokens"] >= 0
