"""One episode function, run as the rollout of verl, AReaL and rLLM, unchanged.

    async def episode(task, model) -> reward      # rollout.demo.arithmetic:episode, as `rollout collect` runs it

- verl 0.9.1: verl's own `AgentLoopWorker.generate_sequences` runs it as the agent loop
  ``rollout_episode`` (`rollout.loops.verl`); the result is verl's own padded batch.
- AReaL 1.0.4: AReaL's own `OpenAIProxyWorkflow` runs it as an agent object
  (`rollout.loops.areal.EpisodeAgent`) against AReaL's own proxy, which records the tokens.
- rLLM (main @ 9beb6e0): it is an `@rllm.rollout` flow (`rollout.loops.rllm.rllm_flow`).

Everything runs offline on the embedded server (the numpy policy, cl100k ids), each part in
the environment that has its trainer (tests/peers/setup.sh builds them):

    PYTHONPATH=$PWD ~/.cache/rollout-compat/peers/venvs/verl/bin/python -m examples.one_agent_three_trainers verl
    PYTHONPATH=$PWD ~/.cache/rollout-compat/peers/venvs/areal/bin/python -m examples.one_agent_three_trainers areal
    python -m examples.one_agent_three_trainers rllm     # rLLM is not on PyPI: a stand-in config
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rollout.collection import load_tasks
from rollout.embedded import EmbeddedServer

EPISODE = "rollout.demo.arithmetic:episode"
TASKS = [task for _, task in load_tasks("examples/arithmetic.jsonl")][:4]
SAMPLING = {"max_tokens": 2}


def run_verl(url: str) -> dict[str, Any]:
    """verl: the agent loop, in verl's own worker, built from verl's own config."""
    from verl.experimental.agent_loop import AgentLoopWorker

    from rollout.loops import (
        EmbeddedLLMClient,
        agent_loop_entry,
        episodes_of,
        generate,
        model_dir,
        task_batch,
        verl_config,
        write_agent_loop_config,
    )  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        loops = write_agent_loop_config(Path(tmp) / "loops.yaml", [agent_loop_entry(EPISODE, sampling=SAMPLING)])
        config = verl_config(model_dir(), prompt_length=128, response_length=64, agent_loop_config=loops)
        worker = AgentLoopWorker(config, EmbeddedLLMClient(config, url))
        out = asyncio.run(generate(worker, task_batch(TASKS, 2)))
    return {
        "rows": len(out), "rewards": out.batch["rm_scores"].sum(-1).tolist(),
        "trained_tokens": int(out.batch["response_mask"].sum()),
        "later_calls_as_tokens": sum(c.sent_as == "tokens" for e in episodes_of(out) for c in e.calls[1:]),
    }  # fmt: skip


def run_areal(url: str) -> dict[str, Any]:
    """AReaL: the agent object in AReaL's own proxy workflow, AReaL's proxy recording the tokens."""
    import socket
    import threading
    import time

    import uvicorn
    from areal.experimental.openai import ArealOpenAI
    from areal.experimental.openai.proxy import proxy_rollout_server as proxy
    from areal.experimental.openai.proxy.server import DEFAULT_ADMIN_API_KEY
    from areal.experimental.openai.proxy.workflow import OpenAIProxyWorkflow
    from areal.infra import workflow_context
    from areal.infra.workflow_context import WorkflowContext
    from areal.infra.workflow_executor import check_trajectory_format

    from rollout.loops import EpisodeAgent, TokenRouteEngine, load_hf_tokenizer

    engine = TokenRouteEngine(url)
    proxy._engine = engine  # what the proxy's /create_engine + /call "initialize" set up
    proxy._openai_client = ArealOpenAI(engine=engine, tokenizer=load_hf_tokenizer(), chat_template_type="concat")
    proxy._admin_api_key = DEFAULT_ADMIN_API_KEY
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(proxy.app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    workflow = OpenAIProxyWorkflow(
        mode="inline", agent=EpisodeAgent(EPISODE, sampling=SAMPLING),
        proxy_addr=f"http://127.0.0.1:{port}", export_style="concat",
    )  # fmt: skip

    async def main() -> list[Any]:
        out = []
        for i, task in enumerate(TASKS):
            workflow_context.set(WorkflowContext(task_id=i))
            out.append(await workflow.arun_episode(engine, task))
        return out

    try:
        trajectories = asyncio.run(main())
    finally:
        server.should_exit = True
    assert all(check_trajectory_format(t) for t in trajectories)
    return {"episodes": len(trajectories), "rows": [len(t) for t in trajectories],
            "rewards": [list(t.values())[-1].reward for t in trajectories]}  # fmt: skip


def run_rllm(url: str) -> dict[str, Any]:
    """rLLM: the episode as an `@rllm.rollout` flow (rLLM's own types when it is installed)."""
    from rollout.loops import rllm_flow

    try:
        import rllm

        flow: Any = rllm.rollout(name="solver")(rllm_flow(EPISODE, sampling=SAMPLING))
        config_cls: Any = rllm.types.AgentConfig
    except ImportError:  # not on PyPI: the same call shape, with stand-ins for its types
        flow, config_cls = rllm_flow(EPISODE, sampling=SAMPLING, trajectory=SimpleNamespace), SimpleNamespace
    results = []
    for i, task in enumerate(TASKS):
        config = config_cls(base_url=f"{url}/v1", model="tiny", session_uid=f"session-{i}")
        run = getattr(flow, "arun", flow)
        results.append(asyncio.run(run(task, config)))
    rewards = [r.trajectories[0].reward if hasattr(r, "trajectories") else r.reward for r in results]
    return {"flows": len(results), "rewards": rewards}


def main(argv: list[str] | None = None) -> None:
    which = (argv if argv is not None else sys.argv[1:]) or ["rllm"]
    runners = {"verl": run_verl, "areal": run_areal, "rllm": run_rllm}
    with EmbeddedServer(model_name="tiny") as server:
        for name in which:
            print(name, runners[name](server.url))


if __name__ == "__main__":
    main()
