#!/usr/bin/env bash
# Run each agent framework's tests (tests/agents/<framework>, marked `agents`) in that
# framework's venv (tests/agents/setup.sh builds them): the peer tier's runner, pointed at
# this tier. Exits non-zero if any framework's tests fail, its venv is missing, or it
# does not import (its conftest imports it at collection: an error, never a skip).
#
#   bash tests/agents/run.sh                  # every framework
#   bash tests/agents/run.sh langgraph        # just this one
set -uo pipefail
ROLLOUT_TIER=agents exec bash "$(dirname "$0")/../peers/run.sh" "$@"
