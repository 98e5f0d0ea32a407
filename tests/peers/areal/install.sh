#!/usr/bin/env bash
# AReaL 1.0.4 on CPU, for tests/peers/areal. Usage: install.sh VENV [CACHE]  (called by ../setup.sh)
set -euo pipefail
PIP="$1/bin/pip"
HERE=$(cd "$(dirname "$0")" && pwd)
# The CPU wheel on disk; NEVER another torch spec (it would download GBs of CUDA wheels).
"$PIP" install -q torch==2.13.0
# areal's metadata asks torch<2.11, sglang, vllm and ~80 more: skip it and install only what
# importing areal.experimental.openai, areal.infra.workflow_executor and areal.utils.data needs.
"$PIP" install -q --no-deps areal==1.0.4
# pip reports the areal dependencies skipped above as "not installed"; that is expected.
"$PIP" install -q -r "$HERE/requirements.txt" 2>&1 \
  | { grep -v "requires .*, which is not installed\|dependency resolver\|incompatible" || true; }
