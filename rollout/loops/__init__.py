"""Trainers' own rollout loops running an unchanged `episode(task, model)` function.

- `verl`: the agent loop `rollout_episode` for verl's `AgentLoopWorker` (needs verl);
- `areal`: `EpisodeAgent`, the agent object AReaL's `OpenAIProxyWorkflow` runs, and
  `TokenRouteEngine`, an AReaL engine over a vLLM-format token route (the embedded server);
- `rllm`: `rllm_flow`, an rLLM rollout function, and `to_rllm_traces`;
- `hf_model`: an offline Hugging Face directory for the embedded policy (what verl and
  AReaL load as the model's tokenizer).

Each name loads its module on first use: verl and AReaL are imported only where used.
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

_WHERE = {
    "AGENT_NAME": "verl",
    "EmbeddedLLMClient": "verl",
    "EpisodeAgentLoop": "verl",
    "agent_loop_entry": "verl",
    "episodes_of": "verl",
    "generate": "verl",
    "task_batch": "verl",
    "verl_config": "verl",
    "write_agent_loop_config": "verl",
    "EpisodeAgent": "areal",
    "TokenRouteEngine": "areal",
    "rllm_flow": "rllm",
    "to_rllm_traces": "rllm",
    "model_dir": "hf_model",
    "load_hf_tokenizer": "hf_model",
}
_LAZY = frozenset(_WHERE)
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> _typing.Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'rollout.loops' has no attribute {name!r}")
    loaded = _importlib.import_module(f"rollout.loops.{module}")
    value = getattr(loaded, "load_tokenizer" if name == "load_hf_tokenizer" else name)
    globals()[name] = value
    return value
