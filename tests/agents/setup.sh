#!/usr/bin/env bash
# Build (or reuse) one virtualenv per agent framework (tests/agents/<framework>/requirements.txt)
# under ~/.cache/rollout-compat/agents/venvs (or $ROLLOUT_AGENTS_HOME/venvs): the peer
# tier's script, pointed at this tier.
#
#   bash tests/agents/setup.sh                 # every framework
#   bash tests/agents/setup.sh openai_agents   # just this one
set -euo pipefail
ROLLOUT_TIER=agents exec bash "$(dirname "$0")/../peers/setup.sh" "$@"
