"""verl's own update on our exports: a real transformer, trained offline, end to end.

One loop, each iteration:

1. collect a batch with the unchanged agent on the embedded server, which
   serves a `TorchPolicy` (a tiny transformers Qwen3);
2. export it with `to_verl` and load it into verl's `DataProto`;
3. with verl 0.9.1's own functions, imported from the installed package:
   GRPO outcome advantages (`compute_grpo_outcome_advantage`, per episode
   through `rollout.export.verl_advantage.episode_grpo`) and the policy loss
   with its aggregation (`get_policy_loss_fn("vanilla")`, which calls
   `agg_loss`), configured by verl's `ActorConfig`;
4. take an optimizer step and push the weights through the server's
   `/update_weights` endpoint.

Before any step it recomputes the old logprobs as verl's trainer does
(`_compute_old_log_prob`: a no-grad forward over the padded batch) and
checks them against the recorded ones: the max |recorded - recomputed| is
reported every iteration and past `trainer.logprob_tolerance` the run stops
(`OffPolicyError`). Every call must carry the version just pushed.

Needs torch, transformers and verl (docs/training.md); `rollout.training`
imports this module only when asked for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import select
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from verl import DataProto
from verl.trainer.config.algorithm import AlgoConfig
from verl.trainer.ppo.core_algos import agg_loss, get_adv_estimator_fn, get_policy_loss_fn
from verl.workers.config import ActorConfig

import rollout.export.verl_advantage  # noqa: F401  (registers episode_grpo / episode_rloo with verl)
from rollout.collection import Collector
from rollout.collection.config import (
    CollectConfig,
    apply_overrides,
    deep_merge,
    load_yaml_config,
    validate,
)
from rollout.collection.run import require_tasks
from rollout.demo import TRAIN_VERL_CONFIG
from rollout.embedded import push_weights
from rollout.embedded.torch_policy import TorchPolicy, TorchPolicyConfig
from rollout.errors import ConfigError, OffPolicyError
from rollout.export import to_verl
from rollout.tracking import TrackingSpec, TrainLog, open_tracker
from rollout.training.reinforce import check_versions, plot_rewards


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainerSettings(_Strict):
    """The update: verl's names where verl has the setting (actor / algorithm config)."""

    iterations: int = Field(default=60, ge=1)
    target: float | None = 0.8
    """Stop once a batch's mean reward reaches this (None: run every iteration)."""
    lr: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    ppo_epochs: int = Field(default=1, ge=1)
    mini_batches: int = Field(default=1, ge=1)
    """Optimizer steps per epoch (verl: train_batch_size / ppo_mini_batch_size)."""
    adv_estimator: str = "episode_grpo"
    """A name in verl's estimator registry; ``episode_*`` group rows by episode."""
    norm_adv_by_std_in_grpo: bool = True
    policy_loss: str = "vanilla"
    loss_agg_mode: str = "token-mean"
    clip_ratio: float = 0.2  # these four: verl's defaults (trainer/config/actor/actor.yaml)
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2
    clip_ratio_c: float = 3.0
    entropy_coeff: float = Field(default=0.0, ge=0)
    """Entropy bonus, aggregated by verl's `agg_loss` as verl's actor loss does."""
    logprob_tolerance: float = Field(default=1e-4, gt=0)
    """Largest |recorded - recomputed| logprob accepted (float32 rounding is ~1e-6)."""
    threads: int = Field(default=1, ge=1)
    """torch threads for the update; collection runs the server's small forwards on 1."""
    seed: int = 0
    """Mini-batch shuffling."""
    rollout: Literal["collector", "agent_loop"] = "collector"
    """How a batch is collected: our `Collector`, or verl's own `AgentLoopWorker` running the
    agent as its agent loop (`rollout.loops.verl`, agent loop ``rollout_episode``)."""
    prompt_length: int = Field(default=128, ge=1)
    """agent_loop: verl's `rollout.prompt_length` (rows are padded to it, then compacted)."""
    response_length: int = Field(default=128, ge=1)
    """agent_loop: verl's `rollout.response_length`."""


class TrainVerlConfig(_Strict):
    """`configs/train_verl.yaml`: what to collect, the model, and the update."""

    collect: CollectConfig = Field(default_factory=CollectConfig)
    model: TorchPolicyConfig = Field(default_factory=TorchPolicyConfig)
    trainer: TrainerSettings = Field(default_factory=TrainerSettings)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    """Experiment trackers for the training run (docs/trackers.md); the same key as `rollout train`'s."""

    @model_validator(mode="after")
    def _one_tracking_block(self) -> TrainVerlConfig:
        # The collector inside the trainer does not log on its own: a block there would do nothing.
        if self.collect.tracking.enabled:
            raise ValueError("set trackers in the top-level `tracking` block, not in `collect.tracking`")
        return self


