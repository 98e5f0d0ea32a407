"""The text view of episodes (`rollout inspect`): a summary, and one episode token by token."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from rollout.episode import Episode
from rollout.inspect.decode import default_decoder, token_text
from rollout.sample import assemble


def sent_as(episodes: Sequence[Episode]) -> str:
    """How calls reached the server: as token ids, or as messages and why (token mode fallbacks)."""
    tokens = 0
    reasons: Counter[str] = Counter()
    for ep in episodes:
        for call in ep.calls:
            if call.sent_as == "tokens":
                tokens += 1
            else:
                reasons[call.fallback or "token mode off"] += 1
    detail = ", ".join(f"{reason} {n}" for reason, n in reasons.most_common())
    return f"as tokens {tokens}, as messages {sum(reasons.values())}" + (f" ({detail})" if detail else "")


def summarize(episodes: Sequence[Episode]) -> str:
    statuses = Counter(e.status.value for e in episodes)
    rewards = [e.reward for e in episodes if e.reward is not None]
    calls = sum(len(e.calls) for e in episodes)
    inexact = sum(1 for e in episodes if not e.exact)
    result = assemble(episodes, mode="concat")
    lines = [
        f"episodes        {len(episodes)}",
        f"statuses        {dict(statuses)}",
        f"calls           {calls}",
        f"tokens          {sum(e.num_tokens for e in episodes)}",
        f"mean reward     {np.mean(rewards):.4f}" if rewards else "mean reward     -",
        f"inexact eps     {inexact}",
        f"samples         {len(result)} (concat), merged turns {result.num_merged}, drift {result.num_drift}",
        f"calls sent      {sent_as(episodes)}",
    ]
    return "\n".join(lines)


def show_episode(episode: Episode, limit: int = 64) -> str:
    decode = default_decoder()
    out = [
        f"episode {episode.id} task={episode.task_id} sample={episode.sample} "
        f"status={episode.status.value} reward={episode.reward}"
    ]
    if episode.error:
        out.append(f"error: {episode.error}")
    for call in episode.calls:
        out.append(
            f"-- call {call.index} (parent {call.parent}) prompt {len(call.prompt_ids)} tokens "
            f"[{call.prompt_source.value}] latency {call.latency_s * 1000:.1f} ms, sent as {call.sent_as}"
            + (f" ({call.fallback})" if call.fallback else "")
        )
        for ch in call.choices:
            out.append(f"   choice {ch.index} finish={ch.finish_reason} [{ch.source.value}] {ch.message.get('content')!r}")
    for k, s in enumerate(assemble([episode], mode="concat")):
        out.append(f"== sample {k}: {len(s)} tokens, prompt {s.prompt_len}, sampled {s.num_sampled}, reward {s.reward}")
        out.append(f"   {'pos':>5} {'id':>7} {'mask':>4} {'logprob':>9} {'ver':>4}  text")
        for i in range(min(len(s), limit)):
            out.append(
                f"   {i:>5} {int(s.tokens[i]):>7} {int(s.loss_mask[i]):>4} "
                f"{float(s.logprobs[i]):>9.4f} {int(s.versions[i]):>4}  {token_text(decode, int(s.tokens[i]))[0]!r}"
            )
        if len(s) > limit:
            out.append(f"   ... {len(s) - limit} more")
    return "\n".join(out)
