#!/usr/bin/env bash
# Run each peer's tests (tests/peers/<peer>, marked `peers`) in that peer's venv; print timings.
#
#   bash tests/peers/run.sh              # every peer with a requirements.txt (setup.sh builds the venvs)
#   bash tests/peers/run.sh verl         # just this one
#
# The checkout is put first on PYTHONPATH, so the venvs test this tree's code.
# ROLLOUT_TIER=agents runs the agent-framework tier instead (tests/agents/run.sh): tests
# under tests/$ROLLOUT_TIER marked with the tier's name, venvs under $ROLLOUT_<TIER>_HOME.
# Exits non-zero if any peer's tests fail (or its venv is missing).
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
TIER=${ROLLOUT_TIER:-peers}
HOME_VAR=ROLLOUT_${TIER^^}_HOME
HOME_DIR=${!HOME_VAR:-$HOME/.cache/rollout-compat/$TIER}
export "$HOME_VAR=$HOME_DIR"

peers=("$@")
if [ ${#peers[@]} -eq 0 ]; then
  for f in tests/"$TIER"/*/requirements.txt; do peers+=("$(basename "$(dirname "$f")")"); done
fi

status=0
summary=()
total_start=$(date +%s)
for peer in "${peers[@]}"; do
  python=$HOME_DIR/venvs/$peer/bin/python
  if [ ! -x "$python" ]; then
    echo "$TIER run: no venv for $peer; run: bash tests/$TIER/setup.sh $peer" >&2
    status=1
    continue
  fi
  start=$(date +%s)
  log=$(mktemp)
  # -p no:cacheprovider: the venvs share the checkout, and one cache is the main tier's.
  ROLLOUT_PEER=$peer ROLLOUT_PEER_TIER=$peer PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$python" -m pytest -p no:cacheprovider \
    -m "$TIER" "tests/$TIER/$peer" -o addopts="" -q \
    -W "ignore::UserWarning:verl.workers.engine" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || status=1
  line=$(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed)' "$log" | tail -1 | tr -d '=')
  summary+=("$peer: ${line:-no result (rc $rc)} in $(( $(date +%s) - start )) s")
  rm -f "$log"
done
echo "$TIER run: total $(( $(date +%s) - total_start )) s"
for line in "${summary[@]}"; do echo "$TIER run: $line"; done
exit $status