def load_train_config(
    config: TrainVerlConfig | str | Path | None = None,
    overrides: Iterable[str] = (),
    **settings: Any,
) -> TrainVerlConfig:
    """A YAML file (default: the shipped arithmetic run), ``key=value`` overrides, then settings.

    Settings are taken as `rollout.training.train` takes them: a trainer setting by
    name (``lr=1e-3``, ``iterations=5``) and any other name a collect setting
    (``samples_per_task=8``).
    """
    if isinstance(config, TrainVerlConfig):
        data = apply_overrides(config.model_dump(), list(overrides))
    else:
        path = config if config is not None else TRAIN_VERL_CONFIG
        data = load_yaml_config(TrainVerlConfig, path, overrides, what="train config").model_dump()
    for key, value in settings.items():
        section = "trainer" if key in TrainerSettings.model_fields else "collect"
        data[section] = deep_merge(data.get(section) or {}, {key: value})
    return validate(TrainVerlConfig, data, what="train config")


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a phase on ``n`` intra-op threads (one per tiny forward; all for the batch)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ServerProcess:
    """The embedded server serving a `TorchPolicy`, in its own process.

    Its own process because the collector's client is itself CPU-bound
    (~3 ms per recorded call): on one interpreter the two share the GIL and
    one core; apart, each gets a core. The trainer reaches it only over HTTP,
    as it would a vLLM server: replies, ``/update_weights`` and ``/health``.
    A plain subprocess (``python -m rollout.embedded.torch_policy``), so a
    caller's script needs no ``if __name__ == "__main__"`` guard.
    """

    def __init__(self, config: TorchPolicyConfig, model_name: str, seed: int) -> None:
        self.args = [json.dumps(dataclasses.asdict(config)), "--model", model_name, "--seed", str(seed)]
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None

    def start(self, timeout_s: float = 120.0) -> str:
        """Start it; its root URL once it listens."""
        self._proc = proc = subprocess.Popen(
            [sys.executable, "-m", "rollout.embedded.torch_policy", *self.args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the torch policy server did not start (exit code {proc.returncode})")
        self.url = line.strip()
        return self.url

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def weight_version(self) -> int:
        """The version the server reports (``GET /health``)."""
        with urllib.request.urlopen(f"{self.url}/health", timeout=30) as resp:
            return int(json.loads(resp.read())["weight_version"])

    def stop(self) -> None:
        """Close its stdin (it stops on EOF); kill it if it does not within 10 s."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def _masked_max_abs(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    diff = (a - b).abs().masked_select(mask)
    return float(diff.max()) if diff.numel() else 0.0


class VerlTrainer:
    """The policy, its server and the collector, across iterations (a context manager)."""

    def __init__(
        self,
        config: TrainVerlConfig | str | Path | None = None,
        *,
        overrides: Iterable[str] = (),
        tasks: Any = None,
        agent: Any = None,
        **settings: Any,
    ) -> None:
        """``tasks`` and ``agent`` (an ``episode(task, model)`` callable) replace the config's;
        ``settings`` as `load_train_config` takes them."""
        self.config = cfg = load_train_config(config, overrides, **settings)
        self.agent = agent
        backend = cfg.collect.backend
        if backend.kind != "embedded":
            raise ConfigError("the verl trainer trains the embedded torch policy: backend.kind must be 'embedded'")
        sampling = backend.sampling
        self.temperature = float(sampling.get("temperature", 1.0))
        self.top_p = float(sampling.get("top_p", 1.0))
        self.tasks = require_tasks(tasks, cfg.collect)
        t = cfg.trainer
        self.policy = TorchPolicy(cfg.model)
        self.optimizer = torch.optim.AdamW(
            self.policy.parameters(), lr=t.lr, weight_decay=t.weight_decay
        )
        self.actor = ActorConfig(
            strategy="fsdp",  # required by ActorConfig; nothing here is sharded
            rollout_n=cfg.collect.samples_per_task,
            ppo_micro_batch_size_per_gpu=1,
            ppo_epochs=t.ppo_epochs,
            clip_ratio=t.clip_ratio,
            clip_ratio_low=t.clip_ratio_low,
            clip_ratio_high=t.clip_ratio_high,
            clip_ratio_c=t.clip_ratio_c,
            loss_agg_mode=t.loss_agg_mode,
            entropy_coeff=t.entropy_coeff,
        )
        self.algorithm = AlgoConfig(
            adv_estimator=t.adv_estimator, norm_adv_by_std_in_grpo=t.norm_adv_by_std_in_grpo
        )
        self.advantage_fn = get_adv_estimator_fn(t.adv_estimator)
        self.loss_fn = get_policy_loss_fn(t.policy_loss)
        self._shuffle = torch.Generator().manual_seed(t.seed)
        self.server = ServerProcess(cfg.model, backend.model, backend.embedded.seed)
        self.collector: Collector | None = None
        self.tracked: TrainLog | None = None
        self.worker: Any = None  # verl's AgentLoopWorker (trainer.rollout: agent_loop)
        self._workdir: Any = None
        self.version = 0
        self.history: list[dict[str, Any]] = []

    def __enter__(self) -> VerlTrainer:
        url = self.server.start()
        try:
            # Version 0 is the trainer's own initial weights, through the endpoint.
            push_weights(url, self.policy.get_weights(), self.version)
            if self.config.trainer.rollout == "agent_loop":
                self.worker = self._agent_loop_worker()
            self.collector = Collector(
                self.config.collect,
                agent=self.agent,
                # The server is ours (it serves the torch policy): reach it as a remote one.
                backend={"kind": "remote", "urls": [self.server.base_url]},
            ).start()
        except BaseException:
            self.server.stop()
            raise
        cfg = self.config
        tracker = open_tracker(cfg.tracking, "train-verl", cfg.model_dump(mode="json"))
        self.tracked = TrainLog(tracker, cfg.tracking) if tracker is not None else None
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.tracked is not None:
                self.tracked.close()
            if self.collector is not None:
                self.collector.close()
        finally:
            self.server.stop()
            if self._workdir is not None:
                self._workdir.cleanup()

    def _agent_loop_worker(self) -> Any:
        """verl's `AgentLoopWorker`, built as verl builds it (hydra-composed `ppo_trainer` config,
        our agent loop from its YAML), its `llm_client` on this server's token route."""
        import tempfile

        from verl.experimental.agent_loop import AgentLoopWorker

        from rollout.loops import hf_model
        from rollout.loops.verl import (
            EmbeddedLLMClient,
            agent_loop_entry,
            quiet_verl_logs,
            verl_config,
            write_agent_loop_config,
        )

        cfg, t = self.config, self.config.trainer
        agent = self.agent if self.agent is not None else cfg.collect.agent
        if agent is None:
            raise ConfigError("trainer.rollout agent_loop needs an agent: collect.agent or agent=")
        if not isinstance(agent, str):  # a function: verl's loop imports it by name
            agent = f"{agent.__module__}:{agent.__qualname__}"
        asked = dict(cfg.collect.backend.sampling)
        verl_side = {k: asked.pop(k) for k in ("temperature", "top_p", "top_k") if k in asked}
        self._workdir = tempfile.TemporaryDirectory(prefix="rollout-agent-loop-")
        loops = write_agent_loop_config(
            Path(self._workdir.name) / "agent_loops.yaml",
            # No per-episode timeout: verl starts every row of the batch at once (agent_loop.py:
            # 642-654), so a row's wall time includes its wait for the others' generations.
            [agent_loop_entry(agent, model=cfg.collect.backend.model, sampling=asked)],
        )  # fmt: skip
        config = verl_config(
            hf_model.model_dir(cfg.model),
            prompt_length=t.prompt_length,
            response_length=t.response_length,
            agent_loop_config=loops,
            overrides=[f"actor_rollout_ref.rollout.{k}={v}" for k, v in verl_side.items()],
        )
        quiet_verl_logs()
        return AgentLoopWorker(config, EmbeddedLLMClient(config, self.server.url, timeout_s=600.0))

    # ---------------------------------------------------------------- steps

    def collect(self) -> list[Any]:
        """One batch of recorded episodes (whichever way `trainer.rollout` collects)."""
        return self.collect_batch()[0]

    def collect_batch(self) -> tuple[list[Any], DataProto | None]:
        """The episodes, and verl's own batch when verl's agent loop collected them."""
        assert self.collector is not None, "use VerlTrainer as a context manager"
        data = None
        with torch_threads(1):
            if self.worker is not None:
                from rollout.loops.verl import compact, episodes_of, generate, run_sync, task_batch

                batch = task_batch(self.tasks, self.config.collect.samples_per_task)
                data = compact(run_sync(generate(self.worker, batch)))
                episodes = episodes_of(data)
            else:
                episodes = self.collector.run_batch(self.tasks)
        check_versions(episodes, self.version)
        return episodes, data

    def export(self, episodes: list[Any]) -> DataProto:
        by_episode = self.config.trainer.adv_estimator.startswith("episode_")
        batch = to_verl(episodes, uid="episode" if by_episode else "task")
        if "rollout_log_probs" not in batch["tensors"]:
            raise OffPolicyError("some rows have no recorded logprobs: nothing to check the update against")
        return DataProto.from_dict(**batch)

    def _checked(self, data: DataProto) -> DataProto:
        """verl's agent-loop batch as the update takes it: logprobs on every row."""
        if data.batch.get("rollout_log_probs", None) is None:
            raise OffPolicyError("verl's batch has no rollout_log_probs: nothing to check the update against")
        return data

    def logprobs(self, data: DataProto) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's (log_prob, entropy) for every response token of the batch, [N, R] each."""
        b = data.batch
        return self.policy.response_logprobs(
            b["input_ids"], b["attention_mask"], b["position_ids"], b["responses"],
            self.temperature, self.top_p,
        )  # fmt: skip

    def advantages(self, data: DataProto) -> torch.Tensor:
        """verl's estimator on verl's reward tensor (token_level_rewards = rm_scores, no KL)."""
        b = data.batch
        b["token_level_scores"] = b["rm_scores"]
        b["token_level_rewards"] = b["token_level_scores"]
        advantages, returns = self.advantage_fn(
            token_level_rewards=b["token_level_rewards"],
            response_mask=b["response_mask"],
            index=data.non_tensor_batch["uid"],
            config=self.algorithm,
        )
        b["advantages"], b["returns"] = advantages, returns
        return advantages

    def update(self, data: DataProto, timing: dict[str, float]) -> dict[str, float]:
        """PPO epochs over mini-batches: verl's loss, then backward and an AdamW step."""
        t = self.config.trainer
        n = len(data)
        losses, clipfrac, kl, norms, entropies = [], [], [], [], []
        for _ in range(t.ppo_epochs):
            order = torch.randperm(n, generator=self._shuffle)
            for idx in order.tensor_split(min(t.mini_batches, n)):
                start = time.perf_counter()
                mb = data.select_idxs(idx)
                b = mb.batch
                mask = b["response_mask"].bool()
                if not bool(mask.any()):  # only rows that train nothing (failed episodes): no step
                    continue
                log_prob, entropy = self.logprobs(mb)
                pg_loss, metrics = self.loss_fn(
                    old_log_prob=b["old_log_probs"],
                    log_prob=log_prob,
                    advantages=b["advantages"],
                    response_mask=mask,
                    loss_agg_mode=t.loss_agg_mode,
                    config=self.actor,
                    rollout_is_weights=None,
                )
                loss = pg_loss
                # As verl's actor loss (workers/utils/losses.py:ppo_loss); logged whatever the coefficient.
                ent = agg_loss(entropy, mask, t.loss_agg_mode, **self.actor.global_batch_info)
                if t.entropy_coeff:
                    loss = pg_loss - t.entropy_coeff * ent
                entropies.append(float(ent.detach()))
                middle = time.perf_counter()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norms.append(float(torch.nn.utils.clip_grad_norm_(self.policy.parameters(), t.grad_clip)))
                self.optimizer.step()
                timing["loss_s"] += middle - start
                timing["step_s"] += time.perf_counter() - middle
                losses.append(float(pg_loss.detach()))
                clipfrac.append(float(metrics["actor/pg_clipfrac"]))
                kl.append(float(metrics["actor/ppo_kl"]))
        return {
            "pg_loss": float(np.mean(losses)),
            "pg_clipfrac": float(np.mean(clipfrac)),
            "ppo_kl": float(np.mean(kl)),
            "grad_norm": float(np.mean(norms)),
            "entropy": float(np.mean(entropies)),
        }

    def push(self) -> None:
        """The new weights through ``/update_weights``; later calls carry the new version."""
        assert self.collector is not None
        weights, version = self.policy.get_weights(), self.version + 1
        self.collector.set_policy_version(
            version, hook=lambda: push_weights(self.server.url, weights, version)
        )
        self.version = version

    def iteration(self, *, step: bool = True) -> dict[str, Any]:
        """Collect, export, check, loss, step, push; the stats (and timings) of this iteration."""
        t = self.config.trainer
        timing = dict.fromkeys(("collect_s", "export_s", "loss_s", "step_s", "push_s"), 0.0)
        start = time.perf_counter()
        episodes, verl_batch = self.collect_batch()
        timing["collect_s"] = time.perf_counter() - start

        start = time.perf_counter()
        data = self.export(episodes) if verl_batch is None else self._checked(verl_batch)
        timing["export_s"] = time.perf_counter() - start

        stats: dict[str, Any] = {
            "iteration": len(self.history),
            "version": self.version,
            "episodes": len(episodes),
            "rows": len(data),
            "mean_reward": float(np.mean([e.reward or 0.0 for e in episodes])) if episodes else 0.0,
            "reward_std": float(np.std([e.reward or 0.0 for e in episodes])) if episodes else 0.0,
            "calls": sum(len(e.calls) for e in episodes),
            # Token mode: an episode's later calls go as token ids; these fell back to messages.
            "later_calls_as_messages": sum(
                c.sent_as != "tokens" for e in episodes for c in e.calls[1:]
            ),
        }
        if verl_batch is not None:  # what verl's agent loop could not return as one whole row
            nt = verl_batch.non_tensor_batch
            stats["multi_row_episodes"] = int(sum(int(n) > 1 for n in nt["rollout_rows"]))
            stats["truncated_episodes"] = int(sum(nt["rollout_truncated"]))
            stats["failed_episodes"] = int(sum(nt["rollout_failed"]))
            stats["dropped_tokens"] = int(sum(nt["rollout_dropped_tokens"]))
        with torch_threads(t.threads):
            start = time.perf_counter()
            self.advantages(data)
            b = data.batch
            with torch.no_grad():  # verl's _compute_old_log_prob: the actor before the update
                b["old_log_probs"], _ = self.logprobs(data)
            mask = b["response_mask"].bool()
            worst = _masked_max_abs(b["old_log_probs"], b["rollout_log_probs"], mask)
            stats["max_logprob_diff"] = worst
            stats["sampled_tokens"] = int(mask.sum())
            timing["loss_s"] += time.perf_counter() - start
            if not worst <= t.logprob_tolerance:
                raise OffPolicyError(
                    f"iteration {stats['iteration']}: recorded logprobs differ from the model's "
                    f"by up to {worst:.3g} (tolerance {t.logprob_tolerance:g})"
                )
            if step:
                stats.update(self.update(data, timing))
        if step:
            start = time.perf_counter()
            with torch_threads(1):
                self.push()
            timing["push_s"] = time.perf_counter() - start
        stats.update(timing)
        stats["total_s"] = sum(timing.values())
        self.history.append(stats)
        if self.tracked is not None:
            self.tracked.iteration(stats, episodes)
        return stats


def format_stats(s: dict[str, Any]) -> str:
    """One log line per iteration."""
    return (
        f"iter {s['iteration']:3d}  v{s['version']:<3d} reward {s['mean_reward']:.3f}  "
        f"max|dlogp| {s['max_logprob_diff']:.1e}  loss {s.get('pg_loss', float('nan')):+.4f}  "
        f"collect {s['collect_s']:.1f}s export {s['export_s']:.2f}s loss {s['loss_s']:.2f}s "
        f"step {s['step_s']:.2f}s push {s['push_s']:.2f}s"
        + "".join(f"  {k} {s[k]}" for k in ("failed_episodes", "truncated_episodes", "multi_row_episodes")
                  if s.get(k))
    )


def train_verl(
    config: TrainVerlConfig | str | Path | None = None,
    *,
    overrides: Iterable[str] = (),
    tasks: Any = None,
    agent: Any = None,
    log: Callable[[str], None] = print,
    plot: str | Path | None = None,
    **settings: Any,
) -> list[dict[str, Any]]:
    """Run the loop until ``trainer.iterations`` or ``trainer.target``; one stats dict per iteration.

    As `rollout.training.train`: ``train_verl(config, lr=1e-3, samples_per_task=8)``.
    """
    with VerlTrainer(config, overrides=overrides, tasks=tasks, agent=agent, **settings) as trainer:
        t = trainer.config.trainer
        log(f"model: {trainer.policy.describe()}")
        for _ in range(t.iterations):
            stats = trainer.iteration()
            log(format_stats(stats))
            if t.target is not None and stats["mean_reward"] >= t.target:
                break
        history = trainer.history
    if plot is not None:
        plot_rewards(history, plot, log)
    return history
