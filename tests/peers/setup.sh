#!/usr/bin/env bash
# Build (or reuse) one virtualenv per peer for the peer test tier, and print how long each took.
#
#   bash tests/peers/setup.sh              # every peer: each tests/peers/<peer>/ with a requirements.txt
#   bash tests/peers/setup.sh verl areal   # just these
#
# The same script builds the agent-framework tier (tests/agents/setup.sh runs it with
# ROLLOUT_TIER=agents): the tier is tests/$ROLLOUT_TIER (default peers), its home
# $ROLLOUT_<TIER>_HOME (default ~/.cache/rollout-compat/<tier>).
#
# A peer's venv is <home>/venvs/<peer>, home = $ROLLOUT_PEERS_HOME (default
# ~/.cache/rollout-compat/peers), installed from the package registries:
#   1. <peer>/requirements.txt: what the peer's import chain needs (pinned);
#   2. <peer>/no-deps.txt: the peer itself, without its dependency list (a GPU training
#      stack for verl and AReaL; the requirements above replace it);
#   3. this project's runtime dependencies (read from pyproject.toml) and pytest; the project
#      itself is not installed: run.sh puts the checkout on PYTHONPATH.
# torch: a requirements file may only ask for `torch==2.13.0` (the CPU wheel on disk); any
# other spec downloads several GB of CUDA wheels.
# The venv is reused while those files, this script and the project's dependencies are
# unchanged (their sha256 is the stamp) and the peer is still installed; otherwise it is
# rebuilt from scratch. The peer's import name is the directory's, or the modules listed in
# an optional <peer>/imports.txt (one per line; the first is the reuse check's); one that
# lists none means the peer is not Python (llama.cpp: its prepare.sh builds and runs the
# server binary, and fails if it cannot). An optional <peer>/prepare.sh makes the peer's
# data (AReaL's tokenizer, llama.cpp's server and model) into <home>/cache, once.
set -euo pipefail
cd "$(dirname "$0")/../.."
TIER=${ROLLOUT_TIER:-peers}
HOME_VAR=ROLLOUT_${TIER^^}_HOME
HOME_DIR=${!HOME_VAR:-$HOME/.cache/rollout-compat/$TIER}
mkdir -p "$HOME_DIR/venvs" "$HOME_DIR/cache"
export "$HOME_VAR=$HOME_DIR"

peers=("$@")
if [ ${#peers[@]} -eq 0 ]; then
  for f in tests/"$TIER"/*/requirements.txt; do peers+=("$(basename "$(dirname "$f")")"); done
fi

project_requirements() {
  python3 - <<'PY'
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
print("pytest>=8")
PY
}

pip_quiet() {  # pip install -q, minus its notes on the peers' skipped dependencies
  "$@" 2>&1 | { grep -v "requires .*, which is not installed\|dependency resolver\|incompatible" || true; }
}

total_start=$(date +%s)
for peer in "${peers[@]}"; do
  dir=tests/$TIER/$peer
  venv=$HOME_DIR/venvs/$peer
  [ -f "$dir/requirements.txt" ] || { echo "no $dir/requirements.txt" >&2; exit 2; }
  if [ -f "$dir/imports.txt" ]; then mapfile -t imports < <(grep -v '^\s*\(#\|$\)' "$dir/imports.txt")
  else imports=("$peer"); fi
  check="import importlib.util as u, sys; sys.exit(u.find_spec('${imports[0]:-}') is None)"
  [ ${#imports[@]} -gt 0 ] || check="pass"  # not a Python peer: prepare.sh checks it
  stamp=$({ cat tests/peers/setup.sh "$dir"/requirements.txt "$dir"/no-deps.txt "$dir"/imports.txt \
            2>/dev/null; project_requirements; } | sha256sum | cut -d' ' -f1)
  start=$(date +%s)
  # Reuse check: the stamp, and the peer still installed (find_spec: importing verl or areal
  # takes 15-20 s; the full import is checked once, when the venv is built).
  if [ -f "$venv/.stamp" ] && [ "$(cat "$venv/.stamp")" = "$stamp" ] \
     && "$venv/bin/python" -c "$check" 2>/dev/null; then
    state=reused
  else
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip >/dev/null
    pip_quiet "$venv/bin/pip" install -q -r "$dir/requirements.txt"
    if [ -f "$dir/no-deps.txt" ]; then
      pip_quiet "$venv/bin/pip" install -q --no-deps -r "$dir/no-deps.txt"
    fi
    project_requirements > "$venv/project-requirements.txt"
    pip_quiet "$venv/bin/pip" install -q -r "$venv/project-requirements.txt"
    [ ${#imports[@]} -eq 0 ] || "$venv/bin/python" -c "$(printf 'import %s\n' "${imports[@]}")"
    echo "$stamp" > "$venv/.stamp"
    state=built
  fi
  if [ -f "$dir/prepare.sh" ]; then  # peer data (idempotent, cached in <home>/cache)
    bash "$dir/prepare.sh" "$venv" "$HOME_DIR/cache"
  fi
  echo "$TIER setup: $peer venv $state in $(( $(date +%s) - start )) s ($venv)"
done
echo "$TIER setup: total $(( $(date +%s) - total_start )) s"
