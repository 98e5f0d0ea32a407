"""A real transformer for the embedded server: a tiny Qwen3 from transformers, on the CPU.

Why this shape: the numpy `Policy` proves the recorded ids and logprobs are
exact, but not that a real trainer's loss, fed the export, moves a real model.
This policy is a `transformers` causal LM (Qwen3 architecture, randomly
initialised from a config, nothing downloaded) served behind the same
interface (`policy_api.ServedPolicy`), so the server's wire format, token
routes, seeds and weight updates are unchanged.

A transformer over all 100k cl100k ids would be mostly embedding table, and
its softmax alone would cost more than the rest of a forward pass on 2 cores.
So the model sees a small input vocabulary and samples from the same output
vocabulary as the numpy policy:

* input rows: one exact row per output word (``"0"``..``"199"``, ``" yes"``,
  ..., ``<|endoftext|>``), one per template special token, then
  ``hash_buckets`` rows that every other cl100k id is hashed into
  (`input_index`). Numbers in a question are output words, so the model sees
  them exactly; words like ``" What"`` share buckets.
* output: the LM head's rows for the output words only. Sampling, every
  logprob the server reports and every logprob the trainer recomputes are
  taken under the same truncated, renormalised sampling distribution as the
  numpy policy's (`policy.sampling_distribution`, `policy.draw`), so a
  recorded logprob means the same thing whichever policy served it.

The server runs one forward pass per sampled token over the whole context
(no KV cache: replies here are a token or a few, and prompts are short).
`response_logprobs` is the trainer's batched, padded, differentiable twin of
what the server computed one sequence at a time; the two agree to float32
rounding (the trainer reports the max difference every iteration).

Needs torch and transformers (``pip install 'rollout-compat[train]'``); the
rest of `rollout` never imports this module.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from .policy import END_ID, GREEDY_BELOW, OUTPUT_WORDS, LogitsPolicy, get_encoding
from .template import END_OF_PROMPT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX

SPECIAL_IDS: tuple[int, ...] = (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, END_OF_PROMPT)
"""Template markers with their own input row (the end token is an output word)."""

_HASH_MULT = 0x9E3779B1
"""Knuth's multiplicative hash: bucket = high bits of (id * this mod 2^32)."""


@dataclass(frozen=True)
class TorchPolicyConfig:
    """Model size and vocabulary. Defaults: ~0.2 M parameters, ~1.4 ms per forward pass
    of a 60-token prompt on one CPU thread (docs/training.md says why this size)."""

    hash_buckets: int = 512
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 256
    max_model_len: int = 2048
    init_std: float = 0.02
    seed: int = 0
    """Initialisation seed (torch's generator, set only while building the model)."""
    words: tuple[str, ...] = field(default=OUTPUT_WORDS)


def input_index(words_ids: Sequence[int], buckets: int, n_vocab: int) -> np.ndarray:
    """cl100k id -> input row: output words first, then the template specials, then buckets."""
    ids = np.arange(n_vocab, dtype=np.int64)
    table = len(words_ids) + len(SPECIAL_IDS) + ((ids * _HASH_MULT % (1 << 32)) * buckets >> 32)
    table[list(words_ids)] = np.arange(len(words_ids))
    table[list(SPECIAL_IDS)] = len(words_ids) + np.arange(len(SPECIAL_IDS))
    return table


