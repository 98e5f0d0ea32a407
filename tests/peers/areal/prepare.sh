#!/usr/bin/env bash
# The offline Qwen2.5 tokenizer ArealOpenAI needs, built once into CACHE/qwen25_tokenizer from
# the llama-cpp-python sdist on PyPI (build_tokenizer.py says how). Usage: prepare.sh VENV CACHE
set -euo pipefail
VENV=$1
OUT=$2/qwen25_tokenizer
[ -f "$OUT/tokenizer.json" ] && exit 0
SDIST_DIR=$(mktemp -d)
trap 'rm -rf "$SDIST_DIR"' EXIT
start=$(date +%s)
"$VENV/bin/pip" download -q --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d "$SDIST_DIR"
"$VENV/bin/python" "$(dirname "$0")/build_tokenizer.py" "$SDIST_DIR"/llama_cpp_python-0.3.36.tar.gz "$OUT"
echo "peers setup: areal tokenizer built in $(( $(date +%s) - start )) s"
