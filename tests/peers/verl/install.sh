#!/usr/bin/env bash
# verl 0.9.1 on CPU, for tests/peers/verl. Usage: install.sh VENV [CACHE]  (called by ../setup.sh)
# Recipe and why each package is needed: docs/integrations.md (verl section).
set -euo pipefail
PIP="$1/bin/pip"
HERE=$(cd "$(dirname "$0")" && pwd)
# The CPU wheel on disk; NEVER another torch spec (it would download GBs of CUDA wheels).
"$PIP" install -q torch==2.13.0
# verl's own dependency list is the GPU training stack (vllm, flash-attn, ...): skip it and
# install only what `from verl import DataProto`, trainer.ppo.core_algos / reward and
# trainer.ppo.ray_trainer.compute_advantage import (requirements.txt).
"$PIP" install -q --no-deps verl==0.9.1
# pip reports the verl dependencies skipped above as "not installed"; that is expected.
"$PIP" install -q -r "$HERE/requirements.txt" 2>&1 \
  | { grep -v "requires .*, which is not installed\|dependency resolver\|incompatible" || true; }
