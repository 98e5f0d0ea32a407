"""An AReaL rollout workflow around an unchanged agent (the arithmetic agent).

In AReaL a workflow's `arun_episode(engine, data)` builds an
`ArealOpenAI(engine=engine, tokenizer=tokenizer)` per episode, runs the agent
on it and returns the padded training tensors. This one does the same through
`rollout`:

    client = make_client(engine, tokenizer)                  # ArealOpenAI in AReaL
    wrapped = recorder.wrap(client)                          # still an AsyncOpenAI
    model = OpenAICompatibleModel(name, async_client=wrapped)
    async with recorder.episode(task_id=..., sample=...) as ep:
        ep.reward = (await arithmetic.episode(data, model))["reward"]
    return areal_tensors(to_areal(episodes, mode="concat"))

ArealOpenAI replies carry no token ids; it caches each call as an
interaction. The recorder reads them back with
`client.get_interaction(reply.id).model_response` (`input_tokens`,
`output_tokens`, `output_logprobs`, `output_versions`), so the records are
AReaL's own engine ids, logprobs and versions (`TokenSource.AREAL`), not a
re-tokenization. With a vLLM/SGLang server and a plain `AsyncOpenAI`
(`python -m examples.areal_workflow` runs one on the embedded server) the
ids come from the server's `return_token_ids` instead (`TokenSource.VLLM`).

The result is a dict of torch tensors (`input_ids`, `loss_mask`, `logprobs`,
`versions`, `attention_mask` [N, L], `rewards` [N]), which AReaL's
`check_trajectory_format` and `concat_padded_tensors` accept; torch is the
optional extra `pip install 'rollout-compat[torch]'`. Rewards follow AReaL:
in "individual" mode only the last call's row gets the episode reward unless
`gamma` discounts it back (AReaL's `apply_reward_discount`);
`rewards="episode"` gives every row the episode reward instead.

`make_client` is injectable so the same workflow runs with AReaL, with a
test double, or with any `AsyncOpenAI`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import sys
from collections.abc import Callable
from typing import Any, Literal

from compat import OpenAICompatibleModel
from rollout import Episode, Recorder
from rollout.demo import arithmetic
from rollout.export import RewardRule, areal_tensors, to_areal

logger = logging.getLogger(__name__)

ClientFactory = Callable[[Any, Any], Any]  # (engine, tokenizer) -> AsyncOpenAI-like client


def areal_client(engine: Any, tokenizer: Any) -> Any:
    """What AReaL itself does: one ArealOpenAI per episode, on the rollout engine."""
    from areal.experimental.openai import ArealOpenAI

    return ArealOpenAI(engine=engine, tokenizer=tokenizer)


class AgentWorkflow:
    """Shaped like AReaL's `RolloutWorkflow`: `await arun_episode(engine, data)` -> tensors.

    Args:
        tokenizer: handed to `make_client` (ArealOpenAI needs the HF tokenizer).
        make_client: `(engine, tokenizer) -> client`; defaults to ArealOpenAI.
        agent: `async (task, model) -> reward | {"reward": ...}`; the arithmetic agent.
        n_samples: episodes per data item (a GRPO group), run concurrently.
        mode: "concat" (one row per leaf of the exact-token-prefix tree, like
            AReaL's "concat" export) or "individual" (one row per call).
        gamma: if set, per-call rewards are discounted like AReaL's
            `apply_reward_discount` (reverse insertion order, once), here and
            in the client's own interaction cache when it has one.
        rewards: "areal" (AReaL's: a row gets the reward of the call it ends
            with, unset ones 0.0, the episode reward on the last call) or
            "episode" (every row gets the episode reward).
        model: the model name the agent's requests carry (ArealOpenAI ignores it).
        sampling: CAMEL-style `model_config_dict` (temperature, max_tokens, ...).
        on_episode: called with each finished `Episode` (for logging or JSONL).
    """

    def __init__(
        self,
        tokenizer: Any = None,
        *,
        make_client: ClientFactory = areal_client,
        agent: Callable[[Any, Any], Any] = arithmetic.episode,
        n_samples: int = 1,
        mode: Literal["concat", "individual"] = "concat",
        gamma: float | None = None,
        rewards: RewardRule = "areal",
        model: str = "default",
        sampling: dict[str, Any] | None = None,
        on_episode: Callable[[Episode], None] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.make_client = make_client
        self.agent = agent
        self.n_samples = n_samples
        self.mode = mode
        self.gamma = gamma
        self.rewards: RewardRule = rewards
        self.model = model
        self.sampling = dict(sampling or {})
        self.on_episode = on_episode
        # Exact ids: vLLM/SGLang return them when asked; ArealOpenAI swallows
        # the extra kwargs and the recorder reads its interaction cache instead.
        # keep_finished=False: episodes are handed back, not accumulated.
        self.recorder = Recorder(
            request_token_ids=True, request_logprobs=True, unscoped="refuse", keep_finished=False
        )

    async def _episode(self, engine: Any, data: dict[str, Any], sample: int) -> Episode:
        client = self.make_client(engine, self.tokenizer)
        model = OpenAICompatibleModel(
            self.model, model_config_dict=self.sampling, async_client=self.recorder.wrap(client)
        )
        task_id = str(data.get("id", data.get("query_id", "")))
        scope = self.recorder.episode(task_id=task_id, sample=sample, task=data)
        ep = scope.episode
        try:
            async with scope:
                result = await self.agent(data, model)
                reward = result.get("reward") if isinstance(result, dict) else result
                ep.reward = float(reward or 0.0)
                if isinstance(result, dict):
                    ep.metadata.update({k: v for k, v in result.items() if k != "reward"})
        except Exception:  # the scope marked the episode failed; assemble() skips it
            logger.warning("episode %s failed: %s", ep.uid, ep.error)
        if ep.calls and not ep.failed:
            # Keep AReaL's own interaction cache in step, for anything that reads it.
            set_last = getattr(client, "set_last_reward", None)
            if callable(set_last):
                set_last(ep.calls[-1].reward if ep.calls[-1].reward is not None else ep.reward)
            if self.gamma is not None:
                ep.discount(self.gamma)
                discount = getattr(client, "apply_reward_discount", None)
                if callable(discount):
                    discount(turn_discount=self.gamma)
        if self.on_episode is not None:
            self.on_episode(ep)
        return ep

    async def arun_episode(self, engine: Any, data: dict[str, Any]) -> dict[str, Any] | None:
        episodes = await asyncio.gather(
            *(self._episode(engine, data, i) for i in range(self.n_samples))
        )
        batch = to_areal(list(episodes), mode=self.mode, rewards=self.rewards)
        if not len(batch["rewards"]):
            return None  # AReaL's convention: nothing to train on (every episode failed)
        return areal_tensors(batch)


async def arun_episode(
    engine: Any, data: dict[str, Any], *, make_client: ClientFactory = areal_client, **options: Any
) -> dict[str, Any] | None:
    """One-call form of `AgentWorkflow(...).arun_episode(engine, data)`."""
    return await AgentWorkflow(make_client=make_client, **options).arun_episode(engine, data)


def main() -> dict[str, Any]:
    """Runs the workflow on the embedded server with a plain AsyncOpenAI (no AReaL, only torch)."""
    if importlib.util.find_spec("torch") is None:  # areal_tensors returns torch tensors
        print("examples/areal_workflow.py needs torch: pip install 'rollout-compat[torch]'",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(2)
    from openai import AsyncOpenAI

    from rollout.embedded import EmbeddedServer

    with EmbeddedServer(seed=0) as srv:

        def make_client(engine: Any, tokenizer: Any) -> Any:
            return AsyncOpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)

        workflow = AgentWorkflow(
            make_client=make_client,
            n_samples=4,
            model=srv.model_name,
            sampling={"temperature": 1.0, "max_tokens": 4},
        )
        batch = asyncio.run(workflow.arun_episode(None, {"id": "add-1-2", "a": 1, "b": 2, "answer": 3}))
    assert batch is not None
    out: dict[str, Any] = {k: list(v.shape) for k, v in batch.items()}
    out["sampled_tokens"] = int(batch["loss_mask"].sum())
    out["rewards"] = batch["rewards"].tolist()
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
