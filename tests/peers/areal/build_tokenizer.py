"""Build an offline Qwen2.5-Instruct Hugging Face tokenizer from a registry package.

ArealOpenAI needs a real HF tokenizer with a chat template, and the tests run
offline. The llama-cpp-python *sdist* on PyPI (0.3.36) vendors llama.cpp's
`models/ggml-vocab-qwen2.gguf` (a vocab-only GGUF: Qwen2's BPE, 151,936 ids,
its merges, pre-tokenizer "qwen2"), the real template
`models/templates/Qwen-Qwen2.5-7B-Instruct.jinja`, and llama.cpp's test vectors
for that vocab (`ggml-vocab-qwen2.gguf.inp/.out`, ids made by the HF tokenizer).

transformers converts the GGUF into a fast tokenizer (needs `gguf`), then:
- the GGUF's placeholder tokens `[PAD151646]`..`[PAD151664]` get Qwen2.5's
  added tokens at the same ids (as Qwen2.5-Instruct's tokenizer_config.json);
- eos = `<|im_end|>`, pad = `<|endoftext|>` (the GGUF says eos=<|endoftext|>,
  with which ArealOpenAI's "concat" mode cannot splice turns);
- chat_template = the Qwen2.5 template; `save_pretrained(out)`.
The result is checked against llama.cpp's vectors before it is kept.

Usage (prepare.sh does this): python build_tokenizer.py SDIST.tar.gz OUT_DIR
Nothing from the sdist is committed; OUT_DIR is a cache.
"""

from __future__ import annotations

import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

QWEN25_ADDED = {  # id -> (content, special), as Qwen2.5-*-Instruct's tokenizer_config.json
    151646: ("<|object_ref_start|>", True),
    151647: ("<|object_ref_end|>", True),
    151648: ("<|box_start|>", True),
    151649: ("<|box_end|>", True),
    151650: ("<|quad_start|>", True),
    151651: ("<|quad_end|>", True),
    151652: ("<|vision_start|>", True),
    151653: ("<|vision_end|>", True),
    151654: ("<|vision_pad|>", True),
    151655: ("<|image_pad|>", True),
    151656: ("<|video_pad|>", True),
    151657: ("<tool_call>", False),
    151658: ("</tool_call>", False),
    151659: ("<|fim_prefix|>", False),
    151660: ("<|fim_middle|>", False),
    151661: ("<|fim_suffix|>", False),
    151662: ("<|fim_pad|>", False),
    151663: ("<|repo_name|>", False),
    151664: ("<|file_sep|>", False),
}
MEMBERS = {
    "gguf": "vendor/llama.cpp/models/ggml-vocab-qwen2.gguf",
    "inp": "vendor/llama.cpp/models/ggml-vocab-qwen2.gguf.inp",
    "out": "vendor/llama.cpp/models/ggml-vocab-qwen2.gguf.out",
    "template": "vendor/llama.cpp/models/templates/Qwen-Qwen2.5-7B-Instruct.jinja",
}


def extract(sdist: Path, dest: Path) -> dict[str, Path]:
    got: dict[str, Path] = {}
    with tarfile.open(sdist) as tar:
        for member in tar:
            for key, suffix in MEMBERS.items():
                if member.name.endswith("/" + suffix):
                    data = tar.extractfile(member)
                    assert data is not None, member.name
                    got[key] = dest / Path(suffix).name
                    got[key].write_bytes(data.read())
    missing = sorted(set(MEMBERS) - set(got))
    if missing:
        raise SystemExit(f"{sdist} lacks {missing}")
    return got


def build(sdist: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        files = extract(sdist, Path(tmp))
        raw = AutoTokenizer.from_pretrained(tmp, gguf_file=files["gguf"].name)
        raw_dir = Path(tmp) / "raw"
        raw.save_pretrained(raw_dir)

        spec = json.loads((raw_dir / "tokenizer.json").read_text())
        vocab = spec["model"]["vocab"]
        for token_id, (content, special) in QWEN25_ADDED.items():
            placeholder = f"[PAD{token_id}]"
            if vocab.get(placeholder) != token_id:
                raise SystemExit(f"expected {placeholder} at id {token_id}, got {vocab.get(placeholder)}")
            del vocab[placeholder]
            vocab[content] = token_id
            spec["added_tokens"].append(
                {"id": token_id, "content": content, "single_word": False, "lstrip": False,
                 "rstrip": False, "normalized": False, "special": special}
            )
        (raw_dir / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))

        tok = AutoTokenizer.from_pretrained(str(raw_dir), eos_token="<|im_end|>", pad_token="<|endoftext|>")
        tok.chat_template = files["template"].read_text()

        texts = files["inp"].read_text().split("\n__ggml_vocab_test__\n")
        expected = files["out"].read_text().split("\n")
        bad = [
            text[:40]
            for text, line in zip(texts, expected, strict=False)  # .out may end with a newline
            if tok.encode(text, add_special_tokens=False) != [int(x) for x in line.split()]
        ]
        if bad:
            raise SystemExit(f"{len(bad)} of llama.cpp's test vectors differ, e.g. {bad[:3]}")
        staging = out.with_name(out.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        tok.save_pretrained(staging)
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)  # a killed build never leaves a half-written tokenizer behind
        print(f"tokenizer: {out} ({len(texts)} llama.cpp test vectors match)")


if __name__ == "__main__":
    build(Path(sys.argv[1]), Path(sys.argv[2]))