def sampling_logprobs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Log-probabilities under the sampling distribution, differentiable (float32 in, out).

    The torch twin of `policy.sampling_distribution`: logits / temperature,
    then top-p keeps the smallest prefix (descending, ties in vocabulary
    order) whose mass reaches ``top_p`` and renormalises; the nucleus itself
    is held fixed (no gradient through the cut), as the numpy policy does.
    """
    if temperature < GREEDY_BELOW:
        raise ValueError("greedy sampling (temperature ~ 0) has no logprobs to train on")
    z = logits / temperature if temperature != 1.0 else logits
    if top_p < 1.0:
        with torch.no_grad():
            probs, order = torch.sort(z.softmax(-1), dim=-1, descending=True, stable=True)
            before = probs.cumsum(-1).roll(1, -1)
            before[..., 0] = 0.0  # mass ahead of each token; the first is always kept
            keep_sorted = before < top_p
            keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        z = z.masked_fill(~keep, float("-inf"))
    return z.log_softmax(-1)


class TorchPolicy(LogitsPolicy):
    """A tiny randomly initialised Qwen3 behind the embedded server's policy interface."""

    def __init__(self, config: TorchPolicyConfig | None = None) -> None:
        self.config = cfg = config or TorchPolicyConfig()
        enc = get_encoding()
        ids: list[int] = []
        for word in cfg.words:
            tokens = enc.encode(word, disallowed_special=())
            if len(tokens) != 1:
                raise ValueError(f"output word {word!r} is not a single cl100k token: {tokens}")
            ids.append(tokens[0])
        ids.append(END_ID)
        if len(set(ids)) != len(ids):
            raise ValueError("output words must map to distinct tokens")
        self.vocab_ids = np.asarray(ids, dtype=np.int64)
        self.end_id = END_ID
        self.input_index = input_index(ids, cfg.hash_buckets, enc.n_vocab)
        self._input_index = torch.from_numpy(self.input_index)
        output_index = np.full(enc.n_vocab, -1, dtype=np.int64)
        output_index[self.vocab_ids] = np.arange(len(ids))
        self._output_index = torch.from_numpy(output_index)
        """cl100k id -> position in the output vocabulary, -1 outside it."""
        model_config = Qwen3Config(
            vocab_size=len(ids) + len(SPECIAL_IDS) + cfg.hash_buckets,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads,
            num_key_value_heads=cfg.kv_heads,
            head_dim=cfg.hidden_size // cfg.heads,
            max_position_embeddings=cfg.max_model_len,
            initializer_range=cfg.init_std,
            tie_word_embeddings=False,
            attn_implementation="sdpa",
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.model = Qwen3ForCausalLM(model_config).eval()

    # ------------------------------------------------------------- serving

    @property
    def max_model_len(self) -> int:
        return self.config.max_model_len

    @property
    def vocab_size(self) -> int:
        """Size of the output vocabulary (the end token included)."""
        return int(self.vocab_ids.size)

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the output words only (the LM head's first rows)."""
        weight = self.model.lm_head.weight[: self.vocab_size]
        return torch.nn.functional.linear(hidden, weight)

    def logits(self, context_ids: Sequence[int]) -> np.ndarray:
        """Raw next-token logits over the output vocabulary (float32 values, as float64)."""
        rows = self._input_index[torch.as_tensor(np.asarray(context_ids, dtype=np.int64))]
        with torch.inference_mode():
            hidden = self.model.model(input_ids=rows[None], use_cache=False).last_hidden_state
            out = self._head(hidden[0, -1])
        return out.numpy().astype(np.float64)

    # ------------------------------------------------------------ training

    def response_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        responses: torch.Tensor,
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling logprob of every response token and the entropy it was drawn with, [N, R] each.

        Takes verl's layout as `to_verl` writes it (cl100k ids, prompts
        left-padded, responses right-padded, position 0 on padding).
        Differentiable. Tokens outside the output vocabulary (observations,
        padding) get logprob 0; mask them with ``response_mask``.
        """
        width_r = responses.shape[1]
        hidden = self.model.model(
            input_ids=self._input_index[input_ids],
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state
        # Position P-1+t predicts response token t.
        logp = sampling_logprobs(self._head(hidden[:, -width_r - 1 : -1]), temperature, top_p)
        index = self._output_index[responses]
        picked = logp.gather(-1, index.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        # Entropy of the sampling distribution (0 log 0 = 0 outside a top-p nucleus).
        entropy = -(logp.exp() * logp.masked_fill(logp.isneginf(), 0.0)).sum(-1)
        return picked.masked_fill(index < 0, 0.0), entropy

    def parameters(self) -> Any:
        """The model's trainable parameters (for an optimizer)."""
        return self.model.parameters()

    # ------------------------------------------------------------- weights

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every trainable tensor by name (what a weight upload must match exactly)."""
        return {name: tuple(p.shape) for name, p in self.model.named_parameters()}

    def get_weights(self) -> dict[str, np.ndarray]:
        """Copies of the trainable tensors as float32 arrays (the upload format)."""
        return {name: p.detach().numpy().copy() for name, p in self.model.named_parameters()}

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Replace every trainable tensor; names and shapes must match, values be finite."""
        params = dict(self.model.named_parameters())
        if set(weights) != set(params):
            missing, extra = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
            raise ValueError(f"weights must name every parameter: missing {missing}, unknown {extra}")
        new: dict[str, torch.Tensor] = {}
        for name, p in params.items():
            arr = np.asarray(weights[name])
            if arr.shape != tuple(p.shape):
                raise ValueError(f"weight {name!r} has shape {arr.shape}, expected {tuple(p.shape)}")
            if arr.dtype.kind not in "fiu":
                raise ValueError(f"weight {name!r} has dtype {arr.dtype}, expected real numbers")
            with np.errstate(over="ignore", invalid="ignore"):
                arr32 = arr.astype(np.float32)  # the model's dtype: a float64 1e300 becomes inf here
            if not np.all(np.isfinite(arr32)):
                raise ValueError(f"weight {name!r} has non-finite values (as float32, the model's dtype)")
            new[name] = torch.from_numpy(arr32)
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(new[name])

    def copy(self) -> TorchPolicy:
        """An independent policy with the same config and weights."""
        other = TorchPolicy.__new__(TorchPolicy)
        other.__dict__.update(self.__dict__)
        other.model = copy.deepcopy(self.model)
        return other

    def describe(self) -> dict[str, Any]:
        """Config and size, for logs and benchmark output."""
        n = sum(p.numel() for p in self.model.parameters())
        return {**asdict(self.config), "words": len(self.config.words), "parameters": int(n),
                "input_vocab": int(self.model.config.vocab_size)}  # fmt: skip


def serve_main(argv: list[str] | None = None) -> None:
    """Serve a fresh `TorchPolicy` on a free port until stdin closes; print the root URL first.

    ``python -m rollout.embedded.torch_policy '{"hidden_size": 64, ...}' --model tiny --seed 0``:
    how `rollout.training.verl_trainer.ServerProcess` runs it in its own process.
    """
    from .server import EmbeddedServer

    parser = argparse.ArgumentParser(description=serve_main.__doc__)
    parser.add_argument("config", help="TorchPolicyConfig fields as a JSON object")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    fields = json.loads(args.config)
    fields["words"] = tuple(fields.get("words", OUTPUT_WORDS))
    torch.set_num_threads(1)  # one tiny forward per sampled token: more threads only wait
    policy = TorchPolicy(TorchPolicyConfig(**fields))
    with EmbeddedServer(policy, port=args.port, model_name=args.model, seed=args.seed) as server:
        print(server.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C reaches the parent too
            sys.stdin.read()  # returns at EOF: the parent closed the pipe or exited


if __name__ == "__main__":
    serve_main()
